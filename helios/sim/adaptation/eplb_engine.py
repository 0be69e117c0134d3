"""``eplb_dynamic``: DeepSeek EPLB re-run every window, its moves paid in transfers.

:class:`EplbEngine`: every window the ``eplb`` strategy (DeepSeek
EPLB) is re-run on the EWMA loads; each expert gains the target GPUs it lacks (a
transfer each, when the target has a free slot and the expert is under the cap) and
loses its replicas off the target once one of its target replicas serves, so a moved
expert keeps serving at its old place until its new copy has arrived.
:class:`EplbIncrementalEngine` (``eplb_incremental``) first turns the plan into one with
EPLB's copy counts and busiest-GPU load that keeps most current copies
(:func:`helios.placement.incremental.repair_min_moves`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from helios.placement.incremental import repair_min_moves
from helios.sim.adaptation.base import AdaptationEngine, Transfer


class EplbEngine(AdaptationEngine):
    """DeepSeek EPLB re-run every window on the EWMA loads; moves paid in transfers."""

    #: eplb_incremental: reach the plan's balance with few copies (``repair_min_moves``).
    incremental = False

    def __init__(self, sim: Any, cfg: Any) -> None:
        super().__init__(sim, cfg)
        from helios.placement import PlacementContext, get_strategy

        self._place = get_strategy("eplb").place
        self._ctx = PlacementContext(cluster=sim.cluster, spec=sim.spec,
                                     expected_load=np.zeros((sim.layers, sim.spec.num_experts)),
                                     source_share=self.share, slots_per_gpu=self.slots,
                                     strategy=cfg.strategy, seed=cfg.seed)
        self.target: list[list[set[int]]] | None = None

    def act(self) -> None:
        placement = self._place(dataclasses.replace(self._ctx, expected_load=self.ewma.copy()))
        targets = placement.replicas
        if self.incremental:
            per_gpu = placement.info["eplb_num_replicas"] // self.sim.num_gpus
            targets = [repair_min_moves([list(g) for g in self.sim.replicas[layer]], row,
                                        self.ewma[layer], self.sim.num_gpus, per_gpu)
                       for layer, row in enumerate(targets)]
        self.target = [[set(gpus) for gpus in row] for row in targets]
        for layer, row in enumerate(self.target):
            for expert, want in enumerate(row):
                self._settle(layer, expert)
                for gpu in sorted(want - self.holders(layer, expert)):
                    if self.count(layer, expert) >= self.cap(layer, expert):
                        break
                    if self.free_slots(layer)[gpu] > 0:
                        self.start_transfer(layer, expert, gpu)

    def _settle(self, layer: int, expert: int) -> None:
        """Evict replicas off the target once a target replica of the expert serves."""
        if (layer, expert) in self.pending or self.target is None:
            return
        want = self.target[layer][expert]
        serving = self.sim.replicas[layer][expert]
        if want & set(serving):
            for gpu in sorted(set(serving) - want):
                self.evict(layer, expert, gpu, "evict_rebalance")

    def on_ready(self, transfer: Transfer) -> None:
        self._settle(transfer.layer, transfer.expert)


class EplbIncrementalEngine(EplbEngine):
    """``eplb_incremental``: EPLB's copy counts and balance reached with few copies."""

    incremental = True
