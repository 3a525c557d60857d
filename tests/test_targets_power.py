"""Fault injection on a rig: only "offline", through the node's power commands, and the
node powered back on after the scenario. The commands are real shell commands (they touch
and remove a file); no radio or coordinator is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.targets import NodeFleet, RigNodes, Target
from rigs.link import SerialNodeLink
from rigs.rigfile import Rig
from rigs.serial_link import SerialLink
from sims.fleetfile import FaultSpec


def rig_target(tmp_path: Path, off: str = "touch node-a.off") -> tuple[Target, RigNodes]:
    rig = Rig.from_dict(
        {
            "name": "bench",
            "coordinator": {"port": "socket://127.0.0.1:9"},
            "nodes": [
                {
                    "id": "node-a",
                    "address": 1,
                    "power": {"off": off, "on": "rm node-a.off"},
                },
                {"id": "node-b", "address": 2},
            ],
        },
        base=tmp_path,
    )
    # Not opened: fault() and close() only run the power commands.
    link = SerialNodeLink(SerialLink("socket://127.0.0.1:9"), {"node-a": 1, "node-b": 2}, 64)
    nodes = RigNodes(rig, link)
    target = Target("rig", rig, tmp_path)
    target.fleet = NodeFleet(["node-a", "node-b"], "node-324", upgrader=None, rig=nodes)  # type: ignore[arg-type]
    return target, nodes


def test_offline_powers_the_node_off_and_closing_powers_it_back_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target, nodes = rig_target(tmp_path)
    target.fault("node-a", "is offline", FaultSpec(offline=True))
    assert (tmp_path / "node-a.off").exists()
    assert nodes.powered_off == {"node-a"}
    nodes.close()
    assert not (tmp_path / "node-a.off").exists()
    assert nodes.powered_off == set()


def test_a_node_without_power_control_skips_with_the_reason(tmp_path: Path) -> None:
    target, nodes = rig_target(tmp_path)
    with pytest.raises(pytest.skip.Exception, match="no power control for node node-b"):
        target.fault("node-b", "is offline", FaultSpec(offline=True))
    assert nodes.powered_off == set()


def test_a_fault_power_cannot_make_skips_with_the_reason(tmp_path: Path) -> None:
    target, _ = rig_target(tmp_path)
    with pytest.raises(pytest.skip.Exception, match="needs fault injection that rig bench"):
        target.fault("node-a", "fails its self-test", FaultSpec(fail_self_test=True))
    assert not (tmp_path / "node-a.off").exists()


def test_a_failing_power_command_fails_the_scenario_with_its_output(tmp_path: Path) -> None:
    target, nodes = rig_target(tmp_path, off="echo relay card not found >&2; exit 3")
    failed = r"(?s)exited with code 3.*relay card not found"
    with pytest.raises(pytest.fail.Exception, match=failed):
        target.fault("node-a", "is offline", FaultSpec(offline=True))
    assert nodes.powered_off == set()
