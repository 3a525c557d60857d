"""Tests for harness.gateway.distribution.session.BroadcastSession.

Two levels: whole sessions through sims.driver.SimDriver over a sims.fleet.SimFleet (real
parts, no mocks), and the session driven by hand over a small fake radio of
sims.node.NodeFirmware nodes, where single frames can be dropped or changed on the way.
"""

from __future__ import annotations

import hashlib
from binascii import crc_hqx
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.gateway.distribution.metrics import SessionMetrics
from harness.gateway.distribution.plan import SessionPlan
from harness.gateway.distribution.session import BroadcastSession
from harness.nodeproto.certs import ManufacturerCA
from harness.nodeproto.frames import (
    Abort,
    AbortReason,
    BitmapReport,
    FrameKind,
    KeyAck,
    KeyStatus,
    NodeError,
    NodeState,
    Reassembler,
    Resend,
    Start,
    Status,
    encode,
)
from harness.nodeproto.link import Action, NodeProgress, NodeResult, SetTimer, Transmit
from harness.nodeproto.missing import MissingBlocks
from sims.bounds import arq_bound
from sims.driver import SimDriver
from sims.fleet import SimFleet
from sims.fleetfile import FaultSpec, FleetSpec, NodeOverride
from sims.node import NodeFirmware, NodeTiming

OLD, NEW = "1.0.0", "2.0.0"
IMAGE = bytes((i * 131 + 7) & 0xFF for i in range(8 * 1024))  # 152 blocks on 324, 36 on BLE


def make_plan(
    fleet: SimFleet,
    version: str = NEW,
    *,
    session_id: int = 1,
    counter: int = 1,
    seed: bytes = b"plan",
    **options: object,
) -> SessionPlan:
    return SessionPlan.create(
        IMAGE,
        version,
        fleet.ids,
        session_id=session_id,
        max_frame=fleet.profile.max_frame,
        response_timeout=fleet.profile.response_timeout,
        ca_public_key=fleet.ca.public_key,
        counter=counter,
        seed=seed,
        **options,
    )


def run(
    fleet: SimFleet,
    plan: SessionPlan,
    hook: Callable[[BroadcastSession, SimDriver, Action], None] | None = None,
) -> tuple[BroadcastSession, SessionMetrics, list[Action]]:
    session = BroadcastSession(plan)
    driver = SimDriver(fleet)
    actions: list[Action] = []

    def on_action(action: Action) -> None:
        actions.append(action)
        if hook is not None:
            hook(session, driver, action)

    metrics = driver.run(session, on_action)
    assert session.done
    return session, metrics, actions


def one_result_each(session: BroadcastSession, actions: list[Action]) -> None:
    """Every node of the plan has exactly one result, and the actions said so once."""
    reported = [a.node for a in actions if isinstance(a, NodeResult)]
    assert sorted(reported) == sorted(session.plan.nodes)
    assert set(session.results) == set(session.plan.nodes)


def nothing_bricked(fleet: SimFleet, session: BroadcastSession, old: str, new: str) -> None:
    """Each node runs its old or its new image, and the result says which."""
    for node_id, result in session.results.items():
        running = fleet.node(node_id).running_version
        assert running in (old, new), (node_id, running)
        if result.ok:
            assert (running, result.version, result.reason) == (new, new, None), result
        elif "after the start" in (result.reason or ""):
            assert running in (old, new), (result, running)  # canceled while applying
        else:
            assert running == old and result.reason, (result, running)


def fault_fleet(faults: FaultSpec, nodes: int = 6, row: str = "2", **spec) -> SimFleet:
    return SimFleet(
        FleetSpec(nodes=nodes, seed=1, overrides=[NodeOverride(nodes=row, faults=faults)], **spec)
    )


# -- outcomes over a simulated fleet -------------------------------------------------------


