"""The gateway's Downloader and check_sign, against a real aiohttp file server on loopback.

The server is written here so that it can misbehave on purpose: cut the connection
mid-body, stall, answer errors, ignore Range, or answer a Range the JetLinks way
(200 with only the rest of the file).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiohttp import web

from harness.gateway import Downloader, DownloadError, DownloadPolicy, check_sign

ACCESS_KEY = "65bd8a681e1fea659886962621ddf337"
DATA = os.urandom(100_000)
#: How much the server writes at a time.
SERVER_CHUNK = 8192

FAST = DownloadPolicy(connect_timeout=2.0, read_timeout=2.0, retries=3, backoff=0.01, chunk=4096)
#: For the stall tests: a short silence already counts as a failed attempt.
IMPATIENT = replace(FAST, read_timeout=0.15)


@dataclass
class Reply:
    """How the server answers one request."""

    #: Non-zero: answer this status and nothing else.
    status: int = 0
    #: "honour" (206 + Content-Range), "ignore" (200, whole file), "jetlinks" (200, only the
    #: rest of the file, Content-Length = size - offset), "skip" (206 starting 10 bytes late).
    ranges: str = "honour"
    #: Close the connection after this many body bytes.
    cut_after: int | None = None
    #: Send this many body bytes, then nothing while keeping the connection open.
    stall_after: int | None = None


class FileServer:
    """One file at /file/{anything}?accessKey=KEY; the plan answers requests in turn,
    ``default`` answers once the plan is used up."""

    def __init__(self, data: bytes = DATA) -> None:
        self.data = data
        self.plan: list[Reply] = []
        self.default = Reply()
        #: (path with query, Range header) of every request, in order.
        self.requests: list[tuple[str, str | None]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> FileServer:
        app = web.Application()
        app.router.add_get("/file/{name}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def url(self, name: str = "97b8f5ae7311a275c27e734b633635d0") -> str:
        return f"http://127.0.0.1:{self.port}/file/{name}?accessKey={ACCESS_KEY}"

    @property
    def ranges_asked(self) -> list[str | None]:
        return [r for _, r in self.requests]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        reply = self.plan.pop(0) if self.plan else self.default
        range_header = request.headers.get("Range")
        self.requests.append((request.path_qs, range_header))
        if request.query.get("accessKey") != ACCESS_KEY:
            return web.Response(status=403, text="access denied")
        if reply.status:
            return web.Response(status=reply.status, text=f"status {reply.status}")
        size = len(self.data)
        start, status, headers = 0, 200, {}
        if range_header and reply.ranges != "ignore":
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, f"the downloader sent an unexpected Range {range_header!r}"
            start = int(match.group(1))
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            if reply.ranges == "skip":
                start += 10
            if reply.ranges in ("honour", "skip"):
                status = 206
                headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        body = self.data[start:]
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        limit = len(body)
        for stop_at in (reply.cut_after, reply.stall_after):
            if stop_at is not None:
                limit = min(limit, stop_at)
        for i in range(0, limit, SERVER_CHUNK):
            await resp.write(body[i : min(i + SERVER_CHUNK, limit)])
        if reply.cut_after is not None:
            assert request.transport is not None
            request.transport.close()
            return resp
        if reply.stall_after is not None:
            await asyncio.sleep(3600)  # cancelled when the client gives up
        await resp.write_eof()
        return resp


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    async with FileServer() as running:
        yield running


@pytest.fixture
async def downloader() -> AsyncIterator[Downloader]:
    d = Downloader(FAST)
    yield d
    await d.close()


@pytest.fixture
async def impatient() -> AsyncIterator[Downloader]:
    d = Downloader(IMPATIENT)
    yield d
    await d.close()


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# -- fetching ------------------------------------------------------------------------------


async def test_full_fetch_equals_the_bytes_and_reports_progress(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "fw.bin"
    seen: list[tuple[int, int]] = []
    result = await downloader.fetch(
        server.url(), len(DATA), dest, lambda done, total: seen.append((done, total))
    )
    assert result == dest
    assert dest.read_bytes() == DATA
    assert not part_of(dest).exists()
    assert server.ranges_asked == [None]
    assert seen, "no progress was reported"
    dones = [done for done, _ in seen]
    assert dones == sorted(dones)
    assert {total for _, total in seen} == {len(DATA)}
    assert seen[-1] == (len(DATA), len(DATA))


async def test_resume_after_a_cut_asks_for_the_rest(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    server.plan = [Reply(cut_after=40_000)]
    dest = tmp_path / "fw.bin"
    seen: list[int] = []
    await downloader.fetch(server.url(), len(DATA), dest, lambda done, _: seen.append(done))
    assert dest.read_bytes() == DATA
    assert server.ranges_asked == [None, "bytes=40000-"]
    # The resumed attempt counts on from where the cut left it.
    assert max(d for d in seen if d <= 40_000) == 40_000
    assert seen[-1] == len(DATA)


async def test_several_cuts_in_a_row_each_resume_where_the_last_ended(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    # More cuts than `retries`, but each one brings new bytes, so none counts against it.
    server.plan = [Reply(cut_after=16_384) for _ in range(5)]
    dest = tmp_path / "fw.bin"
    await downloader.fetch(server.url(), len(DATA), dest)
    assert dest.read_bytes() == DATA
    assert server.ranges_asked == [None] + [f"bytes={16_384 * n}-" for n in range(1, 6)]


async def test_server_ignoring_range_restarts_from_zero(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    server.plan = [Reply(cut_after=40_000)]
    server.default = Reply(ranges="ignore")
    dest = tmp_path / "fw.bin"
    await downloader.fetch(server.url(), len(DATA), dest)
    assert server.ranges_asked == [None, "bytes=40000-"]
    assert dest.read_bytes() == DATA
    assert dest.stat().st_size == len(DATA)


async def test_jetlinks_200_with_the_rest_of_the_file_is_a_resume(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    server.plan = [Reply(cut_after=40_000)]
    server.default = Reply(ranges="jetlinks")
    dest = tmp_path / "fw.bin"
    seen: list[int] = []
    await downloader.fetch(server.url(), len(DATA), dest, lambda done, _: seen.append(done))
    assert server.ranges_asked == [None, "bytes=40000-"]
    # Taken as a restart from 0, the file would be the tail at offset 0 and never complete.
    assert dest.read_bytes() == DATA
    after_cut = seen[seen.index(40_000) + 1 :]
    assert after_cut and min(after_cut) > 40_000


async def test_206_starting_later_than_asked_is_refused(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    server.plan = [Reply(cut_after=40_000)]
    server.default = Reply(ranges="skip")
    with pytest.raises(DownloadError, match="Content-Range"):
        await downloader.fetch(server.url(), len(DATA), tmp_path / "fw.bin")
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [401, 403, 404, 410])
async def test_refusals_fail_at_once_without_the_access_key(
    server: FileServer, downloader: Downloader, tmp_path: Path, status: int
) -> None:
    server.default = Reply(status=status)
    dest = tmp_path / "fw.bin"
    with pytest.raises(DownloadError) as caught:
        await downloader.fetch(server.url(), len(DATA), dest)
    assert len(server.requests) == 1, "a refusal must not be retried"
    message = str(caught.value)
    assert f"HTTP {status}" in message
    assert "/file/97b8f5ae7311a275c27e734b633635d0" in message
    assert ACCESS_KEY not in message
    assert "accessKey" not in message
    assert not dest.exists()


async def test_server_error_is_retried_then_fails_after_retries_attempts(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    server.default = Reply(status=500)
    with pytest.raises(DownloadError, match=r"after 3 attempts without progress") as caught:
        await downloader.fetch(server.url(), len(DATA), tmp_path / "fw.bin")
    assert len(server.requests) == FAST.retries
    assert "500" in str(caught.value)


async def test_server_errors_between_progress_do_not_use_up_the_retries(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    # Two failures in a row, then new bytes, twice over: never `retries` (3) without progress.
    server.plan = [
        Reply(cut_after=30_000),
        Reply(status=500),
        Reply(status=503),
        Reply(cut_after=30_000),
        Reply(status=500),
        Reply(status=502),
    ]
    dest = tmp_path / "fw.bin"
    await downloader.fetch(server.url(), len(DATA), dest)
    assert dest.read_bytes() == DATA
    assert server.ranges_asked == [
        None,
        "bytes=30000-",
        "bytes=30000-",
        "bytes=30000-",
        "bytes=60000-",
        "bytes=60000-",
        "bytes=60000-",
    ]


async def test_server_error_message_does_not_leak_the_access_key(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    server.default = Reply(status=500)
    with pytest.raises(DownloadError) as caught:
        await downloader.fetch(server.url(), len(DATA), tmp_path / "fw.bin")
    assert ACCESS_KEY not in str(caught.value)


async def test_retry_log_does_not_leak_the_access_key(
    server: FileServer, downloader: Downloader, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.plan = [Reply(status=500)]
    caplog.set_level(logging.DEBUG, logger="ota_hil.gateway.download")
    await downloader.fetch(server.url(), len(DATA), tmp_path / "fw.bin")
    logged = [r.getMessage() for r in caplog.records if r.name == "ota_hil.gateway.download"]
    assert logged, "the retry was not logged"
    assert not [line for line in logged if ACCESS_KEY in line]


async def test_stalled_body_times_out_and_resumes(
    server: FileServer, impatient: Downloader, tmp_path: Path
) -> None:
    server.plan = [Reply(stall_after=40_000)]
    dest = tmp_path / "fw.bin"
    started = time.monotonic()
    await impatient.fetch(server.url(), len(DATA), dest)
    elapsed = time.monotonic() - started
    assert dest.read_bytes() == DATA
    assert server.ranges_asked == [None, "bytes=40000-"]
    assert IMPATIENT.read_timeout * 0.9 <= elapsed < IMPATIENT.read_timeout + 2.0


async def test_server_that_always_stalls_fails_naming_the_attempts(
    server: FileServer, impatient: Downloader, tmp_path: Path
) -> None:
    server.plan = [Reply(stall_after=20_000)]
    server.default = Reply(stall_after=0)
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        await impatient.fetch(server.url(), len(DATA), tmp_path / "fw.bin")
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "after 3 attempts without progress" in message
    assert "20000 of 100000 bytes" in message
    # One attempt that brought bytes, then `retries` that brought none.
    assert server.ranges_asked == [None] + ["bytes=20000-"] * FAST.retries
    assert elapsed < (1 + FAST.retries) * IMPATIENT.read_timeout + 2.0


async def test_connection_refused_fails_after_retries(
    downloader: Downloader, tmp_path: Path
) -> None:
    async with FileServer() as gone:
        url = gone.url()
    with pytest.raises(DownloadError, match="after 3 attempts without progress"):
        await downloader.fetch(url, len(DATA), tmp_path / "fw.bin")


async def test_more_bytes_than_announced_fails_at_once(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "fw.bin"
    with pytest.raises(DownloadError, match="more than the announced size 99990"):
        await downloader.fetch(server.url(), len(DATA) - 10, dest)
    assert len(server.requests) == 1
    assert not dest.exists()
    part = part_of(dest)
    assert not part.exists() or part.stat().st_size <= len(DATA) - 10


async def test_fewer_bytes_than_announced_fails(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "fw.bin"
    with pytest.raises(
        DownloadError, match=r"is 100000 bytes, shorter than the announced size 100010"
    ):
        await downloader.fetch(server.url(), len(DATA) + 10, dest)
    assert not dest.exists()
    assert server.ranges_asked[0] is None
    assert set(server.ranges_asked[1:]) == {"bytes=100000-"}


async def test_leftover_part_file_is_resumed(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "fw.bin"
    part_of(dest).write_bytes(DATA[:50_000])
    await downloader.fetch(server.url(), len(DATA), dest)
    assert server.ranges_asked == ["bytes=50000-"]
    assert dest.read_bytes() == DATA
    assert not part_of(dest).exists()


async def test_complete_leftover_part_file_needs_no_body(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "fw.bin"
    part_of(dest).write_bytes(DATA)
    await downloader.fetch(server.url(), len(DATA), dest)
    assert server.ranges_asked == [f"bytes={len(DATA)}-"]  # answered 416
    assert dest.read_bytes() == DATA


async def test_leftover_part_file_longer_than_the_image_is_discarded(
    server: FileServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "fw.bin"
    part_of(dest).write_bytes(b"\0" * (len(DATA) + 1))
    await downloader.fetch(server.url(), len(DATA), dest)
    assert server.ranges_asked == [None]
    assert dest.read_bytes() == DATA


# -- check_sign ----------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.bin"
    path.write_bytes(DATA)
    return path


@pytest.mark.parametrize("method", ["md5", "MD5", "Md5", "sha256", "SHA256", "Sha256"])
@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_check_sign_accepts_md5_and_sha256_in_any_case(image: Path, method: str, case) -> None:
    sign = hashlib.new(method.lower(), DATA).hexdigest()
    check_sign(image, case(sign), method)
    check_sign(image, f"  {case(sign)}\n", method)


@pytest.mark.parametrize("method", ["md5", "SHA256"])
def test_check_sign_mismatch_names_both_digests(image: Path, method: str) -> None:
    actual = hashlib.new(method.lower(), DATA).hexdigest()
    wrong = hashlib.new(method.lower(), DATA + b"x").hexdigest().upper()
    with pytest.raises(DownloadError) as caught:
        check_sign(image, wrong, method)
    message = str(caught.value)
    assert "sign mismatch" in message
    assert actual in message
    assert wrong in message


def test_check_sign_md5_is_not_accepted_as_sha256(image: Path) -> None:
    with pytest.raises(DownloadError, match="sign mismatch"):
        check_sign(image, hashlib.md5(DATA).hexdigest(), "sha256")


@pytest.mark.parametrize("method", ["crc32", "sha1", "", "md5 "])
def test_check_sign_refuses_unknown_methods(image: Path, method: str) -> None:
    with pytest.raises(DownloadError, match="unsupported signMethod") as caught:
        check_sign(image, hashlib.md5(DATA).hexdigest(), method)
    assert repr(method) in str(caught.value)
