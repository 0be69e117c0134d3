"""Runtime adaptation engine: monitor, replicate, evict (``helios_dynamic``, ``eplb_dynamic``).

:func:`make_controller` returns the SimPy controller factory of a dynamic strategy
(``None`` for static ones); the simulation runs it as one process that wakes at every
window boundary ``k * sim.window_s``.

**Monitoring** (every window, :meth:`AdaptationEngine.observe`): the token-expert
pairs each (layer, expert) received in the window (``sim.window_expert_pairs``, read
and reset), as pairs/s; each GPU's busy fraction and each link's utilisation in the
window (the meters' busy time / window). All three are smoothed by an EWMA of weight
``ewma_alpha`` on the newest window. The engine acts only while requests arrive
(``t <= sim.duration_s``): during the drain nothing is left to adapt to.

**Memory and transfers.** A GPU has ``spec.slots_per_gpu`` expert slots per layer. A
slot is *held* by a serving replica or by an incoming transfer (reserved when the
transfer starts), so held <= slots at every instant. An expert never gains a replica
while it has ``max(max_replicas_per_expert, its initial replica count)`` serving or
incoming. A new replica copies ``spec.expert_bytes`` from a serving replica of the
expert (helios_dynamic: the cheapest path to the target under the current link
utilisation; eplb_dynamic: the lowest unloaded path latency) with ``sim.network.send``: the bytes share the FIFO link queues with
token traffic, by default one network chunk at a time (``paced_transfers``, see
:meth:`AdaptationEngine._send_paced`). The replica is added to the serving set
(``sim.set_replicas``) only when the last byte has arrived. An eviction takes the replica out of the serving
set at once and frees its slot at once; messages dispatched to it before the eviction
still compute there (its weights are taken to live until its queued batches ran).
The last replica of an expert is never evicted, nor any replica of an expert with a
transfer in flight (the transfer reads from one of them).

**helios_dynamic** (:class:`HeliosEngine`), per layer, with ``n`` = replicas serving
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
  (see :meth:`HeliosEngine.target_costs`), and only if that time is at most
  ``1 - MIN_GAIN`` of the same figure at the expert's most expensive serving replica
  (a replica must pay for its transfer). When no GPU has a free slot, the least
  loaded replica (per replica) of a replicated, clearly colder expert is evicted to
  make room (``evict_for_memory``);
* *cold*: ``load / n < cold_threshold * mean`` for ``evict_after_windows``
  consecutive windows; one replica (on the busiest GPU) is evicted if the remaining
  ones would not be hot (``evict_cold``). Hysteresis: ``cold_threshold <
  hot_threshold`` and the K-window count, reset after every eviction.

**eplb_dynamic** (:class:`EplbEngine`): every window the ``eplb`` strategy (DeepSeek
EPLB) is re-run on the EWMA loads; each expert gains the target GPUs it lacks (a
transfer each, when the target has a free slot and the expert is under the cap) and
loses its replicas off the target once one of its target replicas serves, so a moved
expert keeps serving at its old place until its new copy has arrived.

**Records.** ``sim.adaptation_events`` gets one dict per action (``time_s, action,
layer, expert, from_gpu, to_gpu, bytes``; actions ``transfer_start``,
``replica_ready``, ``evict_cold``, ``evict_for_memory``, ``evict_rebalance``);
``replicas_added`` counts ready replicas, ``replication_bytes`` bytes put on the
network. The ``replication_bytes_in_flight`` of window ``w``'s time-series sample is
the *peak* of bytes in flight during the window (a snapshot at its start would miss
transfers shorter than a window).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Utilisations are capped here in the M/M/1-style inflation 1 / (1 - rho).
RHO_MAX = 0.95
#: A new replica must cut the expected time of the expert's traffic by this share.
MIN_GAIN = 0.2

_ROUTE_TABLES: "weakref.WeakKeyDictionary[Any, np.ndarray]" = weakref.WeakKeyDictionary()


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


def route_table(cluster: Any) -> np.ndarray:
    """Link ids of every GPU pair's route, shape (G, G, max hops), padded with ``num_links``."""
    table = _ROUTE_TABLES.get(cluster)
    if table is None:
        gpus, pad = cluster.num_gpus, cluster.num_links
        routes = [cluster.route(s, d) for s in range(gpus) for d in range(gpus)]
        table = np.full((gpus * gpus, max(1, max(map(len, routes)))), pad, dtype=np.int64)
        for i, route in enumerate(routes):
            table[i, :len(route)] = route
        table = table.reshape(gpus, gpus, -1)
        _ROUTE_TABLES[cluster] = table
    return table


