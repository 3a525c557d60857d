"""The gateway app's atomic switch: a new release goes live whole or not at all, a failing
health check switches back, and a power loss after any step (a real process killed with
os._exit, nothing flushed or cleaned) leaves the old or the new app, which the next start
turns into a clean state."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from pathlib import Path

import pytest

from harness.gateway.appstore import STEPS, AppStore, SwitchFailed
from harness.gateway.health import command_check, default_check
from harness.packages import PackageError, build_package

OLD = {"main.lua": b"print('v1')\n", "lib/util.lua": b"return {}\n"}
NEW = {"main.lua": b"print('v2')\n", "lib/net.lua": b"return {net=true}\n"}


def make_package(
    tmp: Path,
    version: str,
    files: dict[str, bytes],
    kind: str = "app",
    pre: tuple[str, ...] = (),
    post: tuple[str, ...] = (),
) -> Path:
    folder = tmp / f"src-{version}"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    out = tmp / f"app-{version}.tar.gz"
    build_package(folder, out, kind=kind, version=version, pre=pre, post=post)
    return out


async def healthy(files: Path) -> None:
    assert (files / "main.lua").exists()


@pytest.fixture
async def store(tmp_path: Path) -> AppStore:
    store = AppStore(tmp_path / "app")
    await store.install(make_package(tmp_path, "1.0.0", OLD), healthy)
    return store


async def test_a_new_release_goes_live_and_the_old_one_is_kept(
    tmp_path: Path, store: AppStore
) -> None:
    assert await store.install(make_package(tmp_path, "2.0.0", NEW), healthy) == "2.0.0"
    assert store.version() == "2.0.0"
    assert store.live_files() == NEW
    assert store.manifest(store.previous).version == "1.0.0"  # type: ignore[union-attr]
    assert not store.journal.exists()
    assert sorted(p.name for p in store.releases.iterdir()) == ["1.0.0", "2.0.0"]


async def test_a_failing_health_check_switches_back(tmp_path: Path, store: AppStore) -> None:
    async def broken(files: Path) -> None:
        raise SwitchFailed("health check: main.lua does not parse")

    with pytest.raises(SwitchFailed, match=re.escape("does not parse; rolled back to 1.0.0")):
        await store.install(make_package(tmp_path, "2.0.0", NEW), broken)
    assert store.version() == "1.0.0" and store.live_files() == OLD
    assert [p.name for p in store.releases.iterdir()] == ["1.0.0"]


async def test_a_bad_package_changes_nothing(tmp_path: Path, store: AppStore) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not an archive")
    with pytest.raises(PackageError):
        await store.install(bad, healthy)
    with pytest.raises(SwitchFailed, match="for driver, not app"):
        await store.install(make_package(tmp_path, "3.0", NEW, kind="driver"), healthy, "app")
    assert store.version() == "1.0.0" and store.live_files() == OLD
    assert [p.name for p in store.releases.iterdir()] == ["1.0.0"]


async def test_the_default_check_loads_libraries_and_names_a_bad_one(tmp_path: Path) -> None:
    import _ctypes  # a real shared library on every CPython

    good = tmp_path / "good"
    (good / "lib").mkdir(parents=True)
    (good / "lib" / "libok.so").write_bytes(Path(_ctypes.__file__).read_bytes())
    (good / "main.lua").write_text("print('hi')\n")
    await default_check(good)
    (good / "lib" / "libbad.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    with pytest.raises(SwitchFailed, match=re.escape("lib/libbad.so does not load")):
        await default_check(good)
    (good / "lib" / "libbad.so").write_bytes(b"#!/bin/sh\n")
    with pytest.raises(SwitchFailed, match=re.escape("lib/libbad.so is not an ELF library")):
        await default_check(good)


async def test_a_check_command_runs_in_the_new_release(tmp_path: Path, store: AppStore) -> None:
    check = command_check("test -f lib/net.lua && grep -q v3 main.lua || { echo no v3; exit 4; }")
    with pytest.raises(SwitchFailed, match=re.escape("exited with 4: no v3; rolled back to 1.0.0")):
        await store.install(make_package(tmp_path, "2.0.0", NEW), check)
    v3 = {**NEW, "main.lua": b"print('v3')\n"}
    assert await store.install(make_package(tmp_path, "3.0.0", v3), check) == "3.0.0"


async def test_a_failing_pre_action_stops_before_the_switch(
    tmp_path: Path, store: AppStore
) -> None:
    package = make_package(tmp_path, "2.0.0", NEW, pre=("test -f main.lua", "echo nope; exit 3"))
    with pytest.raises(SwitchFailed, match=re.escape("pre action `echo nope; exit 3` exited")):
        await store.install(package, healthy)
    assert store.version() == "1.0.0" and store.live_files() == OLD
    assert [p.name for p in store.releases.iterdir()] == ["1.0.0"]


async def test_post_actions_run_in_the_new_release_and_a_failing_one_rolls_back(
    tmp_path: Path, store: AppStore
) -> None:
    failing = make_package(tmp_path, "2.0.0", NEW, post=("grep -q v1 main.lua",))
    with pytest.raises(SwitchFailed, match=re.escape("exited with 1; rolled back to 1.0.0")):
        await store.install(failing, healthy)
    assert store.live_files() == OLD
    passing = make_package(tmp_path, "2.0.1", NEW, post=("grep -q v2 main.lua",))
    assert await store.install(passing, healthy) == "2.0.1"


CRASH = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from harness.gateway.appstore import AppStore

    root, package, at = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def cut(step):
        if step == at:
            os._exit(137)  # power gone: nothing flushed, nothing cleaned

    async def healthy(files):
        pass

    asyncio.run(AppStore(root, on_step=cut).install(package, healthy))
    sys.exit(0)
    """
)


