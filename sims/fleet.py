"""A fleet of simulated nodes on one radio channel.

Each node is a :class:`~sims.node.NodeFirmware`, but what a broadcast block does to the
fleet is decided for all nodes at once: who hears it (one channel draw per node), who
stores it, who writes it corrupted, who loses power. Per-node Python runs only for the
frames that are per node anyway (control frames, unicasts). The fleet-wide arrays are
the nodes' flash: each node's store and power supply are views of one row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harness.nodeproto.certs import ManufacturerCA, NodeIdentity
from harness.nodeproto.crypto import decrypt_image
from harness.nodeproto.frames import Block, FrameError, FrameKind, decode_frame, decode_payload
from harness.nodeproto.missing import MissingBlocks

from .channels import Channel
from .fleetfile import FaultSpec, FleetSpec
from .node import NodeFirmware, NodeTiming
from .radio import RadioProfile

_NOBODY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Reply:
    """Frames a node sends back, and the extra delay before it starts (slow answers)."""

    node: str
    frames: list[bytes]
    delay: float


class FleetArrays:
    """The flash of every node for the image being transferred: one row per node."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.block_count = 0
        self.have = np.zeros((nodes, 0), dtype=bool)
        self.corrupted = np.zeros((nodes, 0), dtype=bool)
        self.received = np.zeros(nodes, dtype=np.int64)
        #: Blocks each node ever stored (never reset): a node that resumed after a power cut
        #: stores each block once; one that lost its bitmap stores some twice.
        self.writes = np.zeros(nodes, dtype=np.int64)
        #: Session each node is receiving (-1: none).
        self.session = np.full(nodes, -1, dtype=np.int64)
        self.off_until = np.full(nodes, -np.inf)
        self.cuts = np.zeros(nodes, dtype=np.int64)

    def ensure(self, block_count: int) -> None:
        """Arrays for an image of ``block_count`` blocks (one transfer at a time per fleet)."""
        if block_count != self.block_count:
            self.block_count = block_count
            self.have = np.zeros((self.nodes, block_count), dtype=bool)
            self.corrupted = np.zeros((self.nodes, block_count), dtype=bool)
            self.received[:] = 0


class FleetStore:
    """A node's block store: one row of the fleet arrays."""

    def __init__(self, fleet: SimFleet, row: int) -> None:
        self.fleet = fleet
        self.row = row

    @property
    def block_count(self) -> int:
        return self.fleet.arrays.block_count

    def reset(self, block_count: int, block_size: int, session: int = -1) -> None:
        arrays = self.fleet.arrays
        arrays.ensure(block_count)
        arrays.have[self.row] = False
        arrays.corrupted[self.row] = False
        arrays.received[self.row] = 0
        arrays.session[self.row] = session

    def drop(self) -> None:
        self.fleet.arrays.session[self.row] = -1

    def write(self, index: int, data: bytes, corrupt: bool) -> bool:
        arrays = self.fleet.arrays
        if arrays.have[self.row, index]:
            return False
        self.fleet.air.setdefault(int(arrays.session[self.row]), {})[index] = data
        arrays.have[self.row, index] = True
        arrays.corrupted[self.row, index] = corrupt
        arrays.received[self.row] += 1
        arrays.writes[self.row] += 1
        return True

    def received(self) -> int:
        return int(self.fleet.arrays.received[self.row])

    def missing(self) -> MissingBlocks:
        return MissingBlocks.from_bool_array(~self.fleet.arrays.have[self.row])

    def image_digest(self, key: bytes, nonce: bytes, size: int) -> bytes:
        arrays = self.fleet.arrays
        bad = np.flatnonzero(arrays.corrupted[self.row])
        session = int(arrays.session[self.row])
        return self.fleet.image_digest(session, key, nonce, size, bad.tolist())


