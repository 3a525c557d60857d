"""Tests for rigs.power (power switch commands, board reset) and rigs.lock (one job per rig)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import serial

from rigs.lock import RigBusy, RigLock
from rigs.power import NoPowerControl, PowerError, PowerSwitch, reset_board
from rigs.rigfile import PowerSpec, Rig, load_rig

ROOT = Path(__file__).parent.parent

# --- power ----------------------------------------------------------------------------


def relay(tmp_path: Path, **commands: str | float) -> PowerSwitch:
    return PowerSwitch(PowerSpec(**commands), "node-0001", cwd=tmp_path)  # type: ignore[arg-type]


def events(tmp_path: Path) -> list[str]:
    path = tmp_path / "events"
    return path.read_text().split() if path.exists() else []


def test_on_off_and_cycle_run_the_commands(tmp_path: Path) -> None:
    power = relay(tmp_path, on="echo on >> events", off="echo off >> events", cycle_pause=0.2)
    assert power.available() == ["on", "off", "cycle"]
    power.on()
    power.off()
    assert events(tmp_path) == ["on", "off"]
    started = time.monotonic()
    power.cycle()  # no cycle command: off, pause, on
    assert time.monotonic() - started >= 0.2
    assert events(tmp_path) == ["on", "off", "off", "on"]


def test_a_cycle_command_is_used_when_given(tmp_path: Path) -> None:
    power = relay(tmp_path, off="echo off >> events", cycle="echo cycle >> events")
    power.cycle()
    assert events(tmp_path) == ["cycle"]


def test_commands_run_in_the_rig_files_folder(tmp_path: Path) -> None:
    script = tmp_path / "relay.sh"
    script.write_text('#!/bin/sh\necho "$1" >> events\n')
    script.chmod(0o755)
    (tmp_path / "rig.yaml").write_text(
        textwrap.dedent("""\
        name: r
        coordinator: {port: /dev/ttyUSB0}
        nodes:
          - {id: node-0001, address: 1, power: {on: ./relay.sh 3-on, off: ./relay.sh 3-off}}
        """)
    )
    power = PowerSwitch.for_node(load_rig(tmp_path / "rig.yaml"), "node-0001")
    power.on()
    assert events(tmp_path) == ["3-on"]


def test_a_failing_command_names_node_command_exit_code_and_stderr(tmp_path: Path) -> None:
    command = "echo starting; echo relay 3 jammed >&2; exit 3"
    with pytest.raises(PowerError) as caught:
        relay(tmp_path, on=command).on()
    error = caught.value
    assert str(error) == (
        f"power on of node node-0001: `{command}` exited with code 3; stderr:\n  | relay 3 jammed"
    )
    assert (error.name, error.command, error.returncode) == ("node-0001", command, 3)
    assert not isinstance(error, NoPowerControl)


def test_only_the_tail_of_a_long_stderr_is_shown(tmp_path: Path) -> None:
    command = "for i in $(seq 1 400); do echo line-$i >&2; done; exit 1"
    with pytest.raises(PowerError) as caught:
        relay(tmp_path, off=command).off()
    message = str(caught.value)
    assert message.endswith("  | line-399\n  | line-400")
    assert "stderr:\n  | ...\n  | line-" in message and "  | line-12\n" not in message
    assert len(message) < 1000


def test_a_hanging_command_is_killed_with_its_children(tmp_path: Path) -> None:
    # The shell forks `sleep`; killing only the shell would leave it running.
    command = "sleep 30 & echo $! > sleeper; wait"
    started = time.monotonic()
    with pytest.raises(PowerError, match=r"did not finish within 0\.3 s \(killed\)"):
        relay(tmp_path, on=command, timeout=0.3).on()
    assert time.monotonic() - started < 3
    pid = int((tmp_path / "sleeper").read_text())
    time.sleep(0.1)
    status = Path(f"/proc/{pid}/status")
    if status.exists():  # a zombie waiting for a reaper is dead too
        state = next(ln for ln in status.read_text().splitlines() if ln.startswith("State:"))
        assert "Z" in state, state


def test_a_command_that_leaves_a_daemon_behind_does_not_block(tmp_path: Path) -> None:
    power = relay(tmp_path, on="sleep 20 & echo $! > daemon; echo started", timeout=5)
    started = time.monotonic()
    try:
        power.on()
        assert time.monotonic() - started < 2
    finally:
        os.kill(int((tmp_path / "daemon").read_text()), signal.SIGKILL)


def test_a_node_without_power_control_says_so() -> None:
    rig = load_rig(ROOT / "rigs" / "virtual.yaml")
    power = PowerSwitch.for_node(rig, "node-0002")
    assert power.available() == [] and not power.can("cycle")
    for action in (power.on, power.off, power.cycle):
        with pytest.raises(NoPowerControl) as caught:
            action()
        message = str(caught.value)
        assert message.startswith(f"{rig.path} has no power control for node node-0002: add")
        assert isinstance(caught.value, PowerError)


def test_a_missing_single_command_says_which(tmp_path: Path) -> None:
    power = relay(tmp_path, on="true")
    assert power.available() == ["on"]
    with pytest.raises(NoPowerControl, match="has no power off command for node node-0001"):
        power.off()
    with pytest.raises(NoPowerControl, match=r"no power cycle command .*both on: and off:"):
        power.cycle()


class LineRecorder:
    """Stands in for a serial.Serial: records what happens to DTR, RTS and the input."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object, float]] = []

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("dtr", "rts"):
            self.events.append((name, value, time.monotonic()))
        super().__setattr__(name, value)

    def reset_input_buffer(self) -> None:
        self.events.append(("flush", None, time.monotonic()))


