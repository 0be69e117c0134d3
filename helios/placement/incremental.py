"""Minimal-migration rebalancing: EPLB's balance with few weight copies.

Two ways, both keeping the new plan's balance:

* :func:`relabel_min_moves` (exact, for what it changes): the plan's packs assigned to
  GPUs, below;
* :func:`repair_min_moves` (a heuristic that needs far fewer copies): EPLB's copy counts
  and busiest-GPU load reached by local moves from the current placement, falling back
  to the relabelled plan when it cannot.

EPLB (global policy) packs the physical experts of a layer into ``G`` equal-size packs
of near-equal load and gives pack ``p`` to GPU ``p``. Any other one-to-one assignment
of packs to GPUs has the same per-GPU loads, hence the same balance; it moves fewer
experts when a pack goes to the GPU that already holds most of its experts. Finding
that assignment is a linear assignment problem (as proposed in EPLB issue #25):

    minimise   sum_p cost[p, pi(p)],   cost[p, g] = |pack_p \\ held_g|

(the experts of pack ``p`` that GPU ``g`` lacks, each one weight copy), solved exactly
by the Jonker-Volgenant algorithm (``scipy.optimize.linear_sum_assignment``). Under the
hierarchical policy packs must stay on their server (groups were packed per node), so
servers are assigned first, each pair of servers costed by the best assignment of
their GPUs, and then the GPUs inside each matched pair.

References
----------
.. [1] DeepSeek-AI, "Expert Parallelism Load Balancer (EPLB)",
   https://github.com/deepseek-ai/EPLB (issue #25: minimal-migration rebalancing).
.. [2] R. Jonker and A. Volgenant, "A shortest augmenting path algorithm for dense and
   sparse linear assignment problems", Computing 38, 1987.
"""

from __future__ import annotations

import numpy as np

from helios.placement.base import Placement

__all__ = ["gpu_loads", "held_matrix", "moves_between", "relabel_min_moves", "repair_min_moves"]


def held_matrix(replicas: list[list[int]], num_gpus: int) -> np.ndarray:
    """Which GPUs hold each expert of one layer: bool array, shape (E, G)."""
    held = np.zeros((len(replicas), num_gpus), dtype=bool)
    for expert, gpus in enumerate(replicas):
        held[expert, gpus] = True
    return held


def moves_between(current: list[list[int]], target: list[list[int]], num_gpus: int) -> int:
    """Weight copies to go from ``current`` to ``target`` (one per expert a GPU gains)."""
    return int((held_matrix(target, num_gpus) & ~held_matrix(current, num_gpus)).sum())


def relabel_min_moves(current: list[list[int]], target: list[list[int]], num_gpus: int,
                      gpus_per_server: int | None = None) -> np.ndarray:
    """GPU relabelling ``perm`` (pack ``p`` goes to GPU ``perm[p]``) with the fewest copies.

    Parameters
    ----------
    current, target : list of E lists of GPU ids
        One layer's replica sets now and in the new plan.
    num_gpus : int
    gpus_per_server : int, optional
        Keep every server's packs on one server (EPLB's hierarchical policy); None lets
        any pack go to any GPU (the global policy).

    Returns
    -------
    ndarray of int, shape (G,)
        A permutation of ``range(G)``; ``[[perm[g] for g in gpus] for gpus in target]`` has
        the same per-GPU loads as ``target`` and needs the fewest copies among them.
    """
    from scipy.optimize import linear_sum_assignment  # here: the simulator imports 0.3 s faster

    held = held_matrix(current, num_gpus).astype(np.int64)   # (E, G)
    want = held_matrix(target, num_gpus).astype(np.int64)    # (E, P)
    # cost[p, g]: experts of pack p that GPU g lacks.
    cost = want.sum(axis=0)[:, None] - want.T @ held
    if gpus_per_server is None or gpus_per_server >= num_gpus:
        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(num_gpus, dtype=np.int64)
        perm[rows] = cols
        return perm
    if num_gpus % gpus_per_server:
        raise ValueError(f"{num_gpus} GPUs do not split into servers of {gpus_per_server}")
    servers = num_gpus // gpus_per_server
    block = np.arange(gpus_per_server)
    inner: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
    server_cost = np.zeros((servers, servers), dtype=np.int64)
    for a in range(servers):
        for b in range(servers):
            sub = cost[np.ix_(a * gpus_per_server + block, b * gpus_per_server + block)]
            rows, cols = linear_sum_assignment(sub)
            inner[a, b] = (int(sub[rows, cols].sum()), cols)
            server_cost[a, b] = inner[a, b][0]
    rows, cols = linear_sum_assignment(server_cost)
    perm = np.empty(num_gpus, dtype=np.int64)
    for a, b in zip(rows, cols):
        perm[a * gpus_per_server + block] = b * gpus_per_server + inner[a, b][1]
    return perm


def gpu_loads(replicas: list[list[int]], load: np.ndarray, num_gpus: int) -> np.ndarray:
    """Per-GPU load of one layer when every expert's load splits evenly over its copies
    (:meth:`Placement.gpu_load` of that layer)."""
    return Placement([replicas], num_gpus).gpu_load(np.asarray(load, dtype=float)[None])[0]


