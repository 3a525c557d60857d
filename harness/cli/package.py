"""``ota-hil package``: build and check file packages for gateway-local upgrades."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import click

from ..packages import KINDS, Manifest, PackageError, build_package, unpack
from .common import say

_DIR = click.Path(file_okay=False, exists=True, path_type=Path)
_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


def _summary(manifest: Manifest, archive: Path) -> None:
    """What the platform needs: the sign of the archive is its md5 or sha256."""
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            md5.update(chunk)
    say(f"kind       {manifest.kind}")
    say(f"version    {manifest.version}")
    say(f"files      {len(manifest.files)} ({manifest.total_bytes} bytes)")
    say(f"archive    {archive} ({archive.stat().st_size} bytes)")
    say(f"sha256     {sha256.hexdigest()}")
    say(f"md5        {md5.hexdigest()}")


@click.group("package")
def package_command() -> None:
    """File packages for gateway-local upgrades (app, camera, driver).

    A package is a tar.gz holding manifest.json and the files under files/; the manifest
    gives each file's sha256, size and mode. See docs/packages.md. Typical use:

    \b
      ota-hil package build app/ -o app-1.2.0.tar.gz --kind app --version 1.2.0
      ota-hil package check app-1.2.0.tar.gz
    """


@package_command.command("build")
@click.argument("folder", type=_DIR)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The package to write (replaced if it exists).",
)
@click.option("--kind", type=click.Choice(KINDS), required=True, help="What the package upgrades.")
@click.option("--version", "version", required=True, help="The version the package installs.")
@click.option("--pre", multiple=True, metavar="CMD", help="Shell command run before installing.")
@click.option("--post", multiple=True, metavar="CMD", help="Shell command run after installing.")
def build_command(
    folder: Path, out: Path, kind: str, version: str, pre: tuple[str, ...], post: tuple[str, ...]
) -> None:
    """Pack every file under FOLDER into the package OUT.

    Paths are kept relative to FOLDER with their permission bits; symlinks and special
    files are refused. The same folder always gives the same bytes, so the sha256 and md5
    printed are what the platform's sign of the package will be.
    """
    try:
        manifest = build_package(folder, out, kind=kind, version=version, pre=pre, post=post)
    except PackageError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot build {out}: {exc}") from None
    say(f"wrote {out}")
    _summary(manifest, out)


@package_command.command("check")
@click.argument("package", type=_FILE, metavar="FILE")
def check_command(package: Path) -> None:
    """Verify the package FILE as a gateway would before installing it.

    Unpacks it into a temporary folder, checking its structure, its manifest and every
    file's size and sha256, and prints its summary; exits 1 with the reason if it is
    refused.
    """
    with tempfile.TemporaryDirectory(prefix="ota-hil-package-") as tmp:
        try:
            manifest = unpack(package, Path(tmp) / "files")
        except PackageError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot read {package}: {exc}") from None
    say(f"{package}: ok")
    _summary(manifest, package)
