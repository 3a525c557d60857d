"""Steps about simulated radio node fleets behind the gateway."""

from __future__ import annotations

from pytest_bdd import given, parsers, then, when

from harness.pytest_plugin import Ota
from sims.fleetfile import FaultSpec
from sims.reproduce import FINAL, apply_download_fault

from ..targets import NodeFleet, Target
from .common import ScenarioContext, wait_for


def _fleet(scenario: ScenarioContext) -> NodeFleet:
    fleet = scenario.answers.get("fleet")
    assert fleet is not None, "no fleet in this scenario"
    return fleet


def _node_id(scenario: ScenarioContext, index: int) -> str:
    return _fleet(scenario).node(index)


def _with_fleet(
    ota: Ota,
    target: Target,
    scenario: ScenarioContext,
    nodes: int,
    radio: str,
    loss: float | None,
    burst: float | None,
) -> None:
    fleet = target.fleet_for(ota, nodes, radio, loss, burst)
    scenario.answers["fleet"] = fleet
    scenario.answers["versions before"] = fleet.versions(ota)


@given(
    parsers.parse(
        "a fleet of {nodes:d} {radio} nodes behind the gateway with {loss:d}% loss "
        "and burst {burst:d}"
    )
)
def _(
    ota: Ota,
    target: Target,
    scenario: ScenarioContext,
    nodes: int,
    radio: str,
    loss: int,
    burst: int,
) -> None:
    _with_fleet(ota, target, scenario, nodes, radio, loss / 100, burst)


@given(parsers.parse("a fleet of {nodes:d} {radio} nodes behind the gateway"))
def _(ota: Ota, target: Target, scenario: ScenarioContext, nodes: int, radio: str) -> None:
    _with_fleet(ota, target, scenario, nodes, radio, None, None)


_FAULTS = {
    "is offline": FaultSpec(offline=True),
    "has a forged birth certificate": FaultSpec(forged_certificate=True),
    "loses power during the apply": FaultSpec(power_loss_during_apply=True),
    "fails its self-test": FaultSpec(fail_self_test=True),
    "writes every block corrupted": FaultSpec(corrupt_writes=1.0),
    "refuses the key exchange": FaultSpec(refuse_key_exchange=True),
}


@given(parsers.re(r"node (?P<index>\d+) (?P<fault>" + "|".join(_FAULTS) + ")"))
def _(target: Target, scenario: ScenarioContext, index: str, fault: str) -> None:
    target.fault(_node_id(scenario, int(index)), fault, _FAULTS[fault])


@given(parsers.parse("node {index:d} loses power after {blocks:d} blocks"))
def _(target: Target, scenario: ScenarioContext, index: int, blocks: int) -> None:
    spec = FaultSpec(power_loss_at_block=blocks)
    target.fault(_node_id(scenario, index), f"loses power after {blocks} blocks", spec)


def _push(ota: Ota, scenario: ScenarioContext, version: str, kib: int) -> None:
    fleet = _fleet(scenario)
    client = ota.client
    if scenario.firmware is None or scenario.firmware["version"] != version:
        image = scenario.image(version, kib * 1024)
        scenario.firmware = ota.run(client.upload_firmware(image, fleet.product_id, version))
    fw = scenario.firmware
    for fault in scenario.answers.pop("download faults", []):
        apply_download_fault(ota.system, fault, kib * 1024)
    scenario.task = ota.run(
        client.create_task(
            fw["id"],
            name=f"nodes {version}",
            mode="push",
            timeoutSeconds=300,
            # A thousand replies through one broker on a busy CI machine can take a while;
            # the gateway answers every upgrade message at once, so this bounds load only.
            responseTimeoutSeconds=120,
        )
    )
    ota.run(client.deploy(scenario.task["id"]))
    ota.run(client.check_now())


@when(parsers.parse('the platform pushes firmware "{version}" of {kib:d} KiB to every node'))
def _(ota: Ota, scenario: ScenarioContext, version: str, kib: int) -> None:
    _push(ota, scenario, version, kib)


@when(
    parsers.parse('the platform pushes the same firmware "{version}" of {kib:d} KiB in two tasks')
)
def _(ota: Ota, scenario: ScenarioContext, version: str, kib: int) -> None:
    _push(ota, scenario, version, kib)
    first = scenario.task
    _push(ota, scenario, version, kib)
    scenario.answers["tasks"] = [first, scenario.task]


def _records(ota: Ota, scenario: ScenarioContext) -> dict[str, dict]:
    """Every record of the scenario's tasks, by device (and task, when there are several)."""
    tasks = scenario.answers.get("tasks") or [scenario.task]
    assert tasks[0] is not None
    out = {}
    for task in tasks:
        for r in ota.run(ota.client.records(taskId=task["id"])):
            out[r["deviceId"] if len(tasks) == 1 else f"{r['deviceId']}@{task['id']}"] = r
    return out


def _all_final(ota: Ota, scenario: ScenarioContext, seconds: int) -> dict[str, dict]:
    nodes = len(_fleet(scenario).ids) * len(scenario.answers.get("tasks") or [None])
    return wait_for(
        lambda: _records(ota, scenario),
        lambda rs: len(rs) == nodes and all(r["state"] in FINAL for r in rs.values()),
        seconds,
        "every node's record ending",
        interval=0.2,
    )


