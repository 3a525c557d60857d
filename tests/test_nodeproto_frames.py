"""The node frame codec: wire bytes as docs/node-protocol.md gives them, and a receiver
that survives anything the radio delivers."""

from __future__ import annotations

import itertools
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness.nodeproto.crc import crc16
from harness.nodeproto.frames import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Abort,
    AbortReason,
    Announce,
    BitmapQuery,
    BitmapReport,
    Block,
    Cert,
    CertRequest,
    FrameError,
    FrameKind,
    Key,
    KeyAck,
    KeyStatus,
    Message,
    NodeError,
    NodeState,
    Reassembler,
    Rejected,
    Resend,
    Start,
    Status,
    StatusQuery,
    decode_frame,
    decode_payload,
    encode,
    encode_payload,
    max_block_size,
    peek,
)
from harness.nodeproto.missing import MissingBlocks, ReportFormat

quick = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DIGEST = bytes(range(32))
MAC_A = bytes(range(0xA0, 0xB0))
MAC_B = bytes(range(0xB0, 0xC0))


def reference_crc(data: bytes) -> int:
    """CRC-16/CCITT-FALSE bit by bit, straight from its definition."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def frame(version: int, kind: int, session: int, index: int, count: int, payload: bytes) -> bytes:
    """A frame with a correct CRC around whatever header and payload a test wants."""
    body = struct.pack(">BBHBB", version, kind, session, index, count) + payload
    return body + reference_crc(body).to_bytes(2, "big")


def feed_all(frames: list[bytes], reassembler: Reassembler | None = None) -> list[object]:
    reassembler = reassembler or Reassembler()
    return [reassembler.feed(f) for f in frames]


# -- CRC ----------------------------------------------------------------------------


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1
    assert reference_crc(b"123456789") == 0x29B1


@given(st.binary(max_size=300))
def test_crc_matches_its_definition(data: bytes) -> None:
    assert crc16(data) == reference_crc(data)


# -- golden frames: hex written by hand from docs/node-protocol.md ------------------

GOLDEN = [
    (
        Announce(0x1234, 1000, 54, 19, DIGEST, "1.2", encrypted=True),
        "01011234 0001 000003E8 0036 0013"
        " 000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
        " 01 03 312E32 9E1F",
    ),
    (Block(0x1234, 7, b"hello"), "01021234 0001 0007 68656C6C6F D255"),
    (BitmapQuery(0x1234, want_cert=True), "01031234 0001 01 029E"),
    (
        BitmapReport(0x1234, MissingBlocks.from_indices(20, {3, 4, 5, 17})),
        "01041234 0001 01 0014 380002 94EB",
    ),
    (
        BitmapReport(0x1234, MissingBlocks(100, ((10, 10),))),
        "01041234 0001 02 0064 0001 000A000A C2E8",
    ),
    (CertRequest(0x1234), "01051234 0001 976C"),
    (Cert(0x1234, b"cert"), "01061234 0001 63657274 B641"),
    (Key(0x1234, bytes.fromhex("DEADBEEF")), "01071234 0001 DEADBEEF 7B88"),
    (KeyAck(0x1234, KeyStatus.INCOMPLETE), "01081234 0001 03 E17E"),
    (
        Start(0x1234, 7, "2.0", DIGEST[:16], MAC_A, allow_downgrade=False),
        "01091234 0001 00000007 00 000102030405060708090A0B0C0D0E0F 03 322E30"
        " A0A1A2A3A4A5A6A7A8A9AAABACADAEAF 93F2",
    ),
    (StatusQuery(0x1234), "010A1234 0001 F295"),
    (Resend(0x1234, FrameKind.BITMAP_REPORT, 0b100001), "010D1234 0001 04 00000021 A0B0"),
    (
        Status(0x1234, NodeState.RUNNING_NEW, NodeError.NONE, 7, "2.0", MAC_B),
        "010B1234 0001 04 00 00000007 03 322E30 B0B1B2B3B4B5B6B7B8B9BABBBCBDBEBF E647",
    ),
    (Abort(0x1234, AbortReason.TIMEOUT), "010C1234 0001 01 C79D"),
]
GOLDEN_IDS = [f"{type(m).__name__}-{i}" for i, (m, _) in enumerate(GOLDEN)]


def test_golden_covers_every_kind() -> None:
    assert {m.kind for m, _ in GOLDEN} == set(FrameKind)


@pytest.mark.parametrize(("message", "hex_frame"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_frame(message: object, hex_frame: str) -> None:
    expected = bytes.fromhex(hex_frame.replace(" ", ""))
    assert encode(message, 64) == [expected]
    assert Reassembler().feed(expected) == message


@pytest.mark.parametrize(("message", "hex_frame"), GOLDEN, ids=GOLDEN_IDS)
def test_any_single_bit_flip_or_truncation_is_rejected(message: object, hex_frame: str) -> None:
    raw = bytes.fromhex(hex_frame.replace(" ", ""))
    for bit in range(8 * len(raw)):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        result = Reassembler().feed(bytes(flipped))
        assert isinstance(result, Rejected) and result.reason.startswith("bad CRC"), bit
    for size in range(len(raw)):
        result = Reassembler().feed(raw[:size])
        assert isinstance(result, Rejected), size
        assert result.reason.startswith("frame too short" if size < 8 else "bad CRC")


# -- round trips --------------------------------------------------------------------

BIG_REPORT = MissingBlocks.from_indices(1000, range(0, 1000, 3))  # bitmap: 128 bytes
ROUND_TRIP = [
    Announce(1, 123_456, 54, 2287, DIGEST, "release-2024.06.1+" + "x" * 80, encrypted=False),
    Block(2, 65535, bytes(range(54))),
    BitmapQuery(3),
    BitmapQuery(3, want_cert=True),
    BitmapReport(4, MissingBlocks.none(500)),
    BitmapReport(4, MissingBlocks.all(500)),
    BitmapReport(4, BIG_REPORT),
    CertRequest(5),
    Cert(6, bytes(range(104))),
    Key(7, bytes(range(56))),
    Key(7, bytes(range(57))),
    Key(7, b""),
    KeyAck(8, KeyStatus.OK),
    Start(9, 2**32 - 1, "ünïcödé", DIGEST[:16], MAC_A, allow_downgrade=True),
    StatusQuery(10),
    Status(11, NodeState.ROLLED_BACK, NodeError.SELF_TEST_FAILED, 3, "", MAC_B),
    Abort(0xFFFF, AbortReason.ERROR),
]
#: Frames each message needs at max_frame 64 (56 payload bytes per frame).
FRAMES_AT_64 = [3, 1, 1, 1, 1, 1, 3, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("max_frame", [64, 244])
@pytest.mark.parametrize("message", ROUND_TRIP, ids=lambda m: type(m).__name__)
def test_round_trip(message: object, max_frame: int) -> None:
    frames = encode(message, max_frame)
    assert all(len(f) <= max_frame for f in frames)
    results = feed_all(frames)
    assert results[:-1] == [None] * (len(frames) - 1)
    assert results[-1] == message
    if max_frame == 64:
        assert len(frames) == FRAMES_AT_64[ROUND_TRIP.index(message)]


def test_fragment_boundary() -> None:
    # A payload of exactly max_frame - 8 bytes still fits one frame; one more byte does not.
    assert [len(f) for f in encode(Key(7, bytes(56)), 64)] == [64]
    assert [len(f) for f in encode(Key(7, bytes(57)), 64)] == [64, 9]
    assert [len(f) for f in encode(Cert(6, bytes(104)), 64)] == [64, 56]


MULTI_FRAGMENT = [m for m, n in zip(ROUND_TRIP, FRAMES_AT_64, strict=True) if n > 1]


@pytest.mark.parametrize("message", MULTI_FRAGMENT, ids=lambda m: type(m).__name__)
def test_fragments_in_any_order(message: object) -> None:
    frames = encode(message, 64)
    for order in itertools.permutations(frames):
        results = feed_all(list(order))
        assert results == [None] * (len(frames) - 1) + [message]


# -- reassembly rules ---------------------------------------------------------------


def test_duplicate_fragment_is_ignored() -> None:
    first, second = encode(Cert(6, bytes(range(104))), 64)
    assert feed_all([first, first, first, second]) == [None, None, None, Cert(6, bytes(range(104)))]


def test_different_fragment_restarts_the_partial() -> None:
    old = encode(Cert(6, bytes(104)), 64)
    new = encode(Cert(6, bytes(range(104))), 64)
    r = Reassembler()
    assert r.feed(old[0]) is None
    assert r.feed(new[0]) is None  # a new fragment 0: the old one is dropped
    assert r.feed(new[1]) == Cert(6, bytes(range(104)))
    assert r.pending == 0


def test_different_count_restarts_the_partial() -> None:
    two = encode(Cert(6, bytes(104)), 64)
    three = encode(Cert(6, bytes(150)), 64)
    assert len(three) == 3
    r = Reassembler()
    assert r.feed(two[1]) is None
    assert [r.feed(f) for f in three] == [None, None, Cert(6, bytes(150))]
    assert r.feed(two[0]) is None  # two[1] went with the restart
    assert r.pending == 1


def test_partials_are_kept_per_kind_and_session() -> None:
    cert = encode(Cert(6, bytes(104)), 64)
    other_session = encode(Cert(7, bytes(range(104))), 64)
    key = encode(Key(6, bytes(100)), 64)
    results = feed_all([cert[0], other_session[0], key[0], cert[1], key[1], other_session[1]])
    assert results == [
        None,
        None,
        None,
        Cert(6, bytes(104)),
        Key(6, bytes(100)),
        Cert(7, bytes(range(104))),
    ]


def test_partials_are_bounded() -> None:
    r = Reassembler(max_partials=4)
    for session in range(100):
        assert r.feed(encode(Cert(session, bytes(104)), 64)[0]) is None
    assert r.pending == 4
    # The most recent ones survive.
    assert r.feed(encode(Cert(99, bytes(104)), 64)[1]) == Cert(99, bytes(104))
    assert r.feed(encode(Cert(0, bytes(104)), 64)[1]) is None


def test_single_frame_message_ends_a_partial() -> None:
    r = Reassembler()
    r.feed(encode(Cert(6, bytes(104)), 64)[0])
    assert r.feed(encode(Cert(6, b"short"), 64)[0]) == Cert(6, b"short")
    assert r.pending == 0


def test_bad_reassembled_payload_is_rejected() -> None:
    # Each fragment is fine; together they are an ANNOUNCE with a truncated digest.
    frames = [frame(1, FrameKind.ANNOUNCE, 1, 0, 2, bytes(10)), frame(1, 1, 1, 1, 2, bytes(5))]
    assert feed_all(frames) == [
        None,
        Rejected("ANNOUNCE: truncated digest: needs 32 bytes, 7 left"),
    ]


def test_non_bytes_are_rejected() -> None:
    r = Reassembler()
    assert isinstance(r.feed("text"), Rejected)  # type: ignore[arg-type]
    assert isinstance(r.feed(None), Rejected)  # type: ignore[arg-type]
    block = encode(Block(1, 2, b"x"), 64)[0]
    assert r.feed(bytearray(block)) == r.feed(memoryview(block)) == Block(1, 2, b"x")


# -- encoder limits -----------------------------------------------------------------


def test_max_block_size() -> None:
    assert max_block_size(64) == 54
    assert max_block_size(244) == 234
    assert len(encode(Block(1, 0, bytes(54)), 64)[0]) == 64


def test_block_that_does_not_fit_raises() -> None:
    with pytest.raises(ValueError, match=r"Block.data of 55 bytes does not fit"):
        encode(Block(1, 0, bytes(55)), 64)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (Block(70000, 0, b""), "Block.session"),
        (Block(1, -1, b""), "Block.index"),
        (Cert(-1, b""), "Cert.session"),
        (Announce(1, 2**32, 1, 1, DIGEST, "v"), "Announce.image_size"),
        (Announce(1, 1, 65536, 1, DIGEST, "v"), "Announce.block_size"),
        (Announce(1, 1, 1, -1, DIGEST, "v"), "Announce.block_count"),
        (Announce(1, 1, 1, 1, bytes(31), "v"), "Announce.digest"),
        (Announce(1, 1, 1, 1, DIGEST, "é" * 128), "Announce.version"),
        (Announce(1, 1, 1, 1, DIGEST, "\udc80"), "Announce.version"),
        (Start(1, 2**32, "v", DIGEST[:16], MAC_A), "Start.counter"),
        (Start(1, 1, "v", DIGEST[:16], bytes(17)), "Start.mac"),
        (Start(1, 1, "v", DIGEST, MAC_A), "Start.digest"),
        (Status(1, 7, NodeError.NONE, 1, "v", MAC_A), "Status.state"),
        (Status(1, NodeState.IDLE, 99, 1, "v", MAC_A), "Status.error"),
        (Status(1, NodeState.IDLE, NodeError.NONE, 1, "v", bytes(15)), "Status.mac"),
        (KeyAck(1, 5), "KeyAck.status"),
        (Abort(1, 3), "Abort.reason"),
        (Cert(1, bytes(255 * 56 + 1)), "Cert payload of 14281 bytes needs 256 fragments"),
    ],
)
def test_encode_names_the_bad_field(message: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        encode(message, 64)


def test_encode_rejects_tiny_frames_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="max_frame 15"):
        encode(Block(1, 0, b""), 15)
    with pytest.raises(ValueError, match="max_frame 15"):
        encode(Abort(1, AbortReason.CANCELED), 15)
    with pytest.raises(TypeError, match=r"Block\.data"):
        encode(Block(1, 0, "text"), 64)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a node message"):
        encode("hello", 64)  # type: ignore[arg-type]


# -- receiver rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x01\x02\x00", "frame too short: 3 bytes"),
        (bytes.fromhex("01051234000100 00"), "bad CRC: frame says 0x0000, its bytes give 0x"),
        (frame(2, 5, 1, 0, 1, b""), "unknown protocol version 2"),
        (frame(1, 0, 1, 0, 1, b""), "unknown frame kind 0"),
        (frame(1, 14, 1, 0, 1, b""), "unknown frame kind 14"),
        (frame(1, 5, 1, 0, 0, b""), "fragment count 0"),
        (frame(1, 6, 1, 2, 2, b""), "fragment index 2 >= count 2"),
        (frame(1, 2, 1, 0, 2, b"\x00\x01"), "BLOCK split into 2 fragments"),
    ],
)
def test_decode_frame_reasons(raw: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(raw)
    assert caught.value.reason.startswith(reason)
    result = Reassembler().feed(raw)
    assert isinstance(result, Rejected) and result.reason.startswith(reason)


def test_decode_frame_fields() -> None:
    raw = frame(1, 6, 0xBEEF, 1, 3, b"abc")
    assert decode_frame(raw) == (PROTOCOL_VERSION, FrameKind.CERT, 0xBEEF, 1, 3, b"abc")
    assert len(raw) == HEADER_SIZE + 3 + 2


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        (FrameKind.BLOCK, b"\x00", "BLOCK: truncated index"),
        (FrameKind.ANNOUNCE, bytes(8) + DIGEST + b"\x01\x05ab", "ANNOUNCE: truncated version"),
        (FrameKind.ANNOUNCE, bytes(8) + DIGEST + b"\x02\x00", "ANNOUNCE: flags 0x02 has reserved"),
        (FrameKind.ANNOUNCE, bytes(8) + DIGEST + b"\x00\x01\xff", "ANNOUNCE: version is not UTF-8"),
        (FrameKind.BITMAP_QUERY, b"", "BITMAP_QUERY: truncated flags"),
        (FrameKind.BITMAP_QUERY, b"\x01\x00", "BITMAP_QUERY: 1 trailing bytes"),
        (FrameKind.CERT_REQUEST, b"\x00", "CERT_REQUEST: 1 trailing bytes"),
        (FrameKind.STATUS_QUERY, b"\x00\x00", "STATUS_QUERY: 2 trailing bytes"),
        (FrameKind.KEY_ACK, b"\x05", "KEY_ACK: bad status 5: not a valid KeyStatus"),
        (FrameKind.ABORT, b"\x03", "ABORT: bad reason 3: not a valid AbortReason"),
        (FrameKind.START, bytes(5) + bytes(16) + b"\x00" + bytes(15), "START: truncated mac"),
        (FrameKind.STATUS, b"\x07\x00", "STATUS: bad state 7: not a valid NodeState"),
        (FrameKind.STATUS, b"\x00\x09", "STATUS: bad error 9: not a valid NodeError"),
        (FrameKind.STATUS, b"\x00\x00" + bytes(5) + bytes(16) + b"!", "STATUS: 1 trailing"),
        (FrameKind.BITMAP_REPORT, b"\x00\x00", "BITMAP_REPORT: truncated"),
        (FrameKind.BITMAP_REPORT, b"\x03\x00\x08", "BITMAP_REPORT: unknown report format 3"),
        (FrameKind.BITMAP_REPORT, b"\x00\x00\x08\x00", "BITMAP_REPORT: 1 trailing bytes"),
        (FrameKind.BITMAP_REPORT, b"\x01\x00\x0a\xff", "BITMAP_REPORT: truncated bitmap"),
        (FrameKind.BITMAP_REPORT, b"\x01\x00\x08\xff\x00", "BITMAP_REPORT: trailing bytes after"),
        (FrameKind.BITMAP_REPORT, b"\x01\x00\x0a\x00\x04", "bits set beyond block_count 10"),
        (FrameKind.BITMAP_REPORT, b"\x02\x00\x0a\x00", "BITMAP_REPORT: truncated: ranges"),
        (FrameKind.BITMAP_REPORT, b"\x02\x00\x0a\x00\x01\x00\x01", "truncated ranges"),
        (
            FrameKind.BITMAP_REPORT,
            bytes.fromhex("02000a 0001 0001 0000"),
            "range 0 has length 0",
        ),
        (
            FrameKind.BITMAP_REPORT,
            bytes.fromhex("02000a 0001 0008 0003"),
            "range 0 (start 8, length 3) is outside 0..10",
        ),
        (
            FrameKind.BITMAP_REPORT,
            bytes.fromhex("02000a 0002 0005 0001 0002 0001"),
            "range 1 starts at 2, not after range 0 ends at 6",
        ),
        (
            FrameKind.BITMAP_REPORT,
            bytes.fromhex("02000a 0002 0002 0003 0004 0001"),
            "range 1 starts at 4, not after range 0 ends at 5",  # overlapping
        ),
        (
            FrameKind.BITMAP_REPORT,
            bytes.fromhex("02000a 0002 0002 0003 0005 0001"),
            "range 1 starts at 5, not after range 0 ends at 5",  # adjacent
        ),
        (99, b"", "unknown frame kind 99"),
    ],
)
def test_decode_payload_reasons(kind: int, payload: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=re.escape(reason)):
        decode_payload(kind, 1, payload)


def test_receivers_accept_either_report_form() -> None:
    # The shorter-form rule binds encoders; a bitmap where ranges would be shorter is fine.
    bitmap_form = bytes.fromhex("01 0010 0100")  # 16 blocks, block 0 missing
    assert decode_payload(FrameKind.BITMAP_REPORT, 1, bitmap_form) == BitmapReport(
        1, MissingBlocks.from_indices(16, [0])
    )


# -- property tests -----------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)
versions = st.text(max_size=60)


@st.composite
def missing_blocks(draw: st.DrawFn, max_count: int = 3000) -> MissingBlocks:
    count = draw(st.integers(0, max_count))
    if count == 0:
        return MissingBlocks.none(0)
    index = st.integers(0, count - 1)
    runs = draw(st.lists(st.tuples(index, st.integers(1, 200)), max_size=8))
    singles = draw(st.sets(index, max_size=40))
    if draw(st.booleans()):  # a lossy channel: every block missing with some probability
        rate = draw(st.floats(0, 1))
        seed = draw(st.integers(0, 2**32 - 1))
        singles |= set(np.flatnonzero(np.random.default_rng(seed).random(count) < rate).tolist())
    indices = singles | {i for s, n in runs for i in range(s, min(s + n, count))}
    return MissingBlocks.from_indices(count, indices)


messages = st.one_of(
    st.builds(Announce, u16, u32, u16, u16, st.binary(min_size=32, max_size=32), versions),
    st.builds(Block, u16, u16, st.binary(max_size=54)),
    st.builds(BitmapQuery, u16, st.booleans()),
    st.builds(BitmapReport, u16, missing_blocks()),
    st.builds(CertRequest, u16),
    st.builds(Cert, u16, st.binary(max_size=300)),
    st.builds(Key, u16, st.binary(max_size=200)),
    st.builds(KeyAck, u16, st.sampled_from(KeyStatus)),
    st.builds(
        Start,
        u16,
        u32,
        versions,
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
        st.booleans(),
    ),
    st.builds(StatusQuery, u16),
    st.builds(
        Status,
        u16,
        st.sampled_from(NodeState),
        st.sampled_from(NodeError),
        u32,
        versions,
        st.binary(min_size=16, max_size=16),
    ),
    st.builds(Abort, u16, st.sampled_from(AbortReason)),
)


@quick
@given(messages, st.sampled_from([16, 64, 244]), st.data())
def test_any_message_round_trips_in_any_order(
    message: object, max_frame: int, data: st.DataObject
) -> None:
    assume(not (isinstance(message, Block) and len(message.data) > max_block_size(max_frame)))
    frames = encode(message, max_frame)
    assert all(len(f) <= max_frame for f in frames)
    shuffled = data.draw(st.permutations(frames))
    assert feed_all(shuffled) == [None] * (len(frames) - 1) + [message]


@quick
@given(missing_blocks(max_count=5000))
def test_report_picks_the_shorter_form(missing: MissingBlocks) -> None:
    payload = encode_payload(BitmapReport(9, missing))
    if missing.complete:
        assert payload[0] == ReportFormat.NONE and len(payload) == 3
    else:
        assert len(payload) == min(missing.bitmap_size, missing.ranges_size)
        tie_or_shorter = missing.ranges_size <= missing.bitmap_size
        assert payload[0] == (ReportFormat.RANGES if tie_or_shorter else ReportFormat.BITMAP)
    assert len(payload) == missing.encoded_size
    frames = encode(BitmapReport(9, missing), 64)
    assert feed_all(frames)[-1] == BitmapReport(9, missing)


def _check_result(result: object) -> None:
    assert result is None or isinstance(result, Rejected | Message)
    if isinstance(result, Rejected):
        assert result.reason and not result.reason.startswith("internal error"), result


@quick
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    r = Reassembler()
    for chunk in chunks:
        _check_result(r.feed(chunk))


well_formed_frames = st.builds(
    frame,
    st.sampled_from([1, 1, 1, 0, 2]),
    st.integers(0, 14),
    st.integers(0, 3),
    st.integers(0, 4),
    st.integers(0, 4),
    st.binary(max_size=70),
)


@quick
@given(st.lists(well_formed_frames, max_size=30))
def test_frames_with_good_crc_and_any_content_never_raise(frames: list[bytes]) -> None:
    r = Reassembler(max_partials=3)
    for raw in frames:
        _check_result(r.feed(raw))
        assert r.pending <= 3


@quick
@given(messages, st.data())
def test_mangled_payloads_raise_only_frame_error(message: object, data: st.DataObject) -> None:
    payload = bytearray(encode_payload(message))
    how = data.draw(st.sampled_from(["truncate", "replace", "append"]))
    if how == "truncate":
        del payload[data.draw(st.integers(0, len(payload))) :]
    elif how == "replace" and payload:
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    else:
        payload += data.draw(st.binary(min_size=1, max_size=4))
    try:
        decoded = decode_payload(message.kind, 1, bytes(payload))
    except FrameError as exc:
        assert exc.reason
    else:
        assert type(decoded) is type(message)


@quick
@given(messages, st.data())
def test_flipped_bit_or_truncated_frame_is_rejected(message: object, data: st.DataObject) -> None:
    assume(not (isinstance(message, Block) and len(message.data) > max_block_size(64)))
    frames = encode(message, 64)
    raw = data.draw(st.sampled_from(frames))
    bit = data.draw(st.integers(0, 8 * len(raw) - 1))
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    result = Reassembler().feed(bytes(flipped))
    assert isinstance(result, Rejected) and result.reason.startswith("bad CRC")

    short = raw[: data.draw(st.integers(0, len(raw) - 1))]
    result = Reassembler().feed(short)
    if len(short) >= 8 and crc16(short[:-2]) == int.from_bytes(short[-2:], "big"):
        # A 1-in-65536 chance: the cut left a valid CRC. The receiver must still not raise.
        _check_result(result)
    else:
        assert isinstance(result, Rejected)
        assert result.reason.startswith(("frame too short", "bad CRC"))


# -- MissingBlocks ------------------------------------------------------------------


def test_worked_example_from_the_doc() -> None:
    missing = MissingBlocks.from_indices(20, {3, 4, 5, 17})
    assert missing.ranges == ((3, 3), (17, 1))
    assert missing.to_bitmap() == bytes.fromhex("380002")
    assert (missing.bitmap_size, missing.ranges_size) == (6, 13)
    assert missing.format is ReportFormat.BITMAP
    assert missing.encode() == bytes.fromhex("01 0014 380002")
    as_ranges = bytes.fromhex("02 0014 0002 0003 0003 0011 0001")
    assert MissingBlocks.decode(as_ranges) == missing


def test_missing_blocks_basics() -> None:
    assert MissingBlocks.none(10).complete and len(MissingBlocks.none(10)) == 0
    assert list(MissingBlocks.all(3)) == [0, 1, 2]
    assert MissingBlocks.all(0) == MissingBlocks.none(0)
    m = MissingBlocks(10, [(2, 2), (7, 1)])
    assert m.ranges == ((2, 2), (7, 1)) and hash(m) == hash(MissingBlocks(10, ((2, 2), (7, 1))))
    assert [i in m for i in range(-1, 11)] == [i in {2, 3, 7} for i in range(-1, 11)]
    assert "2" not in m
    with pytest.raises(AttributeError):
        m.count = 11  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: MissingBlocks(10, [(0, 0)]), "length 0"),
        (lambda: MissingBlocks(10, [(8, 3)]), "outside 0..10"),
        (lambda: MissingBlocks(10, [(4, 1), (1, 1)]), "range 1 starts at 1"),
        (lambda: MissingBlocks(10, [(1, 1), (2, 1)]), "non-adjacent"),
        (lambda: MissingBlocks(70000), "block_count 70000"),
        (lambda: MissingBlocks.from_indices(10, [10]), "block index 10"),
        (lambda: MissingBlocks.from_bitmap(10, b"\x00"), "2 bytes, got 1"),
        (lambda: MissingBlocks.from_bool_array(np.zeros((2, 2), bool)), "1-D"),
        (lambda: MissingBlocks.none(5).union(MissingBlocks.none(6)), "block counts differ"),
    ],
)
def test_missing_blocks_refuses_bad_input(build: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()  # type: ignore[operator]


@st.composite
def two_sets(draw: st.DrawFn) -> tuple[int, set[int], set[int]]:
    count = draw(st.integers(0, 300))
    index = st.integers(0, max(count - 1, 0))
    a = draw(st.sets(index, max_size=count)) if count else set()
    b = draw(st.sets(index, max_size=count)) if count else set()
    return count, a, b


@quick
@given(two_sets())
def test_missing_blocks_behave_like_sets(case: tuple[int, set[int], set[int]]) -> None:
    count, a, b = case
    ma, mb = MissingBlocks.from_indices(count, a), MissingBlocks.from_indices(count, b)
    assert list(ma) == sorted(a) and len(ma) == len(a) and ma.complete == (not a)
    assert all((i in ma) == (i in a) for i in range(count))
    assert set(ma | mb) == a | b and ma.union(mb) == MissingBlocks.from_indices(count, a | b)
    assert set(ma & mb) == a & b and ma.intersection(mb) == MissingBlocks.from_indices(count, a & b)
    assert (ma == mb) == (a == b)
    if a == b:
        assert hash(ma) == hash(mb)
    array = ma.to_bool_array()
    assert array.dtype == bool and array.shape == (count,)
    assert set(np.flatnonzero(array).tolist()) == a
    assert MissingBlocks.from_bool_array(array) == ma
    assert MissingBlocks.from_bitmap(count, ma.to_bitmap()) == ma
    assert MissingBlocks.decode(ma.encode()) == ma
    bitmap = ma.to_bitmap()
    assert all(bool(bitmap[i >> 3] >> (i & 7) & 1) == (i in a) for i in range(count))


def test_bool_array_conversions_at_scale() -> None:
    rng = np.random.default_rng(1)
    for rate in (0.0, 0.01, 0.3, 0.9, 1.0):
        mask = rng.random(65535) < rate
        missing = MissingBlocks.from_bool_array(mask)
        assert len(missing) == int(mask.sum())
        assert np.array_equal(missing.to_bool_array(), mask)
        assert MissingBlocks.decode(missing.encode()) == missing


def test_missing_fragments_names_what_a_resend_must_ask_for() -> None:
    report = BitmapReport(7, MissingBlocks.from_indices(2000, range(0, 2000, 3)))
    frames = encode(report, 64)
    assert len(frames) > 3
    reassembler = Reassembler()
    assert reassembler.missing_fragments(FrameKind.BITMAP_REPORT, 7) is None
    for i, raw in enumerate(frames):
        if i not in (1, 3):
            assert reassembler.feed(raw) is None
    assert reassembler.missing_fragments(FrameKind.BITMAP_REPORT, 7) == 0b1010
    assert reassembler.missing_fragments(FrameKind.BITMAP_REPORT, 8) is None
    assert reassembler.feed(frames[1]) is None
    assert reassembler.feed(frames[3]) == report


def test_peek_reads_kind_session_and_block_from_the_header() -> None:
    [block] = encode(Block(7, 300, b"x" * 40), 64)
    assert peek(block) == (FrameKind.BLOCK, 7, 300)
    [query] = encode(BitmapQuery(9, True), 64)
    assert peek(query) == (FrameKind.BITMAP_QUERY, 9, None)
    assert peek(b"\x00" * 3) is None  # shorter than any frame
    assert peek(bytes([PROTOCOL_VERSION + 1]) + block[1:]) is None  # another protocol
    assert peek(block[:1] + bytes([250]) + block[2:]) is None  # no such kind
