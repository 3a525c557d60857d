"""Which node got which image block in which delivery pass, and a picture of it.

A fleet trace holds one "got" bitmap per broadcast. They are kept packed and unpacked one
block number at a time (in chunks, for a block repeated very often), so a 10,000-node fleet
and tens of thousands of frames need neither a Python loop per node or frame nor a frames x
nodes matrix in memory at once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .events import Event
from .png import encode_png

NEVER = -1
#: Widest picture in block columns (MAX_WIDTH at the smallest cell); more blocks are binned.
MAX_COLUMNS = 800
#: Block numbers are u16 on the radio; anything larger is a broken trace, not a huge image.
MAX_BLOCK = 0xFFFF
#: Frame x node bits unpacked at once, one byte each.
_CHUNK_CELLS = 4_000_000

MAX_WIDTH, MAX_HEIGHT = 1600, 4000
MIN_CELL, MAX_CELL = 2, 8
STRIPE_GAP, STRIPE_WIDTH = 2, 6

_GREEN = (44, 160, 44)
_RED = (214, 39, 40)
_GREY = (150, 150, 150)
_WHITE = (255, 255, 255)
_NEVER_COLOUR = (70, 0, 0)
_AMBER_LIGHT = np.array([255, 204, 0], dtype=float)
_AMBER_DARK = np.array([168, 92, 0], dtype=float)
#: Repair pass at which the amber reaches its darkest shade.
_DARKEST_PASS = 6


@dataclass(frozen=True, eq=False)
class Reception:
    """Per node and block, the delivery pass that first brought the block to the node."""

    nodes: tuple[str, ...]
    block_count: int
    #: ``(len(nodes), block_count)`` int16: 0 = first pass, 1.. = repair pass, -1 = never.
    passes: np.ndarray
    #: Per node, its state in the trace's outcome, or None when the trace has none for it.
    outcomes: tuple[str | None, ...]


def _fleet(events: Sequence[Event]) -> tuple[str, ...] | None:
    for event in events:
        if event.get("ev") == "fleet" and isinstance(event.get("nodes"), list):
            return tuple(str(n) for n in event["nodes"])
    return None


def _outcomes(events: Sequence[Event], nodes: tuple[str, ...]) -> tuple[str | None, ...]:
    records: Mapping[str, Any] = {}
    for event in events:
        if event.get("ev") == "outcome" and isinstance(event.get("records"), Mapping):
            records = event["records"]
    states = []
    for node in nodes:
        record = records.get(node)
        state = record.get("state") if isinstance(record, Mapping) else None
        states.append(None if state is None else str(state))
    return tuple(states)


def _block_number(event: Event) -> int | None:
    block = event.get("block")
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= MAX_BLOCK:
        return None
    return block


def _mask(encoded: Any, size: int) -> bytes:
    """A broadcast's packed "got" bits, cut or zero-padded to ``size`` bytes."""
    try:
        raw = base64.b64decode(encoded) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    return raw[:size].ljust(size, b"\0")