def repair_min_moves(current: list[list[int]], target: list[list[int]], load: np.ndarray,
                     num_gpus: int, slots_per_gpu: int, tolerance: float = 0.0,
                     max_moves: int | None = None) -> list[list[int]]:
    """Reach ``target``'s balance from ``current`` by local moves; never more copies than
    relabelling ``target`` would need.

    ``target``'s copy counts per expert are kept, and its busiest GPU's load ``L*``
    (even split) is the goal. From ``current``: surplus copies leave their busiest GPUs;
    missing copies go, largest share first, to the least-loaded GPU with a free slot;
    then, while the busiest GPU ``h`` is above ``L* (1 + tolerance)``, the copy on ``h``
    whose move to another GPU (into a free slot, or in exchange for a smaller copy
    there) lowers the pair's larger load most is moved. The result is used if it meets
    the goal with fewer copies than :func:`relabel_min_moves`' plan, else that plan, so
    the balance is EPLB's (within ``tolerance``) either way. Global policy: copies may
    go to any GPU.

    Parameters
    ----------
    current, target : list of E lists of GPU ids
    load : ndarray, shape (E,)
        The loads ``target`` was balanced for.
    num_gpus, slots_per_gpu : int
    tolerance : float
        Accepted excess of the busiest GPU over ``L*``.
    max_moves : int, optional
        Most balancing moves tried (default ``2 E``).
    """
    G = num_gpus
    perm = relabel_min_moves(current, target, G)
    relabelled = [[int(perm[g]) for g in gpus] for gpus in target]
    goal = gpu_loads(target, load, G).max() * (1 + tolerance) + 1e-9
    want = np.array([len(g) for g in target])
    held = held_matrix(current, G)
    share = np.asarray(load, dtype=float) / want
    per_gpu = (held * share[:, None]).sum(axis=0)
    for e in np.flatnonzero(held.sum(axis=1) > want):
        for g in sorted(np.flatnonzero(held[e]), key=lambda g: -per_gpu[g])[:held[e].sum() - want[e]]:
            held[e, g] = False
            per_gpu[g] -= share[e]
    for e in np.argsort(-share, kind="stable"):
        while held[e].sum() < want[e]:
            cand = np.flatnonzero(~held[e] & (held.sum(axis=0) < slots_per_gpu))
            if cand.size == 0 and not _make_room(held, share, per_gpu, slots_per_gpu, e):
                return relabelled
            cand = np.flatnonzero(~held[e] & (held.sum(axis=0) < slots_per_gpu))
            g = cand[np.lexsort((cand, per_gpu[cand]))[0]]
            held[e, g] = True
            per_gpu[g] += share[e]
    for _ in range(max_moves if max_moves is not None else 2 * len(share)):
        h = int(np.argmax(per_gpu))
        if per_gpu[h] <= goal:
            break
        move = _best_relief(held, share, per_gpu, slots_per_gpu, h)
        if move is None:
            break
        e, g, back = move
        held[e, h], held[e, g] = False, True
        per_gpu[h] -= share[e]
        per_gpu[g] += share[e]
        if back >= 0:
            held[back, g], held[back, h] = False, True
            per_gpu[g] -= share[back]
            per_gpu[h] += share[back]
    repaired = [np.flatnonzero(held[e]).tolist() for e in range(len(share))]
    if per_gpu.max() <= goal and moves_between(current, repaired, G) < moves_between(current, relabelled, G):
        return repaired
    return relabelled


def _make_room(held: np.ndarray, share: np.ndarray, per_gpu: np.ndarray, slots: int,
               expert: int) -> bool:
    """Free a slot on a GPU lacking ``expert``: move one of its copies to a GPU with a free
    slot (which all hold ``expert``). False if no such move exists."""
    free = np.flatnonzero(held.sum(axis=0) < slots)
    for g in np.flatnonzero(~held[expert])[np.argsort(per_gpu[~held[expert]], kind="stable")]:
        for f in free:
            movable = np.flatnonzero(held[:, g] & ~held[:, f])
            if movable.size:
                b = movable[np.argmin(share[movable])]
                held[b, g], held[b, f] = False, True
                per_gpu[g] -= share[b]
                per_gpu[f] += share[b]
                return True
    return False


def _best_relief(held: np.ndarray, share: np.ndarray, per_gpu: np.ndarray, slots: int,
                 h: int) -> tuple[int, int, int] | None:
    """The move off GPU ``h`` that lowers ``max(load_h, load_g)`` most: ``(e, g, back)``;
    ``back`` is the expert sent from ``g`` to ``h`` in exchange, -1 for a free slot."""
    free = held.sum(axis=0) < slots
    best, best_peak = None, per_gpu[h]
    for e in np.flatnonzero(held[:, h]):
        for g in np.flatnonzero(~held[e]):
            if g == h:
                continue
            low, high = per_gpu[h] - share[e], per_gpu[g] + share[e]
            if free[g] and max(low, high) < best_peak - 1e-12:
                best, best_peak = (int(e), int(g), -1), max(low, high)
            backs = np.flatnonzero(held[:, g] & ~held[:, h] & (share < share[e]))
            if backs.size:
                peaks = np.maximum(low + share[backs], high - share[backs])
                i = int(np.argmin(peaks))
                if peaks[i] < best_peak - 1e-12:
                    best, best_peak = (int(e), int(g), int(backs[i])), float(peaks[i])
    return best
