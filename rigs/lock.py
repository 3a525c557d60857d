"""One job at a time on a rig: an OS file lock, with the holder written beside it.

The lock is ``filelock.FileLock`` (``flock`` on Linux): the operating system releases it
when the holding process ends, however it ends, so a crashed CI job never leaves the rig
reserved. Who holds it is written to ``<lock>.owner`` so that the job that is turned away
can say who is in the way.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

if TYPE_CHECKING:
    from .rigfile import Rig

__all__ = ["RigBusy", "RigLock", "default_owner"]

#: Environment variables that say which CI job this is, in the order they are tried.
_CI_VARIABLES = ("CI_JOB_URL", "BUILD_URL", "GITHUB_RUN_ID", "BUILD_TAG")


class RigBusy(TimeoutError):
    """Another job holds the rig; the message names the lock file and the holder."""

    def __init__(self, message: str, *, lock_path: Path, holder: str | None) -> None:
        super().__init__(message)
        self.lock_path = lock_path
        self.holder = holder


def default_owner() -> str:
    """``"pytest pid 1234 on host (user ci)"``, plus the CI job when the environment says."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    try:
        user = f" (user {getpass.getuser()})"
    except (KeyError, OSError):  # no passwd entry in some containers
        user = ""
    owner = f"{program} pid {os.getpid()} on {socket.gethostname()}{user}"
    for variable in _CI_VARIABLES:
        if os.environ.get(variable):
            owner += f", {variable}={os.environ[variable]}"
            break
    return owner


class RigLock:
    """The lock of one rig, held by ``owner`` (default: :func:`default_owner`).

    :meth:`acquire` waits at most ``timeout`` seconds (never forever) and raises
    :class:`RigBusy` naming the holder; as a context manager it uses the constructor's
    ``timeout``. Acquiring a lock this object already holds does nothing; :meth:`release`
    (or :meth:`close`) lets it go.
    """

    def __init__(
        self, path: str | os.PathLike[str], owner: str | None = None, timeout: float = 0.0
    ) -> None:
        self.path = Path(path)
        self.owner = owner or default_owner()
        self.timeout = timeout
        self.info_path = self.path.with_name(self.path.name + ".owner")
        self._lock = FileLock(self.path, thread_local=False)

    @classmethod
    def for_rig(cls, rig: Rig, owner: str | None = None, timeout: float = 0.0) -> RigLock:
        """The lock of ``rig`` (its ``lock:`` file, else one in the temp folder)."""
        return cls(rig.lock_path, owner, timeout)

    def __repr__(self) -> str:
        return f"<RigLock {self.path} {'held' if self.is_held else 'not held'} by {self.owner}>"

    @property
    def is_held(self) -> bool:
        """True while this object holds the lock."""
        return self._lock.is_locked

    def holder(self) -> str | None:
        """Who holds (or last held) the lock, as written in the owner file, or None."""
        try:
            return self.info_path.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def acquire(self, timeout: float | None = None) -> RigLock:
        """Take the lock, waiting up to ``timeout`` seconds (default: the constructor's);
        :class:`RigBusy` if another holder keeps it."""
        wait = self.timeout if timeout is None else timeout
        if not wait >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, not {wait!r}")
        if self.is_held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=wait, poll_interval=min(0.05, max(wait / 4, 0.005)))
        except Timeout:
            holder = self.holder()
            who = holder or f"an unknown holder (no owner in {self.info_path})"
            raise RigBusy(
                f"rig lock {self.path} is held by {who}; gave up after {wait:g} s. Wait for "
                "that job to finish; the lock goes when its process ends",
                lock_path=self.path,
                holder=holder,
            ) from None
        try:
            self._write_owner()
        except OSError:
            self._lock.release(force=True)
            raise
        return self

    def release(self) -> None:
        """Let the lock go (nothing happens if this object does not hold it)."""
        if not self.is_held:
            return
        with contextlib.suppress(OSError):
            self.info_path.unlink()
        self._lock.release(force=True)

    close = release

    def __enter__(self) -> RigLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _write_owner(self) -> None:
        since = datetime.now().astimezone().isoformat(timespec="seconds")
        temporary = self.info_path.with_name(f"{self.info_path.name}.{os.getpid()}.tmp")
        temporary.write_text(f"{self.owner} since {since}\n", encoding="utf-8")
        os.replace(temporary, self.info_path)
