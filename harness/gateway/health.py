"""Health checks of a new application release, run after the switch and before it is
committed: a failing one switches back. Each failure says which file or command."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from .appstore import HealthCheck, SwitchFailed
from .commands import run_command

#: Seconds a check may take before it counts as failed.
CHECK_TIMEOUT = 30.0

# Libraries are loaded globally, in passes: one that needs a sibling loads once the
# sibling has (the dynamic loader matches an already loaded soname).
_LOAD_SO = """
import ctypes, sys
pending, errors = list(sys.argv[1:]), {}
while pending:
    failed = []
    for path in pending:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            failed.append(path)
            errors[path] = exc
    if len(failed) == len(pending):
        print(failed[0], errors[failed[0]], sep="\t")
        sys.exit(1)
    pending = failed
"""
_LIBRARY = re.compile(r".+\.so(\.\d+)*")


async def default_check(files: Path, timeout: float = CHECK_TIMEOUT) -> None:
    """Every .so loads (in a child process, so a bad library cannot take the gateway down)
    and every .lua parses (``luac -p`` where installed, else: readable UTF-8 text)."""
    libraries = sorted(
        p for p in files.rglob("*.so*") if p.is_file() and _LIBRARY.fullmatch(p.name)
    )
    for library in libraries:
        with library.open("rb") as file:
            magic = file.read(4)
        if magic != b"\x7fELF":
            raise SwitchFailed(f"health check: {_rel(library, files)} is not an ELF library")
    if libraries:
        code, out = await run_command(
            [sys.executable, "-c", _LOAD_SO, *map(str, libraries)], files, timeout
        )
        if code != 0:
            path, _, why = out.partition("\t")
            where = _rel(Path(path), files) if path else "a library"
            raise SwitchFailed(f"health check: {where} does not load: {why or out}")
    luac = shutil.which("luac") or shutil.which("luac5.4") or shutil.which("luac5.3")
    for script in sorted(p for p in files.rglob("*.lua") if p.is_file()):
        if luac is not None:
            code, out = await run_command([luac, "-p", str(script)], files, timeout)
            if code != 0:
                raise SwitchFailed(f"health check: {_rel(script, files)} does not parse: {out}")
            continue
        try:
            script.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SwitchFailed(
                f"health check: {_rel(script, files)} is unreadable: {exc}"
            ) from None


def command_check(command: str, timeout: float = CHECK_TIMEOUT) -> HealthCheck:
    """A check by a shell command run in the new release's folder: exit 0 is healthy."""

    async def check(files: Path) -> None:
        code, out = await run_command(["/bin/sh", "-c", command], files, timeout)
        if code != 0:
            shown = f": {out}" if out else ""
            raise SwitchFailed(f"health check `{command}` exited with {code}{shown}")

    return check


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
