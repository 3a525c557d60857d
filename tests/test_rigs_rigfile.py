"""Tests for rigs.rigfile: rig files, their errors, paths and what the harness asks of them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from harness.nodeproto.certs import ManufacturerCA
from rigs.rigfile import (
    RADIOS,
    GatewaySpec,
    PowerSpec,
    Rig,
    RigFileError,
    load_rig,
)

RIGS = Path(__file__).parent.parent / "rigs"


def write(tmp_path: Path, text: str, name: str = "bench.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def make_certs(folder: Path, *node_ids: str) -> ManufacturerCA:
    """ca.pub (hex, as `ota-hil certs ca` writes it) and <node>.cert in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = ManufacturerCA.from_seed(b"rig tests")
    (folder / "ca.pub").write_text(ca.public_key.hex() + "\n")
    for node_id in node_ids:
        (folder / f"{node_id}.cert").write_bytes(ca.issue(node_id).certificate.encode())
    return ca


BENCH = """\
name: bench-3
radio: "324"
coordinator:
  port: /dev/ttyUSB0
  baud: 115200
  max_frame: 48
  response_timeout: 0.2
  reset: dtr
ca: certs/ca.pub
nodes:
  - id: node-0001
    address: 0x0001
    version: "1.0.0"
    certificate: certs/node-0001.cert
    console: {port: /dev/ttyUSB1, baud: 57600}
    power: {on: "relayctl 3 on", off: "relayctl 3 off", cycle: null, timeout: 10}
  - id: node-0002
    address: 0x0002
    console: {port: "socket://lab-pi:4001"}
gateway:
  mode: reference
  product_id: gateway-product
  device_id: gateway-1
  secure_id: null
  secure_key: null
  command: null
broker: {host: 127.0.0.1, port: 0}
platform: {host: 0.0.0.0, port: 8080, public_url: "http://10.0.0.5:8080"}
lock: locks/bench-3.lock
"""


# --- the shipped examples -------------------------------------------------------------


def test_the_virtual_rig_loads() -> None:
    rig = load_rig(RIGS / "virtual.yaml")
    assert rig.path == (RIGS / "virtual.yaml").resolve()
    assert rig.radio == "324" and rig.ca is None and rig.gateway.mode == "reference"
    assert rig.node_ids() == [f"node-{i:04d}" for i in range(6)]
    assert [n.address for n in rig.nodes] == list(range(6))
    assert rig.coordinator is not None and rig.coordinator.port == "socket://127.0.0.1:5870"
    assert (rig.max_frame, rig.response_timeout) == (64, 0.1)
    assert (rig.apply_time, rig.pass_interval) == (0.3, 0.5)
    assert rig.virtual is not None and (rig.virtual.loss, rig.virtual.speed) == (0.1, 40)


def test_apply_time_and_pass_interval_default_without_a_coordinator_section() -> None:
    rig = load_rig(RIGS / "external-reference.yaml")
    assert rig.coordinator is None and rig.virtual is None
    assert (rig.apply_time, rig.pass_interval) == (5.0, 2.0)


def test_the_virtual_rig_takes_the_board_port_at_run_time() -> None:
    rig = load_rig(RIGS / "virtual.yaml")
    moved = rig.with_coordinator_port("socket://127.0.0.1:40123")
    assert moved.coordinator is not None and moved.coordinator.port == "socket://127.0.0.1:40123"
    assert moved.path == rig.path and moved.nodes == rig.nodes
    assert rig.coordinator is not None and rig.coordinator.port.endswith(":5870")  # unchanged
    with pytest.raises(ValueError, match="needs a host and a port"):
        rig.with_coordinator_port("socket://127.0.0.1")


def test_the_external_reference_rig_loads_and_fills_its_command() -> None:
    rig = load_rig(RIGS / "external-reference.yaml")
    assert rig.gateway.mode == "external" and rig.nodes == [] and rig.coordinator is None
    command = rig.gateway.command_for("mqtt://127.0.0.1:1883", "/tmp/state dir")
    assert command == (
        "ota-hil gateway --broker mqtt://127.0.0.1:1883 --product-id gateway-product "
        "--device-id gateway-1 --state-dir '/tmp/state dir' --log-level warning"
    )


def test_radio_defaults_agree_with_the_simulated_profiles() -> None:
    from sims.radio import PROFILES  # the test may look at both; rigs/ itself never does

    assert set(RADIOS) == set(PROFILES)
    for name, timings in RADIOS.items():
        profile = PROFILES[name]
        assert (timings.max_frame, timings.response_timeout) == (
            profile.max_frame,
            profile.response_timeout,
        ), name


# --- a full bench ---------------------------------------------------------------------