@pytest.mark.parametrize("line", ["dtr", "rts"])
def test_reset_pulses_the_line(line: str) -> None:
    port = LineRecorder()
    reset_board(port, line, pulse=0.05)  # type: ignore[arg-type]
    assert [(name, value) for name, value, _ in port.events] == [
        (line, True),
        ("flush", None),
        (line, False),
    ]
    assert port.events[-1][2] - port.events[0][2] >= 0.05


def test_reset_on_a_real_serial_object_and_without_a_line() -> None:
    port = serial.serial_for_url("loop://", timeout=0.1)
    try:
        reset_board(port, "rts", pulse=0)
        assert port.rts is False
        with pytest.raises(NoPowerControl, match=r"no reset line \(coordinator\.reset: none\)"):
            reset_board(port, "none")
    finally:
        port.close()


# --- the rig lock ---------------------------------------------------------------------

HOLDER = """\
import sys
from rigs.lock import RigBusy, RigLock
lock = RigLock(sys.argv[1], sys.argv[2])
try:
    lock.acquire(float(sys.argv[3]))
except RigBusy as exc:
    print("busy:", exc, flush=True)
    sys.exit(3)
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def holder(lock_path: Path, owner: str, timeout: float = 0.0) -> subprocess.Popen[str]:
    """A second process that takes the lock, says so, and keeps it until its stdin closes."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path), owner, str(timeout)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_processes_exclude_each_other(tmp_path: Path) -> None:
    lock_path = tmp_path / "bench-3.lock"
    child = holder(lock_path, "nightly job 42")
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        ours = RigLock(lock_path, "pytest here")
        with pytest.raises(RigBusy) as caught:
            ours.acquire(timeout=0.2)
        message = str(caught.value)
        assert message.startswith(f"rig lock {lock_path} is held by nightly job 42 since ")
        assert "gave up after 0.2 s" in message
        assert caught.value.holder is not None and caught.value.lock_path == lock_path
        child.communicate("", timeout=5)  # the child lets go
        assert ours.acquire(timeout=2).is_held
        assert ours.holder() is not None and ours.holder().startswith("pytest here since ")
        # and now the other way round
        second = holder(lock_path, "nightly job 43")
        out, _ = second.communicate("", timeout=10)
        assert second.returncode == 3 and f"rig lock {lock_path} is held by pytest here" in out
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=5)
    ours.release()
    assert not ours.is_held and not ours.info_path.exists()


def test_a_holder_that_dies_frees_the_rig(tmp_path: Path) -> None:
    lock_path = tmp_path / "bench-3.lock"
    child = holder(lock_path, "a job that crashes")
    assert child.stdout is not None and child.stdout.readline() == "locked\n"
    child.kill()
    child.communicate(timeout=5)
    with RigLock(lock_path, "the next job", timeout=2) as lock:
        assert lock.is_held and lock.holder().startswith("the next job")  # type: ignore[union-attr]


def test_in_one_process_the_lock_also_excludes_and_is_released_by_the_context(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locks" / "r.lock"
    with RigLock(path, "first") as first:
        assert first.acquire(0) is first  # already ours: nothing to do
        with pytest.raises(RigBusy, match="held by first since"):
            RigLock(path, "second").acquire(0)
    assert not first.is_held and not first.info_path.exists()
    with RigLock(path, "second"):
        pass
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        RigLock(path).acquire(-1)


def test_a_rigs_lock_lives_where_the_rig_file_says(tmp_path: Path) -> None:
    rig = Rig.from_dict({"name": "bench-9", "lock": str(tmp_path / "bench-9.lock")})
    lock = RigLock.for_rig(rig, owner="me")
    assert lock.path == tmp_path / "bench-9.lock"
    assert lock.info_path == tmp_path / "bench-9.lock.owner"
    assert "pid" in RigLock(tmp_path / "x.lock").owner  # the default owner
