"""The file server's stall fault (``DownloadFaults.stall_at_byte``, ``stall_seconds``,
``stall_times``), over real HTTP: where a download stops, for how long, and how many."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from harness.client import PlatformClient
from harness.platform import PlatformServer
from harness.platform.files import DownloadFaults, ServedRequest

# 48 000 pseudo-random bytes: several of the server's 16 KiB chunks, no repeating pattern.
DATA = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1500))
SIZE = len(DATA)
STALL_AT = SIZE * 6 // 10  # 28 800: inside the server's second chunk
STALL = 0.5
#: The stall of the other tests: long enough to tell from a chunk's wait, short to run.
SHORT = 0.25
#: A download of 48 kB on loopback without a stall takes milliseconds; a gap this long is
#: a stall, and no download without one comes near it.
GAP = 0.2


@dataclass
class Download:
    status: int
    body: bytes
    elapsed: float
    #: (bytes received before the gap, gap in seconds) for the longest wait between chunks.
    longest_gap: tuple[int, float]


@dataclass
class Served:
    url: str
    server: PlatformServer
    http: aiohttp.ClientSession

    @property
    def faults(self) -> DownloadFaults:
        return self.server.files.faults

    @property
    def log(self) -> list[ServedRequest]:
        return self.server.files.served

    async def download(self, range_header: str | None = None) -> Download:
        """The body, read as it arrives, with the time each piece came."""
        headers = {"Range": range_header} if range_header else {}
        got = bytearray()
        gap = (0, 0.0)
        started = time.monotonic()
        async with self.http.get(self.url, headers=headers) as resp:
            last = time.monotonic()
            async for chunk in resp.content.iter_any():
                now = time.monotonic()
                if now - last > gap[1]:
                    gap = (len(got), now - last)
                got += chunk
                last = now
        return Download(resp.status, bytes(got), time.monotonic() - started, gap)


@pytest.fixture
async def served(platform_server: PlatformServer) -> AsyncIterator[Served]:
    async with (
        PlatformClient(platform_server.url, timeout=10) as api,
        aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        stored = await api.upload_file(DATA, "gw.bin")
        yield Served(stored["accessUrl"], platform_server, http)


def stall(served: Served, at: int = STALL_AT, seconds: float = SHORT, times: int = 1) -> None:
    served.faults.stall_at_byte = at
    served.faults.stall_seconds = seconds
    served.faults.stall_times = times


async def test_a_download_stalls_once_at_the_byte_and_is_complete(served: Served) -> None:
    stall(served, seconds=STALL)
    first = await served.download()
    assert (first.status, first.body) == (200, DATA)
    assert first.elapsed >= STALL
    at, gap = first.longest_gap
    assert at == STALL_AT
    assert gap >= STALL - 0.05
    assert served.faults.stall_times == 0

    second = await served.download()  # times=1: this one goes through
    assert (second.status, second.body) == (200, DATA)
    assert second.elapsed < GAP
    assert second.longest_gap[1] < GAP
    assert [(r.status, r.sent, r.cut) for r in served.log] == [
        (200, SIZE, False),
        (200, SIZE, False),
    ]


async def test_stall_times_two_stalls_two_downloads_once_each(served: Served) -> None:
    stall(served, seconds=0.2, times=2)
    first = await served.download()
    assert first.body == DATA
    assert 0.2 <= first.elapsed < 0.35  # one stall, not two
    second = await served.download()
    assert second.body == DATA
    assert second.elapsed >= 0.2  # the second download stalls too
    assert second.longest_gap[0] == STALL_AT


async def test_a_range_after_the_stall_point_does_not_stall(served: Served) -> None:
    stall(served)
    resumed = await served.download(f"bytes={STALL_AT + 1200}-")
    assert (resumed.status, resumed.body) == (206, DATA[STALL_AT + 1200 :])
    assert resumed.elapsed < GAP
    assert served.faults.stall_times == 1  # not used up by a download that never passed it

    whole = await served.download()
    assert whole.elapsed >= SHORT and whole.longest_gap[0] == STALL_AT


@pytest.mark.parametrize("start", [1000, STALL_AT - 1, STALL_AT])
async def test_a_range_before_the_stall_point_stalls_at_the_files_byte(
    served: Served, start: int
) -> None:
    stall(served)
    part = await served.download(f"bytes={start}-")
    assert part.status == 206
    assert part.body == DATA[start:]
    at, gap = part.longest_gap
    assert gap >= SHORT - 0.05
    assert at == STALL_AT - start  # bytes of this body before the gap, not of the file
    assert part.elapsed >= SHORT
    assert served.faults.stall_times == 0


async def test_a_stall_at_byte_zero_holds_the_body_back(served: Served) -> None:
    stall(served, at=0)
    first = await served.download()
    assert (first.status, first.body) == (200, DATA)
    assert first.elapsed >= SHORT
    assert first.longest_gap[0] == 0  # nothing of the body came before the stall


async def test_a_stall_combines_with_a_cut(served: Served) -> None:
    """The cut still comes, after the stall: the client sees the body end early."""
    stall(served, at=10_000)
    served.faults.cut_after_bytes = 20_000
    served.faults.cut_times = 1
    got = bytearray()
    started = time.monotonic()
    async with served.http.get(served.url) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                got += chunk
    assert time.monotonic() - started >= SHORT
    assert bytes(got) == DATA[:20_000]
    assert (served.log[-1].sent, served.log[-1].cut) == (20_000, True)


async def test_head_is_logged_as_head_and_does_not_use_a_stall(served: Served) -> None:
    stall(served)
    async with served.http.head(served.url) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == SIZE
        assert await resp.read() == b""
    async with served.http.get(served.url) as resp:
        assert await resp.read() == DATA
    head, get = served.log
    assert (head.method, head.status, head.sent, head.cut) == ("HEAD", 200, 0, False)
    assert (get.method, get.status, get.sent) == ("GET", 200, SIZE)
    assert served.faults.stall_times == 0  # the GET took it, not the HEAD


async def test_a_range_ending_before_the_stall_byte_leaves_the_stall(served: Served) -> None:
    stall(served)
    part = await served.download(f"bytes=0-{STALL_AT - 1}")
    assert (part.status, part.body) == (206, DATA[:STALL_AT])
    assert served.faults.stall_times == 1
    whole = await served.download()
    assert whole.longest_gap[0] == STALL_AT and whole.elapsed >= SHORT


async def test_a_cut_at_a_byte_of_the_file_cuts_a_resumed_range_there_too(
    served: Served,
) -> None:
    """``cut_at_byte`` counts in the file: a full download and a Range resumed before the
    point are both cut where the file reaches it; a Range past it, and a third download
    once the cuts are used up, are not."""
    served.faults.cut_at_byte = STALL_AT
    served.faults.cut_times = 2

    async def body(range_header: str | None = None) -> bytes:
        got = bytearray()
        headers = {"Range": range_header} if range_header else {}
        async with served.http.get(served.url, headers=headers) as resp:
            try:
                async for chunk in resp.content.iter_any():
                    got += chunk
            except aiohttp.ClientPayloadError:
                pass  # the cut: the body ends before its Content-Length
        return bytes(got)

    assert await body() == DATA[:STALL_AT]
    assert await body("bytes=20000-") == DATA[20_000:STALL_AT]
    assert await body(f"bytes={STALL_AT + 1}-") == DATA[STALL_AT + 1 :]
    assert await body() == DATA
    assert [r.cut for r in served.log] == [True, True, False, False]
