"""Naive placements: round-robin and greedy least-loaded (one copy per expert)."""

from __future__ import annotations

import numpy as np

from helios.placement.base import Placement, PlacementContext


def round_robin(ctx: PlacementContext) -> Placement:
    """Expert ``e`` of layer ``l`` goes to GPU ``(e + l * offset) mod G``.

    The layer offset ``ceil(E / G)`` rotates layers so that the same GPUs do not
    hold expert 0 of every layer. When ``E`` exceeds ``G * slots`` nothing fits
    (checked before any strategy runs); a GPU whose slots are full passes the
    expert on to the next GPU.
    """
    gpus, slots = ctx.num_gpus, ctx.slots_per_gpu
    offset = -(-ctx.num_experts // gpus)
    replicas = []
    for layer in range(ctx.layers):
        used = np.zeros(gpus, dtype=int)
        experts = []
        for expert in range(ctx.num_experts):
            gpu = (expert + layer * offset) % gpus
            while used[gpu] >= slots:
                gpu = (gpu + 1) % gpus
            used[gpu] += 1
            experts.append([int(gpu)])
        replicas.append(experts)
    return Placement(replicas, gpus, {"strategy": "round_robin"})


def greedy(ctx: PlacementContext) -> Placement:
    """Longest-processing-time greedy: experts by decreasing expected load, each onto
    the least-loaded GPU with a free slot (ties to the lowest GPU id).

    References
    ----------
    R. L. Graham, "Bounds on multiprocessing timing anomalies", SIAM J. Appl. Math., 1969.
    """
    gpus, slots = ctx.num_gpus, ctx.slots_per_gpu
    replicas = []
    for layer in range(ctx.layers):
        load = np.zeros(gpus)
        used = np.zeros(gpus, dtype=int)
        experts: list[list[int]] = [[] for _ in range(ctx.num_experts)]
        for expert in np.argsort(-ctx.expected_load[layer], kind="stable"):
            free = np.flatnonzero(used < slots)
            gpu = int(free[np.argmin(load[free])])
            experts[expert] = [gpu]
            load[gpu] += ctx.expected_load[layer, expert]
            used[gpu] += 1
        replicas.append(experts)
    return Placement(replicas, gpus, {"strategy": "greedy"})
