"""Fetching an image over HTTP the way a gateway on a bad link must: bounded timeouts,
bounded retries, Range resume after a cut, and a size and sign check at the end."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ..protocol import SIGN_METHODS, FirmwareFields

log = logging.getLogger("ota_hil.gateway.download")

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def partial_download(dest: Path) -> Path:
    """Where the bytes of ``dest`` gather until it is complete (kept for a resume)."""
    return dest.with_name(dest.name + ".part")


class DownloadError(Exception):
    """The image could not be fetched or is not the one announced; the message says why."""


@dataclass(frozen=True)
class DownloadPolicy:
    connect_timeout: float = 10.0
    #: Longest silence while reading the body before the attempt counts as failed.
    read_timeout: float = 15.0
    #: Attempts in a row that bring no new bytes before giving up.
    retries: int = 5
    backoff: float = 0.2
    chunk: int = 64 * 1024


def check_sign(path: Path, sign: str, method: str) -> None:
    """Raise :class:`DownloadError` unless ``path`` hashes to ``sign`` (md5/sha256, any case)."""
    algo = method.lower()
    if algo not in SIGN_METHODS:
        raise DownloadError(f"unsupported signMethod {method!r}")
    digest = hashlib.new(algo)
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != sign.strip().lower():
        raise DownloadError(f"sign mismatch: {algo} of the image is {actual}, expected {sign}")


class Downloader:
    """One aiohttp session for all downloads; proxies from the environment are ignored
    because the firmware server is local (the seed's note: a proxy breaks the download)."""

    def __init__(self, policy: DownloadPolicy | None = None) -> None:
        self.policy = policy or DownloadPolicy()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                trust_env=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.policy.connect_timeout,
                    sock_read=self.policy.read_timeout,
                ),
                auto_decompress=False,
            )
        return self._session

    async def fetch(
        self,
        url: str,
        size: int,
        dest: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Download ``url`` into ``dest`` (resuming a ``dest``.part left by an earlier try)."""
        part = partial_download(dest)
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        idle = 0
        while True:
            before = offset
            try:
                offset = await self._attempt(url, size, part, offset, progress)
            except DownloadError:
                raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                offset = part.stat().st_size if part.exists() else 0
                idle = 0 if offset > before else idle + 1
                if idle >= self.policy.retries:
                    raise DownloadError(
                        f"download failed after {idle} attempts without progress "
                        f"({offset} of {size} bytes): {describe(exc)}"
                    ) from None
                log.info("download cut at %d/%d bytes (%s); resuming", offset, size, describe(exc))
                await asyncio.sleep(self.policy.backoff * idle)
                continue
            if offset == size:
                part.replace(dest)
                return dest
            idle = 0 if offset > before else idle + 1
            if idle >= self.policy.retries:
                raise DownloadError(f"server keeps ending the body early at {offset} of {size}")

    async def _attempt(
        self,
        url: str,
        size: int,
        part: Path,
        offset: int,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self._client().get(url, headers=headers) as resp:
            if resp.status in (401, 403, 404, 410):
                raise DownloadError(f"HTTP {resp.status} {resp.reason} for {_safe(url)}")
            if resp.status == 416:
                if offset == size:
                    return offset
                total = resp.headers.get("Content-Range", "").rpartition("/")[2]
                raise DownloadError(
                    f"the file on the server is {total or 'of unknown size'} bytes, "
                    f"shorter than the announced size {size}"
                )
            if resp.status >= 400:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=resp.reason or ""
                )
            start = self._start_of(resp, offset, size)
            mode = "r+b" if start else "wb"
            if not part.exists():
                part.touch()
            with part.open(mode) as f:
                f.seek(start)
                f.truncate()
                position = start
                async for chunk in resp.content.iter_chunked(self.policy.chunk):
                    position += len(chunk)
                    if position > size:
                        raise DownloadError(f"server sent more than the announced size {size}")
                    f.write(chunk)
                    if progress:
                        progress(position, size)
                return position

    @staticmethod
    def _start_of(resp: aiohttp.ClientResponse, offset: int, size: int) -> int:
        """Where the body starts in the file, trusting a 206's Content-Range, and telling a
        full 200 from JetLinks' 200 that answers a Range with the rest of the file."""
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) > offset:
                raise DownloadError(
                    f"206 with unusable Content-Range {resp.headers.get('Content-Range')!r}"
                )
            return int(match.group(1))
        length = resp.content_length
        if offset and length is not None and length == size - offset and length != size:
            return offset
        return 0


def _safe(url: str) -> str:
    """The URL without its query (the accessKey stays out of logs and reasons)."""
    return url.split("?", 1)[0]


_QUERY = re.compile(r"\?[^\s'\")]*")


def describe(exc: BaseException) -> str:
    """An exception as one line for a log or an errorReason, with every URL's query (and so
    the accessKey) removed: aiohttp puts the full URL into its messages."""
    if isinstance(exc, aiohttp.ClientResponseError):
        text = f"HTTP {exc.status} {exc.message}"
    else:
        text = _QUERY.sub("", str(exc)) or "no detail"
    return f"{type(exc).__name__}: {text}"


class SharedDownloads:
    """One download per firmware, however many jobs want it: the child devices of one
    batch share an image, and it stays on disk until the last of them is done with it."""

    def __init__(self, downloader: Downloader, folder: Path) -> None:
        self.downloader = downloader
        self.folder = folder
        self._shares: dict[tuple[str, str, str], _Share] = {}

    @contextlib.asynccontextmanager
    async def image(
        self, firmware: FirmwareFields, progress: Callable[[int, int], None]
    ) -> AsyncIterator[Path]:
        """The checked image of ``firmware`` (size and sign), downloaded once for all users;
        DownloadError if it cannot be had."""
        key = (firmware.firmwareId, firmware.version, firmware.sign.lower())
        share = self._shares.get(key)
        if share is None:
            digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]
            share = _Share(self.folder / f"{digest}.bin")
            share.task = asyncio.create_task(self._fetch(share, firmware))
            self._shares[key] = share
        share.users += 1
        share.listeners.append(progress)
        interrupted = False
        try:
            yield await asyncio.shield(share.task)
        except asyncio.CancelledError:
            interrupted = True  # a shutdown: keep the partial file for the next attempt
            raise
        finally:
            share.listeners.remove(progress)
            share.users -= 1
            if share.users == 0:
                del self._shares[key]
                if not share.task.done():
                    share.task.cancel()
                with contextlib.suppress(OSError):
                    share.dest.unlink(missing_ok=True)
                    if not interrupted:
                        partial_download(share.dest).unlink(missing_ok=True)

    async def _fetch(self, share: _Share, firmware: FirmwareFields) -> Path:
        def report(done: int, total: int) -> None:
            for listener in list(share.listeners):
                listener(done, total)

        path = await self.downloader.fetch(firmware.url, firmware.size, share.dest, report)
        # Hashing a large image would stall everything else on this loop.
        await asyncio.to_thread(check_sign, path, firmware.sign, firmware.signMethod)
        return path


@dataclass
class _Share:
    dest: Path
    task: asyncio.Task[Path] = field(init=False)
    listeners: list[Callable[[int, int], None]] = field(default_factory=list)
    users: int = 0
