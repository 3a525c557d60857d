"""Rig files: a hardware rig described in YAML a lab engineer can read and edit.

A rig file names the rig (which also names its lock), the radio, the coordinator board's
serial port, the nodes it reaches (id, radio address, optional console port and power
switch commands), the manufacturer CA, and the gateway: the harness's reference gateway,
or a real one that connects to the harness's broker. ``docs/rigs.md`` has the format and
a complete example; ``rigs/virtual.yaml`` and ``rigs/external-reference.yaml`` are two.

Paths in the file (``ca``, ``certificate``, ``lock``) are relative to the file itself.

Errors while loading are :class:`RigFileError` naming the file, the line where known,
the field path (``nodes[2].address``) and what was expected; every problem found is
listed, not just the first.

The YAML is read with a safe loader that takes only ``true``/``false`` as booleans
(YAML 1.2), so ``on:`` and ``off:`` in a power block are the keys they look like, not the
YAML 1.1 booleans ``True`` / ``False``.
"""

from __future__ import annotations

import os
import re
import shlex
import string
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness.nodeproto.certs import (
    KEY_SIZE,
    MAX_NODE_ID_BYTES,
    BirthCertificate,
    CertificateError,
)
from harness.nodeproto.frames import MIN_FRAME
from harness.yamlerrors import (
    FieldError,
    Problem,
    YamlFileError,
    field_path,
    pydantic_reason,
    read_yaml,
    with_lines,
)

__all__ = [
    "RADIOS",
    "ConsoleSpec",
    "CoordinatorSpec",
    "Endpoint",
    "GatewaySpec",
    "NodeSpec",
    "PlatformSpec",
    "PowerSpec",
    "RadioTimings",
    "Rig",
    "RigFileError",
    "load_rig",
]


# --- radios ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RadioTimings:
    """What a rig needs from a radio profile: the frame size and the answer timeout."""

    max_frame: int
    response_timeout: float


#: Defaults per radio name. The same numbers as ``sims.radio.PROFILES`` (rigs/ never
#: imports sims/; tests/test_rigs_rigfile.py checks the two agree).
RADIOS: dict[str, RadioTimings] = {
    "324": RadioTimings(max_frame=64, response_timeout=0.050),
    "ble": RadioTimings(max_frame=244, response_timeout=0.100),
}

#: The largest radio frame a rig file may set (a sanity bound against typos).
MAX_FRAME_LIMIT = 1024

#: Placeholders a gateway ``command`` may use.
COMMAND_PLACEHOLDERS = (
    "broker",
    "product_id",
    "device_id",
    "state_dir",
    "secure_id",
    "secure_key",
)

ResetLine = Literal["dtr", "rts", "none"]
GatewayMode = Literal["reference", "external"]

_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# --- errors ---------------------------------------------------------------------------


class RigFileError(YamlFileError):
    """A rig file (or rig data) that cannot be used (``source`` ``<rig>`` for data)."""


class _Problems(ValueError):
    """Several :class:`FieldError` from one validator, reported one by one."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(map(str, errors)))
        self.errors = errors


# --- field checks ---------------------------------------------------------------------


def _int_to_str(value: Any) -> Any:
    """YAML reads ``radio: 324`` as an int; the field holds text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _bad_id_chars(value: str) -> list[str]:
    return sorted({c for c in value if c in "/+#" or not c.isprintable() or c.isspace()})


def _check_segment(value: str, what: str) -> str:
    """An id that is used as an MQTT topic segment."""
    bad = _bad_id_chars(value)
    if bad:
        raise ValueError(
            f"{what} must be an MQTT topic segment: no '/', '+', '#', spaces or control "
            f"characters, got {', '.join(map(repr, bad))}"
        )
    return value


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PORT_SCHEMES = ("socket", "rfc2217", "loop", "hwgrep", "spy")
_PORT_HELP = (
    "expected a device path (/dev/ttyUSB0, /dev/serial/by-id/...), socket://host:port "
    "(ser2net), rfc2217://host:port, hwgrep://REGEX or loop://"
)


