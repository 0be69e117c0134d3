"""Expert popularity profiles: how unevenly a layer's gate spreads its tokens.

A profile is a probability per expert, the gate's draw weights; every token then picks
``top_k`` distinct experts by successive sampling (:func:`helios.workload.sample_top_k`).
Two shapes (``scenario.popularity``):

* ``measured`` (the default): calibrated to a published measurement of real routing
  skew. Ma et al. (DODOCO, arXiv:2605.20982, 2026) instrument five MoE checkpoints on
  H100s and report the Gini coefficient of the per-expert token counts on real text:
  the MLA models (DeepSeek-V2-Lite, the attention and DeepSeekMoE family of DeepSeek-V3)
  stay above 0.24 on every real-text condition, the MHA and Mamba-2 models fall to 0.105
  and 0.150 on wikitext, and the GQA model (Qwen3-30B) lies between the two bands. The
  model config carries its family's figure (``model.routing_gini``: 0.25 for DeepSeek-V3,
  0.19 for the GQA models Qwen3-30B-A3B and Mixtral, the middle of the band the paper
  places GQA in); ``scenario.gini`` overrides it. The measurement gives the Gini, not the
  shape, so the shape is an assumption: log-normal weights at evenly spaced quantiles,
  ``w_r = exp(sigma * Phi^-1((r - 1/2) / E))``, with ``sigma`` solved so that the Gini of
  the *expected token counts after top-k sampling* (not of the weights) is the target.
* ``zipf``: ``p_r ~ r^-s`` over popularity ranks (``scenario.zipf_s``), the seed study's
  profile. Zipf(1) over DeepSeek-V3's 256 experts with top-8 gives a Gini of 0.63,
  2.5 times the measured 0.25.

Ranks go to experts by a permutation per layer (the scenario's), so which experts are
hot differs between layers while the skew does not.

The expected counts are the successive-sampling inclusion probabilities: exact, by
enumerating the ordered picks, where there are at most 100,000 of them (Mixtral's 8
experts, top-2: 56); otherwise Rosen's approximation (Rosen, "Asymptotic theory for
order sampling", J. Stat. Plan. Inference 62, 1997), ``pi_i = 1 - exp(-p_i t)`` with
``t`` such that the ``pi_i`` sum to ``top_k``, within 0.002 of the sampled Gini at 64
experts and more. ``tests/test_popularity.py`` checks both against sampled gates.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

import numpy as np

__all__ = ["gini", "zipf_popularity", "inclusion_probabilities", "max_gini",
           "lognormal_sigma", "measured_popularity", "profile_function"]


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 when all are equal, towards 1 when one
    holds everything (``sum_i (2i - n - 1) x_(i) / (n sum x)`` over the sorted ``x``)."""
    x = np.sort(np.asarray(values, dtype=float))
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * total))


def zipf_popularity(num_experts: int, s: float, permutation: np.ndarray) -> np.ndarray:
    """Zipf(s) probabilities over experts; ``permutation[r]`` is the expert of rank r.

    Returns an array of shape (num_experts,) summing to 1.
    """
    weights = np.arange(1, num_experts + 1, dtype=float) ** -s
    probs = np.empty(num_experts)
    probs[permutation] = weights / weights.sum()
    return probs


#: Most ordered picks for which inclusion probabilities are enumerated exactly.
EXACT_LIMIT = 100_000


