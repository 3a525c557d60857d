"""Package archives: build one from a folder, read its manifest, verify and unpack it.

Reading never trusts the archive: every member is checked before a byte is written, the
decompressed stream is bounded (a small download cannot unpack to a full disk), no header
is read into memory past a small limit (a small download cannot fill memory either), and
files are written one by one with ``os.open`` under a fresh folder, never with
``extractall``.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from .manifest import (
    FILES,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    FileEntry,
    Manifest,
    PackageError,
    field_reason,
    path_problem,
    refused,
    show,
)

MAX_BYTES = 1 << 30
MAX_FILES = 10_000
#: Decompressed bytes allowed per member beyond its data: headers, long-name records, padding.
_HEADER_ALLOWANCE = 16 << 10
_CHUNK = 1 << 20
#: The largest extended header (pax records, a GNU long name or long link) read. tarfile
#: reads one whole into memory, so a bigger one is refused from its size, before it is read.
MAX_EXTENDED_HEADER = 64 << 10
#: Extended headers allowed before one member: GNU tar writes two at most (long name and
#: long link), pax one (and a global one); tarfile follows a chain by recursion.
_MAX_CHAINED = 8
_EXTENDED = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_SPARSE = "sparse files are not allowed in a package"
#: What a damaged archive or compressed stream raises from the standard library.
_BROKEN = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)
_ARCHIVE = "archive"


def build_package(
    folder: Path,
    out: Path,
    *,
    kind: str,
    version: str,
    pre: Sequence[str] = (),
    post: Sequence[str] = (),
) -> Manifest:
    """Pack every regular file under ``folder`` into ``out`` (tar.gz) and return the manifest.

    The output depends only on the files' paths, bytes and permission bits (sorted members,
    mtime 0, owner 0/0 unnamed, gzip without name or time), so one folder always gives the
    same archive and so the same platform sign. Symlinks and special files are refused,
    empty folders are not packed; I/O errors propagate as OSError.
    """
    sources = _walk(folder, out)
    entries = [_entry(rel, path) for rel, path in sources]
    try:
        manifest = Manifest(
            kind=kind, version=version, files=entries, pre=list(pre), post=list(post)
        )
    except ValidationError as exc:
        raise _cannot_build(folder, field_reason(exc)) from None
    data = manifest.to_json()
    if len(data) > MAX_MANIFEST_BYTES:
        raise _cannot_build(folder, f"its manifest would be larger than {MAX_MANIFEST_BYTES} bytes")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as raw:
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
                tarfile.open(
                    fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8"
                ) as tar,
            ):
                tar.addfile(_tarinfo(MANIFEST, len(data), 0o644), io.BytesIO(data))
                for entry, (_, path) in zip(manifest.files, sources, strict=True):
                    _add_file(tar, folder, entry, path)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def read_manifest(
    package: Path, *, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES
) -> Manifest:
    """The package's validated manifest, after every check :func:`unpack` makes short of the
    file digests (it reads the members' headers, not their contents)."""
    with _open(package, max_bytes, max_files) as tar:
        return _survey(tar, max_bytes, max_files).manifest


def unpack(
    package: Path, dest: Path, *, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES
) -> Manifest:
    """Verify the whole package and write its files under ``dest``, which is created.

    Nothing is written until the archive's structure and manifest pass; a file whose digest
    is wrong, or any other failure, removes ``dest`` entirely and raises PackageError, so
    ``dest`` exists afterwards only if it holds exactly the manifest's files, fsynced.
    ``dest`` already existing is the caller's mistake: FileExistsError, and it is left alone.
    """
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(errno.EEXIST, "already exists", str(dest))
    with _open(package, max_bytes, max_files) as tar:
        survey = _survey(tar, max_bytes, max_files)
        dest.mkdir(parents=True)
        try:
            _write_files(tar, survey, dest)
        except BaseException as exc:
            shutil.rmtree(dest, ignore_errors=True)
            if isinstance(exc, OSError):
                where = getattr(exc, "filename", None) or dest
                raise PackageError(
                    f"package not unpacked: {where}: {exc.strerror or exc}"
                ) from None
            raise
    return survey.manifest


# -- reading ---------------------------------------------------------------------------------


@dataclass
class _Survey:
    """What the headers say: the manifest and the member of each listed file."""

    manifest: Manifest
    members: dict[str, tarfile.TarInfo]


class _TooBig(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class _Bounded:
    """A read-only stream that refuses to go past ``limit`` decompressed bytes."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream = stream
        self.limit = limit

    def read(self, size: int | None = -1) -> bytes:
        room = self.limit - self.stream.tell()
        if size is None or size < 0 or size > room:
            size = room + 1
        data = self.stream.read(size)
        if self.stream.tell() > self.limit:
            raise _TooBig(self.limit)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        if offset > self.limit:
            raise _TooBig(self.limit)
        return self.stream.seek(offset)

    def tell(self) -> int:
        return self.stream.tell()


class _Header(tarfile.TarInfo):
    """A member's header, read by tarfile except where tarfile would read without a bound:
    an extended header is refused past :data:`MAX_EXTENDED_HEADER` (from its size, before
    it is read), as is a chain of more than :data:`_MAX_CHAINED` of them or global pax
    records past the same limit in all; sparse files are refused (tarfile reads their maps
    whole, and a package never needs one)."""

    __slots__ = ()

    def _proc_member(self, tar: _Reader) -> tarfile.TarInfo:  # type: ignore[override]
        where = show(self.name)
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise refused(where, _SPARSE)
        if self.type in _EXTENDED:
            if self.size > MAX_EXTENDED_HEADER:
                raise refused(
                    where,
                    f"extended header of {self.size} bytes exceeds {MAX_EXTENDED_HEADER >> 10} KiB",
                )
            tar.chained += 1
            if tar.chained > _MAX_CHAINED:
                raise refused(where, f"more than {_MAX_CHAINED} extended headers in a row")
            held = sum(len(k) + len(v) for k, v in tar.pax_headers.items())
            if self.type == tarfile.XGLTYPE and held + self.size > MAX_EXTENDED_HEADER:
                raise refused(
                    where, f"global extended headers exceed {MAX_EXTENDED_HEADER >> 10} KiB"
                )
        return super()._proc_member(tar)  # type: ignore[misc]

    def _sparse(self, member: tarfile.TarInfo, pax: dict[str, str]) -> PackageError:
        return refused(show(pax.get("GNU.sparse.name", member.name)), _SPARSE)

    def _proc_gnusparse_00(self, next: tarfile.TarInfo, pax: dict[str, str], buf: bytes) -> None:
        raise self._sparse(next, pax)

    def _proc_gnusparse_01(self, next: tarfile.TarInfo, pax: dict[str, str]) -> None:
        raise self._sparse(next, pax)

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax: dict[str, str], tar: object) -> None:
        raise self._sparse(next, pax)


class _Reader(tarfile.TarFile):
    """A TarFile reading :class:`_Header` headers that keeps of each member only what the
    package reader uses: tarfile holds every member read, so an unused field (a pax
    record, a user name) of up to 64 KiB per member would add up."""

    tarinfo = _Header
    #: Extended headers read since the last member.
    chained = 0

    def next(self) -> tarfile.TarInfo | None:
        self.chained = 0
        member = super().next()
        if member is not None:
            member.pax_headers = {}
            member.uname = member.gname = member.linkname = ""
        return member


@contextmanager
def _open(package: Path, max_bytes: int, max_files: int) -> Iterator[tarfile.TarFile]:
    """The package as a tar archive, whatever its compression."""
    limit = max_bytes + MAX_MANIFEST_BYTES + (2 * max_files + 2) * _HEADER_ALLOWANCE
    with open(package, "rb") as raw, ExitStack() as stack:
        with _reading():
            stream = stack.enter_context(_decompressed(raw))
            tar = stack.enter_context(
                _Reader.open(fileobj=_Bounded(stream, limit), mode="r:", encoding="utf-8")
            )
        yield tar


@contextmanager
def _reading(where: str = _ARCHIVE) -> Iterator[None]:
    """Turn what a damaged archive raises into PackageError naming ``where``."""
    try:
        yield
    except _TooBig as exc:
        raise refused(_ARCHIVE, f"unpacks to more than {exc.limit} bytes") from None
    except _BROKEN as exc:
        what = "not a readable tar archive" if where == _ARCHIVE else "cannot be read"
        raise refused(where, f"{what} ({_why(exc)})") from None


def _decompressed(raw: BinaryIO) -> BinaryIO:
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def _why(exc: BaseException) -> str:
    return show(str(exc) or type(exc).__name__, 120)


def _member_name(info: tarfile.TarInfo) -> str:
    """The member's name relative to the archive root, refused if it could leave it."""
    name = info.name
    while name.startswith("./"):
        name = name[2:]
    where = show(info.name)
    if "\\" in name:
        raise refused(where, "path has a backslash")
    if name.startswith("/") or ".." in name.split("/"):
        raise refused(where, "path escapes the target root")
    return name.rstrip("/") if info.isdir() else name


def _kind_refused(info: tarfile.TarInfo) -> str | None:
    if info.issym():
        return "symlinks are not allowed in a package"
    if info.islnk():
        return "hardlinks are not allowed in a package"
    if info.ischr() or info.isblk():
        return "devices are not allowed in a package"
    if info.isfifo():
        return "fifos are not allowed in a package"
    if not (info.isreg() or info.isdir()):
        return f"member type {info.type!r} is not allowed in a package"
    return None


def _survey(tar: tarfile.TarFile, max_bytes: int, max_files: int) -> _Survey:
    """Check every member's header and the manifest against them; read no file data."""
    manifest_member: tarfile.TarInfo | None = None
    members: dict[str, tarfile.TarInfo] = {}
    total = dirs = 0
    while (info := _next(tar)) is not None:
        name = _member_name(info)
        where = show(info.name)
        problem = _kind_refused(info)
        if problem:
            raise refused(where, problem)
        if info.isdir():
            if name not in ("", ".", FILES.rstrip("/")):
                _check_under_files(name, where)
            dirs += 1
            if dirs > max_files:
                raise refused(where, f"more than {max_files} directories in the archive")
        elif name == MANIFEST:
            if manifest_member is not None:
                raise refused(MANIFEST, "appears twice in the archive")
            if info.size > MAX_MANIFEST_BYTES:
                raise refused(MANIFEST, f"larger than {MAX_MANIFEST_BYTES} bytes")
            manifest_member = info
        else:
            path = _check_under_files(name, where)
            if path in members:
                raise refused(where, "appears twice in the archive")
            members[path] = info
            total += info.size
            if len(members) > max_files:
                raise refused(FILES, f"more than {max_files} files (the limit)")
            if total > max_bytes:
                raise refused(FILES, f"more than {max_bytes} bytes in all (the limit)")
    if manifest_member is None:
        raise refused(MANIFEST, "not in the archive")
    manifest = Manifest.from_json(_read_member(tar, manifest_member, MANIFEST))
    _match(manifest, members)
    return _Survey(manifest, members)


def _next(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    with _reading():
        return tar.next()


def _check_under_files(name: str, where: str) -> str:
    if not name.startswith(FILES):
        raise refused(where, f"not part of a package (only {MANIFEST} and {FILES} are)")
    path = name[len(FILES) :]
    problem = path_problem(path)
    if problem:
        raise refused(where, problem)
    return path


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, where: str) -> bytes:
    with _reading(where):
        stream = tar.extractfile(info)
        assert stream is not None
        data = stream.read()
    if len(data) != info.size:
        raise refused(where, "truncated")
    return data


def _match(manifest: Manifest, members: dict[str, tarfile.TarInfo]) -> None:
    """The archive holds exactly the listed files, each of the listed size."""
    for entry in manifest.files:
        info = members.get(entry.path)
        where = show(FILES + entry.path)
        if info is None:
            raise refused(where, "listed in the manifest but not in the archive")
        if info.size != entry.size:
            raise refused(
                where, f"{info.size} bytes in the archive, the manifest says {entry.size}"
            )
    listed = {entry.path for entry in manifest.files}
    for path in members:
        if path not in listed:
            raise refused(show(FILES + path), "in the archive but not listed in the manifest")


# -- writing ---------------------------------------------------------------------------------


def _write_files(tar: tarfile.TarFile, survey: _Survey, dest: Path) -> None:
    """Stream each file into place in archive order (forward reads only), then fsync the tree."""
    folders = [dest]
    made = {dest}
    entries = sorted(survey.manifest.files, key=lambda e: survey.members[e.path].offset_data)
    for entry in entries:
        target = dest.joinpath(*entry.path.split("/"))
        for folder in reversed(target.parents):
            if folder in made or not folder.is_relative_to(dest):
                continue
            folder.mkdir(mode=0o755)
            made.add(folder)
            folders.append(folder)
        _write_file(tar, survey.members[entry.path], entry, target)
    for folder in [*folders, dest.parent]:
        _fsync_dir(folder)


def _write_file(
    tar: tarfile.TarFile, info: tarfile.TarInfo, entry: FileEntry, target: Path
) -> None:
    where = show(FILES + entry.path)
    with _reading(where):
        source = tar.extractfile(info)
    assert source is not None
    digest = hashlib.sha256()
    written = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(target, flags, 0o600), "wb") as out:
        while True:
            with _reading(where):
                chunk = source.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
        if written != entry.size:
            raise refused(where, f"truncated: {written} of {entry.size} bytes")
        if digest.hexdigest() != entry.sha256:
            raise refused(
                where, f"sha256 mismatch: expected {entry.sha256}, got {digest.hexdigest()}"
            )
        out.flush()
        os.fchmod(out.fileno(), entry.mode)
        os.fsync(out.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- building --------------------------------------------------------------------------------


def _cannot_build(folder: Path, reason: str) -> PackageError:
    return PackageError(f"cannot build a package from {folder}: {reason}")


def _walk(folder: Path, out: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``folder`` as (posix path, file), sorted by path."""
    if not folder.is_dir():
        raise _cannot_build(folder, "not a directory")
    if out.resolve().is_relative_to(folder.resolve()):
        raise _cannot_build(folder, f"the output {out} would be inside it")
    found: list[tuple[str, Path]] = []

    def fail(exc: OSError) -> None:
        raise exc

    for top, dirnames, filenames in os.walk(folder, onerror=fail):
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(top, name)
            rel = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise _cannot_build(
                    folder,
                    f"{show(rel)}: symlinks are not allowed in a package "
                    f"(it points to {show(os.readlink(path))})",
                )
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise _cannot_build(folder, f"{show(rel)}: not a regular file")
            problem = path_problem(rel)
            if problem:
                raise _cannot_build(folder, f"{show(rel)}: {problem}")
            found.append((rel, path))
    if not found:
        raise _cannot_build(folder, "no files in it")
    return sorted(found)


def _entry(rel: str, path: Path) -> FileEntry:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o777
    return FileEntry(path=rel, sha256=digest.hexdigest(), size=size, mode=mode)


def _tarinfo(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Hashing:
    """Reads through to ``stream``, hashing what passes, so the packed bytes are the hashed ones."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        return data


def _add_file(tar: tarfile.TarFile, folder: Path, entry: FileEntry, path: Path) -> None:
    with open(path, "rb") as f:
        reader = _Hashing(f)
        try:
            tar.addfile(_tarinfo(FILES + entry.path, entry.size, entry.mode), reader)
        except OSError:
            raise _cannot_build(folder, f"{show(entry.path)}: changed while being packed") from None
    if reader.digest.hexdigest() != entry.sha256:
        raise _cannot_build(folder, f"{show(entry.path)}: changed while being packed")
