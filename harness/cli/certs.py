"""``ota-hil certs``: a manufacturer CA and node birth certificates on disk.

Files: ``ca.key`` (CA Ed25519 private key, hex, mode 0600), ``ca.pub`` (its public key,
hex), ``<node>.cert`` (encoded birth certificate, binary) and ``<node>.key`` (the node's
X25519 private key, hex, mode 0600).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..nodeproto.certs import (
    MAX_NODE_ID_BYTES,
    BirthCertificate,
    CertificateError,
    ManufacturerCA,
    verify_certificate,
)
from .common import say

_FILE = click.Path(dir_okay=False, path_type=Path)
_DIR = click.Path(file_okay=False, path_type=Path)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_hex(path: Path, what: str, size: int = 32) -> bytes:
    text = _read_bytes(path).decode("ascii", errors="replace").strip()
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise click.ClickException(f"{path}: {what} is not hex") from None
    if len(data) != size:
        raise click.ClickException(f"{path}: {what} must be {size} bytes, not {len(data)}")
    return data


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    """Write ``data``; a secret file is created, or narrowed, to mode 0600 before it is filled."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as f:
            if secret:
                os.fchmod(f.fileno(), 0o600)
            f.write(data)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise click.ClickException(
            f"refusing to overwrite {existing[0]}{more}; use --force to replace"
        )


def _out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create {out}: {exc.strerror or exc}") from None


def _check_file_name(node_id: str) -> None:
    """Node ids name files here: refuse what would escape --out or hide."""
    try:
        size = len(node_id.encode())
    except UnicodeEncodeError:
        size = 0
    if (
        not 1 <= size <= MAX_NODE_ID_BYTES
        or node_id.startswith(".")
        or any(c in node_id for c in "/\\")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in node_id)
    ):
        raise click.ClickException(
            f"node id {node_id!r} cannot name a file: it must be 1..{MAX_NODE_ID_BYTES} bytes, "
            "without '/', '\\', control characters or a leading '.'"
        )


@click.group("certs")
def certs_command() -> None:
    """Manufacturer CA and node birth certificates.

    A birth certificate binds a node id to the node's X25519 public key, signed with
    the CA's Ed25519 key; the gateway trusts only ca.pub. Typical use:

    \b
      ota-hil certs ca --out pki
      ota-hil certs issue --ca pki/ca.key --out pki --count 10
      ota-hil certs show pki/node-0001.cert --ca pki/ca.pub
    """


@certs_command.command("ca")
@click.option("--out", type=_DIR, required=True, help="Directory for ca.key and ca.pub.")
@click.option(
    "--seed",
    default=None,
    help="Derive the CA key from this text (the same text gives the same CA); "
    "without it the key is random.",
)
@click.option("--force", is_flag=True, help="Replace an existing ca.key / ca.pub.")
def ca_command(out: Path, seed: str | None, force: bool) -> None:
    """Create a manufacturer CA in OUT.

    Writes OUT/ca.key (the Ed25519 private key, hex, mode 0600) and OUT/ca.pub (the
    public key, hex) and prints the public key: what gateways are configured to trust.
    """
    key_path, pub_path = out / "ca.key", out / "ca.pub"
    _refuse_overwrite([key_path, pub_path], force)
    ca = ManufacturerCA.generate() if seed is None else ManufacturerCA.from_seed(seed.encode())
    _out_dir(out)
    _write(key_path, ca.private_bytes().hex().encode() + b"\n", secret=True)
    _write(pub_path, ca.public_key.hex().encode() + b"\n")
    say(f"CA public key: {ca.public_key.hex()}")
    say(f"wrote {key_path} and {pub_path}")


@certs_command.command("issue")
@click.argument("node_ids", nargs=-1, metavar="[NODE_ID]...")
@click.option(
    "--ca", "ca_path", type=_FILE, required=True, help="The CA's private key file (ca.key)."
)
@click.option("--out", type=_DIR, required=True, help="Directory for the .cert and .key files.")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Also issue PREFIX0001..PREFIX<N> (zero-padded to at least 4 digits).",
)
@click.option("--prefix", default="node-", show_default=True, help="Node id prefix for --count.")
@click.option("--force", is_flag=True, help="Replace existing .cert / .key files.")
def issue_command(
    node_ids: tuple[str, ...],
    ca_path: Path,
    out: Path,
    count: int | None,
    prefix: str,
    force: bool,
) -> None:
    """Issue birth certificates and node keys into OUT.

    Writes OUT/<NODE_ID>.cert (the encoded certificate) and OUT/<NODE_ID>.key. The .key
    file holds the node's X25519 private key in hex (mode 0600): it belongs on
    the node (or its simulator), never on the gateway. Node keys are random each time.
    """
    if ca_path.suffix == ".pub":
        raise click.ClickException(f"--ca takes the CA's private key (ca.key), not {ca_path}")
    ids = list(node_ids)
    if count is not None:
        width = max(4, len(str(count)))
        ids += [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise click.ClickException("no node ids: give NODE_ID arguments or --count N")
    for node_id in ids:
        _check_file_name(node_id)
    ca = ManufacturerCA.from_private_bytes(_read_hex(ca_path, "CA private key"))
    targets = [out / f"{node_id}.{ext}" for node_id in ids for ext in ("cert", "key")]
    _refuse_overwrite(targets, force)
    _out_dir(out)
    for node_id in ids:
        identity = ca.issue(node_id)
        _write(out / f"{node_id}.cert", identity.certificate.encode())
        _write(out / f"{node_id}.key", identity.private_key.hex().encode() + b"\n", secret=True)
    say(f"issued {len(ids)} birth certificate(s) in {out}, signed by CA {ca.public_key.hex()}")


@certs_command.command("show")
@click.argument("cert_path", type=_FILE, metavar="FILE.cert")
@click.option(
    "--ca",
    "ca_pub",
    type=_FILE,
    default=None,
    help="The trusted CA public key (ca.pub); exit 1 unless the certificate is signed by it.",
)
def show_command(cert_path: Path, ca_pub: Path | None) -> None:
    """Print a birth certificate; with --ca, check that the CA signed it.

    Prints the node id and public key, then "signed by the trusted CA: yes" or "no"
    (exit status 1) when --ca is given.
    """
    if ca_pub is not None and ca_pub.suffix == ".key":
        raise click.ClickException(f"--ca takes the CA's public key (ca.pub), not {ca_pub}")
    trusted = None if ca_pub is None else _read_hex(ca_pub, "CA public key")
    try:
        cert = BirthCertificate.decode(_read_bytes(cert_path))
    except CertificateError as exc:
        raise click.ClickException(f"{cert_path}: {exc}") from None
    say(f"node id: {cert.node_id}")
    say(f"public key: {cert.public_key.hex()}")
    if trusted is None:
        return
    try:
        verify_certificate(cert, trusted)
    except CertificateError:
        say("signed by the trusted CA: no")
        raise SystemExit(1) from None
    say("signed by the trusted CA: yes")
