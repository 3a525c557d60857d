"""The gateway's ULC driver: a :class:`~harness.ulc.transport.CameraTransport` over TCP that
runs :class:`~harness.ulc.sender.UlcSender` on asyncio streams.

Every connect and every read has a timeout, and every connection a deadline for progress
(a camera that trickles bytes or repeats itself is as lost as a silent one); a cut, a
silence, a stall or nonsense from the camera ends the connection and a new one resumes
where the camera's ACCEPT says, after a back-off, until ``attempts`` connections in a row
bring no new confirmed byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from harness.packages.manifest import show

from .events import (
    Aborted,
    Accepted,
    Acked,
    CameraRestarting,
    FileFailed,
    FileVerified,
    Greeted,
    Rejected,
    SenderEvent,
    Violation,
)
from .frames import name_problem
from .sender import DEFAULT_CHUNK, UlcSender
from .transport import (
    CommitRefused,
    CommitUncertain,
    FileRejected,
    OutgoingFile,
    TransferProgress,
    TransportError,
    Unsendable,
)

log = logging.getLogger("ota_hil.ulc")

_READ = 64 * 1024


@dataclass(frozen=True)
class UlcPolicy:
    connect_timeout: float = 5.0
    #: Longest wait for the camera's next frame (or for a write to drain).
    io_timeout: float = 10.0
    #: Longest a connection may go without progress (the camera acknowledging new bytes,
    #: or a file checking out), however busy it looks; then it counts as lost.
    stall_timeout: float = 30.0
    #: Connections in a row that bring no new confirmed byte before a transfer gives up.
    attempts: int = 5
    backoff: float = 0.1
    max_backoff: float = 2.0
    #: How long a camera may take to answer HELLO as ready after a COMMIT (or at all).
    restart_timeout: float = 60.0
    chunk_size: int = DEFAULT_CHUNK


class _Lost(Exception):
    """This connection is over (cut, silent, refused, nonsense); another may do better."""


class _Link:
    """One connection: a sender on a stream, with every wait bounded."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, policy: UlcPolicy
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.policy = policy
        self.sender = UlcSender(policy.chunk_size)
        self._events: deque[SenderEvent] = deque()
        self._loop = asyncio.get_running_loop()
        self.progressed()

    def progressed(self) -> None:
        """The camera moved the work on: the connection's stall deadline starts again."""
        self._deadline = self._loop.time() + self.policy.stall_timeout

    def _wait(self, what: str) -> tuple[float, str]:
        """How long the next wait may last, and what to say when it runs out: the read
        timeout, or what is left before the stall deadline (then _Lost at once if none)."""
        stalled = f"no progress within {self.policy.stall_timeout:g} s {what}"
        left = self._deadline - self._loop.time()
        if left <= 0:
            raise _Lost(stalled)
        if left < self.policy.io_timeout:
            return left, stalled
        return self.policy.io_timeout, ""

    async def flush(self) -> None:
        data = self.sender.data_to_send()
        if not data:
            return
        timeout, stalled = self._wait("sending")
        try:
            self.writer.write(data)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError:
            raise _Lost(stalled or f"the camera took no data for {timeout:g} s") from None
        except OSError as exc:
            raise _Lost(f"the connection broke while sending: {exc}") from None

    async def next_event(self, waiting_for: str) -> SenderEvent:
        while not self._events:
            timeout, stalled = self._wait(f"waiting for {waiting_for}")
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(_READ)
            except TimeoutError:
                raise _Lost(
                    stalled or f"no answer within {timeout:g} s waiting for {waiting_for}"
                ) from None
            except OSError as exc:
                raise _Lost(f"the connection broke waiting for {waiting_for}: {exc}") from None
            if not data:
                raise _Lost(f"the camera closed the connection while we waited for {waiting_for}")
            self._events.extend(self.sender.receive_data(data))
        event = self._events.popleft()
        if isinstance(event, Violation):
            with contextlib.suppress(_Lost):
                await self.flush()
            raise _Lost(f"protocol error waiting for {waiting_for}: {event.reason}")
        if isinstance(event, Aborted):
            raise _Lost(f"the camera aborted waiting for {waiting_for}: {event.reason}")
        return event

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self.policy.io_timeout):
                await self.writer.wait_closed()


