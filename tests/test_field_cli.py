"""``ota-hil import``, ``reproduce`` and ``replay`` as a person runs them: real runs of small
fields (embedded broker, platform, reference gateway, simulated fleet on loopback), from a
field file or a platform-side transcript to an outcome, a trace, a replay and a scenario."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from gherkin.parser import Parser

from harness.cli.field import import_command, replay_command, reproduce_command
from harness.trace import read_trace
from sims.fieldfile import load_field

#: Wide enough that rich never wraps a line the tests look for.
ENV = {"COLUMNS": "250"}

#: Six nodes, 8 KiB, no loss; node 2's birth certificate is signed by another CA.
SMALL = """\
name: small site
seed: 3
firmware:
  version: "2.0.0"
  size_kib: 8
fleet:
  radio: "324"
  nodes: 6
  loss: 0
  version: "1.0.0"
schedule:
  - node: 2
    forged_certificate: true
"""

FORGED = {"node": 2, "forged_certificate": True}
CERT_REFUSED = "birth certificate refused"


def run(command: click.Command, *args: str | Path) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args], env=ENV)


def reproduce(field: Path, trace: Path, *extra: str | Path) -> Result:
    return run(reproduce_command, field, "--trace", trace, "--no-progress", *extra)


def write_field(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Run:
    """One reproduction of :data:`SMALL` with ``--json`` and ``--emit-feature``."""

    field: Path
    trace: Path
    feature: Path
    result: Result


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("small")
    field = base / "small.yaml"
    field.write_text(SMALL, encoding="utf-8")
    trace, feature = base / "small.jsonl", base / "scenarios" / "small.feature"
    result = reproduce(field, trace, "--json", "--emit-feature", feature)
    return Run(field, trace, feature, result)


# -- import from mosquitto_sub -v --------------------------------------------------------------

T0 = 1_696_300_000_000  # ms


def message(topic: str, at_ms: int, **payload: Any) -> str:
    return f"{topic} {json.dumps({'timestamp': T0 + at_ms, **payload})}"


def child(node: str, what: str) -> str:
    return f"/node-324/gw-1/child/{node}/firmware/{what}"


def story(
    node: str,
    offset: int,
    before: str,
    *,
    size: int | None = 70_000,
    error: str | None = None,
) -> list[str]:
    """A node's messages: report, upgrade, progress 0/50/90, then its end."""
    upgrade: dict[str, Any] = {"messageId": f"17{offset:05d}", "version": "2.1.0"}
    if size is not None:
        upgrade |= {"size": size, "url": "http://p/file/abc", "sign": "0" * 32}
    end: dict[str, Any] = {"progress": 100, "complete": True, "success": True}
    if error is not None:
        end = {"progress": 90, "complete": True, "success": False, "errorReason": error}
    return [
        message(child(node, "report"), offset, version=before),
        message(child(node, "upgrade"), 1_000 + offset, **upgrade),
        *(
            message(child(node, "upgrade/progress"), at + offset, progress=p, complete=False)
            for at, p in ((1_200, 0), (30_000, 50), (55_000, 90))
        ),
        message(child(node, "upgrade/progress"), 61_500 + offset, version="2.1.0", **end),
    ]


