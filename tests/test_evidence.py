"""Tests for harness.evidence: transcript, frame excerpt, progress SVG, reception PNG."""

from __future__ import annotations

import base64
import copy
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from harness.evidence import (
    block_reception,
    cell_size,
    encode_png,
    frame_excerpt,
    mqtt_transcript,
    progress_chart_svg,
    reception_png,
)
from harness.evidence import reception as reception_module

SVG = "{http://www.w3.org/2000/svg}"
UPGRADE = "/prod/gw-1/firmware/upgrade"
GREEN, RED, GREY, NEVER = (44, 160, 44), (214, 39, 40), (150, 150, 150), (70, 0, 0)
AMBER_1 = (255, 204, 0)


class Trace:
    """Builds ``ota-hil-trace/1`` events the way the recorder writes them."""

    def __init__(self, nodes: Iterable[str] | None = None) -> None:
        self.events: list[dict[str, Any]] = [
            {
                "ev": "header",
                "format": "ota-hil-trace/1",
                "started": "2025-01-01T00:00:00Z",
                "source": {},
                "seed": 1,
                "config": {},
            }
        ]
        self.nodes = list(nodes) if nodes is not None else []
        if nodes is not None:
            self.events.append(
                {
                    "ev": "fleet",
                    "wall": 0.0,
                    "kind": "node-324",
                    "radio": "324",
                    "nodes": self.nodes,
                }
            )

    def mqtt(self, wall: float, direction: str, topic: str, payload: Any) -> Trace:
        self.events.append(
            {"ev": "mqtt", "wall": wall, "dir": direction, "topic": topic, "payload": payload}
        )
        self.events[-1]["qos"] = 1
        return self

    def command(self, wall: float) -> Trace:
        return self.mqtt(wall, "down", UPGRADE, {"messageId": "m1", "version": "2.0.0"})

    def progress(
        self,
        wall: float,
        device: str,
        progress: float,
        *,
        complete: bool = False,
        success: bool = False,
        with_id: bool = True,
    ) -> Trace:
        payload: dict[str, Any] = {
            "timestamp": 0,
            "messageId": "p",
            "progress": progress,
            "complete": complete,
            "success": success,
            "errorReason": None if success or not complete else "boom",
            "version": "2.0.0",
            "firmwareId": "fw",
        }
        if with_id:
            payload["deviceId"] = device
        topic = f"/prod/gw-1/child/{device}/firmware/upgrade/progress"
        return self.mqtt(wall, "up", topic, payload)

    def fault(self, wall: float, on: str, what: str, vt: float | None = None) -> Trace:
        self.events.append({"ev": "fault", "wall": wall, "vt": vt, "on": on, "what": what})
        return self

    def session(self, phase: str, number: int, session: int = 1) -> Trace:
        self.events.append(
            {
                "ev": "session",
                "wall": 1.0,
                "vt": 1.0,
                "session": session,
                "phase": phase,
                "pass": number,
            }
        )
        return self

    def block(self, block: int, got: Iterable[str], vt: float = 1.0, session: int = 1) -> Trace:
        heard = set(got)
        mask = np.array([n in heard for n in self.nodes], dtype=bool)
        self.events.append(
            {
                "ev": "frame",
                "wall": 1.0,
                "vt": vt,
                "dir": "down",
                "to": None,
                "kind": "BLOCK",
                "size": 250,
                "session": session,
                "block": block,
                "heard": int(mask.sum()),
                "got": base64.b64encode(np.packbits(mask, bitorder="little").tobytes()).decode(),
            }
        )
        return self

    def unicast(self, block: int | None, to: str, heard: int = 1, kind: str = "BLOCK") -> Trace:
        self.events.append(
            {
                "ev": "frame",
                "wall": 1.0,
                "vt": 2.0,
                "dir": "down",
                "to": to,
                "kind": kind,
                "size": 20,
                "session": 1,
                "block": block,
                "heard": heard,
            }
        )
        return self

    def answer(self, node: str, vt: float, lost: bool = False) -> Trace:
        self.events.append(
            {
                "ev": "frame",
                "wall": 1.0,
                "vt": vt,
                "dir": "up",
                "from": node,
                "kind": "BITMAP",
                "size": 30,
                "lost": lost,
            }
        )
        return self

    def outcome(self, states: dict[str, str]) -> Trace:
        records = {n: {"state": s, "reason": None, "progress": 100} for n, s in states.items()}
        self.events.append(
            {"ev": "outcome", "wall": 9.0, "status": "failed", "records": records, "versions": {}}
        )
        return self


