"""Tests for sims.node.NodeFirmware on its own: the per-node path (ByteStore + Battery),
driven frame by frame with real crypto, as a gateway would."""

from __future__ import annotations

import hashlib
import struct
from binascii import crc_hqx

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.gateway.distribution.plan import SessionPlan
from harness.nodeproto.certs import BirthCertificate, ManufacturerCA, verify_certificate
from harness.nodeproto.crypto import (
    decrypt_image,
    macs_equal,
    start_mac,
    status_mac,
    wrap_image_key,
)
from harness.nodeproto.frames import (
    START_DIGEST_SIZE,
    Abort,
    AbortReason,
    Announce,
    BitmapQuery,
    BitmapReport,
    Block,
    Cert,
    CertRequest,
    FrameKind,
    Key,
    KeyAck,
    KeyStatus,
    Message,
    NodeError,
    NodeState,
    Reassembler,
    Resend,
    Start,
    Status,
    StatusQuery,
    encode,
    max_block_size,
)
from harness.nodeproto.missing import MissingBlocks
from sims.fleetfile import FaultSpec
from sims.node import Battery, ByteStore, NodeFirmware, NodeTiming

CA = ManufacturerCA.from_seed(b"test_sims_node CA")
NODE = "node-0007"
IDENTITY = CA.issue(NODE)
OTHER = CA.issue("node-0008")
MAX_FRAME = 64
IMAGE = bytes((i * 37 + 11) & 0xFF for i in range(4000))  # 75 blocks of 54 bytes
APPLY = 1.0  # NodeTiming().apply_time


class Gateway:
    """The gateway's side of one session with one node, by hand."""

    def __init__(
        self,
        *,
        version: str = "2.0.0",
        session_id: int = 1,
        counter: int = 1,
        image: bytes = IMAGE,
        seed: bytes = b"k",
        max_frame: int = MAX_FRAME,
        allow_downgrade: bool = False,
    ) -> None:
        self.plan = SessionPlan.create(
            image,
            version,
            [NODE],
            session_id=session_id,
            max_frame=max_frame,
            response_timeout=0.05,
            ca_public_key=CA.public_key,
            counter=counter,
            seed=seed,
            allow_downgrade=allow_downgrade,
        )
        self.sid = session_id
        self.max_frame = max_frame
        self.block_size = max_block_size(max_frame)
        ct = self.plan.ciphertext
        self.blocks = [
            Block(session_id, i, ct[o : o + self.block_size])
            for i, o in enumerate(range(0, len(ct), self.block_size))
        ]
        self.announce = Announce(
            session_id,
            len(ct),
            self.block_size,
            len(self.blocks),
            self.plan.digest,
            version,
        )
        self.mac_key: bytes | None = None

    def send(self, node: NodeFirmware, now: float, message: Message) -> list[bytes]:
        frames: list[bytes] = []
        for raw in encode(message, self.max_frame):
            frames += node.receive(now, raw)
        return frames

    def ask(self, node: NodeFirmware, now: float, message: Message) -> Message | None:
        """The node's (reassembled) answer, None when it says nothing."""
        reassembler = Reassembler()
        answer = None
        for raw in self.send(node, now, message):
            got = reassembler.feed(raw)
            if got is not None:
                assert answer is None, "more than one answer"
                answer = got
        return answer

    def transfer(self, node: NodeFirmware, now: float = 0.0, indices=None) -> None:
        assert self.send(node, now, self.announce) == []
        for i in range(len(self.blocks)) if indices is None else indices:
            assert self.send(node, now, self.blocks[i]) == []

    def key(self, node: NodeFirmware, now: float = 0.0, cert=IDENTITY.certificate) -> KeyAck:
        envelope, self.mac_key = wrap_image_key(
            self.plan.image_key, cert.public_key, self.plan.key_context, bytes(32 * [7])
        )
        ack = self.ask(node, now, Key(self.sid, envelope.encode()))
        assert isinstance(ack, KeyAck)
        return ack

    def start_message(
        self,
        *,
        counter: int | None = None,
        version: str | None = None,
        digest: bytes | None = None,
        allow_downgrade: bool | None = None,
        mac_over_downgrade: bool | None = None,
    ) -> Start:
        assert self.mac_key is not None
        counter = self.plan.counter if counter is None else counter
        version = self.plan.version if version is None else version
        digest = self.plan.digest if digest is None else digest
        allow = self.plan.allow_downgrade if allow_downgrade is None else allow_downgrade
        signed_allow = allow if mac_over_downgrade is None else mac_over_downgrade
        mac = start_mac(self.mac_key, NODE, digest, version, counter, signed_allow)
        return Start(self.sid, counter, version, digest[:START_DIGEST_SIZE], mac, allow)

    def start(self, node: NodeFirmware, now: float = 0.0, **fields) -> Status:
        """Send a START (never answered), then read the node's status at once: a refusal is
        in its error; a node that took the start is applying and deaf, so its status is
        what it would say (the session reads it only after the apply time)."""
        assert self.send(node, now, self.start_message(**fields)) == []
        status = self.ask(node, now, StatusQuery(self.sid))
        if status is None:
            assert node.state is NodeState.APPLYING
            status = node._status(self.sid)
        assert isinstance(status, Status)
        return status

    def status(self, node: NodeFirmware, now: float) -> Status:
        status = self.ask(node, now, StatusQuery(self.sid))
        assert isinstance(status, Status)
        return status

    def authentic(self, status: Status) -> bool:
        assert self.mac_key is not None
        expected = status_mac(
            self.mac_key, NODE, int(status.state), int(status.error), status.counter, status.version
        )
        return macs_equal(expected, status.mac)

    def upgrade(self, node: NodeFirmware, now: float = 0.0) -> Status:
        """The whole session; the authenticated status after the apply."""
        self.transfer(node, now)
        assert self.key(node, now).status is KeyStatus.OK
        started = self.start(node, now)
        assert started.error is NodeError.NONE, started
        status = self.status(node, now + APPLY)
        assert self.authentic(status)
        return status


