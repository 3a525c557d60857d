"""Scenario traces: one JSON object per line for everything that crossed the system's
boundaries, so a failure can be read without running it again, and a run can be checked
against another.

What goes in (the format is specified in docs/traces.md): the configuration and seed
(header), every MQTT message the platform sent or received, every request the file server
served, every radio frame of a simulated fleet with the nodes that heard it, every fault
injected, every event the platform recorded, and the outcome. Each line carries ``wall``
(seconds since the trace began); frames also carry ``vt``, the simulated time.

Recording is cheap and thread-safe: the simulated radio runs on a worker thread.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .nodeproto.frames import peek

if TYPE_CHECKING:
    from .platform.events import PlatformEvent
    from .platform.files import ServedRequest
    from .system import OtaSystem

FORMAT = "ota-hil-trace/1"

#: Fields whose values come from the wall clock or from a random source: they differ
#: between two runs of the same configuration and seed, and are dropped by :func:`normalise`.
WALL_CLOCK_FIELDS = frozenset(
    {"wall", "started", "timestamp", "time", "upgradeTime", "versionTime", "createTime"}
)
#: Opaque random ids (file, accessKey, firmware, task, record ids; JetLinks' time-based
#: message ids, 16 to 20 digits, also inside text such as a late reply's detail): renamed
#: in order of first appearance by :func:`normalise`, so equal structure compares equal.
_OPAQUE_ID = re.compile(r"\b(?:[0-9a-f]{16}|[0-9a-f]{32}|\d{16,20})\b")
#: Fields that hold such ids in any form (JetLinks' messageIds are time-based numbers).
_OPAQUE_FIELDS = frozenset({"messageId", "id", "taskId", "firmwareId", "fileId", "recordId"})
#: Where a URL names the host and port it was served from: a free port, different per run.
_URL_AUTHORITY = re.compile(r"(?<=://)[^/?#]+")


class TraceError(ValueError):
    """A trace file that cannot be read: names the file and the line."""


def encode_mask(mask: np.ndarray) -> str:
    """A bool per fleet row, as base64 of the little-endian packed bits."""
    return base64.b64encode(np.packbits(mask.astype(bool), bitorder="little").tobytes()).decode()


def decode_mask(text: str, rows: int) -> np.ndarray:
    bits = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(bits, bitorder="little")[:rows].astype(bool)


class TraceRecorder:
    """Writes one trace file. ``emit`` may be called from any thread."""

    def __init__(
        self,
        path: Path,
        *,
        source: Mapping[str, Any],
        seed: int | None,
        config: Mapping[str, Any],
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._rows = 0
        self.events = 0
        self._write(
            {
                "ev": "header",
                "format": FORMAT,
                "started": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "source": dict(source),
                "seed": seed,
                "config": _jsonable(config),
            }
        )

    # -- writing ---------------------------------------------------------------------------

    def emit(self, ev: str, **fields: Any) -> None:
        self._write({"ev": ev, "wall": None, **fields})

    def _write(self, event: dict[str, Any]) -> None:
        """One line; a ``wall`` of None is stamped under the lock, so the times of a file's
        lines never go backwards whichever thread wrote them."""
        with self._lock:
            if "wall" in event and event["wall"] is None:
                event["wall"] = round(time.monotonic() - self._t0, 6)
            self._put(json.dumps(event, separators=(",", ":"), default=str))

    def _write_line(self, line: str, stamp: bool = False) -> None:
        with self._lock:
            if stamp:
                line = line.replace("{wall}", f"{time.monotonic() - self._t0:.6f}", 1)
            self._put(line)

    def _put(self, line: str) -> None:
        if self._file is None:
            return  # a late frame from a worker thread after the scenario ended
        self._file.write(line + "\n")
        self.events += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the system reports -----------------------------------------------------------

    def attach(self, system: OtaSystem) -> None:
        """Record what the platform sends and receives, serves and notices; call after the
        platform started and before devices connect."""
        server = system.platform_server
        assert server is not None and server.platform.mqtt is not None
        server.platform.mqtt.tap = self.mqtt
        server.files.listener = self.served
        server.request_listener = self.rest
        server.platform.events.listener = self.platform_event

    def mqtt(self, direction: str, topic: str, payload: bytes, qos: int) -> None:
        """The platform's side of the wire: what it sends goes down to devices."""
        self.emit(
            "mqtt",
            dir="down" if direction == "out" else "up",
            topic=topic,
            payload=_payload(payload),
            qos=qos,
        )

    def served(self, request: ServedRequest) -> None:
        self.emit(
            "http",
            method=request.method,
            path=f"/file/{request.file_id}",
            range=request.range,
            status=request.status,
            bytes=request.sent,
            cut=request.cut,
            aborted=request.aborted,
        )

    def rest(self, method: str, path: str, status: int) -> None:
        """A request to the platform's REST API (tasks, records, uploads)."""
        self.emit("http", method=method, path=path, status=status, api=True)

    def platform_event(self, event: PlatformEvent) -> None:
        self.emit("platform", kind=event.kind, detail=event.detail, device=event.device_id)

    def fleet(self, kind: str, radio: str, nodes: list[str], spec: Mapping[str, Any]) -> None:
        """The fleet's node ids in row order: the rows of every frame's ``got`` mask."""
        self._rows = len(nodes)
        self.emit("fleet", kind=kind, radio=radio, nodes=nodes, spec=_jsonable(spec))

    def fault(self, on: str, what: str, vt: float | None = None) -> None:
        self.emit("fault", vt=vt, on=on, what=what)

    def outcome(
        self,
        status: str,
        records: Mapping[str, Mapping[str, Any]],
        versions: Mapping[str, str | None],
    ) -> None:
        self.emit("outcome", status=status, records=dict(records), versions=dict(versions))

    # -- radio frames (called by a simulation driver, on its thread) -----------------------

    def broadcast(self, vt: float, raw: bytes, heard: np.ndarray) -> None:
        """A broadcast frame and the fleet rows that heard it. The commonest line of a
        fleet's trace, so it is formatted directly rather than through json."""
        mask = np.zeros(self._rows, dtype=bool)
        mask[heard] = True
        info = _describe(raw)
        session = "null" if info["session"] is None else info["session"]
        block = "null" if info["block"] is None else info["block"]
        self._write_line(
            f'{{"ev":"frame","wall":{{wall}},"vt":{vt:.6f},'
            f'"dir":"down","to":null,"kind":"{info["kind"]}","size":{info["size"]},'
            f'"session":{session},"block":{block},"heard":{heard.size},'
            f'"got":"{encode_mask(mask)}"}}',
            stamp=True,
        )

    def unicast(self, vt: float, raw: bytes, to: str, heard: bool) -> None:
        self.emit("frame", vt=round(vt, 6), dir="down", to=to, **_describe(raw), heard=int(heard))

    def uplink(self, vt: float, node: str, raw: bytes, lost: bool) -> None:
        info = _describe(raw)
        self.emit(
            "frame",
            vt=round(vt, 6),
            dir="up",
            **{"from": node},
            kind=info["kind"],
            size=info["size"],
            session=info["session"],
            lost=lost,
        )


