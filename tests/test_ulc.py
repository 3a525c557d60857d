"""The ULC stand-in: frames byte by byte, the two sans-IO ends, and the gateway's driver
against simulated cameras and misbehaving servers over real TCP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.ulc import (
    CommitRefused,
    FileRejected,
    OutgoingFile,
    TransportError,
    UlcClient,
    UlcPolicy,
    UlcReceiver,
    UlcSender,
    Unsendable,
)
from harness.ulc.events import (
    Aborted,
    Accepted,
    CameraRestarting,
    CommitRequested,
    DataReceived,
    FileComplete,
    FileVerified,
    Greeted,
    OfferReceived,
    Rejected,
    Violation,
)
from harness.ulc.frames import (
    MAX_PAYLOAD,
    Abort,
    Accept,
    Ack,
    CameraState,
    Commit,
    Data,
    FileBad,
    FileDone,
    FileOk,
    FileSpec,
    Frame,
    FrameError,
    FrameKind,
    FrameReader,
    Hello,
    Offer,
    Reject,
    Restarting,
    encode,
)
from sims.camera import SimCamera

quick = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DIGEST = hashlib.sha256(b"x").digest()
FAST = UlcPolicy(connect_timeout=1.0, io_timeout=1.0, attempts=3, backoff=0.01, restart_timeout=5.0)


def raw(kind: int, payload: bytes, *, version: int = 1, crc: int | None = None) -> bytes:
    """A frame built by hand from docs/ulc.md, not by the encoder."""
    head = b"UL" + bytes([version, kind]) + struct.pack(">I", len(payload))
    check = zlib.crc32(head + payload) if crc is None else crc
    return head + payload + struct.pack(">I", check)


def spec_bytes(path: str, size: int = 10, mode: int = 0o644) -> bytes:
    raw_path = path.encode()
    return (
        struct.pack(">H", len(raw_path))
        + raw_path
        + struct.pack(">Q", size)
        + DIGEST
        + (struct.pack(">H", mode))
    )


def read_all(data: bytes) -> list[Frame]:
    reader = FrameReader()
    reader.feed(data)
    frames = []
    while (frame := reader.next_frame()) is not None:
        frames.append(frame)
    return frames


# -- frames ----------------------------------------------------------------------------------


def test_a_hello_is_the_bytes_the_document_gives() -> None:
    assert encode(Hello("cam-1", "1.0.0")) == raw(1, b"\x05cam-1\x051.0.0\x00")
    assert encode(Hello("c", "2", CameraState.RESTARTING)) == raw(1, b"\x01c\x012\x01")


def test_the_examples_in_the_document_are_these_bytes() -> None:
    hello = encode(Hello("camera-0000", "1.0.0")).hex(" ")
    assert hello == (
        "55 4c 01 01 00 00 00 13 0b 63 61 6d 65 72 61 2d 30 30 30 30 05 31 2e 30 2e 30 00 "
        "60 43 f0 49"
    )
    accept = encode(Accept(40000, 65536)).hex(" ")
    assert accept == "55 4c 01 03 00 00 00 0c 00 00 00 00 00 00 9c 40 00 01 00 00 49 47 0c 36"
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_offer_data_and_ack_are_the_bytes_the_document_gives() -> None:
    spec = FileSpec("bin/app", 10, DIGEST, 0o755)
    assert encode(Offer(spec)) == raw(2, spec_bytes("bin/app", 10, 0o755))
    assert encode(Data(7, b"abc")) == raw(5, struct.pack(">Q", 7) + b"abc")
    assert encode(Ack(1 << 40)) == raw(6, struct.pack(">Q", 1 << 40))
    assert encode(Accept(3, 65536)) == raw(3, struct.pack(">QI", 3, 65536))
    assert encode(FileDone()) == raw(7, b"")
    assert encode(Commit("2.0", (spec,))) == raw(
        10, b"\x032.0" + struct.pack(">I", 1) + spec_bytes("bin/app", 10, 0o755)
    )


names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=20,
)
paths = st.lists(
    st.sampled_from(["a", "bin", "app.so", "é", "lib", "x.conf"]), min_size=1, max_size=4
).map("/".join)
specs = st.builds(
    FileSpec,
    paths,
    st.integers(0, (1 << 64) - 1),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 0o777),
)
offsets = st.integers(0, (1 << 64) - 1)
reasons = st.text(max_size=50)
frames = st.one_of(
    st.builds(Hello, names, names, st.sampled_from(CameraState)),
    st.builds(Offer, specs),
    st.builds(Accept, offsets, st.integers(1, 0xFFFFFFFF)),
    st.builds(Reject, reasons),
    st.builds(Data, offsets, st.binary(min_size=1, max_size=300)),
    st.builds(Ack, offsets),
    st.just(FileDone()),
    st.just(FileOk()),
    st.builds(FileBad, reasons),
    st.builds(
        Commit,
        names,
        st.lists(specs, min_size=1, max_size=4, unique_by=lambda s: s.path).map(tuple),
    ),
    st.just(Restarting()),
    st.builds(Abort, reasons),
)


@quick
@given(st.lists(frames, max_size=6), st.data())
def test_frames_round_trip_however_the_stream_is_cut(
    sent: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(encode(f) for f in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = FrameReader()
    got: list[Frame] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        reader.feed(stream[a:b])
        while (frame := reader.next_frame()) is not None:
            got.append(frame)
    assert got == sent
    assert reader.buffered == 0


@quick
@given(frames, st.data())
def test_a_changed_byte_is_never_taken_for_a_frame(frame: Frame, data: st.DataObject) -> None:
    wire = bytearray(encode(frame))
    at = data.draw(st.integers(0, len(wire) - 1))
    wire[at] ^= data.draw(st.integers(1, 255))
    reader = FrameReader()
    reader.feed(bytes(wire))
    with contextlib.suppress(FrameError):
        assert reader.next_frame() is None  # a longer length: still waiting for the rest


MALFORMED = [
    ("bad magic", b"XY\x01\x01" + bytes(8), "bad magic"),
    ("version 2", raw(1, b"\x01c\x011\x00", version=2), "protocol version 2 is not understood"),
    ("crc", raw(6, bytes(8), crc=0), "CRC mismatch"),
    ("unknown kind", raw(99, b""), "unknown frame kind 99"),
    ("short payload", raw(6, bytes(5)), "ACK: payload ends inside offset"),
    ("trailing bytes", raw(7, b"zz"), "FILE_DONE: 2 unexpected bytes after the payload"),
    ("no state", raw(1, b"\x01c\x011"), "HELLO: payload ends inside state"),
    ("bad state", raw(1, b"\x01c\x011\x07"), "unknown camera state 7"),
    ("empty id", raw(1, b"\x00\x011\x00"), "camera id is empty"),
    ("escaping path", raw(2, spec_bytes("../etc/passwd")), "path escapes the target root"),
    ("absolute path", raw(2, spec_bytes("/etc/passwd")), "path escapes the target root"),
    ("bad utf-8", raw(2, b"\x00\x02\xff\xfe" + bytes(42)), "path is not valid UTF-8"),
    ("setuid", raw(2, spec_bytes("a", mode=0o4755)), "mode 04755 is out of 0..0777"),
    ("empty data", raw(5, bytes(8)), "DATA: no data"),
    ("window 0", raw(3, bytes(12)), "window is 0"),
    ("no files", raw(10, b"\x011" + bytes(4)), "COMMIT: no files"),
    (
        "twice",
        raw(10, b"\x011" + struct.pack(">I", 2) + spec_bytes("a") + spec_bytes("a")),
        "files[1].path a: listed twice",
    ),
]


@pytest.mark.parametrize(("wire", "why"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_frame_is_refused_with_its_reason(wire: bytes, why: str) -> None:
    receiver = UlcReceiver("cam", "1.0")
    receiver.data_to_send()
    events = receiver.receive_data(wire)
    assert len(events) == 1 and isinstance(events[0], Violation)
    assert why in events[0].reason
    assert receiver.closed
    (abort,) = read_all(receiver.data_to_send())
    assert isinstance(abort, Abort) and why in abort.reason
    assert receiver.receive_data(encode(FileDone())) == []


def test_an_oversized_length_is_refused_from_the_header_alone() -> None:
    reader = FrameReader()
    reader.feed(b"UL\x01\x05" + struct.pack(">I", MAX_PAYLOAD + 1))
    with pytest.raises(FrameError, match=f"payload of {MAX_PAYLOAD + 1} bytes exceeds"):
        reader.next_frame()
    with pytest.raises(FrameError):
        reader.next_frame()


@quick
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_garbage_never_raises_out_of_either_end(first: bytes, second: bytes) -> None:
    receiver = UlcReceiver("cam", "1.0")
    events = receiver.receive_data(first) + receiver.receive_data(second)
    if any(isinstance(e, Violation) for e in events):
        assert receiver.closed
        assert isinstance(read_all(receiver.data_to_send())[-1], Abort)
    sender = UlcSender()
    events2 = sender.receive_data(first) + sender.receive_data(second)
    if any(isinstance(e, Violation) for e in events2):
        assert sender.closed


@quick
@given(st.lists(frames, min_size=1, max_size=5), st.binary(max_size=40))
def test_valid_frames_in_any_order_then_garbage_never_raise(sent: list[Frame], tail: bytes) -> None:
    receiver = UlcReceiver("cam", "1.0")
    for event in receiver.receive_data(b"".join(encode(f) for f in sent) + tail):
        if isinstance(event, OfferReceived):
            receiver.accept(0)
        elif isinstance(event, FileComplete):
            receiver.file_ok()
        elif isinstance(event, CommitRequested):
            receiver.reject("no")


# -- the two ends, in memory ------------------------------------------------------------------


def hello_of(receiver: UlcReceiver, sender: UlcSender) -> Greeted:
    (event,) = sender.receive_data(receiver.data_to_send())
    assert isinstance(event, Greeted)
    return event


class Camera:
    """A receiver driven like the simulated camera, storing into a bytearray."""

    def __init__(self, window: int, held: bytes = b"") -> None:
        self.receiver = UlcReceiver("cam", "1.0", window=window)
        self.stored = bytearray(held)
        self.acks: list[int] = []

    def take(self, data: bytes) -> None:
        events = list(self.receiver.receive_data(data))
        while events:
            event = events.pop(0)
            if isinstance(event, OfferReceived):
                events += self.receiver.accept(len(self.stored))
            elif isinstance(event, DataReceived):
                assert event.offset == len(self.stored)
                self.stored += event.data
            elif isinstance(event, FileComplete):
                ok = hashlib.sha256(self.stored).digest() == event.file.sha256
                events += self.receiver.file_ok() if ok else self.receiver.file_bad("digest")
            else:
                raise AssertionError(event)


def transfer(
    content: bytes, camera: Camera, chunk: int, piece: int, cut_at: int | None = None
) -> tuple[list[object], UlcSender]:
    """Send ``content`` to ``camera``, delivering bytes ``piece`` at a time; stop after the
    sender has sent ``cut_at`` data bytes (a cut) if given."""
    sender = UlcSender(chunk)
    hello_of(camera.receiver, sender)
    spec = FileSpec("f.bin", len(content), hashlib.sha256(content).digest())
    sender.offer(spec)
    events: list[object] = []
    while not events or not isinstance(events[-1], FileVerified):
        while (want := sender.next_chunk()) is not None:
            offset, length = want
            assert sender.sent + length - sender.acked <= sender.window
            sender.send_data(content[offset : offset + length])
            if cut_at is not None and sender.sent >= cut_at:
                out = sender.data_to_send()
                for i in range(0, len(out), piece):
                    camera.take(out[i : i + piece])
                return events, sender
        out = sender.data_to_send()
        assert out, "deadlock: nothing to send and nothing to wait for"
        for i in range(0, len(out), piece):
            camera.take(out[i : i + piece])
        back = camera.receiver.data_to_send()
        for ack in read_all(back):
            if isinstance(ack, Ack):
                camera.acks.append(ack.offset)
        events += sender.receive_data(back)
        assert not any(isinstance(e, Violation) for e in events), events
    return events, sender


@quick
@given(
    st.binary(max_size=3000),
    st.integers(1, 700),
    st.integers(1, 500),
    st.integers(1, 900),
)
def test_a_file_goes_across_whatever_the_window_chunk_and_delivery(
    content: bytes, window: int, chunk: int, piece: int
) -> None:
    camera = Camera(window)
    events, sender = transfer(content, camera, chunk, piece)
    assert bytes(camera.stored) == content
    assert isinstance(events[0], Accepted) and events[0].offset == 0
    assert sender.acked == len(content)
    assert camera.acks == sorted(camera.acks)
    if content:
        assert camera.acks[-1] == len(content)


@quick
@given(st.binary(min_size=2, max_size=3000), st.data())
def test_a_cut_transfer_resumes_from_what_the_camera_holds(
    content: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(1, len(content) - 1))
    first = Camera(window=256)
    transfer(content, first, chunk=100, piece=37, cut_at=cut)
    held = bytes(first.stored)
    assert content.startswith(held)
    second = Camera(window=256, held=held)
    events, _ = transfer(content, second, chunk=100, piece=37)
    assert events[0] == Accepted(len(held), 256)
    assert bytes(second.stored) == content


def test_the_receiver_acks_every_half_window_and_at_the_end() -> None:
    camera = Camera(window=10)
    transfer(bytes(23), camera, chunk=2, piece=1000)
    assert camera.acks == [6, 12, 18, 23]


def test_a_rejected_offer_leaves_the_connection_open_for_the_next() -> None:
    receiver, sender = UlcReceiver("cam", "1.0"), UlcSender()
    hello_of(receiver, sender)
    sender.offer(FileSpec("big.bin", 10, DIGEST))
    (offer,) = receiver.receive_data(sender.data_to_send())
    assert isinstance(offer, OfferReceived)
    receiver.reject("file too large")
    assert sender.receive_data(receiver.data_to_send()) == [Rejected("file too large")]
    sender.offer(FileSpec("small.bin", 0, hashlib.sha256(b"").digest()))
    (offer,) = receiver.receive_data(sender.data_to_send())
    assert isinstance(offer, OfferReceived)
    assert receiver.accept(0) == []
    assert sender.receive_data(receiver.data_to_send()) == [Accepted(0, receiver.window)]
    (done,) = receiver.receive_data(sender.data_to_send())  # FILE_DONE at once: 0 bytes
    assert isinstance(done, FileComplete)


def test_a_commit_is_answered_restarting_and_ends_the_connection() -> None:
    receiver, sender = UlcReceiver("cam", "1.0"), UlcSender()
    hello_of(receiver, sender)
    spec = FileSpec("a", 1, DIGEST)
    sender.commit("2.0", [spec])
    assert receiver.receive_data(sender.data_to_send()) == [CommitRequested("2.0", (spec,))]
    receiver.restarting()
    assert receiver.closed
    assert sender.receive_data(receiver.data_to_send()) == [CameraRestarting()]
    assert sender.closed


def test_a_restarting_camera_says_so_and_nothing_else() -> None:
    receiver, sender = UlcReceiver("cam", "1.0", restarting=True), UlcSender()
    assert receiver.closed
    assert hello_of(receiver, sender) == Greeted("cam", "1.0", restarting=True)
    assert sender.closed


def receiving(size: int = 10) -> UlcReceiver:
    receiver = UlcReceiver("cam", "1.0", window=100)
    receiver.receive_data(encode(Offer(FileSpec("f", size, DIGEST))))
    receiver.accept(0)
    receiver.data_to_send()
    return receiver


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (Data(3, b"abc"), "DATA at offset 3, expected 0"),
        (Data(0, bytes(11)), "DATA runs to 11, past the end of f (10 bytes)"),
        (FileDone(), "FILE_DONE after 0 of the 10 bytes of f"),
        (Ack(0), "unexpected ACK while receiving data"),
        (Offer(FileSpec("g", 1, DIGEST)), "unexpected OFFER while receiving data"),
    ],
)
def test_the_receiver_refuses_what_does_not_follow(frame: Frame, why: str) -> None:
    receiver = receiving()
    (event,) = receiver.receive_data(encode(frame))
    assert event == Violation(why)
    (abort,) = read_all(receiver.data_to_send())
    assert abort == Abort(f"protocol error: {why}")


def offering(size: int = 10) -> UlcSender:
    sender = UlcSender()
    sender.receive_data(encode(Hello("cam", "1.0")))
    sender.offer(FileSpec("f", size, DIGEST))
    sender.data_to_send()
    return sender


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([Accept(11, 5)], "ACCEPT from 11, past the end of f (10 bytes)"),
        (
            [Accept(0, 5), Ack(6)],
            "ACK of 6 is outside 0..5, the bytes sent and not yet acknowledged",
        ),
        ([Accept(0, 5), FileOk()], "unexpected FILE_OK while sending data"),
        ([Hello("cam", "1.0")], "unexpected HELLO while waiting for ACCEPT or REJECT"),
    ],
)
def test_the_sender_refuses_what_does_not_follow(frames: list[Frame], why: str) -> None:
    sender = offering()
    events = []
    for frame in frames:
        events += sender.receive_data(encode(frame))
        if (want := sender.next_chunk()) is not None:
            sender.send_data(bytes(want[1]))
    assert events[-1] == Violation(why)
    assert sender.closed
    assert read_all(sender.data_to_send())[-1] == Abort(f"protocol error: {why}")


def test_the_sender_never_sends_beyond_the_window() -> None:
    sender = offering(100)
    sender.receive_data(encode(Accept(0, 30)))
    sent = 0
    while (want := sender.next_chunk()) is not None:
        sender.send_data(bytes(want[1]))
        sent += want[1]
    assert sent == 30
    with pytest.raises(ValueError, match="do not fit the window"):
        sender.send_data(b"x")
    sender.receive_data(encode(Ack(15)))
    assert sender.next_chunk() == (30, 15)


def test_asking_out_of_turn_is_a_driver_bug() -> None:
    receiver = UlcReceiver("cam", "1.0")
    with pytest.raises(RuntimeError, match="cannot accept while waiting for OFFER"):
        receiver.accept(0)
    with pytest.raises(RuntimeError):
        UlcSender().offer(FileSpec("f", 1, DIGEST))


def test_an_abort_from_the_peer_ends_the_connection() -> None:
    receiver = UlcReceiver("cam", "1.0")
    assert receiver.receive_data(encode(Abort("bye"))) == [Aborted("bye")]
    assert receiver.closed
    assert receiver.data_to_send() == encode(Hello("cam", "1.0"))


# -- the driver over TCP ---------------------------------------------------------------------


def local_file(folder: Path, path: str, data: bytes, mode: int = 0o644) -> OutgoingFile:
    local = folder / path.replace("/", "_")
    local.write_bytes(data)
    return OutgoingFile(path, local, len(data), hashlib.sha256(data).hexdigest(), mode)


@pytest.fixture
async def camera(tmp_path: Path) -> AsyncIterator[SimCamera]:
    async with SimCamera("camera-0000", tmp_path / "flash", "1.0.0") as cam:
        yield cam


def client_for(cam: SimCamera, policy: UlcPolicy = FAST) -> UlcClient:
    return UlcClient(cam.camera_id, *cam.address, policy)


async def test_files_go_across_are_committed_and_the_new_version_answers(
    camera: SimCamera, tmp_path: Path
) -> None:
    files = [
        local_file(tmp_path, "bin/app", bytes(range(256)) * 400, 0o755),
        local_file(tmp_path, "etc/app.conf", b"x=1\n"),
        local_file(tmp_path, "empty", b""),
    ]
    client = client_for(camera)
    assert await client.version() == "1.0.0"
    seen: list[tuple[int, int]] = []
    await client.send_files(files, lambda done, total: seen.append((done, total)))
    assert seen[-1] == (102404, 102404)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert camera.version == "1.0.0"  # nothing is live before the commit
    await client.commit("2.0.0", files)
    assert await client.version() == "2.0.0"
    assert camera.restarts == 1
    assert camera.live_files() == {f.path: f.local.read_bytes() for f in files}
    assert camera.accepted == [(f.path, 0) for f in files]
    assert client.resumed == []


async def test_a_cut_transfer_resumes_at_the_byte_the_camera_holds(
    camera: SimCamera, tmp_path: Path
) -> None:
    content = hashlib.sha256(b"seed").digest() * 6250  # 200,000 bytes
    file = local_file(tmp_path, "bin/app", content)
    camera.faults.cut_after_bytes = 40_000
    client = client_for(camera)
    await client.send_files([file], lambda done, total: None)
    assert camera.cuts == [("bin/app", 40_000)]
    assert camera.accepted == [("bin/app", 0), ("bin/app", 40_000)]
    assert client.resumed == [("bin/app", 40_000)]
    assert camera.bytes_received == len(content)  # no byte stored twice
    await client.commit("2.0.0", [file])
    assert await client.version() == "2.0.0"
    assert camera.live_files() == {"bin/app": content}


async def test_a_rejected_file_names_the_camera_the_file_and_the_reason(
    camera: SimCamera, tmp_path: Path
) -> None:
    camera.faults.reject_file = "bin/*"
    files = [local_file(tmp_path, "a.conf", b"a"), local_file(tmp_path, "bin/app", b"app")]
    client = client_for(camera)
    with pytest.raises(FileRejected) as caught:
        await client.send_files(files, lambda done, total: None)
    assert str(caught.value) == (
        f"camera camera-0000 ({camera.host}:{camera.port}) rejected bin/app: "
        "file too large for the camera's flash"
    )
    assert caught.value.path == "bin/app"
    assert camera.rejected == [("bin/app", "file too large for the camera's flash")]
    assert camera.connections == 1  # a refusal is not retried


async def test_a_file_that_arrives_bad_is_reported_bad(camera: SimCamera, tmp_path: Path) -> None:
    file = local_file(tmp_path, "bin/app", b"the real bytes")
    lying = OutgoingFile(file.path, file.local, file.size, hashlib.sha256(b"other").hexdigest())
    with pytest.raises(FileRejected, match=r"found bin/app bad after the transfer: .*sha256"):
        await client_for(camera).send_files([lying], lambda done, total: None)


async def test_a_commit_of_files_never_sent_is_refused(camera: SimCamera, tmp_path: Path) -> None:
    file = local_file(tmp_path, "bin/app", b"never sent")
    with pytest.raises(CommitRefused, match="commit refused: bin/app was not received whole"):
        await client_for(camera).commit("2.0.0", [file])
    assert camera.version == "1.0.0"
    assert camera.restarts == 0


@asynccontextmanager
async def server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on loopback running ``handler``; yields its port and a connection count."""
    count: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count.append(1)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], count
    finally:
        srv.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    await writer.drain()
    await asyncio.Event().wait()


