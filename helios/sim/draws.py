"""Compiled inner loop of :func:`helios.workload.sample_top_k`: inverse-CDF draws, first
``k`` distinct per token.

Kept out of :mod:`helios.workload`, which every config import loads, so that composing
and validating a sweep does not import numba; ``sample_top_k`` imports it on first use.
"""

from __future__ import annotations

import numpy as np

from helios.sim.kernel import _njit


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
            pick = min(lo, n - 1)
            seen = False
            for c in range(found):
                if out[t, c] == pick:
                    seen = True
                    break
            if not seen:
                out[t, found] = pick
                found += 1
                if found == k:
                    break
        if found < k:
            short[t] = True
    return short