class FleetPower:
    """A node's supply: one slot of the fleet arrays."""

    def __init__(self, arrays: FleetArrays, row: int) -> None:
        self.arrays = arrays
        self.row = row

    def is_off(self, now: float) -> bool:
        return now < self.arrays.off_until[self.row]

    def cut(self, now: float, duration: float) -> None:
        self.arrays.off_until[self.row] = now + duration
        self.arrays.cuts[self.row] += 1

    @property
    def cuts(self) -> int:
        return int(self.arrays.cuts[self.row])


class SimFleet:
    """The nodes of a :class:`FleetSpec`, their channel and their radio."""

    def __init__(
        self,
        spec: FleetSpec,
        *,
        ca: ManufacturerCA | None = None,
        timing: NodeTiming | None = None,
    ) -> None:
        self.spec = spec
        self.timing = timing or NodeTiming()
        self.profile: RadioProfile = spec.profile()
        self.ids = spec.node_ids()
        self.index = {node_id: i for i, node_id in enumerate(self.ids)}
        #: Who hears what (one stream), and what the faults draw (another): changing one
        #: node's corrupt_writes must not change every other node's receptions.
        self.rng = spec.rng("air")
        #: Whether the node of the last :meth:`unicast` heard it (a trace records it).
        self.heard_last = False
        self.fault_rng = spec.rng("faults")
        self.channel: Channel = spec.channel(spec.rng("channel"))
        self.ca = ca or ManufacturerCA.from_seed(f"ota-hil fleet CA {spec.seed}".encode())
        self._forger = ManufacturerCA.from_seed(f"ota-hil forger {spec.seed}".encode())
        self.arrays = FleetArrays(len(self.ids))
        #: Block data as broadcast, by session (what a node of that session stores).
        self.air: dict[int, dict[int, bytes]] = {}
        _, _, versions, faults = spec.per_node()
        self.faults = faults
        self.corrupt_rate = np.array([f.corrupt_writes for f in faults], dtype=float)
        self.offline = np.array([f.offline for f in faults], dtype=bool)
        self.power_loss_at = np.array(
            [-1 if f.power_loss_at_block is None else f.power_loss_at_block for f in faults]
        )
        self.nodes = [
            NodeFirmware(
                _LazyIdentity(self, i),  # type: ignore[arg-type]
                versions[i],
                self.profile.max_frame,
                store=FleetStore(self, i),
                power=FleetPower(self.arrays, i),
                faults=faults[i],
                timing=self.timing,
                rng=self.fault_rng,
            )
            for i in range(len(self.ids))
        ]
        self._digests: dict[tuple[int, bytes, bytes, int], bytes] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[NodeFirmware]:
        return iter(self.nodes)

    def node(self, node_id: str) -> NodeFirmware:
        return self.nodes[self.index[node_id]]

    def identity(self, row: int) -> NodeIdentity:
        """A node's birth identity, issued when first needed (10,000 signatures add up)."""
        ca = self._forger if self.faults[row].forged_certificate else self.ca
        return ca.issue(self.ids[row])

    def set_faults(self, node_id: str, faults: FaultSpec) -> None:
        """Change a node's faults after the fleet was built (a scenario's Given steps)."""
        row = self.index[node_id]
        self.faults[row] = faults
        self.nodes[row].faults = faults
        self.corrupt_rate[row] = faults.corrupt_writes
        self.offline[row] = faults.offline
        self.power_loss_at[row] = (
            -1 if faults.power_loss_at_block is None else faults.power_loss_at_block
        )
        self.nodes[row].identity = _LazyIdentity(self, row)  # type: ignore[assignment]

    def versions(self) -> dict[str, str]:
        return {node.node_id: node.running_version for node in self.nodes}

    # -- the air ---------------------------------------------------------------------------

    def broadcast(self, now: float, raw: bytes) -> np.ndarray:
        """One broadcast frame: every node that is up may hear it. Returns the rows of the
        nodes that heard it."""
        try:
            frame = decode_frame(raw)
        except FrameError:
            return _NOBODY
        if frame.kind is FrameKind.BLOCK and frame.count == 1:
            try:
                block = decode_payload(frame.kind, frame.session, frame.payload)
            except FrameError:
                return _NOBODY
            assert isinstance(block, Block)
            return self._broadcast_block(now, block)
        listening = np.flatnonzero(~self.offline & (self.arrays.off_until <= now))
        heard = listening[self.channel.deliver(self.rng, listening)]
        for row in heard.tolist():
            self.nodes[row].receive(now, raw)
        return heard

    def _broadcast_block(self, now: float, block: Block) -> np.ndarray:
        arrays = self.arrays
        if block.index >= arrays.block_count:
            return _NOBODY
        self.air.setdefault(block.session, {})[block.index] = block.data
        listening = np.flatnonzero(
            (arrays.session == block.session) & ~self.offline & (arrays.off_until <= now)
        )
        if listening.size == 0:
            return _NOBODY
        heard = listening[self.channel.deliver(self.rng, listening)]
        new = heard[~arrays.have[heard, block.index]]
        if new.size == 0:
            return heard
        arrays.have[new, block.index] = True
        rates = self.corrupt_rate[new]
        if rates.any():
            bad = new[self.fault_rng.random(new.size) < rates]
            arrays.corrupted[bad, block.index] = True
        arrays.received[new] += 1
        arrays.writes[new] += 1
        at = self.power_loss_at[new]
        for row in new[(at >= 0) & (arrays.received[new] >= at)].tolist():
            self.nodes[row].after_write(now, int(arrays.received[row]))
        return heard

    def unicast(self, now: float, node_id: str, raw: bytes) -> Reply | None:
        """A frame to one node; its answer, if it heard the frame and answers."""
        row = self.index.get(node_id)
        self.heard_last = row is not None and self.channel.deliver_one(self.rng, row)
        if not self.heard_last:
            return None
        node = self.nodes[row]
        frames = node.receive(now, raw)
        return Reply(node_id, frames, node.reply_delay) if frames else None

    def uplink(self, node_id: str) -> bool:
        """Whether the gateway hears one frame from ``node_id`` (same channel, other way)."""
        return self.channel.deliver_one(self.rng, self.index[node_id])

    def image_digest(
        self, session: int, key: bytes, nonce: bytes, size: int, corrupted: list[int]
    ) -> bytes:
        """sha256 of the image as a node of ``session`` holds it: that session's blocks as
        broadcast, some of them flipped."""
        if not corrupted:
            cache = (session, key, nonce, size)
            if cache not in self._digests:
                self._digests[cache] = self._digest(session, key, nonce, size, [])
            return self._digests[cache]
        return self._digest(session, key, nonce, size, corrupted)

    def _digest(
        self, session: int, key: bytes, nonce: bytes, size: int, corrupted: list[int]
    ) -> bytes:
        air = self.air.get(session, {})
        blocks = [air.get(i, b"") for i in range(self.arrays.block_count)]
        for i in corrupted:
            if blocks[i]:
                blocks[i] = bytes([blocks[i][0] ^ 0xFF]) + blocks[i][1:]
        ciphertext = b"".join(blocks)[:size]
        return hashlib.sha256(decrypt_image(ciphertext, key, nonce)).digest()


class _LazyIdentity:
    """Stands in for a node's identity until something reads it."""

    def __init__(self, fleet: SimFleet, row: int) -> None:
        self._fleet = fleet
        self._row = row
        self._identity: NodeIdentity | None = None

    def _get(self) -> NodeIdentity:
        if self._identity is None:
            self._identity = self._fleet.identity(self._row)
        return self._identity

    @property
    def node_id(self) -> str:
        return self._fleet.ids[self._row]

    @property
    def certificate(self):
        return self._get().certificate

    @property
    def private_key(self) -> bytes:
        return self._get().private_key
