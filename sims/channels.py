"""Loss channels between the gateway and each node of a simulated fleet.

A channel decides which nodes receive a frame. A broadcast frame is decided for the whole
fleet in one numpy call (:meth:`Channel.deliver`); a unicast frame has a scalar fast path
(:meth:`Channel.deliver_one`). Every draw comes from the :class:`numpy.random.Generator`
the caller passes in, so one seed gives one run (see ``docs/simulation.md``).

Two models:

- :class:`BernoulliChannel`: each node loses each frame independently with its own
  probability.
- :class:`GilbertElliottChannel`: each node has a Good/Bad state that lasts for runs of
  frames (bursts of loss), parameterised by the stationary mean loss and the mean length
  of a Bad run.

State is per node and ages with time (``advance``), catching up when a node is addressed;
without ``advance`` it advances only for the frames that node is sent: a node left out of a
broadcast (finished, dropped, asleep) keeps its channel state.
"""

from __future__ import annotations

import zlib
from typing import Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BernoulliChannel",
    "Channel",
    "GilbertElliottChannel",
    "link_losses",
    "make_channel",
    "rng_stream",
]

#: Highest per-node loss :func:`link_losses` hands out.
MAX_LINK_LOSS = 0.95

# Node states of the Gilbert-Elliott channel (int8 per node).
_GOOD, _BAD, _FRESH = 0, 1, 2


@runtime_checkable
class Channel(Protocol):
    """What the session needs from a channel: who among these receivers got the frame."""

    n: int

    def deliver(self, rng: np.random.Generator, receivers: np.ndarray) -> np.ndarray:
        """One frame sent to the nodes ``receivers`` (distinct int indices).

        Returns a bool array aligned with ``receivers``, True where the frame arrived.
        Only these nodes' state advances.
        """
        ...

    def deliver_one(self, rng: np.random.Generator, node: int) -> bool:
        """One unicast frame to ``node``: True if it arrived."""
        ...

    def advance(self, frames: int = 1) -> None:
        """``frames`` frames went on air (of any node): channel state ages in time."""
        ...

    def mean_loss(self) -> np.ndarray:
        """Stationary loss probability of each node."""
        ...