def transcript(tmp_path: Path, lines: list[str], name: str = "site.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_import_of_mosquitto_output_gives_nodes_firmware_outcomes_and_notes(
    tmp_path: Path,
) -> None:
    """Node count, firmware version and size (KiB rounded up), each node's end, reason,
    version and timeline, an override for the node on another version, and notes on what
    the transcript cannot tell."""
    lines = [
        message("/gw-product/gw-1/firmware/report", 0, version="3.0.0"),
        *story("node-0000", 0, "1.0.0"),
        *story("node-0001", 10, "1.0.0", error="power lost during apply"),
        "",
        *story("node-0002", 20, "1.0.0"),
        *story("node-0003", 30, "0.9.0"),
        message(child("node-0009", "report"), 40, version="1.0.0"),  # never told to upgrade
    ]
    source = transcript(tmp_path, lines)
    out = tmp_path / "fields" / "site.yaml"
    result = run(import_command, source, "-o", out, "--name", "site 7 night")
    assert result.exit_code == 0, result.output
    assert "4 nodes, 1 not successful in the field" in result.output

    spec = load_field(out)
    assert spec.name == "site 7 night"
    assert spec.fleet.nodes == 4
    assert (spec.firmware.version, spec.firmware.size_kib) == ("2.1.0", math.ceil(70_000 / 1024))
    assert spec.fleet.version == "1.0.0"
    assert [(o.nodes, o.version) for o in spec.fleet.overrides] == [("3", "0.9.0")]
    assert spec.schedule == []
    assert sorted(spec.observed) == ["node-0000", "node-0001", "node-0002", "node-0003"]
    failed = spec.observed["node-0001"]
    assert (failed.state, failed.reason, failed.version) == (
        "failed",
        "power lost during apply",
        "1.0.0",
    )
    for node in ("node-0000", "node-0002", "node-0003"):
        seen = spec.observed[node]
        assert (seen.state, seen.reason, seen.version) == ("success", None, "2.1.0")
    # Offsets count from the push (the first upgrade message), not from the first report.
    assert spec.observed["node-0000"].timeline == [
        "+0.000 s told to upgrade to 2.1.0",
        "+0.200 s 0%",
        "+29.000 s 50%",
        "+54.000 s 90%",
        "+60.500 s success",
    ]
    assert spec.observed["node-0001"].timeline[0] == "+0.010 s told to upgrade to 2.1.0"
    assert spec.observed["node-0001"].timeline[-1] == "+60.510 s failed: power lost during apply"
    assert spec.notes is not None
    assert f"Imported from {source}: 4 nodes, firmware 2.1.0" in spec.notes
    assert "to be completed by hand" in spec.notes
    for missing in ("radio", "loss", "node faults", "broker outages", "schedule is empty"):
        assert missing in spec.notes
    assert out.read_text().startswith("# A field description imported by `ota-hil import`")


def test_import_without_output_prints_the_field_file(tmp_path: Path) -> None:
    """Without ``-o`` the field file goes to stdout, and it is a valid field file."""
    source = transcript(tmp_path, story("node-0000", 0, "1.0.0"))
    result = run(import_command, source)
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert data["name"] == "imported from site.txt"
    assert data["observed"]["node-0000"]["state"] == "success"


def test_node_ids_without_a_common_numbering_are_renumbered_and_mapped_in_the_notes(
    tmp_path: Path,
) -> None:
    """``kitchen`` and ``hall`` become node-0000 (hall) and node-0001 (kitchen); the notes
    give the mapping and say the firmware size was assumed."""
    lines = [
        *story("kitchen", 0, "1.0.0", size=None),
        *story("hall", 10, "0.8.0", size=None, error="self-test failed"),
    ]
    out = tmp_path / "renumbered.yaml"
    result = run(import_command, transcript(tmp_path, lines), "-o", out)
    assert result.exit_code == 0, result.output
    spec = load_field(out)
    assert spec.fleet.nodes == 2
    assert spec.fleet.node_ids() == ["node-0000", "node-0001"]
    assert sorted(spec.observed) == ["node-0000", "node-0001"]
    assert spec.observed["node-0000"].state == "failed"
    assert spec.observed["node-0000"].reason == "self-test failed"
    assert spec.observed["node-0001"].state == "success"
    assert spec.notes is not None
    assert "renumbered: node-0000 = hall, node-0001 = kitchen" in spec.notes
    assert "128 KiB assumed" in spec.notes
    assert spec.firmware.size_kib == 128


def test_a_message_before_the_push_has_a_negative_offset(tmp_path: Path) -> None:
    """Progress left over from before the push is kept, at its honest negative offset."""
    lines = story("node-0000", 0, "1.0.0")
    lines.insert(1, message(child("node-0000", "upgrade/progress"), 500, progress=40))
    out = tmp_path / "early.yaml"
    assert run(import_command, transcript(tmp_path, lines), "-o", out).exit_code == 0
    timeline = load_field(out).observed["node-0000"].timeline
    assert timeline[:2] == ["-0.500 s 40%", "+0.000 s told to upgrade to 2.1.0"]


