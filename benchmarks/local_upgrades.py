"""Benchmark: gateway-local upgrades on this machine.

    python benchmarks/local_upgrades.py [--mib 32] [--files 200]

- package: build, read (structure only) and unpack (every digest) of a package of
  ``--files`` files totalling ``--mib`` MiB;
- app switch: a whole AppStore install (verify, stage, fsync, flip, commit) with a no-op
  health check, and the default check (dlopen of the .so files, parse of the .lua files);
- ULC: the files sent over loopback TCP to a simulated camera and committed, in MiB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path


def _files(folder: Path, count: int, total: int) -> None:
    import _ctypes

    size = total // count
    for i in range(count):
        path = folder / f"lib/part-{i:04d}.lua"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size // 2).hex().encode()[:size])
    (folder / "lib/libota.so").write_bytes(Path(_ctypes.__file__).read_bytes())


async def _ulc(package_files: Path, tmp: Path) -> float:
    from harness.ulc import OutgoingFile, UlcClient, UlcPolicy
    from sims.camera import SimCamera

    files = [
        OutgoingFile(
            p.relative_to(package_files).as_posix(),
            p,
            p.stat().st_size,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(package_files.rglob("*"))
        if p.is_file()
    ]
    async with SimCamera("camera-0000", tmp / "camera", "1.0.0", restart_delay=0.0) as camera:
        client = UlcClient(camera.camera_id, *camera.address, UlcPolicy())
        started = time.perf_counter()
        await client.send_files(files, lambda done, total: None)
        await client.commit("2.0.0", files)
        elapsed = time.perf_counter() - started
        await client.close()
    return elapsed


async def main(mib: int, count: int) -> None:
    from harness.gateway.appstore import AppStore
    from harness.gateway.health import default_check
    from harness.packages import build_package, read_manifest, unpack

    total = mib << 20
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        source = tmp / "src"
        _files(source, count, total)
        rows: list[tuple[str, float, str]] = []

        def timed(label: str, fn, *args) -> float:  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            fn(*args)
            elapsed = time.perf_counter() - started
            rows.append((label, elapsed, f"{mib / elapsed:8.1f} MiB/s"))
            return elapsed

        package = tmp / "app.tar.gz"
        timed("package build", lambda: build_package(source, package, kind="app", version="2"))
        timed("package read_manifest", read_manifest, package)
        timed("package unpack", unpack, package, tmp / "unpacked")

        async def healthy(files: Path) -> None:
            pass

        store = AppStore(tmp / "app")
        started = time.perf_counter()
        await store.install(package, healthy)
        elapsed = time.perf_counter() - started
        rows.append(("app switch (install)", elapsed, f"{mib / elapsed:8.1f} MiB/s"))
        started = time.perf_counter()
        await default_check(store.current)
        rows.append(("default health check", time.perf_counter() - started, ""))
        elapsed = await _ulc(tmp / "unpacked", tmp)
        rows.append(("ULC send + commit", elapsed, f"{mib / elapsed:8.1f} MiB/s"))

    print(f"{count + 1} files, {mib} MiB")
    for label, seconds, rate in rows:
        print(f"{label:<24} {seconds:8.3f} s  {rate}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.mib, args.files))
