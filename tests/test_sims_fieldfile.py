"""Tests for sims.fieldfile: field files load, round-trip, become fleets with the schedule's
node faults, and their errors name the file, the line and the field path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sims.fieldfile import (
    BrokerOutage,
    DownloadFault,
    FieldFileError,
    FieldSpec,
    LinkFault,
    NodeFault,
    field_from_dict,
    load_field,
)
from sims.fleetfile import FaultSpec

COMPLETE = """\
name: node 17 browns out
seed: 7
firmware:
  version: 2.1.0
  size_kib: 64
fleet:
  radio: 324
  nodes: 24
  loss: 0.05
  burst: 2
  seed: 3
schedule:
  - node: 17
    power_loss_at_block: 300
  - broker: down
    from: 12
    to: 30
  - mqtt: duplicate
    from: 5
    to: 8
    topic: "/gateway-product/#"
    direction: up
  - download: stall
    at: 60%
    seconds: 1.5
  - download: cut
    at: 0.4
    times: 2
observed:
  node-0017:
    state: failed
    reason: power lost
notes: from incident 42
"""

EXAMPLE = Path(__file__).resolve().parents[1] / "sims" / "fields" / "example-site7.yaml"

#: A small valid file that the error cases below extend (lines 1-6).
BASE = """\
name: x
firmware:
  version: 2.0.0
  size_kib: 4
fleet:
  nodes: 24
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "field.yaml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> FieldFileError:
    path = write(tmp_path, text)
    with pytest.raises(FieldFileError) as info:
        load_field(path)
    assert str(path) in str(info.value)
    return info.value


# --- a valid file ---------------------------------------------------------------------


def test_a_complete_file_loads(tmp_path: Path) -> None:
    """Every part of the file arrives in the spec, with its kind and values."""
    spec = load_field(write(tmp_path, COMPLETE))
    assert (spec.name, spec.seed, spec.notes) == ("node 17 browns out", 7, "from incident 42")
    assert (spec.firmware.version, spec.firmware.size_kib) == ("2.1.0", 64)
    assert (spec.fleet.radio, spec.fleet.nodes, spec.fleet.loss, spec.fleet.burst) == (
        "324",
        24,
        0.05,
        2.0,
    )
    node, broker, mqtt, stall, cut = spec.schedule
    assert isinstance(node, NodeFault) and node.node == "17"
    assert node.faults() == FaultSpec(power_loss_at_block=300)
    assert isinstance(broker, BrokerOutage) and (broker.start, broker.end) == (12.0, 30.0)
    assert isinstance(mqtt, LinkFault)
    assert (mqtt.mqtt, mqtt.topic, mqtt.direction) == ("duplicate", "/gateway-product/#", "up")
    assert isinstance(stall, DownloadFault)
    assert (stall.download, stall.at, stall.seconds, stall.times) == ("stall", 0.6, 1.5, 1)
    assert isinstance(cut, DownloadFault)
    assert (cut.download, cut.at, cut.times) == ("cut", 0.4, 2)
    assert spec.observed["node-0017"].state == "failed"
    assert spec.observed["node-0017"].reason == "power lost"
    assert spec.system_faults == [broker, mqtt, stall, cut]
    assert spec.needs_link_proxy
    assert stall.describe() == "the download stalls at 60% for 1.5 seconds"


def test_to_yaml_round_trips_to_an_equal_spec(tmp_path: Path) -> None:
    spec = load_field(write(tmp_path, COMPLETE))
    text = spec.to_yaml()
    again = field_from_dict(yaml.safe_load(text), "again")
    assert again == spec
    assert again.to_yaml() == text
    # Each schedule item leads with its kind, as a person writes it.
    items = yaml.safe_load(text)["schedule"]
    assert [next(iter(item)) for item in items] == [
        "node",
        "broker",
        "mqtt",
        "download",
        "download",
    ]


def test_fleet_spec_has_the_schedules_node_faults_and_the_fields_seed(tmp_path: Path) -> None:
    spec = load_field(write(tmp_path, COMPLETE))
    fleet = spec.fleet_spec()
    assert fleet.seed == 7  # the field's, not the fleet's 3
    assert spec.fleet.seed == 3
    _, _, _, faults = fleet.per_node()
    assert faults[17].power_loss_at_block == 300
    assert [i for i, f in enumerate(faults) if f.active] == [17]
    # The fleet itself is left as written.
    assert not any(f.active for f in spec.fleet.per_node()[3])


