"""The ``ota-hil`` commands as a person runs them: real processes, real ports, real signals."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import click
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.client import PlatformClient
from harness.protocol import DeviceSecret, credentials_for
from harness.trace import read_trace

OTA = [sys.executable, "-c", "from harness.cli import main; main()"]


class Proc:
    """A running ``ota-hil`` command whose stdout lines can be waited for."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.p = subprocess.Popen(
            [*OTA, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first line so far or within ``timeout`` that matches ``pattern``."""
        for line in self.lines:
            if m := re.search(pattern, line):
                return m
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if m := re.search(pattern, line):
                return m
        err = self.p.stderr.read() if self.p.poll() is not None else ""  # type: ignore[union-attr]
        pytest.fail(f"{self.args[0]}: no line matching {pattern!r}; stdout {self.lines}; {err}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            pytest.fail(f"{self.args[0]} did not stop within {timeout} s of SIGINT")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait()


def push(firmware: Path, platform: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *OTA,
            "push",
            str(firmware),
            "--platform",
            platform,
            "--product-id",
            "gateway-product",
            "--wait",
            "20",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "fw-2.0.0.bin"
    path.write_bytes(os.urandom(100_000))
    return path


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command and subcommand of ``group``, as the words that name it."""
    out = [list(prefix)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
        else:
            out.append([*prefix, name])
    return out


def test_the_commands_are_all_there() -> None:
    names = {" ".join(c) for c in _commands(main)}
    assert {"reproduce", "replay", "import", "report", "sim", "run", "up"} <= names


@pytest.mark.parametrize("command", _commands(main), ids=lambda c: " ".join(c) or "ota-hil")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and "--help" in result.output


def test_up_then_push_shows_the_record_go_waiting_processing_success(
    procs: list[Proc], firmware: Path
) -> None:
    up = Proc("up", "--log-level", "warning")
    procs.append(up)
    platform = up.expect(r"^platform\s+(http://\S+)").group(1)
    up.expect(r"^gateway\s+gateway-1 version 1\.0\.0")

    result = push(firmware, platform, "--version", "2.0.0", "--device", "gateway-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"gateway-1\s+waiting\s+0%", result.stdout), result.stdout
    assert re.search(r"gateway-1\s+success\s+100%", result.stdout), result.stdout
    assert "waiting -> processing -> success" in result.stdout

    bad = push(firmware, platform, "--version", "3.0.0", "--sign", "0" * 32)
    assert bad.returncode == 1, bad.stdout
    assert "sign mismatch" in bad.stdout
    assert up.stop() == 0


def test_gateway_driver_commands_go_together() -> None:
    result = CliRunner().invoke(
        main,
        [
            *("gateway", "--broker", "mqtt://127.0.0.1:1", "--product-id", "p"),
            *("--device-id", "d", "--driver-load-command", "insmod {path}"),
        ],
    )
    assert result.exit_code == 2
    assert "--driver-load-command and --driver-unload-command go together" in result.output


def test_broker_platform_and_gateway_as_separate_processes(
    procs: list[Proc], firmware: Path, tmp_path: Path
) -> None:
    broker = Proc("broker")
    procs.append(broker)
    url = broker.expect(r"listening on (mqtt://\S+)").group(1)
    platform = Proc(
        "platform",
        "--broker",
        url,
        "--device",
        "gateway-product/gw-9",
        "--check-interval",
        "0.5",
        "--log-level",
        "warning",
    )
    procs.append(platform)
    platform_url = platform.expect(r"^platform\s+(http://\S+)").group(1)
    state = tmp_path / "state"
    gateway = Proc(
        "gateway",
        "--broker",
        url,
        "--product-id",
        "gateway-product",
        "--device-id",
        "gw-9",
        "--state-dir",
        str(state),
        "--driver-load-command",
        "true",
        "--driver-unload-command",
        "true",
        "--log-level",
        "warning",
    )
    procs.append(gateway)
    gateway.expect(r"^gateway\s+gw-9")
    gateway.expect(r"^driver\s+gw-9-drivers version none")

    result = push(firmware, platform_url, "--version", "2.0.0", "--device", "gw-9", "--on-timer")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((state / "state.json").read_text())["versions"]["gw-9"] == "2.0.0"
    assert [gateway.stop(), platform.stop(), broker.stop()] == [0, 0, 0]


async def test_up_with_auth_checks_jetlinks_credentials(procs: list[Proc], firmware: Path) -> None:
    up = Proc("up", "--auth", "--log-level", "warning")
    procs.append(up)
    host, port = up.expect(r"^broker\s+mqtt://([\d.]+):(\d+)").groups()
    platform = up.expect(r"^platform\s+(http://\S+)").group(1)
    gateway_secret = DeviceSecret(
        up.expect(r"^secureId\s+(\S+)").group(1), up.expect(r"^secureKey\s+(\S+)").group(1)
    )

    # Not the gateway's own clientId: amqtt 0.12 drops a connected client's session when a
    # refused CONNECT reuses its clientId (docs/brokers.md), which would take the gateway off.
    assert len(gateway_secret.secure_key) == 32
    other = DeviceSecret("other-id", "other-key")
    async with PlatformClient(platform) as client:
        await client.save_device(
            "gateway-2", "gateway-product", secureId=other.secure_id, secureKey=other.secure_key
        )
    right = credentials_for("gateway-2", other)
    async with aiomqtt.Client(
        host,
        int(port),
        identifier=right.client_id,
        username=right.username,
        password=right.password,
    ):
        pass
    wrong = credentials_for("gateway-2", DeviceSecret(other.secure_id, "not-the-key"))
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            host,
            int(port),
            identifier=wrong.client_id,
            username=wrong.username,
            password=wrong.password,
        ):
            pass
    anonymous_refused = False
    try:
        async with aiomqtt.Client(host, int(port), identifier="someone"):
            pass
    except aiomqtt.MqttError:
        anonymous_refused = True
    assert anonymous_refused, "an anonymous client was let in although --auth is on"

    # The reference gateway itself got in with its credentials: a push reaches it.
    result = push(firmware, platform, "--version", "2.0.0", "--device", "gateway-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert up.stop() == 0


def test_up_with_the_container_broker_fails_at_once_without_docker() -> None:
    """No Docker engine runs here: this is the real failure path, nothing is mocked."""
    started = time.monotonic()
    result = subprocess.run(
        [*OTA, "up", "--broker", "container"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "Docker" in result.stderr, result.stderr
    assert time.monotonic() - started < 20


def test_push_to_a_platform_that_is_not_there_says_so(firmware: Path) -> None:
    result = push(firmware, "http://127.0.0.1:9", "--version", "2.0.0")
    assert result.returncode == 3
    assert "cannot reach the platform at http://127.0.0.1:9" in result.stderr


def test_run_writes_junit_and_allure_results(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    result = subprocess.run(
        [
            *OTA,
            "run",
            "--reports",
            str(reports),
            "--seed",
            "4",
            "-k",
            "reads",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
    assert "scenarios by feature" in result.stdout  # the summary table, by feature file
    assert "features/gateway_upgrade.feature" in result.stdout
    junit = (reports / "junit.xml").read_text()
    assert 'tests="1"' in junit and 'failures="0"' in junit
    results = [
        json.loads(p.read_text()) for p in (reports / "allure-results").glob("*-result.json")
    ]
    assert [r["status"] for r in results] == ["passed"]
    assert [s["name"] for s in results[0]["steps"]][-1].startswith("Then")
    assert "seed = 4" in (reports / "allure-results" / "environment.properties").read_text()

    # Its trace says how to run it again, and replay does: same outcome.
    [trace] = (reports / "traces").glob("*.jsonl")
    assert read_trace(trace).header["seed"] == 4
    replay = CliRunner().invoke(
        main, ["replay", str(trace), "--output", str(tmp_path / "replays")], env={"COLUMNS": "200"}
    )
    assert replay.exit_code == 0, replay.output
    assert "the outcome matches" in replay.output
    assert "normalised traces: identical" in replay.output


def test_platform_with_an_unknown_parent_device_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        main, ["platform", "--broker", "mqtt://127.0.0.1:1", "--device", "p/node-1/gw-404"]
    )
    assert result.exit_code == 2
    assert "--device" in result.output and "gw-404" in result.output


def test_platform_without_a_broker_fails_with_one_line() -> None:
    result = subprocess.run(
        [
            *OTA,
            "platform",
            "--broker",
            "mqtt://127.0.0.1:9",
            "--connect-timeout",
            "1",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "mqtt://127.0.0.1:9" in result.stderr


@pytest.mark.parametrize("workers", [["-n", "2"], ["-n2"], ["--numprocesses=2"]])
def test_run_refuses_parallel_workers_on_a_rig(workers: list[str]) -> None:
    """A rig is driven by one scenario at a time: xdist workers would fight for its lock."""
    result = CliRunner().invoke(
        main, ["run", "--target", "rig", "--rig", "rigs/virtual.yaml", *workers]
    )
    assert result.exit_code == 2
    assert "run it without -n" in result.output