def test_a_full_bench_rig(tmp_path: Path) -> None:
    ca = make_certs(tmp_path / "certs", "node-0001")
    rig = load_rig(write(tmp_path, BENCH))
    assert rig.name == "bench-3" and rig.path == (tmp_path / "bench.yaml").resolve()
    assert rig.ca == tmp_path / "certs" / "ca.pub"
    assert rig.ca_public_key() == ca.public_key
    assert rig.coordinator is not None and rig.coordinator.reset == "dtr"
    assert (rig.max_frame, rig.response_timeout) == (48, 0.2)  # the coordinator's settings
    node = rig.node("node-0001")
    assert node.address == 1 and node.version == "1.0.0"
    assert node.certificate == tmp_path / "certs" / "node-0001.cert"
    assert node.console is not None and (node.console.port, node.console.baud) == (
        "/dev/ttyUSB1",
        57600,
    )
    # `on:` and `off:` are keys here, not YAML 1.1 booleans
    assert node.power == PowerSpec(on="relayctl 3 on", off="relayctl 3 off", timeout=10)
    second = rig.node("node-0002")
    assert second.console is not None and second.console.baud == 115200
    assert second.power is None and second.certificate is None
    assert rig.node_at(2) is second and rig.node_at(3) is None
    assert rig.platform.public_url == "http://10.0.0.5:8080" and rig.platform.port == 8080
    assert rig.lock_path == tmp_path / "locks" / "bench-3.lock"


def test_defaults_of_a_minimal_rig() -> None:
    rig = Rig.from_dict({"name": "bare"})
    assert rig.path is None and rig.nodes == [] and rig.coordinator is None
    assert rig.gateway == GatewaySpec() and rig.gateway.mode == "reference"
    assert (rig.broker.host, rig.broker.port) == ("127.0.0.1", 0)
    assert rig.lock_path == Path(tempfile.gettempdir()) / "ota-hil-rig-bare.lock"
    assert (rig.max_frame, rig.response_timeout) == (64, 0.05)
    assert (rig.apply_time, rig.pass_interval) == (5.0, 2.0) and rig.virtual is None
    ble = Rig.from_dict({"name": "b", "radio": "ble", "coordinator": {"port": "loop://"}})
    assert (ble.max_frame, ble.response_timeout) == (244, 0.1)


def test_node_lookup_names_the_rig_and_its_nodes() -> None:
    rig = load_rig(RIGS / "virtual.yaml")
    with pytest.raises(
        KeyError, match=r"rig virtual .*virtual\.yaml.* no node 'node-9'.*node-0005"
    ):
        rig.node("node-9")


