"""Tests for sims.channels, sims.radio and sims.bounds: loss models, airtime, broadcast bounds."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from sims.bounds import arq_bound, expected_max_geometric, ideal_code_bound, ideal_code_expected
from sims.channels import (
    BernoulliChannel,
    Channel,
    GilbertElliottChannel,
    link_losses,
    make_channel,
    rng_stream,
)
from sims.radio import PROFILES, RadioProfile, profile_with


def run(
    channel: Channel, seed: int, frames: int, receivers: np.ndarray | None = None
) -> np.ndarray:
    """Receptions of ``frames`` broadcasts, one row per frame."""
    rng = np.random.default_rng(seed)
    if receivers is None:
        receivers = np.arange(channel.n)
    return np.array([channel.deliver(rng, receivers) for _ in range(frames)])


def loss_runs(lost: np.ndarray) -> float:
    """Mean length of runs of consecutive losses, per node along axis 0, pooled."""
    starts = lost[0].sum() + (lost[1:] & ~lost[:-1]).sum()
    return lost.sum() / starts


# --- Bernoulli ------------------------------------------------------------------------


def test_bernoulli_loss_matches_each_nodes_probability() -> None:
    losses = np.repeat([0.0, 0.05, 0.2, 0.5], 250)
    got = run(BernoulliChannel(losses), seed=1, frames=400)
    assert got.shape == (400, 1000) and got.dtype == bool
    for p in (0.0, 0.05, 0.2, 0.5):
        rate = 1 - got[:, losses == p].mean()
        sigma = math.sqrt(p * (1 - p) / (400 * 250))
        assert abs(rate - p) <= 4 * sigma + 1e-12, (p, rate)


def test_bernoulli_deliver_one_has_the_same_loss() -> None:
    channel = BernoulliChannel(np.array([0.1, 0.35]))
    rng = np.random.default_rng(2)
    got = np.array([channel.deliver_one(rng, 1) for _ in range(100_000)])
    assert type(channel.deliver_one(rng, 0)) is bool
    assert abs((1 - got.mean()) - 0.35) < 4 * math.sqrt(0.35 * 0.65 / 100_000)


# --- Gilbert-Elliott ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "burst", "bad_loss", "good_loss"),
    [(0.1, 5.0, 1.0, 0.0), (0.25, 20.0, 1.0, 0.0), (0.1, 5.0, 0.8, 0.02)],
)
def test_gilbert_elliott_loss_is_the_mean_loss(
    loss: float, burst: float, bad_loss: float, good_loss: float
) -> None:
    channel = GilbertElliottChannel(
        np.full(2000, loss), burst, bad_loss=bad_loss, good_loss=good_loss
    )
    np.testing.assert_allclose(channel.mean_loss(), loss)
    got = run(channel, seed=3, frames=500)
    # Correlated draws: allow several times the independent standard error.
    assert abs((1 - got.mean()) - loss) < 0.01


@pytest.mark.parametrize("burst", [3.0, 5.0, 20.0])
def test_gilbert_elliott_loss_runs_last_mean_burst_frames(burst: float) -> None:
    channel = GilbertElliottChannel(np.full(1000, 0.15), burst)
    lost = ~run(channel, seed=4, frames=1500)
    assert loss_runs(lost) == pytest.approx(burst, rel=0.05)


def test_gilbert_elliott_with_burst_1_is_bernoulli() -> None:
    p = 0.3
    channel = GilbertElliottChannel(np.full(1000, p), 1.0)
    assert channel.p_good_to_bad + channel.p_bad_to_good == pytest.approx(np.ones(1000))
    lost = ~run(channel, seed=5, frames=600)
    after_loss = lost[1:][lost[:-1]].mean()
    after_ok = lost[1:][~lost[:-1]].mean()
    assert after_loss == pytest.approx(p, abs=0.01)
    assert after_ok == pytest.approx(p, abs=0.01)
    assert loss_runs(lost) == pytest.approx(1 / (1 - p), rel=0.03)  # runs of independent loss


def test_a_bursty_channel_is_not_bernoulli() -> None:
    """The test above can tell: with burst 5 a loss follows a loss 80% of the time."""
    lost = ~run(GilbertElliottChannel(np.full(1000, 0.3), 5.0), seed=5, frames=600)
    assert lost[1:][lost[:-1]].mean() == pytest.approx(0.8, abs=0.01)


def test_gilbert_elliott_deliver_one_matches_deliver() -> None:
    loss, burst = 0.2, 5.0
    channel = GilbertElliottChannel(np.array([loss, loss]), burst)
    rng = np.random.default_rng(6)
    lost = ~np.array([channel.deliver_one(rng, 1) for _ in range(200_000)])
    assert lost.mean() == pytest.approx(loss, abs=0.01)
    assert loss_runs(lost[:, None]) == pytest.approx(burst, rel=0.05)
    broadcast = ~run(GilbertElliottChannel(np.full(1000, loss), burst), seed=6, frames=200)
    assert lost.mean() == pytest.approx(broadcast.mean(), abs=0.015)


def test_gilbert_elliott_deliver_one_with_lossy_states() -> None:
    """bad_loss < 1 and good_loss > 0: the loss within a state comes from the same draw."""
    channel = GilbertElliottChannel(np.array([0.1]), 5.0, bad_loss=0.6, good_loss=0.02)
    rng = np.random.default_rng(17)
    lost = ~np.array([channel.deliver_one(rng, 0) for _ in range(200_000)])
    assert lost.mean() == pytest.approx(0.1, abs=0.006)
    # Inside a Bad run (P(bad) = 0.138, runs of 5) a loss follows a loss far more often.
    assert lost[1:][lost[:-1]].mean() > 0.3


def test_gilbert_elliott_impossible_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="below bad_loss"):
        GilbertElliottChannel(np.array([0.1, 0.6]), 5.0, bad_loss=0.5)
    with pytest.raises(ValueError, match="must be >= 1"):
        GilbertElliottChannel(np.array([0.1]), 0.5)
    with pytest.raises(ValueError, match="below good_loss"):
        GilbertElliottChannel(np.array([0.01]), 5.0, good_loss=0.05)
    with pytest.raises(ValueError, match="good_loss < bad_loss"):
        GilbertElliottChannel(np.array([0.1]), 5.0, bad_loss=0.2, good_loss=0.3)
    with pytest.raises(ValueError, match="finite"):
        GilbertElliottChannel(np.array([0.1]), np.inf)
    with pytest.raises(ValueError, match="one value per node"):
        GilbertElliottChannel(np.full(3, 0.1), np.full(2, 5.0))


def test_bernoulli_refuses_certain_loss() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\).*1\.0 at node 1"):
        BernoulliChannel(np.array([0.1, 1.0]))


# --- shared behaviour -----------------------------------------------------------------


def both(n: int, loss: float = 0.3) -> list[Channel]:
    return [BernoulliChannel(np.full(n, loss)), GilbertElliottChannel(np.full(n, loss), 4.0)]


@pytest.mark.parametrize("index", [0, 1])
def test_same_seed_same_receptions_other_seed_others(index: int) -> None:
    first = run(both(500)[index], seed=7, frames=50)
    again = run(both(500)[index], seed=7, frames=50)
    other = run(both(500)[index], seed=8, frames=50)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()


def test_only_the_receivers_state_advances() -> None:
    """Frames to the even nodes leave the odd nodes' chains where they were."""
    n = 2000
    odd, even = np.arange(1, n, 2), np.arange(0, n, 2)
    busy = GilbertElliottChannel(np.full(n, 0.3), 3.0, rng=np.random.default_rng(9))
    idle = GilbertElliottChannel(np.full(n, 0.3), 3.0, rng=np.random.default_rng(9))
    rng = np.random.default_rng(10)
    for _ in range(20):
        busy.deliver(rng, even)
    for node in range(0, 40, 2):
        busy.deliver_one(rng, node)
    np.testing.assert_array_equal(
        busy.deliver(np.random.default_rng(11), odd), idle.deliver(np.random.default_rng(11), odd)
    )
    # ... and the even nodes' chains did move (so the comparison above could have failed).
    assert (
        busy.deliver(np.random.default_rng(11), even)
        != idle.deliver(np.random.default_rng(11), even)
    ).any()