@pytest.mark.parametrize("radio", ["324", "ble"])
@pytest.mark.parametrize(
    ("loss", "burst"), [(0.0, 1.0), (0.1, 1.0), (0.3, 1.0), (0.1, 5.0), (0.3, 5.0)]
)
def test_every_node_is_upgraded(radio: str, loss: float, burst: float) -> None:
    fleet = SimFleet(FleetSpec(radio=radio, nodes=20, loss=loss, burst=burst, seed=1))
    session, metrics, actions = run(fleet, make_plan(fleet))
    assert all(r.ok and r.version == NEW for r in session.results.values()), session.results
    assert fleet.versions() == dict.fromkeys(fleet.ids, NEW)
    one_result_each(session, actions)
    assert metrics.blocks == -(-len(IMAGE) // (fleet.profile.max_frame - 10))
    if loss:
        assert metrics.repair_rounds >= 1 and metrics.timeouts > 0
    else:
        assert metrics.repair_rounds == 0 and metrics.data_broadcasts == metrics.blocks
    # Progress for each node rises, and ends at the start (the result says the rest).
    for node_id in fleet.ids[:3]:
        steps = [a.progress for a in actions if isinstance(a, NodeProgress) and a.node == node_id]
        assert steps == sorted(steps) and steps[-1] == 90.0


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        (FaultSpec(offline=True), "no answer"),
        (FaultSpec(forged_certificate=True), "birth certificate refused"),
        (FaultSpec(power_loss_during_apply=True), "rolled back to 1.0.0"),
        (FaultSpec(fail_self_test=True), "rolled back to 1.0.0"),
        (FaultSpec(corrupt_writes=1.0), "image check failed"),
        (FaultSpec(refuse_key_exchange=True), "key exchange refused"),
        (FaultSpec(slow_answer=30.0), "no answer"),  # beyond every try's wait
    ],
    ids=lambda v: v if isinstance(v, str) else next(iter(v.model_fields_set)),
)
def test_a_faulty_node_fails_with_its_reason_and_the_others_succeed(
    faults: FaultSpec, reason: str
) -> None:
    fleet = fault_fleet(faults)
    bad = fleet.ids[2]
    session, _, actions = run(fleet, make_plan(fleet))
    result = session.results[bad]
    assert not result.ok and reason in result.reason, result
    assert fleet.node(bad).running_version == OLD
    assert all(r.ok for n, r in session.results.items() if n != bad), session.results
    one_result_each(session, actions)
    nothing_bricked(fleet, session, OLD, NEW)


def test_an_offline_node_is_said_to_be_offline() -> None:
    fleet = fault_fleet(FaultSpec(offline=True))
    session, metrics, _ = run(fleet, make_plan(fleet))
    reason = session.results[fleet.ids[2]].reason
    assert reason == "no answer to 18 bitmap queries (offline?)"
    assert metrics.timeouts == 18  # 6 tries in each of 3 rounds, then given up


def test_a_forged_certificate_is_not_kept_and_no_key_is_sent_for_it() -> None:
    fleet = fault_fleet(FaultSpec(forged_certificate=True))
    session, metrics, _ = run(fleet, make_plan(fleet))
    bad = fleet.ids[2]
    assert "not signed by the trusted CA" in session.results[bad].reason
    assert set(session.certificates) == set(fleet.ids) - {bad}
    assert metrics.received_frames["KEY_ACK"] == len(fleet.ids) - 1


@pytest.mark.parametrize(("slow", "late"), [(0.01, False), (0.1, True), (0.5, True)])
def test_a_slow_node_within_the_retries_still_succeeds(slow: float, late: bool) -> None:
    """0.1 and 0.5 s are 2x and 10x the 324 response timeout: answers come late, and the
    session waits longer for that node from then on."""
    fleet = fault_fleet(FaultSpec(slow_answer=slow))
    assert fleet.profile.response_timeout == 0.05
    session, metrics, _ = run(fleet, make_plan(fleet))
    assert all(r.ok for r in session.results.values()), session.results
    assert fleet.node(fleet.ids[2]).running_version == NEW
    assert (metrics.late_messages > 0) is late


class _Spy:
    """Counts what one row of the fleet stores, on both paths, and watches its cuts."""

    def __init__(self, fleet: SimFleet, row: int) -> None:
        self.fleet, self.row = fleet, row
        node = fleet.nodes[row]
        self.stored = 0
        self.resets = 0
        self.held_at_cut: list[int] = []
        self.dropped_after_cut = False
        broadcast_block, write, reset, cut = (
            fleet._broadcast_block,
            node.store.write,
            node.store.reset,
            node.power.cut,
        )

        def _broadcast_block(now, block):
            before = int(fleet.arrays.received[row])
            broadcast_block(now, block)
            after = int(fleet.arrays.received[row])
            self.dropped_after_cut |= after < before
            self.stored += max(0, after - before)

        def _write(index, data, corrupt):
            new = write(index, data, corrupt)
            self.stored += new
            return new

        def _reset(*args):
            self.resets += 1
            return reset(*args)

        def _cut(now, duration):
            self.held_at_cut.append(int(fleet.arrays.received[row]))
            return cut(now, duration)

        fleet._broadcast_block = _broadcast_block  # type: ignore[method-assign]
        node.store.write = _write  # type: ignore[method-assign]
        node.store.reset = _reset  # type: ignore[method-assign]
        node.power.cut = _cut  # type: ignore[method-assign]


