"""The blocks a node still misses, and the two forms a BITMAP_REPORT carries them in.

After each broadcast round every node of a fleet (10,000 in the benchmarks) reports what
it misses and the gateway merges the reports, so everything here is vectorised: the set
is held as numpy arrays of run starts and lengths, converts to and from bool arrays (what
a simulated fleet draws its losses into) without a Python loop per block, and builds the
Python ``ranges`` tuple only when someone asks for it.

Report payload: ``format u8, block_count u16`` then, for format 1, a bitmap of
``ceil(block_count / 8)`` bytes (bit i = byte i >> 3, bit i & 7, LSB first, 1 = missing),
or for format 2, ``n u16`` and ``n`` x ``(start u16, length u16)``. Format 0 says nothing
is missing. The encoder picks the shorter form, ranges on a tie.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_BLOCK_COUNT = 0xFFFF
#: format u8 + block_count u16, in front of every report.
REPORT_HEADER_SIZE = 3

_HEADER = struct.Struct(">BH")
_RANGES_HEADER = struct.Struct(">BHH")
#: Below this many runs a slice per run beats building index arrays.
_FEW_RUNS = 32

Ranges = tuple[tuple[int, int], ...]


class ReportFormat(IntEnum):
    NONE = 0
    BITMAP = 1
    RANGES = 2


def _check_count(count: int) -> int:
    count = operator.index(count)
    if not 0 <= count <= MAX_BLOCK_COUNT:
        raise ValueError(f"block_count {count} is outside 0..{MAX_BLOCK_COUNT}")
    return count


def _check_runs(count: int, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Raise ValueError naming the first run that is empty, out of range or out of order."""
    if starts.size == 0:
        return
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        raise ValueError(f"range {bad[0]} has length {lengths[bad[0]]}, must be >= 1")
    ends = starts + lengths
    bad = np.flatnonzero((starts < 0) | (ends > count))
    if bad.size:
        k = bad[0]
        raise ValueError(
            f"range {k} (start {starts[k]}, length {lengths[k]}) is outside 0..{count}"
        )
    bad = np.flatnonzero(starts[1:] <= ends[:-1])
    if bad.size:
        k = bad[0] + 1
        raise ValueError(
            f"range {k} starts at {starts[k]}, not after range {k - 1} ends at {ends[k - 1]}: "
            "ranges must be sorted, non-overlapping and non-adjacent"
        )


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


_NO_RUNS = _frozen(np.zeros(0, dtype=np.int64))