@pytest.mark.parametrize("index", [0, 1])
def test_a_broadcast_to_10000_nodes_is_vectorised(index: int) -> None:
    """Well under 1 ms per frame (about 0.1 ms measured); the fastest of 20 tries counts."""
    channel, rng, everyone = both(10_000)[index], np.random.default_rng(0), np.arange(10_000)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        channel.deliver(rng, everyone)
        times.append(time.perf_counter() - start)
    assert min(times) < 1e-3


def test_receivers_are_checked() -> None:
    channel = BernoulliChannel(np.full(10, 0.1))
    rng = np.random.default_rng(0)
    assert channel.deliver(rng, np.array([], dtype=int)).shape == (0,)
    with pytest.raises(ValueError, match="node indices"):
        channel.deliver(rng, np.ones(10, dtype=bool))
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        channel.deliver(rng, np.array([3, -1]))
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        channel.deliver_one(rng, 10)


def test_make_channel() -> None:
    assert isinstance(make_channel("bernoulli", np.full(3, 0.1)), BernoulliChannel)
    ge = make_channel("gilbert-elliott", np.full(3, 0.1), 5.0)
    assert isinstance(ge, GilbertElliottChannel) and isinstance(ge, Channel)
    np.testing.assert_allclose(ge.mean_burst, 5.0)
    with pytest.raises(ValueError, match="no bursts"):
        make_channel("bernoulli", np.full(3, 0.1), 5.0)
    with pytest.raises(ValueError, match="expected 'bernoulli' or 'gilbert-elliott'"):
        make_channel("markov", np.full(3, 0.1))  # type: ignore[arg-type]