def rng_stream(seed: int, name: str) -> np.random.Generator:
    """The generator for one named stream of draws of the run seeded with ``seed``.

    Streams are independent of one another (``SeedSequence`` with the stream's name as
    spawn key), so adding draws to one stream never shifts another: the per-node losses
    stay the same when, say, a fault model starts drawing more. Names in use: ``"links"``
    (per-node loss spread), ``"channel"`` (frame receptions), ``"faults"`` (fault draws such
    as corrupted writes), ``"nodes"`` (anything else a node model draws).
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    key = zlib.crc32(name.encode())
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(key,)))


def _per_node(name: str, values: np.ndarray | float) -> np.ndarray:
    """``values`` as a 1-D float array (a scalar becomes one value)."""
    array = np.atleast_1d(np.asarray(values, dtype=float))
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per node (1-D), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {_first_bad(array)}")
    return array


def _first_bad(array: np.ndarray, bad: np.ndarray | None = None) -> str:
    if bad is None:
        bad = ~np.isfinite(array)
    index = int(np.flatnonzero(bad)[0])
    return f"{float(array[index])!r} at node {index}"


def _receivers(receivers: np.ndarray, n: int) -> np.ndarray:
    """``receivers`` checked: a 1-D integer array of indices in [0, n)."""
    array = np.asarray(receivers)
    if array.ndim != 1 or (array.dtype.kind not in "iu" and array.size):
        raise ValueError(
            f"receivers must be a 1-D array of node indices, got {array.dtype} "
            f"of shape {array.shape}"
        )
    if not array.size:
        return array.astype(np.intp)
    if array.min() < 0 or array.max() >= n:
        raise IndexError(
            f"receivers must be node indices in [0, {n}), got {array.min()}..{array.max()}"
        )
    return array


def _check_node(node: int, n: int) -> None:
    if not 0 <= node < n:
        raise IndexError(f"node index {node} is outside [0, {n})")


class BernoulliChannel:
    """Independent loss: node ``i`` loses each frame with probability ``loss[i]``.

    Draws: one uniform per receiver per frame; the frame is lost where it is below the
    node's loss.
    """

    def __init__(self, loss: np.ndarray | float) -> None:
        loss = _per_node("loss", loss)
        outside = (loss < 0) | (loss >= 1)
        if outside.any():
            raise ValueError(
                f"loss must be in [0, 1) for every node, got {_first_bad(loss, outside)}"
            )
        self.n = int(loss.shape[0])
        self._loss = loss
        self._loss_list = loss.tolist()  # scalar path: a list index beats a numpy one

    def __repr__(self) -> str:
        return f"BernoulliChannel(n={self.n}, mean loss {self._loss.mean():.3f})"

    def deliver(self, rng: np.random.Generator, receivers: np.ndarray) -> np.ndarray:
        receivers = _receivers(receivers, self.n)
        return rng.random(receivers.shape[0]) >= self._loss.take(receivers)

    def deliver_one(self, rng: np.random.Generator, node: int) -> bool:
        _check_node(node, self.n)
        return rng.random() >= self._loss_list[node]

    def advance(self, frames: int = 1) -> None:
        """Frames on air: nothing to age, every frame is independent."""

    def mean_loss(self) -> np.ndarray:
        return self._loss.copy()


class GilbertElliottChannel:
    """Bursty loss: a two-state (Good/Bad) Markov chain per node, advanced once per frame.

    A frame is lost with probability ``bad_loss`` in the Bad state and ``good_loss`` in
    the Good state. With the stationary share of Bad ``P(bad) = (L - k) / (h - k)``
    (``L`` = ``mean_loss``, ``h`` = ``bad_loss``, ``k`` = ``good_loss``) and the mean Bad
    run ``B`` = ``mean_burst`` frames::

        p_bg = 1 / B                          # Bad -> Good, per frame
        p_gb = P(bad) * p_bg / (1 - P(bad))   # Good -> Bad, so the stationary loss is L

    A Bad run can only be shorter than ``1 / (1 - P(bad))`` (the run length of independent
    loss) if the chain is anti-correlated, which no radio channel is; a smaller
    ``mean_burst`` is therefore raised to that value, where ``p_gb + p_bg = 1`` and the
    chain is memoryless. In particular ``mean_burst == 1`` (with ``bad_loss=1``,
    ``good_loss=0``) is exactly Bernoulli loss ``L``.

    Each node's state at its first frame is drawn from the stationary distribution: from
    ``rng`` here when one is given, else from the generator of the first
    :meth:`deliver` / :meth:`deliver_one` that includes the node.

    Time: the chain steps once per frame on air, whoever the frame is for. A driver calls
    :meth:`advance` for every frame it puts on air; a node's state catches up lazily when
    it is next addressed, ``s`` steps at once (``P(bad after s | bad) = P(bad) + (1 -
    P(bad)) * lam**s``, ``P(bad after s | good) = P(bad) * (1 - lam**s)``, ``lam = 1 -
    p_gb - p_bg``). So a fade lasts a while in time, and a node asked again after other
    traffic has had the chance to come out of it. Without :meth:`advance`, each frame a
    node is sent is one step.

    Draws: one uniform ``u`` per receiver per frame. The node is Bad for this frame when
    ``u`` falls below its threshold (``1 - p_bg`` after Bad, ``p_gb`` after Good,
    ``P(bad)`` on a first frame); where ``u`` lies within the chosen interval, rescaled to
    [0, 1), is a uniform independent of that decision and decides the loss within the
    state (not needed when ``bad_loss == 1`` and ``good_loss == 0``).
    """

    def __init__(
        self,
        mean_loss: np.ndarray | float,
        mean_burst: np.ndarray | float,
        *,
        bad_loss: float = 1.0,
        good_loss: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not 0.0 <= good_loss < bad_loss <= 1.0:
            raise ValueError(
                f"need 0 <= good_loss < bad_loss <= 1, got good_loss={good_loss}, "
                f"bad_loss={bad_loss}"
            )
        loss = _per_node("mean_loss", mean_loss)
        burst = _per_node("mean_burst", mean_burst)
        try:
            loss, burst = (a.copy() for a in np.broadcast_arrays(loss, burst))
        except ValueError:
            raise ValueError(
                f"mean_loss ({loss.shape[0]} values) and mean_burst ({burst.shape[0]} values) "
                "must have one value per node, or one value for all"
            ) from None
        low = loss < good_loss
        if low.any():
            raise ValueError(
                f"mean_loss cannot be below good_loss={good_loss} (the Good state's loss), "
                f"got {_first_bad(loss, low)}"
            )
        high = loss >= bad_loss
        if high.any():
            raise ValueError(
                f"mean_loss must be below bad_loss={bad_loss} (the Bad state's loss), "
                f"got {_first_bad(loss, high)}"
            )
        short = burst < 1.0
        if short.any():
            raise ValueError(
                f"mean_burst is a number of frames and must be >= 1, got {_first_bad(burst, short)}"
            )
        self.n = int(loss.shape[0])
        self.bad_loss = float(bad_loss)
        self.good_loss = float(good_loss)
        self._mean_loss = loss
        #: Stationary probability of the Bad state, per node.
        self.p_bad = (loss - good_loss) / (bad_loss - good_loss)
        #: Bad -> Good and Good -> Bad transition probabilities per frame, per node.
        self.p_bad_to_good = np.minimum(1.0 / burst, 1.0 - self.p_bad)
        self.p_good_to_bad = self.p_bad * self.p_bad_to_good / (1.0 - self.p_bad)
        # thresholds[node, state]: next state is Bad when a uniform falls below it.
        self._thresholds = np.stack(
            [self.p_good_to_bad, 1.0 - self.p_bad_to_good, self.p_bad], axis=1
        )
        self._flat_thresholds = self._thresholds.ravel()
        self._thresholds_list = [tuple(row) for row in self._thresholds.tolist()]
        self._pure = self.bad_loss == 1.0 and self.good_loss == 0.0
        #: Second eigenvalue of the chain: how fast a node's state forgets itself.
        self._lam = 1.0 - self.p_good_to_bad - self.p_bad_to_good
        self._lam_list = self._lam.tolist()
        self._p_bad_list = self.p_bad.tolist()
        self._clock = 0
        self._seen = np.zeros(self.n, dtype=np.int64)
        # One buffer, two views: numpy for broadcasts, the bytearray for the scalar path.
        self._state_bytes = bytearray(self.n)
        self._state = np.frombuffer(self._state_bytes, dtype=np.int8)
        if rng is None:
            self._state[:] = _FRESH
        else:
            self._state[:] = rng.random(self.n) < self.p_bad

    def __repr__(self) -> str:
        return (
            f"GilbertElliottChannel(n={self.n}, mean loss {self._mean_loss.mean():.3f}, "
            f"mean burst {np.mean(1.0 / self.p_bad_to_good):.2f})"
        )

    @property
    def mean_burst(self) -> np.ndarray:
        """Mean Bad run length in frames per node, after raising to the independent level."""
        return 1.0 / self.p_bad_to_good

    def advance(self, frames: int = 1) -> None:
        """``frames`` frames went on air: every node's chain is that many steps older."""
        self._clock += frames

    def deliver(self, rng: np.random.Generator, receivers: np.ndarray) -> np.ndarray:
        receivers = _receivers(receivers, self.n)
        k = receivers.shape[0]
        u = rng.random(k)
        state = self._state.take(receivers)
        threshold = self._flat_thresholds.take(receivers * 3 + state)
        steps = self._clock - self._seen.take(receivers)
        self._seen[receivers] = self._clock
        later = (steps > 1) & (state != _FRESH)
        if later.any():
            rows = receivers[later]
            decay = self._lam[rows] ** steps[later]
            p_bad = self.p_bad[rows]
            threshold = threshold.copy()
            threshold[later] = np.where(
                state[later] == 1, p_bad + (1.0 - p_bad) * decay, p_bad * (1.0 - decay)
            )
        bad = u < threshold
        self._state[receivers] = bad.view(np.int8)
        if self._pure:
            return ~bad
        # Where u fell within its state's interval is a fresh uniform, independent of the state.
        u = np.where(
            bad,
            u / np.where(bad, threshold, 1.0),
            (u - threshold) / np.where(bad, 1.0, 1.0 - threshold),
        )
        return u >= np.where(bad, self.bad_loss, self.good_loss)

    def deliver_one(self, rng: np.random.Generator, node: int) -> bool:
        _check_node(node, self.n)
        u = rng.random()
        state = self._state_bytes[node]
        threshold = self._thresholds_list[node][state]
        steps = self._clock - int(self._seen[node])
        self._seen[node] = self._clock
        if steps > 1 and state != _FRESH:
            decay = self._lam_list[node] ** steps
            p_bad = self._p_bad_list[node]
            threshold = p_bad + (1.0 - p_bad) * decay if state == 1 else p_bad * (1.0 - decay)
        bad = u < threshold
        self._state_bytes[node] = bad
        if self._pure:
            return not bad
        if bad:
            return u / threshold >= self.bad_loss
        return (u - threshold) / (1.0 - threshold) >= self.good_loss

    def mean_loss(self) -> np.ndarray:
        return self._mean_loss.copy()