@pytest.mark.parametrize("at", [1, 30, 140])
def test_a_node_that_loses_power_mid_transfer_resumes_from_its_bitmap(at: int) -> None:
    # Off for 0.4 s; the default 3 s is the next test.
    fleet = SimFleet(
        FleetSpec(
            nodes=6,
            loss=0.1,
            seed=4,
            overrides=[NodeOverride(nodes="2", faults=FaultSpec(power_loss_at_block=at))],
        ),
        timing=NodeTiming(power_off_time=0.4),
    )
    spy = _Spy(fleet, 2)
    session, metrics, _ = run(fleet, make_plan(fleet))
    k = metrics.blocks
    assert session.results[fleet.ids[2]].ok, session.results[fleet.ids[2]]
    assert fleet.node(fleet.ids[2]).running_version == NEW
    assert int(fleet.arrays.cuts[2]) == 1 and len(spy.held_at_cut) == 1
    assert at <= spy.held_at_cut[0] < k  # cut mid-transfer, holding at least `at` blocks
    # Resumed, not restarted: the store was reset once (the first announce), the count of
    # held blocks never went down, and every block was stored exactly once.
    assert spy.resets == 1 and not spy.dropped_after_cut
    assert spy.stored == k == int(fleet.arrays.received[2])


def test_a_node_that_loses_power_with_the_default_timing_still_upgrades() -> None:
    fleet = fault_fleet(FaultSpec(power_loss_at_block=20), nodes=20)
    session, _, _ = run(fleet, make_plan(fleet))
    assert session.results[fleet.ids[2]].ok, session.results[fleet.ids[2]]


def test_nodes_already_holding_the_image_need_no_repair() -> None:
    fleet = SimFleet(FleetSpec(nodes=8, loss=0.3, seed=1))
    first, m1, _ = run(fleet, make_plan(fleet))
    assert all(r.ok for r in first.results.values()) and m1.repair_rounds > 0
    held = fleet.arrays.received.copy()
    # Same session and image again, a higher counter: every first report says complete.
    again, m2, actions = run(fleet, make_plan(fleet, counter=2))
    assert all(r.ok and r.version == NEW for r in again.results.values()), again.results
    assert m2.repair_rounds == 0 and m2.data_broadcasts == m2.blocks
    assert m2.received_frames["BITMAP_REPORT"] == len(fleet.ids)
    assert (fleet.arrays.received == held).all()
    assert {fleet.node(n).last_counter for n in fleet.ids} == {2}
    one_result_each(again, actions)


def test_a_new_session_to_upgraded_nodes_transfers_again_and_succeeds() -> None:
    fleet = SimFleet(FleetSpec(nodes=5, loss=0.1, seed=2))
    run(fleet, make_plan(fleet))
    session, metrics, _ = run(fleet, make_plan(fleet, "2.1.0", session_id=2, counter=2))
    assert all(r.ok and r.version == "2.1.0" for r in session.results.values())
    assert metrics.repair_rounds >= 1  # a new session id: the old blocks do not count


def test_a_start_counter_used_before_is_refused_as_replayed() -> None:
    fleet = SimFleet(FleetSpec(nodes=3, seed=1))
    run(fleet, make_plan(fleet, counter=7))
    session, _, _ = run(fleet, make_plan(fleet, "3.0.0", session_id=2, counter=7))
    for result in session.results.values():
        assert not result.ok
        assert result.reason == "the node refused the start: replayed start counter"
    nothing_bricked(fleet, session, NEW, "3.0.0")


