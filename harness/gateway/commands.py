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


#: How much of a failing command's output a reason shows,
OUTPUT_TAIL = 300
#: of the most output kept while it runs (a chatty command cannot fill the memory).
OUTPUT_KEEP = 64 * 1024
#: Seconds the output is still read after the command ends.
OUTPUT_GRACE = 0.5


async def run_command(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run ``args`` in ``cwd``: its exit code and the tail of its output. Overrunning
    ``timeout`` kills it (and what it started) and raises SwitchFailed; so does being
    cancelled. A child it leaves running (a daemon it starts) may keep the output open:
    reading stops shortly after the command itself ends."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    stdout = process.stdout
    tail = bytearray()

    async def pump() -> None:
        while chunk := await stdout.read(65536):
            tail.extend(chunk)
            del tail[:-OUTPUT_KEEP]

    reader = asyncio.create_task(pump())
    try:
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            raise SwitchFailed(f"`{' '.join(args[-1:])}` overran {timeout:g} s") from None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), OUTPUT_GRACE)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(process.wait())
        raise
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return process.returncode or 0, tail.decode(errors="replace").strip()[-OUTPUT_TAIL:]


async def run_actions(phase: str, commands: list[str], cwd: Path, timeout: float) -> None:
    """A package's ``pre`` or ``post`` commands, in order, in the release's folder; the
    first that fails stops the switch with its reason."""
    for command in commands:
        code, out = await run_command(["/bin/sh", "-c", command], cwd, timeout)
        if code != 0:
            shown = f": {out}" if out else ""
            raise SwitchFailed(f"{phase} action `{command}` exited with {code}{shown}")
