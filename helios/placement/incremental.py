"""Minimal-migration rebalancing: a new plan's GPU packs matched to the GPUs that hold most of them.

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
from scipy.optimize import linear_sum_assignment

__all__ = ["held_matrix", "moves_between", "relabel_min_moves"]


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