@then(parsers.parse("every node's record ends in success within {seconds:d} seconds"))
def _(ota: Ota, scenario: ScenarioContext, seconds: int) -> None:
    records = _all_final(ota, scenario, seconds)
    failed = {n: r["errorReason"] for n, r in records.items() if r["state"] != "success"}
    assert not failed, f"{len(failed)} node(s) did not succeed: {dict(list(failed.items())[:5])}"


@then(
    parsers.parse(
        'within {seconds:d} seconds node {index:d} fails with a reason containing "{text}" '
        "and every other node succeeds"
    )
)
def _(ota: Ota, scenario: ScenarioContext, seconds: int, index: int, text: str) -> None:
    records = _all_final(ota, scenario, seconds)
    node = _node_id(scenario, index)
    assert records[node]["state"] == "failed", records[node]
    assert text in (records[node]["errorReason"] or ""), records[node]["errorReason"]
    others = {
        n: r["errorReason"] for n, r in records.items() if n != node and r["state"] != "success"
    }
    assert not others, f"other nodes did not succeed: {others}"


@then(parsers.parse("within {seconds:d} seconds every record ends, and only these nodes fail:"))
def _(ota: Ota, scenario: ScenarioContext, seconds: int, datatable: list[list[str]]) -> None:
    _, *rows = datatable  # the first row names the columns
    expected = {_node_id(scenario, int(row[0])): row[1] for row in rows}
    records = _all_final(ota, scenario, seconds)
    failed = {n: r["errorReason"] or "" for n, r in records.items() if r["state"] != "success"}
    assert set(failed) == set(expected), f"failed: {failed}"
    wrong = {n: failed[n] for n, text in expected.items() if text not in failed[n]}
    assert not wrong, f"reasons that are not true to the fault: {wrong}"


@then(parsers.parse('the platform shows every upgraded node at version "{version}"'))
def _(ota: Ota, scenario: ScenarioContext, version: str) -> None:
    registry = ota.system.platform_server.platform.registry  # type: ignore[union-attr]
    upgraded = [n for n, v in _fleet(scenario).versions(ota).items() if v == version]
    assert upgraded, "no node was upgraded"
    wait_for(
        lambda: [registry.get(n).firmware_version for n in upgraded],  # type: ignore[union-attr]
        lambda vs: all(v == version for v in vs),
        10,
        f"the platform's versions of the upgraded nodes being {version}",
    )


@then(parsers.parse('every node runs version "{version}"'))
def _(ota: Ota, scenario: ScenarioContext, version: str) -> None:
    versions = _fleet(scenario).versions(ota)
    wrong = {n: v for n, v in versions.items() if v != version}
    assert not wrong, f"nodes not on {version}: {wrong}"


@then(parsers.parse('node {index:d} runs version "{version}"'))
def _(ota: Ota, scenario: ScenarioContext, index: int, version: str) -> None:
    node = _node_id(scenario, index)
    assert _fleet(scenario).versions(ota)[node] == version


@then(parsers.parse('the platform shows node {index:d} at version "{version}"'))
def _(ota: Ota, scenario: ScenarioContext, index: int, version: str) -> None:
    node = _node_id(scenario, index)
    shown = ota.run(ota.client.device(node))["firmwareVersion"]
    assert shown == version, f"the platform shows {node} at {shown}"


@then(parsers.parse('the gateway reported node {index:d} at version "{version}" after the upgrade'))
def _(ota: Ota, scenario: ScenarioContext, index: int, version: str) -> None:
    node = _node_id(scenario, index)
    record = _records(ota, scenario)[node]
    device = wait_for(
        lambda: ota.run(ota.client.device(node)),
        lambda d: (d["versionTime"] or 0) >= record["upgradeTime"],
        5,
        f"a version report of {node} after its upgrade started",
    )
    assert device["firmwareVersion"] == version, device


@then(parsers.parse('the platform shows every node at version "{version}"'))
def _(ota: Ota, scenario: ScenarioContext, version: str) -> None:
    registry = ota.system.platform_server.platform.registry  # type: ignore[union-attr]
    ids = _fleet(scenario).ids
    wait_for(
        lambda: [registry.get(n).firmware_version for n in ids],  # type: ignore[union-attr]
        lambda vs: all(v == version for v in vs),
        10,
        f"the platform's versions of every node being {version}",
    )


@then("nothing is bricked: every node runs its old or its new image")
def _(ota: Ota, scenario: ScenarioContext) -> None:
    before = scenario.answers["versions before"]
    new = scenario.firmware["version"] if scenario.firmware else None
    now = _fleet(scenario).versions(ota)
    bricked = {n: v for n, v in now.items() if v not in (before[n], new)}
    assert not bricked, bricked


@then(parsers.parse("node {index:d} resumed from its bitmap after the power cut"))
def _(target: Target, scenario: ScenarioContext, index: int) -> None:
    target.require_sim("reading a node's flash")
    sim = _fleet(scenario).sim
    assert sim is not None
    fleet = sim.fleet
    node = fleet.nodes[index]
    assert node.power.cuts == 1, "the node never lost power"
    writes, blocks = int(fleet.arrays.writes[index]), fleet.arrays.block_count
    # Every block stored exactly once: what it held before the cut was kept, not fetched
    # again (a node that lost its bitmap would have stored some blocks twice).
    assert writes == blocks, f"stored {writes} blocks for an image of {blocks}"


@then("the gateway ran one broadcast session")
def _(scenario: ScenarioContext) -> None:
    sessions = _fleet(scenario).upgrader.sessions
    assert len(sessions) == 1, f"{len(sessions)} sessions"
