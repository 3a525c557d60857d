"""Reading binary bodies field by field, for every wire format the harness defines (node
frames, host packets, ULC frames): big-endian numbers, length-prefixed UTF-8, and an
error that names the frame or packet and the field whenever the bytes fall short."""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar

_E = TypeVar("_E", bound=IntEnum)


class FieldReader:
    """A cursor over ``data``; every problem is ``error("<label>: <what>")``.

    Subclasses set ``error`` and may reword the messages through the templates below
    (each format documents its own wording)."""

    error: type[Exception] = ValueError
    TRUNCATED = "truncated {field}: needs {size} bytes, {left} left"
    TRAILING = "{count} trailing bytes"
    NOT_UTF8 = "{field} is not UTF-8: {reason} at byte {start}"
    LENGTH_OF = "{field} length"

    def __init__(self, label: str, data: bytes) -> None:
        self.label = label
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> Exception:
        return self.error(f"{self.label}: {what}")

    def take(self, size: int, field: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            left = len(self.data) - self.pos
            raise self.fail(self.TRUNCATED.format(field=field, size=size, left=left))
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def int8(self, field: str) -> int:
        return int.from_bytes(self.take(1, field), "big", signed=True)

    def enum(self, field: str, enum: type[_E]) -> _E:
        value = self.uint(1, field)
        try:
            return enum(value)
        except ValueError:
            raise self.fail(f"bad {field} {value}: not a valid {enum.__name__}") from None

    def flag(self, field: str) -> bool:
        """A flags byte whose only defined bit is bit 0; other bits must be clear."""
        value = self.uint(1, field)
        if value & 0xFE:
            raise self.fail(f"{field} 0x{value:02X} has reserved bits set")
        return bool(value)

    def text(self, length_size: int, field: str) -> str:
        """UTF-8 text after its length in ``length_size`` bytes."""
        raw = self.take(self.uint(length_size, self.LENGTH_OF.format(field=field)), field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            what = self.NOT_UTF8.format(field=field, reason=exc.reason, start=exc.start)
            raise self.fail(what) from None

    def str8(self, field: str) -> str:
        return self.text(1, field)

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(self.TRAILING.format(count=len(self.data) - self.pos))
