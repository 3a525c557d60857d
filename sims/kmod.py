"""A simulated kernel module loader: ``insmod``, ``rmmod`` and ``lsmod`` against a JSON file
instead of a kernel, for tests of driver upgrades on a machine whose kernel must not be
touched.

Like the real loader it refuses a file that is not an ELF object and a module whose
``vermagic`` (read from its ``.modinfo`` strings, as ``modinfo`` does) is not the running
kernel's, with the messages insmod and the kernel print::

    python -m sims.kmod --state S --vermagic "5.10.110 SMP mod_unload aarch64" insmod x.ko
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

#: The vermagic of the simulated kernel unless --vermagic says otherwise.
VERMAGIC = "5.10.110 SMP preempt mod_unload aarch64"


def modinfo(data: bytes, key: str) -> str | None:
    """The ``key=`` string of a module's .modinfo (NUL-separated), or None."""
    tag = key.encode() + b"="
    start = data.find(b"\0" + tag)
    if start < 0:
        return None
    start += 1 + len(tag)
    end = data.find(b"\0", start)
    return data[start : end if end >= 0 else None].decode(errors="replace")


def vermagic_of(data: bytes) -> str | None:
    """The ``vermagic=`` string of a module's .modinfo, or None."""
    return modinfo(data, "vermagic")


def fake_module(name: str, vermagic: str = VERMAGIC, body: bytes = b"") -> bytes:
    """The bytes of a module file this loader accepts (when ``vermagic`` matches)."""
    info = f"\0license=GPL\0name={name}\0vermagic={vermagic}\0".encode()
    return b"\x7fELF\x02\x01\x01" + bytes(57) + body + info


def _load_state(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(path: Path, state: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, path)


def insmod(state_path: Path, module: Path, vermagic: str) -> int:
    state = _load_state(state_path)
    try:
        data = module.read_bytes()
    except OSError as exc:
        print(f"insmod: ERROR: could not load module {module}: {exc.strerror}", file=sys.stderr)
        return 1
    # The kernel names a module by its own name, not by its file's.
    name = (modinfo(data, "name") or module.name.removesuffix(".ko")).replace("-", "_")
    if name in state:
        print(f"insmod: ERROR: could not insert module {module}: File exists", file=sys.stderr)
        return 1
    magic = vermagic_of(data)
    if not data.startswith(b"\x7fELF") or magic is None:
        print(
            f"insmod: ERROR: could not insert module {module}: Invalid module format\n"
            f"{name}: module has no vermagic or is not an ELF object",
            file=sys.stderr,
        )
        return 1
    if magic != vermagic:
        print(
            f"insmod: ERROR: could not insert module {module}: Invalid module format\n"
            f"{name}: version magic '{magic}' should be '{vermagic}'",
            file=sys.stderr,
        )
        return 1
    state[name] = str(module)
    _save_state(state_path, state)
    return 0


def rmmod(state_path: Path, name: str) -> int:
    name = name.removesuffix(".ko").replace("-", "_")
    state = _load_state(state_path)
    if name not in state:
        print(f"rmmod: ERROR: Module {name} is not currently loaded", file=sys.stderr)
        return 1
    del state[name]
    _save_state(state_path, state)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sims.kmod", description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="the loaded modules (JSON)")
    parser.add_argument("--vermagic", default=VERMAGIC, help="the running kernel's vermagic")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("insmod", help="load a module file").add_argument("module", type=Path)
    sub.add_parser("rmmod", help="unload a module by name").add_argument("name")
    sub.add_parser("lsmod", help="list the loaded modules")
    args = parser.parse_args(argv)
    if args.command == "insmod":
        return insmod(args.state, args.module, args.vermagic)
    if args.command == "rmmod":
        return rmmod(args.state, args.name)
    for name in sorted(_load_state(args.state)):
        print(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