def make_node(version: str = "1.0.0", faults: FaultSpec | None = None, **kw) -> NodeFirmware:
    return NodeFirmware(IDENTITY, version, kw.pop("max_frame", MAX_FRAME), faults=faults, **kw)


def held(node: NodeFirmware) -> set[int]:
    missing = set(node.store.missing())
    return set(range(node.store.block_count)) - missing


# -- the happy path --------------------------------------------------------------------------


def test_a_whole_upgrade_frame_by_frame_with_real_crypto() -> None:
    gw = Gateway(counter=3)
    node = make_node()
    assert isinstance(node.store, ByteStore) and isinstance(node.power, Battery)

    gw.transfer(node, 0.0)
    assert node.state is NodeState.RECEIVING
    report = gw.ask(node, 0.1, BitmapQuery(1))
    assert isinstance(report, BitmapReport) and report.missing == MissingBlocks.none(75)

    cert_msg = gw.ask(node, 0.2, CertRequest(1))
    assert isinstance(cert_msg, Cert)
    cert = BirthCertificate.decode(cert_msg.certificate)
    verify_certificate(cert, CA.public_key, node_id=NODE)

    assert gw.key(node, 0.3, cert).status is KeyStatus.OK
    assert node.state is NodeState.READY

    started = gw.start(node, 0.4)
    assert (started.state, started.error, started.counter) == (
        NodeState.APPLYING,
        NodeError.NONE,
        3,
    )
    assert gw.authentic(started)
    # Rebooting into the new image: deaf until the apply is over.
    assert gw.send(node, 0.4 + APPLY / 2, StatusQuery(1)) == []

    status = gw.status(node, 0.4 + APPLY)
    assert (status.state, status.error, status.version, status.counter) == (
        NodeState.RUNNING_NEW,
        NodeError.NONE,
        "2.0.0",
        3,
    )
    assert gw.authentic(status)
    assert node.running_version == "2.0.0" and node.last_counter == 3
    assert node.rejected == []


