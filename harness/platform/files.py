"""The platform's HTTP file server: ``GET /file/{fileId}?accessKey=...``.

403 for a wrong or missing accessKey, 404 for an unknown file, a correct 206 for a
Range, and ``file-md5`` / ``file-sha256`` headers as JetLinks sends them. Faults can
be switched on to make downloads fail the way they fail in the field.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..protocol import now_ms
from .store import FirmwareStore

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 16 * 1024


@dataclass
class DownloadFaults:
    """Switches for the file server. ``cut_after_bytes`` closes the connection of the next
    ``cut_times`` downloads after that many body bytes; ``range_quirk`` reproduces JetLinks,
    which honours only a Range's start and answers 200 instead of 206."""

    cut_after_bytes: int | None = None
    cut_times: int = 0
    #: Instead of ``cut_after_bytes``: cut where a download passes this byte of the file
    #: (a resumed Range request is cut at the same place of the file, not of its body).
    cut_at_byte: int | None = None
    range_quirk: bool = False
    #: Seconds to sleep between chunks (a slow link).
    chunk_delay: float = 0.0
    #: The next ``stall_times`` downloads that pass this byte of the file stop there for
    #: ``stall_seconds`` before going on (a link that stalls, then recovers).
    stall_at_byte: int | None = None
    stall_seconds: float = 0.0
    stall_times: int = 0

    def stall_ahead(self, offset: int) -> int | None:
        """The stall point at or after file ``offset``, while stalls are left."""
        if self.stall_at_byte is None or self.stall_times <= 0 or self.stall_at_byte < offset:
            return None
        return self.stall_at_byte

    def take_cut(self, start: int, length: int) -> int | None:
        """Where to cut a body of ``length`` bytes that begins at byte ``start`` of the file
        (counted in body bytes), or None; a cut that would fall at or past the end is no
        cut and is kept for the next download."""
        if self.cut_times <= 0:
            return None
        if self.cut_at_byte is not None:
            if not start < self.cut_at_byte < start + length:
                return None
            cut = self.cut_at_byte - start
        elif self.cut_after_bytes is None or self.cut_after_bytes >= length:
            return None
        else:
            cut = self.cut_after_bytes
        self.cut_times -= 1
        return cut


@dataclass(frozen=True)
class ServedRequest:
    """One line of the file server's log: what was asked and what was sent."""

    file_id: str
    status: int
    range: str | None
    sent: int
    cut: bool
    #: The client closed the connection before the body was sent.
    aborted: bool = False
    time: int = field(default_factory=now_ms)
    method: str = "GET"

    def to_dict(self) -> dict[str, Any]:
        return {
            "fileId": self.file_id,
            "status": self.status,
            "range": self.range,
            "sent": self.sent,
            "cut": self.cut,
            "aborted": self.aborted,
            "time": self.time,
            "method": self.method,
        }


class FileServer:
    def __init__(self, store: FirmwareStore) -> None:
        self.store = store
        self.faults = DownloadFaults()
        self.served: list[ServedRequest] = []
        #: Called with every request served (a trace records them).
        self.listener: Callable[[ServedRequest], None] | None = None

    def _log(self, served: ServedRequest) -> None:
        self.served.append(served)
        if self.listener is not None:
            self.listener(served)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/file/{file_id}", self.download)]

    def _parse_range(self, header: str, size: int) -> tuple[int, int] | None:
        """(start, end inclusive), or None when the header is to be ignored (RFC 9110 allows)."""
        match = _RANGE.match(header.strip())
        if not match:
            return None
        first, last = match.groups()
        if not first and not last:
            return None
        if not first:  # suffix: the last N bytes
            n = int(last)
            return (max(size - n, 0), size - 1) if n else (size, size - 1)
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        return start, end

    async def download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        stored = self.store.files.get(file_id)
        range_header = request.headers.get("Range")
        if stored is None:
            self._log(ServedRequest(file_id, 404, range_header, 0, False))
            raise web.HTTPNotFound(text=f"no file {file_id}")
        key = request.query.get("accessKey", "")
        if not hmac.compare_digest(key, stored.access_key):
            self._log(ServedRequest(file_id, 403, range_header, 0, False))
            raise web.HTTPForbidden(text="access denied: wrong or missing accessKey")

        size = stored.size
        start, end, status = 0, size - 1, 200
        if range_header:
            span = self._parse_range(range_header, size)
            if span is not None:
                start, end = span
                if start >= size or start > end:
                    self._log(ServedRequest(file_id, 416, range_header, 0, False))
                    raise web.HTTPRequestRangeNotSatisfiable(
                        headers={"Content-Range": f"bytes */{size}"}
                    )
                if self.faults.range_quirk:
                    end = size - 1
                else:
                    status = 206

        body = memoryview(stored.data)[start : end + 1]
        response = web.StreamResponse(status=status)
        response.headers.update(
            {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "file-md5": stored.md5,
                "file-sha256": stored.sha256,
                "Content-Disposition": f'attachment; filename="{stored.name}"',
            }
        )
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        response.content_length = len(body)
        await response.prepare(request)
        if request.method == "HEAD":
            self._log(ServedRequest(file_id, status, range_header, 0, False, method="HEAD"))
            return response

        cut = self.faults.take_cut(start, len(body))
        limit = len(body) if cut is None else cut
        sent = 0
        stalled = False  # one stall per download, however many are left
        try:
            while sent < limit:
                stop = min(sent + CHUNK, limit)
                stall = None if stalled else self.faults.stall_ahead(start + sent)
                if stall is not None and stall - start < stop:
                    stop = stall - start
                if stop > sent:
                    await response.write(body[sent:stop])
                    sent = stop
                if stall is not None and start + sent == stall and sent < limit:
                    # Only a download that goes on past the stall byte stalls there; the
                    # stall is taken before the sleep, so two at once cannot both take it.
                    stalled = True
                    if self.faults.stall_times > 0:
                        self.faults.stall_times -= 1
                        await asyncio.sleep(self.faults.stall_seconds)
                if self.faults.chunk_delay:
                    await asyncio.sleep(self.faults.chunk_delay)
        except ConnectionError:
            # The client went away mid-body (its timeout, a dropped link): nothing to answer.
            self._log(ServedRequest(file_id, status, range_header, sent, False, True))
            return response
        self._log(ServedRequest(file_id, status, range_header, sent, cut is not None))
        if cut is not None:
            # A cut link: the client sees the connection close before Content-Length is met.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
