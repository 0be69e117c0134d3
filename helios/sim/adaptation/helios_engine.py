"""``helios_dynamic`` in the request model: moves by the load-aware cost of ``helios_static``.

:class:`HeliosEngine`, at every decision (every ``interval_s``, null: every window), on the
expert counts of completed windows (the EWMA, or the mean over ``count_window_s``):

1. Each layer's :class:`~helios.placement.request_layer.RequestLayer` is built for the
   counts (:func:`~helios.placement.ilp.with_load`; the cluster's terms once per run)
   and costed at the current copies and shares, the other layers' load under theirs as
   its background. Copies on their way count as held, with no share yet.
2. Moves (:func:`best_move`): a hot expert (largest count per copy) gets a copy on one
   of the GPUs where the model prices its tokens lowest, as an extra copy (within the
   copy budget of ``helios_static``, on a free slot), into the slot of a cold redundant
   copy, or by moving one of its copies there. Each is costed exactly; experts with a
   copy on its way are left alone, and none gains a copy past
   ``max(max_replicas_per_expert, its initial count)``. Moves are taken best first over the layers while
   each cuts its layer's cost by at least ``min_gain`` of the cost before the decision,
   at most as many as the migration budget carries in one interval
   (``migration_gbyte_s`` x the interval / expert bytes), and a changed layer must
   still gain ``min_gain`` with its optimal shares (the layer's LP, copies fixed).
3. What changes: a dropped cold copy is evicted at once (``evict_for_memory``: its
   slot takes the new copy); a new copy is transferred
   (:meth:`AdaptationEngine.start_transfer`, within the budget) and, once it serves,
   its expert gets the decided shares and loses the copy the move takes away
   (``evict_rebalance``); an expert whose copies stay gets its new shares at once.

So where the placement is already cheap by its own cost, as ``helios_static``'s is under
the load it was solved for, the counts' noise must outweigh ``min_gain`` before a copy
moves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from helios.placement.base import PlacementContext
from helios.placement.ilp import layer_models, set_background, with_load
from helios.placement.moves import best_first_moves, cheapest_move, optimal_shares
from helios.sim.adaptation.base import AdaptationEngine, Transfer

__all__ = ["HeliosEngine", "best_move", "layer_state"]

#: Per move search: hottest experts, cheapest target GPUs for each, coldest redundant copies.
HOT_CANDIDATES, TARGET_CANDIDATES, COLD_CANDIDATES = 8, 6, 16


def best_move(model: Any, x: np.ndarray, y: np.ndarray, frozen: set[int] = frozenset(),
              cap: np.ndarray | None = None) -> tuple[tuple, float] | None:
    """Best one-copy move of a request-model layer: ``(toggles, new cost)``, or None.

    ``x`` (bool) and ``y`` (shares), shape (E, G); ``toggles`` lists ``(expert, gpu,
    held)`` changes, each move copying one expert once, none touching ``frozen`` and
    none taking an expert past ``cap`` copies (shape (E,); default none).
    For each of the hottest experts (count per copy), the targets are the GPUs without
    it where :meth:`RequestLayer.marginal` prices a copy with an equal share lowest;
    there the expert gets an extra copy (within the budget, on a free slot), the slot of
    one of the coldest redundant copies (smallest count per copy), or one of its own
    copies moved (on a free slot). A changed expert's shares are equal in the costing.
    """
    E, G = x.shape
    load, count = model.load, x.sum(axis=1)
    per_copy = load / np.maximum(count, 1)
    movable = np.array([e for e in range(E) if e not in frozen], dtype=np.int64)
    hot = [int(e) for e in movable[np.argsort(-per_copy[movable], kind="stable")][:HOT_CANDIDATES]
           if load[e] > 0]
    redundant = movable[count[movable] >= 2]
    cold = [(int(e), int(g)) for e in redundant[np.argsort(per_copy[redundant], kind="stable")]
            for g in np.flatnonzero(x[e])][:COLD_CANDIDATES]
    free = model.slots - x.sum(axis=0)
    spare = count.sum() < model.copies
    grows = count < (np.inf if cap is None else cap)
    state = layer_state(model, x, y)
    candidates: list[tuple] = []
    for e in hot:
        others = np.flatnonzero(~x[e])
        if others.size == 0:
            continue
        price = model.marginal(state, e, 1.0 / (count[e] + 1), others)
        for g in others[np.lexsort((others, price))][:TARGET_CANDIDATES].tolist():
            if free[g] > 0:
                if spare and grows[e]:
                    candidates.append(((e, g, True),))
                candidates += [((e, s, False), (e, g, True)) for s in np.flatnonzero(x[e]).tolist()]
            if grows[e]:
                candidates += [((c, h, False), (e, g, True)) for c, h in cold if h == g and c != e]
    return cheapest_move(model, x, y, candidates)


def layer_state(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The model's running state (:meth:`RequestLayer.new_state`) with every copy of ``x``
    added at its share ``y``."""
    state = model.new_state()
    for e, g in zip(*np.nonzero(x)):
        model.add(state, int(e), float(y[e, g]), int(g))
    return state


