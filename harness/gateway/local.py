"""The gateway's local components: the parts of the gateway itself that have their own
firmware line, each a child device of the gateway at the platform (so each has its own
records and reported version, apart from the gateway's own image)."""

from __future__ import annotations

from typing import NamedTuple


class LocalComponent(NamedTuple):
    #: The child device id is ``{gateway_id}-{suffix}``.
    suffix: str
    #: The platform product of that child device.
    product: str
    name: str


#: By upgrader kind.
LOCAL_COMPONENTS = {
    "app": LocalComponent("app", "gateway-app", "Gateway application"),
    "driver": LocalComponent("drivers", "gateway-drivers", "Gateway drivers"),
    "wifi": LocalComponent("wifi", "gateway-wifi", "WiFi module"),
    "uwb": LocalComponent("uwb", "gateway-uwb", "UWB module"),
}
#: Kinds the seed leaves "to be decided": answered as not supported yet.
UNDECIDED = ("wifi", "uwb")


def local_device_id(gateway_id: str, kind: str) -> str:
    """The child device id of the gateway's component of ``kind``."""
    return f"{gateway_id}-{LOCAL_COMPONENTS[kind].suffix}"
