"""File packages for gateway-local upgrades: the app's lua/.so files, a camera's app files,
kernel .ko drivers.

A package is a tar archive (gzip, bzip2, xz or plain) holding ``manifest.json`` and the
files under ``files/``; see docs/packages.md for the format byte by byte.
"""

from .archive import build_package, read_manifest, unpack
from .manifest import FILES, KINDS, MANIFEST, FileEntry, Manifest, PackageError

__all__ = [
    "FILES",
    "KINDS",
    "MANIFEST",
    "FileEntry",
    "Manifest",
    "PackageError",
    "build_package",
    "read_manifest",
    "unpack",
]
