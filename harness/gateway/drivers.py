"""Kernel drivers (.ko files) as a child device of the gateway: a package replaces the
modules folder as a whole (an :class:`AppStore` switch), then the old modules are unloaded
and the new ones loaded through the configured commands. A module the kernel refuses (a
vermagic that is not the running kernel's) switches the folder back and reloads the old
modules, so the gateway is never left without its drivers."""

from __future__ import annotations

import asyncio
import logging
import shlex
from pathlib import Path

from .apps import StoreUpgrader
from .appstore import AppStore, StepHook, SwitchFailed
from .commands import run_command
from .local import LOCAL_COMPONENTS, local_device_id

log = logging.getLogger("ota_hil.gateway.drivers")

#: The platform product of the gateway's drivers child device.
DRIVERS_PRODUCT = LOCAL_COMPONENTS["driver"].product
#: Seconds a load or unload command may take.
COMMAND_TIMEOUT = 30.0


def drivers_device_id(gateway_id: str) -> str:
    """The gateway drivers' child device id: one per gateway."""
    return local_device_id(gateway_id, "driver")


def modules_in(files: Path | None) -> list[Path]:
    """The .ko files of a release, in load order (sorted by path: name them 10-core.ko,
    20-radio.ko when one needs another)."""
    if files is None or not files.is_dir():
        return []
    return sorted(p for p in files.rglob("*.ko") if p.is_file())


class DriverUpgrader(StoreUpgrader):
    """Installs driver packages (kind ``driver``) into ``root`` and (re)loads them.

    ``load_command`` and ``unload_command`` are shell commands with ``{path}`` (the .ko
    file) and ``{name}`` (the module name) filled in, shell-quoted: ``insmod {path}`` and
    ``rmmod {name}`` on a gateway, a simulated loader in tests.
    """

    kind = "driver"
    what = "the drivers"

    def __init__(
        self,
        root: Path,
        *,
        load_command: str,
        unload_command: str,
        on_step: StepHook | None = None,
    ) -> None:
        self.store = AppStore(root, on_step)
        self.load_command = load_command
        self.unload_command = unload_command
        self.recovered = self.store.recover()

    async def install(self, package: Path) -> str:
        """Switch to ``package``'s modules; the old ones are loaded again when the new ones
        do not load, or when the switch is cancelled half way."""
        await asyncio.to_thread(self.store.recover)  # the old release is the one that stays
        old = self.store.current.resolve() if self.store.current.is_symlink() else None
        old_modules = modules_in(old)

        async def reload(files: Path) -> None:
            loaded: list[Path] = []
            try:
                for module in reversed(old_modules):
                    await self._unload(module, strict=False)
                for module in modules_in(files):
                    await self._load(module)
                    loaded.append(module)
            except BaseException:
                for module in reversed(loaded):
                    await asyncio.shield(self._unload(module, strict=False))
                for module in old_modules:
                    await asyncio.shield(self._load(module, strict=False))
                raise

        return await self.store.install(package, reload, kind=self.kind)

    async def _load(self, module: Path, strict: bool = True) -> None:
        await self._run(self.load_command, module, "does not load", strict)

    async def _unload(self, module: Path, strict: bool = True) -> None:
        await self._run(self.unload_command, module, "does not unload", strict)

    async def _run(self, template: str, module: Path, what: str, strict: bool) -> None:
        name = module_name(module)
        command = template.format(path=shlex.quote(str(module)), name=shlex.quote(name))
        try:
            code, out = await run_command(
                ["/bin/sh", "-c", command], module.parent, COMMAND_TIMEOUT
            )
        except (SwitchFailed, OSError) as exc:
            code, out = -1, str(exc)
        if code == 0:
            return
        reason = f"driver {module.name} {what}: {' / '.join(out.splitlines()) or f'exit {code}'}"
        if strict:
            raise SwitchFailed(reason)
        log.warning("%s", reason)


def module_name(module: Path) -> str:
    """The kernel's name for a module: ``name=`` in its .modinfo (what rmmod wants), else
    the file name; dashes read as underscores, as the kernel does."""
    try:
        data = module.read_bytes()
    except OSError:
        data = b""
    tag = b"\0name="
    at = data.find(tag)
    if at >= 0:
        end = data.find(b"\0", at + len(tag))
        name = data[at + len(tag) : end if end >= 0 else None].decode(errors="replace")
    else:
        name = module.name.removesuffix(".ko")
    return name.replace("-", "_")
