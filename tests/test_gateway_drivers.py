"""Kernel driver upgrades against the simulated module loader (sims.kmod, run as a real
process through the configured commands): the kernel of this machine is never touched."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from harness.gateway.appstore import STEPS, SwitchFailed
from harness.gateway.drivers import DriverUpgrader, modules_in
from harness.gateway.jobs import Job, UpgradeFailed
from harness.packages import build_package
from harness.protocol import FirmwareFields, TopicKind, child_topic
from sims import kmod
from sims.kmod import VERMAGIC, fake_module, vermagic_of

OTHER_KERNEL = "5.4.0 SMP mod_unload aarch64"


def package(tmp: Path, version: str, modules: dict[str, str]) -> Path:
    """A driver package of ``modules`` (file name -> vermagic)."""
    folder = tmp / f"drivers-{version}"
    folder.mkdir()
    for name, magic in modules.items():
        (folder / name).write_bytes(fake_module(name.removesuffix(".ko"), magic, version.encode()))
    out = tmp / f"drivers-{version}.tar.gz"
    build_package(folder, out, kind="driver", version=version)
    return out


def loaded(state: Path) -> dict[str, str]:
    return json.loads(state.read_text()) if state.exists() else {}


@pytest.fixture
def drivers(tmp_path: Path) -> tuple[DriverUpgrader, Path]:
    state = tmp_path / "kmod.json"
    script = f"{shlex.quote(sys.executable)} {shlex.quote(kmod.__file__)}"
    loader = f"{script} --state {shlex.quote(str(state))}"
    upgrader = DriverUpgrader(
        tmp_path / "drivers",
        load_command=f"{loader} insmod {{path}}",
        unload_command=f"{loader} rmmod {{name}}",
    )
    return upgrader, state


def test_the_simulated_loader_refuses_like_insmod(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "kmod.json"
    good, bad, junk = tmp_path / "radio.ko", tmp_path / "uwb.ko", tmp_path / "junk.ko"
    good.write_bytes(fake_module("radio"))
    bad.write_bytes(fake_module("uwb", OTHER_KERNEL))
    junk.write_bytes(b"not a module")
    assert vermagic_of(good.read_bytes()) == VERMAGIC
    args = ["--state", str(state)]
    assert kmod.main([*args, "insmod", str(good)]) == 0
    assert kmod.main([*args, "insmod", str(good)]) == 1
    assert "File exists" in capsys.readouterr().err
    assert kmod.main([*args, "insmod", str(bad)]) == 1
    assert f"uwb: version magic '{OTHER_KERNEL}' should be '{VERMAGIC}'" in capsys.readouterr().err
    assert kmod.main([*args, "insmod", str(junk)]) == 1
    assert "Invalid module format" in capsys.readouterr().err
    assert kmod.main([*args, "rmmod", "uwb"]) == 1
    assert "uwb is not currently loaded" in capsys.readouterr().err
    assert list(loaded(state)) == ["radio"]
    assert kmod.main([*args, "rmmod", "radio"]) == 0 and loaded(state) == {}


async def test_new_drivers_replace_and_reload_the_old_ones(
    tmp_path: Path, drivers: tuple[DriverUpgrader, Path]
) -> None:
    upgrader, state = drivers
    await upgrader.install(package(tmp_path, "1.0.0", {"radio.ko": VERMAGIC}))
    assert list(loaded(state)) == ["radio"]
    await upgrader.install(package(tmp_path, "2.0.0", {"radio.ko": VERMAGIC, "uwb.ko": VERMAGIC}))
    assert upgrader.store.version() == "2.0.0"
    now = loaded(state)
    assert sorted(now) == ["radio", "uwb"]
    assert all("/releases/2.0.0/files/" in path for path in now.values()), now


async def test_a_module_for_another_kernel_rolls_back_and_reloads_the_old_drivers(
    tmp_path: Path, drivers: tuple[DriverUpgrader, Path]
) -> None:
    upgrader, state = drivers
    await upgrader.install(package(tmp_path, "1.0.0", {"radio.ko": VERMAGIC}))
    mixed = package(tmp_path, "2.0.0", {"a-radio.ko": VERMAGIC, "b-uwb.ko": OTHER_KERNEL})
    with pytest.raises(SwitchFailed) as failed:
        await upgrader.install(mixed)
    reason = str(failed.value)
    assert re.search(r"driver b-uwb\.ko does not load: .*Invalid module format", reason), reason
    assert f"version magic '{OTHER_KERNEL}' should be '{VERMAGIC}'" in reason
    assert reason.endswith("rolled back to 1.0.0")
    assert upgrader.store.version() == "1.0.0"
    now = loaded(state)
    assert list(now) == ["radio"]  # a-radio, loaded before b-uwb failed, is unloaded again
    assert "/releases/1.0.0/files/radio.ko" in now["radio"]
    assert [m.name for m in modules_in(upgrader.store.current.resolve())] == ["radio.ko"]


CRASH = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from harness.gateway.drivers import DriverUpgrader

    root, package, at, load, unload = sys.argv[1:6]

    def cut(step):
        if step == at:
            os._exit(137)  # power gone: nothing flushed, nothing cleaned

    upgrader = DriverUpgrader(Path(root), load_command=load, unload_command=unload, on_step=cut)
    asyncio.run(upgrader.install(Path(package)))
    sys.exit(0)
    """
)