class UlcClient:
    """One camera at ``host:port`` over the ULC stand-in. Each operation opens its own
    connection; what survives a cut is on the camera (the bytes it holds)."""

    def __init__(
        self, camera_id: str, host: str, port: int, policy: UlcPolicy | None = None
    ) -> None:
        self.camera_id = camera_id
        self.host = host
        self.port = port
        self.policy = policy or UlcPolicy()
        self.name = f"camera {camera_id} ({host}:{port})"
        #: Every ACCEPT that resumed a file: (path, offset).
        self.resumed: list[tuple[str, int]] = []

    # -- connections -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[tuple[_Link, Greeted]]:
        policy = self.policy
        try:
            async with asyncio.timeout(policy.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise _Lost(f"no connection within {policy.connect_timeout:g} s") from None
        except OSError as exc:
            raise _Lost(f"cannot connect: {exc.strerror or exc}") from None
        link = _Link(reader, writer, policy)
        try:
            hello = await link.next_event("HELLO")
            assert isinstance(hello, Greeted)
            if hello.camera_id != self.camera_id:
                log.warning("%s: answers as %r", self.name, hello.camera_id)
            yield link, hello
        finally:
            await link.close()

    def _backoff(self, failures: int) -> float:
        return min(self.policy.max_backoff, self.policy.backoff * 2 ** max(0, failures - 1))

    # -- CameraTransport ---------------------------------------------------------------------

    async def version(self) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.restart_timeout
        failures = 0
        while True:
            try:
                async with self._connect() as (_, hello):
                    if not hello.restarting:
                        return hello.version
                    why = "its app is restarting"
            except _Lost as exc:
                why = str(exc)
            failures += 1
            pause = self._backoff(failures)
            if loop.time() + pause > deadline:
                raise TransportError(
                    f"{self.name} did not answer as ready within "
                    f"{self.policy.restart_timeout:g} s: {why}"
                )
            log.info("%s: not ready (%s); asking again in %.2f s", self.name, why, pause)
            await asyncio.sleep(pause)

    async def send_files(self, files: Sequence[OutgoingFile], progress: TransferProgress) -> None:
        total = sum(f.size for f in files)
        verified: set[str] = set()
        #: Per file, the most bytes the camera confirmed (ACCEPT or ACK).
        confirmed: dict[str, int] = {}

        def report() -> None:
            progress(sum(confirmed.values()), total)

        failures = 0
        while True:
            pending = [f for f in files if f.path not in verified]
            if not pending:
                return
            before = sum(confirmed.values())
            current = pending[0]
            try:
                async with self._connect() as (link, hello):
                    if hello.restarting:
                        raise _Lost("its app is restarting")
                    for file in pending:
                        current = file
                        await self._send_file(link, file, confirmed, report)
                        verified.add(file.path)
                        confirmed[file.path] = file.size
                        report()
            except _Lost as exc:
                failures = 0 if sum(confirmed.values()) > before else failures + 1
                if failures >= self.policy.attempts:
                    raise TransportError(
                        f"{self.name}: {current.path}: transfer failed after {failures} "
                        f"attempts without progress: {exc}"
                    ) from None
                pause = self._backoff(max(failures, 1))
                log.warning(
                    "%s: %s: %s; reconnecting in %.2f s", self.name, current.path, exc, pause
                )
                await asyncio.sleep(pause)

    async def _send_file(
        self,
        link: _Link,
        file: OutgoingFile,
        confirmed: dict[str, int],
        report: Callable[[], None],
    ) -> None:
        sender = link.sender
        sender.offer(file.spec)
        await link.flush()
        event = await link.next_event(f"an answer to the OFFER of {file.path}")
        if isinstance(event, Rejected):
            raise FileRejected(
                f"{self.name} rejected {file.path}: {event.reason}", file.path, event.reason
            )
        assert isinstance(event, Accepted), event
        if event.offset:
            self.resumed.append((file.path, event.offset))
            log.info("%s: %s resumes at byte %d", self.name, file.path, event.offset)
        confirmed[file.path] = max(confirmed.get(file.path, 0), event.offset)
        acked = event.offset
        with file.local.open("rb") as source:
            while True:
                while (chunk := sender.next_chunk()) is not None:
                    offset, length = chunk
                    source.seek(offset)
                    data = source.read(length)
                    if len(data) != length:
                        raise TransportError(
                            f"{self.name}: {file.path}: the local copy {file.local} ends at "
                            f"{offset + len(data)}, not {file.size}"
                        )
                    sender.send_data(data)
                await link.flush()
                event = await link.next_event(
                    f"ACK of {file.path} (sent {sender.sent} of {file.size} bytes)"
                    if sender.sent < file.size
                    else f"FILE_OK for {file.path}"
                )
                if isinstance(event, Acked):
                    if event.offset > acked:
                        acked = event.offset
                        link.progressed()
                    confirmed[file.path] = max(confirmed[file.path], event.offset)
                    report()
                elif isinstance(event, FileVerified):
                    link.progressed()
                    return
                elif isinstance(event, FileFailed):
                    raise FileRejected(
                        f"{self.name} found {file.path} bad after the transfer: {event.reason}",
                        file.path,
                        event.reason,
                    )

    async def commit(self, version: str, files: Sequence[OutgoingFile]) -> None:
        problem = name_problem(version)
        if problem:
            raise Unsendable(
                f"{self.name}: cannot send a COMMIT of {show(version)}: version {problem}"
            )
        specs = [f.spec for f in files]
        failures = 0
        while True:
            try:
                async with self._connect() as (link, hello):
                    if hello.restarting:
                        raise _Lost("its app is restarting")
                    link.sender.commit(version, specs)
                    try:
                        await link.flush()
                        event = await link.next_event(f"RESTARTING after the COMMIT of {version}")
                    except _Lost as exc:
                        raise CommitUncertain(
                            f"{self.name}: COMMIT of {version} sent, outcome unknown: {exc}"
                        ) from None
                    if isinstance(event, Rejected):
                        raise CommitRefused(f"{self.name} refused the commit: {event.reason}")
                    assert isinstance(event, CameraRestarting), event
                    return
            except _Lost as exc:
                failures += 1
                if failures >= self.policy.attempts:
                    raise TransportError(
                        f"{self.name}: COMMIT of {version} not sent after {failures} "
                        f"attempts: {exc}"
                    ) from None
                await asyncio.sleep(self._backoff(failures))

    async def close(self) -> None:
        """Nothing stays open between operations."""
