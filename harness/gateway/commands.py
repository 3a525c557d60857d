"""Commands the gateway runs for an upgrade (health checks, a package's pre and post
actions): bounded in time, killed with their process group, their output's tail kept for
the record's reason."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path


class SwitchFailed(Exception):
    """The new release was refused or failed a check or an action; the old one is live."""


#: How much of a failing command's output a reason shows.
OUTPUT_TAIL = 300


async def run_command(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run ``args`` in ``cwd``: its exit code and the tail of its output. Overrunning
    ``timeout`` kills it (and what it started) and raises SwitchFailed."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise SwitchFailed(f"`{' '.join(args[-1:])}` overran {timeout:g} s") from None
    return process.returncode or 0, out.decode(errors="replace").strip()[-OUTPUT_TAIL:]


async def run_actions(phase: str, commands: list[str], cwd: Path, timeout: float) -> None:
    """A package's ``pre`` or ``post`` commands, in order, in the release's folder; the
    first that fails stops the switch with its reason."""
    for command in commands:
        code, out = await run_command(["/bin/sh", "-c", command], cwd, timeout)
        if code != 0:
            shown = f": {out}" if out else ""
            raise SwitchFailed(f"{phase} action `{command}` exited with {code}{shown}")
