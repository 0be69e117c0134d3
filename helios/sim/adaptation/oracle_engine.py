"""``oracle_static_window`` under ``serving=request``: the coming window's best static placement, free.

A bound, not a strategy anyone can run. At time 0 and at every window boundary
``k * sim.window_s`` it takes the scenario's true expected load over the coming window
(:meth:`~helios.workload.Workload.expected_load` averaged at 8 points of it) and, when
that differs from the last one it placed for, installs the ``helios_static`` placement
for it (the request model's MILP, ``strategy.ilp``), replicas and shares, at once and
without any weight transfer. It reads nothing of the simulation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from helios.placement import PlacementContext
from helios.placement.ilp import solve_placement


class OracleEngine:
    """The request model's hindsight bound (module doc); a SimPy process like the engines."""

    def __init__(self, sim: Any, cfg: Any) -> None:
        self.sim, self.cell_cfg = sim, cfg
        self.window = cfg.sim.window_s
        self.decisions = 0
        self._ctx = PlacementContext(
            cluster=sim.cluster, spec=sim.spec, expected_load=sim.workload.expected_load(0.0),
            source_share=np.asarray(sim.workload.source_distribution(), dtype=float),
            slots_per_gpu=sim.spec.slots_per_gpu, strategy=cfg.strategy, seed=cfg.seed,
            tokens_per_request=float(cfg.scenario.tokens_per_request), serving="request",
            sim_chunk_bytes=cfg.sim.chunk_kib * 1024)
        self._placed_for = np.round(self._ctx.expected_load, 6)  # the initial placement's load
        sim.adaptation_engine = self

    def run(self):
        env = self.sim.env
        while env.now <= self.sim.end:
            self._install(env.now)
            yield env.timeout(self.window)

    def _install(self, now: float) -> None:
        times = now + self.window * (np.arange(8) + 0.5) / 8
        load = np.mean([self.sim.workload.expected_load(t) for t in times], axis=0)
        key = np.round(load, 6)
        if np.array_equal(key, self._placed_for):
            return
        self._placed_for = key
        placement = solve_placement(dataclasses.replace(self._ctx, expected_load=load), "latency")
        self.decisions += 1
        sim = self.sim
        for layer, (row, shares) in enumerate(zip(placement.replicas, placement.share_table())):
            for expert, (gpus, share) in enumerate(zip(row, shares)):
                sim.set_replicas(layer, expert, gpus, share)
        sim.adaptation_events.append({"time_s": float(now), "action": "rebalance", "layer": -1,
                                      "expert": -1, "from_gpu": -1, "to_gpu": -1, "bytes": 0.0})
