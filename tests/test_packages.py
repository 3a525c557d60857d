"""File packages: build, read, verify and unpack, against real archives on disk.

Bad archives are written with tarfile directly, member by member, so each refusal is
tested on exactly the archive an attacker or a broken build tool would produce.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.packages import (
    FILES,
    KINDS,
    MANIFEST,
    FileEntry,
    Manifest,
    PackageError,
    build_package,
    read_manifest,
    unpack,
)

quick = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(path: str, data: bytes, mode: int | str = "0644") -> dict[str, object]:
    return {"path": path, "sha256": sha(data), "size": len(data), "mode": mode}


def manifest_bytes(files: dict[str, bytes], **fields: object) -> bytes:
    data: dict[str, object] = {
        "format": 1,
        "kind": "app",
        "version": "1.0.0",
        "files": [entry(path, body) for path, body in files.items()],
    }
    data.update(fields)
    return json.dumps(data).encode()


def reg(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def craft(
    path: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    compression: str = "gz",
) -> Path:
    """Write exactly these members, in this order, names untouched."""
    with tarfile.open(path, f"w:{compression}", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


def good_members(files: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [reg(MANIFEST, manifest_bytes(files))] + [
        reg(FILES + p, body) for p, body in files.items()
    ]


def tree(root: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    return root


def contents(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


SAMPLE = {
    "main.lua": (b"print('hi')\n", 0o644),
    "lib/codec.so": (b"\x7fELF" + bytes(range(256)) * 40, 0o755),
    "lib/deep/er/conf.json": (b"{}", 0o600),
    "empty.txt": (b"", 0o444),
}


# -- round trip and build -----------------------------------------------------------------------


def test_round_trip_keeps_files_modes_and_nested_dirs(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    manifest = build_package(
        src, tmp_path / "app.tar.gz", kind="app", version="1.2.0", pre=["stop app"], post=["x"]
    )
    assert [f.path for f in manifest.files] == sorted(SAMPLE)
    assert read_manifest(tmp_path / "app.tar.gz") == manifest
    assert unpack(tmp_path / "app.tar.gz", tmp_path / "dest") == manifest
    assert contents(tmp_path / "dest") == SAMPLE
    assert manifest.pre == ["stop app"] and manifest.post == ["x"]
    assert manifest.total_bytes == sum(len(d) for d, _ in SAMPLE.values())


def test_build_writes_deterministic_members(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    build_package(src, tmp_path / "p.tgz", kind="driver", version="5.10-1")
    with gzip.open(tmp_path / "p.tgz") as gz, tarfile.open(fileobj=gz) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [MANIFEST] + [FILES + p for p in sorted(SAMPLE)]
    assert all(m.isreg() and m.mtime == 0 and m.uid == m.gid == 0 for m in members)
    assert all(m.uname == m.gname == "" for m in members)
    raw = (tmp_path / "p.tgz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08  # gzip: mtime 0, no file name


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", SAMPLE)
    build_package(a, tmp_path / "1.tgz", kind="app", version="1")
    b = tree(tmp_path / "elsewhere" / "b", dict(reversed(SAMPLE.items())))
    for path in b.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    build_package(b, tmp_path / "2.tgz", kind="app", version="1")
    assert (tmp_path / "1.tgz").read_bytes() == (tmp_path / "2.tgz").read_bytes()


def test_build_replaces_out_and_leaves_no_temporary(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    out = tmp_path / "out" / "p.tgz"
    out.parent.mkdir()
    out.write_bytes(b"old")
    build_package(src, out, kind="camera", version="2")
    assert read_manifest(out).kind == "camera"
    assert [p.name for p in out.parent.iterdir()] == ["p.tgz"]


def test_build_refuses_a_folder_with_a_symlink(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    (src / "lib" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match=r"lib/passwd: symlinks are not allowed in a package"):
        build_package(src, tmp_path / "p.tgz", kind="app", version="1")
    assert not (tmp_path / "p.tgz").exists()


def test_build_refuses_a_symlinked_directory(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    (src / "etc").symlink_to("/etc", target_is_directory=True)
    with pytest.raises(PackageError, match=r"etc: symlinks are not allowed"):
        build_package(src, tmp_path / "p.tgz", kind="app", version="1")


def test_build_refuses_a_fifo(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    os.mkfifo(src / "pipe")
    with pytest.raises(PackageError, match=r"pipe: not a regular file"):
        build_package(src, tmp_path / "p.tgz", kind="app", version="1")


@pytest.mark.parametrize(
    ("kind", "version", "reason"),
    [
        ("firmware", "1", r"kind: 'firmware' is not one of app, camera, driver"),
        ("app", "", r"version: must be 1\.\.64 characters"),
        ("app", "1/2", r"version: 1/2: must be printable, without '/'"),
        ("app", "v" * 65, r"version: must be 1\.\.64 characters"),
    ],
)
def test_build_refuses_bad_fields(tmp_path: Path, kind: str, version: str, reason: str) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    with pytest.raises(PackageError, match=reason):
        build_package(src, tmp_path / "p.tgz", kind=kind, version=version)


def test_build_refuses_empty_folder_and_out_inside_it(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(PackageError, match="no files in it"):
        build_package(tmp_path / "empty", tmp_path / "p.tgz", kind="app", version="1")
    src = tree(tmp_path / "src", SAMPLE)
    with pytest.raises(PackageError, match="would be inside it"):
        build_package(src, src / "p.tgz", kind="app", version="1")


def test_build_drops_setuid_bits(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"bin/tool": (b"#!/bin/sh\n", 0o755)})
    (src / "bin" / "tool").chmod(0o4755)
    manifest = build_package(src, tmp_path / "p.tgz", kind="app", version="1")
    assert manifest.files[0].mode == 0o755


# -- reading what others built --------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_any_compression_is_read(tmp_path: Path, compression: str) -> None:
    files = {"a.lua": b"a", "d/b.so": b"bb"}
    package = craft(tmp_path / "p", good_members(files), compression)
    assert read_manifest(package).version == "1.0.0"
    unpack(package, tmp_path / "dest")
    assert {k: v for k, (v, _) in contents(tmp_path / "dest").items()} == files


def test_dot_slash_names_and_directory_members_are_accepted(tmp_path: Path) -> None:
    """What `tar -C dir -czf pkg.tgz .` writes."""
    files = {"lua/a.lua": b"a"}
    dirs = [special(name, tarfile.DIRTYPE) for name in ("./", "./files/", "./files/lua/")]
    package = craft(
        tmp_path / "p.tgz",
        [
            *dirs,
            reg("./" + MANIFEST, manifest_bytes(files)),
            reg("./files/lua/a.lua", b"a"),
        ],
    )
    unpack(package, tmp_path / "dest")
    assert (tmp_path / "dest" / "lua" / "a.lua").read_bytes() == b"a"


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command")
@pytest.mark.parametrize("members", [[MANIFEST, "files"], ["."]], ids=["named", "dot"])
def test_a_package_built_by_hand_with_tar(tmp_path: Path, members: list[str]) -> None:
    """The recipe in docs/packages.md: any tar, a manifest written by hand, modes as stat prints."""
    root = tmp_path / "pkg"
    tree(root / "files", {"init.lua": (b"return 1\n", 0o644), "bin/run": (b"#!", 0o755)})
    doc = {
        "format": 1,
        "kind": "app",
        "version": "1.0.0",
        "files": [entry("bin/run", b"#!", "755"), entry("init.lua", b"return 1\n", "644")],
    }
    (root / MANIFEST).write_text(json.dumps(doc))
    package = str(tmp_path / "p.tgz")
    subprocess.run(["tar", "-C", str(root), "-czf", package, *members], check=True)
    unpack(Path(package), tmp_path / "dest")
    assert contents(tmp_path / "dest")["bin/run"] == (b"#!", 0o755)


def test_manifest_json_round_trip_and_mode_forms() -> None:
    manifest = Manifest.from_json(manifest_bytes({"a": b"x"}))
    assert manifest.files[0].mode == 0o644
    assert Manifest.from_json(manifest.to_json()) == manifest
    as_int = json.loads(manifest.to_json())
    as_int["files"][0]["mode"] = 0o755
    assert Manifest.from_json(json.dumps(as_int).encode()).files[0].mode == 0o755
    assert json.loads(manifest.to_json())["files"][0]["mode"] == "0644"
    assert FileEntry("a", sha(b"x"), 1, 0o644) == manifest.files[0]
    assert Manifest(kind="driver", version="1", files=[manifest.files[0]]).format == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"format": 2}, r"manifest.json: format: format 2 is not understood \(only 1\)"),
        ({"format": "1"}, r"manifest.json: format: Input should be a valid integer"),
        ({"kind": "bootloader"}, r"manifest.json: kind: 'bootloader' is not one of app, camera"),
        ({"kind": None}, r"manifest.json: kind: Input should be a valid string"),
        ({"version": "a\nb"}, r"manifest.json: version: a\\nb: must be printable"),
        ({"files": []}, r"manifest.json: files: List should have at least 1 item"),
        ({"signature": "x"}, r"manifest.json: signature: unknown field"),
        ({"pre": ["ok", ""]}, r"manifest.json: pre\[1\]: String should have at least 1"),
        ({"post": ["a\0b"]}, r"manifest.json: post: a\\x00b: a command must be UTF-8"),
    ],
)
def test_manifest_refusals_name_the_field(change: dict[str, object], reason: str) -> None:
    doc = json.loads(manifest_bytes({"a": b"x"}))
    doc.update(change)
    with pytest.raises(PackageError, match=f"^package refused: {reason}"):
        Manifest.from_json(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("path", "../etc/passwd", r"files\[0\].path: ../etc/passwd: path escapes the target root"),
        ("path", "/etc/passwd", r"files\[0\].path: /etc/passwd: path escapes the target root"),
        ("path", "lua\\a.lua", r"files\[0\].path: lua\\a.lua: path has a backslash"),
        ("path", "a//b", r"files\[0\].path: a//b: path has an empty or '.' segment"),
        ("path", "./a", r"files\[0\].path: ./a: path has an empty or '.' segment"),
        ("path", "a/", r"files\[0\].path: a/: path has an empty or '.' segment"),
        ("path", "a\0b", r"files\[0\].path: a\\x00b: path has a NUL or control character"),
        ("path", "x" * 256, r"files\[0\].path: x{197}\.\.\.: path has a segment longer than 255"),
        (
            "path",
            "/".join(["x" * 200] * 21),
            r"files\[0\].path: x+\.\.\.: path is longer than 4096",
        ),
        ("path", "", r"files\[0\].path: : path is empty"),
        ("mode", "4755", r"files\[0\].mode: 04755 has setuid, setgid or sticky bits"),
        ("mode", 0o2755, r"files\[0\].mode: 02755 has setuid"),
        ("mode", "rwx", r"files\[0\].mode: 'rwx' is not an octal mode"),
        ("mode", -1, r"files\[0\].mode: must not be negative"),
        ("mode", True, r"files\[0\].mode: Input should be a valid integer"),
        ("size", -1, r"files\[0\].size: Input should be greater than or equal to 0"),
        ("size", 1.0, r"files\[0\].size: Input should be a valid integer"),
        ("sha256", "AB" * 32, r"files\[0\].sha256: must be 64 lowercase hex digits"),
        ("sha256", "ab", r"files\[0\].sha256: must be 64 lowercase hex digits"),
        ("owner", "root", r"files\[0\].owner: unknown field"),
    ],
)
def test_file_entry_refusals(field: str, value: object, reason: str) -> None:
    doc = json.loads(manifest_bytes({"a": b"x"}))
    doc["files"][0][field] = value
    with pytest.raises(PackageError, match=f"^package refused: manifest.json: {reason}"):
        Manifest.from_json(json.dumps(doc).encode())


def test_missing_field_is_named() -> None:
    doc = json.loads(manifest_bytes({"a": b"x"}))
    del doc["version"]
    with pytest.raises(PackageError, match=r"manifest.json: version: required field is missing"):
        Manifest.from_json(json.dumps(doc).encode())
    del doc["files"][0]["sha256"]
    doc["version"] = "1"
    with pytest.raises(PackageError, match=r"files\[0\].sha256: required field is missing"):
        Manifest.from_json(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", r"not valid JSON \(Expecting property name"),
        (b"\xff{}", r"not UTF-8"),
        (b"[1]", r"must be a JSON object, not list"),
        (b'{"kind": "app", "kind": "camera"}', r"key 'kind' appears twice"),
        (b"[" * 100_000, r"nested too deeply|not valid JSON"),
    ],
)
def test_unreadable_manifests(data: bytes, reason: str) -> None:
    with pytest.raises(PackageError, match=f"^package refused: manifest.json: {reason}"):
        Manifest.from_json(data)


def test_listed_twice_and_file_under_a_file_are_refused() -> None:
    doc = json.loads(manifest_bytes({"a": b"x"}))
    doc["files"].append(doc["files"][0])
    with pytest.raises(PackageError, match=r"manifest.json: files\[1\].path: a: listed twice"):
        Manifest.from_json(json.dumps(doc).encode())
    doc = json.loads(manifest_bytes({"a": b"x", "a/b": b"y"}))
    with pytest.raises(PackageError, match=r"files\[1\].path: a/b: a is a listed file"):
        Manifest.from_json(json.dumps(doc).encode())


# -- refusals of whole packages ------------------------------------------------------------------

FILES_OK = {"lua/a.lua": b"print(1)", "b.so": b"\0" * 100}


def refusals() -> list[tuple[str, list[tuple[tarfile.TarInfo, bytes | None]], str]]:
    ok = good_members(FILES_OK)
    manifest = ok[0]
    outside = {"../evil": b"x"}
    return [
        ("no manifest", ok[1:], "manifest.json: not in the archive"),
        ("two manifests", [*ok, manifest], "manifest.json: appears twice in the archive"),
        ("bad JSON", [reg(MANIFEST, b"{nope"), *ok[1:]], "manifest.json: not valid JSON"),
        (
            "unknown format",
            [reg(MANIFEST, manifest_bytes(FILES_OK, format=7)), *ok[1:]],
            "manifest.json: format: format 7 is not understood (only 1)",
        ),
        (
            "unknown kind",
            [reg(MANIFEST, manifest_bytes(FILES_OK, kind="bios")), *ok[1:]],
            "manifest.json: kind: 'bios' is not one of app, camera, driver",
        ),
        (
            "unlisted extra file",
            [*ok, reg("files/extra.lua", b"x")],
            "files/extra.lua: in the archive but not listed in the manifest",
        ),
        (
            "listed but missing",
            ok[:2],
            "files/b.so: listed in the manifest but not in the archive",
        ),
        (
            "size mismatch",
            [manifest, ok[1], reg("files/b.so", b"\0" * 99)],
            "files/b.so: 99 bytes in the archive, the manifest says 100",
        ),
        (
            "../ path in manifest",
            [reg(MANIFEST, manifest_bytes(outside))],
            "manifest.json: files[0].path: ../evil: path escapes the target root",
        ),
        (
            "files/../x member",
            [*ok, reg("files/lua/../../etc/passwd", b"root")],
            "files/lua/../../etc/passwd: path escapes the target root",
        ),
        ("absolute member", [*ok, reg("/etc/passwd", b"x")], "/etc/passwd: path escapes"),
        (
            "absolute under files",
            [*ok, reg("/files/x", b"x")],
            "/files/x: path escapes the target root",
        ),
        (
            "backslash member",
            [*ok, reg("files\\..\\..\\x", b"x")],
            "files\\..\\..\\x: path has a backslash",
        ),
        (
            "symlink member pointing outside",
            [*ok, special("files/lua/passwd", tarfile.SYMTYPE, "/etc/passwd")],
            "files/lua/passwd: symlinks are not allowed in a package",
        ),
        (
            "symlink named manifest",
            [special(MANIFEST, tarfile.SYMTYPE, "/etc/passwd"), *ok[1:]],
            "manifest.json: symlinks are not allowed in a package",
        ),
        (
            "hardlink member",
            [*ok, special("files/c.so", tarfile.LNKTYPE, "files/b.so")],
            "files/c.so: hardlinks are not allowed in a package",
        ),
        (
            "device member",
            [*ok, special("files/dev/mem", tarfile.CHRTYPE)],
            "files/dev/mem: devices are not allowed in a package",
        ),
        (
            "block device member",
            [*ok, special("files/sda", tarfile.BLKTYPE)],
            "files/sda: devices are not allowed in a package",
        ),
        (
            "fifo member",
            [*ok, special("files/pipe", tarfile.FIFOTYPE)],
            "files/pipe: fifos are not allowed in a package",
        ),
        (
            "member outside files/",
            [*ok, reg("etc/passwd", b"x")],
            "etc/passwd: not part of a package (only manifest.json and files/ are)",
        ),
        (
            "directory outside files/",
            [*ok, special("etc", tarfile.DIRTYPE)],
            "etc: not part of a package",
        ),
        (
            "file twice",
            [*ok, reg("files/b.so", b"\0" * 100)],
            "files/b.so: appears twice in the archive",
        ),
        (
            "same file through ./",
            [*ok, reg("./files/b.so", b"\0" * 100)],
            "./files/b.so: appears twice in the archive",
        ),
        (
            "empty segment member",
            [*ok, reg("files/lua//a.lua", b"x")],
            "files/lua//a.lua: path has an empty or '.' segment",
        ),
        (
            "setuid mode",
            [
                reg(
                    MANIFEST,
                    json.dumps(
                        {
                            "kind": "app",
                            "version": "1",
                            "files": [entry("su", b"x", "4755")],
                        }
                    ).encode(),
                ),
                reg("files/su", b"x", 0o4755),
            ],
            "manifest.json: files[0].mode: 04755 has setuid, setgid or sticky bits",
        ),
    ]


@pytest.mark.parametrize(
    ("members", "reason"),
    [pytest.param(m, r, id=name) for name, m, r in refusals()],
)
def test_refused_packages(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], reason: str
) -> None:
    package = craft(tmp_path / "p.tgz", members)
    with pytest.raises(PackageError) as refused:
        unpack(package, tmp_path / "work" / "dest")
    assert str(refused.value) == f"package refused: {reason}" or str(refused.value).startswith(
        f"package refused: {reason}"
    )
    assert not (tmp_path / "work" / "dest").exists()
    assert not (tmp_path / "etc").exists() and not (tmp_path / "evil").exists()
    with pytest.raises(PackageError, match=r"^package refused: "):
        read_manifest(package)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", r"archive: not a readable tar archive \(empty file\)"),
        (b"this is not a tar archive at all" * 40, r"archive: not a readable tar archive"),
        (b"\x1f\x8b\x08\x00garbage", r"archive: not a readable tar archive"),
        (gzip.compress(b"not tar" * 100), r"archive: not a readable tar archive"),
        (bz2.compress(b"x" * 600), r"archive: not a readable tar archive"),
        (b"\xfd7zXZ\x00broken", r"archive: not a readable tar archive"),
    ],
    ids=["empty file", "text", "broken gzip", "gzip of not tar", "bz2 of not tar", "broken xz"],
)
def test_not_an_archive(tmp_path: Path, data: bytes, reason: str) -> None:
    package = tmp_path / "p.bin"
    package.write_bytes(data)
    with pytest.raises(PackageError, match=f"^package refused: {reason}"):
        read_manifest(package)
    with pytest.raises(PackageError, match=f"^package refused: {reason}"):
        unpack(package, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_digest_mismatch_removes_dest(tmp_path: Path) -> None:
    files = {"a.lua": b"first", "z/b.so": b"original"}
    members = [
        reg(MANIFEST, manifest_bytes(files)),
        reg("files/a.lua", b"first"),
        reg("files/z/b.so", b"tampered"),
    ]
    package = craft(tmp_path / "p.tgz", members)
    assert read_manifest(package).files[1].path == "z/b.so"  # headers alone look right
    with pytest.raises(PackageError) as refused:
        unpack(package, tmp_path / "dest")
    assert str(refused.value) == (
        f"package refused: files/z/b.so: sha256 mismatch: expected {sha(b'original')}, "
        f"got {sha(b'tampered')}"
    )
    assert not (tmp_path / "dest").exists()
    assert list(tmp_path.iterdir()) == [package]


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    files = {"big.bin": os.urandom(50_000)}
    plain = craft(tmp_path / "p.tar", good_members(files), compression="")
    data = plain.read_bytes()
    plain.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageError, match=r"^package refused: (files/big.bin|archive): "):
        unpack(plain, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_existing_dest_is_left_alone(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    build_package(src, tmp_path / "p.tgz", kind="app", version="1")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        unpack(tmp_path / "p.tgz", tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").read_bytes() == b"mine"


# -- limits --------------------------------------------------------------------------------------


def test_too_many_files(tmp_path: Path) -> None:
    files = {f"f{i}": b"x" for i in range(4)}
    package = craft(tmp_path / "p.tgz", good_members(files))
    with pytest.raises(PackageError, match=r"^package refused: files/: more than 3 files"):
        unpack(package, tmp_path / "dest", max_files=3)
    assert not (tmp_path / "dest").exists()
    unpack(package, tmp_path / "dest", max_files=4)


def test_too_many_bytes(tmp_path: Path) -> None:
    files = {"a": b"x" * 600, "b": b"y" * 600}
    package = craft(tmp_path / "p.tgz", good_members(files))
    with pytest.raises(PackageError, match=r"^package refused: files/: more than 1000 bytes"):
        unpack(package, tmp_path / "dest", max_bytes=1000)
    assert not (tmp_path / "dest").exists()
    unpack(package, tmp_path / "dest", max_bytes=1200)


def test_a_zip_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """100 MB of zeros in a 100 KB download: refused before it is decompressed."""
    bomb = tmp_path / "bomb.tgz"
    big = 100 << 20
    files = {"zeros": b""}
    with gzip.open(bomb, "wb", compresslevel=9) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info, data = reg(MANIFEST, manifest_bytes(files))
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("files/zeros")
        info.size = big
        tar.addfile(info, io.BytesIO(bytes(big)))
    assert bomb.stat().st_size < big // 500
    with pytest.raises(PackageError, match=r"files/: more than 1048576 bytes in all"):
        unpack(bomb, tmp_path / "dest", max_bytes=1 << 20)


def test_decompressed_stream_is_bounded(tmp_path: Path) -> None:
    """Headers within their own limits still count against the archive's decompressed bound."""
    manifest = manifest_bytes({"a": b"x"})
    info, data = reg(MANIFEST, manifest + b" " * ((16 << 20) - len(manifest)))
    folder = tarfile.TarInfo("files")
    folder.type = tarfile.DIRTYPE
    folder.pax_headers = {"comment": "z" * (60 << 10)}
    big = reg("files/a", b"x")
    big[0].pax_headers = {"comment": "z" * (60 << 10)}
    package = craft(tmp_path / "p.tar", [(info, data), (folder, None), big], compression="")
    with pytest.raises(PackageError, match=r"^package refused: archive: unpacks to more than"):
        read_manifest(package, max_bytes=1000, max_files=1)
    assert read_manifest(package).kind == "app"