def _block_frames(
    events: Sequence[Event], nodes: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block number, delivery pass and packed receiver bits of every BLOCK frame, in order."""
    size = (len(nodes) + 7) // 8
    row = {node: i for i, node in enumerate(nodes)}
    has_sessions = any(e.get("ev") == "session" for e in events)
    session_pass = 0
    broadcasts: dict[int, int] = {}
    blocks: list[int] = []
    passes: list[int] = []
    masks: list[bytes] = []
    for event in events:
        kind = event.get("ev")
        if kind == "session":
            number = event.get("pass")
            if isinstance(number, int) and not isinstance(number, bool):
                session_pass = number
            continue
        if kind != "frame" or event.get("kind") != "BLOCK" or event.get("dir", "down") != "down":
            continue
        block = _block_number(event)
        if block is None:
            continue
        # Without session events, a block's n-th broadcast is taken for repair pass n.
        number = session_pass if has_sessions else broadcasts.get(block, 0)
        target = event.get("to")
        if target is None:
            broadcasts[block] = broadcasts.get(block, 0) + 1
            mask = _mask(event.get("got"), size)
        else:
            packed = bytearray(size)
            if event.get("heard") and isinstance(target, str) and target in row:
                packed[row[target] >> 3] |= 1 << (row[target] & 7)
            mask = bytes(packed)
        blocks.append(block)
        passes.append(number)
        masks.append(mask)
    packed_rows = np.frombuffer(b"".join(masks), dtype=np.uint8).reshape(len(masks), size)
    clipped = np.clip(np.array(passes, dtype=np.int64), 0, np.iinfo(np.int16).max)
    return np.array(blocks, dtype=np.int64), clipped.astype(np.int16), packed_rows


def _first_passes(
    blocks: np.ndarray, passes: np.ndarray, packed: np.ndarray, node_count: int
) -> np.ndarray:
    """Per (node, block) the pass of the first frame of that block whose bits include the node."""
    result = np.full((int(blocks.max()) + 1, node_count), NEVER, dtype=np.int16)
    order = np.argsort(blocks, kind="stable")  # by block, then trace order
    bounds = np.flatnonzero(np.diff(blocks[order])) + 1
    chunk = max(1, _CHUNK_CELLS // node_count)
    columns = np.arange(node_count)
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, order.size], strict=True):
        row = result[blocks[order[start]]]
        for part in range(start, stop, chunk):
            frames = order[part : min(part + chunk, stop)]
            got = np.unpackbits(packed[frames], axis=1, count=node_count, bitorder="little")
            first = got.argmax(axis=0)
            fresh = (got[first, columns] == 1) & (row == NEVER)
            row[fresh] = passes[frames][first[fresh]]
    return np.ascontiguousarray(result.T)


def block_reception(events: Sequence[Event]) -> Reception | None:
    """The reception matrix of the trace's fleet, or None without a fleet or BLOCK frames."""
    nodes = _fleet(events)
    if not nodes:
        return None
    blocks, passes, packed = _block_frames(events, nodes)
    if blocks.size == 0:
        return None
    return Reception(
        nodes=nodes,
        block_count=int(blocks.max()) + 1,
        passes=_first_passes(blocks, passes, packed, len(nodes)),
        outcomes=_outcomes(events, nodes),
    )


def cell_size(node_count: int, block_count: int) -> tuple[int, int]:
    """Pixels per cell (width, height): as large as fits the target size, within bounds.

    Width never drops below two pixels; rows drop to one pixel for fleets too tall otherwise.
    """
    width = min(MAX_CELL, max(MIN_CELL, MAX_WIDTH // max(1, block_count)))
    height = min(MAX_CELL, max(1, MAX_HEIGHT // max(1, node_count)))
    return width, height


def _palette(max_pass: int) -> np.ndarray:
    """Colour per ``pass + 1``: never, first pass, then ever darker amber per repair pass."""
    colours = [np.array(_NEVER_COLOUR, float), np.array(_GREEN, float)]
    for repair in range(1, max(0, max_pass) + 1):
        t = min(1.0, (repair - 1) / (_DARKEST_PASS - 1))
        colours.append(_AMBER_LIGHT * (1 - t) + _AMBER_DARK * t)
    return np.rint(np.array(colours)).astype(np.uint8)


def _outcome_colour(state: str | None) -> tuple[int, int, int]:
    if state == "success":
        return _GREEN
    if state == "failed":
        return _RED
    return _GREY


def _binned(passes: np.ndarray) -> np.ndarray:
    """At most :data:`MAX_COLUMNS` columns: an image of thousands of blocks keeps one
    column per run of neighbouring blocks, showing the run's worst cell (never received
    over the latest repair pass), so a block that never came is never hidden."""
    blocks = passes.shape[1]
    if blocks <= MAX_COLUMNS:
        return passes
    per = -(-blocks // MAX_COLUMNS)
    padded = np.full((passes.shape[0], per * -(-blocks // per)), 0, dtype=passes.dtype)
    padded[:, :blocks] = passes
    runs = padded.reshape(passes.shape[0], -1, per)
    worst = runs.max(axis=2)
    return np.where((runs == NEVER).any(axis=2), NEVER, worst)


def reception_png(events: Sequence[Event]) -> bytes | None:
    """PNG of the reception matrix: a row per node, a column per block (or per run of
    blocks, for an image of more than :data:`MAX_COLUMNS`), the outcome at the right."""
    reception = block_reception(events)
    if reception is None:
        return None
    passes = _binned(reception.passes)
    cell_w, cell_h = cell_size(len(reception.nodes), passes.shape[1])
    cells = _palette(int(reception.passes.max()))[passes.astype(np.intp) + 1]
    stripe = np.empty((len(reception.nodes), STRIPE_GAP + STRIPE_WIDTH, 3), dtype=np.uint8)
    stripe[:, :STRIPE_GAP] = _WHITE
    stripe[:, STRIPE_GAP:] = np.array([_outcome_colour(s) for s in reception.outcomes])[:, None]
    picture = np.concatenate([np.repeat(cells, cell_w, axis=1), stripe], axis=1)
    return encode_png(np.repeat(picture, cell_h, axis=0))
