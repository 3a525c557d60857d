"""Tests for harness.trace: what a recorder writes, how a trace is read back, and what
normalising and comparing two traces keep and drop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from harness.nodeproto.frames import Block, encode
from harness.system import OtaSystem, SystemConfig
from harness.trace import (
    FORMAT,
    TraceError,
    TraceRecorder,
    decode_mask,
    first_difference,
    normalise,
    read_trace,
)


@dataclass
class Radio:
    name: str = "324"
    max_frame: int = 64


@dataclass
class Config:
    fleet_file: Path
    radio: Radio = field(default_factory=Radio)
    tags: tuple[str, ...] = ("a", "b")


def recorder(tmp_path: Path, name: str = "trace.jsonl", seed: int | None = 5) -> TraceRecorder:
    return TraceRecorder(
        tmp_path / name, source={"feature": "x.feature"}, seed=seed, config={"nodes": 3}
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- writing --------------------------------------------------------------------------


def test_the_header_comes_first_with_seed_and_a_jsonable_config(tmp_path: Path) -> None:
    config = Config(tmp_path / "fleet.yaml")
    with TraceRecorder(
        tmp_path / "sub" / "t.jsonl", source={"rig": "lab-1"}, seed=42, config=config
    ) as rec:
        rec.emit("note", text="hello")
    header, note = lines(tmp_path / "sub" / "t.jsonl")
    assert header["ev"] == "header" and header["format"] == FORMAT == "ota-hil-trace/1"
    assert header["seed"] == 42
    assert header["source"] == {"rig": "lab-1"}
    assert header["config"] == {
        "fleet_file": str(tmp_path / "fleet.yaml"),
        "radio": {"name": "324", "max_frame": 64},
        "tags": ["a", "b"],
    }
    assert isinstance(header["started"], str) and "T" in header["started"]
    assert note["ev"] == "note" and note["text"] == "hello" and note["wall"] >= 0
    assert rec.events == 2


def test_emit_from_many_threads_writes_whole_lines(tmp_path: Path) -> None:
    threads, per_thread = 8, 400
    rec = recorder(tmp_path)
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            rec.emit("x", thread=n, i=i, pad="p" * (i % 97))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rec.close()
    events = lines(rec.path)  # json.loads raises on any torn line
    assert len(events) == threads * per_thread + 1 == rec.events
    for n in range(threads):
        assert [e["i"] for e in events[1:] if e["thread"] == n] == list(range(per_thread))


def test_mqtt_directions_and_payloads(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.mqtt("out", "/p/d/firmware/upgrade", b'{"version": "2.0.0"}', 1)
    rec.mqtt("in", "/p/d/firmware/report", b"plain text", 0)
    rec.mqtt("in", "/p/d/firmware/report", b"\xffbad", 1)
    rec.close()
    _, down, up, bad = lines(rec.path)
    assert (down["dir"], down["payload"], down["qos"]) == ("down", {"version": "2.0.0"}, 1)
    assert (up["dir"], up["payload"], up["qos"]) == ("up", "plain text", 0)
    assert up["topic"] == "/p/d/firmware/report"
    assert bad["payload"] == "\ufffdbad"


def test_a_broadcast_mask_round_trips_for_a_fleet_of_1000(tmp_path: Path) -> None:
    rows = 1000
    rec = recorder(tmp_path)
    rec.fleet("node-324", "324", [f"node-{i:04d}" for i in range(rows)], {"nodes": rows})
    (raw,) = encode(Block(session=7, index=300, data=bytes(range(40))), 64)
    heard = np.flatnonzero(np.random.default_rng(3).random(rows) < 0.37)
    rec.broadcast(12.3456789, raw, heard)
    rec.close()
    _, fleet, frame = lines(rec.path)
    assert fleet["nodes"][999] == "node-0999" and fleet["spec"] == {"nodes": rows}
    assert (frame["kind"], frame["block"], frame["session"]) == ("BLOCK", 300, 7)
    assert (frame["size"], frame["dir"], frame["to"], frame["vt"]) == (
        len(raw),
        "down",
        None,
        12.345679,
    )
    assert frame["heard"] == heard.size and 300 < heard.size < 450
    got = decode_mask(frame["got"], rows)
    assert got.shape == (rows,)
    assert np.array_equal(np.flatnonzero(got), heard)


def test_a_frame_that_does_not_decode_is_unknown(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.unicast(1.0, b"\x01\x02junk", "node-0001", True)
    rec.close()
    frame = lines(rec.path)[1]
    assert (frame["kind"], frame["block"], frame["session"]) == ("UNKNOWN", None, None)
    assert (frame["to"], frame["heard"], frame["size"]) == ("node-0001", 1, 6)


def test_emit_after_close_is_ignored(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.emit("before")
    rec.close()
    rec.emit("after")  # a late frame from a worker thread
    rec.close()
    assert [e["ev"] for e in lines(rec.path)] == ["header", "before"]
    assert rec.events == 2


# --- reading --------------------------------------------------------------------------


def test_read_trace_gives_the_header_and_events(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.emit("fault", on="broker", what="down")
    rec.outcome("success", {"d": {"state": "success"}}, {"d": "2.0.0"})
    rec.close()
    trace = read_trace(rec.path)
    assert trace.header["seed"] == 5
    assert [e["ev"] for e in trace.events] == ["fault", "outcome"]
    assert trace.outcome is not None and trace.outcome["versions"] == {"d": "2.0.0"}
    assert [e["ev"] for e in trace.all] == ["header", "fault", "outcome"]


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.emit("a")
    rec.close()
    with rec.path.open("a") as f:
        f.write("{not json\n")
        f.write('{"ev": "b"}\n')
    with pytest.raises(TraceError, match=rf"^{rec.path}, line 3: not JSON"):
        read_trace(rec.path)


def test_a_cut_off_last_line_is_dropped(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.emit("a")
    rec.close()
    with rec.path.open("a") as f:
        f.write('{"ev":"frame","vt":1.2,"ki')
    trace = read_trace(rec.path)
    assert [e["ev"] for e in trace.events] == ["a"]
    assert trace.outcome is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"ev": "mqtt", "topic": "t"}\n', "line 1: no trace header"),
        ('{"ev": "header", "format": "ota-hil-trace/2"}\n{"ev": "a"}\n', "line 1: format"),
        ('{"ev": "header", "format": "ota-hil-trace/1"}\n[1, 2]\n{"ev": "a"}\n', "line 2: not a"),
        ("", "line 1: no trace header"),
    ],
)
def test_what_is_no_trace_is_refused_naming_file_and_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert str(info.value).startswith(f"{path}, {expected}")


def test_a_wrong_format_names_both_formats(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text('{"ev": "header", "format": "ota-hil-trace/0"}\n')
    with pytest.raises(TraceError, match="'ota-hil-trace/0'; this ota-hil reads 'ota-hil-trace/1'"):
        read_trace(path)


def test_an_unreadable_trace_is_named(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=rf"^{tmp_path / 'none.jsonl'}: cannot read"):
        read_trace(tmp_path / "none.jsonl")


# --- normalising ----------------------------------------------------------------------

ID_A = "0123456789abcdef"
ID_B = "fedcba9876543210fedcba9876543210"


def test_wall_clock_fields_are_dropped_at_any_depth() -> None:
    events = [
        {"ev": "header", "format": FORMAT, "started": "2024", "seed": 1, "source": {"f": "x"}},
        {
            "ev": "platform",
            "wall": 1.5,
            "detail": {"time": 5, "keep": 1, "deep": [{"createTime": 7, "upgradeTime": 8, "k": 2}]},
        },
    ]
    header, platform = normalise(events)
    assert header == {"ev": "header", "format": FORMAT, "seed": 1}
    assert platform == {"ev": "platform", "detail": {"keep": 1, "deep": [{"k": 2}]}}
    assert events[1]["wall"] == 1.5  # the input is left alone


def test_ids_are_renamed_consistently_and_urls_lose_their_host() -> None:
    events = [
        {"ev": "http", "path": f"/file/{ID_A}", "status": 200},
        {"ev": "platform", "detail": f"task {ID_B} for file {ID_A}", "device": "gw-1"},
        {
            "ev": "mqtt",
            "topic": "/p/d/firmware/upgrade",
            "payload": {
                "messageId": 1700000000123,
                "url": f"http://127.0.0.1:43211/file/{ID_A}?accessKey={ID_B}",
                "firmwareId": "fw-1",
            },
        },
        {
            "ev": "mqtt",
            "topic": "/p/d/firmware/upgrade/reply",
            "payload": {"messageId": 1700000000123},
        },
    ]
    # Out in this order: other events, then MQTT by topic, then the platform's events.
    http, upgrade, reply, platform = normalise(events)
    assert http["path"] == "/file/<id1>"
    assert upgrade["payload"] == {
        "messageId": "<id2>",
        "url": "http://<host>/file/<id1>?accessKey=<id3>",
        "firmwareId": "<id4>",
    }
    assert reply["payload"] == {"messageId": "<id2>"}
    assert platform["detail"] == "task <id3> for file <id1>"
    assert platform["device"] == "gw-1"


def test_two_runs_differing_only_in_ids_and_ports_normalise_equal() -> None:
    def run(file_id: str, port: int, message_id: int, wall: float) -> list[dict[str, Any]]:
        return [
            {"ev": "http", "wall": wall, "path": f"/file/{file_id}", "bytes": 10},
            {
                "ev": "mqtt",
                "wall": wall,
                "topic": "t",
                "payload": {"messageId": message_id, "url": f"http://h:{port}/file/{file_id}"},
            },
        ]

    first = normalise(run(ID_A, 4000, 11, 0.5))
    second = normalise(run("aaaaaaaaaaaaaaaa", 5000, 22, 0.9))
    assert first == second
    assert first_difference(first, second) is None
    other = normalise([*run(ID_A, 4000, 11, 0.5), {"ev": "fault", "what": "down"}])
    assert first != other


def test_mqtt_is_grouped_by_topic_keeping_order_within_each() -> None:
    events = [
        {"ev": "mqtt", "topic": "/p/b/x", "payload": 1},
        {"ev": "mqtt", "topic": "/p/a/x", "payload": 1},
        {"ev": "fault", "what": "down"},
        {"ev": "mqtt", "topic": "/p/b/x", "payload": 2},
        {"ev": "mqtt", "topic": "/p/a/x", "payload": 2},
        {"ev": "outcome", "status": "success"},
        {"ev": "mqtt", "topic": "/p/a/x", "payload": 3},
    ]
    out = normalise(events)
    assert [e["ev"] for e in out[:2]] == ["fault", "outcome"]
    assert [(e["topic"], e["payload"]) for e in out[2:]] == [
        ("/p/a/x", 1),
        ("/p/a/x", 2),
        ("/p/a/x", 3),
        ("/p/b/x", 1),
        ("/p/b/x", 2),
    ]
    # The same messages interleaved another way normalise the same.
    swapped = [events[1], events[0], events[2], events[4], events[3], events[5], events[6]]
    assert normalise(swapped) == out


def test_platform_events_are_grouped_by_kind_and_device_keeping_order() -> None:
    events = [
        {"ev": "platform", "kind": "late_reply", "device": "d2", "detail": "1"},
        {"ev": "platform", "kind": "bad_message", "device": "d1", "detail": "2"},
        {"ev": "mqtt", "topic": "t", "payload": 1},
        {"ev": "platform", "kind": "late_reply", "device": "d1", "detail": "3"},
        {"ev": "platform", "kind": "late_reply", "device": "d2", "detail": "4"},
        {"ev": "outcome", "status": "failed"},
    ]
    out = normalise(events)
    assert [e["ev"] for e in out] == ["outcome", "mqtt"] + ["platform"] * 4
    assert [e["detail"] for e in out[2:]] == ["2", "3", "1", "4"]
    interleaved = [events[1], events[3], events[0], events[2], events[5], events[4]]
    assert normalise(interleaved) == out


def test_only_the_first_and_final_progress_reports_are_kept() -> None:
    topic = "/p/gw/child/n1/firmware/upgrade/progress"

    def progress(value: int, complete: bool = False) -> dict[str, Any]:
        return {"ev": "mqtt", "topic": topic, "payload": {"progress": value, "complete": complete}}

    events = [
        progress(0),
        progress(5),
        progress(50),
        progress(95),
        progress(100, complete=True),
        {"ev": "mqtt", "topic": "/p/gw/firmware/report", "payload": {"progress": 50}},
    ]
    out = normalise(events)
    kept = [(e["topic"], e["payload"]["progress"]) for e in out]
    assert kept == [(topic, 0), (topic, 100), ("/p/gw/firmware/report", 50)]


def test_first_difference_names_the_event_and_keys() -> None:
    a = [{"ev": "header", "seed": 1}, {"ev": "http", "status": 200, "bytes": 10, "path": "/f"}]
    b = [{"ev": "header", "seed": 1}, {"ev": "http", "status": 206, "bytes": 5, "path": "/f"}]
    assert first_difference(a, [dict(e) for e in a]) is None
    said = first_difference(a, b)
    assert said is not None
    assert said.startswith("event 1 (http) differs in bytes, status: ")
    assert '"status": 200' in said and '"status": 206' in said
    extra = [{"ev": "http", "status": 200, "cut": True}]
    assert first_difference(a[1:], extra) == (
        'event 0 (http) differs in bytes, cut, path: {"bytes": 10, "ev": "http", "path": "/f", '
        '"status": 200} != {"cut": true, "ev": "http", "status": 200}'
    )


def test_first_difference_gives_the_lengths_of_a_prefix() -> None:
    a = [{"ev": "header"}, {"ev": "a"}, {"ev": "b"}]
    assert first_difference(a, a[:2]) == "one trace has 3 events, the other 2"
    assert first_difference(a[:1], a) == "one trace has 1 events, the other 3"


# --- a running system -----------------------------------------------------------------


class WatchedRecorder(TraceRecorder):
    """A recorder that also tells a test when an event it waits for was written."""

    def __init__(self, path: Path) -> None:
        self.waits: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict]]] = []
        self.loop = asyncio.get_running_loop()
        super().__init__(path, source={"test": "trace"}, seed=1, config={"what": "system"})

    def emit(self, ev: str, **fields: Any) -> None:
        super().emit(ev, **fields)
        event = {"ev": ev, **fields}
        for match, future in self.waits:
            if not future.done() and match(event):
                self.loop.call_soon_threadsafe(_settle, future, event)

    def expect(self, match: Callable[[dict[str, Any]], bool]) -> asyncio.Future[dict]:
        future: asyncio.Future[dict] = self.loop.create_future()
        self.waits.append((match, future))
        return future


def _settle(future: asyncio.Future[dict], event: dict) -> None:
    if not future.done():
        future.set_result(event)


async def test_a_system_records_the_gateways_report_and_a_download(tmp_path: Path) -> None:
    rec = WatchedRecorder(tmp_path / "system.jsonl")
    config = SystemConfig()
    report_topic = f"/{config.product_id}/{config.gateway_id}/firmware/report"
    reported = rec.expect(lambda e: e["ev"] == "mqtt" and e["topic"] == report_topic)
    data = bytes(range(256)) * 40
    async with OtaSystem(config, trace=rec) as system:
        assert system.client is not None
        event = await asyncio.wait_for(reported, 10)
        assert event["dir"] == "up"
        assert event["payload"]["version"] == config.gateway_version

        fw = await system.client.upload_firmware(data, config.product_id, "2.0.0")
        served = rec.expect(lambda e: e["ev"] == "http" and e["status"] == 200)
        async with (
            aiohttp.ClientSession(trust_env=False) as http,
            http.get(fw["url"]) as resp,
        ):
            assert (resp.status, await resp.read()) == (200, data)
        http_event = await asyncio.wait_for(served, 10)
    rec.close()

    assert http_event["method"] == "GET" and http_event["bytes"] == len(data)
    assert http_event["path"] == f"/file/{fw['fileId']}"
    assert (http_event["cut"], http_event["aborted"], http_event["range"]) == (False, False, None)
    trace = read_trace(rec.path)
    ups = [e for e in trace.of("mqtt") if e["topic"] == report_topic]
    assert ups and ups[0]["dir"] == "up"
    assert ups[0]["payload"]["version"] == config.gateway_version
    assert [e["bytes"] for e in trace.of("http") if not e.get("api")] == [len(data)]
    # The upload went through the REST API, and is in the trace as such.
    uploads = [e for e in trace.of("http") if e.get("api") and e["method"] == "POST"]
    assert uploads and uploads[0]["status"] == 200
