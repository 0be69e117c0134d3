"""The gate of a serving step: top-k distinct experts per token, compiled.

Same distribution as :func:`helios.workload.sample_top_k` (successive sampling: draw
experts with replacement proportionally to popularity and keep each token's first ``k``
distinct ones, which is sampling without replacement), at a fraction of its cost for
the tens of thousands of tokens a step gates in every layer: each draw is O(1) by
Walker's alias method (Walker 1977; Vose's construction, IEEE TSE 1991) inside a numba
loop. A token that gets fewer than ``k`` distinct experts from its ``2k + 4`` draws
(rare, and only under extreme skew) is drawn again with the Gumbel-top-k trick.
"""

from __future__ import annotations

import numpy as np

from helios.sim.draws import first_distinct_by_alias
from helios.workload import gumbel_top_k


def alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table of ``probs`` (shape (E,), summing to 1): (accept, alias)."""
    n = probs.shape[0]
    scaled = probs * n
    accept = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        accept[s], alias[s] = scaled[s], g
        scaled[g] = scaled[g] + scaled[s] - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    return accept, alias


def fast_top_k(probs: np.ndarray, tokens: int, k: int, rng: np.random.Generator,
               table: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``k`` distinct experts for each of ``tokens`` tokens: int array of shape (tokens, k).

    ``table`` is :func:`alias_table` of ``probs`` (built here if not given).
    """
    num = probs.shape[0]
    if k == num:
        return np.broadcast_to(np.arange(k), (tokens, k)).copy()
    accept, alias = table if table is not None else alias_table(probs)
    draws = 2 * k + 4
    u = rng.random((2, tokens, draws))
    out = np.empty((tokens, k), dtype=np.int64)
    short = first_distinct_by_alias(u[0], u[1], accept, alias.astype(np.int64), k, out)
    if short.any():
        with np.errstate(divide="ignore"):
            out[short] = gumbel_top_k(np.log(probs), int(short.sum()), k, rng)
    return out
