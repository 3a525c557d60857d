"""What a broadcast of K blocks to N lossy receivers must cost: the yardsticks for a session.

All numbers are frames sent by the gateway (broadcast sends), assuming independent loss
per node and per frame (Bernoulli). Bursty loss barely changes the ARQ cost but makes a
code need more redundancy (see ``docs/simulation.md``).

- :func:`arq_bound`: blocks are re-sent until every node has each one (re-send the union
  of what anyone misses); each block goes out ``max_i Geometric(1 - p_i)`` times.
- :func:`ideal_code_bound`: no scheme can do with fewer than ``K / (1 - p)`` sends: even
  an ideal erasure code, where any K frames suffice, needs that many on average for a
  single node.
- :func:`ideal_code_expected`: what the ideal code costs for the whole fleet: the
  expected time until the *last* node has K frames.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "arq_bound",
    "expected_max_geometric",
    "ideal_code_bound",
    "ideal_code_expected",
]

#: The sums stop at the first term below this.
TOLERANCE = 1e-12
_CHUNK = 64  # distinct loss values handled at once (bounds memory for big, varied fleets)


def _losses(losses: np.ndarray | float, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct loss values and how many nodes have each."""
    array = np.asarray(losses, dtype=float)
    if array.ndim == 0:
        if n is None:
            raise ValueError("give n, the number of nodes, with a single loss value")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive number of nodes, got {n!r}")
        array = np.full(1, float(array))
        counts = np.array([float(n)])
    else:
        if n is not None:
            raise ValueError("n is only for a single loss value; a per-node array gives N itself")
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"losses must be one value per node (1-D, non-empty), got {array!r}")
        array, counts = np.unique(array, return_counts=True)
        counts = counts.astype(float)
    if not np.all((array >= 0) & (array < 1)):
        raise ValueError(f"losses must be in [0, 1), got {array[(array < 0) | ~(array < 1)][0]!r}")
    return array, counts


def expected_max_geometric(losses: np.ndarray | float, n: int | None = None) -> float:
    """E[max over nodes of the sends until a node first receives]: the ARQ sends per block.

    ``sum_{m>=0} [1 - prod_i (1 - p_i**m)]`` for per-node losses ``p_i`` (an array), or
    ``sum_{m>=0} [1 - (1 - p**m)**n]`` for ``n`` nodes with loss ``p`` (a float and ``n``).
    Computed in log space (``log1p``/``expm1``) over the distinct loss values, stopping at
    the first term below 1e-12 (the terms decrease, and the rest of the sum is smaller than
    that term over ``1 - max p``). A loss of 0 means one send.
    """
    values, counts = _losses(losses, n)
    total = 1.0  # m = 0: p**0 = 1 for every node, so the term is exactly 1
    power = np.ones_like(values)
    while True:
        power *= values
        term = -math.expm1(float(np.dot(counts, np.log1p(-power))))
        total += term
        if term < TOLERANCE:
            return total


def arq_bound(blocks: int, losses: np.ndarray | float, n: int | None = None) -> float:
    """Expected broadcast sends for ``blocks`` blocks when each is repeated until all have it."""
    _check_blocks(blocks)
    return blocks * expected_max_geometric(losses, n)


def ideal_code_bound(blocks: int, loss: np.ndarray | float) -> float:
    """``blocks / (1 - loss)``: the fewest sends any scheme needs on average (a lower bound).

    For a heterogeneous fleet (an array of per-node losses) the mean loss is used: the
    average node needs that many frames sent before it holds ``blocks`` of them.
    """
    _check_blocks(blocks)
    mean = float(np.mean(np.asarray(loss, dtype=float)))
    if not 0.0 <= mean < 1.0:
        raise ValueError(f"loss must be in [0, 1), got {mean!r}")
    return blocks / (1.0 - mean)


def ideal_code_expected(blocks: int, losses: np.ndarray | float, n: int | None = None) -> float:
    """Expected sends of an ideal erasure code until every node holds ``blocks`` frames.

    Node ``i`` needs ``T_i`` sends, negative binomial (``blocks`` successes, success
    probability ``1 - p_i``); this is ``E[max_i T_i] = blocks + sum_{t>=blocks}
    [1 - prod_i P(T_i <= t)]``, computed exactly (log-space pmf, survival summed from the
    right). It matches the "ideal code E[T]" column of the reference table and approaches
    ``K/(1-p) + sqrt(2 ln N) * sqrt(K p)/(1-p)`` for large K.
    """
    _check_blocks(blocks)
    values, counts = _losses(losses, n)
    worst = float(values.max())
    if worst == 0.0:
        return float(blocks)
    # Sends to consider: far beyond the slowest node's mean, in units of its spread.
    q = 1.0 - worst
    horizon = int(blocks / q + 60.0 * math.sqrt(blocks * worst) / q + 60.0 / q) + 1
    t = np.arange(blocks, horizon + 1, dtype=float)
    log_binom = _lgamma(t) - math.lgamma(blocks) - _lgamma(t - blocks + 1)
    log_ok = np.zeros_like(t)  # sum_i log P(T_i <= t)
    for start in range(0, values.size, _CHUNK):
        p = values[start : start + _CHUNK, None]
        c = counts[start : start + _CHUNK, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            # log p is -inf for p == 0: such a node is done at t == blocks.
            log_losses = np.where(t > blocks, (t - blocks) * np.log(p), 0.0)
        log_pmf = log_binom + blocks * np.log1p(-p) + log_losses
        pmf = np.exp(log_pmf)
        # P(T > t) = sum of the pmf beyond t, summed from the right for accuracy.
        beyond = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]
        beyond = np.concatenate([beyond[:, 1:], np.zeros((p.shape[0], 1))], axis=1)
        with np.errstate(divide="ignore"):  # log 0 = -inf: nobody done yet, term is 1
            log_ok += (c * np.log1p(-np.minimum(beyond, 1.0))).sum(axis=0)
    terms = -np.expm1(log_ok)
    if terms[-1] >= TOLERANCE:  # cannot happen with the horizon above; guard the sum anyway
        raise ArithmeticError(f"ideal_code_expected: horizon {horizon} sends is too short")
    return float(blocks + terms.sum())


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.fromiter((math.lgamma(v) for v in x), dtype=float, count=x.size)


def _check_blocks(blocks: int) -> None:
    if isinstance(blocks, bool) or not isinstance(blocks, int | np.integer) or blocks < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
