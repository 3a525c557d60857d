"""What the platform saw and could not use, kept where tests and people can look.

A progress message that matches no record, a reply to a messageId nobody sent, a
payload that does not decode: each is logged and recorded here instead of vanishing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..protocol import now_ms

log = logging.getLogger("ota_hil.platform")


@dataclass(frozen=True)
class PlatformEvent:
    kind: str
    detail: str
    topic: str | None = None
    device_id: str | None = None
    time: int = field(default_factory=now_ms)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class EventLog:
    """Bounded list of :class:`PlatformEvent` with a counter per kind."""

    #: Kinds the platform emits; a test can filter on them.
    BAD_MESSAGE = "bad_message"
    UNMATCHED_PROGRESS = "unmatched_progress"
    UNKNOWN_REPLY = "unknown_reply"
    LATE_REPLY = "late_reply"
    UNKNOWN_DEVICE = "unknown_device"
    RECORD_TIMEOUT = "record_timeout"

    def __init__(self, limit: int = 10_000) -> None:
        self._events: list[PlatformEvent] = []
        self._limit = limit
        self.counts: Counter[str] = Counter()
        #: Called with every event as it is added (a trace records them).
        self.listener: Callable[[PlatformEvent], None] | None = None

    def add(
        self,
        kind: str,
        detail: str,
        *,
        topic: str | None = None,
        device_id: str | None = None,
        level: int = logging.WARNING,
    ) -> PlatformEvent:
        event = PlatformEvent(kind, detail, topic, device_id)
        self.counts[kind] += 1
        self._events.append(event)
        if len(self._events) > self._limit:
            del self._events[: len(self._events) - self._limit]
        log.log(level, "%s: %s", kind, detail)
        if self.listener is not None:
            self.listener(event)
        return event

    def list(self, kind: str | None = None) -> list[PlatformEvent]:
        return [e for e in self._events if kind is None or e.kind == kind]
