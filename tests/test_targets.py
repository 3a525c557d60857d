"""The same feature files on the other targets, as the nightly rig job runs them: through a
virtual coordinator board on a real pty, and against the reference gateway started as a
separate process (an "external" gateway on the harness's broker)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_features(tmp_path: Path, *args: str) -> tuple[ET.Element, str]:
    junit = tmp_path / "junit.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "features",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--broker",
            "embedded",
            f"--junitxml={junit}",
            f"--ota-logs={tmp_path / 'logs'}",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert junit.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert result.returncode == 0, result.stdout[-4000:]
    return suite, result.stdout


def test_fleet_scenarios_through_the_virtual_board_on_a_pty(tmp_path: Path) -> None:
    suite, out = run_features(
        tmp_path, "--target", "rig", "--rig", "rigs/virtual.yaml", "-k", "fleet or twice or rolls"
    )
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    assert int(suite.get("failures", 0)) == int(suite.get("errors", 0)) == 0
    assert tests - skipped >= 5, out[-2000:]  # the 324 outline rows and the push in two tasks
    assert "needs fault injection that rig virtual does not have" in out
    logs = list((tmp_path / "logs").rglob("coordinator.log"))
    assert logs and any("TransmitDone" in log.read_text() for log in logs)


def test_core_scenarios_against_an_external_gateway_process(tmp_path: Path) -> None:
    suite, out = run_features(
        tmp_path, "--target", "external", "--rig", "rigs/external-reference.yaml"
    )
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    assert int(suite.get("failures", 0)) == int(suite.get("errors", 0)) == 0
    assert tests - skipped >= 7, out[-2000:]  # push (md5, sha256), wrong sign, read, ...
    assert "target external has no nodes" in out
    assert list((tmp_path / "logs").rglob("external-gateway.log"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "rig"], "--target rig needs --rig FILE"),
        (["--target", "rig", "--rig", "rigs/external-reference.yaml"], "gateway.mode reference"),
    ],
)
def test_a_target_without_what_it_needs_is_a_usage_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "features",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "reads",
            "--broker",
            "embedded",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
