"""``helios_dynamic``: replicate hot experts on congested GPUs, evict cold replicas.

:class:`HeliosEngine`, per layer, with ``n`` = replicas serving
or incoming and ``mean`` = total load / total replicas of the layer:

* *hot*: ``load / n > hot_threshold * mean`` and at least one serving replica is
  congested: its GPU's EWMA busy fraction >= ``gpu_congested_util``, or its *path
  utilisation* >= ``link_congested_util``. The path utilisation of GPU ``g`` is
  ``max_l f[g, l] * u[l]`` over links ``l`` and both directions, where ``u`` is the
  EWMA utilisation and ``f[g, l]`` the share of ``g``'s dispatch traffic (in from the
  home GPUs, by their share), or of its combine traffic (out to them), whose route
  crosses ``l``: the busiest link that ``g``'s own traffic must cross (its NIC and
  NVLink), not a link it barely uses;
* a hot expert gains replicas (hottest ratio first, up to ``max_replicas_per_expert``
  and ``max_transfers_in_flight``) while it stays hot counting the new ones. The target
  is the GPU with a free slot that minimises the expected time of the expert's traffic
  (see :meth:`HeliosEngine.target_costs`; its network part counts only the messages a
  replica there adds, :meth:`HeliosEngine.visit_probability`), and only if that time is at most
  ``1 - MIN_GAIN`` of the same figure at the expert's most expensive serving replica
  (a replica must pay for its transfer). When no GPU has a free slot, the least
  loaded replica (per replica) of a replicated, clearly colder expert is evicted to
  make room (``evict_for_memory``);
* *cold*: ``load / n < cold_threshold * mean`` for ``evict_after_windows``
  consecutive windows; one replica (on the busiest GPU) is evicted if the remaining
  ones would not be hot (``evict_cold``). Hysteresis: ``cold_threshold <
  hot_threshold`` and the K-window count, reset after every eviction.
"""

from __future__ import annotations

import numpy as np

from helios.sim.adaptation.base import RHO_MAX, AdaptationEngine, store_and_forward_s

#: A new replica must cut the expected time of the expert's traffic by this share.
MIN_GAIN = 0.2


def traffic_share(routes: np.ndarray, share: np.ndarray, num_links: int) -> np.ndarray:
    """``f[g, l]``: the larger of the shares of GPU ``g``'s dispatch traffic (from home
    GPU ``s`` with weight ``share[s]`` over ``route(s, g)``) and of its combine traffic
    (over ``route(g, s)``) that cross link ``l``; shape (G, num_links)."""
    gpus = routes.shape[0]
    weight = np.broadcast_to(share[:, None], routes.shape[1:]).ravel()
    f = np.zeros((gpus, num_links + 1))
    for g in range(gpus):
        into = np.bincount(routes[:, g, :].ravel(), weight, minlength=num_links + 1)
        out = np.bincount(routes[g, :, :].ravel(), weight, minlength=num_links + 1)
        f[g] = np.maximum(into, out)
    return f[:, :num_links]