def blocks(info: tarfile.TarInfo, data: bytes = b"", fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """One member's bytes as tarfile writes them: header blocks, data, padding."""
    info.size = len(data)
    padding = -len(data) % tarfile.BLOCKSIZE
    return info.tobuf(fmt, "utf-8", "surrogateescape") + data + bytes(padding)


def raw_package(tmp_path: Path, *parts: bytes) -> Path:
    """A plain tar of exactly these bytes, then the manifest and files of FILES_OK."""
    body = b"".join(parts) + b"".join(blocks(i, d or b"") for i, d in good_members(FILES_OK))
    package = tmp_path / "p.tar"
    package.write_bytes(body + bytes(2 * tarfile.BLOCKSIZE))
    return package


def pax_records(kind: bytes, records: dict[str, str]) -> bytes:
    return tarfile.TarInfo._create_pax_generic_header(records, kind, "utf-8")


def long_name(size: int) -> bytes:
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    return blocks(info, b"files/x".ljust(size, b"x"))


def folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


EIGHT_MIB = 8 << 20


@pytest.mark.parametrize(
    ("member", "fmt", "reason"),
    [
        (
            {"name": MANIFEST, "pax_headers": {"comment": "z" * EIGHT_MIB}},
            tarfile.PAX_FORMAT,
            f"././@PaxHeader: extended header of {EIGHT_MIB + 17} bytes exceeds 64 KiB",
        ),
        (
            {"name": FILES + "a" * EIGHT_MIB},
            tarfile.GNU_FORMAT,
            f"././@LongLink: extended header of {EIGHT_MIB + 7} bytes exceeds 64 KiB",
        ),
        (
            {"name": FILES + "l", "type": tarfile.SYMTYPE, "linkname": "t" * EIGHT_MIB},
            tarfile.GNU_FORMAT,
            f"././@LongLink: extended header of {EIGHT_MIB + 1} bytes exceeds 64 KiB",
        ),
    ],
    ids=["pax comment", "GNU long name", "GNU long link"],
)
def test_a_huge_extended_header_is_refused_before_it_is_read(
    tmp_path: Path, member: dict[str, object], fmt: int, reason: str
) -> None:
    """tarfile reads an extended header whole: 8 MiB of it is refused from its size."""
    info = tarfile.TarInfo()
    for field, value in member.items():
        setattr(info, field, value)
    package = tmp_path / "p.tgz"
    with tarfile.open(package, "w:gz", format=fmt, compresslevel=1) as tar:
        tar.addfile(info)
        for good, data in good_members(FILES_OK):
            tar.addfile(good, io.BytesIO(data or b""))
    assert package.stat().st_size < 100_000
    for read in (read_manifest, lambda p: unpack(p, tmp_path / "dest")):
        with pytest.raises(PackageError) as caught:
            read(package)
        assert str(caught.value) == f"package refused: {reason}"
    assert not (tmp_path / "dest").exists()


def test_extended_headers_within_the_limit_are_read(tmp_path: Path) -> None:
    comment = pax_records(tarfile.XHDTYPE, {"comment": "z" * 60_000})
    package = raw_package(tmp_path, pax_records(tarfile.XGLTYPE, {"c": "g"}), comment)
    assert {f.path for f in read_manifest(package).files} == set(FILES_OK)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        (
            [long_name(600)] * 400,
            "././@LongLink: more than 8 extended headers in a row",
        ),
        (
            [
                pax_records(tarfile.XGLTYPE, {"a": "x" * 40_000}),
                blocks(folder("files"), fmt=tarfile.USTAR_FORMAT),
                pax_records(tarfile.XGLTYPE, {"b": "y" * 40_000}),
            ],
            "././@PaxHeader: global extended headers exceed 64 KiB",
        ),
    ],
    ids=["a long chain", "global records adding up"],
)
def test_extended_headers_adding_up_are_refused(
    tmp_path: Path, parts: list[bytes], reason: str
) -> None:
    """Each within the limit, but a chain recurses in tarfile and global records stay held."""
    package = raw_package(tmp_path, *parts)
    with pytest.raises(PackageError) as caught:
        read_manifest(package)
    assert str(caught.value) == f"package refused: {reason}"


