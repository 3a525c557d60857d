"""Tests for sims.fleet.SimFleet: the vectorised block path against the per-node path,
who stores what (offline, powered off), and the image digest as the fleet computes it."""

from __future__ import annotations

import hashlib

import numpy as np

from harness.gateway.distribution.plan import SessionPlan
from harness.nodeproto.crypto import decrypt_image, wrap_image_key
from harness.nodeproto.frames import (
    Announce,
    BitmapQuery,
    BitmapReport,
    Block,
    Key,
    KeyAck,
    KeyStatus,
    NodeError,
    Reassembler,
    Status,
    encode,
    max_block_size,
)
from harness.nodeproto.missing import MissingBlocks
from sims.fleet import FleetStore, SimFleet
from sims.fleetfile import FaultSpec, FleetSpec, NodeOverride
from sims.node import ByteStore, NodeFirmware

IMAGE = bytes((i * 29 + 3) & 0xFF for i in range(4096))  # 76 blocks of 54 bytes


class ScriptedChannel:
    """Delivers what the test says: ``row`` is the frame's reception per node."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.row = np.ones(n, dtype=bool)

    def deliver(self, rng: np.random.Generator, receivers: np.ndarray) -> np.ndarray:
        return self.row[receivers]

    def deliver_one(self, rng: np.random.Generator, node: int) -> bool:
        return bool(self.row[node])

    def advance(self, frames: int = 1) -> None:
        pass

    def mean_loss(self) -> np.ndarray:
        return np.zeros(self.n)


class Transfer:
    """One session's frames for a fleet (or for nodes on their own)."""

    def __init__(self, fleet: SimFleet, *, session_id: int = 1, seed: bytes = b"f") -> None:
        self.plan = SessionPlan.create(
            IMAGE,
            "2.0.0",
            fleet.ids,
            session_id=session_id,
            max_frame=fleet.profile.max_frame,
            response_timeout=fleet.profile.response_timeout,
            ca_public_key=fleet.ca.public_key,
            counter=1,
            seed=seed,
        )
        size = max_block_size(fleet.profile.max_frame)
        ct = self.plan.ciphertext
        self.size = size
        self.count = -(-len(ct) // size)
        self.announce = Announce(session_id, len(ct), size, self.count, self.plan.digest, "2.0.0")
        self.announce_frames = encode(self.announce, fleet.profile.max_frame)
        self.blocks = [
            Block(session_id, i, ct[i * size : (i + 1) * size]) for i in range(self.count)
        ]
        self.block_frames = [encode(b, fleet.profile.max_frame)[0] for b in self.blocks]

    def announce_to(self, fleet: SimFleet, now: float = 0.0) -> None:
        for raw in self.announce_frames:
            fleet.broadcast(now, raw)

    def everything(self, fleet: SimFleet, now: float = 0.0) -> None:
        self.announce_to(fleet, now)
        for raw in self.block_frames:
            fleet.broadcast(now, raw)

    def digest_with_flips(self, flipped: list[int]) -> bytes:
        ct = bytearray(self.plan.ciphertext)
        for i in flipped:
            ct[i * self.size] ^= 0xFF
        return hashlib.sha256(
            decrypt_image(bytes(ct), self.plan.image_key, self.plan.nonce)
        ).digest()


def digest_of(fleet: SimFleet, row: int, t: Transfer) -> bytes:
    return fleet.nodes[row].store.image_digest(t.plan.image_key, t.plan.nonce, len(IMAGE))


def held(fleet: SimFleet, row: int) -> np.ndarray:
    return np.flatnonzero(fleet.arrays.have[row])


# -- the two paths agree -------------------------------------------------------------------


def test_the_vectorised_and_the_per_node_paths_store_the_same() -> None:
    spec = FleetSpec(
        nodes=8,
        seed=3,
        overrides=[
            NodeOverride(nodes="2", faults=FaultSpec(corrupt_writes=1.0)),
            NodeOverride(nodes="5", faults=FaultSpec(power_loss_at_block=20)),
            NodeOverride(nodes="6", faults=FaultSpec(offline=True)),
        ],
    )
    fast, slow = SimFleet(spec), SimFleet(spec)
    t = Transfer(fast)
    alone = [
        NodeFirmware(fast.identity(r), "1.0.0", fast.profile.max_frame, faults=fast.faults[r])
        for r in range(8)
    ]
    script = np.random.default_rng(7).random((t.count, 8)) < 0.7
    channel = ScriptedChannel(8)
    t.announce_to(fast)
    fast.channel = channel
    for node in list(slow) + alone:
        for raw in t.announce_frames:
            node.receive(0.0, raw)

    def deliver(now: float, deliveries: np.ndarray) -> None:
        for i, raw in enumerate(t.block_frames):
            channel.row = deliveries[i]
            fast.broadcast(now, raw)  # the vectorised path
            for row in np.flatnonzero(deliveries[i]).tolist():
                slow.nodes[row].receive(now, raw)  # NodeFirmware.write_block -> FleetStore
                alone[row].receive(now, raw)  # NodeFirmware.write_block -> ByteStore

    deliver(0.0, script)  # a lossy first pass; node 5 loses power at its 20th block
    a, b = fast.arrays, slow.arrays
    assert np.array_equal(a.have, b.have) and np.array_equal(a.received, b.received)
    assert np.array_equal(a.corrupted, b.corrupted) and np.array_equal(a.cuts, b.cuts)
    assert a.cuts.tolist() == [0, 0, 0, 0, 0, 1, 0, 0] and a.received[5] == 20
    assert a.received[6] == 0 and a.corrupted[2].sum() == a.received[2] > 0
    for row in range(8):
        joined = [n.session is not None for n in (fast.nodes[row], slow.nodes[row], alone[row])]
        assert joined == [row != 6] * 3
        if row != 6:  # (a node outside the session answers NO_IMAGE, not its store)
            assert fast.nodes[row].store.missing() == slow.nodes[row].store.missing()
            assert fast.nodes[row].store.missing() == alone[row].store.missing()
        assert alone[row].power.cuts == a.cuts[row]

    deliver(10.0, np.ones_like(script))  # a repair that reaches everyone (node 5 is back)
    assert np.array_equal(a.have, b.have) and np.array_equal(a.corrupted, b.corrupted)
    assert a.received.tolist() == [t.count] * 6 + [0, t.count]
    for row in (0, 1, 2, 3, 4, 5, 7):
        fleet_digest = digest_of(fast, row, t)
        assert fleet_digest == digest_of(slow, row, t)
        assert fleet_digest == alone[row].store.image_digest(
            t.plan.image_key, t.plan.nonce, len(IMAGE)
        )
        assert (fleet_digest == t.plan.digest) is (row != 2)


# -- who stores -------------------------------------------------------------------------------


def test_an_offline_node_never_stores_nor_answers() -> None:
    fleet = SimFleet(
        FleetSpec(
            nodes=4, seed=1, overrides=[NodeOverride(nodes="1", faults=FaultSpec(offline=True))]
        )
    )
    t = Transfer(fleet)
    t.everything(fleet, 0.0)
    t.everything(fleet, 5.0)
    assert fleet.arrays.received.tolist() == [t.count, 0, t.count, t.count]
    assert not fleet.arrays.have[1].any() and fleet.arrays.session[1] == -1
    assert fleet.nodes[1].session is None
    query = encode(BitmapQuery(1), fleet.profile.max_frame)[0]
    assert fleet.unicast(6.0, fleet.ids[1], query) is None
    reply = fleet.unicast(6.0, fleet.ids[0], query)
    assert reply is not None and reply.node == fleet.ids[0]
    assert Reassembler().feed(reply.frames[0]) == BitmapReport(1, MissingBlocks.none(t.count))


def test_a_node_powered_off_at_the_time_of_a_block_does_not_store_it() -> None:
    fleet = SimFleet(FleetSpec(nodes=4, seed=1))
    t = Transfer(fleet)
    t.announce_to(fleet, 0.0)
    fleet.broadcast(0.5, t.block_frames[0])
    fleet.nodes[1].power.cut(1.0, 2.0)  # off during [1.0, 3.0)
    assert fleet.nodes[1].power.is_off(2.999) and not fleet.nodes[1].power.is_off(3.0)
    fleet.broadcast(1.0, t.block_frames[1])
    fleet.broadcast(2.999, t.block_frames[2])
    fleet.broadcast(3.0, t.block_frames[3])  # back on
    assert held(fleet, 1).tolist() == [0, 3]
    assert held(fleet, 0).tolist() == [0, 1, 2, 3]
    query = encode(BitmapQuery(1), fleet.profile.max_frame)[0]
    assert fleet.unicast(2.5, fleet.ids[1], query) is None
    assert fleet.unicast(3.5, fleet.ids[1], query) is not None


def test_a_node_off_during_the_announce_stores_nothing_of_that_session() -> None:
    fleet = SimFleet(FleetSpec(nodes=3, seed=1))
    t = Transfer(fleet)
    fleet.nodes[2].power.cut(0.0, 1.0)
    t.announce_to(fleet, 0.5)
    for raw in t.block_frames:
        fleet.broadcast(2.0, raw)
    assert fleet.arrays.session.tolist() == [1, 1, -1]
    assert fleet.arrays.received.tolist() == [t.count, t.count, 0]


def test_blocks_of_another_session_or_beyond_the_count_are_ignored() -> None:
    fleet = SimFleet(FleetSpec(nodes=2, seed=1))
    t = Transfer(fleet)
    t.announce_to(fleet)
    fleet.broadcast(0.0, encode(Block(2, 0, b"other session"), 64)[0])
    fleet.broadcast(0.0, encode(Block(1, t.count, b"beyond"), 64)[0])
    fleet.broadcast(0.0, b"\x01\x02garbage")
    assert fleet.arrays.received.tolist() == [0, 0]
    assert t.count not in fleet.air


def test_the_power_loss_fault_on_the_vectorised_path_cuts_once() -> None:
    fleet = SimFleet(
        FleetSpec(
            nodes=3,
            seed=1,
            overrides=[NodeOverride(nodes="0", faults=FaultSpec(power_loss_at_block=10))],
        )
    )
    t = Transfer(fleet)
    t.announce_to(fleet)
    for i, raw in enumerate(t.block_frames):
        fleet.broadcast(i * 0.01, raw)
    assert fleet.arrays.cuts.tolist() == [1, 0, 0]
    assert fleet.arrays.received[0] == 10
    off = fleet.timing.power_off_time
    for raw in t.block_frames:
        fleet.broadcast(0.1 + off, raw)
    assert fleet.arrays.cuts.tolist() == [1, 0, 0]  # no second cut
    assert fleet.arrays.received.tolist() == [t.count] * 3


# -- the image digest -------------------------------------------------------------------------


def test_the_air_image_digest_with_and_without_corrupted_blocks() -> None:
    fleet = SimFleet(
        FleetSpec(
            nodes=3,
            seed=5,
            overrides=[
                NodeOverride(nodes="1", faults=FaultSpec(corrupt_writes=1.0)),
                NodeOverride(nodes="2", faults=FaultSpec(corrupt_writes=0.3)),
            ],
        )
    )
    t = Transfer(fleet)
    t.everything(fleet)
    key, nonce = t.plan.image_key, t.plan.nonce
    assert fleet.image_digest(1, key, nonce, len(IMAGE), []) == t.plan.digest
    assert digest_of(fleet, 0, t) == t.plan.digest
    assert digest_of(fleet, 1, t) == t.digest_with_flips(list(range(t.count))) != t.plan.digest
    some = np.flatnonzero(fleet.arrays.corrupted[2]).tolist()
    assert 0 < len(some) < t.count
    assert digest_of(fleet, 2, t) == t.digest_with_flips(some) != t.plan.digest
    # A node on its own with the same blocks flipped agrees.
    store = ByteStore()
    store.reset(t.count, t.size, 1)
    for b in t.blocks:
        store.write(b.index, b.data, corrupt=b.index in some)
    assert store.image_digest(key, nonce, len(IMAGE)) == digest_of(fleet, 2, t)
    # The cached clean digest is not disturbed by the corrupted ones.
    assert digest_of(fleet, 0, t) == t.plan.digest


def test_the_key_exchange_reads_the_digest_of_what_each_node_holds() -> None:
    fleet = SimFleet(
        FleetSpec(
            nodes=2,
            seed=5,
            overrides=[NodeOverride(nodes="1", faults=FaultSpec(corrupt_writes=1.0))],
        )
    )
    t = Transfer(fleet)
    t.everything(fleet)
    statuses = []
    for row, node_id in enumerate(fleet.ids):
        cert = fleet.identity(row).certificate
        envelope, _ = wrap_image_key(t.plan.image_key, cert.public_key, t.plan.key_context)
        raw = encode(Key(1, envelope.encode()), 64)[0]
        reply = fleet.unicast(0.0, node_id, raw)
        assert reply is not None
        ack = Reassembler().feed(reply.frames[0])
        assert isinstance(ack, KeyAck)
        statuses.append(ack.status)
    assert statuses == [KeyStatus.OK, KeyStatus.IMAGE_CHECK_FAILED]


def test_each_session_keeps_its_own_air() -> None:
    """A node is checked against the blocks of the session it is in, not of a later one
    (the gateway never reuses a session id: it is the low bits of a counter that only
    grows, see test_the_start_counter_grows_across_instances)."""
    fleet = SimFleet(FleetSpec(nodes=2, seed=1))
    first = Transfer(fleet, session_id=1, seed=b"first")
    first.everything(fleet)
    second = Transfer(fleet, session_id=2, seed=b"second")
    for raw in second.block_frames:  # a later session's blocks on air, unannounced here
        fleet.broadcast(0.0, raw)
    assert digest_of(fleet, 0, first) == first.plan.digest
    assert fleet.air[1] != fleet.air[2]


def test_a_fleet_of_many_nodes_stores_each_block_once_per_node() -> None:
    fleet = SimFleet(FleetSpec(nodes=2000, loss=0.2, seed=9))
    t = Transfer(fleet)
    t.announce_to(fleet)
    assert (fleet.arrays.session == 1).mean() > 0.7
    for _ in range(3):
        for raw in t.block_frames:
            fleet.broadcast(0.0, raw)
    a = fleet.arrays
    assert np.array_equal(a.received, a.have.sum(axis=1))
    joined = a.session == 1
    assert not a.have[~joined].any()
    # Three sends at 20% loss: about 1 - 0.2**3 = 99.2% of the blocks of a joined node.
    share = a.have[joined].mean()
    assert 0.985 < share < 0.998, share
    row = int(np.flatnonzero(joined)[0])
    assert isinstance(fleet.nodes[row].store, FleetStore)
    assert fleet.nodes[row].store.missing() == MissingBlocks.from_bool_array(~a.have[row])
    # A node that missed the announce says so when asked.
    outsider = fleet.nodes[int(np.flatnonzero(~joined)[0])]
    status = Reassembler().feed(outsider.receive(1.0, encode(BitmapQuery(1), 64)[0])[0])
    assert isinstance(status, Status) and status.error is NodeError.NO_IMAGE