class HeliosEngine(AdaptationEngine):
    """Congestion-driven replication and hysteresis eviction (see the module docstring)."""

    def act(self) -> None:
        self.refresh_costs()
        self._evict_cold()
        self._replicate_hot()

    def refresh_costs(self) -> None:
        """Path costs and path utilisations of this window (from the EWMA link utilisation)."""
        terms = self.path_cost_matrices()
        share = self.share
        self._pair_terms = terms
        self._terms_in = tuple(share @ m for m in terms)  # from every home GPU, by its share
        self._terms_out = tuple(m @ share for m in terms)
        if self._traffic_share is None:
            self._traffic_share = traffic_share(self.routes, share, self.sim.cluster.num_links)
        self.path_util = (self._traffic_share * self.link_util).max(axis=1)

    def _layer_mean(self, layer: int) -> float:
        total = sum(self.count(layer, e) for e in range(self.sim.spec.num_experts))
        return float(self.ewma[layer].sum()) / total

    def congested(self, gpu: int) -> bool:
        """Whether ``gpu`` (as a replica's home) is a congested GPU or behind congested paths."""
        return bool(self.gpu_util[gpu] >= self.cfg.gpu_congested_util
                    or self.path_util[gpu] >= self.cfg.link_congested_util)

    def _evict_cold(self) -> None:
        cfg, sim = self.cfg, self.sim
        for layer in range(sim.layers):
            mean = self._layer_mean(layer)
            for expert in range(sim.spec.num_experts):
                serving = sim.replicas[layer][expert]
                if len(serving) <= 1 or (layer, expert) in self.pending:
                    self.cold[layer, expert] = 0
                    continue
                load = self.ewma[layer, expert]
                if load / len(serving) >= cfg.cold_threshold * mean:
                    self.cold[layer, expert] = 0
                    continue
                self.cold[layer, expert] += 1
                if (self.cold[layer, expert] >= cfg.evict_after_windows
                        and load / (len(serving) - 1) <= cfg.hot_threshold * mean):
                    victim = max(serving, key=lambda g: (self.gpu_util[g], g))
                    self.evict(layer, expert, victim, "evict_cold")

    def _replicate_hot(self) -> None:
        cfg, sim = self.cfg, self.sim
        budget = cfg.max_transfers_in_flight - self.transfers_in_flight
        hot = []
        for layer in range(sim.layers):
            mean = self._layer_mean(layer)
            for expert in np.flatnonzero(self.ewma[layer] > cfg.hot_threshold * mean).tolist():
                ratio = self.ewma[layer, expert] / self.count(layer, expert) / mean
                if ratio > cfg.hot_threshold and any(map(self.congested, sim.replicas[layer][expert])):
                    hot.append((-ratio, layer, expert))
        projected = self.gpu_util.copy()
        for _, layer, expert in sorted(hot):
            while budget > 0 and self.count(layer, expert) < self.cap(layer, expert):
                n = self.count(layer, expert)
                if self.ewma[layer, expert] / n <= cfg.hot_threshold * self._layer_mean(layer):
                    break
                dst = self._choose_target(layer, expert, projected)
                if dst is None:
                    break
                nbytes, chunk = sim.spec.expert_bytes, sim.network.chunk
                src = min(sim.replicas[layer][expert], key=lambda g: (store_and_forward_s(
                    *(m[g, dst] for m in self._pair_terms), nbytes, chunk), g))
                self.start_transfer(layer, expert, dst, src)
                budget -= 1
                tokens, batch_s = self._replica_batch(layer, expert, n + 1)
                projected[dst] += self._request_rate(layer) * batch_s

    def _request_rate(self, layer: int) -> float:
        """Requests/s through ``layer`` implied by its pair rate."""
        return float(self.ewma[layer].sum()) / (self.sim.spec.top_k * self.cell_cfg.scenario.tokens_per_request)

    def _replica_batch(self, layer: int, expert: int, replicas: int) -> tuple[float, float]:
        """Tokens per request one of ``replicas`` replicas gets, and its batch compute time."""
        tokens = self.ewma[layer, expert] / replicas / max(self._request_rate(layer), 1e-12)
        return tokens, float(self.sim.spec.batch_seconds(max(tokens, 1.0)))

    def target_costs(self, layer: int, expert: int, projected: np.ndarray,
                     replicas: int | None = None) -> np.ndarray:
        """Expected seconds of the expert's traffic at each GPU, were one of ``replicas``
        (default: one more than now) there.

        Dispatch of the replica's tokens per request from every home GPU (weighted by
        its share) plus their combine back, each by the engine's store-and-forward model
        with every link's serialisation inflated by its utilisation
        (:meth:`path_cost_matrices`, :func:`store_and_forward_s`),
        times the chance that a token is *not* sent to that GPU anyway for another of
        its experts (``1 - visit_probability``: a token travels once per GPU, so only
        those messages are added); plus the GPU's waiting time, the larger of its queue backlog now and the
        M/M/1 wait ``batch * rho / (1 - rho)`` at its projected busy fraction ``rho``
        (measured EWMA plus the replicas placed on it this window).
        """
        spec = self.sim.spec
        if replicas is None:
            replicas = self.count(layer, expert) + 1
        tokens, batch_s = self._replica_batch(layer, expert, replicas)
        rho = np.minimum(projected, RHO_MAX)
        backlog = np.array([self.sim.gpus.backlog(g) for g in range(self.sim.num_gpus)])
        wait = np.maximum(backlog, batch_s * rho / (1.0 - rho))
        chunk = self.sim.network.chunk
        network = (store_and_forward_s(*self._terms_in, tokens * spec.dispatch_token_bytes, chunk)
                   + store_and_forward_s(*self._terms_out, tokens * spec.combine_token_bytes, chunk))
        return network * (1.0 - self.visit_probability(layer, expert)) + wait

    def visit_probability(self, layer: int, expert: int) -> np.ndarray:
        """Chance that a token of ``expert`` visits each GPU anyway, for its other experts.

        A token is sent once per GPU it visits, so its trip to a GPU that one of its
        other ``top_k - 1`` experts already takes it to costs no extra message. With
        ``m[g]`` the share of the layer's token-expert pairs served on ``g`` by other
        experts (EWMA loads, split evenly over each expert's serving replicas), the
        chance is ``1 - (1 - m[g]) ** (top_k - 1)``, taking the other picks as
        independent draws from the layer's load shares. Shape (G,).
        """
        sim = self.sim
        load = self.ewma[layer]
        total = float(load.sum())
        served = np.zeros(sim.num_gpus)
        if total <= 0:
            return served
        for other, serving in enumerate(sim.replicas[layer]):
            if other != expert and load[other] > 0:
                served[serving] += load[other] / total / len(serving)
        return 1.0 - (1.0 - np.minimum(served, 1.0)) ** (sim.spec.top_k - 1)

    def _choose_target(self, layer: int, expert: int, projected: np.ndarray) -> int | None:
        holders = self.holders(layer, expert)
        free = self.free_slots(layer) > 0
        free[list(holders)] = False
        n = self.count(layer, expert)
        worst = self.target_costs(layer, expert, projected, n)[self.sim.replicas[layer][expert]].max()
        if free.any():
            cost = np.where(free, self.target_costs(layer, expert, projected), np.inf)
            dst = int(np.argmin(cost))
            return dst if cost[dst] <= (1.0 - MIN_GAIN) * worst else None
        return self._make_room(layer, expert, holders)

    def _make_room(self, layer: int, expert: int, holders: set[int]) -> int | None:
        """Evict a replica of a replicated, clearly colder expert on a GPU without ``expert``."""
        sim, cfg = self.sim, self.cfg
        mean = self._layer_mean(layer)
        limit = self.ewma[layer, expert] / self.count(layer, expert) / cfg.hot_threshold
        best = None
        for other in range(sim.spec.num_experts):
            serving = sim.replicas[layer][other]
            if other == expert or len(serving) <= 1 or (layer, other) in self.pending:
                continue
            per = self.ewma[layer, other] / len(serving)
            if per >= limit or self.ewma[layer, other] / (len(serving) - 1) > cfg.hot_threshold * mean:
                continue
            for gpu in serving:
                if gpu not in holders and (best is None or (per, other, gpu) < best):
                    best = (per, other, gpu)
        if best is None:
            return None
        _, other, gpu = best
        self.evict(layer, other, gpu, "evict_for_memory")
        return gpu
