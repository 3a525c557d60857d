"""The shipped example field file reproduces its failure, the same way each run, and the
scenario emitted from it is the one committed under features/field/ (which the suite runs
on every broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness.trace import TraceRecorder, first_difference, normalise, read_trace
from sims.feature_writer import feature_for
from sims.fieldfile import load_field
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
