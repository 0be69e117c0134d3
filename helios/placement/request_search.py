"""``serving=request``: a large-neighbourhood search on a layer's copies, by exact sub-MILPs.

The request model's MILP over every expert and GPU has a weak relaxation (a concave
sends curve, convex queueing cuts, one copy column per expert and GPU) and a slow one:
its root LP alone takes ~17 s for one DeepSeek-V3 layer on the seed study's 64-GPU
fat-tree, so within a sweep's time limit HiGHS never gets past the start. This search
hands HiGHS pieces it can solve instead.

A *neighbourhood* is a few GPUs ``S`` and the single-copy experts they hold. Every
other copy and share stays as it is, and what it puts on GPUs, links and the sends
curve becomes background (``gpu_bg``, ``link_bg``, ``weight_bg``). The layer's model
restricted to the neighbourhood (:func:`restricted_layer`) is then the whole model up to
a constant, so HiGHS on it looks for the best way to re-seat those experts on those GPUs
(to within :data:`SUB_GAP`, or its best within :data:`SUB_TIME_S`); the move is kept
if the whole layer's objective falls.

Neighbourhoods pair the ``size / 2`` highest-ranked GPUs with the ``size / 2`` lowest,
then the next ones in from each end, under two rankings: GPU utilisation (the queueing
of compute) and the network price of a token sent to the GPU (its unloaded transfer plus
the queueing slope of every link on its routes). After a move the rankings are redone;
the search stops at its deadline or when a whole round moves nothing (a local optimum
of these neighbourhoods). Multi-copy experts keep their copies and shares: the
layer's share LP re-balances those afterwards.

References
----------
Shaw, P. (1998). Using constraint programming and local search methods to solve
vehicle routing problems. Principles and Practice of Constraint Programming (CP98),
LNCS 1520, 417-431 (large neighbourhood search).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np

from helios.placement.request_layer import RequestLayer

#: Relative gap each neighbourhood is solved to, and the most time one may take: a move
#: only has to beat the placement, and HiGHS finds most improving moves in its first
#: tenths of a second, then spends seconds proving them.
SUB_GAP, SUB_TIME_S = 1e-3, 1.0

__all__ = ["active_cuts", "neighbourhood_search", "neighbourhoods", "restricted_layer"]


def neighbourhood_search(model: RequestLayer, x: np.ndarray, y: np.ndarray, objective: float,
                         deadline: float, size: int = 4
                         ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Improve copies ``x`` (shape (E, G)) and shares ``y`` by exact sub-MILPs (module doc).

    Returns ``(x, y, objective, moves)``: the copies reached (float 0/1), their shares,
    their objective and the number of improving sub-MILPs kept. Deterministic up to the
    deadline: neighbourhoods come in rank order, ties to the lower GPU.
    """
    x = np.asarray(x) > 0.5
    moves = 0
    while time.perf_counter() < deadline:
        for gpus in neighbourhoods(model, y, size):
            if time.perf_counter() >= deadline:
                break
            trial = _solve(model, x, y, gpus, deadline)
            if trial is None:
                continue
            cost = model.evaluate(trial[0].astype(float), trial[1])
            if cost < objective * (1 - 1e-9):
                (x, y), objective, moves = trial, cost, moves + 1
                break  # rank again from the new placement
        else:
            break  # a whole round without a move
    return x.astype(float), y, objective, moves