def test_a_downgrade_is_refused_unless_allowed() -> None:
    fleet = SimFleet(FleetSpec(nodes=4, seed=1, version="1.4.0"))
    refused, _, _ = run(fleet, make_plan(fleet, "1.3.0"))
    for result in refused.results.values():
        assert result.reason == "the node refused the start: downgrade not allowed"
    assert set(fleet.versions().values()) == {"1.4.0"}
    allowed, _, _ = run(
        fleet, make_plan(fleet, "1.3.0", session_id=2, counter=2, allow_downgrade=True)
    )
    assert all(r.ok and r.version == "1.3.0" for r in allowed.results.values())
    assert set(fleet.versions().values()) == {"1.3.0"}


def _cancel_when(predicate: Callable[[Action], bool], out: list[Action]):
    def hook(session: BroadcastSession, driver: SimDriver, action: Action) -> None:
        if not session.done and predicate(action):
            out.extend(session.cancel(driver.env.now, "canceled by the operator"))

    return hook


def test_cancel_fails_every_node_and_tells_them_to_abort() -> None:
    fleet = SimFleet(FleetSpec(nodes=6, loss=0.1, seed=3))
    canceled: list[Action] = []
    first_key = _cancel_when(
        lambda a: isinstance(a, NodeProgress) and a.phase == "key exchange", canceled
    )
    session, metrics, actions = run(fleet, make_plan(fleet, session_id=9), first_key)
    assert not [a for a in actions if isinstance(a, NodeResult)]  # all came from the cancel
    aborts = [a for a in canceled if isinstance(a, Transmit)]
    assert len(aborts) == 1 and aborts[0].to is None and aborts[0].kind is FrameKind.ABORT
    assert Reassembler().feed(aborts[0].frames[0]) == Abort(9, AbortReason.CANCELED)
    results = [a for a in canceled if isinstance(a, NodeResult)]
    assert sorted(r.node for r in results) == fleet.ids
    assert all(not r.ok and r.reason.startswith("canceled by the operator") for r in results)
    assert session.results == {r.node: r for r in results}
    assert metrics.duration > 0
    assert session.cancel(99.0) == []  # done: nothing more
    # The ABORT, heard: every node forgets the transfer (the lossy channel left aside).
    for node in fleet:
        for raw in aborts[0].frames:
            assert node.receive(100.0, raw) == []
    assert all(n.session is None and n.state is NodeState.IDLE for n in fleet)
    assert (fleet.arrays.session == -1).all()
    assert set(fleet.versions().values()) == {OLD}


def test_cancel_keeps_the_results_already_given() -> None:
    fleet = SimFleet(FleetSpec(nodes=6, seed=3))
    canceled: list[Action] = []
    first_ok = _cancel_when(lambda a: isinstance(a, NodeResult) and a.ok, canceled)
    session, _, actions = run(fleet, make_plan(fleet), first_ok)
    done = [a for a in actions if isinstance(a, NodeResult)]
    assert len(done) == 1 and done[0].ok
    late = [a for a in canceled if isinstance(a, NodeResult)]
    assert sorted(r.node for r in done + late) == fleet.ids
    assert session.results[done[0].node] == done[0]
    assert all(r.reason.startswith("canceled by the operator") for r in late)
    nothing_bricked(fleet, session, OLD, NEW)


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_of_200_nodes_at_10_percent_loss_against_the_arq_bound() -> None:
    fleet = SimFleet(FleetSpec(nodes=200, loss=0.1, seed=3))  # seed 3: 455 broadcasts
    session, m, _ = run(fleet, make_plan(fleet))
    assert all(r.ok for r in session.results.values())
    bound = arq_bound(m.blocks, 0.1, n=200)
    assert bound / 1.1 <= m.data_broadcasts <= 1.1 * bound, (m.data_broadcasts, bound)
    assert m.repair_rounds >= 1 and m.bitmap_bytes > 0 and m.queries >= 200
    assert m.airtime["BLOCK"] > 0 and m.data_airtime == m.airtime["BLOCK"]
    assert 0 < m.control_share < 1 and m.duration > 0
    assert m.announce_frames >= 9  # twice, then before each eighth of the first pass
    assert m.received_frames["KEY_ACK"] == 200
    assert m.received_frames["CERT"] >= 200  # a report's certificate may come twice
    assert sum(m.airtime_by_node.values()) < m.total_airtime
    d = m.to_dict()
    assert d["data_broadcasts"] == m.data_broadcasts and d["control_share"] == round(
        m.control_share, 6
    )


