"""Tests for sims.fleetfile: fleet files, their errors, overrides and node ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.protocol import TopicKind, child_topic, parse_topic
from sims.channels import BernoulliChannel, GilbertElliottChannel
from sims.fleetfile import (
    FaultSpec,
    FleetFileError,
    FleetSpec,
    NodeOverride,
    load_fleet,
    parse_selector,
)

EXAMPLE = Path(__file__).parent.parent / "sims" / "fleets" / "example-324.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


# --- the example ----------------------------------------------------------------------


def test_the_example_fleet_loads() -> None:
    spec = load_fleet(EXAMPLE)
    assert (spec.radio, spec.kind, spec.nodes, spec.loss, spec.burst) == ("324", "324", 50, 0.1, 5)
    losses, bursts, versions, faults = spec.per_node()
    assert losses.shape == bursts.shape == (50,) and versions == ["1.0.0"] * 50
    faulty = {i: f for i, f in enumerate(faults) if f.active}
    assert faulty == {
        7: FaultSpec(offline=True),
        12: FaultSpec(power_loss_at_block=300),
        33: FaultSpec(forged_certificate=True),
    }
    assert isinstance(spec.channel(spec.rng("channel")), GilbertElliottChannel)
    assert spec.profile().max_frame == 64


# --- errors name the file, the field and what was expected ----------------------------


@pytest.mark.parametrize(
    ("text", "field", "line", "expected"),
    [
        ("radio: lora\nnodes: 5\n", "radio", 1, "valid radios: 324, ble"),
        ("radio: ble\nnodes: 0\n", "nodes", 2, "greater than or equal to 1"),
        ("nodes: 5\nloss: 1.5\n", "loss", 2, "less than or equal to 0.95 (got 1.5)"),
        (
            "nodes: 5\noverrides:\n  - nodes: 1\n    loss: 0.2\n  - nodes: 3-\n    loss: 0.2\n",
            "overrides[1].nodes",
            5,
            "a range like 3-9",
        ),
        (
            "nodes: 5\noverrides:\n  - nodes: 2-7\n    loss: 0.2\n",
            "overrides[0].nodes",
            3,
            "node 7 does not exist: the fleet has 5 nodes",
        ),
        ("nodes: 5\nburts: 3\n", "burts", 2, "unknown field; valid fields: radio,"),
        (
            "nodes: 5\noverrides:\n  - nodes: '*'\n    faults:\n      corrupt_writes: 1.5\n",
            "overrides[0].faults.corrupt_writes",
            5,
            "less than or equal to 1",
        ),
        (
            "nodes: 5\noverrides:\n  - nodes: 1\n    faults: {ofline: true}\n",
            "overrides[0].faults.ofline",
            4,
            "valid fields: offline,",
        ),
        ("nodes: 5\nradio_overrides:\n  max_frame: 8\n", "radio_overrides.max_frame", 3, ">= 16"),
        ("nodes: 5\nversion: 2.0\n", "version", 2, "quote it"),
        ("nodes: 5\nid_prefix: gw/node\n", "id_prefix", 2, "MQTT topic segments"),
        ("nodes: 5\nloss: 0.1\nloss_spread: 0.4\n", "loss_spread", 3, "too wide"),
        ("radio: ble\n", "nodes", None, "required field is missing"),
    ],
)
def test_errors_name_file_field_and_expectation(
    tmp_path: Path, text: str, field: str, line: int | None, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FleetFileError) as caught:
        load_fleet(path)
    error = caught.value
    assert (error.field, error.line) == (field, line)
    assert expected in error.reason
    message = str(error)
    assert str(path) in message and field in message and expected in message
    assert isinstance(error, ValueError)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes: 5\nloss: 0.1\noverrides:\n  - nodes: [1, 2\n    loss: 0.2\n")
    with pytest.raises(FleetFileError, match=r"fleet\.yaml, line 5: YAML syntax error") as caught:
        load_fleet(path)
    assert caught.value.line == 5


def test_an_unquoted_star_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="must be quoted"):
        load_fleet(write(tmp_path, "nodes: 5\noverrides:\n  - nodes: *\n    loss: 0.2\n"))


def test_several_problems_are_all_listed(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError) as caught:
        load_fleet(write(tmp_path, "nodes: 0\nloss: -1\n"))
    assert [(f, n) for f, n, _ in caught.value.problems] == [("nodes", 1), ("loss", 2)]
    assert "2 problems" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "empty"), ("- nodes: 5\n", "expected a mapping"), ("nodes: 5\nseed: -3\n", "seed")],
)
def test_files_that_are_not_fleets(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(FleetFileError, match=expected):
        load_fleet(write(tmp_path, text))


def test_a_missing_file_is_a_fleet_file_error(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="cannot read"):
        load_fleet(tmp_path / "nope.yaml")


def test_parameters_are_validated_like_files() -> None:
    with pytest.raises(FleetFileError, match=r"<params>, overrides\[0\]\.loss"):
        FleetSpec.from_dict({"nodes": 3, "overrides": [{"nodes": "1", "loss": 1.0}]})
    spec = FleetSpec(nodes=3, radio="ble", loss=0.2)
    assert spec.kind == "ble" and spec.profile().name == "ble"
    assert FleetSpec.from_dict({"nodes": 3, "radio": "ble", "loss": 0.2}) == spec


# --- overrides ------------------------------------------------------------------------


def test_overrides_apply_in_order_later_wins(tmp_path: Path) -> None:
    spec = load_fleet(
        write(
            tmp_path,
            """
