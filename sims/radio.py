"""Radio profiles: how long a frame takes on air and how long a node takes to answer.

The numbers in :data:`PROFILES` are assumptions chosen to be typical of the hardware
class, not measurements of a particular product; override any of them with
:func:`profile_with` (or ``radio_overrides`` in a fleet file) when the real radio is
known. Where each number comes from is said next to it and in ``docs/simulation.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["PROFILES", "RadioProfile", "profile_with"]


@dataclass(frozen=True)
class RadioProfile:
    """One radio as the simulation sees it.

    - ``bit_rate``: bits per second on air.
    - ``max_frame``: the largest frame payload, in bytes, the node protocol may use.
    - ``frame_overhead``: bytes on air per frame besides the payload (preamble, sync word,
      length, addresses, link CRC ...).
    - ``turnaround``: seconds between the end of a frame and the start of a node's answer
      (rx/tx switch plus processing).
    - ``response_timeout``: seconds the gateway waits, from the end of a unicast query,
      for the whole answer to arrive before it counts the query as unanswered.

    Frozen; validated on creation (ValueError naming the field). Integer fields accept an
    integral float (``64.0``) and store it as an int.
    """

    name: str
    bit_rate: float
    max_frame: int
    frame_overhead: int
    turnaround: float
    response_timeout: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        _number(self, "bit_rate", positive=True)
        _integer(self, "max_frame", minimum=16)
        _integer(self, "frame_overhead", minimum=0)
        _number(self, "turnaround", positive=False)
        _number(self, "response_timeout", positive=True)

    def airtime(self, payload_bytes: int) -> float:
        """Seconds on air for one frame carrying ``payload_bytes`` (0..max_frame)."""
        if not 0 <= payload_bytes <= self.max_frame:
            raise ValueError(
                f"a {self.name} frame carries 0..{self.max_frame} payload bytes, "
                f"got {payload_bytes}"
            )
        return (payload_bytes + self.frame_overhead) * 8 / self.bit_rate


def _number(profile: RadioProfile, field: str, *, positive: bool) -> None:
    value = getattr(profile, field)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        expected = "a positive number" if positive else "a number >= 0"
        raise ValueError(f"{profile.name} radio: {field} must be {expected}, got {value!r}")


def _integer(profile: RadioProfile, field: str, *, minimum: int) -> None:
    value = getattr(profile, field)
    if isinstance(value, float) and value.is_integer():
        object.__setattr__(profile, field, int(value))  # 64.0 from a YAML override is 64
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"{profile.name} radio: {field} must be an integer >= {minimum}, got {value!r}"
        )


PROFILES: dict[str, RadioProfile] = {
    # Sub-GHz proprietary "324" nodes. Assumed: 2-GFSK at 50 kbit/s, a common data rate of
    # Si446x / CC1101-class transceivers; 64-byte payloads (the CC1101 FIFO, and the
    # Si446x's unshared FIFO, hold 64 bytes, so a frame fits without refilling); overhead
    # 4 B preamble + 4 B sync word + 1 B length + 1 B address + 2 B CRC-16 = 12 B;
    # turnaround 2 ms (PLL calibration and rx/tx switch ~0.1-0.8 ms plus MCU processing);
    # response timeout 50 ms: a full answer frame (76 B, 12.2 ms) plus the turnaround,
    # with about 3x margin.
    "324": RadioProfile(
        name="324",
        bit_rate=50_000.0,
        max_frame=64,
        frame_overhead=12,
        turnaround=0.002,
        response_timeout=0.050,
    ),
    # BLE nodes. Assumed: LE 1M PHY (1 Mbit/s); data length extension gives a 251-byte
    # link-layer payload, of which L2CAP (4 B) and ATT (3 B) headers leave 244 B for the
    # node protocol (one ATT write-without-response / notification per frame). Overhead
    # 1 B preamble + 4 B access address + 2 B PDU header + 4 B L2CAP + 3 B ATT + 4 B MIC
    # (encrypted link) + 3 B CRC = 21 B. Not counted: the peer's empty link-layer ack and
    # the two T_IFS gaps (150 + 80 + 150 us per frame) and connection-interval scheduling.
    # Turnaround 1 ms: T_IFS 150 us plus processing on the node. Response timeout 100 ms:
    # a few connection events at a 30 ms interval.
    "ble": RadioProfile(
        name="ble",
        bit_rate=1_000_000.0,
        max_frame=244,
        frame_overhead=21,
        turnaround=0.001,
        response_timeout=0.100,
    ),
}

_FIELDS = tuple(f.name for f in dataclasses.fields(RadioProfile))


def profile_with(name: str, **overrides: float | int | str) -> RadioProfile:
    """The profile ``name`` from :data:`PROFILES` with some fields replaced (validated)."""
    base = PROFILES.get(name)
    if base is None:
        raise ValueError(f"unknown radio {name!r}; valid radios: {', '.join(sorted(PROFILES))}")
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown radio profile field{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
            f"valid fields: {', '.join(_FIELDS)}"
        )
    return dataclasses.replace(base, **overrides)