def test_blocks_of_another_session_or_before_the_announce_are_not_stored() -> None:
    gw = Gateway(session_id=5)
    node = make_node()
    assert gw.send(node, 0.0, gw.blocks[0]) == []  # no announce yet
    gw.send(node, 0.0, gw.announce)
    gw.send(node, 0.0, Block(6, 1, gw.blocks[1].data))  # another session
    gw.send(node, 0.0, gw.blocks[2])
    gw.send(node, 0.0, Block(5, 75, b"x"))  # beyond block_count: refused, not stored
    assert held(node) == {2}
    assert any("beyond" in r for r in node.rejected)


# -- refusals ----------------------------------------------------------------------------------


def test_a_bitmap_query_before_any_announce_is_answered_no_image() -> None:
    status = Gateway().ask(make_node(), 0.0, BitmapQuery(1))
    assert isinstance(status, Status)
    assert (status.state, status.error) == (NodeState.IDLE, NodeError.NO_IMAGE)
    assert status.mac == bytes(16)  # no MAC key yet


def test_a_start_before_the_key_exchange_is_refused_no_image() -> None:
    gw = Gateway()
    node = make_node()
    gw.transfer(node)
    gw.mac_key = bytes(32)  # whatever the gateway believes, the node has no key
    status = gw.start(node)
    assert status.error is NodeError.NO_IMAGE
    assert node.running_version == "1.0.0" and node.state is NodeState.RECEIVING


def test_a_start_with_a_bad_mac_is_refused_and_burns_nothing() -> None:
    gw = Gateway(counter=9)
    node = make_node()
    gw.transfer(node)
    assert gw.key(node).status is KeyStatus.OK
    good = gw.start_message()
    forged = Start(good.session, good.counter, good.version, good.digest, bytes(16))
    assert gw.send(node, 0.0, forged) == []  # a START is never answered...
    refused = gw.status(node, 0.0)  # ...the status tells what became of it
    assert refused.error is NodeError.BAD_MAC
    assert node.state is NodeState.READY and node.last_counter == 0
    # The downgrade flag set on the way does not match the MAC either.
    assert gw.start(node, allow_downgrade=True, mac_over_downgrade=False).error is NodeError.BAD_MAC
    # The genuine START still works afterwards.
    assert gw.start(node).error is NodeError.NONE
    assert gw.status(node, APPLY).state is NodeState.RUNNING_NEW


def test_a_start_for_another_image_is_refused_digest_mismatch() -> None:
    gw = Gateway()
    node = make_node()
    gw.transfer(node)
    gw.key(node)
    other = hashlib.sha256(b"another image").digest()
    status = gw.start(node, digest=other)  # MAC'd over the other digest too
    assert status.error is NodeError.DIGEST_MISMATCH
    assert node.running_version == "1.0.0"


@pytest.mark.parametrize("counter", [5, 4, 0])
def test_a_start_counter_not_above_the_last_accepted_is_refused_replayed(counter: int) -> None:
    node = make_node()
    assert Gateway(counter=5).upgrade(node).version == "2.0.0"
    assert node.last_counter == 5
    gw = Gateway(version="3.0.0", session_id=2, counter=5, seed=b"second")
    gw.transfer(node)
    assert gw.key(node).status is KeyStatus.OK
    status = gw.start(node, counter=counter)
    assert status.error is NodeError.REPLAYED
    assert node.running_version == "2.0.0"
    assert gw.start(node, counter=6).error is NodeError.NONE
    assert gw.status(node, APPLY).version == "3.0.0"


def test_a_downgrade_is_refused_unless_the_start_allows_it() -> None:
    node = make_node(version="1.4.0")
    gw = Gateway(version="1.3.9")
    gw.transfer(node)
    gw.key(node)
    assert gw.start(node).error is NodeError.DOWNGRADE
    assert node.running_version == "1.4.0" and node.last_counter == 0
    assert gw.start(node, allow_downgrade=True).error is NodeError.NONE
    status = gw.status(node, APPLY)
    assert (status.state, status.version) == (NodeState.RUNNING_NEW, "1.3.9")


