"""Text evidence from a scenario trace: the MQTT conversation and an excerpt of radio frames.

Both are meant to be read next to a failed step, so they keep trace order, put the counts up
front, and cut what would drown the interesting lines (long payloads, the middle of a long
frame log).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .events import Event, number

PAYLOAD_LIMIT = 300
_ARROWS = {"down": "↓", "up": "↑"}


def _stamp(event: Event) -> str:
    wall = number(event.get("wall"))
    return f"+{'?':>7} s" if wall is None else f"+{wall:7.3f} s"


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _payload_text(payload: Any) -> str:
    if isinstance(payload, str):
        # A payload that was not JSON: quoted, so it cannot pass for a JSON object.
        text = json.dumps(payload, ensure_ascii=False)
    else:
        text = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )
    text = _one_line(text)
    return text if len(text) <= PAYLOAD_LIMIT else text[:PAYLOAD_LIMIT] + "…"


def mqtt_transcript(events: Sequence[Event]) -> str:
    """Every MQTT message in trace order, with faults inline where they fell."""
    lines: list[str] = []
    directions: Counter[str] = Counter()
    faults = 0
    for event in events:
        kind = event.get("ev")
        if kind == "mqtt":
            direction = str(event.get("dir"))
            directions[direction] += 1
            arrow = _ARROWS.get(direction, "?")
            topic = _one_line(str(event.get("topic", "")))
            lines.append(
                f"{_stamp(event)}  {arrow}  {topic}  {_payload_text(event.get('payload'))}"
            )
        elif kind == "fault":
            faults += 1
            what = _one_line(f"{event.get('on', '?')}: {event.get('what', '')}")
            vt = number(event.get("vt"))
            if vt is not None:
                what += f"  (vt {vt:.3f} s)"
            lines.append(f"{_stamp(event)}  !  {what}")
    total = sum(directions.values())
    head = (
        f"{total} MQTT message{'s' if total != 1 else ''} "
        f"({directions['down']} ↓ platform to device, {directions['up']} ↑ device to platform)"
    )
    if faults:
        head += f", {faults} fault{'s' if faults != 1 else ''} (!)"
    if not lines:
        return "no MQTT messages in this trace\n"
    return "\n".join([head, *lines]) + "\n"


def _frame_row(event: Event) -> tuple[str, ...]:
    vt = number(event.get("vt"))
    direction = str(event.get("dir", "?"))
    if direction == "up":
        peer = event.get("from")
        fate = "lost" if event.get("lost") else "ok"
    else:
        peer = event.get("to") or "*"
        heard = event.get("heard")
        fate = "-" if heard is None else f"heard {heard}"
    block = event.get("block")
    return (
        "-" if vt is None else f"{vt:.3f}",
        direction,
        _one_line(str(peer)),
        _one_line(str(event.get("kind", "?"))),
        str(event.get("size", "-")),
        "-" if block is None else str(block),
        fate,
    )


def _table(rows: list[tuple[str, ...] | str]) -> list[str]:
    """Aligned columns; a plain string row is a separator printed as is."""
    header = ("vt (s)", "dir", "peer", "kind", "size", "block", "heard/lost")
    cells = [header, *(r for r in rows if not isinstance(r, str))]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    right = {0, 4, 5}

    def render(row: tuple[str, ...]) -> str:
        parts = (
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(parts).rstrip()

    return [render(header)] + [r if isinstance(r, str) else render(r) for r in rows]


def frame_excerpt(events: Sequence[Event], head: int = 40, tail: int = 40) -> str:
    """Counts of the node frames, then the first ``head`` and last ``tail`` of them."""
    frames = [e for e in events if e.get("ev") == "frame"]
    if not frames:
        return "no node frames in this trace\n"
    head, tail = max(0, head), max(0, tail)
    counts: Counter[tuple[str, str]] = Counter()
    sizes: Counter[tuple[str, str]] = Counter()
    lost: Counter[tuple[str, str]] = Counter()
    for frame in frames:
        key = (str(frame.get("dir", "?")), str(frame.get("kind", "?")))
        counts[key] += 1
        sizes[key] += int(number(frame.get("size")) or 0)
        lost[key] += bool(frame.get("lost"))
    vts = [v for v in (number(f.get("vt")) for f in frames) if v is not None]
    span = f"vt {min(vts):.3f} .. {max(vts):.3f} s" if vts else "no vt"
    n = len(frames)
    lines = [f"{n} node frame{'s' if n != 1 else ''}, {sum(sizes.values()):,} bytes, {span}"]
    kind_width = max(len(k) for _, k in counts)
    for key in sorted(counts):
        direction, kind = key
        unit = "frame " if counts[key] == 1 else "frames"
        line = (
            f"  {direction:<4}  {kind:<{kind_width}}  {counts[key]:>7,} {unit}  "
            f"{sizes[key]:>11,} bytes"
        )
        if lost[key]:
            line += f"  ({lost[key]:,} lost)"
        lines.append(line)
    lines.append("")
    rows: list[tuple[str, ...] | str]
    if n <= head + tail:
        rows = [_frame_row(f) for f in frames]
    else:
        rows = [_frame_row(f) for f in frames[:head]]
        rows.append(f"… {n - head - tail:,} frames omitted …")
        rows += [_frame_row(f) for f in frames[n - tail :]]
    lines += _table(rows)
    return "\n".join(lines) + "\n"