def test_the_same_seeds_give_the_same_session_and_another_fleet_seed_another() -> None:
    def once(seed: int) -> tuple[dict, dict, dict]:
        fleet = SimFleet(FleetSpec(nodes=60, loss=0.1, burst=5, seed=seed))
        session, metrics, _ = run(fleet, make_plan(fleet))
        return metrics.to_dict(), dict(session.results), fleet.versions()

    a, b, c = once(11), once(11), once(12)
    assert a == b
    assert a[0] != c[0]


# -- by hand, over a fake radio ----------------------------------------------------------------

CA = ManufacturerCA.from_seed(b"test_distribution_session CA")
IDS = ["n0", "n1", "n2"]
IDENTITIES = {n: CA.issue(n) for n in IDS}
SMALL = IMAGE[:4096]  # 76 blocks of 54 bytes
FRAME_TIME = 0.001

#: (node, frame, what it is part of) -> the frame that arrives, or None: lost.
Down = Callable[[str, bytes, Transmit], bytes | None]
Up = Callable[[str, bytes, FrameKind], bytes | None]


def hand_plan(version: str = NEW, **options: object) -> SessionPlan:
    fields = {"session_id": 1, "counter": 1, "seed": b"hand"} | options
    return SessionPlan.create(
        SMALL,
        version,
        IDS,
        max_frame=64,
        response_timeout=0.05,
        ca_public_key=CA.public_key,
        **fields,  # type: ignore[arg-type]
    )


def hand_nodes(version: str = OLD, timing: NodeTiming | None = None) -> list[NodeFirmware]:
    return [NodeFirmware(IDENTITIES[n], version, 64, timing=timing) for n in IDS]


