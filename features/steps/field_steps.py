"""Steps that reproduce a field incident: a fleet described as a fleet file, faults of the
gateway's broker link and of the download on the schedule ``ota-hil reproduce`` uses, and
per-node outcomes. ``ota-hil reproduce --emit-feature`` writes scenarios from these."""

from __future__ import annotations

import yaml
from pytest_bdd import given, parsers, then

from harness.pytest_plugin import Ota
from sims.fieldfile import LINK_DIRECTIONS, BrokerOutage, DownloadFault, LinkFault
from sims.fleetfile import FleetFileError, FleetSpec
from sims.reproduce import schedule_link_fault

from ..targets import Target
from .common import ScenarioContext


@given(parsers.parse("the firmware images are drawn from seed {seed:d}"))
def _(scenario: ScenarioContext, seed: int) -> None:
    scenario.seed = seed


@given("a simulated fleet behind the gateway:")
def _(ota: Ota, target: Target, scenario: ScenarioContext, docstring: str) -> None:
    try:
        spec = FleetSpec.from_dict(yaml.safe_load(docstring), "the fleet of this step")
    except (FleetFileError, yaml.YAMLError) as exc:
        raise AssertionError(f"the step's fleet is not a valid fleet file: {exc}") from None
    fleet = target.sim_fleet(ota, spec)
    scenario.answers["fleet"] = fleet
    scenario.answers["versions before"] = fleet.versions(ota)


def _link_fault(ota: Ota, scenario: ScenarioContext, fault: BrokerOutage | LinkFault) -> None:
    fleet = scenario.answers.get("fleet")
    assert fleet is not None and fleet.sim is not None, "link faults follow the fleet step"
    ota.run(schedule_link_fault(ota.system, fleet.sim, fault))


@given(parsers.parse("the broker is down from {start:g} s to {end:g} s of the radio session"))
def _(ota: Ota, scenario: ScenarioContext, start: float, end: float) -> None:
    _link_fault(
        ota, scenario, BrokerOutage.model_validate({"broker": "down", "from": start, "to": end})
    )


@given(
    parsers.re(
        r"MQTT messages(?P<way>( from the gateway| to the gateway)?) "
        r'on "(?P<topic>[^"]+)" are (?P<verb>duplicated|reordered) '
        r"from (?P<start>[\d.]+) s to (?P<end>[\d.]+) s of the radio session"
    )
)
def _(
    ota: Ota, scenario: ScenarioContext, way: str, topic: str, verb: str, start: str, end: str
) -> None:
    kind = "duplicate" if verb == "duplicated" else "reorder"
    direction = {v: k for k, v in LINK_DIRECTIONS.items()}[way]
    fault = LinkFault.model_validate(
        {
            "mqtt": kind,
            "topic": topic,
            "direction": direction,
            "from": float(start),
            "to": float(end),
        }
    )
    _link_fault(ota, scenario, fault)


@given(
    parsers.re(
        r"the download stalls at (?P<percent>[\d.]+)% for (?P<seconds>[\d.]+) seconds"
        r"(?: in (?P<times>\d+) downloads)?"
    )
)
def _(scenario: ScenarioContext, percent: str, seconds: str, times: str | None) -> None:
    fault = DownloadFault(
        download="stall", at=float(percent) / 100, seconds=float(seconds), times=int(times or 1)
    )
    scenario.answers.setdefault("download faults", []).append(fault)


@given(parsers.re(r"the download is cut at (?P<percent>[\d.]+)%(?: in (?P<times>\d+) downloads)?"))
def _(scenario: ScenarioContext, percent: str, times: str | None) -> None:
    fault = DownloadFault(download="cut", at=float(percent) / 100, times=int(times or 1))
    scenario.answers.setdefault("download faults", []).append(fault)


@then(parsers.parse('every node runs version "{version}" except these:'))
def _(ota: Ota, scenario: ScenarioContext, version: str, datatable: list[list[str]]) -> None:
    fleet = scenario.answers["fleet"]
    _, *rows = datatable  # the first row names the columns
    expected = {fleet.node(int(row[0])): row[1] for row in rows}
    now = fleet.versions(ota)
    wrong = {n: v for n, v in now.items() if v != expected.get(n, version)}
    assert not wrong, f"versions that differ from the observed ones: {wrong}"