def test_sparse_members_are_refused(tmp_path: Path) -> None:
    """tarfile reads a sparse map without a bound (GNU 1.0: a count, then a line each)."""
    old = tarfile.TarInfo("files/b.so")
    old.type = tarfile.GNUTYPE_SPARSE
    pax = tarfile.TarInfo("files/GNUSparseFile.0/b.so")
    pax.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "files/b.so",
        "GNU.sparse.realsize": "100",
    }
    sparse_map = b"99999999\n" + b"0\n" * 2000
    for part in (blocks(old), blocks(pax, sparse_map, tarfile.PAX_FORMAT)):
        with pytest.raises(PackageError) as caught:
            read_manifest(raw_package(tmp_path, part))
        assert str(caught.value) == (
            "package refused: files/b.so: sparse files are not allowed in a package"
        )


def test_header_fields_the_reader_does_not_use_are_not_kept(tmp_path: Path) -> None:
    """tarfile keeps every member it read: 120 user names of 60 KiB would be 7 MB."""
    folders = []
    for i in range(120):
        info = folder(f"files/d{i}")
        info.pax_headers = {"uname": f"{i}".ljust(60_000, "u")}
        folders.append(blocks(info, fmt=tarfile.PAX_FORMAT))
    package = raw_package(tmp_path, *folders)
    tracemalloc.start()
    try:
        assert read_manifest(package).kind == "app"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