def inclusion_probabilities(probs: np.ndarray, k: int) -> np.ndarray:
    """Probability that each expert is among a token's ``k`` distinct picks: exact up to
    :data:`EXACT_LIMIT` ordered picks, Rosen's approximation beyond (module doc).

    Parameters
    ----------
    probs : ndarray, shape (E,)
        Draw weights summing to 1, all positive.
    k : int
        Picks per token, ``1 <= k <= E``.

    Returns
    -------
    ndarray, shape (E,), summing to ``k``.
    """
    if k >= probs.size:
        return np.ones_like(probs)
    if math.perm(probs.size, k) <= EXACT_LIMIT:
        return _exact_inclusion(probs, k)

    def excess(log_t: float) -> float:
        return float(-np.expm1(-probs * math.exp(log_t)).sum() - k)

    from scipy.optimize import brentq  # here: scipy.optimize is 0.7 s of importing helios.config

    lo, hi = math.log(k) - 1.0, math.log(k) + 1.0
    while excess(lo) > 0:
        lo -= 2.0
    while excess(hi) < 0:
        hi += 2.0
    t = math.exp(brentq(excess, lo, hi, xtol=1e-13))
    return -np.expm1(-probs * t)


def _exact_inclusion(probs: np.ndarray, k: int) -> np.ndarray:
    """Inclusion probabilities by enumerating every ordered ``k``-tuple of distinct picks:
    a tuple's probability is ``prod_j p_(i_j) / (1 - p_(i_1) - ... - p_(i_(j-1)))``."""
    picks = np.array(list(itertools.permutations(range(probs.size), k)))
    p = probs[picks]
    before = np.cumsum(p, axis=1) - p
    chance = np.prod(p / (1.0 - before), axis=1)
    out = np.zeros_like(probs)
    for j in range(k):
        out += np.bincount(picks[:, j], weights=chance, minlength=probs.size)
    return out


def max_gini(num_experts: int, top_k: int) -> float:
    """The largest Gini top-k gating can reach: the same ``top_k`` experts for every token."""
    return 1.0 - top_k / num_experts


def _lognormal_weights(num_experts: int, sigma: float) -> np.ndarray:
    """Log-normal weights at evenly spaced quantiles, heaviest first, summing to 1."""
    from scipy.special import ndtri

    z = ndtri((np.arange(num_experts, 0, -1) - 0.5) / num_experts)
    w = np.exp(sigma * (z - z.max()))  # scaled so the largest is 1: no overflow
    return w / w.sum()


@functools.lru_cache(maxsize=64)
def lognormal_sigma(num_experts: int, top_k: int, target: float) -> float:
    """The ``sigma`` whose expected top-k token counts have Gini ``target``.

    Requires ``0 <= target < max_gini(num_experts, top_k)``.
    """
    if top_k >= num_experts:
        return 0.0  # every token picks every expert: no skew to calibrate
    if not 0.0 <= target < max_gini(num_experts, top_k):
        raise ValueError(f"Gini {target} outside [0, {max_gini(num_experts, top_k)})")

    def error(sigma: float) -> float:
        return gini(inclusion_probabilities(_lognormal_weights(num_experts, sigma), top_k)) - target

    from scipy.optimize import brentq

    if error(0.0) >= 0.0:  # a target at (or, by rounding, below) the uniform profile's Gini
        return 0.0
    hi = 1.0
    while error(hi) < 0:
        hi *= 2.0
    return float(brentq(error, 0.0, hi, xtol=1e-10))


def measured_popularity(num_experts: int, top_k: int, target: float,
                        permutation: np.ndarray) -> np.ndarray:
    """The calibrated log-normal profile (module doc); ``permutation[r]`` is the expert of
    rank r (rank 0 the hottest). Returns shape (num_experts,), summing to 1."""
    weights = _lognormal_weights(num_experts, lognormal_sigma(num_experts, top_k, target))
    probs = np.empty(num_experts)
    probs[permutation] = weights
    return probs


def profile_function(shape: str, num_experts: int, top_k: int, zipf_s: float,
                     target_gini: float) -> Callable[[np.ndarray], np.ndarray]:
    """The profile of ``scenario.popularity`` as a function of a layer's rank permutation."""
    if shape == "zipf":
        return functools.partial(zipf_popularity, num_experts, zipf_s)
    if shape == "measured":
        return functools.partial(measured_popularity, num_experts, top_k, target_gini)
    raise ValueError(f"unknown popularity shape {shape!r}")