def test_rng_streams_are_reproducible_and_independent() -> None:
    a, b = rng_stream(3, "links").random(4), rng_stream(3, "links").random(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, rng_stream(3, "channel").random(4))
    assert not np.array_equal(a, rng_stream(4, "links").random(4))
    with pytest.raises(ValueError, match="non-negative"):
        rng_stream(-1, "links")


# --- link_losses ----------------------------------------------------------------------


def test_link_losses_have_the_mean_and_spread_asked() -> None:
    losses = link_losses(np.random.default_rng(12), 20_000, 0.1, 0.05)
    assert losses.mean() == pytest.approx(0.1, abs=0.002)
    assert losses.std() == pytest.approx(0.05, rel=0.03)
    assert losses.min() >= 0 and losses.max() <= 0.95


def test_link_losses_without_spread_are_equal_and_draw_nothing() -> None:
    rng = np.random.default_rng(13)
    np.testing.assert_array_equal(link_losses(rng, 5, 0.2, 0.0), np.full(5, 0.2))
    assert rng.random() == np.random.default_rng(13).random()


def test_link_losses_are_clipped_and_checked() -> None:
    losses = link_losses(np.random.default_rng(14), 5000, 0.9, 0.2)
    assert losses.max() == 0.95
    with pytest.raises(ValueError, match="too wide"):
        link_losses(np.random.default_rng(0), 5, 0.1, 0.4)
    with pytest.raises(ValueError, match="mean_loss"):
        link_losses(np.random.default_rng(0), 5, 0.97, 0.0)


# --- radio profiles -------------------------------------------------------------------


def test_airtime_is_bytes_on_air_over_bit_rate() -> None:
    sub_ghz, ble = PROFILES["324"], PROFILES["ble"]
    assert sub_ghz.airtime(64) == pytest.approx((64 + 12) * 8 / 50_000)  # 12.16 ms
    assert sub_ghz.airtime(0) == pytest.approx(12 * 8 / 50_000)
    assert ble.airtime(244) == pytest.approx((244 + 21) * 8 / 1e6)  # 2.12 ms
    with pytest.raises(ValueError, match=r"0\.\.64"):
        sub_ghz.airtime(65)


