"""What the gateway remembers across restarts: the firmware version of itself and of each
child device it upgrades. One JSON file, replaced atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class GatewayState:
    """Versions by device id, persisted in ``{state_dir}/state.json``."""

    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._path = self.dir / "state.json"
        self._versions: dict[str, str] = {}
        self._counter = 0
        if self._path.exists():
            try:
                data = json.loads(self._path.read_text())
                self._versions = {str(k): str(v) for k, v in data.get("versions", {}).items()}
                self._counter = int(data.get("counter", 0))
            except (ValueError, AttributeError, TypeError) as exc:
                raise ValueError(f"{self._path}: not a gateway state file ({exc})") from None

    def version(self, device_id: str) -> str | None:
        return self._versions.get(device_id)

    def set_version(self, device_id: str, version: str) -> None:
        """Persist first: if the write fails, memory still agrees with the disk."""
        self._save({**self._versions, device_id: version}, self._counter)

    def set_versions(self, versions: dict[str, str]) -> None:
        """Many devices at once (a whole fleet's results), in one write."""
        self._save({**self._versions, **versions}, self._counter)

    def next_counter(self) -> int:
        """A start counter never used before, also across restarts (nodes refuse replays)."""
        self._save(self._versions, self._counter + 1)
        return self._counter

    def _save(self, versions: dict[str, str], counter: int) -> None:
        data = {"versions": versions, "counter": counter}
        write_atomic(self._path, json.dumps(data, indent=2).encode())
        self._versions, self._counter = versions, counter

    def download_path(self, firmware_id: str, version: str) -> Path:
        """Where an image is downloaded to: named by a digest, since the ids come off the
        wire and may hold '/' or '..'."""
        key = hashlib.sha256(f"{firmware_id}\0{version}".encode()).hexdigest()[:32]
        return self.downloads() / f"{key}.bin"

    def downloads(self) -> Path:
        path = self.dir / "downloads"
        path.mkdir(exist_ok=True)
        return path