def test_fleet_nodes_the_transcript_does_not_have_are_named_in_the_notes(
    tmp_path: Path,
) -> None:
    """node-0003 and node-0007 give a fleet of 8 so the ids match; the six others are named
    as ranges in the notes, with the override that takes them off the air."""
    lines = [*story("node-0003", 0, "1.0.0"), *story("node-0007", 10, "1.0.0")]
    out = tmp_path / "gaps.yaml"
    assert run(import_command, transcript(tmp_path, lines), "-o", out).exit_code == 0
    spec = load_field(out)
    assert spec.fleet.nodes == 8
    assert sorted(spec.observed) == ["node-0003", "node-0007"]
    assert spec.notes is not None
    assert (
        "node-0000..node-0002, node-0004..node-0006 have no upgrade in the transcript: they "
        "are in the fleet so that the ids match the field's; give them `offline: true` (an "
        'override with nodes: "0-2,4-6")' in spec.notes
    )


def test_one_fleet_node_missing_from_the_transcript_is_named_alone(tmp_path: Path) -> None:
    lines = [*story("node-0000", 0, "1.0.0"), *story("node-0002", 10, "1.0.0")]
    out = tmp_path / "gap.yaml"
    assert run(import_command, transcript(tmp_path, lines), "-o", out).exit_code == 0
    notes = load_field(out).notes or ""
    assert "node-0001 has no upgrade in the transcript: it is in the fleet" in notes
    assert 'give it `offline: true` (an override with nodes: "1") if the field did not' in notes


def test_a_fleet_without_gaps_has_no_note_on_missing_nodes(tmp_path: Path) -> None:
    lines = [*story("node-0000", 0, "1.0.0"), *story("node-0001", 10, "1.0.0")]
    out = tmp_path / "whole.yaml"
    assert run(import_command, transcript(tmp_path, lines), "-o", out).exit_code == 0
    assert "no upgrade in the transcript" not in (load_field(out).notes or "")


@pytest.mark.parametrize("size", [-5, 0])
def test_a_size_that_is_not_positive_is_treated_as_missing(tmp_path: Path, size: int) -> None:
    """A size of 0 or -5 bytes does not become 1 KiB: 128 KiB is assumed and said so."""
    out = tmp_path / "sized.yaml"
    source = transcript(tmp_path, story("node-0000", 0, "1.0.0", size=size))
    assert run(import_command, source, "-o", out).exit_code == 0
    spec = load_field(out)
    assert spec.firmware.size_kib == 128
    assert spec.notes is not None
    assert f"({size}) is not a positive number of bytes; 128 KiB assumed" in spec.notes


def test_a_transcript_without_a_child_upgrade_has_nothing_to_reproduce(tmp_path: Path) -> None:
    """Reports alone are no incident: exit 1, the file named, nothing to reproduce."""
    source = transcript(
        tmp_path,
        [
            message("/gw-product/gw-1/firmware/report", 0, version="3.0.0"),
            message(child("node-0000", "report"), 10, version="1.0.0"),
        ],
    )
    result = run(import_command, source)
    assert result.exit_code == 1
    assert str(source) in result.output
    assert "nothing to reproduce" in result.output
    assert "Traceback" not in result.output


def test_a_line_that_is_not_topic_and_payload_is_named_by_file_and_line(tmp_path: Path) -> None:
    """A line that is no ``topic payload`` line is refused naming the file and line 3."""
    lines = [*story("node-0000", 0, "1.0.0")[:2], "Connection refused: not authorised"]
    source = transcript(tmp_path, lines)
    result = run(import_command, source)
    assert result.exit_code == 1
    assert f"{source}, line 3" in result.output
    assert "topic payload" in result.output


