"""What a distribution session cost: frames, rounds, bytes and airtime."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_POLLING = ("BITMAP_QUERY", "BITMAP_REPORT", "RESEND")


@dataclass
class SessionMetrics:
    """Counted by the session (frames, rounds, bytes) and by the driver (airtime, time)."""

    nodes: int = 0
    blocks: int = 0
    #: BLOCK frames broadcast, first pass and repairs together.
    data_broadcasts: int = 0
    announce_frames: int = 0
    repair_rounds: int = 0
    #: Bitmap queries sent (each retry counts).
    queries: int = 0
    #: Frames sent to one node, by frame kind name.
    unicast_frames: Counter[str] = field(default_factory=Counter)
    #: Frames received from nodes, by frame kind name.
    received_frames: Counter[str] = field(default_factory=Counter)
    #: Payload bytes of the bitmap reports received.
    bitmap_bytes: int = 0
    timeouts: int = 0
    #: Complete messages that came when nobody waited for them (late or unexpected).
    late_messages: int = 0
    #: Frames a receiver refused (bad CRC, truncated, unknown kind...).
    rejected_frames: int = 0
    #: Seconds on air by frame kind name, both directions (filled by the driver).
    airtime: Counter[str] = field(default_factory=Counter)
    #: Seconds on air of frames to or from each node (unicast only; filled by the driver).
    airtime_by_node: Counter[str] = field(default_factory=Counter)
    #: Session length in the driver's time (virtual seconds in the simulator).
    duration: float = 0.0

    @property
    def total_airtime(self) -> float:
        return sum(self.airtime.values())

    @property
    def data_airtime(self) -> float:
        return self.airtime.get("BLOCK", 0.0)

    @property
    def control_share(self) -> float:
        """Share of airtime that is not image data (announce, polls, keys, start, verify)."""
        total = self.total_airtime
        return (total - self.data_airtime) / total if total else 0.0

    @property
    def polling_share(self) -> float:
        """Share of airtime spent learning what nodes miss (queries, reports, resends)."""
        total = self.total_airtime
        polling = sum(self.airtime.get(k, 0.0) for k in _POLLING)
        return polling / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "blocks": self.blocks,
            "data_broadcasts": self.data_broadcasts,
            "announce_frames": self.announce_frames,
            "repair_rounds": self.repair_rounds,
            "queries": self.queries,
            "unicast_frames": dict(self.unicast_frames),
            "received_frames": dict(self.received_frames),
            "bitmap_bytes": self.bitmap_bytes,
            "timeouts": self.timeouts,
            "late_messages": self.late_messages,
            "rejected_frames": self.rejected_frames,
            "airtime": {k: round(v, 6) for k, v in self.airtime.items()},
            "airtime_by_node": {k: round(v, 6) for k, v in sorted(self.airtime_by_node.items())},
            "total_airtime": round(self.total_airtime, 6),
            "control_share": round(self.control_share, 6),
            "polling_share": round(self.polling_share, 6),
            "duration": round(self.duration, 6),
        }