def _describe(raw: bytes) -> dict[str, Any]:
    """Kind, size, session and (for image data) block number of a frame."""
    seen = peek(raw)
    if seen is None:
        return {"kind": "UNKNOWN", "size": len(raw), "session": None, "block": None}
    kind, session, block = seen
    return {"kind": kind.name, "size": len(raw), "session": session, "block": block}


def _payload(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", errors="replace")


def _jsonable(value: Any) -> Any:
    """Config objects (dataclasses, pydantic models, paths) as plain JSON values."""
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump(mode="json"))
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# -- reading -------------------------------------------------------------------------------


@dataclass
class Trace:
    """A trace read back: its header and its events in file order."""

    path: Path
    header: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, ev: str) -> Iterator[dict[str, Any]]:
        return (e for e in self.events if e.get("ev") == ev)

    @property
    def outcome(self) -> dict[str, Any] | None:
        """The last outcome event; None when the trace was cut short."""
        found = None
        for event in self.of("outcome"):
            found = event
        return found

    @property
    def all(self) -> list[dict[str, Any]]:
        return [self.header, *self.events]


def read_trace(path: Path) -> Trace:
    """Read a trace; a line that is not JSON, or a first line that is no header of this
    format, raises :class:`TraceError` naming the file and line. A cut-off last line (the
    run was killed) is dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from None
    events: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            if number == len(lines) and events:
                break  # the writer was killed mid-line
            raise TraceError(f"{path}, line {number}: not JSON ({exc})") from None
        if not isinstance(event, dict) or not isinstance(event.get("ev"), str):
            raise TraceError(f'{path}, line {number}: not a trace event (no "ev" field)')
        events.append(event)
    if not events or events[0]["ev"] != "header":
        raise TraceError(f"{path}, line 1: no trace header (is this an ota-hil trace?)")
    header = events[0]
    if header.get("format") != FORMAT:
        raise TraceError(
            f"{path}, line 1: format {header.get('format')!r}; this ota-hil reads {FORMAT!r}"
        )
    return Trace(path, header, events[1:])


# -- comparing -----------------------------------------------------------------------------


def normalise(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The part of a trace that the configuration and seed decide.

    - wall-clock fields (:data:`WALL_CLOCK_FIELDS`) are dropped, anywhere in an event;
    - random ids are renamed ``<id1>``, ``<id2>``... in order of first appearance, and the
      host and port in URLs (a free port per run) become ``<host>``;
    - reads of the REST API (GET) are dropped: how often a test polls is the wall clock's;
    - progress reports between the first (accepted) and the last (complete) are dropped:
      how far a shared download had got when a job joined it is the wall clock's doing;
    - MQTT messages are grouped by topic, in order within each topic, and the platform's
      events by kind and device: how messages of different devices interleave is decided
      by the wall clock; the order on one topic is not;
    - the header keeps the seed and the configuration, not the ``source`` (paths).
    """
    names: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        return names.setdefault(match.group(0), f"<id{len(names) + 1}>")

    def clean(value: Any, key: str = "") -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v, k) for k, v in value.items() if k not in WALL_CLOCK_FIELDS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if key in _OPAQUE_FIELDS and isinstance(value, str | int) and not isinstance(value, bool):
            return names.setdefault(str(value), f"<id{len(names) + 1}>")
        if isinstance(value, str):
            return _URL_AUTHORITY.sub("<host>", _OPAQUE_ID.sub(rename, value))
        return value

    items = list(events)
    mqtt = sorted(
        (e for e in items if e.get("ev") == "mqtt" and not _intermediate_progress(e)),
        key=lambda e: str(e.get("topic")),
    )  # stable: order within a topic is kept
    platform = sorted(
        (e for e in items if e.get("ev") == "platform"),
        key=lambda e: (str(e.get("kind")), str(e.get("device"))),
    )
    out: list[dict[str, Any]] = []
    for event in items:
        if event.get("ev") in ("mqtt", "platform") or _polling(event):
            continue
        if event.get("ev") == "header":
            event = {k: v for k, v in event.items() if k != "source"}
        out.append(clean(event))
    out.extend(clean(e) for e in mqtt)
    out.extend(clean(e) for e in platform)
    return out