async def accept_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts the file with a window of 64 bytes, then never acknowledges."""
    receiver = UlcReceiver("camera-0000", "1.0.0", window=64)
    writer.write(receiver.data_to_send())
    while data := await reader.read(4096):
        if any(isinstance(e, OfferReceived) for e in receiver.receive_data(data)):
            receiver.accept(0)
            writer.write(receiver.data_to_send())
            break
    await asyncio.Event().wait()


SHORT = UlcPolicy(
    connect_timeout=1.0, io_timeout=0.2, attempts=2, backoff=0.01, restart_timeout=0.3
)


@pytest.mark.parametrize(
    ("handler", "why"),
    [
        (silent, "no answer within 0.2 s waiting for HELLO"),
        (hang_up, "the camera closed the connection while we waited for HELLO"),
        (babble, "protocol error waiting for HELLO: bad magic 4854"),
        (
            accept_then_stall,
            "no answer within 0.2 s waiting for ACK of bin/app (sent 64 of 100 bytes)",
        ),
    ],
    ids=["silent", "hangs up", "not ULC", "stalls mid-file"],
)
async def test_a_misbehaving_camera_fails_the_transfer_after_bounded_attempts(
    tmp_path: Path,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    why: str,
) -> None:
    file = local_file(tmp_path, "bin/app", bytes(100))
    async with server(handler) as (port, connections), asyncio.timeout(20):
        client = UlcClient("camera-0000", "127.0.0.1", port, SHORT)
        with pytest.raises(TransportError) as caught:
            await client.send_files([file], lambda done, total: None)
    message = str(caught.value)
    assert message.startswith(f"camera camera-0000 (127.0.0.1:{port}): bin/app: ")
    assert "transfer failed after 2 attempts without progress" in message
    assert why in message
    assert len(connections) == 2


async def accept_then_repeat(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frame: bytes
) -> None:
    """Accepts the file with a window of 64 bytes, then sends ``frame``, a byte at a time,
    every 20 ms: busy, never silent for a read timeout, and never any further."""
    receiver = UlcReceiver("camera-0000", "1.0.0", window=64)
    writer.write(receiver.data_to_send())
    while data := await reader.read(4096):
        if any(isinstance(e, OfferReceived) for e in receiver.receive_data(data)):
            receiver.accept(0)
            writer.write(receiver.data_to_send())
            break
    while True:
        for byte in frame:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)


STALL = UlcPolicy(connect_timeout=1.0, io_timeout=0.1, stall_timeout=0.15, attempts=2, backoff=0.01)


@pytest.mark.parametrize(
    "frame",
    [encode(Ack(0)), b"UL\x01\x06\x00\x10\x00\x00" + bytes(1 << 20)],
    ids=["repeats ACK(0)", "trickles one frame"],
)
async def test_a_camera_that_keeps_talking_without_progress_is_given_up(
    tmp_path: Path, frame: bytes
) -> None:
    file = local_file(tmp_path, "bin/app", bytes(100))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_then_repeat(reader, writer, frame)

    async with server(handler) as (port, connections), asyncio.timeout(5):
        client = UlcClient("camera-0000", "127.0.0.1", port, STALL)
        with pytest.raises(TransportError) as caught:
            await client.send_files([file], lambda done, total: None)
    assert str(caught.value) == (
        f"camera camera-0000 (127.0.0.1:{port}): bin/app: transfer failed after 2 attempts "
        "without progress: no progress within 0.15 s waiting for ACK of bin/app "
        "(sent 64 of 100 bytes)"
    )
    assert len(connections) == 2


async def test_a_camera_that_acknowledges_slowly_but_surely_is_not_given_up(
    tmp_path: Path,
) -> None:
    """Each ACK that moves on starts the stall deadline again, however long the transfer."""
    file = local_file(tmp_path, "bin/app", bytes(range(256)) * 6)

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        receiver = UlcReceiver("camera-0000", "1.0.0", window=128)
        writer.write(receiver.data_to_send())
        while data := await reader.read(4096):
            for event in receiver.receive_data(data):
                if isinstance(event, OfferReceived):
                    receiver.accept(0)
                elif isinstance(event, FileComplete):
                    receiver.file_ok()
            await asyncio.sleep(0.03)
            writer.write(receiver.data_to_send())

    policy = UlcPolicy(io_timeout=0.5, stall_timeout=0.2, attempts=1, chunk_size=64)
    async with server(slow) as (port, connections), asyncio.timeout(5):
        client = UlcClient("camera-0000", "127.0.0.1", port, policy)
        await client.send_files([file], lambda done, total: None)
    assert len(connections) == 1


async def test_asking_a_silent_camera_its_version_gives_up_with_a_clear_error() -> None:
    async with server(silent) as (port, connections), asyncio.timeout(20):
        client = UlcClient("camera-0000", "127.0.0.1", port, SHORT)
        with pytest.raises(TransportError) as caught:
            await client.version()
    assert str(caught.value) == (
        f"camera camera-0000 (127.0.0.1:{port}) did not answer as ready within 0.3 s: "
        "no answer within 0.2 s waiting for HELLO"
    )
    assert connections


async def test_a_camera_nobody_listens_for_cannot_be_reached(tmp_path: Path) -> None:
    async with server(silent) as (port, _):
        pass  # the port is free again
    client = UlcClient("camera-0000", "127.0.0.1", port, SHORT)
    with pytest.raises(TransportError, match=r"after 2 attempts without progress: cannot connect"):
        await client.send_files([local_file(tmp_path, "a", b"a")], lambda done, total: None)


async def test_a_commit_whose_answer_is_lost_is_not_sent_again(tmp_path: Path) -> None:
    commits: list[str] = []

    async def take_commit_and_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        receiver = UlcReceiver("camera-0000", "1.0.0")
        writer.write(receiver.data_to_send())
        while data := await reader.read(4096):
            for event in receiver.receive_data(data):
                if isinstance(event, CommitRequested):
                    commits.append(event.version)
                    return

    file = local_file(tmp_path, "a", b"a")
    async with server(take_commit_and_hang_up) as (port, _):
        client = UlcClient("camera-0000", "127.0.0.1", port, SHORT)
        with pytest.raises(TransportError, match=r"COMMIT of 2\.0\.0 sent, outcome unknown"):
            await client.commit("2.0.0", [file])
    assert commits == ["2.0.0"]


async def test_a_version_the_wire_cannot_carry_is_refused_before_anything_is_sent(
    camera: SimCamera, tmp_path: Path
) -> None:
    file = local_file(tmp_path, "a", b"a")
    client = client_for(camera)
    await client.send_files([file], lambda done, total: None)
    version = "\u00e9" * 128  # 128 characters, 256 bytes of UTF-8
    with pytest.raises(Unsendable) as caught:
        await client.commit(version, [file])
    assert str(caught.value) == (
        f"camera camera-0000 ({camera.host}:{camera.port}): cannot send a COMMIT of "
        f"{version}: version is 256 bytes of UTF-8, more than 255"
    )
    assert camera.connections == 1 and camera.restarts == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda name: encode(Hello("camera-0000", name)),
        lambda name: UlcReceiver("camera-0000", name),
        lambda name: encode(Commit(name, (FileSpec("a", 1, DIGEST),))),
    ],
    ids=["HELLO", "receiver", "COMMIT"],
)
def test_a_name_over_255_bytes_is_refused_naming_the_field(make: Callable[[str], object]) -> None:
    with pytest.raises(ValueError, match=r"^version is 256 bytes of UTF-8, more than 255$"):
        make("\u00e9" * 128)


def test_frame_kinds_are_numbered_as_documented() -> None:
    assert [(k.name, k.value) for k in FrameKind] == [
        ("HELLO", 1),
        ("OFFER", 2),
        ("ACCEPT", 3),
        ("REJECT", 4),
        ("DATA", 5),
        ("ACK", 6),
        ("FILE_DONE", 7),
        ("FILE_OK", 8),
        ("FILE_BAD", 9),
        ("COMMIT", 10),
        ("RESTARTING", 11),
        ("ABORT", 12),
    ]