class Air:
    """A radio by hand: frames arrive unless a hook drops (None) or changes them; answers
    come back in order, one frame time each, after the transmit is on air."""

    def __init__(
        self,
        session: BroadcastSession,
        nodes: list[NodeFirmware],
        *,
        down: Down | None = None,
        up: Up | None = None,
    ) -> None:
        self.session = session
        self.nodes = {n.node_id: n for n in nodes}
        self.down = down or (lambda node, raw, tx: raw)
        self.up = up or (lambda node, raw, kind: raw)
        self.now = 0.0
        self.timer: float | None = None
        self.queue: deque[Transmit] = deque()
        self.inbox: deque[tuple[str, bytes]] = deque()
        self.actions: list[Action] = []
        self.started = False

    def perform(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            self.actions.append(action)
            if isinstance(action, Transmit):
                self.queue.append(action)
            elif isinstance(action, SetTimer):
                self.timer = action.at
        return actions

    def step(self) -> None:
        session = self.session
        if not self.started:
            self.started = True
            self.perform(session.start(self.now))
        elif self.queue:
            tx = self.queue.popleft()
            for raw in tx.frames:
                self.now += FRAME_TIME
                for node_id in [tx.to] if tx.to is not None else list(self.nodes):
                    frame = self.down(node_id, raw, tx)
                    if frame is not None and node_id in self.nodes:
                        answer = self.nodes[node_id].receive(self.now, frame)
                        self.inbox.extend((node_id, f) for f in answer)
            if not self.queue:
                self.perform(session.transmit_done(self.now))
        elif self.inbox:
            node_id, raw = self.inbox.popleft()
            self.now += FRAME_TIME
            frame = self.up(node_id, raw, FrameKind(raw[1]))
            if frame is not None:
                self.perform(session.frame_received(self.now, node_id, frame))
        else:
            assert self.timer is not None, "the session waits for nothing"
            self.now, self.timer = max(self.now, self.timer), None
            self.perform(session.timer_fired(self.now))

    def run(self, until: Callable[[Air], bool] = lambda air: air.session.done) -> Air:
        for _ in range(100_000):
            if until(self):
                return self
            assert not self.session.done, "the session ended first"
            self.step()
        raise AssertionError("too many steps")

    def transmits(self, to: str | None = None) -> list[Transmit]:
        return [a for a in self.actions if isinstance(a, Transmit) and (to is None or a.to == to)]


def _message(raw: bytes):
    return Reassembler().feed(raw)


def _reencode(message, max_frame: int = 64) -> bytes:
    frames = encode(message, max_frame)
    assert len(frames) == 1
    return frames[0]


def _waiting_for_a_report(air: Air) -> bool:
    """A bitmap query is on air and answered, the answer not yet fed back."""
    return bool(air.inbox) and not air.queue and air.timer is not None


def test_by_hand_every_node_is_upgraded() -> None:
    nodes = hand_nodes()
    session = BroadcastSession(hand_plan())
    air = Air(session, nodes).run()
    assert all(r.ok and r.version == NEW for r in session.results.values())
    assert all(n.running_version == NEW for n in nodes)
    kinds = [t.kind for t in air.transmits("n1")]
    for kind in (
        FrameKind.BITMAP_QUERY,
        FrameKind.CERT_REQUEST,
        FrameKind.KEY,
        FrameKind.START,
        FrameKind.STATUS_QUERY,
    ):
        assert kind in kinds
    assert session.metrics.rejected_frames == session.metrics.late_messages == 0


@pytest.mark.parametrize("counter", [5, 4])
def test_by_hand_a_replayed_start_counter_is_refused(counter: int) -> None:
    nodes = hand_nodes()
    Air(BroadcastSession(hand_plan(counter=5)), nodes).run()
    assert [n.last_counter for n in nodes] == [5, 5, 5]
    session = BroadcastSession(hand_plan("3.0.0", session_id=2, counter=counter, seed=b"2"))
    Air(session, nodes).run()
    for result in session.results.values():
        assert not result.ok and "replayed start counter" in result.reason
    assert all(n.running_version == NEW for n in nodes)


def test_by_hand_a_start_with_a_bad_mac_is_refused() -> None:
    def forge(node: str, raw: bytes, tx: Transmit) -> bytes:
        if node == "n1" and tx.kind is FrameKind.START:
            start = _message(raw)
            assert isinstance(start, Start)
            return _reencode(replace(start, mac=bytes(16)))
        return raw

    nodes = hand_nodes()
    session = BroadcastSession(hand_plan())
    Air(session, nodes, down=forge).run()
    assert session.results["n1"].reason == "the node refused the start: bad MAC on the start"
    assert nodes[1].running_version == OLD and nodes[1].last_counter == 0
    assert session.results["n0"].ok and session.results["n2"].ok


def test_by_hand_a_status_report_with_a_bad_mac_fails_the_node() -> None:
    def forge(node: str, raw: bytes, kind: FrameKind) -> bytes:
        status = _message(raw) if kind is FrameKind.STATUS else None
        if node == "n1" and isinstance(status, Status) and status.state is NodeState.RUNNING_NEW:
            return _reencode(replace(status, mac=bytes(a ^ 1 for a in status.mac)))
        return raw

    nodes = hand_nodes()
    session = BroadcastSession(hand_plan())
    Air(session, nodes, up=forge).run()
    assert session.results["n1"] == NodeResult(
        "n1", False, "status report not authenticated (bad MAC)"
    )
    # The gateway cannot vouch for it, but the node did apply the image.
    assert nodes[1].running_version == NEW
    assert session.results["n0"].ok and session.results["n2"].ok


def test_by_hand_a_bitmap_report_for_another_block_count_fails_the_node() -> None:
    def lie(node: str, raw: bytes, kind: FrameKind) -> bytes:
        if node == "n2" and kind is FrameKind.BITMAP_REPORT:
            return _reencode(BitmapReport(1, MissingBlocks.none(77)))
        return raw

    nodes = hand_nodes()
    session = BroadcastSession(hand_plan())
    assert session.block_count == 76
    Air(session, nodes, up=lie).run()
    assert session.results["n2"].reason == "bitmap report for 77 blocks, not 76"
    assert nodes[2].running_version == OLD
    assert session.results["n0"].ok and session.results["n1"].ok


def _framed(header: bytes, payload: bytes = b"") -> bytes:
    body = header + payload
    return body + crc_hqx(body, 0xFFFF).to_bytes(2, "big")


GARBAGE = [
    b"",
    b"\x01",
    bytes(7),
    bytes(range(40)),  # bad CRC
    _framed(bytes([2, 11, 0, 1, 0, 1])),  # protocol version 2
    _framed(bytes([1, 0, 0, 1, 0, 1])),  # kind 0
    _framed(bytes([1, 99, 0, 1, 0, 1])),  # kind 99
    _framed(bytes([1, 11, 0, 1, 0, 0])),  # fragment count 0
    _framed(bytes([1, 11, 0, 1, 3, 2])),  # index beyond count
    _framed(bytes([1, 2, 0, 1, 0, 2]), b"\x00\x01ab"),  # a BLOCK in fragments
    _framed(bytes([1, 11, 0, 1, 0, 1]), b"\x04"),  # STATUS cut short
    _framed(bytes([1, 4, 0, 1, 0, 1]), b"\x09\x00\x4c"),  # report format 9
    _framed(bytes([1, 8, 0, 1, 0, 1]), b"\x00\x00"),  # KEY_ACK with a trailing byte
    bytearray(b"\x01\x0b\x00"),
    "not bytes",  # type: ignore[list-item]
]


def test_by_hand_garbage_never_raises_and_is_counted_rejected() -> None:
    fed = 0

    def with_garbage(node: str, raw: bytes, kind: FrameKind) -> bytes:
        nonlocal fed
        if fed < 3 * len(GARBAGE):  # early, in the middle, whatever was awaited
            for junk in GARBAGE:
                assert session.frame_received(air.now, node, junk) == []
                fed += 1
        return raw

    nodes = hand_nodes()
    session = BroadcastSession(hand_plan())
    air = Air(session, nodes, up=with_garbage)
    for junk in GARBAGE:  # before the start, and from a stranger
        assert session.frame_received(0.0, "stranger", junk) == []
    air.run()
    assert session.metrics.rejected_frames == 4 * len(GARBAGE)
    assert all(r.ok for r in session.results.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([*IDS, "x"]), st.binary(max_size=70)), max_size=8))
