"""The same feature files on the other targets, as the nightly rig job runs them: through a
virtual coordinator board on a real pty, and against the reference gateway started as a
separate process (an "external" gateway on the harness's broker)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_features(tmp_path: Path, *args: str, ok: bool = True) -> tuple[ET.Element, str]:
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
            f"--ota-traces={tmp_path / 'traces'}",
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
    assert (result.returncode == 0) == ok, result.stdout[-4000:]
    return suite, result.stdout


def test_fleet_scenarios_through_the_virtual_board_on_a_pty(tmp_path: Path) -> None:
    suite, out = run_features(
        tmp_path, "--target", "rig", "--rig", "rigs/virtual.yaml", "-k", "fleet or twice or rolls"
    )
    ends = ("failure", "error", "skipped")
    passed = {
        case.get("name")
        for case in suite.iter("testcase")
        if not any(case.find(end) is not None for end in ends)
    }
    # Each scenario's JUnit case names its feature file.
    assert all(
        any(p.get("name") == "feature" for p in case.iter("property"))
        for case in suite.iter("testcase")
    )
    assert int(suite.get("failures", 0)) == int(suite.get("errors", 0)) == 0
    # The outline row with the virtual radio's loss, and the push in two tasks.
    assert any("324-10-1" in name for name in passed), passed
    assert any("twice" in name for name in passed), passed
    assert "needs fault injection that rig virtual does not have" in out
    assert "the radio of rig virtual has 10% and 1" in out  # the other loss rows
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


def external_rig(tmp_path: Path, **gateway: str | float) -> Path:
    """A rig file for an external gateway, its gateway section merged with ``gateway``."""
    spec = {
        "mode": "external",
        "product_id": "gateway-product",
        "device_id": "gateway-7",
        **gateway,
    }
    rig = tmp_path / "bench.yaml"
    rig.write_text(yaml.safe_dump({"name": "bench", "gateway": spec}))
    return rig


def test_an_external_gateway_with_credentials_is_checked_by_the_broker(tmp_path: Path) -> None:
    command = (
        "ota-hil gateway --broker {broker} --product-id {product_id} --device-id {device_id} "
        "--state-dir {state_dir} --secure-id {secure_id} --secure-key {secure_key} "
        "--log-level warning"
    )
    rig = external_rig(
        tmp_path, command=command, secure_id="bench-secure-id", secure_key="bench-secure-key"
    )
    suite, out = run_features(tmp_path, "--target", "external", "--rig", str(rig), "-k", "reads")
    assert int(suite.get("tests", 0)) - int(suite.get("skipped", 0)) == 1, out[-2000:]


def test_an_external_gateway_with_wrong_credentials_never_comes_online(tmp_path: Path) -> None:
    wrong_key = f"not-the-key-{os.getpid()}-{tmp_path.name}"
    command = (
        "ota-hil gateway --broker {broker} --product-id {product_id} --device-id {device_id} "
        f"--state-dir {{state_dir}} --secure-id {{secure_id}} --secure-key {wrong_key} "
        "--log-level warning"
    )
    rig = external_rig(
        tmp_path,
        command=command,
        secure_id="bench-secure-id",
        secure_key="bench-secure-key",
        online_timeout=2,
    )
    _, out = run_features(
        tmp_path, "--target", "external", "--rig", str(rig), "-k", "reads", ok=False
    )
    assert "gateway gateway-7 did not report its firmware at mqtt://127.0.0.1:" in out
    assert "external-gateway.log" in out
    # The gateway that never came online was stopped with the scenario, not left running.
    left = subprocess.run(["pgrep", "-af", wrong_key], capture_output=True, text=True)
    assert left.returncode == 1, f"gateway processes left running: {left.stdout}"


def test_a_gateway_at_the_bench_is_waited_for_with_a_deadline(tmp_path: Path) -> None:
    rig = external_rig(tmp_path, online_timeout=0.5)
    _, out = run_features(
        tmp_path, "--target", "external", "--rig", str(rig), "-k", "reads", "-s", ok=False
    )
    assert "ota-hil: waiting up to 0.5 s for gateway gateway-7" in out
    assert "did not report its firmware" in out and "within 0.5 s" in out


BAD_RIG = "name: bench\ncoordinator: {port: /dev/ttyUSB0, baud: fast}\nnodes: []\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "rig"], "--target rig needs --rig FILE"),
        (["--target", "rig", "--rig", "rigs/external-reference.yaml"], "gateway.mode reference"),
        (["--target", "rig", "--rig", "{bad}"], "coordinator.baud"),
    ],
)
def test_a_target_without_what_it_needs_is_a_usage_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_RIG)
    args = [a.format(bad=bad) for a in args]
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
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert message in result.stdout + result.stderr


def test_ota_hil_run_names_what_is_wrong_in_a_rig_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_RIG)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "harness.cli", "run", "--target", "rig"),
            *("--rig", str(bad), "--reports", str(tmp_path / "reports")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(bad) in result.stderr and "coordinator.baud" in result.stderr
    assert "line 2" in result.stderr
    assert not (tmp_path / "reports").exists()