def test_the_shipped_example_loads_and_round_trips() -> None:
    spec = load_field(EXAMPLE)
    assert (spec.seed, spec.fleet.nodes, spec.firmware.version) == (7, 24, "2.1.0")
    assert field_from_dict(yaml.safe_load(spec.to_yaml())) == spec
    losses, _, versions, faults = spec.fleet_spec().per_node()
    assert faults[17] == FaultSpec(power_loss_at_block=300)
    assert faults[5] == FaultSpec(power_loss_during_apply=True)
    assert losses[18:21].tolist() == [0.35] * 3 and versions[21] == "0.9.0"


def test_a_schedule_node_fault_merges_with_the_fleets_own_faults(tmp_path: Path) -> None:
    text = BASE + (
        "  overrides:\n"
        "    - nodes: 17\n"
        "      faults:\n"
        "        offline: true\n"
        "schedule:\n"
        "  - node: 17\n"
        "    power_loss_at_block: 300\n"
    )
    spec = load_field(write(tmp_path, text))
    assert spec.fleet.per_node()[3][17] == FaultSpec(offline=True)
    faults = spec.fleet_spec().per_node()[3]
    assert faults[17] == FaultSpec(offline=True, power_loss_at_block=300)


@pytest.mark.parametrize("at", ["60%", "60 %", 0.6, "60.0%"])
def test_a_share_is_a_percentage_or_a_fraction(at: str | float) -> None:
    data = yaml.safe_load(BASE)
    data["schedule"] = [{"download": "cut", "at": at}]
    (item,) = field_from_dict(data).schedule
    assert isinstance(item, DownloadFault)
    assert item.at == pytest.approx(0.6)
    assert item == DownloadFault(download="cut", at=0.6)


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field", "line", "expected"),
    [
        ("colour: red\n", "colour", 7, "unknown field; valid fields: name, seed, firmware"),
        (
            "schedule:\n  - broker: down\n    from: 10\n    to: 5\n",
            "schedule[0]",
            8,
            "'to' (5) must come after 'from' (10)",
        ),
        (
            "schedule:\n  - broker: down\n    from: 10\n    to: 10\n",
            "schedule[0]",
            8,
            "'to' (10) must come after 'from' (10)",
        ),
        (
            "schedule:\n  - download: stall\n    at: 50%\n",
            "schedule[0]",
            8,
            "a stall needs 'seconds'",
        ),
        (
            "schedule:\n  - node: 1\n    offline: true\n  - weird: 1\n",
            "schedule[1]",
            10,
            "starts with one of broker:, mqtt:, download:, node:",
        ),
        (
            "schedule:\n  - download: cut\n    at: lots\n",
            "schedule[0].at",
            9,
            "expected a share like 60% or 0.6, got 'lots'",
        ),
        ("  loss: 2\n", "fleet.loss", 7, "less than or equal to 0.95 (got 2)"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, extra: str, field: str, line: int, expected: str
) -> None:
    error = refused(tmp_path, BASE + extra)
    assert len(error.problems) == 1, error.problems
    assert (error.field, error.line) == (field, line)
    assert expected in error.reason
    assert f"line {line}, {field}: " in str(error)


def test_a_firmware_of_size_zero_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, BASE.replace("size_kib: 4", "size_kib: 0"))
    assert (error.field, error.line) == ("firmware.size_kib", 4)
    assert "greater than or equal to 1 (got 0)" in error.reason


def test_a_node_beyond_the_fleet_is_named_by_its_schedule_item(tmp_path: Path) -> None:
    error = refused(tmp_path, BASE + "schedule:\n  - node: 99\n    offline: true\n")
    assert "node 99 does not exist: the fleet has 24 nodes (0..23)" in error.reason
    assert error.field == "schedule[0].node"
    assert error.line == 8


def test_several_problems_are_listed_at_once(tmp_path: Path) -> None:
    text = (
        BASE.replace("size_kib: 4", "size_kib: 0")
        + "  loss: 2\n"
        + "colour: red\n"
        + "schedule:\n  - download: stall\n    at: 50%\n"
    )
    error = refused(tmp_path, text)
    found = {(field, line) for field, line, _ in error.problems}
    assert found == {
        ("firmware.size_kib", 4),
        ("fleet.loss", 7),
        ("colour", 8),
        ("schedule[0]", 10),
    }
    message = str(error)
    assert message.startswith(f"{tmp_path / 'field.yaml'}: 4 problems:\n")
    assert "line 10, schedule[0]: a stall needs 'seconds'" in message
    assert "line 8, colour: unknown field" in message