@dataclass
class Transfer:
    """One replica's weights on their way from ``src`` to ``dst``."""

    layer: int
    expert: int
    src: int
    dst: int
    nbytes: float
    start_s: float


class AdaptationEngine:
    """Monitoring, memory accounting, transfers and evictions shared by the dynamic strategies.

    Parameters
    ----------
    sim : helios.sim.engine.Simulation
    cfg : helios.config.CellConfig
        Reads ``strategy.adaptation``, ``sim.window_s`` and ``scenario.tokens_per_request``.
    """

    def __init__(self, sim: Any, cfg: Any) -> None:
        self.sim, self.cell_cfg, self.cfg = sim, cfg, cfg.strategy.adaptation
        self.window = cfg.sim.window_s
        self.slots = sim.spec.slots_per_gpu
        layers, experts, gpus = sim.layers, sim.spec.num_experts, sim.num_gpus
        self.held = np.zeros((layers, gpus), dtype=int)
        for layer, row in enumerate(sim.replicas):
            for replicas in row:
                self.held[layer, replicas] += 1
        self.initial_counts = np.array([[len(r) for r in row] for row in sim.replicas])
        self.ewma: np.ndarray | None = None
        self.gpu_util = np.zeros(gpus)
        self.link_util = np.zeros(sim.cluster.num_links)
        self.cold = np.zeros((layers, experts), dtype=int)
        self.pending: dict[tuple[int, int], list[Transfer]] = {}
        self.transfers_in_flight = 0
        self._peak_in_flight = 0.0
        self.routes = route_table(sim.cluster)
        self.share = np.asarray(sim.workload.source_distribution(), dtype=float)
        self._traffic_share: np.ndarray | None = None
        sim.adaptation_engine = self  # lets tests and probes inspect the engine

    # ------------------------------------------------------------------ process
    def run(self):
        """The SimPy process: observe and act at every window boundary."""
        env = self.sim.env
        while True:
            yield env.timeout(self.window)
            w = int(round(env.now / self.window)) - 1
            self._close_window(w)
            self.observe(w)
            if env.now <= self.sim.end:
                self.act()

    def _close_window(self, w: int) -> None:
        samples = self.sim.window_samples
        if w < len(samples):
            samples[w]["replication_bytes_in_flight"] = self._peak_in_flight
        self._peak_in_flight = self.sim.replication_bytes_in_flight

    def observe(self, w: int) -> None:
        """Fold window ``w`` into the EWMAs of expert load, GPU and link utilisation."""
        sim, a = self.sim, self.cfg.ewma_alpha
        rate = sim.window_expert_pairs / self.window
        sim.window_expert_pairs[...] = 0.0
        gpu = np.asarray(sim.gpu_meter.busy_windows[w]) / self.window
        link = np.asarray(sim.link_meter.busy_windows[w]) / self.window
        if self.ewma is None:
            self.ewma, self.gpu_util, self.link_util = rate, gpu, link
        else:
            self.ewma = a * rate + (1 - a) * self.ewma
            self.gpu_util = a * gpu + (1 - a) * self.gpu_util
            self.link_util = a * link + (1 - a) * self.link_util

    def act(self) -> None:
        """Adaptation decisions of one window (subclasses)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def count(self, layer: int, expert: int) -> int:
        """Replicas of (layer, expert) serving or incoming."""
        return len(self.sim.replicas[layer][expert]) + len(self.pending.get((layer, expert), ()))

    def holders(self, layer: int, expert: int) -> set[int]:
        """GPUs that serve (layer, expert) or receive a copy of it."""
        return set(self.sim.replicas[layer][expert]) | {
            t.dst for t in self.pending.get((layer, expert), ())}

    def free_slots(self, layer: int) -> np.ndarray:
        """Free expert slots per GPU in ``layer`` (incoming transfers hold theirs)."""
        return self.slots - self.held[layer]

    def cap(self, layer: int, expert: int) -> int:
        """Most replicas the engine lets (layer, expert) reach."""
        return max(self.cfg.max_replicas_per_expert, int(self.initial_counts[layer, expert]))

    def _event(self, action: str, layer: int, expert: int, src: int, dst: int, nbytes: float) -> None:
        self.sim.adaptation_events.append({
            "time_s": float(self.sim.env.now), "action": action, "layer": int(layer),
            "expert": int(expert), "from_gpu": int(src), "to_gpu": int(dst), "bytes": float(nbytes)})

    # ------------------------------------------------------------------ actions
    def path_cost_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """Per GPU pair: summed link latency (s) and bottleneck seconds per byte, inflated
        by ``1 / (1 - rho)`` of the EWMA link utilisation (M/M/1 waiting), shape (G, G)."""
        cl = self.sim.cluster
        rho = np.minimum(self.link_util, RHO_MAX)
        latency = np.append(cl.link_latency, 0.0)
        per_byte = np.append(1.0 / (cl.link_bandwidth * (1.0 - rho)), 0.0)
        return latency[self.routes].sum(axis=2), per_byte[self.routes].max(axis=2)

    def start_transfer(self, layer: int, expert: int, dst: int, src: int | None = None) -> Transfer:
        """Copy (layer, expert) onto ``dst`` from ``src`` (default: the serving replica with
        the cheapest path to ``dst``); it serves from the moment it has arrived."""
        sim = self.sim
        serving = sim.replicas[layer][expert]
        if dst in self.holders(layer, expert):
            raise ValueError(f"GPU {dst} already holds layer {layer} expert {expert}")
        if self.free_slots(layer)[dst] <= 0:
            raise ValueError(f"GPU {dst} has no free slot in layer {layer}")
        if src is None:
            nbytes = sim.spec.expert_bytes
            src = min(serving, key=lambda g: (sim.cluster.path_latency(g, dst, nbytes), g))
        transfer = Transfer(layer, expert, int(src), int(dst), sim.spec.expert_bytes, sim.env.now)
        self.held[layer, dst] += 1
        self.pending.setdefault((layer, expert), []).append(transfer)
        self.transfers_in_flight += 1
        sim.replication_bytes += transfer.nbytes
        sim.replication_bytes_in_flight += transfer.nbytes
        self._peak_in_flight = max(self._peak_in_flight, sim.replication_bytes_in_flight)
        self._event("transfer_start", layer, expert, transfer.src, dst, transfer.nbytes)
        if self.cfg.paced_transfers:
            self._send_paced(transfer, transfer.nbytes)
        else:
            sim.network.send(transfer.src, dst, transfer.nbytes, lambda: self._arrived(transfer))
        return transfer

    def _send_paced(self, transfer: Transfer, left: float) -> None:
        """Send the weights one network chunk at a time, the next when the last has arrived.

        A bulk message enqueues all its chunks on the first link at once, so token
        messages arriving behind it wait for the whole transfer (FIFO). Paced, a
        token waits for at most one weight chunk per link; the transfer runs slightly
        slower (one route latency per chunk) - a background, low-priority copy.
        """
        piece = min(left, self.sim.network.chunk)
        rest = left - piece
        done = (lambda: self._send_paced(transfer, rest)) if rest > 0 else (
            lambda: self._arrived(transfer))
        self.sim.network.send(transfer.src, transfer.dst, piece, done)

    def _arrived(self, transfer: Transfer) -> None:
        sim, key = self.sim, (transfer.layer, transfer.expert)
        self.pending[key].remove(transfer)
        if not self.pending[key]:
            del self.pending[key]
        self.transfers_in_flight -= 1
        sim.replication_bytes_in_flight -= transfer.nbytes
        sim.set_replicas(transfer.layer, transfer.expert,
                         sim.replicas[transfer.layer][transfer.expert] + [transfer.dst])
        sim.replicas_added += 1
        self._event("replica_ready", transfer.layer, transfer.expert, transfer.src, transfer.dst,
                    transfer.nbytes)
        self.on_ready(transfer)

    def on_ready(self, transfer: Transfer) -> None:
        """Hook run when a transfer has arrived and its replica serves."""

    def evict(self, layer: int, expert: int, gpu: int, action: str) -> None:
        """Stop serving (layer, expert) on ``gpu`` and free its slot."""
        sim = self.sim
        serving = sim.replicas[layer][expert]
        if len(serving) <= 1 or gpu not in serving:
            raise ValueError(f"cannot evict layer {layer} expert {expert} from GPU {gpu}: {serving}")
        if (layer, expert) in self.pending:
            raise ValueError(f"layer {layer} expert {expert} has a transfer in flight")
        sim.set_replicas(layer, expert, [g for g in serving if g != gpu])
        self.held[layer, gpu] -= 1
        sim.replicas_evicted += 1
        self.cold[layer, expert] = 0
        self._event(action, layer, expert, gpu, -1, 0.0)


class HeliosEngine(AdaptationEngine):
    """Congestion-driven replication and hysteresis eviction (see the module docstring)."""

    def act(self) -> None:
        self.refresh_costs()
        self._evict_cold()
        self._replicate_hot()

    def refresh_costs(self) -> None:
        """Path costs and path utilisations of this window (from the EWMA link utilisation)."""
        lat, per_byte = self.path_cost_matrices()
        share = self.share
        self._pair_lat, self._pair_per_byte = lat, per_byte
        self._lat_in, self._lat_out = share @ lat, lat @ share
        self._byte_in, self._byte_out = share @ per_byte, per_byte @ share
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
                nbytes = sim.spec.expert_bytes
                src = min(sim.replicas[layer][expert], key=lambda g: (
                    self._pair_lat[g, dst] + nbytes * self._pair_per_byte[g, dst], g))
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
        its share) plus their combine back: summed link latency + message bytes x the
        route's inflated bottleneck seconds per byte (:meth:`path_cost_matrices`);
        plus the GPU's waiting time, the larger of its queue backlog now and the
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
        return (self._lat_in + self._lat_out + tokens * spec.dispatch_token_bytes * self._byte_in
                + tokens * spec.combine_token_bytes * self._byte_out + wait)

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


class EplbEngine(AdaptationEngine):
    """DeepSeek EPLB re-run every window on the EWMA loads; moves paid in transfers."""

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
        self.target = [[set(gpus) for gpus in row] for row in placement.replicas]
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


#: Dynamic strategies and their engines; every other strategy is static.
CONTROLLERS: dict[str, type[AdaptationEngine]] = {
    "helios_dynamic": HeliosEngine,
    "eplb_dynamic": EplbEngine,
}


def make_controller(cfg: Any) -> Callable[[Any], Any] | None:
    """Controller factory of ``cfg.strategy`` (``controller(sim)`` -> SimPy generator), or None.

    Parameters
    ----------
    cfg : helios.config.CellConfig
    """
    engine_cls = CONTROLLERS.get(cfg.strategy.name)
    if engine_cls is None:
        return None
    return lambda sim: engine_cls(sim, cfg).run()
