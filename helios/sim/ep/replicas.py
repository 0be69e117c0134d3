"""``serving=ep`` replica tables: which GPUs serve each expert, and which one a token uses.

Per simulated layer, every expert has one or more replicas (GPUs) and, where the
placement names them, shares. ``strategy.routing`` picks one replica per
(token, expert) pair:

* ``nearest``: the replica with the shortest unloaded delivery time of one token from the
  token's rank, under the engine's own store-and-forward link model
  (:meth:`Cluster.transfer_time`); ties go to the lowest GPU id, as the request model's
  router;
* ``congestion_aware``, ``oracle_congestion``: the same ranking on a cost that adds the
  network's state, re-ranked at step starts (:mod:`helios.sim.ep.congestion`);
* ``weighted``: one replica drawn by the shares (a uniform draw per pair from the gate
  stream);
* ``round_robin``: the next replica in turn, pair by pair.
"""

from __future__ import annotations

import numpy as np

from helios.placement.base import Placement
from helios.sim.ep.congestion import TELEMETRY_ROUTERS, congestion_cost, oracle_cost
from helios.sim.kernel import LinkState
from helios.sim.routing import telemetry_window

#: Routers that send each (rank, expert)'s tokens to one replica, ranked by a pair cost.
RANKED = ("nearest", *TELEMETRY_ROUTERS)


class ReplicaTables:
    """The replicas of every layer and the routing among them.

    Parameters
    ----------
    placement : Placement
    num_gpus : int
    routing : str
        ``strategy.routing``.
    dispatch_s : ndarray, shape (G, G), optional
        Ranked routers: the idle delivery time of one token per (rank, GPU) pair.
    gpu_job_s : float
        ``congestion_aware``: one expert's grouped GEMM for a single pair.

    Attributes
    ----------
    table : int ndarray, shape (layers, experts, width)
        Replica GPUs of each expert, padded with its first replica.
    count : int ndarray, shape (layers, experts)
    share_cum : ndarray, shape (layers, experts, width)
        Cumulative shares (1 in the padding).
    nearest : int ndarray, shape (layers, G, experts)
        Ranked routers: the replica each rank uses for each expert.
    """

    def __init__(self, placement: Placement, num_gpus: int, routing: str,
                 dispatch_s: np.ndarray | None = None, gpu_job_s: float = 0.0) -> None:
        layers, experts = len(placement.replicas), len(placement.replicas[0])
        width = max(len(g) for layer in placement.replicas for g in layer)
        self.routing = routing
        self.table = np.zeros((layers, experts, width), dtype=np.int64)
        self.count = np.zeros((layers, experts), dtype=np.int64)
        self.share_cum = np.ones((layers, experts, width))
        self.nearest = np.zeros((layers, num_gpus, experts), dtype=np.int64)
        if routing in RANKED:
            if dispatch_s is None:
                raise ValueError(f"routing {routing!r} ranks replicas: dispatch_s is required")
            self._dispatch_s, self._gpu_job_s = dispatch_s, gpu_job_s
            self._pair_cost, self._seen_window = dispatch_s, -1
        for l, (layer, shares) in enumerate(zip(placement.replicas, placement.share_table())):
            self.set_layer(l, layer, shares)

    def set_layer(self, layer: int, replicas: list[list[int]], shares: list[list[float]]) -> None:
        """Serve ``layer`` from ``replicas`` (per expert, GPU lists) split by ``shares``."""
        width = max(len(g) for g in replicas)
        if width > self.table.shape[2]:  # widen the tables, padding as below
            grow = width - self.table.shape[2]
            self.table = np.concatenate(
                [self.table, np.repeat(self.table[:, :, :1], grow, axis=2)], axis=2)
            self.share_cum = np.concatenate(
                [self.share_cum, np.ones(self.share_cum.shape[:2] + (grow,))], axis=2)
        table, cum = self.table[layer], self.share_cum[layer]
        for e, (gpus, share) in enumerate(zip(replicas, shares)):
            table[e, :] = gpus[0]
            table[e, :len(gpus)] = gpus
            self.count[layer, e] = len(gpus)
            cum[e, :] = 1.0
            cum[e, :len(share)] = np.cumsum(share)
        if self.routing in RANKED:
            self._rank(layer)

    def _rank(self, layer: int) -> None:
        """Each rank's replica of every expert of ``layer``: the cheapest by the pair cost."""
        table = self.table[layer]
        valid = np.arange(table.shape[1])[None, :] < self.count[layer][:, None]
        # cost[s, e, r]; ties go to the lowest GPU id, as the request model's router.
        cost = self._pair_cost[:, table] * 1e6 + table[None] * 1e-9
        cost = np.where(valid[None], cost, np.inf)
        best = np.argmin(cost, axis=2)  # (G, E)
        self.nearest[layer] = np.take_along_axis(table[None], best[..., None], axis=2)[..., 0]

    def refresh(self, links: LinkState, now: float, delay_s: float | None) -> None:
        """Re-rank by the network's state at a step's start (congestion routers only)."""
        if self.routing not in TELEMETRY_ROUTERS:
            return
        if self.routing == "congestion_aware":
            w = telemetry_window(now, links.window, delay_s)
            if w == self._seen_window:
                return
            self._seen_window = w
            self._pair_cost = congestion_cost(links, self._dispatch_s, w, self._gpu_job_s)
        else:
            self._pair_cost = oracle_cost(links, self._dispatch_s, now)
        for layer in range(self.table.shape[0]):
            self._rank(layer)

    def choose(self, layer: int, src: np.ndarray, experts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """The serving GPU of every pair: ``src`` (T,) ranks, ``experts`` (T, k); (T, k)."""
        if self.routing in RANKED:
            return self.nearest[layer][src[:, None], experts]
        table, count = self.table[layer], self.count[layer][experts]
        if self.routing == "weighted":
            u = rng.random(experts.shape)
            pick = (u[..., None] >= self.share_cum[layer][experts]).sum(axis=-1)
            return table[experts, np.minimum(pick, count - 1)]
        turn = np.arange(experts.shape[0])[:, None] + np.arange(experts.shape[1])[None, :]
        return table[experts, turn % count]