def test_by_hand_arbitrary_frames_never_raise(frames: list[tuple[str, bytes]]) -> None:
    session = BroadcastSession(hand_plan())
    air = Air(session, hand_nodes()).run(until=_waiting_for_a_report)
    before = session.metrics.rejected_frames
    for node, raw in frames:
        actions = session.frame_received(air.now, node, raw)
        assert all(isinstance(a, Action) for a in actions)
    assert session.metrics.rejected_frames <= before + len(frames)


def test_by_hand_late_and_unexpected_messages_are_counted_and_ignored() -> None:
    session = BroadcastSession(hand_plan())
    air = Air(session, hand_nodes()).run(until=_waiting_for_a_report)
    awaited, report = air.inbox[0]
    assert awaited == "n0" and FrameKind(report[1]) is FrameKind.BITMAP_REPORT
    m = session.metrics
    assert session.frame_received(air.now, "n1", _reencode(KeyAck(1, KeyStatus.OK))) == []
    assert session.frame_received(air.now, "n0", _reencode(KeyAck(1, KeyStatus.OK))) == []
    other_session = _reencode(BitmapReport(2, MissingBlocks.none(76)))
    assert session.frame_received(air.now, "n0", other_session) == []
    assert m.late_messages == 3 and m.rejected_frames == 0
    assert m.received_frames["KEY_ACK"] == 2
    # The awaited answer still moves the session on.
    air.inbox.popleft()
    actions = session.frame_received(air.now, "n0", report)
    assert any(isinstance(a, Transmit) for a in actions)


def test_by_hand_a_timer_before_the_deadline_does_nothing() -> None:
    def deaf_n0(node: str, raw: bytes, tx: Transmit) -> bytes | None:
        return None if node == "n0" and tx.kind is FrameKind.BITMAP_QUERY else raw

    session = BroadcastSession(hand_plan())
    air = Air(session, hand_nodes(), down=deaf_n0)
    air.run(until=lambda a: not a.queue and a.timer is not None and bool(a.transmits("n0")))
    deadline = air.timer
    assert deadline is not None and air.transmits()[-1].kind is FrameKind.BITMAP_QUERY
    assert session.timer_fired(deadline - 0.001) == []
    assert session.timer_fired(deadline - 0.04) == []
    assert session.metrics.timeouts == 0
    actions = session.timer_fired(deadline)
    assert session.metrics.timeouts == 1
    assert [(a.to, a.kind) for a in actions if isinstance(a, Transmit)] == [
        ("n0", FrameKind.BITMAP_QUERY)
    ]
    assert session.timer_fired(deadline + 1.0) == []  # the retry is not on air yet
    assert session.transmit_done(deadline) == [SetTimer(deadline + 0.05)]
    assert session.transmit_done(deadline) == []  # said once


