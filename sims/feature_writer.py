"""A reproduction as a Gherkin scenario, in the words of the step library: the fleet as a
fleet file, the faults as steps, and Then steps that state each node's observed end. It
runs green while the behaviour stays what it was, and turns red the day it changes."""

from __future__ import annotations

import math
import re
import textwrap

import numpy as np
import yaml

from .fieldfile import (
    BrokerOutage,
    DownloadFault,
    FieldSpec,
    LinkFault,
    NodeFault,
    fleet_data,
)
from .fleetfile import NodeOverride, parse_selector
from .reproduce import Reproduction

#: Node faults that have a step of their own ("node 17 has a forged birth certificate").
_FAULT_STEPS: dict[str, str] = {
    "offline": "is offline",
    "forged_certificate": "has a forged birth certificate",
    "power_loss_during_apply": "loses power during the apply",
    "fail_self_test": "fails its self-test",
    "refuse_key_exchange": "refuses the key exchange",
}


def _single(selector: str) -> int | None:
    ranges = parse_selector(selector)
    if ranges is not None and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return ranges[0][0]
    return None


def _node_fault_step(item: NodeFault, index: int) -> str | None:
    """The step for node ``index`` with this one fault, or None when it needs the fleet's
    YAML."""
    changed = item.faults().model_dump(exclude_defaults=True)
    if len(changed) != 1:
        return None
    ((name, value),) = changed.items()
    if name == "power_loss_at_block":
        return f"node {index} loses power after {value} blocks"
    if name == "corrupt_writes" and value == 1.0:
        return f"node {index} writes every block corrupted"
    if name in _FAULT_STEPS and value is True:
        return f"node {index} {_FAULT_STEPS[name]}"
    return None


def _system_step(item: BrokerOutage | LinkFault | DownloadFault) -> str:
    if isinstance(item, DownloadFault):
        percent = f"{item.at * 100:.10g}%"
        times = "" if item.times == 1 else f" in {item.times} downloads"
        if item.download == "stall":
            return f"the download stalls at {percent} for {item.seconds:g} seconds{times}"
        return f"the download is cut at {percent}{times}"
    return f"{item.describe()} of the radio session"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, str], rows: list[tuple[str, str]], indent: str) -> list[str]:
    widths = [max(len(_cell(r[i])) for r in [header, *rows]) for i in (0, 1)]
    return [
        f"{indent}| {_cell(a).ljust(widths[0])} | {_cell(b).ljust(widths[1])} |"
        for a, b in [header, *rows]
    ]


def feature_for(spec: FieldSpec, result: Reproduction, source: str) -> str:
    """The scenario of ``spec`` with the outcome ``result`` observed, as a .feature file."""
    fleet = spec.fleet
    ids = spec.fleet_spec().node_ids()
    steps: list[str] = []
    extra: list[NodeOverride] = []
    # A node fault becomes a step only when it is the node's only one: a step sets a node's
    # faults, while the fleet's overrides and the schedule merge theirs.
    n = fleet.nodes
    faulty = [o.indices(n) for o in fleet.overrides if o.faults is not None]
    faulty += [
        NodeOverride(nodes=i.node, faults=i.faults()).indices(n)
        for i in spec.schedule
        if isinstance(i, NodeFault)
    ]
    counts = np.bincount(np.concatenate(faulty), minlength=n) if faulty else np.zeros(n, int)
    for item in spec.schedule:
        if isinstance(item, NodeFault):
            index = _single(item.node)
            step = None
            if index is not None and counts[index] == 1:
                step = _node_fault_step(item, index)
            if step is None:
                extra.append(NodeOverride(nodes=item.node, faults=item.faults()))
            else:
                steps.append(step)
    data = fleet_data(fleet, seed=spec.seed, overrides=[*fleet.overrides, *extra])
    fleet_yaml = yaml.safe_dump(data, sort_keys=False).rstrip("\n")
    steps += [_system_step(i) for i in spec.system_faults]

    version = spec.firmware.version
    failed = [(ids.index(n), o) for n, o in result.outcomes.items() if o.state != "success"]
    other_versions = [
        (ids.index(n), o.version_after or "")
        for n, o in result.outcomes.items()
        if o.version_after != version
    ]
    bound = max(120, math.ceil(result.seconds * 4 + 30))
    name = re.sub(r"\s+", " ", spec.name).strip()

    lines = [
        "# Written by `ota-hil reproduce --emit-feature`: edit the field file and emit again",
        "# rather than editing this file by hand.",
        "@needs_sim",
        f"Feature: Field reproduction: {name}",
        f"  Reproduces {source} (seed {spec.seed}).",
    ]
    if spec.notes:
        # As comments: free text must not read as Gherkin ("Scenario: ..." in a note).
        notes = textwrap.wrap(re.sub(r"\s+", " ", spec.notes), 84)
        lines += [f"  # {line}" for line in notes]
    lines += [
        "",
        f"  Scenario: {name}: the nodes end as they did in the field",
        f"    Given the firmware images are drawn from seed {spec.seed}",
        "    And a simulated fleet behind the gateway:",
        '      """',
        *(f"      {line}" for line in fleet_yaml.splitlines()),
        '      """',
        *(f"    And {step}" for step in steps),
        f'    When the platform pushes firmware "{version}" of {spec.firmware.size_kib} KiB '
        "to every node",
    ]
    if failed:
        rows = [(str(i), o.reason or "") for i, o in sorted(failed)]
        lines.append(
            f"    Then within {bound} seconds every record ends, and only these nodes fail:"
        )
        lines += _table(("node", "reason"), rows, "      ")
    else:
        lines.append(f"    Then every node's record ends in success within {bound} seconds")
    if other_versions:
        lines.append(f'    And every node runs version "{version}" except these:')
        rows = [(str(i), v) for i, v in sorted(other_versions)]
        lines += _table(("node", "version"), rows, "      ")
    else:
        lines.append(f'    And every node runs version "{version}"')
    lines.append("    And nothing is bricked: every node runs its old or its new image")
    return "\n".join(lines) + "\n"
