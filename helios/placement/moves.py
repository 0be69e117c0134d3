"""Moves of copies by a layer's own cost model, best first over the layers: what both
serving models' ``helios_dynamic`` engines share (:mod:`helios.sim.ep.adapters`,
:mod:`helios.sim.adaptation.helios_engine`)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["apply_move", "best_first_moves", "cheapest_move", "optimal_shares"]

#: ``search(layer, x, y)``: the layer's best one-copy move ``(toggles, new cost)`` or None.
MoveSearch = Callable[[int, np.ndarray, np.ndarray], "tuple[tuple, float] | None"]


def best_first_moves(models: list[Any], starts: list[tuple[np.ndarray, np.ndarray]], search: MoveSearch,
                     allowed: int, min_gain: float) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Take up to ``allowed`` moves, best first over the layers.

    ``starts[l]`` are layer ``l``'s copies ``x`` (bool) and shares ``y``, shape (E, G),
    changed in place. A layer's next move is taken only if it cuts the layer's cost by
    at least ``min_gain`` of its cost before any move; a moved expert's shares become
    equal (ties between layers: the lower layer first).

    Returns
    -------
    list of (x, y, cost before, cost after), one per layer.
    """
    state, heap = [], []
    for layer, (model, (x, y)) in enumerate(zip(models, starts)):
        base = model.evaluate(x.astype(float), y)
        state.append([x, y, base, base, None])
        _push(heap, layer, search, state[layer], min_gain)
    moved = 0
    while heap and moved < allowed:
        _, layer = heapq.heappop(heap)
        entry = state[layer]
        toggles, cost = entry[4]
        apply_move(entry[0], entry[1], toggles)
        entry[3], entry[4] = cost, None
        moved += 1
        _push(heap, layer, search, entry, min_gain)
    return [(x, y, base, cost) for x, y, base, cost, _ in state]


def apply_move(x: np.ndarray, y: np.ndarray, toggles: tuple) -> None:
    """Apply ``toggles`` (``(expert, gpu, held)`` each) to copies ``x`` in place; a moved
    expert's shares ``y`` become equal over its copies."""
    for e, g, held in toggles:
        x[e, g] = held
    for e in {t[0] for t in toggles}:
        y[e] = x[e] / x[e].sum()


def cheapest_move(model: Any, x: np.ndarray, y: np.ndarray,
                  candidates: list[tuple]) -> tuple[tuple, float] | None:
    """The candidate moves' cheapest by ``model.evaluate`` (the first of equal ones):
    ``(toggles, cost)``, or None if there are none."""
    best = None
    for toggles in candidates:
        x2, y2 = x.copy(), y.copy()
        apply_move(x2, y2, toggles)
        cost = model.evaluate(x2.astype(float), y2)
        if best is None or cost < best[1]:
            best = (toggles, cost)
    return best


def _push(heap: list, layer: int, search: MoveSearch, entry: list, min_gain: float) -> None:
    """Queue the layer's best next move (largest cut of its cost) if it gains enough."""
    x, y, base, current, _ = entry
    move = search(layer, x, y)
    if move is not None and move[1] < current - min_gain * base:
        entry[4] = move
        heapq.heappush(heap, (move[1] - current, layer))


def optimal_shares(model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The layer's optimal shares for copies ``x`` (its MILP's LP with the copies fixed),
    or ``y`` if the LP fails."""
    from helios.placement.ilp import _normalised  # here: the ILP module imports much

    m, v, _ = model.build()
    result = m.solve(None, 5.0, 0.0, relax=True, fix=(v.x.ravel(), x.ravel().astype(float)))
    if result.values is None:
        return y
    return _normalised(result.values[v.y.ravel()].reshape(y.shape), x.astype(float))