def test_numeric_node_ids_name_nodes_of_the_imported_fleet(tmp_path: Path) -> None:
    """Ids that are bare numbers (``0000``, ``0001``) are ids of the imported fleet."""
    lines = [*story("0000", 0, "1.0.0"), *story("0001", 10, "1.0.0")]
    out = tmp_path / "numeric.yaml"
    assert run(import_command, transcript(tmp_path, lines), "-o", out).exit_code == 0
    spec = load_field(out)
    assert set(spec.observed) <= set(spec.fleet_spec().node_ids())


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(
            [*story("meter-204518", 0, "1.0.0"), *story("meter-204519", 10, "1.0.0")],
            id="serial-number-ids",
        ),
        pytest.param(story("node-0000", 0, "1.0.0", size=20_000_000), id="20-MB-firmware"),
    ],
)
def test_a_transcript_the_field_format_cannot_hold_is_refused_in_one_line(
    tmp_path: Path, lines: list[str]
) -> None:
    """Serial-number ids (a fleet of 204,520) or a 20 MB image end in a one-line error or a
    usable file, never in a traceback."""
    result = run(import_command, transcript(tmp_path, lines), "-o", tmp_path / "out.yaml")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output


def test_a_report_right_after_the_upgrade_still_gives_the_version_before(
    tmp_path: Path,
) -> None:
    """In the order an ota-hil trace records them (node-0000's report, the upgrades, the
    other reports, progress) every node's version before is read."""
    header = {
        "ev": "header",
        "format": "ota-hil-trace/1",
        "source": {"kind": "field", "path": "f.yaml"},
        "seed": 0,
        "config": {},
    }
    topic = "/gateway-product/gateway-1/child/{}/firmware/{}".format
    events = [
        ("up", topic("node-0000", "report"), {"version": "1.0.0"}),
        ("down", topic("node-0000", "upgrade"), {"version": "2.0.0", "size": 8192}),
        ("down", topic("node-0001", "upgrade"), {"version": "2.0.0", "size": 8192}),
        ("up", topic("node-0001", "report"), {"version": "0.9.0"}),
        ("up", topic("node-0000", "upgrade/progress"), {"progress": 0, "complete": False}),
        ("up", topic("node-0001", "upgrade/progress"), {"progress": 0, "complete": False}),
        (
            "up",
            topic("node-0000", "upgrade/progress"),
            {"progress": 100, "complete": True, "success": True, "version": "2.0.0"},
        ),
        (
            "up",
            topic("node-0001", "upgrade/progress"),
            {"progress": 81, "complete": True, "success": False, "errorReason": "cut"},
        ),
    ]
    lines = [json.dumps(header)] + [
        json.dumps({"ev": "mqtt", "wall": 0.1 + i / 100, "dir": d, "topic": t, "payload": p})
        for i, (d, t, p) in enumerate(events)
    ]
    out = tmp_path / "imported.yaml"
    result = run(import_command, transcript(tmp_path, lines, "run.jsonl"), "-o", out)
    assert result.exit_code == 0, result.output
    spec = load_field(out)
    assert [(o.nodes, o.version) for o in spec.fleet.overrides] == [("1", "0.9.0")]
    assert spec.observed["node-0001"].version == "0.9.0"


# -- reproduce ---------------------------------------------------------------------------------


def test_reproduce_json_gives_each_nodes_end(small_run: Run) -> None:
    """``--json``: six nodes, node-0002 refused for its certificate and still on 1.0.0, the
    others on 2.0.0; no observed outcomes, so exit 0 and no differences."""
    result = small_run.result
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["field"] == "small site"
    assert data["trace"] == str(small_run.trace)
    assert data["observed_differences"] == []
    nodes = data["nodes"]
    assert sorted(nodes) == [f"node-{i:04d}" for i in range(6)]
    assert nodes["node-0002"]["state"] == "failed"
    assert CERT_REFUSED in nodes["node-0002"]["reason"]
    assert nodes["node-0002"]["version_after"] == "1.0.0"
    for node, end in nodes.items():
        assert end["version_before"] == "1.0.0"
        if node != "node-0002":
            assert (end["state"], end["reason"], end["version_after"]) == ("success", None, "2.0.0")
    trace = read_trace(small_run.trace)
    assert trace.header["source"]["kind"] == "field"
    assert trace.outcome is not None and trace.outcome["status"] == "reproduced"


