"""``serving=ep``: a swap search on a layer's copies, between the warm start and the MILP.

After the warm start and its optimal shares (:meth:`EpLayer.shares`), a layer's busiest
GPUs are often a *closed* set: they sit at one level ``P_max`` of token-expert pairs,
every copy of the experts they share lies among them, so the shares cannot move load
out, while GPUs holding only single-copy experts sit below it with nothing to take. On
a fat-tree at DeepSeek-V3 scale this is a 1-5% imbalance that HiGHS does not close
within a second per layer (its root LP alone takes longer on 128 GPUs).

A move swaps two copies (or a copy and a free slot) between a GPU ``g`` at the top (at
the busiest level ``P_max`` of pairs, or with a positive price) and any GPU ``h``,
neither holding the other's expert. With ``q`` the pairs each copy serves now, the swap
moves ``d = q_a - q_b > 0`` pairs from ``g`` to ``h``, of which ``min(d, P_max - P[h] -
d)`` leave the top for good; candidates are ranked by that times the drop in price
(``price[g] - price[h]``, the share LP's dual of a pair on each GPU), then by it alone.
Each of the first ``tries`` is costed exactly (its optimal shares and the layer's
objective) and the first that lowers the objective is taken, or the first that keeps it
and lowers the excess of pairs over the mean GPU (pair counts are integers, so several
GPUs often tie at the top). The search stops at a target objective (the one the bound
proves within the gap), at its deadline, or when none of the first ``tries`` candidates
is taken.

Swaps keep every GPU's copy count, so the weight reads of a full GPU do not change;
a move into a free slot changes both GPUs' counts, which the exact cost sees.
"""

from __future__ import annotations

import time

import numpy as np

from helios.placement.ep_layer import EpLayer

__all__ = ["swap_search"]


def swap_search(model: EpLayer, x: np.ndarray, y: np.ndarray, objective: float, target: float,
                deadline: float, tries: int = 8) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Improve copies ``x`` (shape (E, G)) and their shares ``y`` by swaps (module doc).

    Returns ``(x, y, objective, moves)``: the copies reached (float 0/1), their optimal
    shares, their objective and the number of moves taken. Deterministic: candidates are
    ordered by their estimate, then by their indices.
    """
    x = np.asarray(x) > 0.5
    slots = model.slots.astype(np.int64)
    solved = model.share_lp(x)
    if solved is None:
        return x.astype(float), y, objective, 0
    (y, price), moves = solved, 0
    objective = model.evaluate(x.astype(float), y)
    level, excess = objective, _excess(model, y)  # level: the objective at the last strict gain
    while objective > target and time.perf_counter() < deadline:
        for e_a, g_a, e_b, g_b in _candidates(model, x, y, price, slots)[:tries]:
            trial = x.copy()
            trial[e_a, g_a], trial[e_a, g_b] = False, True
            if e_b >= 0:
                trial[e_b, g_b], trial[e_b, g_a] = False, True
            solved = model.share_lp(trial)
            if solved is None:
                continue
            cost, spread = model.evaluate(trial.astype(float), solved[0]), _excess(model, solved[0])
            # Equal loads tie often (pair counts are integers): a move that keeps the
            # objective and lowers the excess clears one of several GPUs at the top.
            # "Keeps" allows 1e-8 over the level, above the share LP's 1e-9 slack.
            better = cost < level * (1 - 1e-9)
            if better or (cost <= level * (1 + 1e-8) and spread < excess * (1 - 1e-9)):
                x, (y, price), objective, excess = trial, solved, cost, spread
                level = cost if better else level
                moves += 1
                break
            if time.perf_counter() >= deadline:
                break
        else:
            break  # no candidate improves: a local optimum of this neighbourhood
    return x.astype(float), y, objective, moves


def _excess(model: EpLayer, y: np.ndarray) -> float:
    """Pairs above the mean GPU's, summed over GPUs."""
    pairs = model.pairs_of(y)
    return float(np.maximum(pairs - pairs.mean(), 0.0).sum())


def _candidates(model: EpLayer, x: np.ndarray, y: np.ndarray, price: np.ndarray,
                slots: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Swaps ``(e_a, g_a, e_b, g_b)`` by estimated gain, best first (``e_b = -1``: a
    free slot of ``g_b``)."""
    pairs = model.pairs_of(y)
    level = float(pairs.max())
    if level <= 0:
        return []
    top = (pairs >= level * (1 - 1e-7)) | (price > 1e-12)
    served = model.load[:, None] * y
    e_a, g_a = np.nonzero(x & top[None, :])
    e_b, g_b = np.nonzero(x)
    free = np.flatnonzero(x.sum(axis=0) < slots)
    q_a = served[e_a, g_a]
    q_b = np.r_[served[e_b, g_b], np.zeros(free.size)]
    e_b, g_b = np.r_[e_b, np.full(free.size, -1)], np.r_[g_b, free]
    d = q_a[:, None] - q_b[None, :]
    moved = np.minimum(d, level - pairs[g_b][None, :] - d)  # what leaves the top for good
    gain = np.maximum(price[g_a][:, None] - price[g_b][None, :], 0.0) * moved
    ok = (moved > 0) & (e_a[:, None] != e_b[None, :]) & ~x[e_a[:, None], g_b[None, :]]
    ok &= (e_b[None, :] < 0) | ~x[np.maximum(e_b, 0)[None, :], g_a[:, None]]
    i, j = np.nonzero(ok)
    order = np.lexsort((j, i, -moved[i, j], -gain[i, j]))
    return [(int(e_a[i[k]]), int(g_a[i[k]]), int(e_b[j[k]]), int(g_b[j[k]])) for k in order]
