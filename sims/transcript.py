"""A field description from what a field gateway leaves behind: the platform side's MQTT
transcript, as an ota-hil trace or as ``mosquitto_sub -v`` output.

The transcript tells the nodes, the firmware (version, size), each node's version before,
its progress over time and how it ended. It does not tell the radio, the loss or what
went wrong on the air: those are left at defaults and said so in ``notes``, for a person to
complete before ``ota-hil reproduce`` can fail the same way.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.trace import TraceError, read_trace

from .fieldfile import FieldFileError, FieldSpec, field_from_dict
from .fleetfile import MAX_NODES

#: ``/{product}/{gateway}/child/{node}/firmware/{what}`` (JetLinks' child device topics).
_CHILD = re.compile(r"^/([^/]+)/([^/]+)/child/([^/]+)/firmware/(.+)$")
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


class TranscriptError(ValueError):
    """A transcript that cannot be read: names the file and line."""


@dataclass
class NodeStory:
    """What the transcript says about one node."""

    version_before: str | None = None
    state: str = "waiting"
    reason: str | None = None
    version_after: str | None = None
    timeline: list[tuple[float | None, str]] = field(default_factory=list)
    #: A progress report came: later version reports are the node's new version.
    progressed: bool = False


@dataclass
class Transcript:
    """The platform side of an upgrade, message by message: (seconds or None, topic,
    payload)."""

    source: str
    messages: list[tuple[float | None, str, Any]]


def read_transcript(path: Path) -> Transcript:
    """An ota-hil trace (first line a trace header) or ``mosquitto_sub -v`` lines
    (``topic payload``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TranscriptError(f"{path}: cannot read: {exc}") from None
    first = text.lstrip()[:200]
    if first.startswith("{") and '"ev"' in first:
        try:
            trace = read_trace(path)
        except TraceError as exc:
            raise TranscriptError(str(exc)) from None
        return Transcript(
            str(path),
            [(e.get("wall"), str(e.get("topic")), e.get("payload")) for e in trace.of("mqtt")],
        )
    messages: list[tuple[float | None, str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        topic, _, payload = line.partition(" ")
        if not topic.startswith("/") or "/firmware/" not in topic:
            raise TranscriptError(
                f"{path}, line {number}: expected `topic payload` with a JetLinks firmware "
                f"topic (mosquitto_sub -v output), got {line[:80]!r}"
            )
        try:
            data: Any = json.loads(payload)
        except ValueError:
            data = payload
        stamp = data.get("timestamp") if isinstance(data, dict) else None
        seconds = stamp / 1000 if isinstance(stamp, int | float) else None
        messages.append((seconds, topic, data))
    if not messages:
        raise TranscriptError(f"{path}: no MQTT messages in it")
    return Transcript(str(path), messages)


def field_from_transcript(transcript: Transcript, name: str | None = None) -> FieldSpec:
    """The field description the transcript supports, with what it cannot say in notes."""
    stories: dict[str, NodeStory] = {}
    version: str | None = None
    size: int | None = None
    bad_size: Any = None
    t0 = _push_time(transcript.messages)
    for seconds, topic, payload in transcript.messages:
        match = _CHILD.match(topic)
        if match is None or not isinstance(payload, dict):
            continue
        node, what = match[3], match[4]
        story = stories.setdefault(node, NodeStory())
        # Adding 0.0 turns a -0.0 (a rounded tiny negative) into 0.0, shown as +0.000.
        at = None if seconds is None or t0 is None else round(seconds - t0, 3) + 0.0
        if what == "report" and not story.progressed:
            # A node's report can cross the upgrade message on the wire: until it reports
            # progress, what it reports is the version it had.
            story.version_before = _text(payload.get("version"))
        elif what == "upgrade":
            version = _text(payload.get("version")) or version
            given = payload.get("size")
            if _is_size(given):
                size = given
            elif given is not None:
                bad_size = given
            story.timeline.append((at, f"told to upgrade to {payload.get('version')}"))
            story.state = "processing"
        elif what == "upgrade/progress":
            story.progressed = True
            progress = payload.get("progress")
            if payload.get("complete"):
                ok = payload.get("success", True) is not False
                story.state = "success" if ok else "failed"
                story.reason = None if ok else _text(payload.get("errorReason"))
                story.version_after = _text(payload.get("version")) if ok else story.version_before
                story.timeline.append((at, "success" if ok else f"failed: {story.reason}"))
            else:
                story.timeline.append((at, f"{progress}%"))
        elif what == "upgrade/reply" and payload.get("success") is False:
            story.state = "failed"
            story.reason = _text(payload.get("message") or payload.get("code"))
            story.timeline.append((at, f"refused: {story.reason}"))
    upgraded = {n: s for n, s in stories.items() if s.state != "waiting"}
    if not upgraded or version is None:
        raise TranscriptError(
            f"{transcript.source}: no upgrade of a child node in it (no .../child/<node>/"
            "firmware/upgrade message): nothing to reproduce"
        )
    ids = sorted(upgraded)
    prefix, mapping = _fleet_ids(ids)
    befores = [s.version_before for s in upgraded.values() if s.version_before]
    # The most common version; a tie goes to the last in sorted order (stragglers are
    # usually behind), the same each run.
    common_before = max(set(befores), key=lambda v: (befores.count(v), v)) if befores else "1.0.0"
    overrides = []
    for node in ids:
        before = upgraded[node].version_before
        if before and before != common_before:
            overrides.append({"nodes": str(mapping[node]), "version": before})
    notes = [
        f"Imported from {transcript.source}: {len(ids)} nodes, firmware {version}.",
        "Not in the transcript, to be completed by hand: the radio (324 assumed), each "
        "node's loss and burst (0 assumed), node faults and their blocks, broker outages "
        "(the schedule is empty).",
    ]
    if size is None and bad_size is not None:
        notes.append(
            f"The firmware size in the transcript ({bad_size!r:.40}) is not a positive number of "
            "bytes; 128 KiB assumed."
        )
    elif size is None:
        notes.append("The firmware size is not in the transcript; 128 KiB assumed.")
    if prefix is None:
        notes.append(
            "Node ids do not follow one prefix and number; they are renumbered: "
            + ", ".join(f"{_fleet_id('node-', mapping[n], len(ids))} = {n}" for n in ids)
        )
    elif absent := _absent(prefix, mapping):
        notes.append(absent)
    observed: dict[str, Any] = {}
    for node in ids:
        story = upgraded[node]
        fleet_id = node if prefix is not None else _fleet_id("node-", mapping[node], len(ids))
        entry: dict[str, Any] = {"state": story.state}
        if story.reason:
            entry["reason"] = story.reason
        if story.version_after:
            entry["version"] = story.version_after
        entry["timeline"] = [
            (f"{t:+.3f} s " if t is not None else "") + what for t, what in story.timeline
        ]
        observed[fleet_id] = entry
    data = {
        "name": name or f"imported from {Path(transcript.source).name}",
        "seed": 0,
        "firmware": {"version": version, "size_kib": max(1, math.ceil((size or 131072) / 1024))},
        "fleet": {
            "radio": "324",
            "nodes": max(mapping.values()) + 1,
            "version": common_before,
            **({"id_prefix": prefix} if prefix and prefix != "node-" else {}),
            **({"overrides": overrides} if overrides else {}),
        },
        "observed": observed,
        "notes": " ".join(notes),
    }
    try:
        return field_from_dict(data, transcript.source)
    except FieldFileError as exc:
        raise TranscriptError(
            f"{transcript.source}: the field description it gives cannot be used: {exc}"
        ) from None


def _push_time(messages: list[tuple[float | None, str, Any]]) -> float | None:
    """When the platform pushed: the time of the transcript's first upgrade message, so
    timelines read as in the docs (``+0.000 s told to upgrade``) whatever came before it;
    without a timed upgrade message, the first time of a child message."""
    timed = [
        (seconds, match[4])
        for seconds, topic, payload in messages
        if seconds is not None and isinstance(payload, dict) and (match := _CHILD.match(topic))
    ]
    pushes = [seconds for seconds, what in timed if what == "upgrade"]
    return pushes[0] if pushes else timed[0][0] if timed else None


def _is_size(value: Any) -> bool:
    """A firmware size in bytes: a positive whole number (a bool is no size)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


#: How many runs of absent nodes the notes list before summing up the rest.
_ABSENT_RUNS = 20


def _absent(prefix: str, mapping: dict[str, int]) -> str | None:
    """A note naming the fleet's nodes the transcript has no upgrade of, as ranges: the
    fleet is numbered 0..highest id so that the ids match the field's, which adds nodes the
    field may never have had."""
    seen = set(mapping.values())
    count = max(seen) + 1
    runs: list[tuple[int, int]] = []
    for index in (i for i in range(count) if i not in seen):
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    if not runs:
        return None
    names = [
        _fleet_id(prefix, a, count) + ("" if a == b else f"..{_fleet_id(prefix, b, count)}")
        for a, b in runs[:_ABSENT_RUNS]
    ]
    one = count - len(seen) == 1
    them = "it" if one else "them"
    hint = f"give {them} `offline: true`"
    if len(runs) > _ABSENT_RUNS:
        names.append(f"... ({count - len(seen)} nodes in all)")
    else:
        selector = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
        hint += f' (an override with nodes: "{selector}")'
    return (
        f"{', '.join(names)} {'has' if one else 'have'} no upgrade in the transcript: "
        f"{'it is' if one else 'they are'} in the fleet so that the ids match the field's; "
        f"{hint} if the field did not have {them}."
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _fleet_ids(ids: list[str]) -> tuple[str | None, dict[str, int]]:
    """Node ids as a fleet's (prefix, index per id): kept when they are one prefix and
    zero-padded numbers as ota-hil names nodes, else renumbered in sorted order."""
    matches = [_NUMBERED.match(n) for n in ids]
    if all(matches):
        prefixes = {m[1] for m in matches if m}
        widths = {len(m[2]) for m in matches if m}
        numbers = {n: int(m[2]) for n, m in zip(ids, matches, strict=True) if m}
        top = max(numbers.values())
        width = max(4, len(str(top)))
        # Kept only as a fleet would name them: one non-empty prefix, zero-padded numbers,
        # and numbers a fleet can have (serial numbers would need a fleet of their size).
        if (
            len(prefixes) == 1
            and "" not in prefixes
            and widths == {width}
            and len(set(numbers.values())) == len(ids)
            and top < min(MAX_NODES, 10 * len(ids) + 100)
        ):
            return prefixes.pop(), numbers
    return None, {n: i for i, n in enumerate(ids)}


def _fleet_id(prefix: str, index: int, count: int) -> str:
    return f"{prefix}{index:0{max(4, len(str(count - 1)))}d}"