def nodes(count: int) -> list[str]:
    return [f"node-{i:04d}" for i in range(count)]


def with_junk(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same trace with unknown event kinds and unknown fields sprinkled in."""
    out: list[dict[str, Any]] = []
    for i, event in enumerate(copy.deepcopy(events)):
        event["future_field"] = {"nested": [i]}
        out += [event, {"ev": "telemetry", "wall": 0.5, "x": i}, {"no_ev_at_all": True}]
    return out


# --- PNG ----------------------------------------------------------------------------------


def decode_png(data: bytes) -> np.ndarray:
    """Decode a truecolour 8-bit PNG with filter type 0 rows, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body), f"bad CRC in {tag!r}"
        chunks.append((tag, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all(), "every row uses filter type 0"
    return rows[:, 1:].reshape(height, width, 3)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_round_trips_pixels() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    data = encode_png(rgb)
    assert png_size(data) == (5, 7)
    assert np.array_equal(decode_png(data), rgb)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.int32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_png_refuses_what_it_cannot_encode(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_png(bad)


# --- reception ----------------------------------------------------------------------------


def session_trace() -> Trace:
    """4 nodes, 4 blocks: a first pass, two repair passes and a unicast repair."""
    n = nodes(4)
    trace = Trace(n).session("start", 0).session("broadcast", 0)
    trace.block(0, n).block(1, [n[0], n[2]]).block(2, [n[0]]).block(3, [n[0], n[1]])
    trace.session("repair", 1).block(2, [n[0], n[1]]).unicast(3, n[3]).unicast(1, n[1], heard=0)
    trace.session("repair", 2).block(2, [n[2]]).block(3, [n[2]])
    return trace


def test_reception_records_the_first_pass_that_reached_each_node() -> None:
    result = block_reception(session_trace().events)
    assert result is not None
    assert result.nodes == tuple(nodes(4)) and result.block_count == 4
    assert result.passes.tolist() == [
        [0, 0, 0, 0],  # node 0 heard block 2 again in pass 1: the first pass counts
        [0, -1, 1, 0],  # the unicast of block 1 in pass 1 was not heard
        [0, 0, 2, 2],
        [0, -1, -1, 1],  # block 3 reached it by unicast in pass 1
    ]
    assert result.outcomes == (None, None, None, None)


def test_reception_without_session_events_counts_earlier_broadcasts() -> None:
    n = nodes(3)
    trace = Trace(n).block(0, [n[0]]).block(1, n).block(0, [n[1]]).block(0, [n[2]])
    trace.unicast(1, n[2])  # block 1 was broadcast once before: a first repair
    result = block_reception(trace.events)
    assert result is not None
    assert result.passes.tolist() == [[0, 0], [1, 0], [2, 0]]


def reference_passes(trace: Trace, frames: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
    """A loop over frames: for each node and block the pass of the first frame it heard."""
    blocks = 1 + max(b for b, _, _ in frames)
    out = np.full((len(trace.nodes), blocks), -1)
    for block, number, mask in frames:
        fresh = mask & (out[:, block] == -1)
        out[fresh, block] = number
    return out


@pytest.mark.parametrize("chunk_cells", [50, 4_000_000])
def test_reception_matches_a_frame_by_frame_loop(
    monkeypatch: pytest.MonkeyPatch, chunk_cells: int
) -> None:
    monkeypatch.setattr(reception_module, "_CHUNK_CELLS", chunk_cells)
    rng = np.random.default_rng(7)
    n = nodes(37)
    trace, frames = Trace(n), []
    trace.session("broadcast", 0)
    for block in rng.permutation(20):
        mask = rng.random(37) < 0.6
        trace.block(int(block), [n[i] for i in np.flatnonzero(mask)])
        frames.append((int(block), 0, mask))
    for number in (1, 2, 3):
        trace.session("repair", number)
        for block in rng.integers(0, 20, size=15):
            mask = rng.random(37) < 0.5
            trace.block(int(block), [n[i] for i in np.flatnonzero(mask)])
            frames.append((int(block), number, mask))
    result = block_reception(trace.events)
    assert result is not None
    assert np.array_equal(result.passes, reference_passes(trace, frames))


def test_reception_png_colours_cells_and_outcome_stripe() -> None:
    n = nodes(5)
    trace = Trace(n).session("broadcast", 0)
    for block in range(10):
        trace.block(block, n[:3] if block == 4 else n[:4])  # node 4 never hears anything
    trace.session("repair", 1).block(4, n)
    trace.outcome({n[0]: "success", n[1]: "failed", n[4]: "canceled"})
    data = reception_png(trace.events)
    assert data is not None
    assert cell_size(5, 10) == (8, 8)
    assert png_size(data) == (10 * 8 + 2 + 6, 5 * 8)
    pixels = decode_png(data)

    def cell(node: int, block: int) -> tuple[int, ...]:
        colours = {
            tuple(p)
            for p in pixels[node * 8 : node * 8 + 8, block * 8 : block * 8 + 8].reshape(-1, 3)
        }
        assert len(colours) == 1, "a cell is one colour"
        return colours.pop()

    def stripe(node: int) -> tuple[int, ...]:
        return tuple(pixels[node * 8 + 3, -1])

    assert cell(0, 0) == GREEN
    assert cell(3, 4) == AMBER_1  # reached only by the repair pass
    assert cell(4, 4) == AMBER_1
    assert cell(4, 0) == NEVER
    assert tuple(pixels[0, 80]) == (255, 255, 255)  # the gap before the stripe
    assert [stripe(i) for i in range(5)] == [GREEN, RED, GREY, GREY, GREY]


def test_reception_repair_passes_darken() -> None:
    n = nodes(1)
    trace = Trace(n)
    for number in range(8):
        trace.session("repair" if number else "broadcast", number).block(number, n)
    data = reception_png(trace.events)
    assert data is not None
    width = cell_size(1, 8)[0]
    row = decode_png(data)[0]
    colours = [tuple(int(c) for c in row[b * width]) for b in range(8)]
    assert colours[0] == GREEN and colours[1] == AMBER_1
    brightness = [sum(c) for c in colours[1:]]
    assert brightness == sorted(brightness, reverse=True) and brightness[0] > brightness[-1]
    assert colours[-1] == colours[-2], "past the darkest shade the colour holds"


@pytest.mark.parametrize(
    ("node_count", "block_count", "expected"),
    [
        (5, 10, (8, 8)),
        (1000, 128, (8, 4)),
        (10_000, 128, (8, 1)),
        (3000, 1000, (2, 1)),
        (50, 400, (4, 8)),
    ],
)
def test_cell_size_aims_at_the_target_picture(
    node_count: int, block_count: int, expected: tuple[int, int]
) -> None:
    assert cell_size(node_count, block_count) == expected


def test_reception_png_of_a_long_image_bins_blocks_showing_the_worst() -> None:
    """1,000 blocks make 500 columns of two blocks each; a column shows the worse of its
    two cells, so a block that never arrived is never hidden by its neighbour."""
    n = nodes(10)
    trace = Trace(n)
    for block in range(1000):
        trace.block(block, n[block % 10 :])  # node k gets the blocks whose number ends <= k
    data = reception_png(trace.events)
    assert data is not None
    cell_w = 1600 // 500
    assert png_size(data) == (500 * cell_w + 8, 10 * 8)
    pixels = decode_png(data)
    assert all(tuple(pixels[9 * 8, c * cell_w]) == GREEN for c in range(500))  # node 9: all
    assert all(tuple(pixels[0, c * cell_w]) == NEVER for c in range(500))  # node 0: 1 in 2
    assert tuple(pixels[8 * 8, 0]) == GREEN  # node 8, blocks 0 and 1: both came
    assert tuple(pixels[8 * 8, 4 * cell_w]) == NEVER  # node 8, blocks 8 and 9: 9 never came


def test_reception_png_of_a_large_fleet_uses_one_pixel_rows() -> None:
    n = nodes(2500)
    data = reception_png(Trace(n).block(0, n[1::2]).block(1, n[::2]).events)
    assert data is not None
    assert png_size(data) == (2 * 8 + 8, 2500)
    pixels = decode_png(data)
    assert tuple(pixels[2, 0]) == NEVER and tuple(pixels[2, 8]) == GREEN
    assert tuple(pixels[2499, 0]) == GREEN and tuple(pixels[2499, 8]) == NEVER


def test_reception_needs_a_fleet_and_block_frames() -> None:
    n = nodes(3)
    assert reception_png(Trace().block(0, []).events) is None  # no fleet
    assert reception_png(Trace(n).unicast(None, n[0], kind="QUERY").answer(n[0], 2).events) is None
    assert reception_png(Trace([]).events) is None
    broken = Trace(n).block(70_000, n).block(0, n)
    broken.events[-1]["block"] = True
    assert reception_png(broken.events) is None
    result = block_reception(broken.block(3, n).events)
    assert result is not None and result.block_count == 4


# --- progress chart -----------------------------------------------------------------------


def parse_svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") == "0 0 900 420"
    return root


def legend_texts(root: ET.Element) -> list[str]:
    legend = root.find(f".//{SVG}g[@class='legend']")
    assert legend is not None
    return [t.text or "" for t in legend.iter(f"{SVG}text")]


def polylines(root: ET.Element, cls: str) -> list[ET.Element]:
    return [p for p in root.iter(f"{SVG}polyline") if p.get("class") == cls]


def points(line: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in (line.get("points") or "").split()]


def test_progress_chart_draws_a_line_per_device_and_flags_failures() -> None:
    trace = Trace().command(10.0)
    for i, device in enumerate(["node-0000", "node-0001", "node-0002"]):
        trace.progress(11 + i, device, 0).progress(15 + i, device, 50)
    trace.progress(20, "node-0000", 100, complete=True, success=True)
    trace.progress(20, "node-0001", 60, complete=True, success=False)
    root = parse_svg(progress_chart_svg(trace.events))
    assert len(polylines(root, "device")) == 2
    (failed,) = polylines(root, "failed")
    assert failed.get("stroke") == "#d62728" and failed.findtext(f"{SVG}title") == "node-0001"
    markers = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "failed-marker"]
    assert len(markers) == 1
    assert (float(markers[0].get("cx", 0)), float(markers[0].get("cy", 0))) == points(failed)[-1]
    assert "node-0001 (failed)" in legend_texts(root)
    assert {"node-0000", "node-0002"} <= set(legend_texts(root))
    colours = {p.get("stroke") for p in polylines(root, "device")}
    assert len(colours) == 2 and "#d62728" not in colours
    title = root.findtext(f"{SVG}text[@class='title']") or ""
    assert "3 devices" in title and "1 failed" in title
    ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "tick"]
    assert {"0", "100", "10"} <= set(ticks)  # x counts from the command at wall 10
    assert "20" not in ticks[6:]


def test_progress_chart_takes_the_device_from_the_topic_and_the_outcome() -> None:
    trace = Trace().progress(1, "node-0007", 30, with_id=False)
    trace.mqtt(2, "up", "/prod/gw-1/firmware/upgrade/progress", {"progress": 10})
    trace.mqtt(3, "up", "/prod/gw-1/firmware/upgrade/progress", "not json")
    trace.outcome({"node-0007": "failed", "gw-1": "success"})
    root = parse_svg(progress_chart_svg(trace.events))
    assert sorted(legend_texts(root)) == ["gw-1", "node-0007 (failed)"]


def test_progress_chart_outcome_clears_a_failed_report_that_was_retried() -> None:
    trace = Trace().progress(1, "node-0001", 40, complete=True, success=False)
    root = parse_svg(progress_chart_svg(trace.events))
    assert legend_texts(root) == ["node-0001 (failed)"]
    root = parse_svg(progress_chart_svg(trace.outcome({"node-0001": "success"}).events))
    assert legend_texts(root) == ["node-0001"]


def test_progress_chart_with_24_devices_still_draws_lines() -> None:
    trace = Trace().command(0)
    for i in range(24):
        trace.progress(1, f"d{i:02d}", 50).progress(2, f"d{i:02d}", 100)
    root = parse_svg(progress_chart_svg(trace.events))
    assert len(polylines(root, "device")) == 24
    assert len({p.get("stroke") for p in polylines(root, "device")}) == 24
    assert root.find(f".//{SVG}polygon[@class='band']") is None


def test_progress_chart_over_24_devices_draws_a_band() -> None:
    trace = Trace().command(0)
    for i in range(30):
        trace.progress(0, f"d{i:02d}", 0).progress(5 + i / 10, f"d{i:02d}", 50)
        if i in (3, 17):
            trace.progress(8, f"d{i:02d}", 40, complete=True, success=False)
        else:
            trace.progress(10, f"d{i:02d}", 100, complete=True, success=True)
    root = parse_svg(progress_chart_svg(trace.events))
    assert polylines(root, "device") == []
    assert [p.findtext(f"{SVG}title") for p in polylines(root, "failed")] == ["d03", "d17"]
    assert "d17 (failed)" in legend_texts(root)
    title = root.findtext(f"{SVG}text[@class='title']") or ""
    assert "30 devices" in title and "2 failed" in title
    plot = root.find(f"{SVG}rect[@class='plot']")
    assert plot is not None
    top = float(plot.get("y", 0))
    bottom = top + float(plot.get("height", 0))
    (median,) = polylines(root, "median")
    assert points(median)[0][1] == bottom and points(median)[-1][1] == top
    band = root.find(f".//{SVG}polygon[@class='band']")
    assert band is not None
    edge = points(band)
    # The polygon runs along the max forward and back along the min: the min ends at 40 %.
    assert edge[len(edge) // 2 - 1][1] == top
    assert edge[len(edge) // 2][1] == pytest.approx(top + 0.6 * (bottom - top), abs=0.1)


def test_progress_chart_with_many_failures_lists_the_rest() -> None:
    trace = Trace()
    for i in range(40):
        trace.progress(1, f"d{i:02d}", 10, complete=True, success=False)
    root = parse_svg(progress_chart_svg(trace.events))
    assert len(polylines(root, "failed")) == 24
    assert "+16 more failed, not drawn" in legend_texts(root)


def test_progress_chart_without_progress_says_so() -> None:
    for events in (Trace().events, Trace().command(1).events, []):
        root = parse_svg(progress_chart_svg(events))
        assert root.findtext(f"{SVG}text[@class='empty']") == "no progress reported"
        assert list(root.iter(f"{SVG}polyline")) == []


def test_progress_chart_escapes_device_ids() -> None:
    trace = Trace().progress(1, 'a<b>&"c"\x01', 50)
    root = parse_svg(progress_chart_svg(trace.events))
    assert legend_texts(root) == ['a<b>&"c"?']


# --- transcript and frame excerpt ---------------------------------------------------------


def test_transcript_lists_messages_and_faults_in_order() -> None:
    trace = Trace().command(0.123)
    trace.progress(1.5, "node-0003", 20).fault(40.0, "broker", "down")
    trace.fault(41.0, "node-0017", "loses power after 300 blocks", vt=12.5)
    trace.mqtt(42.25, "up", "/prod/gw-1/log", "plain text\nline two")
    lines = mqtt_transcript(trace.events).splitlines()
    assert lines[0].startswith("3 MQTT messages (1 ↓") and "2 faults" in lines[0]
    assert lines[1] == f'+  0.123 s  ↓  {UPGRADE}  {{"messageId":"m1","version":"2.0.0"}}'
    assert lines[2].startswith("+  1.500 s  ↑  /prod/gw-1/child/node-0003/firmware/upgrade/")
    assert '"complete":false,"deviceId":"node-0003","errorReason":null' in lines[2]
    assert lines[3] == "+ 40.000 s  !  broker: down"
    assert lines[4] == "+ 41.000 s  !  node-0017: loses power after 300 blocks  (vt 12.500 s)"
    assert lines[5] == '+ 42.250 s  ↑  /prod/gw-1/log  "plain text\\nline two"'
    assert len(lines) == 6


def test_transcript_cuts_long_payloads() -> None:
    trace = Trace().mqtt(1, "down", "/t", {"blob": "x" * 1000}).mqtt(2, "down", "/t", {"a": 1})
    long, short = mqtt_transcript(trace.events).splitlines()[1:]
    payload = long.split("/t  ", 1)[1]
    assert payload.endswith("…") and len(payload) == 301
    assert payload.startswith('{"blob":"xxx')
    assert short.endswith('{"a":1}')


def test_transcript_of_a_trace_without_mqtt() -> None:
    assert mqtt_transcript(Trace().events) == "no MQTT messages in this trace\n"


def frame_trace(count: int) -> Trace:
    n = nodes(2)
    trace = Trace(n)
    for i in range(count):
        if i % 3 == 2:
            trace.answer(n[i % 2], vt=i / 4, lost=i % 2 == 1)
        else:
            trace.block(i, n[: i % 3], vt=i / 4)
    return trace


def test_frame_excerpt_omits_the_middle_and_counts_everything() -> None:
    text = frame_excerpt(frame_trace(100).events, head=6, tail=4)
    lines = text.splitlines()
    assert lines[0] == "100 node frames, 17,740 bytes, vt 0.000 .. 24.750 s"
    assert lines[1].split() == ["down", "BLOCK", "67", "frames", "16,750", "bytes"]
    assert lines[2].split() == ["up", "BITMAP", "33", "frames", "990", "bytes", "(16", "lost)"]
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["vt", "(s)", "dir", "peer", "kind", "size", "block", "heard/lost"]
    assert table[1].split() == ["0.000", "down", "*", "BLOCK", "250", "0", "heard", "0"]
    assert table[3].split() == ["0.500", "up", "node-0000", "BITMAP", "30", "-", "ok"]
    assert table[6].split() == ["1.250", "up", "node-0001", "BITMAP", "30", "-", "lost"]
    assert table[7] == "… 90 frames omitted …"
    assert table[8].split()[:2] == ["24.000", "down"]
    assert table[-1].split() == ["24.750", "down", "*", "BLOCK", "250", "99", "heard", "0"]
    assert len(table) == 1 + 6 + 1 + 4
    assert "12.500" not in text


def test_frame_excerpt_shows_everything_when_short() -> None:
    text = frame_excerpt(frame_trace(10).events, head=5, tail=5)
    assert "omitted" not in text and len(text.splitlines()) == 4 + 1 + 10
    assert "omitted" in frame_excerpt(frame_trace(10).events, head=0, tail=9)
    lines = frame_excerpt(frame_trace(10).events, head=2, tail=0).splitlines()
    assert lines[-1] == "… 8 frames omitted …" and lines[-2].split()[0] == "0.250"


def test_frame_excerpt_without_frames() -> None:
    assert frame_excerpt(Trace(nodes(3)).command(1).events) == "no node frames in this trace\n"


# --- the trace as a whole -----------------------------------------------------------------


def full_trace() -> Trace:
    trace = session_trace().command(0.5)
    trace.progress(1, "node-0000", 50).progress(2, "node-0001", 100, complete=True, success=True)
    trace.fault(1.5, "download", "cut after 100 bytes").answer("node-0002", 3.0)
    return trace.outcome({"node-0000": "failed", "node-0001": "success"})


def render_all(events: list[dict[str, Any]]) -> tuple[Any, ...]:
    reception = block_reception(events)
    assert reception is not None
    return (
        mqtt_transcript(events),
        frame_excerpt(events),
        progress_chart_svg(events),
        reception_png(events),
        reception.passes.tolist(),
        reception.outcomes,
    )


def test_unknown_events_and_fields_are_ignored() -> None:
    events = full_trace().events
    assert render_all(with_junk(events)) == render_all(events)


def test_a_trace_cut_before_its_outcome_still_renders() -> None:
    events = full_trace().events
    assert events[-1]["ev"] == "outcome"
    transcript, excerpt, svg, png, _, outcomes = render_all(events[:-1])
    assert "↑" in transcript and "node-0002" in excerpt
    assert legend_texts(parse_svg(svg)) == ["node-0000", "node-0001"]
    assert outcomes == (None, None, None, None)
    assert png is not None
    assert {tuple(decode_png(png)[row, -1]) for row in range(0, 32, 8)} == {GREY}
    outcome_png = reception_png(events)
    assert outcome_png is not None
    assert tuple(decode_png(outcome_png)[0, -1]) == RED


def test_progress_chart_over_radio_time_places_reports_at_the_frames_before_them() -> None:
    """A report takes the radio time of the last frame before it on the wall clock: a
    minute of simulated transfer that ran in a second of wall time is drawn as a minute."""
    trace = Trace().command(0.0)
    for wall, vt in ((1.0, 5.0), (1.2, 30.0), (1.4, 65.0)):
        trace.events.append(
            {
                "ev": "frame",
                "wall": wall,
                "vt": vt,
                "dir": "down",
                "to": None,
                "kind": "BLOCK",
                "size": 60,
                "session": 1,
                "block": 0,
                "heard": 0,
            }
        )
    trace.progress(1.3, "node-0000", 50).progress(
        1.5, "node-0000", 100, complete=True, success=True
    )
    root = parse_svg(progress_chart_svg(trace.events, radio=True))
    (line,) = polylines(root, "device")
    axis = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "axis-title"]
    assert "seconds of radio time (simulated)" in axis
    # Reports at radio 25 s and 60 s after the first frame (vt 5), against 0.2 s of wall
    # time between them: on a 0..60 s axis 630 px wide from x=60, at x=322.5 and x=690.
    xs = {x for x, _ in points(line)}
    assert {322.5, 690.0} <= xs, xs
    # Without frames there is no radio time to draw against.
    empty = parse_svg(
        progress_chart_svg(Trace().command(0.0).progress(1, "n", 50).events, radio=True)
    )
    assert "no progress reported" in "".join(t.text or "" for t in empty.iter(f"{SVG}text"))