def check_port(value: str) -> str:
    """A serial port as ``serial.serial_for_url`` takes it; ValueError says what is wrong."""
    text = value.strip()
    if not text:
        raise ValueError(f"the port is empty; {_PORT_HELP}")
    if "://" not in text:
        if text.startswith("/") or re.fullmatch(r"COM\d+", text, re.IGNORECASE):
            return text
        raise ValueError(f"{text!r} is not an absolute device path; {_PORT_HELP}")
    scheme = text.split("://", 1)[0].lower()
    if scheme not in _PORT_SCHEMES:
        raise ValueError(f"unsupported port scheme {scheme + '://'!r}; {_PORT_HELP}")
    if scheme in ("socket", "rfc2217"):
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            port = None
            parts = None
        if parts is None or not parts.hostname or port is None or not 0 < port < 65536:
            raise ValueError(f"{text!r} needs a host and a port 1..65535: {scheme}://host:port")
    return text


def _to_path(value: Any, info: ValidationInfo) -> Any:
    """A path in the file, resolved against the rig file's folder (context ``base``)."""
    if value is None or isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a file path")
    path = Path(os.path.expanduser(value.strip()))
    base = (info.context or {}).get("base")
    if not path.is_absolute():
        path = (Path(base) if base is not None else Path.cwd()) / path
    return Path(os.path.normpath(path))


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"file not found: {path}" + (" (a folder)" if path.is_dir() else ""))
    return path


def read_ca_key(path: Path) -> bytes:
    """The CA public key in ``path`` (hex, as ``ota-hil certs ca`` writes ``ca.pub``)."""
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ValueError(
            f"{path} is not a CA public key: expected {KEY_SIZE * 2} hex digits "
            "(ca.pub as `ota-hil certs ca` writes it)"
        ) from None
    if len(key) != KEY_SIZE:
        raise ValueError(f"{path}: a CA public key is {KEY_SIZE} bytes, this one {len(key)}")
    return key