class HeliosEngine(AdaptationEngine):
    """``helios_dynamic`` (request model): budgeted moves by the load-aware cost (module doc)."""

    def __init__(self, sim: Any, cfg: Any) -> None:
        super().__init__(sim, cfg)
        ctx = PlacementContext(
            cluster=sim.cluster, spec=sim.spec, expected_load=np.ones((1, sim.spec.num_experts)),
            source_share=self.share, slots_per_gpu=self.slots, strategy=cfg.strategy, seed=cfg.seed,
            tokens_per_request=float(cfg.scenario.tokens_per_request), serving="request",
            sim_chunk_bytes=sim.network.chunk)
        self._template = layer_models(ctx, "latency")[0]
        self._last_decision = 0.0
        #: (layer, expert) -> (GPUs the move takes copies off, GPU -> decided share)
        self._after: dict[tuple[int, int], tuple[list[int], dict[int, float]]] = {}

    def current(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Held copies (serving or incoming) and the serving shares, shape (E, G)."""
        E, G = self.sim.spec.num_experts, self.sim.num_gpus
        x, y = np.zeros((E, G), dtype=bool), np.zeros((E, G))
        for expert, (gpus, shares) in enumerate(zip(self.sim.replicas[layer], self.sim.shares[layer])):
            x[expert, gpus] = True
            y[expert, gpus] = shares
        for (l, expert), transfers in self.pending.items():
            if l == layer:
                x[expert, [t.dst for t in transfers]] = True
        return x, y

    def act(self) -> None:
        now = self.sim.env.now
        elapsed, self._last_decision = now - self._last_decision, now
        if (self.ewma.sum(axis=1) <= 0).any():
            return
        budget = self.budget if self.budget is not None else np.inf
        allowed = max(1, int(min(budget * elapsed / self.sim.spec.expert_bytes, 1e9)))
        held = [self.current(layer) for layer in range(self.sim.layers)]
        models = [with_load(self._template, load, self.sim.spec) for load in self.ewma]
        for layer in range(len(models)):
            set_background(models, [y for _, y in held], layer)
        moved = best_first_moves(models, [(x.copy(), y.copy()) for x, y in held],
                                 lambda layer, x, y: self._search(models[layer], layer, x, y), allowed,
                                 self.cfg.min_gain)
        for layer, (x, y, base, cost) in enumerate(moved):
            if cost >= base:
                continue
            model = dataclasses.replace(models[layer], also_replicable=np.flatnonzero(x.sum(axis=1) > 1))
            y = optimal_shares(model, x, y)
            if model.evaluate(x.astype(float), y) < base * (1 - self.cfg.min_gain):
                self._apply(layer, held[layer][0], x, y)

    def _search(self, model: Any, layer: int, x: np.ndarray, y: np.ndarray) -> tuple[tuple, float] | None:
        """The layer's best move, leaving experts in transit alone and capped ones uncopied."""
        frozen = {expert for (l, expert) in self.pending if l == layer}
        cap = np.maximum(self.cfg.max_replicas_per_expert, self.initial_counts[layer])
        return best_move(model, x, y, frozen, cap)

    def _apply(self, layer: int, before: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Evict the dropped cold copies, start the new copies, share the kept experts.

        A move's new copy may go into a slot that another move frees only once its own
        new copy serves; such a copy is not started (its expert keeps its copies)."""
        added = x & ~before
        for expert in range(x.shape[0]):
            shares = {int(g): float(y[expert, g]) for g in np.flatnonzero(x[expert])}
            dropped = np.flatnonzero(before[expert] & ~x[expert]).tolist()
            if added[expert].any():
                self._after[layer, expert] = (dropped, shares)
                continue
            for gpu in dropped:  # a cold copy whose slot a hot expert's new copy takes
                self.evict(layer, expert, gpu, "evict_for_memory")
            if len(self.sim.replicas[layer][expert]) > 1:
                self._set_shares(layer, expert, shares)
        for expert in np.flatnonzero(added.any(axis=1)).tolist():
            gpus = np.flatnonzero(added[expert])
            if (self.free_slots(layer)[gpus] <= 0).any():
                del self._after[layer, expert]
                continue
            for gpu in gpus.tolist():
                self.start_transfer(layer, expert, gpu)

    def _set_shares(self, layer: int, expert: int, shares: dict[int, float]) -> None:
        """Serve (layer, expert) from its serving copies by ``shares``, renormalised (equal
        where they give them nothing)."""
        gpus = self.sim.replicas[layer][expert]
        weights = np.array([shares.get(g, 0.0) for g in gpus])
        if weights.sum() <= 0:
            weights = np.ones(len(gpus))
        self.sim.set_replicas(layer, expert, gpus, (weights / weights.sum()).tolist())

    def on_ready(self, transfer: Transfer) -> None:
        key = (transfer.layer, transfer.expert)
        if key in self.pending or key not in self._after:
            return
        dropped, shares = self._after.pop(key)
        for gpu in dropped:
            if gpu in self.sim.replicas[key[0]][key[1]] and len(self.sim.replicas[key[0]][key[1]]) > 1:
                self.evict(key[0], key[1], gpu, "evict_rebalance")
        self._set_shares(key[0], key[1], shares)
