"""JetLinks firmware topics, for devices and for child devices behind a gateway.

/{productId}/{deviceId}/firmware/{kind}
/{productId}/{gatewayId}/child/{childId}/firmware/{kind}
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .errors import TopicError


class TopicKind(StrEnum):
    """The suffix after ``firmware/``, and which way the message travels."""

    UPGRADE = "upgrade"
    UPGRADE_REPLY = "upgrade/reply"
    UPGRADE_PROGRESS = "upgrade/progress"
    PULL = "pull"
    PULL_REPLY = "pull/reply"
    REPORT = "report"
    READ = "read"
    READ_REPLY = "read/reply"

    @property
    def downstream(self) -> bool:
        """True for platform -> device messages."""
        return self in _DOWNSTREAM


_DOWNSTREAM = {TopicKind.UPGRADE, TopicKind.PULL_REPLY, TopicKind.READ}
_BY_SUFFIX = {kind.value: kind for kind in TopicKind}


@dataclass(frozen=True)
class FirmwareTopic:
    """A parsed firmware topic. ``gateway_id`` is set for a child device's topic."""

    product_id: str
    device_id: str
    kind: TopicKind
    gateway_id: str | None = None

    def __str__(self) -> str:
        if self.gateway_id is None:
            return f"/{self.product_id}/{self.device_id}/firmware/{self.kind.value}"
        return (
            f"/{self.product_id}/{self.gateway_id}/child/{self.device_id}"
            f"/firmware/{self.kind.value}"
        )

    def __post_init__(self) -> None:
        if not isinstance(self.kind, TopicKind):
            try:
                object.__setattr__(self, "kind", TopicKind(self.kind))
            except ValueError:
                raise TopicError(repr(self.kind), "not a firmware message kind") from None
        checks = [("productId", self.product_id)]
        if self.gateway_id is None:
            checks.append(("deviceId", self.device_id))
        else:
            checks += [("gatewayId", self.gateway_id), ("childId", self.device_id)]
        for name, value in checks:
            _check_segment(str(self), value, name)

    @property
    def is_child(self) -> bool:
        return self.gateway_id is not None

    def with_kind(self, kind: TopicKind) -> FirmwareTopic:
        """The same device's topic for another message kind (e.g. the reply's)."""
        return FirmwareTopic(self.product_id, self.device_id, kind, self.gateway_id)


def device_topic(product_id: str, device_id: str, kind: TopicKind) -> FirmwareTopic:
    return FirmwareTopic(product_id, device_id, kind)


def child_topic(product_id: str, gateway_id: str, child_id: str, kind: TopicKind) -> FirmwareTopic:
    return FirmwareTopic(product_id, child_id, kind, gateway_id)


def _check_segment(topic: str, value: str, name: str) -> None:
    if not value or any(c in value for c in "/+#"):
        raise TopicError(
            topic, f"{name} must be a non-empty id without '/', '+' or '#'", field=name
        )


def parse_topic(topic: str) -> FirmwareTopic:
    """Parse a firmware topic; raise :class:`TopicError` naming what is wrong."""
    if not isinstance(topic, str) or not topic.startswith("/"):
        raise TopicError(str(topic), "a firmware topic starts with '/'")
    parts = topic[1:].split("/")
    # Positions, not a search for "firmware": an id may itself be "firmware" or "child".
    if len(parts) >= 4 and parts[2] == "firmware":
        product_id, device_id, gateway_id, suffix = parts[0], parts[1], None, parts[3:]
    elif len(parts) >= 6 and parts[2] == "child" and parts[4] == "firmware":
        product_id, gateway_id, device_id, suffix = parts[0], parts[1], parts[3], parts[5:]
    else:
        raise TopicError(
            topic,
            "expected /{productId}/{deviceId}/firmware/... or "
            "/{productId}/{gatewayId}/child/{childId}/firmware/...",
        )
    kind = _BY_SUFFIX.get("/".join(suffix))
    if kind is None:
        raise TopicError(topic, f"unknown firmware message kind {'/'.join(suffix)!r}")
    _check_segment(topic, product_id, "productId")
    if gateway_id is None:
        _check_segment(topic, device_id, "deviceId")
    else:
        _check_segment(topic, gateway_id, "gatewayId")
        _check_segment(topic, device_id, "childId")
    return FirmwareTopic(product_id, device_id, kind, gateway_id)


def subscriptions_for_device(product_id: str, device_id: str) -> list[str]:
    """What a gateway subscribes to: its own and all its children's downstream topics."""
    own = f"/{product_id}/{device_id}/firmware"
    child = f"/{product_id}/{device_id}/child/+/firmware"
    return [f"{base}/{kind.value}" for base in (own, child) for kind in sorted(_DOWNSTREAM)]


#: What the platform subscribes to: every upstream firmware topic of every device.
PLATFORM_SUBSCRIPTIONS = [
    f"/+/+/firmware/{kind.value}" for kind in TopicKind if not kind.downstream
] + [f"/+/+/child/+/firmware/{kind.value}" for kind in TopicKind if not kind.downstream]