def read_certificate(path: Path) -> BirthCertificate:
    """The birth certificate in ``path`` (binary, as ``ota-hil certs issue`` writes it)."""
    try:
        return BirthCertificate.decode(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (CertificateError, ValueError) as exc:
        raise ValueError(f"{path} is not a birth certificate: {exc}") from None


# --- the models -----------------------------------------------------------------------


class ConsoleSpec(BaseModel):
    """A node's console serial port."""

    model_config = _CONFIG

    port: str
    baud: int = Field(default=115200, gt=0)

    _port = field_validator("port")(check_port)


class PowerSpec(BaseModel):
    """Shell commands that switch a node's power; ``cycle`` defaults to off, pause, on."""

    model_config = _CONFIG

    on: str | None = Field(default=None, min_length=1)
    off: str | None = Field(default=None, min_length=1)
    cycle: str | None = Field(default=None, min_length=1)
    #: Seconds each command may take.
    timeout: float = Field(default=10.0, gt=0)
    #: Seconds between off and on when ``cycle`` is not given.
    cycle_pause: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _has_a_command(self) -> PowerSpec:
        if self.on is None and self.off is None and self.cycle is None:
            raise ValueError("set at least one of on, off, cycle (or leave power out)")
        return self


class CoordinatorSpec(BaseModel):
    """The radio coordinator board: its serial port and how to reset it."""

    model_config = _CONFIG

    port: str
    baud: int = Field(default=115200, gt=0)
    #: Largest radio frame in bytes; None: the radio's.
    max_frame: int | None = Field(default=None, ge=MIN_FRAME, le=MAX_FRAME_LIMIT)
    #: Seconds a node gets to answer; None: the radio's.
    response_timeout: float | None = Field(default=None, gt=0, le=60)
    #: Seconds a node needs from START to answering from its new image (reboot included).
    apply_time: float = Field(default=5.0, gt=0, le=600)
    #: Seconds between two tries of a node that stays silent (a reboot, a long fade).
    pass_interval: float = Field(default=2.0, ge=0, le=600)
    reset: ResetLine = "none"

    _port = field_validator("port")(check_port)


class VirtualSpec(BaseModel):
    """A virtual coordinator board (``ota-hil virtual-board``) to start for this rig, with
    one simulated node per rig node. The board names node i ``node-000i`` at address i, so
    the rig's nodes must be listed that way (checked on load); the harness uses the board's
    port and CA instead of ``coordinator.port`` and ``ca``."""

    model_config = _CONFIG

    loss: float = Field(default=0.0, ge=0, le=0.95)
    burst: float = Field(default=1.0, ge=1)
    seed: int = 1
    #: Simulated seconds per wall-clock second.
    speed: float = Field(default=1.0, gt=0, le=1000)


class NodeSpec(BaseModel):
    """One real node the coordinator reaches."""

    model_config = _CONFIG

    #: The platform's child device id.
    id: str = Field(min_length=1)
    #: Radio address.
    address: int = Field(ge=0, le=0xFFFF)
    #: Expected current version (informative).
    version: str | None = Field(default=None, min_length=1)
    #: Its birth certificate; None: read over the air.
    certificate: Path | None = None
    console: ConsoleSpec | None = None
    power: PowerSpec | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        _check_segment(value, "a node id")
        size = len(value.encode())
        if size > MAX_NODE_ID_BYTES:
            raise ValueError(
                f"a node id is at most {MAX_NODE_ID_BYTES} bytes of UTF-8 (birth certificate "
                f"limit), this one is {size}"
            )
        return value

    _certificate_path = field_validator("certificate", mode="before")(_to_path)

    @field_validator("certificate")
    @classmethod
    def _check_certificate(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_certificate(_existing_file(value))
        return value

    @model_validator(mode="after")
    def _certificate_is_this_nodes(self) -> NodeSpec:
        if self.certificate is not None:
            cert = read_certificate(self.certificate)
            if cert.node_id != self.id:
                raise FieldError(
                    f"{self.certificate} is the birth certificate of {cert.node_id!r}, "
                    f"not of {self.id!r}",
                    "certificate",
                )
        return self


class GatewaySpec(BaseModel):
    """The gateway under test: the harness's reference gateway, or a real one."""

    model_config = _CONFIG

    mode: GatewayMode = "reference"
    product_id: str = Field(default="gateway-product", min_length=1)
    device_id: str = Field(default="gateway-1", min_length=1)
    secure_id: str | None = Field(default=None, min_length=1)
    secure_key: str | None = Field(default=None, min_length=1)
    #: external only: a shell command that starts the gateway under test.
    command: str | None = Field(default=None, min_length=1)
    #: external only: seconds the harness waits for the gateway's first firmware report.
    online_timeout: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("product_id", "device_id")
    @classmethod
    def _check_ids(cls, value: str) -> str:
        return _check_segment(value, "an id")

    @field_validator("command")
    @classmethod
    def _check_placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(
                f"bad braces in the command: {exc}; write {{{{ for a brace}}"
            ) from None
        unknown = sorted({f for f in fields if f not in COMMAND_PLACEHOLDERS})
        if unknown:
            valid = ", ".join(f"{{{p}}}" for p in COMMAND_PLACEHOLDERS)
            shown = ", ".join(f"{{{f}}}" for f in unknown)
            raise ValueError(f"unknown placeholder {shown}; valid placeholders: {valid}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySpec:
        errors = _gateway_problems(self)
        if errors:
            raise _Problems(errors)
        return self

    def command_for(self, broker: str, state_dir: str | os.PathLike[str]) -> str:
        """``command`` with its placeholders filled in, each value shell-quoted."""
        if self.command is None:
            raise ValueError(f"gateway {self.device_id} has no command in the rig file")
        values = {
            "broker": broker,
            "product_id": self.product_id,
            "device_id": self.device_id,
            "state_dir": os.fspath(state_dir),
            "secure_id": self.secure_id or "",
            "secure_key": self.secure_key or "",
        }
        return self.command.format(**{k: shlex.quote(v) for k, v in values.items()})


class Endpoint(BaseModel):
    """Where a harness service listens; port 0 picks a free port."""

    model_config = _CONFIG

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=0, ge=0, le=65535)


class PlatformSpec(Endpoint):
    """Where the mock platform listens; ``public_url`` is how devices elsewhere reach it."""

    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"expected http://host:port or https://..., got {value!r}")
        return value


class Rig(BaseModel):
    """A hardware rig: coordinator, nodes, CA, gateway, and where the harness listens.

    Built from a rig file (:func:`load_rig`), from a dict (:meth:`from_dict`, errors as
    :class:`RigFileError`) or with the constructor (errors as pydantic's
    ``ValidationError``). ``path`` is the rig file (None when built from data).
    """

    model_config = _CONFIG

    name: str
    radio: str = "324"
    coordinator: CoordinatorSpec | None = None
    #: The manufacturer CA's public key file; None: the harness gets the CA another way.
    ca: Path | None = None
    nodes: list[NodeSpec] = Field(default_factory=list)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    broker: Endpoint = Field(default_factory=Endpoint)
    platform: PlatformSpec = Field(default_factory=PlatformSpec)
    #: Lock file; None: ``<tempdir>/ota-hil-rig-<name>.lock``.
    lock: Path | None = None
    #: Start a virtual coordinator board for this rig (CI proves the serial path with it).
    virtual: VirtualSpec | None = None

    _path: Path | None = PrivateAttr(default=None)

    _radio_from_int = field_validator("radio", mode="before")(_int_to_str)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "a rig name is 1..64 letters, digits, '.', '_' or '-', starting with a letter "
                f"or digit (it names the lock file), got {value!r}"
            )
        return value

    @field_validator("radio")
    @classmethod
    def _check_radio(cls, value: str) -> str:
        if value not in RADIOS:
            raise ValueError(f"unknown radio {value!r}; valid radios: {', '.join(RADIOS)}")
        return value

    _paths = field_validator("ca", "lock", mode="before")(_to_path)

    @field_validator("ca")
    @classmethod
    def _check_ca(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_ca_key(_existing_file(value))
        return value

    @field_validator("lock")
    @classmethod
    def _check_lock(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_dir():
            raise ValueError(f"{value} is a folder; the lock must be a file path")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Rig:
        errors = _cross_problems(self)
        if self.virtual is not None:
            width = max(4, len(str(len(self.nodes) - 1)))
            for i, node in enumerate(self.nodes):
                if (node.id, node.address) != (f"node-{i:0{width}d}", i):
                    errors.append(
                        FieldError(
                            f"with a virtual board, node {i} is node-{i:0{width}d} at address "
                            f"{i} (the board's simulated node), not {node.id} at {node.address}",
                            "nodes",
                            i,
                        )
                    )
        if errors:
            raise _Problems(errors)
        return self

    # --- building ---------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, data: Any, source: str = "<rig>", base: str | os.PathLike[str] | None = None
    ) -> Rig:
        """Validate ``data``; relative paths are taken from ``base`` (default: the current
        folder); errors as :class:`RigFileError` naming ``source``."""
        if not isinstance(data, Mapping):
            got = "nothing" if data is None else type(data).__name__
            raise RigFileError(
                source, [(None, None, f"expected a mapping of rig fields, got {got}")]
            )
        context = {"base": Path(base) if base is not None else None}
        try:
            return cls.model_validate(data, context=context)
        except ValidationError as exc:
            problems = _problems(exc)
        # Fields that failed stop the cross checks; run them on the raw data too, so that
        # a duplicate address is reported along with a bad port.
        for error in _cross_problems(data):
            problem = (field_path(error.sub_loc) or None, None, str(error))
            if problem not in problems:
                problems.append(problem)
        raise RigFileError(source, problems)

    def with_coordinator_port(self, port: str) -> Rig:
        """This rig with the coordinator on ``port`` (e.g. a virtual board's socket)."""
        if self.coordinator is None:
            raise ValueError(f"rig {self.name} has no coordinator")
        coordinator = self.coordinator.model_copy(update={"port": check_port(port)})
        return self.model_copy(update={"coordinator": coordinator})

    # --- what the harness asks --------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The rig file this rig was loaded from (absolute), or None."""
        return self._path

    @property
    def lock_path(self) -> Path:
        """The lock file that keeps two jobs off this rig."""
        if self.lock is not None:
            return self.lock
        return Path(tempfile.gettempdir()) / f"ota-hil-rig-{self.name}.lock"

    @property
    def timings(self) -> RadioTimings:
        """Frame size and answer timeout: the coordinator's settings, else the radio's."""
        radio = RADIOS[self.radio]
        coordinator = self.coordinator
        return RadioTimings(
            max_frame=(coordinator and coordinator.max_frame) or radio.max_frame,
            response_timeout=(coordinator and coordinator.response_timeout)
            or radio.response_timeout,
        )

    @property
    def max_frame(self) -> int:
        return self.timings.max_frame

    @property
    def response_timeout(self) -> float:
        return self.timings.response_timeout

    @property
    def apply_time(self) -> float:
        return (
            self.coordinator.apply_time
            if self.coordinator
            else CoordinatorSpec.model_fields["apply_time"].default
        )

    @property
    def pass_interval(self) -> float:
        return (
            self.coordinator.pass_interval
            if self.coordinator
            else CoordinatorSpec.model_fields["pass_interval"].default
        )

    def node_ids(self) -> list[str]:
        return [node.id for node in self.nodes]

    def node(self, node_id: str) -> NodeSpec:
        """The node ``node_id``; KeyError naming the rig's nodes if there is none."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(self.node_ids()) or "none"
        where = f" ({self._path})" if self._path else ""
        raise KeyError(f"rig {self.name}{where} has no node {node_id!r}; its nodes: {known}")

    def node_at(self, address: int) -> NodeSpec | None:
        """The node at radio ``address``, or None."""
        for node in self.nodes:
            if node.address == address:
                return node
        return None

    def ca_public_key(self) -> bytes | None:
        """The CA public key from ``ca``, or None when the rig file gives none."""
        return None if self.ca is None else read_ca_key(self.ca)


def _cross_problems(data: Any) -> list[FieldError]:
    """Checks across nodes: unique ids and addresses, a coordinator to reach them.

    Works on a validated :class:`Rig` and, leniently, on raw data (values of the wrong
    type are skipped: their own errors are reported elsewhere)."""
    nodes = _get(data, "nodes")
    if not isinstance(nodes, list):
        nodes = []
    errors = []
    gateway = _get(data, "gateway")
    if isinstance(gateway, Mapping | GatewaySpec):
        errors += [FieldError(str(e), "gateway", *e.sub_loc) for e in _gateway_problems(gateway)]
    if nodes and _get(data, "coordinator") is None:
        errors.append(
            FieldError(
                f"the rig lists {len(nodes)} node(s) but no coordinator to reach them; add "
                "coordinator: {port: ..., baud: ...}",
                "coordinator",
            )
        )
    first_id: dict[str, int] = {}
    first_address: dict[int, int] = {}
    for i, node in enumerate(nodes):
        node_id, address = _get(node, "id"), _get(node, "address")
        if isinstance(node_id, str):
            if node_id in first_id:
                errors.append(
                    FieldError(
                        f"duplicate node id {node_id!r}: nodes[{first_id[node_id]}] has it too",
                        "nodes",
                        i,
                        "id",
                    )
                )
            else:
                first_id[node_id] = i
        if isinstance(address, int) and not isinstance(address, bool):
            if address in first_address:
                errors.append(
                    FieldError(
                        f"duplicate radio address {address} (0x{address:04x}): "
                        f"nodes[{first_address[address]}] has it too",
                        "nodes",
                        i,
                        "address",
                    )
                )
            else:
                first_address[address] = i
    return errors


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _gateway_problems(gateway: Any) -> list[FieldError]:
    """Checks across the gateway's fields (on a GatewaySpec, or leniently on raw data)."""
    errors = []
    mode, command = _get(gateway, "mode") or "reference", _get(gateway, "command")
    secure_id, secure_key = _get(gateway, "secure_id"), _get(gateway, "secure_key")
    if command is not None and mode != "external":
        errors.append(
            FieldError(
                "a command is only for mode: external (the reference gateway is run by the "
                "harness itself)",
                "command",
            )
        )
    if (secure_id is None) != (secure_key is None):
        given, missing = (
            ("secure_id", "secure_key") if secure_key is None else ("secure_key", "secure_id")
        )
        errors.append(
            FieldError(f"{given} without {missing}: the two go together (or leave both out)", given)
        )
    elif isinstance(command, str) and secure_id is None:
        used = [p for p in ("secure_id", "secure_key") if "{" + p + "}" in command]
        if used:
            errors.append(
                FieldError(
                    f"the command uses {{{used[0]}}} but the gateway has no secure_id / secure_key",
                    "command",
                )
            )
    return errors


# --- loading --------------------------------------------------------------------------


class _RigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: ``on``/``off``/``yes``/``no`` stay text."""


_BOOL = "tag:yaml.org,2002:bool"
_RigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RigLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_rig(path: str | os.PathLike[str]) -> Rig:
    """Read and validate a rig file; every problem is listed in one :class:`RigFileError`."""
    source = str(path)
    text, data = read_yaml(path, lambda problems: RigFileError(source, problems), _RigLoader)
    if data is None:
        raise RigFileError(source, [(None, None, "the file is empty; expected at least name:")])
    absolute = Path(path).resolve()
    try:
        rig = Rig.from_dict(data, source, base=absolute.parent)
    except RigFileError as exc:
        problems = with_lines(text, exc.problems, _RigLoader)
        problems.sort(key=lambda problem: problem[1] or 1 << 30)  # in file order
        raise RigFileError(source, problems) from None
    rig._path = absolute
    return rig


TARGETS = ("sim", "rig", "external")


def target_problem(target: str, rig: Rig | None) -> str | None:
    """Why ``target`` cannot run on ``rig`` (None: it can): rig and external need a rig
    file whose gateway mode fits, and a rig's nodes need the CA that signed them."""
    if target not in TARGETS:
        return f"--target must be one of {', '.join(TARGETS)}, not {target!r}"
    if target == "sim":
        return None
    if rig is None:
        return f"--target {target} needs --rig FILE"
    where = rig.path or f"rig {rig.name}"
    if target == "rig" and rig.gateway.mode != "reference":
        return f"{where}: --target rig needs gateway.mode reference (the file says external)"
    if target == "external" and rig.gateway.mode != "external":
        return f"{where}: --target external needs gateway.mode external (the file says reference)"
    if target == "rig" and rig.nodes and rig.ca is None and rig.virtual is None:
        return f"{where}: --target rig needs ca: the nodes' certificates are checked against it"
    return None


# --- error reporting ------------------------------------------------------------------


def _problems(exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Problems):
            for item in cause.errors:
                problems.append((field_path(loc + item.sub_loc) or None, None, str(item)))
            continue
        if isinstance(cause, FieldError):
            loc += cause.sub_loc
            reason = str(cause)
        else:
            reason = pydantic_reason(error, Rig)
        problems.append((field_path(loc) or None, None, reason))
    return problems
