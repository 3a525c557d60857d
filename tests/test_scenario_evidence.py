"""What a scenario leaves behind, proven on real pytest runs in a child process: its trace
is the same for the same seed, and a failing scenario's Allure result carries the
transcripts and pictures a reader needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.trace import first_difference, normalise, read_trace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FEATURE = ROOT / "features" / "field" / "example_site7.feature"
FLEET_SCENARIO = (
    "features/test_scenarios.py::test_a_node_that_loses_power_midtransfer_resumes_from_its_bitmap"
)


def _project(tmp_path: Path, feature: str) -> Path:
    """A scenario folder of its own that uses the harness's step library."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text('pytest_plugins = ["features.conftest"]\n')
    (project / "test_it.py").write_text("from pytest_bdd import scenarios\n\nscenarios('.')\n")
    (project / "it.feature").write_text(feature)
    return project


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_failing_scenario_carries_its_evidence_in_allure(tmp_path: Path) -> None:
    feature = EXAMPLE_FEATURE.read_text().replace(
        "rolled back to 1.0.0: power lost during apply", "a reason this node never gives"
    )
    project = _project(tmp_path, feature)
    results = tmp_path / "allure-results"
    run = _pytest(
        project,
        f"--rootdir={project}",
        f"--alluredir={results}",
        f"--ota-traces={tmp_path / 'traces'}",
        f"--ota-logs={tmp_path / 'logs'}",
        "--broker=embedded",
        "--ota-seed=3",
    )
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    [result] = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    assert result["status"] == "failed"
    assert "reasons that are not true to the fault" in result["statusDetails"]["message"]
    attachments = {a["name"]: results / a["source"] for a in result["attachments"]}

    transcript = attachments["MQTT transcript"].read_text()
    assert "/child/node-0005/firmware/upgrade " in transcript
    assert "!  broker: down" in transcript  # the outage, where it fell
    frames = attachments["node frames (excerpt)"].read_text()
    assert "BLOCK" in frames and "omitted" in frames

    chart = ET.parse(attachments["progress per device"]).getroot()
    assert chart.tag.endswith("svg")
    legend = " ".join(t.text or "" for t in chart.iter() if t.tag.endswith("text"))
    assert "node-0005 (failed)" in legend
    radio = ET.parse(attachments["progress per device over radio time"]).getroot()
    assert "seconds of radio time (simulated)" in " ".join(t.text or "" for t in radio.iter())

    png = attachments["block reception per node"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert height % 24 == 0 and width > 1000  # 24 nodes; 1,218 blocks of the 64 KiB image

    trace = read_trace(attachments["trace (JSON Lines)"])
    assert trace.header["seed"] == 3 and trace.header["source"]["kind"] == "pytest"
    assert trace.outcome is not None and trace.outcome["status"] == "failed"
    assert trace.outcome["records"]["node-0005"]["state"] == "failed"
    assert any(e["on"] == "node-0017" for e in trace.of("fault"))
    downloads = [e for e in trace.of("http") if not e.get("api")]
    assert any(e["cut"] is False and e["status"] == 200 for e in downloads)
    assert any(e["method"] == "POST" for e in trace.of("http") if e.get("api"))  # the task

    environment = (results / "environment.properties").read_text()
    assert "seed = 3" in environment and "target = sim" in environment


def test_the_same_seed_gives_the_same_trace(tmp_path: Path) -> None:
    """Two processes (each its own hash seed, broker, ports and timing) run one scenario
    with one seed: their traces are equal once normalised. They run side by side."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {}
    for name in ("first", "second"):
        runs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                FLEET_SCENARIO + "[embedded]",
                f"--ota-traces={tmp_path / name}",
                f"--ota-logs={tmp_path / 'logs' / name}",
                "--broker=embedded",
                "--ota-seed=5",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    traces = {}
    for name, process in runs.items():
        out, _ = process.communicate(timeout=240)
        assert process.returncode == 0, out[-3000:]
        [path] = (tmp_path / name).glob("*.jsonl")
        trace = read_trace(path)
        assert trace.header["seed"] == 5
        traces[name] = normalise(trace.all)
    frames = [e for e in traces["first"] if e["ev"] == "frame"]
    assert len(frames) > 300 and any(e.get("got") for e in frames)  # a real radio trace
    assert first_difference(traces["first"], traces["second"]) is None