def test_emit_feature_writes_a_gherkin_scenario_of_the_run(small_run: Run) -> None:
    """The scenario parses as Gherkin, needs the simulator, has node 2's fault, lists node 2
    and its reason as the only failure and node 2 as the one left on 1.0.0."""
    assert small_run.result.exit_code == 0, small_run.result.output
    text = small_run.feature.read_text(encoding="utf-8")
    document = Parser().parse(text)
    feature = document["feature"]
    assert "Feature:" in text
    assert [t["name"] for t in feature["tags"]] == ["@needs_sim"]
    assert feature["name"] == "Field reproduction: small site"
    steps = feature["children"][0]["scenario"]["steps"]
    texts = [s["text"] for s in steps]
    assert "node 2 has a forged birth certificate" in texts
    assert 'the platform pushes firmware "2.0.0" of 8 KiB to every node' in texts
    fail = next(s for s in steps if s["text"].endswith("only these nodes fail:"))
    rows = [[c["value"] for c in r["cells"]] for r in fail["dataTable"]["rows"]]
    assert rows[0] == ["node", "reason"]
    assert len(rows) == 2 and rows[1][0] == "2" and CERT_REFUSED in rows[1][1]
    versions = next(s for s in steps if s["text"].startswith("every node runs version"))
    assert versions["text"] == 'every node runs version "2.0.0" except these:'
    rows = [[c["value"] for c in r["cells"]] for r in versions["dataTable"]["rows"]]
    assert rows == [["node", "version"], ["2", "1.0.0"]]


@pytest.fixture(scope="module")
def disagreeing_run(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """A run of :data:`SMALL` whose field saw node-0001 fail and node-0002 fail for a
    reason with brackets."""
    base = tmp_path_factory.mktemp("disagree")
    data = yaml.safe_load(SMALL)
    data["observed"] = {
        "node-0001": {"state": "failed", "reason": "power lost"},
        "node-0002": {"state": "failed", "reason": "flash write failed [errno 5]"},
    }
    field = write_field(base / "disagree.yaml", data)
    return reproduce(field, base / "disagree.jsonl")


def test_a_run_that_does_not_end_as_observed_exits_1_naming_the_node(
    disagreeing_run: Result,
) -> None:
    """node-0001 succeeded where the field saw it fail: exit 1 and the node named."""
    assert disagreeing_run.exit_code == 1, disagreeing_run.output
    assert "does not reproduce what the field observed" in disagreeing_run.output
    assert "node-0001: observed failed, reproduced success" in disagreeing_run.output
    assert "node-0003" not in disagreeing_run.output.split("does not reproduce")[1]


def test_a_reason_with_brackets_is_printed_as_written(disagreeing_run: Result) -> None:
    """The observed reason ``flash write failed [errno 5]`` is shown whole."""
    assert "node-0002: observed reason 'flash write failed [errno 5]'" in disagreeing_run.output


def test_an_invalid_field_file_is_named_with_line_and_field(tmp_path: Path) -> None:
    """An unknown field: exit 1, one line naming the file, line 10 and ``fleet.colour``."""
    field = tmp_path / "bad.yaml"
    field.write_text(SMALL.replace("  loss: 0\n", "  loss: 0\n  colour: red\n"))
    assert field.read_text().splitlines()[9] == "  colour: red"
    result = reproduce(field, tmp_path / "bad.jsonl")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"{field}, line 10, fleet.colour: unknown field" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "bad.jsonl").exists()


# -- import of a trace, then reproduce ---------------------------------------------------------


@pytest.fixture
def imported(small_run: Run, tmp_path: Path) -> Path:
    """The field file ``ota-hil import`` makes of the small run's trace."""
    out = tmp_path / "imported.yaml"
    result = run(import_command, small_run.trace, "-o", out)
    assert result.exit_code == 0, result.output
    assert "6 nodes, 1 not successful in the field" in result.output
    spec = load_field(out)
    assert spec.fleet.nodes == 6
    assert (spec.firmware.version, spec.firmware.size_kib) == ("2.0.0", 8)
    assert spec.schedule == []
    assert spec.observed["node-0002"].state == "failed"
    assert CERT_REFUSED in (spec.observed["node-0002"].reason or "")
    assert all(spec.observed[f"node-{i:04d}"].state == "success" for i in (0, 1, 3, 4, 5))
    assert all(o.timeline[0].startswith("+") for o in spec.observed.values())
    return out


