"""Compiled inner loops of the gate's top-k draws: per token, the first ``k`` distinct
experts of its draws with replacement (successive sampling).

- :func:`first_distinct_by_cdf` draws by inverse CDF (binary search), for
  :func:`helios.workload.sample_top_k` (the request model, the expected-load profile);
- :func:`first_distinct_by_alias` draws in O(1) by an alias table, for
  :func:`helios.sim.ep.gate.fast_top_k` (every layer of every EP step).

Kept out of :mod:`helios.workload`, which every config import loads, so that composing
and validating a sweep does not import numba; ``sample_top_k`` imports it on first use.
"""

from __future__ import annotations

import numpy as np

from helios.sim.kernel import _njit, _njit_inline


@_njit_inline
def _keep_if_new(out, t, found, pick):
    """Append ``pick`` to token ``t``'s experts ``out[t, :found]`` unless it is there;
    returns how many the token has."""
    for c in range(found):
        if out[t, c] == pick:
            return found
    out[t, found] = pick
    return found + 1


@_njit
def first_distinct_by_cdf(u: np.ndarray, cdf: np.ndarray, k: int, out: np.ndarray) -> np.ndarray:
    """Per token, the first ``k`` distinct experts of its draws; a mask of short tokens.

    Parameters
    ----------
    u : float array, shape (tokens, draws)
        Uniform numbers in [0, 1); draw ``d`` of token ``t`` is the expert ``i`` with
        ``cdf[i - 1] <= u[t, d] * cdf[-1] < cdf[i]`` (``np.searchsorted(cdf, x,
        side="right")``, clipped to the last expert).
    cdf : float array, shape (E,)
        Cumulative popularity.
    out : int array, shape (tokens, k)
        Filled with each token's experts in the order they were first drawn (rows of
        short tokens are left partly unset).
    """
    tokens, draws = u.shape
    n = cdf.shape[0]
    total = cdf[n - 1]
    short = np.zeros(tokens, dtype=np.bool_)
    for t in range(tokens):
        found = 0
        for d in range(draws):
            x = u[t, d] * total
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi) // 2
                if cdf[mid] <= x:
                    lo = mid + 1
                else:
                    hi = mid
            found = _keep_if_new(out, t, found, min(lo, n - 1))
            if found == k:
                break
        short[t] = found < k
    return short


@_njit
def first_distinct_by_alias(u_index: np.ndarray, u_accept: np.ndarray, accept: np.ndarray,
                            alias: np.ndarray, k: int, out: np.ndarray) -> np.ndarray:
    """As :func:`first_distinct_by_cdf`, drawing by Walker's alias method: draw ``d`` of
    token ``t`` is column ``i = floor(u_index[t, d] * E)``, or its alias unless
    ``u_accept[t, d] < accept[i]`` (``u_index``, ``u_accept`` of shape (tokens, draws))."""
    tokens, draws = u_index.shape
    n = accept.shape[0]
    short = np.zeros(tokens, dtype=np.bool_)
    for t in range(tokens):
        found = 0
        for d in range(draws):
            i = min(int(u_index[t, d] * n), n - 1)
            found = _keep_if_new(out, t, found, i if u_accept[t, d] < accept[i] else alias[i])
            if found == k:
                break
        short[t] = found < k
    return short
