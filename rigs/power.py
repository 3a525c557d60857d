"""Board control on a rig: a node's power switch commands and a board reset over a serial line.

Power is whatever the lab has (a relay card, a PDU, a USB hub with per-port power, a
smart plug): the rig file gives one shell command per action and the harness runs it.
A scenario that needs power control asks for it and skips, with
:class:`NoPowerControl`'s reason, on a rig that has none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from typing import IO, Literal, Protocol

from .rigfile import PowerSpec, Rig

__all__ = ["NoPowerControl", "PowerError", "PowerSwitch", "reset_board"]

log = logging.getLogger("ota_hil.rigs.power")

#: How much of a failed command's stderr an error shows.
STDERR_TAIL = 500

PowerAction = Literal["on", "off", "cycle"]


class PowerError(RuntimeError):
    """A power or reset action that failed: says which, the command, its exit code and
    the tail of its stderr."""

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        command: str | None = None,
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.name = name
        self.command = command
        self.returncode = returncode
        self.stderr = stderr


class NoPowerControl(PowerError):
    """The rig file has no command for this action: skip the scenario with this reason."""


class PowerSwitch:
    """A node's power, switched by the rig file's shell commands.

    ``spec`` None means the rig file has no power control for the node: every action
    raises :class:`NoPowerControl`. Commands run with ``shell=True`` in ``cwd`` (the rig
    file's folder for :meth:`for_node`), stdin closed, within ``spec.timeout`` seconds;
    the whole process group is killed when they overrun.
    """

    def __init__(
        self,
        spec: PowerSpec | None,
        name: str,
        *,
        cwd: str | os.PathLike[str] | None = None,
        source: str | None = None,
    ) -> None:
        self.spec = spec
        self.name = name
        self.cwd = cwd
        #: The rig file, for messages.
        self.source = source

    @classmethod
    def for_node(cls, rig: Rig, node_id: str) -> PowerSwitch:
        """The power switch of ``node_id`` in ``rig`` (KeyError if the rig has no such node)."""
        node = rig.node(node_id)
        folder = rig.path.parent if rig.path is not None else None
        source = str(rig.path) if rig.path is not None else f"rig {rig.name}"
        return cls(node.power, node.id, cwd=folder, source=source)

    def __repr__(self) -> str:
        return f"<PowerSwitch {self.name} {self.available() or 'none'}>"

    def available(self) -> list[PowerAction]:
        """The actions this node's rig file entry allows."""
        spec = self.spec
        if spec is None:
            return []
        actions: list[PowerAction] = []
        if spec.on is not None:
            actions.append("on")
        if spec.off is not None:
            actions.append("off")
        if spec.cycle is not None or (spec.on is not None and spec.off is not None):
            actions.append("cycle")
        return actions

    def can(self, action: PowerAction) -> bool:
        return action in self.available()

    def on(self) -> None:
        self._run("on", self._command("on"))

    def off(self) -> None:
        self._run("off", self._command("off"))

    def cycle(self) -> None:
        """The ``cycle`` command, else ``off``, ``cycle_pause`` seconds, ``on``."""
        if self.spec is not None and self.spec.cycle is not None:
            self._run("cycle", self.spec.cycle)
            return
        if not self.can("cycle"):
            raise self._missing("cycle", "power: {cycle: ...} or both on: and off:")
        assert self.spec is not None and self.spec.on is not None and self.spec.off is not None
        self._run("off", self.spec.off)
        time.sleep(self.spec.cycle_pause)
        self._run("on", self.spec.on)

    # --- running a command ------------------------------------------------------------

    def _command(self, action: Literal["on", "off"]) -> str:
        command = getattr(self.spec, action, None) if self.spec is not None else None
        if command is None:
            raise self._missing(action, f"power: {{{action}: ...}}")
        return command

    def _missing(self, action: str, hint: str) -> NoPowerControl:
        source = self.source or "the rig file"
        what = "no power control" if self.spec is None else f"no power {action} command"
        return NoPowerControl(
            f"{source} has {what} for node {self.name}: add {hint} to the node to run "
            f"scenarios that switch its power",
            name=self.name,
        )

    def _run(self, action: str, command: str) -> None:
        assert self.spec is not None
        timeout = self.spec.timeout
        log.info("power %s %s: %s", action, self.name, command)
        started = time.monotonic()
        # Output goes to files, not pipes: a command that leaves a daemon behind (holding
        # the pipe) must not make the harness wait for that daemon.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    command,
                    shell=True,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                raise PowerError(
                    f"power {action} of node {self.name}: cannot run `{command}`: {exc}",
                    name=self.name,
                    command=command,
                ) from None
            try:
                returncode = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                tail = _tail(err)
                raise PowerError(
                    f"power {action} of node {self.name}: `{command}` did not finish within "
                    f"{timeout:g} s (killed){_show(tail)}",
                    name=self.name,
                    command=command,
                    stderr=tail,
                ) from None
            tail = _tail(err)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("power %s %s output: %s", action, self.name, _tail(out).strip())
        if returncode != 0:
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with code {returncode}"
            )
            raise PowerError(
                f"power {action} of node {self.name}: `{command}` {how}{_show(tail)}",
                name=self.name,
                command=command,
                returncode=returncode,
                stderr=tail,
            )
        log.debug("power %s %s took %.2f s", action, self.name, time.monotonic() - started)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(2)


def _tail(file: IO[bytes]) -> str:
    file.seek(0, os.SEEK_END)
    size = file.tell()
    file.seek(max(0, size - STDERR_TAIL))
    text = file.read().decode("utf-8", errors="replace")
    if size > STDERR_TAIL:  # start at a whole line
        text = "...\n" + text.partition("\n")[2]
    return text.rstrip()


def _show(stderr: str) -> str:
    if not stderr:
        return "; no stderr"
    return "; stderr:\n" + "\n".join(f"  | {line}" for line in stderr.splitlines())


# --- reset over a serial line ---------------------------------------------------------


class _Lines(Protocol):
    dtr: bool
    rts: bool

    def reset_input_buffer(self) -> None: ...


def reset_board(port: _Lines, line: Literal["dtr", "rts", "none"], pulse: float = 0.1) -> None:
    """Reset a board wired to ``port``'s DTR or RTS line: assert the line for ``pulse``
    seconds, drop what arrived meanwhile, release it.

    Boards with an auto-reset circuit (ESP32's EN on RTS, Arduino's on DTR) restart on
    this. ``line`` "none" raises :class:`NoPowerControl` (the rig says the board has no
    reset line).
    """
    if line == "none":
        raise NoPowerControl(
            "the rig file says this board has no reset line (coordinator.reset: none); set "
            "reset: dtr or reset: rts to run scenarios that reset it"
        )
    if line not in ("dtr", "rts"):
        raise ValueError(f"reset line must be 'dtr', 'rts' or 'none', not {line!r}")
    if pulse < 0:
        raise ValueError(f"pulse must be >= 0 s, not {pulse}")
    name = getattr(port, "name", None) or getattr(port, "port", None) or "the port"
    log.info("reset %s: %s pulse of %.3f s", name, line.upper(), pulse)
    setattr(port, line, True)
    try:
        time.sleep(pulse)
        port.reset_input_buffer()
    finally:
        setattr(port, line, False)
