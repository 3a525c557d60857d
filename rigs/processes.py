"""Processes a rig run starts beside the harness: the virtual coordinator board and an
external gateway's launcher. Each one logs to a file, is read only within a deadline, and
is stopped with its whole process group, so a stuck child never hangs a test run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from .rigfile import Rig

__all__ = ["ChildProcess", "ProcessError", "start_gateway_command", "start_virtual_board"]


class ProcessError(RuntimeError):
    """A child that did not start as it should; the message names its log."""


class ChildProcess:
    """A started child, its log file, and a stop that always finishes."""

    def __init__(self, name: str, process: subprocess.Popen[str], log_path: Path, log: IO[str]):
        self.name = name
        self.process = process
        self.log_path = log_path
        self._log = log

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; closes the log. Returns
        once the whole group is gone: a launcher shell exits before what it started."""
        deadline = time.monotonic() + grace
        if self.process.poll() is None or _group_members(self.process.pid):
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(grace)
                while _group_members(self.process.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
            except subprocess.TimeoutExpired:
                pass
            if self.process.poll() is None or _group_members(self.process.pid):
                _signal_group(self.process, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(5)
        for stream in (self.process.stdout, self._log):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc (empty where there
    is no /proc: then the group leader's exit is all that is waited for)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command's closing parenthesis: state, ppid, pgrp.
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _signal_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def with_this_python(command: str) -> str:
    """Run a leading ``ota-hil`` as this interpreter's (a venv's console script may not be
    on PATH)."""
    ota = shlex.quote(sys.executable) + " -m harness.cli"
    return re.sub(r"^ota-hil\b", ota, command)


def start_gateway_command(command: str, log_path: Path) -> ChildProcess:
    """Start an external gateway's launcher (the rig file's ``gateway.command``)."""
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        with_this_python(command),
        shell=True,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return ChildProcess("external gateway", process, log_path, log)


def start_virtual_board(
    rig: Rig, log_path: Path, *, timeout: float = 30.0
) -> tuple[ChildProcess, str, bytes]:
    """``ota-hil virtual-board`` for a rig with a ``virtual`` section: the process, the port
    it serves and its fleet's CA public key, read from its first lines within ``timeout``."""
    v = rig.virtual
    assert v is not None, f"rig {rig.name} has no virtual section"
    args = [
        sys.executable,
        "-m",
        "harness.cli",
        "virtual-board",
        "--radio",
        rig.radio,
        "--nodes",
        str(len(rig.nodes)),
        "--loss",
        str(v.loss),
        "--burst",
        str(v.burst),
        "--seed",
        str(v.seed),
        "--speed",
        str(v.speed),
        "--log-level",
        "warning",
    ]
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    board = ChildProcess("virtual board", process, log_path, log)
    try:
        values = _read_values(process, ("port", "ca"), timeout)
    except ProcessError as exc:
        board.stop(grace=2)
        raise ProcessError(f"the virtual board {exc}; see {log_path}") from None
    return board, values["port"], bytes.fromhex(values["ca"])


def _read_values(
    process: subprocess.Popen[str], keys: tuple[str, ...], timeout: float
) -> dict[str, str]:
    """``key value`` lines from the child's stdout until every key is seen; bounded even if
    the child prints nothing and never exits (a reader thread feeds a queue)."""
    lines: queue.Queue[str | None] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None

    def pump() -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stdout:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="child-stdout", daemon=True).start()
    values: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while not all(k in values for k in keys):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            wanted = " and ".join(keys)
            raise ProcessError(f"did not print its {wanted} within {timeout:g} s") from None
        if line is None:
            code = process.wait(5)
            raise ProcessError(f"exited with code {code} before printing its port")
        key, _, value = line.strip().partition(" ")
        values[key] = value.strip()
    return values