def neighbourhoods(model: RequestLayer, y: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """GPU sets of ``size``: the top of a ranking with its bottom, then inwards (module doc)."""
    G, half = model.num_gpus, max(size // 2, 1)
    gpu, link = model.utilisation(y)
    price = model.send_cost if model.metric == "hops" else model.link_price(link)
    seen: set[tuple[int, ...]] = set()
    for score in (gpu, price):
        order = np.lexsort((np.arange(G), -score))
        for r in range(G // (2 * half)):
            top, bottom = order[r * half:(r + 1) * half], order[G - (r + 1) * half:G - r * half]
            gpus = np.sort(np.r_[top, bottom])
            if tuple(gpus) not in seen:
                seen.add(tuple(gpus))
                yield gpus


def restricted_layer(model: RequestLayer, x: np.ndarray, y: np.ndarray, gpus: np.ndarray,
                     experts: np.ndarray) -> RequestLayer:
    """``model`` over ``experts`` (single-copy, all held on ``gpus``) and ``gpus`` only, with
    everything else in ``x`` / ``y`` as background: the same objective up to a constant."""
    rest, rest_x = y.copy(), x.copy()
    rest[experts], rest_x[experts] = 0.0, 0.0
    outside = np.ones(model.num_gpus, dtype=bool)
    outside[gpus] = False
    weight = model.weight_bg + model.intensity @ rest
    sends = model.sends_at(weight)  # outside gpus, rest is the whole of y
    others = x[:, gpus].sum(axis=0) - x[np.ix_(experts, gpus)].sum(axis=0)
    links = np.flatnonzero(model.coef[:, gpus].any(axis=1))  # the others' waiting is a constant
    link_bg = model.link_bg[links] + model.coef[np.ix_(links, outside)] @ sends[outside]
    coef = model.coef[np.ix_(links, gpus)]
    # a link's utilisation stays between no sends to the neighbourhood and all of them to
    # each GPU: only the tangents that are the largest somewhere in between can bind
    fewest = model.sends_at(weight[gpus])
    most = model.sends_at(weight[gpus] + model.intensity[experts].sum())
    cuts = active_cuts(model.slopes, model.intercepts, link_bg + coef @ fewest, link_bg + coef @ most)
    sub = dataclasses.replace(
        model, load=model.load[experts], busy=model.busy[experts],
        copy_busy=model.copy_busy[experts], coef=coef, tau=model.tau[gpus], hops=model.hops[gpus],
        gpu_bg=(model.gpu_bg + model.gpu_load(rest_x, rest))[gpus],
        link_bg=link_bg, weight_bg=weight[gpus], link_cuts=cuts,
        slots=model.slots[gpus] - others, copies=int(experts.size))
    # the whole layer's curve and hop scale: the sub-model is that model, not one of its own
    sub.breaks, sub.values, sub.hop_scale = model.breaks, model.values, model.hop_scale
    return sub


def active_cuts(slopes: np.ndarray, intercepts: np.ndarray, lo: np.ndarray,
                hi: np.ndarray) -> np.ndarray:
    """Per value range ``[lo[k], hi[k]]``: the tangents (slopes ascending) that are the
    largest somewhere in it, so that their maximum there equals all tangents' maximum.

    Returns a bool array of shape (ranges, tangents).
    """
    # tangent i is the largest on [meet[i - 1], meet[i]], meet[i] where i and i + 1 cross
    meet = (intercepts[:-1] - intercepts[1:]) / (slopes[1:] - slopes[:-1])
    left = np.r_[-np.inf, meet]
    right = np.r_[meet, np.inf]
    return (left[None, :] <= hi[:, None]) & (right[None, :] >= lo[:, None])


def _solve(model: RequestLayer, x: np.ndarray, y: np.ndarray, gpus: np.ndarray,
           deadline: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The best re-seating of ``gpus``' single-copy experts among ``gpus``, or None."""
    single = x.sum(axis=1) == 1
    experts = np.flatnonzero(single & x[:, gpus].any(axis=1))
    if experts.size < 2:
        return None
    sub = restricted_layer(model, x, y, gpus, experts)
    m, v, aux = sub.build()
    held = x[np.ix_(experts, gpus)]
    start = sub.complete(m, v, aux, held, held.astype(float))
    result = m.solve(start, min(deadline - time.perf_counter(), SUB_TIME_S), SUB_GAP)
    if result.values is None:
        return None
    seated = result.values[v.x.ravel()].reshape(held.shape) > 0.5
    if (seated == held).all() or (seated.sum(axis=1) != 1).any():
        return None
    x, y = x.copy(), y.copy()
    x[np.ix_(experts, gpus)] = seated
    y[experts] = 0.0
    y[np.ix_(experts, gpus)] = seated
    return x, y