def test_paths_are_relative_to_the_rig_file_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_certs(tmp_path / "lab" / "certs", "node-0001")
    path = write(tmp_path / "lab", "name: r\nca: certs/ca.pub\n", "rig.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_rig("lab/rig.yaml").ca == tmp_path / "lab" / "certs" / "ca.pub"
    assert load_rig(path).path == path.resolve()


def test_command_values_are_shell_quoted() -> None:
    gateway = GatewaySpec(
        mode="external",
        device_id="gw;rm",
        secure_id="id",
        secure_key="k ey",
        command="run --id {device_id} --auth {secure_id}:{secure_key} {state_dir}",
    )
    assert gateway.command_for("mqtt://h:1", Path("/s")) == "run --id 'gw;rm' --auth id:'k ey' /s"
    with pytest.raises(ValueError, match="no command"):
        GatewaySpec().command_for("mqtt://h:1", "/s")


# --- errors name the file, the line, the field and what was expected -------------------


@pytest.mark.parametrize(
    ("text", "field", "line", "expected"),
    [
        ("name: r\nradio: lora\n", "radio", 2, "valid radios: 324, ble"),
        ("name: r\nradio: 324\nbogus: 1\n", "bogus", 3, "unknown field; valid fields: name, radio"),
        ("name: bench 3\n", "name", 1, "names the lock file"),
        ("radio: ble\n", "name", None, "required field is missing"),
        (
            "name: r\ncoordinator: {port: /dev/ttyUSB0}\nnodes:\n  - id: a\n    address: 65536\n",
            "nodes[0].address",
            5,
            "less than or equal to 65535 (got 65536)",
        ),
        (
            "name: r\ncoordinator: {port: /dev/ttyUSB0}\nnodes:\n  - {id: a/b, address: 1}\n",
            "nodes[0].id",
            4,
            "MQTT topic segment",
        ),
        (
            f"name: r\ncoordinator: {{port: /dev/ttyUSB0}}\nnodes:\n  - {{id: {'n' * 65}, "
            "address: 1}\n",
            "nodes[0].id",
            4,
            "at most 64 bytes",
        ),
        (
            "name: r\ncoordinator: {port: /dev/ttyUSB0}\nnodes:\n  - {id: a, address: true}\n",
            "nodes[0].address",
            4,
            "expected a whole number (got True)",
        ),
        (
            "name: r\ncoordinator:\n  port: /dev/ttyUSB0\n  reset: off\n",
            "coordinator.reset",
            4,
            "'dtr', 'rts' or 'none' (got 'off')",
        ),
        ("name: r\ncoordinator: {port: ttyUSB0}\n", "coordinator.port", 2, "absolute device"),
        ("name: r\ncoordinator: {port: 'socket://pi'}\n", "coordinator.port", 2, "host:port"),
        ("name: r\ncoordinator: {port: 'tcp://pi:1'}\n", "coordinator.port", 2, "scheme"),
        ("name: r\ncoordinator: {port: /dev/x, max_frame: 8}\n", "coordinator.max_frame", 2, "16"),
        (
            "name: r\ngateway:\n  command: run {broker}\n",
            "gateway.command",
            3,
            "only for mode: external",
        ),
        (
            "name: r\ngateway:\n  mode: external\n  command: run {brokr}\n",
            "gateway.command",
            4,
            "unknown placeholder {brokr}; valid placeholders: {broker}",
        ),
        (
            "name: r\ngateway:\n  secure_id: abc\n",
            "gateway.secure_id",
            3,
            "secure_id without secure_key: the two go together",
        ),
        ("name: r\ngateway:\n  mode: cloud\n", "gateway.mode", 3, "'reference' or 'external'"),
        ("name: r\ngateway: {device_id: 'gw#1'}\n", "gateway.device_id", 2, "topic segment"),
        ("name: r\nplatform: {public_url: 'ftp://x'}\n", "platform.public_url", 2, "http://"),
        (
            "name: r\ncoordinator: {port: /dev/x}\nnodes:\n  - {id: a, address: 1, power: {}}\n",
            "nodes[0].power",
            4,
            "at least one of on, off, cycle",
        ),
        (
            "name: r\ncoordinator: {port: /dev/x}\nnodes:\n  - {id: a, address: 1, version: 1.0}\n",
            "nodes[0].version",
            4,
            "quote it in YAML ('1.0')",
        ),
        ("name: r\nnodes:\n  - {id: a, address: 1}\n", "coordinator", None, "no coordinator"),
    ],
)
def test_errors_name_file_line_field_and_expectation(
    tmp_path: Path, text: str, field: str, line: int | None, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RigFileError) as caught:
        load_rig(path)
    error = caught.value
    assert len(error.problems) == 1, error.problems
    assert (error.field, error.line) == (field, line)
    assert expected in error.reason
    assert str(error).startswith(f"{path}{f', line {line}' if line else ''}, {field}: ")


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = """\
name: bench-3
radio: "324"
nodes:
  - id: node-1
    address: 7
    console: {port: ttyUSB1}
  - id: node-2
    address: 7
  - id: node-1
    address: 9
gateway:
  mode: external
  secure_id: x
"""
    path = write(tmp_path, text)
    with pytest.raises(RigFileError) as caught:
        load_rig(path)
    found = {(field, line): reason for field, line, reason in caught.value.problems}
    assert set(found) == {
        ("nodes[0].console.port", 6),
        ("nodes[1].address", 8),
        ("nodes[2].id", 9),
        ("gateway.secure_id", 13),
        ("coordinator", None),
    }
    assert (
        "duplicate radio address 7 (0x0007): nodes[0] has it too" in found[("nodes[1].address", 8)]
    )
    assert "duplicate node id 'node-1': nodes[0] has it too" in found[("nodes[2].id", 9)]
    lines = [line for _, line, _ in caught.value.problems]
    assert lines == [6, 8, 9, 13, None]  # in file order, the file-wide one last
    message = str(caught.value)
    assert message.startswith(f"{path}: 5 problems:\n")
    assert "  line 8, nodes[1].address: duplicate radio address 7" in message


def test_missing_files_are_named(tmp_path: Path) -> None:
    text = """\
name: r
ca: pki/ca.pub
coordinator: {port: /dev/ttyUSB0}
nodes:
  - {id: node-0001, address: 1, certificate: pki/node-0001.cert}
"""
    with pytest.raises(RigFileError) as caught:
        load_rig(write(tmp_path, text))
    problems = {field: (line, reason) for field, line, reason in caught.value.problems}
    assert problems["ca"] == (2, f"file not found: {tmp_path / 'pki' / 'ca.pub'}")
    assert problems["nodes[0].certificate"] == (
        5,
        f"file not found: {tmp_path / 'pki' / 'node-0001.cert'}",
    )


def test_ca_and_certificate_contents_are_checked(tmp_path: Path) -> None:
    make_certs(tmp_path / "certs", "node-0002")
    (tmp_path / "certs" / "bad.pub").write_text("not hex\n")
    (tmp_path / "certs" / "junk.cert").write_bytes(b"\x01\x02")
    text = """\
name: r
ca: certs/bad.pub
coordinator: {port: /dev/ttyUSB0}
nodes:
  - {id: node-0001, address: 1, certificate: certs/node-0002.cert}
  - {id: node-0003, address: 3, certificate: certs/junk.cert}
"""
    with pytest.raises(RigFileError) as caught:
        load_rig(write(tmp_path, text))
    problems = {field: (line, reason) for field, line, reason in caught.value.problems}
    assert "is not a CA public key: expected 64 hex digits" in problems["ca"][1]
    line, reason = problems["nodes[0].certificate"]
    assert line == 5 and "birth certificate of 'node-0002', not of 'node-0001'" in reason
    line, reason = problems["nodes[1].certificate"]
    assert line == 6 and "junk.cert is not a birth certificate" in reason


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("name: r\nnodes: [\n", 3, "YAML syntax error"),
        ("", None, "the file is empty"),
        ("- name: r\n", None, "expected a mapping of rig fields, got list"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, line: int | None, expected: str) -> None:
    with pytest.raises(RigFileError) as caught:
        load_rig(write(tmp_path, text))
    assert caught.value.line == line and expected in caught.value.reason


def test_a_missing_rig_file(tmp_path: Path) -> None:
    with pytest.raises(RigFileError, match=r"nope\.yaml: cannot read the file"):
        load_rig(tmp_path / "nope.yaml")


def test_yes_and_no_stay_text_while_true_and_false_are_booleans(tmp_path: Path) -> None:
    # YAML 1.1 would read `on`, `off`, `yes`, `no` as booleans; a rig file reads them as text.
    text = "name: r\ncoordinator: {port: /dev/x}\nnodes:\n  - {id: a, address: 1, version: yes}\n"
    assert load_rig(write(tmp_path, text)).node("a").version == "yes"
    text = "name: r\ncoordinator: {port: /dev/x}\nnodes:\n  - {id: a, address: 1, version: true}\n"
    with pytest.raises(RigFileError, match="Input should be a valid string"):
        load_rig(write(tmp_path, text))


def test_port_forms_that_are_accepted() -> None:
    for port in (
        "/dev/ttyUSB0",
        "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0",
        "socket://10.0.0.2:4001",
        "rfc2217://lab-pi:2217",
        "hwgrep://0403:6001",
        "loop://",
        "COM3",
    ):
        rig = Rig.from_dict({"name": "r", "coordinator": {"port": port}})
        assert rig.coordinator is not None and rig.coordinator.port == port


def test_from_dict_resolves_paths_against_base(tmp_path: Path) -> None:
    make_certs(tmp_path, "node-0001")
    rig = Rig.from_dict({"name": "r", "ca": "ca.pub", "lock": "r.lock"}, base=tmp_path)
    assert rig.ca == tmp_path / "ca.pub" and rig.lock_path == tmp_path / "r.lock"
    with pytest.raises(RigFileError, match=r"<rig>, ca: file not found"):
        Rig.from_dict({"name": "r", "ca": "ca.pub"}, base=tmp_path / "elsewhere")
    assert os.fspath(rig.lock_path).endswith("r.lock")


def test_a_virtual_rig_names_its_nodes_as_the_board_does(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: v\ncoordinator: {port: 'socket://127.0.0.1:5870'}\nvirtual: {loss: 0.1}\n"
        "nodes:\n  - {id: node-0000, address: 0}\n  - {id: sensor-7, address: 7}\n",
    )
    with pytest.raises(RigFileError) as err:
        load_rig(path)
    assert "line 6, nodes[1]: with a virtual board, node 1 is node-0001 at address 1" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("target", "rig_text", "problem"),
    [
        ("rig", None, "--target rig needs --rig FILE"),
        ("external", "name: b\ngateway: {mode: reference}\n", "needs gateway.mode external"),
        ("rig", "name: b\ngateway: {mode: external}\n", "needs gateway.mode reference"),
        (
            "rig",
            "name: b\ncoordinator: {port: /dev/ttyUSB0}\nnodes: [{id: n1, address: 1}]\n",
            "needs ca:",
        ),
        ("sim", None, None),
        ("rig", "name: b\ncoordinator: {port: /dev/ttyUSB0}\n", None),
    ],
)
def test_target_problem_says_what_a_target_lacks(
    tmp_path: Path, target: str, rig_text: str | None, problem: str | None
) -> None:
    from rigs.rigfile import target_problem

    rig = load_rig(write(tmp_path, rig_text)) if rig_text else None
    found = target_problem(target, rig)
    assert (found is None) if problem is None else (problem in (found or "")), found