# -- garbage and round trips ----------------------------------------------------------------------


@quick
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_package_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp, "p")
        for body in (data, gzip.compress(data, mtime=0), lzma.compress(data)):
            package.write_bytes(body)
            try:
                unpack(package, Path(tmp, "dest"), max_bytes=1 << 16, max_files=10)
            except PackageError:
                assert not Path(tmp, "dest").exists()
            else:
                shutil.rmtree(Path(tmp, "dest"))


@pytest.fixture(scope="module")
def valid_tar() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        package = craft(Path(tmp, "p.tar"), good_members(FILES_OK), compression="")
        return package.read_bytes()


@quick
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=4))
def test_damaged_packages_are_refused_or_unpacked_intact(
    valid_tar: bytes, flips: list[tuple[int, int]]
) -> None:
    """Flipped bytes anywhere: refused, or (in padding, say) unpacked exactly as listed."""
    damaged = bytearray(valid_tar)
    for at, xor in flips:
        damaged[at % len(damaged)] ^= xor
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp, "p.tgz")
        package.write_bytes(gzip.compress(bytes(damaged), mtime=0))
        try:
            manifest = unpack(package, Path(tmp, "dest"))
        except PackageError:
            assert not Path(tmp, "dest").exists()
            return
        got = contents(Path(tmp, "dest"))
        assert {f.path: (f.sha256, f.mode) for f in manifest.files} == {
            p: (sha(d), m) for p, (d, m) in got.items()
        }