@pytest.mark.parametrize("step", STEPS)
async def test_a_power_loss_after_any_step_leaves_old_or_new(
    tmp_path: Path, store: AppStore, step: str
) -> None:
    package = make_package(tmp_path, "2.0.0", NEW)
    died = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASH,
        str(store.root),
        str(package),
        step,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(died.communicate(), 60)
    assert died.returncode == 137, err.decode()
    # Before any recovery, what the app sees is one whole release.
    assert store.live_files() in (OLD, NEW)
    restarted = AppStore(store.root)
    restarted.recover()
    committed = STEPS.index(step) >= STEPS.index("committed")
    assert restarted.live_files() == (NEW if committed else OLD)
    assert restarted.version() == ("2.0.0" if committed else "1.0.0")
    assert not restarted.journal.exists()
    live = {"1.0.0", "2.0.0"} if committed else {"1.0.0"}
    assert {p.name for p in restarted.releases.iterdir()} == live
    assert not list(restarted.root.glob(".*.new"))
    # And the store takes the next upgrade.
    v3 = {**NEW, "main.lua": b"print('v3')\n"}
    assert await restarted.install(make_package(tmp_path, "3.0.0", v3), healthy) == "3.0.0"


async def test_a_cancelled_install_switches_back_and_kills_its_check(
    tmp_path: Path, store: AppStore
) -> None:
    started, marker = tmp_path / "check-started", tmp_path / "check-still-running"
    check = command_check(f"touch {started}; sleep 0.3; touch {marker}; sleep 30")
    install = asyncio.create_task(store.install(make_package(tmp_path, "2.0.0", NEW), check))
    while not started.exists():
        await asyncio.sleep(0.01)
    assert store.version() == "2.0.0"  # switched, being checked
    install.cancel()  # the gateway stops during the check
    with pytest.raises(asyncio.CancelledError):
        await install
    assert store.version() == "1.0.0" and store.live_files() == OLD
    assert not store.journal.exists()
    assert [p.name for p in store.releases.iterdir()] == ["1.0.0"]
    await asyncio.sleep(0.5)
    assert not marker.exists()  # the check's process group was killed with it


async def test_two_installs_at_once_run_one_after_the_other(
    tmp_path: Path, store: AppStore
) -> None:
    v3 = {**NEW, "main.lua": b"print('v3')\n"}
    first, second = await asyncio.gather(
        store.install(make_package(tmp_path, "2.0.0", NEW), healthy),
        store.install(make_package(tmp_path, "3.0.0", v3), healthy),
    )
    assert (first, second) == ("2.0.0", "3.0.0")
    assert store.version() == "3.0.0" and store.live_files() == v3
    assert store.manifest(store.previous).version == "2.0.0"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "journal",
    [
        '{"state": "switching", "from": "1.0.0", "to": "../../victim"}',
        '{"state": "committed", "from": 7, "to": "1.0.0"}',
        "[1, 2]",
        "not json",
    ],
)
async def test_a_journal_that_names_no_release_is_ignored(
    tmp_path: Path, store: AppStore, journal: str
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    store.journal.write_text(journal)
    store.recover()
    assert victim.exists()
    assert not store.journal.exists()
    assert store.version() == "1.0.0" and store.live_files() == OLD


async def test_the_default_check_takes_only_libraries_and_loads_them_in_any_order(
    tmp_path: Path,
) -> None:
    import _ctypes

    files = tmp_path / "files"
    (files / "lib").mkdir(parents=True)
    (files / "lib" / "libz.so.1").write_bytes(Path(_ctypes.__file__).read_bytes())
    (files / "api.socket.lua").write_text("return {}\n")  # not a library, despite ".so"
    await default_check(files)
