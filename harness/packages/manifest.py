"""The manifest of a file package: what it holds, for which target, and each file's digest.

The platform's sign covers the archive as a whole; the manifest's sha256 covers each file,
so a gateway can check every byte it writes, not only the bytes it downloaded.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

MANIFEST = "manifest.json"
FILES = "files/"
KINDS = ("app", "camera", "driver")
FORMAT = 1

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096
#: A manifest larger than this is refused unread (10,000 long paths fit well within it).
MAX_MANIFEST_BYTES = 16 << 20
MAX_VERSION_CHARS = 64


class PackageError(Exception):
    """A package refused: the message is the record's errorReason, so it names what was
    wrong and where (the member, the field), e.g.
    "package refused: files/lua/../../etc/passwd: path escapes the target root"."""


def refused(where: str, reason: str) -> PackageError:
    return PackageError(f"package refused: {where}: {reason}")


def show(text: str, limit: int = 200) -> str:
    """``text`` fit for one line of an errorReason: escaped if unprintable, cut if long."""
    shown = text if text.isprintable() else ascii(text)[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file under the target root, or None when it can."""
    if not path:
        return "path is empty"
    if "\\" in path:
        return "path has a backslash"
    if path.startswith("/") or ".." in path.split("/"):
        return "path escapes the target root"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "path has a NUL or control character"
    try:
        raw = path.encode()
    except UnicodeEncodeError:
        return "path is not valid UTF-8"
    if len(raw) > MAX_PATH_BYTES:
        return f"path is longer than {MAX_PATH_BYTES} bytes"
    for segment in raw.split(b"/"):
        if segment in (b"", b"."):
            return "path has an empty or '.' segment"
        if len(segment) > MAX_SEGMENT_BYTES:
            return f"path has a segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def _mode(value: Any) -> Any:
    if isinstance(value, str):
        if not re.fullmatch(r"[0-7]{1,4}", value):
            raise ValueError(f'{show(value)!r} is not an octal mode such as "0644"')
        return int(value, 8)
    return value


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class FileEntry:
    """One file of a package, at ``path`` under the target root."""

    path: StrictStr
    sha256: StrictStr
    size: Annotated[StrictInt, Field(ge=0)]
    mode: StrictInt

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        problem = path_problem(value)
        if problem:
            raise ValueError(f"{show(value)}: {problem}")
        return value

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha256(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 lowercase hex digits")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_before(cls, value: Any) -> Any:
        return _mode(value)

    @field_validator("mode")
    @classmethod
    def _mode_bits(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        if value > 0o777:
            raise ValueError(
                f"0{value:o} has setuid, setgid or sticky bits; only 0..0777 is allowed"
            )
        return value


class Manifest(BaseModel):
    """``manifest.json``: format, target kind, version, the files and the commands around them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: StrictInt = FORMAT
    kind: StrictStr
    version: StrictStr
    files: list[FileEntry] = Field(min_length=1)
    pre: list[Annotated[StrictStr, Field(min_length=1)]] = []
    post: list[Annotated[StrictStr, Field(min_length=1)]] = []

    @field_validator("format")
    @classmethod
    def _format(cls, value: int) -> int:
        if value != FORMAT:
            raise ValueError(f"format {value} is not understood (only {FORMAT})")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"{show(value)!r} is not one of {', '.join(KINDS)}")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not 1 <= len(value) <= MAX_VERSION_CHARS:
            raise ValueError(f"must be 1..{MAX_VERSION_CHARS} characters")
        if not value.isprintable() or "/" in value:
            raise ValueError(f"{show(value)}: must be printable, without '/'")
        return value

    @field_validator("pre", "post")
    @classmethod
    def _commands(cls, value: list[str]) -> list[str]:
        for command in value:
            if "\0" in command or not _utf8(command):
                raise ValueError(f"{show(command)}: a command must be UTF-8 without NUL")
        return value

    @model_validator(mode="after")
    def _tree(self) -> Self:
        """Every path names one file, and no file is also the folder of another."""
        seen: set[str] = set()
        for i, entry in enumerate(self.files):
            if entry.path in seen:
                raise ValueError(f"files[{i}].path: {show(entry.path)}: listed twice")
            seen.add(entry.path)
        for i, entry in enumerate(self.files):
            parts = entry.path.split("/")
            for n in range(1, len(parts)):
                parent = "/".join(parts[:n])
                if parent in seen:
                    raise ValueError(
                        f"files[{i}].path: {show(entry.path)}: {show(parent)} is a listed file"
                    )
        return self

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> bytes:
        """The manifest as written into a package: stable key order, modes as octal strings."""
        data = {
            "format": self.format,
            "kind": self.kind,
            "version": self.version,
            "files": [
                {"path": f.path, "sha256": f.sha256, "size": f.size, "mode": f"{f.mode:04o}"}
                for f in self.files
            ],
            "pre": list(self.pre),
            "post": list(self.post),
        }
        return json.dumps(data, ensure_ascii=False, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str = MANIFEST) -> Manifest:
        """Parse and validate; :class:`PackageError` names ``where`` and the field at fault."""
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise refused(where, "not UTF-8") from None
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as exc:
            raise refused(where, f"key {show(exc.key)!r} appears twice") from None
        except RecursionError:
            raise refused(where, "nested too deeply") from None
        except ValueError as exc:
            raise refused(where, f"not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise refused(where, f"must be a JSON object, not {type(obj).__name__}")
        fmt = obj.get("format", FORMAT)
        if type(fmt) is int and fmt != FORMAT:
            # A later format may differ in any field; say that, not what the fields lack.
            raise refused(where, f"format: format {fmt} is not understood (only {FORMAT})")
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise _field_error(where, exc) from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two values for one key would let two readers see two manifests."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _field_error(where: str, exc: ValidationError) -> PackageError:
    return refused(where, field_reason(exc))


def field_reason(exc: ValidationError) -> str:
    """The first problem of ``exc`` as "field.path: reason"."""
    first = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    kind = first["type"]
    if kind == "missing":
        reason = "required field is missing"
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
        reason = "unknown field"
    elif kind == "value_error":
        reason = str(first["ctx"]["error"])
    else:
        reason = first["msg"]
    if kind == "value_error" and not loc and reason.startswith("files["):
        loc, _, reason = reason.partition(": ")
    return f"{loc}: {reason}" if loc else reason