def test_version_order_is_numeric_per_dot_part() -> None:
    node = make_node(version="1.9.0")
    gw = Gateway(version="1.10.0")  # newer, although "1.10.0" < "1.9.0" as text
    assert gw.upgrade(node).version == "1.10.0"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("incomplete", KeyStatus.INCOMPLETE),
        ("other node's key", KeyStatus.BAD_KEY),
        ("corrupt writes", KeyStatus.IMAGE_CHECK_FAILED),
        ("refuses", KeyStatus.REFUSED),
        ("no session", KeyStatus.INCOMPLETE),
    ],
)
def test_key_exchange_refusals(setup: str, expected: KeyStatus) -> None:
    faults = {
        "corrupt writes": FaultSpec(corrupt_writes=1.0),
        "refuses": FaultSpec(refuse_key_exchange=True),
    }.get(setup)
    node = make_node(faults=faults)
    gw = Gateway()
    if setup == "incomplete":
        gw.transfer(node, indices=range(74))
    elif setup != "no session":
        gw.transfer(node)
    cert = OTHER.certificate if setup == "other node's key" else IDENTITY.certificate
    assert gw.key(node, cert=cert).status is expected
    if expected is KeyStatus.IMAGE_CHECK_FAILED:
        assert node.state is NodeState.ERROR
    assert node.state is not NodeState.READY
    # Nothing to start with: a START (MAC'd with the gateway's key) is refused.
    assert gw.start(node).error is NodeError.NO_IMAGE


def test_abort_drops_the_transfer() -> None:
    gw = Gateway()
    node = make_node()
    gw.transfer(node, indices=range(10))
    gw.send(node, 0.0, Abort(2, AbortReason.CANCELED))  # another session: ignored
    assert len(held(node)) == 10
    gw.send(node, 0.0, Abort(1, AbortReason.CANCELED))
    assert node.session is None and node.state is NodeState.IDLE
    status = gw.ask(node, 0.0, BitmapQuery(1))
    assert isinstance(status, Status) and status.error is NodeError.NO_IMAGE


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (FaultSpec(fail_self_test=True), NodeError.SELF_TEST_FAILED),
        (FaultSpec(power_loss_during_apply=True), NodeError.POWER_LOSS),
    ],
)
def test_a_failed_apply_boots_the_old_image_and_says_so_authenticated(
    faults: FaultSpec, error: NodeError
) -> None:
    gw = Gateway()
    node = make_node(faults=faults)
    gw.transfer(node)
    gw.key(node)
    assert gw.start(node).error is NodeError.NONE
    timing = node.timing
    # A power cut half way through the apply keeps the node off for a while longer.
    back = timing.apply_time / 2 + timing.power_off_time if faults.power_loss_during_apply else 0
    if faults.power_loss_during_apply:
        assert gw.ask(node, back - 0.01, StatusQuery(gw.sid)) is None
    status = gw.status(node, max(APPLY, back + 0.01))
    assert (status.state, status.error, status.version) == (NodeState.ROLLED_BACK, error, "1.0.0")
    assert gw.authentic(status)
    assert node.running_version == "1.0.0"


# -- power cuts: flash survives, RAM does not --------------------------------------------------


def test_the_bitmap_survives_a_power_cut_and_blocks_sent_meanwhile_are_lost() -> None:
    gw = Gateway()
    battery = Battery()
    node = make_node(power=battery)
    gw.transfer(node, 0.0, indices=range(0, 40))
    battery.cut(1.0, 3.0)
    for i in range(40, 60):  # off: heard by nobody
        assert gw.send(node, 2.0, gw.blocks[i]) == []
    assert gw.send(node, 3.99, BitmapQuery(1)) == []
    report = gw.ask(node, 4.0, BitmapQuery(1))
    assert isinstance(report, BitmapReport)
    assert report.missing == MissingBlocks.from_indices(75, range(40, 75))
    # The same announce again resumes (does not restart) the transfer.
    gw.send(node, 4.0, gw.announce)
    for i in range(40, 75):
        gw.send(node, 4.0, gw.blocks[i])
    assert held(node) == set(range(75))
    assert gw.key(node, 4.0).status is KeyStatus.OK