def test_by_hand_the_apply_wait_is_not_cut_short_by_an_early_timer() -> None:
    session = BroadcastSession(hand_plan())
    air = Air(session, hand_nodes())
    air.run(until=lambda a: a.timer is not None and a.timer - a.now > 1.0 and not a.queue)
    until = air.timer
    assert until is not None
    assert session.timer_fired(until - 0.5) == []
    actions = session.timer_fired(until)
    assert [a.kind for a in actions if isinstance(a, Transmit)] == [FrameKind.STATUS_QUERY]


def test_by_hand_a_partial_certificate_is_completed_with_a_resend() -> None:
    dropped = []

    def lose_fragment_1(node: str, raw: bytes, kind: FrameKind) -> bytes | None:
        if node == "n1" and kind is FrameKind.CERT and raw[4] == 1 and not dropped:
            dropped.append(raw)
            return None
        return raw

    session = BroadcastSession(hand_plan())
    air = Air(session, hand_nodes(), up=lose_fragment_1).run()
    assert dropped and session.results["n1"].ok
    sent = air.transmits("n1")
    kinds = [t.kind for t in sent]
    i = kinds.index(FrameKind.CERT_REQUEST)
    assert kinds[i : i + 3] == [FrameKind.CERT_REQUEST, FrameKind.RESEND, FrameKind.KEY]
    assert sent[i + 1].frames == tuple(encode(Resend(1, FrameKind.CERT, 0b10), 64))
    assert session.metrics.unicast_frames["RESEND"] == 1
    assert session.metrics.unicast_frames["CERT_REQUEST"] == 3  # one per node


def test_by_hand_a_node_that_missed_every_announce_is_sent_one() -> None:
    def no_broadcast_announce_for_n2(node: str, raw: bytes, tx: Transmit) -> bytes | None:
        lost = node == "n2" and tx.kind is FrameKind.ANNOUNCE and tx.to is None
        return None if lost else raw

    nodes = hand_nodes()
    session = BroadcastSession(hand_plan())
    air = Air(session, nodes, down=no_broadcast_announce_for_n2).run()
    assert nodes[2].rejected == []
    assert [t.kind for t in air.transmits("n2")][:2] == [
        FrameKind.BITMAP_QUERY,
        FrameKind.ANNOUNCE,
    ]
    assert session.results["n2"].ok and nodes[2].running_version == NEW
    assert session.metrics.repair_rounds >= 1  # it needed every block once more


def test_by_hand_cancel_before_the_start_is_harmless() -> None:
    session = BroadcastSession(hand_plan())
    actions = session.cancel(0.0)
    assert [a.kind for a in actions if isinstance(a, Transmit)] == [FrameKind.ABORT]
    assert {r.node: r.reason for r in actions if isinstance(r, NodeResult)} == dict.fromkeys(
        IDS, "session canceled"
    )
    assert session.done and session.metrics.duration == 0.0
    assert session.timer_fired(1.0) == [] and session.transmit_done(1.0) == []


def test_plan_digest_is_of_the_plaintext_and_the_ciphertext_differs_per_seed() -> None:
    a, b = hand_plan(), hand_plan(seed=b"other")
    assert a.digest == b.digest == hashlib.sha256(SMALL).digest()
    assert a.ciphertext != b.ciphertext and len(a.ciphertext) == len(SMALL)
    assert BroadcastSession(a).block_count == 76


def test_by_hand_a_lost_start_is_sent_again_when_the_status_says_ready() -> None:
    """A START is not answered; lost on the way, the node is still READY when its status is
    read, and the session starts it again."""
    lost = []

    def lose_first_start(node: str, raw: bytes, tx: Transmit) -> bytes | None:
        if node == "n0" and tx.kind is FrameKind.START and not lost:
            lost.append(raw)
            return None
        return raw

    nodes = hand_nodes(timing=NodeTiming(apply_time=0.01))
    session = BroadcastSession(hand_plan())
    air = Air(session, nodes, down=lose_first_start).run()
    assert lost and session.results["n0"].ok and nodes[0].running_version == NEW
    assert [t.kind for t in air.transmits("n0")].count(FrameKind.START) == 2
    assert nodes[0].error is NodeError.NONE and nodes[0].last_counter == 1