segment = st.text(
    st.characters(
        codec="utf-8", exclude_characters="/\\\x7f", min_codepoint=0x20, max_codepoint=0x2FF
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@st.composite
def folder_trees(draw: st.DrawFn) -> dict[str, tuple[bytes, int]]:
    paths = draw(st.lists(st.lists(segment, min_size=1, max_size=4), min_size=1, max_size=8))
    files: dict[str, tuple[bytes, int]] = {}
    taken: set[tuple[str, ...]] = set()
    for parts in paths:
        key = tuple(parts)
        prefixes = {key[:n] for n in range(1, len(key))}
        if key in taken or prefixes & taken or any(t[: len(key)] == key for t in taken):
            continue
        taken.add(key)
        mode = draw(st.integers(0o400, 0o777)) | 0o600
        files["/".join(parts)] = (draw(st.binary(max_size=300)), mode)
    return files


@quick
@given(files=folder_trees(), kind=st.sampled_from(KINDS))
def test_build_unpack_round_trip(files: dict[str, tuple[bytes, int]], kind: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = tree(Path(tmp, "src"), files)
        manifest = build_package(src, Path(tmp, "p.tgz"), kind=kind, version="1.0")
        first = Path(tmp, "p.tgz").read_bytes()
        assert unpack(Path(tmp, "p.tgz"), Path(tmp, "dest")) == manifest
        assert contents(Path(tmp, "dest")) == files
        build_package(src, Path(tmp, "q.tgz"), kind=kind, version="1.0")
        assert Path(tmp, "q.tgz").read_bytes() == first


# -- the command -----------------------------------------------------------------------------------


def test_cli_build_and_check(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    out = tmp_path / "app.tgz"
    runner = CliRunner()
    args = ["package", "build", str(src), "-o", str(out), "--kind", "app", "--version", "1.2.0"]
    hooks = ["--pre", "/etc/init.d/app stop", "--post", "/etc/init.d/app start"]
    built = runner.invoke(main, [*args, *hooks])
    assert built.exit_code == 0, built.output
    raw = out.read_bytes()
    for line in (
        "kind       app",
        "version    1.2.0",
        f"files      4 ({sum(len(d) for d, _ in SAMPLE.values())} bytes)",
        f"sha256     {sha(raw)}",
        f"md5        {hashlib.md5(raw).hexdigest()}",
    ):
        assert line in built.output
    assert read_manifest(out).post == ["/etc/init.d/app start"]
    checked = runner.invoke(main, ["package", "check", str(out)])
    assert checked.exit_code == 0, checked.output
    assert f"{out}: ok" in checked.output and f"sha256     {sha(raw)}" in checked.output


def test_cli_check_of_a_bad_package_exits_1_with_the_reason(tmp_path: Path) -> None:
    package = craft(tmp_path / "bad.tgz", [*good_members(FILES_OK), reg("files/../../x", b"x")])
    result = CliRunner().invoke(main, ["package", "check", str(package)])
    assert result.exit_code == 1
    assert "package refused: files/../../x: path escapes the target root" in result.output


def test_cli_build_refusal_exits_1(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", SAMPLE)
    (src / "link").symlink_to("main.lua")
    out = str(tmp_path / "p.tgz")
    args = ["package", "build", str(src), "-o", out, "--kind", "app", "--version", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "link: symlinks are not allowed in a package" in result.output


def test_cli_help() -> None:
    runner = CliRunner()
    for args in (["package"], ["package", "build"], ["package", "check"]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