def test_a_power_cut_before_the_start_forgets_the_mac_key() -> None:
    gw = Gateway()
    battery = Battery()
    node = make_node(power=battery)
    gw.transfer(node)
    assert gw.key(node).status is KeyStatus.OK
    assert node.state is NodeState.READY
    battery.cut(1.0, 0.5)
    # RAM is gone: no MAC key, no checked image; flash (the blocks) is kept.
    assert gw.start(node, 2.0).error is NodeError.NO_IMAGE
    assert node.state is NodeState.RECEIVING
    assert held(node) == set(range(75))
    status = gw.status(node, 2.0)
    assert status.mac == bytes(16)
    # A new key exchange makes it READY again, and the start goes through.
    assert gw.key(node, 2.0).status is KeyStatus.OK
    assert gw.start(node, 2.0).error is NodeError.NONE
    assert gw.status(node, 2.0 + APPLY).version == "2.0.0"


def test_power_loss_at_block_cuts_the_supply_once_on_the_per_node_path() -> None:
    gw = Gateway()
    node = make_node(faults=FaultSpec(power_loss_at_block=10), timing=NodeTiming())
    gw.transfer(node, 0.0)  # all blocks at t=0: those after the cut are not heard
    assert node.power.cuts == 1
    assert 10 <= len(held(node)) <= 11
    later = NodeTiming().power_off_time
    gw.transfer(node, later)  # back on: no second cut, the rest is stored
    assert node.power.cuts == 1 and held(node) == set(range(75))


def test_power_loss_at_block_n_cuts_once_n_blocks_are_stored() -> None:
    gw = Gateway()
    node = make_node(faults=FaultSpec(power_loss_at_block=5))
    gw.transfer(node, 0.0, indices=range(10))
    assert held(node) == set(range(5))
    assert node.power.cuts == 1


# -- RESEND ------------------------------------------------------------------------------------


def test_resend_returns_exactly_the_asked_fragments_of_the_last_answer() -> None:
    node = make_node(max_frame=16)  # 8 payload bytes per frame: the certificate is 14 frames
    frames = node.receive(0.0, encode(CertRequest(3), 16)[0])
    assert len(frames) == 14
    resend = encode(Resend(3, FrameKind.CERT, 0b1010_0101), 16)
    assert len(resend) == 1
    again = node.receive(0.0, resend[0])
    assert again == [frames[0], frames[2], frames[5], frames[7]]

    every = encode(Resend(3, FrameKind.CERT, 0xFFFF_FFFF), 16)[0]
    assert node.receive(0.0, every) == frames
    assert node.receive(0.0, encode(Resend(3, FrameKind.CERT, 0), 16)[0]) == []
    assert node.receive(0.0, encode(Resend(4, FrameKind.CERT, 1), 16)[0]) == []  # other session
    assert node.receive(0.0, encode(Resend(3, FrameKind.KEY_ACK, 1), 16)[0]) == []  # never sent

    # The lost fragments, sent again, complete the answer.
    reassembler = Reassembler()
    for f in [f for i, f in enumerate(frames) if i not in (3, 9)]:
        assert reassembler.feed(f) is None
    mask = reassembler.missing_fragments(FrameKind.CERT, 3)
    assert mask == (1 << 3) | (1 << 9)
    got = [
        reassembler.feed(f)
        for f in node.receive(0.0, encode(Resend(3, FrameKind.CERT, mask), 16)[0])
    ]
    assert got[-1] == Cert(3, IDENTITY.certificate.encode())


def test_resend_after_a_power_cut_sends_nothing() -> None:
    battery = Battery()
    node = make_node(power=battery)
    assert len(node.receive(0.0, encode(CertRequest(1), MAX_FRAME)[0])) == 2
    battery.cut(0.5, 0.5)
    assert node.receive(1.0, encode(Resend(1, FrameKind.CERT, 0b11), MAX_FRAME)[0]) == []