class MissingBlocks:
    """The missing block indices of a ``count``-block image, as sorted (start, length) runs.

    Runs are non-empty, non-overlapping and non-adjacent, so each set has exactly one
    representation and equality is structural. Immutable and hashable; iteration, ``len``
    and ``in`` work as for a set of ints, and an empty set is falsy.
    """

    __slots__ = ("_count", "_lengths", "_missing", "_ranges", "_starts")

    _count: int
    _starts: np.ndarray
    _lengths: np.ndarray
    _missing: int
    _ranges: Ranges | None

    def __init__(self, count: int, ranges: Iterable[tuple[int, int]] = ()) -> None:
        count = _check_count(count)
        runs = [(operator.index(s), operator.index(n)) for s, n in ranges]
        arr = np.array(runs, dtype=np.int64).reshape(-1, 2)
        starts, lengths = arr[:, 0].copy(), arr[:, 1].copy()
        _check_runs(count, starts, lengths)
        self._set(count, starts, lengths)

    def _set(self, count: int, starts: np.ndarray, lengths: np.ndarray) -> None:
        put = object.__setattr__
        put(self, "_count", count)
        put(self, "_starts", _frozen(starts) if starts.size else _NO_RUNS)
        put(self, "_lengths", _frozen(lengths) if lengths.size else _NO_RUNS)
        put(self, "_missing", int(lengths.sum()))
        put(self, "_ranges", None)

    @classmethod
    def _from_runs(cls, count: int, starts: np.ndarray, lengths: np.ndarray) -> MissingBlocks:
        """Build from int64 runs already known to be valid (no checks on hot paths)."""
        self = object.__new__(cls)
        self._set(count, starts, lengths)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("MissingBlocks is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("MissingBlocks is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (MissingBlocks, (self._count, self.ranges))

    # -- constructors -------------------------------------------------------------

    @classmethod
    def none(cls, count: int) -> MissingBlocks:
        """Nothing missing: the node holds the whole image."""
        return cls._from_runs(_check_count(count), _NO_RUNS, _NO_RUNS)

    @classmethod
    def all(cls, count: int) -> MissingBlocks:
        """Everything missing: the node has not received a block yet."""
        count = _check_count(count)
        if not count:
            return cls.none(0)
        return cls._from_runs(count, np.zeros(1, np.int64), np.full(1, count, np.int64))

    @classmethod
    def from_indices(cls, count: int, indices: Iterable[int]) -> MissingBlocks:
        count = _check_count(count)
        values = sorted({operator.index(i) for i in indices})
        if values and (values[0] < 0 or values[-1] >= count):
            bad = values[0] if values[0] < 0 else values[-1]
            raise ValueError(f"block index {bad} is outside 0..{count - 1}")
        mask = np.zeros(count, dtype=bool)
        mask[values] = True
        return cls.from_bool_array(mask)

    @classmethod
    def from_bool_array(cls, array: npt.ArrayLike) -> MissingBlocks:
        """From a 1-D array with one entry per block, True = missing."""
        mask = np.asarray(array)
        if mask.ndim != 1:
            raise ValueError(f"expected a 1-D array, got shape {mask.shape}")
        count = _check_count(mask.size)
        padded = np.zeros(count + 2, dtype=bool)
        padded[1:-1] = mask
        # Runs begin where False turns True and end where True turns False.
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        starts = edges[0::2]
        return cls._from_runs(count, starts, edges[1::2] - starts)

    @classmethod
    def from_bitmap(cls, count: int, bitmap: bytes) -> MissingBlocks:
        """From ``ceil(count / 8)`` bytes, bit i = byte i >> 3, bit i & 7, 1 = missing."""
        count = _check_count(count)
        size = (count + 7) // 8
        if len(bitmap) != size:
            raise ValueError(f"bitmap of {count} blocks is {size} bytes, got {len(bitmap)}")
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
        if bits[count:].any():
            raise ValueError(f"bitmap has bits set beyond block_count {count}")
        return cls.from_bool_array(bits[:count].view(bool))

    # -- queries ----------------------------------------------------------------

    @property
    def count(self) -> int:
        """Blocks in the image."""
        return self._count

    @property
    def ranges(self) -> Ranges:
        """The runs as ``((start, length), ...)``, ascending."""
        if self._ranges is None:
            runs = tuple(zip(self._starts.tolist(), self._lengths.tolist(), strict=True))
            object.__setattr__(self, "_ranges", runs)
            return runs
        return self._ranges

    @property
    def complete(self) -> bool:
        """True when nothing is missing."""
        return not self._missing

    def __len__(self) -> int:
        return self._missing

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int | np.integer) or not 0 <= index < self._count:
            return False
        k = int(np.searchsorted(self._starts, index, side="right")) - 1  # last run <= index
        return k >= 0 and index < self._starts[k] + self._lengths[k]

    def __iter__(self) -> Iterator[int]:
        for start, length in zip(self._starts.tolist(), self._lengths.tolist(), strict=True):
            yield from range(start, start + length)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MissingBlocks):
            return NotImplemented
        return (
            self._count == other._count
            and np.array_equal(self._starts, other._starts)
            and np.array_equal(self._lengths, other._lengths)
        )

    def __hash__(self) -> int:
        return hash((self._count, self._starts.tobytes(), self._lengths.tobytes()))

    def __repr__(self) -> str:
        return f"MissingBlocks(count={self._count}, ranges={self.ranges!r})"

    def to_bool_array(self) -> np.ndarray:
        """A fresh bool array of ``count`` entries, True = missing."""
        starts, lengths = self._starts, self._lengths
        if starts.size <= _FEW_RUNS:
            out = np.zeros(self._count, dtype=bool)
            for start, end in zip(starts.tolist(), (starts + lengths).tolist(), strict=True):
                out[start:end] = True
            return out
        # +1 at each start, -1 at each end; runs never touch, so no slot gets both.
        delta = np.zeros(self._count + 1, dtype=np.int8)
        delta[starts] = 1
        delta[starts + lengths] = -1
        return np.cumsum(delta[:-1], dtype=np.int8).view(bool)

    def to_bitmap(self) -> bytes:
        return np.packbits(self.to_bool_array(), bitorder="little").tobytes()

    # -- set algebra ----------------------------------------------------------

    def _other(self, other: MissingBlocks) -> MissingBlocks:
        if not isinstance(other, MissingBlocks):
            raise TypeError(f"expected MissingBlocks, got {type(other).__name__}")
        if other._count != self._count:
            raise ValueError(f"block counts differ: {self._count} and {other._count}")
        return other

    def union(self, other: MissingBlocks) -> MissingBlocks:
        """Blocks missing at either node: what the next broadcast round must send."""
        if not self._other(other)._missing:
            return self
        if not self._missing:
            return other
        return MissingBlocks.from_bool_array(self.to_bool_array() | other.to_bool_array())

    def intersection(self, other: MissingBlocks) -> MissingBlocks:
        """Blocks missing at both nodes."""
        if not self._other(other)._missing:
            return other
        if not self._missing:
            return self
        return MissingBlocks.from_bool_array(self.to_bool_array() & other.to_bool_array())

    __or__ = union
    __and__ = intersection

    # -- wire forms -------------------------------------------------------------

    @property
    def bitmap_size(self) -> int:
        """Bytes of the report payload in bitmap form (header included)."""
        return REPORT_HEADER_SIZE + (self._count + 7) // 8

    @property
    def ranges_size(self) -> int:
        """Bytes of the report payload in ranges form (header included)."""
        return REPORT_HEADER_SIZE + 2 + 4 * self._starts.size

    @property
    def format(self) -> ReportFormat:
        """The form :meth:`encode` uses: none, else the shorter one, ranges on a tie."""
        if not self._missing:
            return ReportFormat.NONE
        if self.ranges_size <= self.bitmap_size:
            return ReportFormat.RANGES
        return ReportFormat.BITMAP

    @property
    def encoded_size(self) -> int:
        """Bytes of :meth:`encode`'s output."""
        if not self._missing:
            return REPORT_HEADER_SIZE
        return min(self.ranges_size, self.bitmap_size)

    def encode(self) -> bytes:
        """The BITMAP_REPORT payload, in the form :attr:`format` names."""
        fmt = self.format
        if fmt is ReportFormat.NONE:
            return _HEADER.pack(fmt, self._count)
        if fmt is ReportFormat.BITMAP:
            return _HEADER.pack(fmt, self._count) + self.to_bitmap()
        runs = np.empty(2 * self._starts.size, dtype=">u2")
        runs[0::2] = self._starts
        runs[1::2] = self._lengths
        return _RANGES_HEADER.pack(fmt, self._count, self._starts.size) + runs.tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> MissingBlocks:
        """Parse a BITMAP_REPORT payload in any of the three formats.

        Either form is accepted whichever is shorter (that rule binds encoders only);
        anything malformed raises ValueError saying what.
        """
        if len(payload) < REPORT_HEADER_SIZE:
            raise ValueError("truncated: a report starts with format u8 and block_count u16")
        fmt, count = _HEADER.unpack_from(payload)
        body = payload[REPORT_HEADER_SIZE:]
        if fmt == ReportFormat.NONE:
            if body:
                raise ValueError(f"{len(body)} trailing bytes after a nothing-missing report")
            return cls.none(count)
        if fmt == ReportFormat.BITMAP:
            size = (count + 7) // 8
            if len(body) != size:
                what = "truncated bitmap" if len(body) < size else "trailing bytes after bitmap"
                raise ValueError(f"{what}: {count} blocks need {size} bytes, got {len(body)}")
            return cls.from_bitmap(count, body)
        if fmt == ReportFormat.RANGES:
            if len(body) < 2:
                raise ValueError("truncated: ranges report without its range count")
            (n,) = struct.unpack_from(">H", body)
            if len(body) != 2 + 4 * n:
                short = len(body) < 2 + 4 * n
                what = "truncated ranges" if short else "trailing bytes after ranges"
                raise ValueError(f"{what}: {n} ranges need {4 * n} bytes, got {len(body) - 2}")
            runs = np.frombuffer(body, dtype=">u2", offset=2).astype(np.int64)
            starts, lengths = runs[0::2].copy(), runs[1::2].copy()
            _check_runs(count, starts, lengths)
            return cls._from_runs(count, starts, lengths)
        raise ValueError(f"unknown report format {fmt}")