def link_losses(rng: np.random.Generator, n: int, mean_loss: float, spread: float) -> np.ndarray:
    """Per-node loss for a fleet of ``n``: mean ``mean_loss``, standard deviation ``spread``.

    Links differ (distance, walls, antennas), so each node's loss is drawn from a Beta
    distribution with that mean and standard deviation, then clipped to
    [0, ``MAX_LINK_LOSS``] (0.95), which can pull the mean down a little for high, widely
    spread losses. ``spread == 0`` gives every node ``mean_loss`` and draws nothing. A Beta
    can only spread that far when ``spread**2 < mean_loss * (1 - mean_loss)``; a larger
    spread is a ValueError.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative number of nodes, got {n!r}")
    if not 0.0 <= mean_loss <= MAX_LINK_LOSS:
        raise ValueError(f"mean_loss must be in [0, {MAX_LINK_LOSS}], got {mean_loss!r}")
    if not spread >= 0.0:
        raise ValueError(f"spread must be >= 0, got {spread!r}")
    if spread == 0.0:
        return np.full(int(n), float(mean_loss))
    variance_limit = mean_loss * (1.0 - mean_loss)
    if spread**2 >= variance_limit:
        raise ValueError(
            f"spread {spread} is too wide for mean loss {mean_loss}: a loss spread must be "
            f"below sqrt(mean * (1 - mean)) = {variance_limit**0.5:.4f}"
        )
    concentration = variance_limit / spread**2 - 1.0
    losses = rng.beta(mean_loss * concentration, (1.0 - mean_loss) * concentration, size=n)
    return np.clip(losses, 0.0, MAX_LINK_LOSS)


def make_channel(
    kind: Literal["bernoulli", "gilbert-elliott"],
    losses: np.ndarray | float,
    bursts: np.ndarray | float | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> Channel:
    """A channel of ``kind`` for per-node ``losses`` (and mean ``bursts`` for Gilbert-Elliott).

    ``rng`` (Gilbert-Elliott only) draws the initial states now; see
    :class:`GilbertElliottChannel`.
    """
    if kind == "bernoulli":
        if bursts is not None and np.any(np.asarray(bursts, dtype=float) != 1.0):
            raise ValueError("a bernoulli channel has no bursts: give bursts=None (or all 1)")
        return BernoulliChannel(losses)
    if kind == "gilbert-elliott":
        if bursts is None:
            raise ValueError("a gilbert-elliott channel needs bursts (mean burst length, frames)")
        return GilbertElliottChannel(losses, bursts, rng=rng)
    raise ValueError(f"unknown channel kind {kind!r}; expected 'bernoulli' or 'gilbert-elliott'")