def test_an_imported_trace_with_its_fault_put_back_reproduces_the_field(
    imported: Path, tmp_path: Path
) -> None:
    """With node 2's forged certificate added to the schedule, the imported field is
    reproduced: exit 0."""
    data = yaml.safe_load(imported.read_text())
    data.setdefault("schedule", []).append(FORGED)
    field = write_field(imported, data)
    result = reproduce(field, tmp_path / "again.jsonl")
    assert result.exit_code == 0, result.output
    assert "reproduces what the field observed" in result.output


def test_an_imported_trace_without_its_fault_does_not_reproduce(
    imported: Path, tmp_path: Path
) -> None:
    """Left as imported (no faults), every node succeeds: exit 1 naming node-0002 only."""
    result = reproduce(imported, tmp_path / "again.jsonl")
    assert result.exit_code == 1, result.output
    differences = result.output.split("does not reproduce what the field observed:")[1]
    assert "node-0002: observed failed, reproduced success" in differences
    named = {line.split(":")[0].strip() for line in differences.strip().splitlines()}
    assert named == {"node-0002"}  # its end, and the version it was left on


# -- replay ------------------------------------------------------------------------------------


def test_replay_of_a_reproduction_matches(small_run: Run, tmp_path: Path) -> None:
    """The trace of a reproduction is run again from its field description: the same
    outcome, the same normalised trace, exit 0."""
    result = run(replay_command, small_run.trace, "--output", tmp_path / "replays")
    assert result.exit_code == 0, result.output
    assert "replaying the field description 'small site' (seed 3)" in result.output
    assert "normalised traces: identical" in result.output
    assert "the outcome matches" in result.output
    assert (tmp_path / "replays" / "reproduce-small-site.jsonl").exists()


def test_replay_of_a_trace_claiming_another_outcome_exits_1_naming_the_node(
    small_run: Run, tmp_path: Path
) -> None:
    """A recorded outcome that says node-0004 lost power: the replay differs there, exit 1."""
    lines = small_run.trace.read_text().splitlines()
    outcome = json.loads(lines[-1])
    assert outcome["ev"] == "outcome"
    outcome["records"]["node-0004"] = {
        "state": "failed",
        "reason": "power lost during apply",
        "version": "2.0.0",
    }
    lines[-1] = json.dumps(outcome)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    result = run(replay_command, tampered, "--output", tmp_path / "replays")
    assert result.exit_code == 1, result.output
    assert "the outcome differs" in result.output
    assert (
        "node-0004: failed (power lost during apply) recorded, success (no reason) replayed"
        in result.output
    )
    assert "node-0002:" not in result.output


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("this is not a trace\n", 1),
        ('{"ev":"header","format":"ota-hil-trace/1","source":{}}\nnot json\n{"ev":"x"}\n', 2),
    ],
    ids=["plain-text", "bad-second-line"],
)
def test_replay_of_a_file_that_is_not_a_trace_names_file_and_line(
    tmp_path: Path, text: str, line: int
) -> None:
    """Exit 1 with one line naming the file and the line that is no trace event."""
    path = tmp_path / "notes.jsonl"
    path.write_text(text)
    result = run(replay_command, path, "--output", tmp_path / "replays")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"{path}, line {line}" in result.output


def test_replay_of_a_trace_from_an_unknown_source_says_which_it_knows(tmp_path: Path) -> None:
    """A header whose source kind is ``robot``: exit 1 naming the kind and the known ones."""
    path = tmp_path / "robot.jsonl"
    header = {
        "ev": "header",
        "format": "ota-hil-trace/1",
        "source": {"kind": "robot"},
        "seed": 0,
        "config": {},
    }
    path.write_text(json.dumps(header) + "\n")
    result = run(replay_command, path, "--output", tmp_path / "replays")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert str(path) in result.output
    assert "'robot'" in result.output
    assert "replay knows 'pytest' and 'field'" in result.output


# -- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (reproduce_command, ["--emit-feature", "--trace", "--json", "--all", "--timeout"]),
        (replay_command, ["--output"]),
        (import_command, ["--output", "-o", "--name"]),
    ],
    ids=["reproduce", "replay", "import"],
)
def test_help_names_the_key_options(command: click.Command, options: list[str]) -> None:
    """``--help`` exits 0 and lists the command's key options."""
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    for option in options:
        assert option in result.output