def test_an_unknown_item_is_one_problem_among_the_others(tmp_path: Path) -> None:
    """An item of no known kind does not hide the file's other problems: a window that
    ends before it starts and a firmware of size 0 are listed with it."""
    text = BASE.replace("size_kib: 4", "size_kib: 0") + (
        "schedule:\n  - broker: down\n    from: 50\n    to: 40\n  - weird: 1\n  - 7\n"
    )
    error = refused(tmp_path, text)
    assert sorted(error.problems, key=lambda p: p[1] or 0) == [
        ("firmware.size_kib", 4, "Input should be greater than or equal to 1 (got 0)"),
        ("schedule[0]", 8, "'to' (40) must come after 'from' (50)"),
        ("schedule[1]", 11, "a schedule item starts with one of broker:, mqtt:, download:, node:"),
        ("schedule[2]", 12, "a schedule item starts with one of broker:, mqtt:, download:, node:"),
    ]
    assert str(error).startswith(f"{tmp_path / 'field.yaml'}: 4 problems:\n")


@pytest.mark.parametrize(
    ("item", "field", "line", "expected"),
    [
        (
            "  - broker: down\n    form: 10\n    to: 20\n",
            "schedule[0].form",
            9,
            "unknown field; valid fields: from, to, broker",
        ),
        (
            "  - mqtt: reorder\n    from: 10\n    till: 20\n",
            "schedule[0].till",
            10,
            "unknown field; valid fields: from, to, mqtt, topic, direction",
        ),
        (
            "  - broker: down\n    from: -1\n    to: 20\n",
            "schedule[0].from",
            9,
            "greater than or equal to 0 (got -1)",
        ),
        ("  - broker: down\n    from: 10\n    to: 0\n", "schedule[0].to", 10, "greater than 0"),
        ("  - broker: down\n    to: 20\n", "schedule[0].from", 8, "required field is missing"),
        (
            "  - mqtt: duplicate\n    from: soon\n    to: 20\n",
            "schedule[0].from",
            9,
            "valid number",
        ),
    ],
)
def test_window_problems_name_the_fields_as_the_file_does(
    tmp_path: Path, item: str, field: str, line: int, expected: str
) -> None:
    """A window's fields are ``from`` and ``to`` in the file, in paths and in the lists of
    valid fields, never the Python names ``start`` and ``end``."""
    error = refused(tmp_path, BASE + "schedule:\n" + item)
    assert (field, line) in {(f, n) for f, n, _ in error.problems}, error.problems
    reason = next(r for f, _, r in error.problems if f == field)
    assert expected in reason
    for path, _, reason in error.problems:
        assert not re.search(r"\b(start|end)\b", f"{path} {reason}"), (path, reason)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "expected a mapping of fields, got list"),
        ("", "expected a mapping of fields, got nothing"),
        ("just words\n", "expected a mapping of fields, got str"),
    ],
)
def test_files_that_are_not_field_files(tmp_path: Path, text: str, expected: str) -> None:
    error = refused(tmp_path, text)
    assert (error.field, error.line) == (None, None)
    assert error.reason == expected


def test_a_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    error = refused(tmp_path, "name: x\nfirmware: [1, 2\n")
    assert error.field is None and error.line == 3
    assert error.reason.startswith("YAML syntax error: ")


def test_an_unreadable_path_is_a_field_file_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FieldFileError) as info:
        load_field(missing)
    assert str(missing) in str(info.value)
    assert info.value.reason.startswith("cannot read the file: ")
    with pytest.raises(FieldFileError, match="cannot read the file"):
        load_field(tmp_path)  # a folder


def test_dicts_are_checked_like_files() -> None:
    data = yaml.safe_load(BASE)
    data["firmware"]["size_kib"] = 0
    with pytest.raises(FieldFileError) as info:
        field_from_dict(data, "incident-42")
    assert info.value.source == "incident-42"
    assert (info.value.field, info.value.line) == ("firmware.size_kib", None)
    assert isinstance(field_from_dict(yaml.safe_load(BASE)), FieldSpec)