nodes: 10
loss: 0.05
version: 1.0.0
overrides:
  - nodes: "*"
    loss: 0.2
    faults: {slow_answer: 0.5, corrupt_writes: 0.1}
  - nodes: 3-5
    loss: 0.4
    burst: 8
    version: 0.9.0
    faults: {offline: true}
  - nodes: 5, 9
    loss: 0.1
    faults: {slow_answer: 0.0}
""",
        )
    )
    losses, bursts, versions, faults = spec.per_node()
    np.testing.assert_allclose(losses, [0.2, 0.2, 0.2, 0.4, 0.4, 0.1, 0.2, 0.2, 0.2, 0.1])
    np.testing.assert_allclose(bursts, [1, 1, 1, 8, 8, 8, 1, 1, 1, 1])
    assert versions == ["1.0.0"] * 3 + ["0.9.0"] * 3 + ["1.0.0"] * 4
    # Faults merge field by field: node 5 keeps offline and corrupt_writes, loses slow_answer.
    assert faults[0] == FaultSpec(slow_answer=0.5, corrupt_writes=0.1)
    assert faults[4] == FaultSpec(slow_answer=0.5, corrupt_writes=0.1, offline=True)
    assert faults[5] == FaultSpec(slow_answer=0.0, corrupt_writes=0.1, offline=True)
    assert faults[9] == FaultSpec(corrupt_writes=0.1)
    assert isinstance(spec.channel(), GilbertElliottChannel)  # some bursts are not 1


def test_an_override_must_change_something() -> None:
    with pytest.raises(ValueError, match="at least one of"):
        NodeOverride(nodes="3")


def test_a_fleet_without_bursts_gets_a_bernoulli_channel() -> None:
    spec = FleetSpec(nodes=20, loss=0.1, overrides=[NodeOverride(nodes="0-4", loss=0.3)])
    channel = spec.channel()
    assert isinstance(channel, BernoulliChannel)
    np.testing.assert_allclose(channel.mean_loss(), [0.3] * 5 + [0.1] * 15)


def test_loss_spread_is_drawn_from_the_seed() -> None:
    one = FleetSpec(nodes=2000, loss=0.1, loss_spread=0.04, seed=1).per_node()[0]
    again = FleetSpec(nodes=2000, loss=0.1, loss_spread=0.04, seed=1).per_node()[0]
    other = FleetSpec(nodes=2000, loss=0.1, loss_spread=0.04, seed=2).per_node()[0]
    np.testing.assert_array_equal(one, again)
    assert not np.array_equal(one, other)
    assert one.mean() == pytest.approx(0.1, abs=0.005) and one.std() == pytest.approx(0.04, rel=0.1)
    np.testing.assert_array_equal(FleetSpec(nodes=5, loss=0.1).per_node()[0], np.full(5, 0.1))


def test_radio_overrides_reach_the_profile() -> None:
    spec = FleetSpec.from_dict(
        {"nodes": 2, "radio_overrides": {"bit_rate": 100000, "max_frame": 32}}
    )
    assert spec.profile().bit_rate == 100_000 and spec.profile().max_frame == 32


# --- selectors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "indices"),
    [
        ("17", [17]),
        ("3-9", list(range(3, 10))),
        ("0,5,7-8", [0, 5, 7, 8]),
        (" 2 , 4 - 5", [2, 4, 5]),
    ],
)
def test_selectors(text: str, indices: list[int]) -> None:
    assert NodeOverride(nodes=text, loss=0.1).indices(20).tolist() == indices


def test_star_selects_every_node() -> None:
    assert NodeOverride(nodes="*", loss=0.1).indices(4).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("text", ["3-", "-3", "a", "", "1,,2", "9-3", "1.5", "*,1", "+1"])
def test_bad_selectors(text: str) -> None:
    with pytest.raises(ValueError, match="node selector"):
        parse_selector(text)


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 20)), min_size=1, max_size=6))
def test_selector_round_trip(ranges: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}-{a + k}" if k else str(a) for a, k in ranges)
    expected = sorted({i for a, k in ranges for i in range(a, a + k + 1)})
    assert NodeOverride(nodes=text, loss=0.1).indices(521).tolist() == expected


# --- node ids -------------------------------------------------------------------------


def test_node_ids_are_topic_segments_in_index_order() -> None:
    ids = FleetSpec(nodes=12, id_prefix="n324_").node_ids()
    assert ids[0] == "n324_0000" and ids[11] == "n324_0011" and sorted(ids) == ids
    for node_id in ids:
        topic = child_topic("prod", "gw-1", node_id, TopicKind.UPGRADE)
        assert parse_topic(str(topic)).device_id == node_id


def test_node_ids_widen_for_big_fleets() -> None:
    spec = FleetSpec(nodes=100_000)
    ids = spec.node_ids()
    assert (ids[0], ids[-1]) == ("node-00000", "node-99999") and sorted(ids) == ids
    assert spec.node_id(42) == "node-00042"


@pytest.mark.parametrize("prefix", ["a/b", "x+", "#", "has space", "tab\t"])
def test_prefixes_that_break_topics_are_refused(prefix: str) -> None:
    with pytest.raises(FleetFileError, match="id_prefix"):
        FleetSpec.from_dict({"nodes": 2, "id_prefix": prefix})
