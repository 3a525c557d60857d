"""Folders of files replaced as a whole, never in part: the gateway application's lua and
.so files (and, later, drivers). A power loss at any step leaves the old or the new
version live, and the next start finishes or undoes the switch.

Layout under ``root``::

    releases/<name>/files/          one complete version each,
    releases/<name>/manifest.json   and the manifest it came with
    current            symlink to the live release's files: the application runs from here
    previous           symlink to the files of the release before it, kept for rollback
    switch.json        the journal of a switch in progress

A release is complete (unpacked, verified, fsynced) before its folder gets its final name,
and ``current`` changes with one rename of a symlink, so no reader ever sees a mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from harness.packages import MANIFEST, Manifest, unpack

from .commands import SwitchFailed, run_actions

log = logging.getLogger("ota_hil.gateway.appstore")

#: The steps of a switch, in order; a power loss may strike after any of them.
STEPS = ("staged", "released", "journal", "flipped", "checked", "committed", "cleaned")

HealthCheck = Callable[[Path], Awaitable[None]]
#: What a release folder may be named (a journal naming anything else is not trusted).
_RELEASE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,63}")
#: Seconds each of a package's pre or post commands may take.
ACTION_TIMEOUT = 60.0
#: Called after each step; tests make it cut the power.
StepHook = Callable[[str], None]


class AppStore:
    """The releases of one application under ``root``."""

    def __init__(self, root: Path, on_step: StepHook | None = None) -> None:
        self.root = root
        self.releases = root / "releases"
        self.current = root / "current"
        self.previous = root / "previous"
        self.journal = root / "switch.json"
        self.on_step = on_step
        self._lock = asyncio.Lock()
        self._manifest: tuple[str, Manifest] | None = None

    # -- what is live ----------------------------------------------------------------------

    def manifest(self, link: Path | None = None) -> Manifest | None:
        """The manifest of the release ``link`` (default: current) points at."""
        target = self._target(link or self.current)
        if target is None:
            return None
        if self._manifest is not None and self._manifest[0] == target.name:
            return self._manifest[1]  # a release never changes once named
        try:
            manifest = Manifest.from_json((target / MANIFEST).read_bytes())
        except Exception:
            log.warning("%s: release %s has no readable manifest", self.root, target.name)
            return None
        self._manifest = (target.name, manifest)
        return manifest

    def version(self) -> str | None:
        manifest = self.manifest()
        return manifest.version if manifest else None

    def live_files(self) -> dict[str, bytes]:
        """Every file the application sees now, by relative path (for checks and tests)."""
        if self._target(self.current) is None:
            return {}
        files = self.current.resolve()
        return {
            p.relative_to(files).as_posix(): p.read_bytes()
            for p in sorted(files.rglob("*"))
            if p.is_file()
        }

    def _target(self, link: Path) -> Path | None:
        """The release folder ``link`` names (it points at that folder's files/)."""
        if not link.is_symlink():
            return None
        target = self.releases / Path(os.readlink(link)).parent.name
        return target if (target / "files").is_dir() else None

    # -- switching -------------------------------------------------------------------------

    async def install(self, package: Path, check: HealthCheck, kind: str | None = None) -> str:
        """Make ``package`` the live release if it passes ``check``; else keep the old one.
        Returns the new version; raises SwitchFailed (PackageError for a bad package) with
        the old release live and nothing of the new one left. Cancelled (the gateway
        stopping), it switches back before it ends. One install at a time per store."""
        async with self._lock:
            return await self._install(package, check, kind)

    async def _install(self, package: Path, check: HealthCheck, kind: str | None) -> str:
        await asyncio.to_thread(self.recover)
        self.releases.mkdir(parents=True, exist_ok=True)
        staging = self.releases / f".staging-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            manifest = await asyncio.to_thread(unpack, package, staging / "files")
            if kind is not None and manifest.kind != kind:
                raise SwitchFailed(f"the package is for {manifest.kind}, not {kind}")
            _write_durably(staging / MANIFEST, manifest.to_json())
            _fsync_dir(staging)
            self._step("staged")
            await run_actions("pre", list(manifest.pre), staging / "files", ACTION_TIMEOUT)
            name = self._release_name(manifest.version)
            release = self.releases / name
            staging.rename(release)
        except (Exception, asyncio.CancelledError):
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.releases)
        self._step("released")
        old = self._target(self.current)
        self._write_journal({"state": "switching", "from": old and old.name, "to": name})
        self._step("journal")
        self._point(self.current, name)
        self._step("flipped")
        try:
            await run_actions("post", list(manifest.post), release / "files", ACTION_TIMEOUT)
            await check(release / "files")
        except asyncio.CancelledError:
            self._undo(old and old.name, name)  # at once: no await may be cancelled again
            raise
        except Exception as exc:
            await asyncio.to_thread(self._undo, old and old.name, name)
            reason = str(exc) if isinstance(exc, SwitchFailed) else f"{type(exc).__name__}: {exc}"
            back = f"rolled back to {self.version()}" if old else "removed"
            raise SwitchFailed(f"{reason}; {back}") from None
        self._step("checked")
        self._write_journal({"state": "committed", "from": old and old.name, "to": name})
        self._step("committed")
        await asyncio.to_thread(self._finish, old and old.name)
        self._step("cleaned")
        return manifest.version

    def recover(self) -> str | None:
        """Finish a committed switch or undo an unfinished one (after a power loss), and
        drop what no link names. Returns what it did, for the log."""
        if not self.root.exists():
            return None
        did = None
        for tmp in self.root.glob(".*.new"):
            tmp.unlink(missing_ok=True)
        journal = self._read_journal()
        if journal is not None:
            if journal.get("state") == "committed":
                self._finish(journal.get("from"))
                did = f"finished the switch to {journal.get('to')}"
            else:
                self._undo(journal.get("from"), journal.get("to"))
                did = f"undid the switch to {journal.get('to')}"
            log.warning("%s: interrupted switch found: %s", self.root, did)
        self._prune()
        return did

    # -- the steps -------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name)

    def _release_name(self, version: str) -> str:
        base = re.sub(r"[^A-Za-z0-9._+-]", "_", version)[:48].lstrip(".") or "release"
        name = base
        while (self.releases / name).exists():
            name = f"{base}-{secrets.token_hex(3)}"
        return name

    def _point(self, link: Path, name: str | None) -> None:
        """Make ``link`` name release ``name`` (None: remove it) in one rename."""
        self._manifest = None
        if name is None:
            link.unlink(missing_ok=True)
        else:
            tmp = link.with_name(f".{link.name}.new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(Path("releases") / name / "files")
            tmp.replace(link)
        _fsync_dir(self.root)

    def _undo(self, old: str | None, new: str | None) -> None:
        self._point(self.current, old)
        self.journal.unlink(missing_ok=True)
        _fsync_dir(self.root)
        if new is not None and new != old:
            shutil.rmtree(self.releases / new, ignore_errors=True)

    def _finish(self, old: str | None) -> None:
        if old is not None:
            self._point(self.previous, old)
        self.journal.unlink(missing_ok=True)
        _fsync_dir(self.root)
        self._prune()

    def _prune(self) -> None:
        """Remove releases no link names: staging left by a power loss, superseded ones."""
        if not self.releases.exists() or self.journal.exists():
            return
        keep = {t.name for t in (self._target(self.current), self._target(self.previous)) if t}
        for release in self.releases.iterdir():
            if release.name not in keep:
                shutil.rmtree(release, ignore_errors=True)

    def _read_journal(self) -> dict[str, str | None] | None:
        try:
            data = json.loads(self.journal.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            data = None
        names_ok = isinstance(data, dict) and all(
            data.get(key) is None or self._is_release_name(data.get(key)) for key in ("from", "to")
        )
        if not names_ok:
            # Written by rename, so this is not a torn write: someone else's file. The links
            # are each whole, so leave them as they are.
            log.error("%s: unreadable switch journal ignored; the links stay", self.root)
            self.journal.unlink(missing_ok=True)
            return None
        return data

    @staticmethod
    def _is_release_name(name: object) -> bool:
        return isinstance(name, str) and bool(_RELEASE_NAME.fullmatch(name))

    def _write_journal(self, data: dict[str, str | None]) -> None:
        tmp = self.journal.with_name(f".{self.journal.name}.new")
        _write_durably(tmp, json.dumps(data).encode())
        tmp.replace(self.journal)
        _fsync_dir(self.root)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