# -- whatever the radio delivers -------------------------------------------------------------


def _framed(kind: int, session: int, index: int, count: int, payload: bytes) -> bytes:
    body = struct.pack(">BBHBB", 1, kind, session, index, count) + payload
    return body + crc_hqx(body, 0xFFFF).to_bytes(2, "big")


def _node_in_a_session() -> tuple[Gateway, NodeFirmware]:
    gw = Gateway()
    node = make_node()
    gw.transfer(node, 0.0, indices=range(0, 75, 2))
    return gw, node


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=80), max_size=12))
def test_arbitrary_bytes_never_raise(frames: list[bytes]) -> None:
    _, node = _node_in_a_session()
    before = held(node)
    for raw in frames:
        assert isinstance(node.receive(1.0, raw), list)
    assert held(node) >= before


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(1, 13),
            st.sampled_from([0, 1, 2, 0xFFFF]),
            st.integers(0, 2),
            st.integers(1, 3),
            st.binary(max_size=70),
        ),
        max_size=10,
    )
)
def test_well_framed_nonsense_never_raises(frames: list[tuple[int, int, int, int, bytes]]) -> None:
    """Frames with a valid CRC and header, any kind, any payload: the decoders and the
    node's handlers see them all."""
    _, node = _node_in_a_session()
    for kind, session, index, count, payload in frames:
        if index >= count:
            index = count - 1
        answer = node.receive(1.0, _framed(kind, session, index, count, payload))
        assert isinstance(answer, list)
        assert all(isinstance(f, bytes) and len(f) <= MAX_FRAME for f in answer)
    assert node.running_version == "1.0.0"  # nothing unauthenticated starts an image


def test_an_authenticated_start_with_an_odd_version_does_not_raise() -> None:
    gw = Gateway()
    node = make_node()
    gw.transfer(node)
    gw.key(node)
    status = gw.start(node, version="1.²")
    assert status.error in (NodeError.NONE, NodeError.DOWNGRADE)


def test_a_new_key_under_a_reused_session_id_fails_safe() -> None:
    """ANNOUNCE does not bind the image key, so blocks of an earlier session with the same
    id and image but another key are resumed; the image check catches it and the node
    keeps its image. (The gateway never reuses a session id: it is the low bits of a
    counter that only grows.)"""
    node = make_node(faults=FaultSpec(refuse_key_exchange=True))
    first = Gateway(seed=b"first key")
    first.transfer(node)
    assert first.key(node).status is KeyStatus.REFUSED
    node.faults = FaultSpec()
    second = Gateway(seed=b"second key", counter=2)  # same session id 1, same image
    assert first.announce == second.announce
    second.transfer(node)
    assert second.key(node).status is KeyStatus.IMAGE_CHECK_FAILED
    assert node.running_version == "1.0.0"


def test_the_store_decrypts_what_it_holds_with_corruption() -> None:
    gw = Gateway()
    store = ByteStore()
    store.reset(len(gw.blocks), gw.block_size, 1)
    for b in gw.blocks:
        assert store.write(b.index, b.data, corrupt=b.index == 3)
    assert not store.write(0, b"again", corrupt=False)
    ct = bytearray(gw.plan.ciphertext)
    ct[3 * gw.block_size] ^= 0xFF
    expected = hashlib.sha256(decrypt_image(bytes(ct), gw.plan.image_key, gw.plan.nonce)).digest()
    got = store.image_digest(gw.plan.image_key, gw.plan.nonce, len(ct))
    assert got == expected != gw.plan.digest


def test_a_bitmap_query_never_raises_however_long_the_report() -> None:
    node = make_node(max_frame=16)
    count = 16_400
    for raw in encode(Announce(1, count * 6, 6, count, bytes(32), "2.0.0"), 16):
        node.receive(0.0, raw)
    for i in range(0, count, 32):
        node.receive(0.0, encode(Block(1, i, b"abcdef"), 16)[0])
    assert isinstance(node.receive(0.0, encode(BitmapQuery(1), 16)[0]), list)