@pytest.mark.parametrize("step", STEPS)
async def test_a_power_loss_after_any_step_of_a_driver_switch_leaves_old_or_new(
    tmp_path: Path, drivers: tuple[DriverUpgrader, Path], step: str
) -> None:
    upgrader, _ = drivers
    await upgrader.install(package(tmp_path, "1.0.0", {"radio.ko": VERMAGIC}))
    old = upgrader.store.live_files()
    new_package = package(tmp_path, "2.0.0", {"radio.ko": VERMAGIC, "uwb.ko": VERMAGIC})
    died = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", CRASH, str(upgrader.store.root), str(new_package), step),
        *(upgrader.load_command, upgrader.unload_command),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(died.communicate(), 60)
    assert died.returncode == 137, err.decode()
    new = {name: fake_module(name[:-3], VERMAGIC, b"2.0.0") for name in ("radio.ko", "uwb.ko")}
    assert upgrader.store.live_files() in (old, new)  # before any recovery: one whole release
    restarted = DriverUpgrader(
        upgrader.store.root,
        load_command=upgrader.load_command,
        unload_command=upgrader.unload_command,
    )  # its construction recovers, as a gateway start does
    committed = STEPS.index(step) >= STEPS.index("committed")
    assert restarted.store.version() == ("2.0.0" if committed else "1.0.0")
    expected = ["radio.ko", "uwb.ko"] if committed else ["radio.ko"]
    assert [m.name for m in modules_in(restarted.store.current.resolve())] == expected
    assert restarted.store.live_files() == (new if committed else old)
    assert not restarted.store.journal.exists()


async def test_modules_are_unloaded_by_their_own_name_not_their_file_name(
    tmp_path: Path, drivers: tuple[DriverUpgrader, Path]
) -> None:
    upgrader, state = drivers
    await upgrader.install(package(tmp_path, "1.0.0", {"10-radio.ko": VERMAGIC}))
    (tmp_path / "drivers-1.0.0").rename(tmp_path / "old-src")
    folder = tmp_path / "drivers-2.0.0"
    folder.mkdir()
    (folder / "20-radio.ko").write_bytes(fake_module("radio", VERMAGIC, b"2.0.0"))
    out = tmp_path / "drivers-2.0.0.tar.gz"
    build_package(folder, out, kind="driver", version="2.0.0")
    assert await upgrader.install(out) == "2.0.0"  # rmmod radio, not rmmod 10-radio
    assert list(loaded(state)) == ["radio"]
    assert loaded(state)["radio"].endswith("/releases/2.0.0/files/20-radio.ko")


async def test_an_unload_that_hangs_still_leaves_the_old_drivers_loaded(
    tmp_path: Path, drivers: tuple[DriverUpgrader, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrader, state = drivers
    await upgrader.install(package(tmp_path, "1.0.0", {"a.ko": VERMAGIC, "b.ko": VERMAGIC}))
    monkeypatch.setattr("harness.gateway.drivers.COMMAND_TIMEOUT", 0.5)
    # Unloading goes b, then a: b is unloaded, rmmod a hangs (a module stuck in use), and
    # then c does not load.
    upgrader.unload_command = f"if [ {{name}} = a ]; then sleep 30; fi; {upgrader.unload_command}"
    broken = package(tmp_path, "2.0.0", {"c.ko": OTHER_KERNEL})
    with pytest.raises(SwitchFailed, match=re.escape("rolled back to 1.0.0")):
        await upgrader.install(broken)
    assert sorted(loaded(state)) == ["a", "b"]
    assert upgrader.store.version() == "1.0.0"


@pytest.mark.parametrize(
    ("kind", "announced", "reason"),
    [
        ("app", "2.0.0", "package refused: it is for app, not driver"),
        ("driver", "3.0.0", "it holds version 2.0.0, the platform announced 3.0.0"),
    ],
)
async def test_a_package_that_is_not_the_one_announced_is_refused_and_nothing_changes(
    drivers: tuple[DriverUpgrader, Path], tmp_path: Path, kind: str, announced: str, reason: str
) -> None:
    """Through ``apply``, as the agent calls it: the running drivers stay, and the failure
    reports the version they are."""
    upgrader, state = drivers
    await upgrader.install(package(tmp_path, "1.0.0", {"radio.ko": VERMAGIC}))
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "radio.ko").write_bytes(fake_module("radio", VERMAGIC, b"2.0.0"))
    wrong = tmp_path / "wrong.tar.gz"
    build_package(folder, wrong, kind=kind, version="2.0.0")
    firmware = FirmwareFields(
        url="http://127.0.0.1:1/file/x",
        version=announced,
        sign="0" * 64,
        signMethod="sha256",
        firmwareId="fw-1",
        size=wrong.stat().st_size,
    )
    topic = child_topic("gw-product", "gw-1", "gw-1-drivers", TopicKind.UPGRADE)
    with pytest.raises(UpgradeFailed, match=re.escape(reason)) as failed:
        await upgrader.apply(Job("gw-1-drivers", "driver", firmware, topic, wrong), lambda _: None)
    assert failed.value.version == "1.0.0"
    assert upgrader.current_version("gw-1-drivers") == "1.0.0"
    assert set(loaded(state)) == {"radio"}
