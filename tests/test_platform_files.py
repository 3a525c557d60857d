"""The mock platform's HTTP file server (GET /file/{id}?accessKey=...), over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from harness.client import PlatformClient
from harness.platform import PlatformServer

# 48 000 pseudo-random bytes: several of the server's 16 KiB chunks, no repeating pattern.
DATA = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1500))
SIZE = len(DATA)


@dataclass
class Served:
    base: str
    file_id: str
    access_key: str
    http: aiohttp.ClientSession
    api: PlatformClient

    @property
    def url(self) -> str:
        return f"{self.base}/file/{self.file_id}?accessKey={self.access_key}"

    async def get(self, url: str | None = None, **headers: str) -> tuple[int, Any, bytes]:
        async with self.http.get(url or self.url, headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()

    async def get_partial(self) -> tuple[int, bytes, BaseException | None]:
        """Read as much of the body as arrives; return (status, bytes, error that ended it)."""
        got = bytearray()
        async with self.http.get(self.url) as resp:
            try:
                async for chunk in resp.content.iter_any():
                    got += chunk
            except aiohttp.ClientPayloadError as exc:
                return resp.status, bytes(got), exc
            return resp.status, bytes(got), None


@pytest.fixture
async def served(platform_server: PlatformServer) -> AsyncIterator[Served]:
    async with (
        PlatformClient(platform_server.url, timeout=10) as api,
        aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        stored = await api.upload_file(DATA, "gw.bin")
        key = stored["accessUrl"].rsplit("accessKey=", 1)[1]
        yield Served(platform_server.url, stored["id"], key, http, api)


async def test_download_is_the_file_with_md5_and_sha256_headers(served: Served) -> None:
    status, headers, body = await served.get()
    assert status == 200
    assert body == DATA
    assert headers["file-md5"] == hashlib.md5(DATA).hexdigest()
    assert headers["file-sha256"] == hashlib.sha256(DATA).hexdigest()
    assert int(headers["Content-Length"]) == SIZE
    assert headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in headers


async def test_the_upload_answer_points_at_the_download(served: Served) -> None:
    stored = await served.api.upload_file(b"tiny image", "t.bin")
    assert stored["size"] == 10
    assert stored["md5"] == hashlib.md5(b"tiny image").hexdigest()
    assert stored["sha256"] == hashlib.sha256(b"tiny image").hexdigest()
    status, _, body = await served.get(stored["accessUrl"])
    assert (status, body) == (200, b"tiny image")


async def test_an_empty_file_downloads_as_empty(served: Served) -> None:
    stored = await served.api.upload_file(b"", "empty.bin")
    status, headers, body = await served.get(stored["accessUrl"])
    assert (status, body) == (200, b"")
    assert headers["file-md5"] == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize("query", ["", "?accessKey=", "?accessKey=0123456789abcdef", "?key=x"])
async def test_missing_or_wrong_access_key_is_403(served: Served, query: str) -> None:
    status, headers, body = await served.get(f"{served.base}/file/{served.file_id}{query}")
    assert status == 403
    assert DATA[:64] not in body
    assert "file-md5" not in headers


async def test_another_files_access_key_is_403(served: Served) -> None:
    other = await served.api.upload_file(b"other", "o.bin")
    other_key = other["accessUrl"].rsplit("accessKey=", 1)[1]
    status, _, _ = await served.get(f"{served.base}/file/{served.file_id}?accessKey={other_key}")
    assert status == 403


async def test_unknown_file_is_404(served: Served) -> None:
    status, _, _ = await served.get(f"{served.base}/file/nope?accessKey={served.access_key}")
    assert status == 404


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-199", 100, 199),
        ("bytes=0-0", 0, 0),
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),
        ("bytes=20000-", 20000, SIZE - 1),  # a-: from a to the end
        ("bytes=-100", SIZE - 100, SIZE - 1),  # -n: the last n bytes
        (f"bytes=40000-{SIZE + 5000}", 40000, SIZE - 1),  # an end past the file is clipped
        (f"bytes=-{SIZE + 10}", 0, SIZE - 1),  # a suffix longer than the file: all of it
    ],
)
async def test_range_gives_206_with_exact_bytes(
    served: Served, header: str, start: int, end: int
) -> None:
    status, headers, body = await served.get(Range=header)
    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert int(headers["Content-Length"]) == end - start + 1
    assert body == DATA[start : end + 1]
    # the hashes are of the whole file, not of the part
    assert headers["file-md5"] == hashlib.md5(DATA).hexdigest()


@pytest.mark.parametrize(
    "header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0", "bytes=500-100"]
)
async def test_unsatisfiable_range_is_416_with_the_size(served: Served, header: str) -> None:
    status, headers, body = await served.get(Range=header)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert DATA[:64] not in body


@pytest.mark.parametrize("header", ["bytes=0-9,20-29", "items=0-9", "bytes=-", "bytes=abc"])
async def test_a_range_it_does_not_understand_is_ignored(served: Served, header: str) -> None:
    status, headers, body = await served.get(Range=header)
    assert status == 200
    assert body == DATA
    assert "Content-Range" not in headers


async def test_range_quirk_answers_200_with_the_rest_of_the_file(served: Served) -> None:
    await served.api.set_download_faults(rangeQuirk=True)
    status, headers, body = await served.get(Range="bytes=100-199")
    assert status == 200
    assert "Content-Range" not in headers
    assert body == DATA[100:]
    assert int(headers["Content-Length"]) == SIZE - 100

    await served.api.set_download_faults(rangeQuirk=False)
    status, _, body = await served.get(Range="bytes=100-199")
    assert (status, body) == (206, DATA[100:200])


async def test_cut_after_bytes_closes_the_connection_cut_times_times(served: Served) -> None:
    echoed = await served.api.set_download_faults(cutAfterBytes=20000, cutTimes=2)
    assert echoed["cutAfterBytes"] == 20000 and echoed["cutTimes"] == 2

    for _ in range(2):
        status, got, error = await served.get_partial()
        assert status == 200
        assert isinstance(error, aiohttp.ClientPayloadError)
        assert got == DATA[:20000]

    status, got, error = await served.get_partial()
    assert error is None
    assert (status, got) == (200, DATA)

    log = await served.api.file_log()
    assert [(e["status"], e["sent"], e["cut"]) for e in log] == [
        (200, 20000, True),
        (200, 20000, True),
        (200, SIZE, False),
    ]


async def test_cut_applies_to_a_range_download_too(served: Served) -> None:
    await served.api.set_download_faults(cutAfterBytes=10, cutTimes=1)
    async with served.http.get(served.url, headers={"Range": "bytes=1000-"}) as resp:
        assert resp.status == 206
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    status, _, body = await served.get(Range="bytes=1000-")
    assert (status, body) == (206, DATA[1000:])


async def test_cut_at_zero_bytes_sends_headers_and_no_body(served: Served) -> None:
    await served.api.set_download_faults(cutAfterBytes=0, cutTimes=1)
    status, got, error = await served.get_partial()
    assert status == 200
    assert got == b""
    assert isinstance(error, aiohttp.ClientPayloadError)


async def test_a_cut_longer_than_the_body_is_not_logged_as_cut(served: Served) -> None:
    await served.api.set_download_faults(cutAfterBytes=1000, cutTimes=1)
    status, _, body = await served.get(Range="bytes=-100")  # 100 bytes, less than the cut
    assert (status, body) == (206, DATA[-100:])  # delivered whole
    last = (await served.api.file_log())[-1]
    assert (last["sent"], last["cut"]) == (100, False)


async def test_the_served_log_records_status_range_and_bytes(served: Served) -> None:
    await served.get()
    await served.get(Range="bytes=10-19")
    await served.get(f"{served.base}/file/{served.file_id}?accessKey=bad")
    await served.get(f"{served.base}/file/missing?accessKey=bad")
    await served.get(Range=f"bytes={SIZE}-")

    log = await served.api.file_log()
    assert [(e["fileId"], e["status"], e["range"], e["sent"]) for e in log] == [
        (served.file_id, 200, None, SIZE),
        (served.file_id, 206, "bytes=10-19", 10),
        (served.file_id, 403, None, 0),
        ("missing", 404, None, 0),
        (served.file_id, 416, f"bytes={SIZE}-", 0),
    ]
    assert all(e["cut"] is False for e in log)
    assert all(isinstance(e["time"], int) for e in log)


async def test_head_gives_the_headers_and_no_body(served: Served) -> None:
    split = urlsplit(served.url)
    reader, writer = await asyncio.open_connection(split.hostname, split.port)
    try:
        writer.write(
            f"HEAD {split.path}?{split.query} HTTP/1.1\r\nHost: {split.netloc}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {SIZE}".encode() in head
    assert f"file-md5: {hashlib.md5(DATA).hexdigest()}".encode() in head
    assert rest == b""


async def test_a_client_that_leaves_mid_body_is_logged_as_aborted(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    await served.api.set_download_faults(chunkDelay=0.02)
    async with served.http.get(served.url) as resp:
        await resp.content.readexactly(1000)
        resp.close()  # the client goes away with the body half sent

    async def aborted() -> dict[str, Any] | None:
        log = await served.api.file_log()
        return log[-1] if log else None

    deadline = asyncio.get_running_loop().time() + 5
    while (entry := await aborted()) is None:
        assert asyncio.get_running_loop().time() < deadline, "no file-log entry"
        await asyncio.sleep(0.02)
    assert entry["aborted"] is True and entry["cut"] is False
    assert 0 < entry["sent"] < SIZE
    assert "failed" not in caplog.text  # not reported as a server error


async def test_download_urls_use_the_public_url(broker: Any) -> None:
    server = PlatformServer(broker.url, public_url="http://gateway-facing.example:8844/")
    async with server:
        server.platform.registry.add_product("p")
        async with PlatformClient(server.url) as api:
            fw = await api.upload_firmware(DATA, "p", "2.0.0")
    assert fw["url"].startswith("http://gateway-facing.example:8844/file/")
    assert server.url.startswith("http://127.0.0.1:")
