"""The shipped example field file reproduces its failure, the same way each run, and the
scenario emitted from it is the one committed under features/field/ (which the suite runs
on every broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from gherkin.parser import Parser

from harness.trace import TraceRecorder, first_difference, normalise, read_trace
from sims.feature_writer import feature_for
from sims.fieldfile import field_from_dict, load_field
from sims.reproduce import Reproduction, reproduce

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path("sims/fields/example-site7.yaml")
EMITTED = ROOT / "features" / "field" / "example_site7.feature"


def _run(path: Path) -> tuple[Reproduction, list[dict]]:
    spec = load_field(ROOT / EXAMPLE)
    source = {"kind": "field", "path": str(EXAMPLE), "broker": "embedded"}
    with TraceRecorder(path, source=source, seed=spec.seed, config=spec.to_dict()) as trace:
        result = asyncio.run(reproduce(spec, trace=trace))
    return result, normalise(read_trace(path).all)


def test_the_example_field_reproduces_its_failure_deterministically(tmp_path: Path) -> None:
    first, first_trace = _run(tmp_path / "first.jsonl")
    second, second_trace = _run(tmp_path / "second.jsonl")

    assert first.differences() == []  # what the field file says was observed
    assert set(first.failed) == {"node-0005"}
    assert "power lost during apply" in (first.failed["node-0005"].reason or "")
    assert first.outcomes["node-0005"].version_after == "1.0.0"
    assert first.outcomes["node-0017"].power_cuts == 1  # it lost power, resumed, succeeded
    assert first.outcomes["node-0017"].state == "success"
    # Every scheduled fault fell where the file puts it, in radio time.
    assert [at for _, at in first.schedule] == [20.0, 35.0, 40.0, 50.0]

    assert first.outcomes == second.outcomes
    assert first.schedule == second.schedule
    assert first_difference(first_trace, second_trace) is None

    emitted = feature_for(first.field, first, str(EXAMPLE))
    assert emitted == EMITTED.read_text(), (
        "features/field/example_site7.feature is not what --emit-feature writes now; emit it "
        "again: ota-hil reproduce sims/fields/example-site7.yaml "
        "--emit-feature features/field/example_site7.feature"
    )


def test_a_node_fault_becomes_a_step_only_when_it_is_the_nodes_only_one() -> None:
    """A step sets a node's faults while the fleet and the schedule merge theirs: a node
    faulty twice keeps its schedule fault in the fleet's YAML, so the scenario is the same
    run as the reproduction. Download faults keep their exact share and count; notes are
    comments, never Gherkin."""
    spec = field_from_dict(
        {
            "name": "two faults on one node",
            "notes": "Scenario: a note that must not become one",
            "firmware": {"version": "2.0.0", "size_kib": 8},
            "fleet": {
                "nodes": 6,
                "overrides": [{"nodes": "2", "faults": {"fail_self_test": True}}],
            },
            "schedule": [
                {"node": 2, "power_loss_at_block": 50},
                {"node": 4, "forged_certificate": True},
                {"download": "cut", "at": "62.5%", "times": 2},
            ],
        }
    )
    text = feature_for(spec, Reproduction(spec), "f.yaml")
    assert "And node 4 has a forged birth certificate" in text
    assert "node 2 loses power" not in text
    fleet = yaml.safe_load(text.split('"""')[1].replace("\n      ", "\n"))
    assert {"nodes": "2", "faults": {"power_loss_at_block": 50}} in fleet["overrides"]
    assert "And the download is cut at 62.5% in 2 downloads" in text
    assert "  # Scenario: a note" in text
    feature = Parser().parse(text)["feature"]
    assert [c["scenario"]["name"] for c in feature["children"]] == [
        "two faults on one node: the nodes end as they did in the field"
    ]