def _polling(event: Mapping[str, Any]) -> bool:
    """A read of the REST API: how often a test or a person polls is the wall clock's."""
    return bool(event.get("api")) and event.get("method") in ("GET", "HEAD")


def _intermediate_progress(event: Mapping[str, Any]) -> bool:
    payload = event.get("payload")
    return (
        str(event.get("topic", "")).endswith("/firmware/upgrade/progress")
        and isinstance(payload, Mapping)
        and not payload.get("complete")
        and payload.get("progress") not in (0, None)
    )


def first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str | None:
    """Where two normalised traces part, said in one line; None when they are equal."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            return (
                f"event {index} ({x.get('ev')}) differs in {', '.join(keys)}: "
                f"{_short(x)} != {_short(y)}"
            )
    if len(a) != len(b):
        return f"one trace has {len(a)} events, the other {len(b)}"
    return None


def _short(event: Mapping[str, Any]) -> str:
    text = json.dumps(event, sort_keys=True, default=str)
    return text if len(text) <= 200 else text[:199] + "…"


def outcome_differences(
    recorded: Mapping[str, Any] | None, replayed: Mapping[str, Any] | None
) -> list[str]:
    """Where two outcome events disagree: each record's state and reason, each device's
    version. Empty when they agree."""
    if recorded is None or replayed is None:
        which = "recorded" if recorded is None else "replayed"
        return [f"the {which} trace has no outcome (the run was cut short)"]
    out = []
    a, b = recorded.get("records", {}), replayed.get("records", {})
    for device in sorted(set(a) | set(b)):
        x, y = a.get(device), b.get(device)
        if x is None or y is None:
            out.append(
                f"{device}: a record only in the {'replayed' if x is None else 'recorded'} run"
            )
        elif (x.get("state"), x.get("reason")) != (y.get("state"), y.get("reason")):
            out.append(
                f"{device}: {x.get('state')} ({x.get('reason') or 'no reason'}) recorded, "
                f"{y.get('state')} ({y.get('reason') or 'no reason'}) replayed"
            )
    va, vb = recorded.get("versions", {}), replayed.get("versions", {})
    for device in sorted(set(va) | set(vb)):
        if va.get(device) != vb.get(device):
            out.append(f"{device}: version {va.get(device)} recorded, {vb.get(device)} replayed")
    return out