def test_profile_overrides() -> None:
    fast = profile_with("324", bit_rate=100_000, max_frame=128.0)
    assert fast.airtime(128) == pytest.approx((128 + 12) * 8 / 100_000)
    assert fast.max_frame == 128 and isinstance(fast.max_frame, int)
    assert PROFILES["324"].bit_rate == 50_000  # the table itself is untouched
    with pytest.raises(ValueError, match="valid radios: 324, ble"):
        profile_with("lora")
    with pytest.raises(ValueError, match="valid fields: name, bit_rate"):
        profile_with("ble", bitrate=2e6)
    with pytest.raises(ValueError, match="max_frame must be an integer >= 16"):
        profile_with("ble", max_frame=8)
    with pytest.raises(ValueError, match="response_timeout must be a positive number"):
        RadioProfile("x", 1e3, 16, 0, 0.0, 0.0)


# --- bounds ---------------------------------------------------------------------------

#: broadcast-distribution.md: p, N, ARQ sends/block, ARQ total (K=500), ideal code E[T].
TABLE = [
    (0.01, 100, 1.64, 822, 512),
    (0.05, 100, 2.23, 1114, 541),
    (0.10, 100, 2.74, 1370, 576),
    (0.10, 1000, 3.74, 1869, 583),
    (0.20, 1000, 5.15, 2575, 668),
    (0.30, 1000, 6.72, 3359, 774),
]


@pytest.mark.parametrize(("p", "n", "per_block", "total", "code"), TABLE)
def test_bounds_match_the_reference_table(
    p: float, n: int, per_block: float, total: int, code: int
) -> None:
    assert round(expected_max_geometric(p, n), 2) == per_block
    assert round(arq_bound(500, p, n)) == total
    assert arq_bound(500, np.full(n, p)) == pytest.approx(arq_bound(500, p, n))
    assert ideal_code_expected(500, p, n) == pytest.approx(code, abs=1)
    assert ideal_code_bound(500, p) == pytest.approx(500 / (1 - p))


def test_arq_bound_matches_monte_carlo() -> None:
    rng = np.random.default_rng(15)
    losses = np.array([0.1, 0.3, 0.3, 0.5, 0.0])
    sends = rng.geometric(1 - losses, size=(200_000, losses.size)).max(axis=1)
    se = sends.std() / math.sqrt(sends.size)
    assert expected_max_geometric(losses) == pytest.approx(sends.mean(), abs=4 * se)
    homogeneous = rng.geometric(0.8, size=(200_000, 3)).max(axis=1)
    assert expected_max_geometric(0.2, 3) == pytest.approx(homogeneous.mean(), abs=0.01)


def test_ideal_code_matches_monte_carlo() -> None:
    rng = np.random.default_rng(16)
    blocks, losses = 10, np.array([0.2, 0.3, 0.4])
    sends = blocks + rng.negative_binomial(blocks, 1 - losses, size=(200_000, 3)).max(axis=1)
    se = sends.std() / math.sqrt(sends.size)
    assert ideal_code_expected(blocks, losses) == pytest.approx(sends.mean(), abs=4 * se)


def test_bounds_edge_cases() -> None:
    assert expected_max_geometric(0.0, 1000) == 1.0
    assert ideal_code_expected(20, np.array([0.0, 0.0])) == 20.0
    assert expected_max_geometric(0.5, 1) == pytest.approx(2.0)  # one node: 1 / (1 - p)
    assert ideal_code_bound(100, np.array([0.1, 0.3])) == pytest.approx(100 / 0.8)  # mean loss
    with pytest.raises(ValueError, match="give n"):
        expected_max_geometric(0.1)
    with pytest.raises(ValueError, match="only for a single loss"):
        arq_bound(10, np.full(4, 0.1), n=4)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        expected_max_geometric(np.array([0.1, 1.0]))
    with pytest.raises(ValueError, match="blocks"):
        arq_bound(0, 0.1, 3)
