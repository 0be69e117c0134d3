"""The ``serving=ep`` dynamic strategies: what each rebalance wants (:class:`EpAdapter` subclasses).

* ``eplb_dynamic`` (vLLM's defaults) and ``eplb_dynamic_sglang`` (SGLang's): DeepSeek
  EPLB re-run on the window's expert counts; every GPU gets the new plan's pack ``p =``
  its own id, as both engines lay physical experts out (vLLM
  ``rearrange_expert_weights_inplace``, SGLang ``update_expert_location``). Skipped while
  the window's balancedness exceeds ``utilization_threshold``.
* ``eplb_incremental``: EPLB's copy counts and balance (its busiest GPU's load, even
  split) reached from the current placement with few copies
  (:func:`helios.placement.incremental.repair_min_moves`); under the hierarchical
  policy, EPLB's plan with its packs assigned to the GPUs that already hold most of
  them (:func:`~helios.placement.incremental.relabel_min_moves`, per server).
* ``helios_dynamic``: moves by the load-aware step cost of ``helios_static``
  (:class:`helios.placement.ep_layer.EpLayer`) on the window's counts. A move copies a
  hot expert (largest count per copy) once: onto a light GPU as an extra copy (within
  ``helios_static``'s copy budget, the memory EPLB gets too), into the slot of a cold
  redundant copy, or off its busiest GPU (:func:`best_move`). Moves are taken best first over all layers, each only if it cuts
  its layer's cost by ``min_gain``, at most as many as the migration budget carries in
  one interval (``migration_gbyte_s`` x the last interval / expert bytes); a changed
  layer gets the optimal token shares for its copies (the layer's LP).
* ``oracle_static_window``: a bound, not a strategy anyone can run. At the start and
  every ``window_steps`` steps it installs, free and at once, the ``helios_static``
  placement for the true popularity of the coming window (the scenario's popularity
  averaged over the window's expected span: the last window's mean step time x
  ``window_steps``), with ``strategy.ilp`` (time limit per installation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from helios.placement import get_strategy
from helios.placement.ilp import layer_models, solve_placement
from helios.placement.incremental import held_matrix, relabel_min_moves, repair_min_moves
from helios.placement.moves import best_first_moves, cheapest_move, optimal_shares
from helios.sim.ep.migration import EpAdapter, LayerChange

#: Candidates per move search: hottest experts x (least-loaded GPUs, coldest redundant copies).
HOT_CANDIDATES, LIGHT_CANDIDATES, COLD_CANDIDATES = 8, 4, 16


def layer_balancedness(replicas: list[list[int]], shares: list[list[float]], counts: np.ndarray,
                       num_gpus: int) -> float:
    """Mean over max GPU load of one layer under ``counts`` (SGLang's utilisation rate)."""
    load = np.zeros(num_gpus)
    for expert, (gpus, share) in enumerate(zip(replicas, shares)):
        np.add.at(load, gpus, counts[expert] * np.asarray(share))
    return float(load.mean() / load.max()) if load.max() > 0 else 1.0


class EplbAdapter(EpAdapter):
    """``eplb_dynamic`` / ``eplb_dynamic_sglang``: EPLB re-run, pack ``p`` on GPU ``p``."""

    relabel = False

    def __init__(self, sim: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(sim, cfg, ctx)
        self._place = get_strategy("eplb").place
        self._hierarchical = cfg.strategy.eplb.num_groups % sim.cluster.num_servers == 0

    def plan(self, now: float, counts: np.ndarray) -> list[LayerChange]:
        G = self.sim.num_gpus
        rate = np.mean([layer_balancedness(r, s, c, G)
                        for r, s, c in zip(self.replicas, self.shares, counts)])
        if rate > self.cfg.utilization_threshold:
            self._event(now, "rebalance_skipped", -1, -1, -1, -1, 0.0)
            return []
        target = self._place(dataclasses.replace(self.ctx, expected_load=counts.astype(float)))
        changes = []
        for layer, replicas in enumerate(target.replicas):
            if self.relabel and self._hierarchical:
                gps = self.sim.cluster.gpus_per_server
                perm = relabel_min_moves(self.replicas[layer], replicas, G, gps)
                replicas = [[int(perm[g]) for g in gpus] for gpus in replicas]
            elif self.relabel:
                slots = target.info["eplb_num_replicas"] // G
                replicas = repair_min_moves(self.replicas[layer], replicas, counts[layer], G, slots)
            changes.append(self.change(layer, replicas, None))
        return changes


class EplbIncrementalAdapter(EplbAdapter):
    """``eplb_incremental``: EPLB's plan with the fewest copies (module doc)."""

    relabel = True


class HeliosAdapter(EpAdapter):
    """``helios_dynamic``: budgeted moves by the load-aware step cost (module doc)."""

    def __init__(self, sim: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(sim, cfg, ctx)
        self._last_decision = 0.0

    def _xy(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        E, G = self.sim.num_experts, self.sim.num_gpus
        x = held_matrix(self.replicas[layer], G)
        y = np.zeros((E, G))
        for expert, (gpus, share) in enumerate(zip(self.replicas[layer], self.shares[layer])):
            y[expert, gpus] = share
        return x, y

    def plan(self, now: float, counts: np.ndarray) -> list[LayerChange]:
        elapsed, self._last_decision = now - self._last_decision, now
        budget = self.budget if self.budget is not None else np.inf
        allowed = max(1, int(min(budget * elapsed / self.ctx.spec.expert_bytes, 1e9)))
        models = layer_models(dataclasses.replace(self.ctx, expected_load=counts.astype(float)),
                              "latency")
        moved = best_first_moves(models, [self._xy(layer) for layer in range(len(models))],
                                 lambda layer, x, y: best_move(models[layer], x, y), allowed,
                                 self.cfg.min_gain)
        changes = []
        for layer, (x, y, base, obj) in enumerate(moved):
            if obj >= base:
                continue
            y = optimal_shares(models[layer], x, y)
            if models[layer].evaluate(x.astype(float), y) >= base * (1 - self.cfg.min_gain):
                continue
            replicas, shares = [], []
            for e in range(x.shape[0]):
                gpus = sorted(np.flatnonzero(x[e]).tolist(), key=lambda g: (-y[e, g], g))
                replicas.append(gpus)
                shares.append([float(y[e, g]) for g in gpus])
            changes.append(self.change(layer, replicas, shares))
        return changes


def best_move(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[tuple, float] | None:
    """Best one-copy move of one layer: ``(toggles, new cost)``, or None.

    ``x`` (bool) and ``y`` (shares), shape (E, G). ``toggles`` lists ``(expert, gpu,
    held)`` changes; every move copies one expert once. Kinds, for the hottest experts
    (largest count per copy) and the least-loaded GPUs:

    * *add*: a new copy, while the layer holds fewer than the copy budget and the GPU
      has a free slot;
    * *replace*: the copy goes into the slot of a cold redundant copy (smallest count
      per copy among experts with two or more), so every expert keeps one;
    * *relocate*: the expert's copy on its busiest GPU moves to a light GPU.
    """
    load = model.load
    count = x.sum(axis=1)
    per_copy = load / np.maximum(count, 1)
    gpu_pairs = (load[:, None] * y).sum(axis=0)
    light = [int(g) for g in np.argsort(gpu_pairs, kind="stable")[:LIGHT_CANDIDATES]]
    hot = [int(e) for e in np.argsort(-per_copy, kind="stable")[:HOT_CANDIDATES] if load[e] > 0]
    redundant = np.flatnonzero(count >= 2)
    cold = [(int(e), int(g)) for e in redundant[np.argsort(per_copy[redundant], kind="stable")]
            for g in np.flatnonzero(x[e])][:COLD_CANDIDATES]
    free = model.slots - x.sum(axis=0)
    spare = count.sum() < model.copies
    candidates: list[tuple] = []
    for e in hot:
        busiest = max(np.flatnonzero(x[e]).tolist(), key=lambda g: (gpu_pairs[g], -g))
        for g in light:
            if not x[e, g]:
                if spare and free[g] > 0:
                    candidates.append(((e, g, True),))
                candidates.append(((e, busiest, False), (e, g, True)))
        candidates += [((c, g, False), (e, g, True)) for c, g in cold if c != e and not x[e, g]]
    return cheapest_move(model, x, y, candidates)


class OracleAdapter(EpAdapter):
    """``oracle_static_window``: the coming window's best static placement, free (module doc)."""

    def __init__(self, sim: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(sim, cfg, ctx)
        self._key: bytes | None = None

    def before_step(self, now: float) -> float:
        if now <= self.sim.end and self.steps_done % self.cfg.window_steps == 0:
            self._install_window(now)
        return 0.0

    def plan(self, now: float, counts: np.ndarray) -> list[LayerChange]:  # pragma: no cover
        raise NotImplementedError("the oracle installs whole placements (before_step)")

    def _install_window(self, now: float) -> None:
        recent = [end for end, _ in self.history][-self.cfg.window_steps - 1:]
        step_s = (recent[-1] - recent[0]) / (len(recent) - 1) if len(recent) > 1 else 0.0
        span = max(step_s * self.cfg.window_steps, 0.0)
        scenario = self.sim.workload.scenario
        times = now + span * (np.arange(32) + 0.5) / 32
        popularity = np.mean([scenario.popularity(t) for t in times], axis=0)
        key = np.round(popularity, 12).tobytes()
        if key == self._key:
            return
        first = self._key is None
        self._key = key
        if first and np.allclose(popularity, self.ctx.expected_load
                                 / self.ctx.expected_load.sum(axis=1, keepdims=True)):
            return  # the static placement already is this window's
        placement = solve_placement(dataclasses.replace(self.ctx, expected_load=popularity),
                                    "latency")
        self.rebalances += 1
        self._event(now, "rebalance", -1, -1, -1, -1, 0.0)
        for layer, (replicas, shares) in enumerate(zip(placement.replicas, placement.share_table())):
            self._set_layer(layer, replicas, shares)


#: ``serving=ep`` dynamic strategies and their adapters.
EP_ADAPTERS: dict[str, type[EpAdapter]] = {
    "eplb_dynamic": EplbAdapter,
    "eplb_dynamic_sglang": EplbAdapter,
    "eplb_incremental": EplbIncrementalAdapter,
    "helios_dynamic": HeliosAdapter,
    "oracle_static_window": OracleAdapter,
}
