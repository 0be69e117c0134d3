"""Choice among an expert's active replicas, one decision per (request, layer, expert).

Every router sees the sending GPU and the list of GPUs that hold a serving replica,
and returns one of them. Routers are looked up by name with :func:`make_router`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from helios.errors import ConfigError

#: Utilisations are capped here in the M/M/1 inflation ``rho / (1 - rho)``.
RHO_MAX = 0.95


def telemetry_window(now: float, window: float, delay: float | None) -> int:
    """Newest metering window whose telemetry is visible at ``now`` (-1: none yet): the
    last window that ended ``delay`` (None: one ``window``) or more before ``now``."""
    delay = window if delay is None else delay
    return int(math.floor((now - delay) / window + 1e-9)) - 1


class Router:
    """Base router: ``nearest`` — the replica that one token reaches first on an idle network.

    Replicas are ranked by the unloaded delivery time of a token-sized message under the
    engine's own link model (store and forward per chunk, :meth:`Cluster.transfer_time`),
    so a router never prefers a replica that the simulator delivers to later; ties go to
    the lowest GPU id. The ranking is static, so it is cached per (source, replica set).
    """

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self._cache: dict[tuple[int, tuple[int, ...]], int] = {}
        self._unloaded: dict[tuple[int, int], float] = {}

    def unloaded_s(self, src: int, dst: int) -> float:
        """Seconds for one token's dispatch message from ``src`` to reach ``dst`` on an idle
        network, by the engine's link model (memoised per pair)."""
        key = (src, dst)
        t = self._unloaded.get(key)
        if t is None:
            sim = self.sim
            t = sim.cluster.transfer_time(src, dst, sim.spec.dispatch_token_bytes, sim.network.chunk)
            self._unloaded[key] = t
        return t

    def choose(self, layer: int, expert: int, src: int, replicas: Sequence[int]) -> int:
        key = (src, tuple(replicas))
        gpu = self._cache.get(key)
        if gpu is None:
            gpu = min(replicas, key=lambda g: (self.unloaded_s(src, g), g))
            self._cache[key] = gpu
        return gpu


class RoundRobinRouter(Router):
    """Cycle through the replicas of each (layer, expert), ignoring the network."""

    def __init__(self, sim: Any) -> None:
        super().__init__(sim)
        self._turn: dict[tuple[int, int], int] = {}

    def choose(self, layer: int, expert: int, src: int, replicas: Sequence[int]) -> int:
        turn = self._turn.get((layer, expert), 0)
        self._turn[(layer, expert)] = turn + 1
        return replicas[turn % len(replicas)]


class WeightedRouter(Router):
    """Split each (layer, expert)'s decisions among its replicas by the placement's shares.

    Smooth weighted round robin (as nginx's upstream balancer): every decision adds each
    replica's share to its credit and picks the largest credit (lowest GPU on ties),
    which then pays 1. Over any run of decisions each replica's count stays within one
    of ``share x decisions``; deterministic, no random draw. The shares are the
    simulation's current ones (``sim.shares``: the placement's, then what runtime
    adaptation sets with :meth:`Simulation.set_replicas`, equal unless it names them).
    """

    def __init__(self, sim: Any) -> None:
        super().__init__(sim)
        self._credit: dict[tuple[int, int], dict[int, float]] = {}

    def choose(self, layer: int, expert: int, src: int, replicas: Sequence[int]) -> int:
        if len(replicas) == 1:
            return replicas[0]
        shares = self.sim.shares[layer][expert]
        credit = self._credit.setdefault((layer, expert), {})
        for g, s in zip(replicas, shares):
            credit[g] = credit.get(g, 0.0) + s
        best = max(replicas, key=lambda g: (credit[g], -g))
        credit[best] -= 1.0
        return best


class OracleCongestionRouter(Router):
    """``oracle_congestion``: the replica with the lowest estimated time to reach and be served, right now.

    An ablation, not a deployable router: it reads the exact, current backlog of every
    link and GPU queue, which no deployment has, so that the value of that knowledge
    can be measured.

    Estimate for replica ``g``: the unloaded delivery time of one token from ``src``
    (:meth:`Router.unloaded_s`), plus the queueing ahead of a chunk entering each
    link of the dispatch route ``src -> g`` and of the combine route ``g -> src`` now
    (the sum of :meth:`Network.backlog` over their links: an estimate, since queues
    drain while the message is upstream and the combine leaves later), plus the GPU's
    queued compute (:meth:`GpuQueues.backlog`). Ties go to the lowest GPU id.
    """

    def choose(self, layer: int, expert: int, src: int, replicas: Sequence[int]) -> int:
        sim = self.sim
        route, backlog, gpu_backlog = sim.cluster.route, sim.network.backlog, sim.gpus.backlog
        best, best_cost = -1, float("inf")
        for g in sorted(replicas):
            cost = (self.unloaded_s(src, g) + gpu_backlog(g)
                    + sum(backlog(link) for link in route(src, g))
                    + sum(backlog(link) for link in route(g, src)))
            if cost < best_cost:
                best, best_cost = g, cost
        return best


class CongestionAwareRouter(Router):
    """``congestion_aware``: the replica with the lowest expected delay by sampled telemetry.

    What a deployment can measure: each link's and GPU's busy fraction ``rho`` over the
    newest metering window old enough to be seen (:meth:`Simulation.telemetry_window`:
    ``telemetry.delay_s``, default one window, after it ended), capped at
    :data:`RHO_MAX`. Estimate for replica ``g``: the unloaded delivery time of one token
    from ``src`` (:meth:`Router.unloaded_s`), plus for every link of the dispatch and the
    combine route the M/M/1 mean wait ``rho / (1 - rho)`` chunks' serialisation, plus the
    GPU's ``rho / (1 - rho)`` times one expert's weight read and launch (a typical job).
    Ties go to the lowest id.
    """

    def __init__(self, sim: Any) -> None:
        super().__init__(sim)
        self._seen = -2
        self._link_wait: list[float] = []
        self._gpu_wait: list[float] = []

    def _refresh(self) -> None:
        sim = self.sim
        w = sim.telemetry_window(sim.env.now)
        if w == self._seen:
            return
        self._seen = w
        window, cl = sim.cfg.window_s, sim.cluster
        links = sim.link_meter.busy_windows[w] if w >= 0 else [0.0] * cl.num_links
        gpus = sim.gpu_meter.busy_windows[w] if w >= 0 else [0.0] * cl.num_gpus
        chunk = sim.network.chunk
        job = sim.spec.weight_read_seconds + sim.spec.kernel_overhead_s
        inflate = lambda busy: min(busy / window, RHO_MAX) / (1.0 - min(busy / window, RHO_MAX))  # noqa: E731
        self._link_wait = [inflate(b) * chunk / bw for b, bw in zip(links, cl.link_bandwidth.tolist())]
        self._gpu_wait = [inflate(b) * job for b in gpus]

    def choose(self, layer: int, expert: int, src: int, replicas: Sequence[int]) -> int:
        self._refresh()
        route, wait = self.sim.cluster.route, self._link_wait
        best, best_cost = -1, float("inf")
        for g in sorted(replicas):
            cost = (self.unloaded_s(src, g) + self._gpu_wait[g]
                    + sum(wait[link] for link in route(src, g))
                    + sum(wait[link] for link in route(g, src)))
            if cost < best_cost:
                best, best_cost = g, cost
        return best


class LeastLoadedRouter(Router):
    """The replica whose GPU has the least queued compute; ties: nearest, then lowest id.

    Reads the exact, current GPU queues (like ``oracle_congestion``): an ablation.
    """

    def choose(self, layer: int, expert: int, src: int, replicas: Sequence[int]) -> int:
        backlog = self.sim.gpus.backlog
        return min(replicas, key=lambda g: (backlog(g), self.unloaded_s(src, g), g))


ROUTERS: dict[str, type[Router]] = {
    "nearest": Router,
    "round_robin": RoundRobinRouter,
    "weighted": WeightedRouter,
    "congestion_aware": CongestionAwareRouter,
    "oracle_congestion": OracleCongestionRouter,
    "least_loaded": LeastLoadedRouter,
}


def make_router(name: str, sim: Any) -> Router:
    """Build the router registered as ``name`` for simulation ``sim``."""
    if name not in ROUTERS:
        raise ConfigError("strategy.routing", name, "one of " + ", ".join(sorted(ROUTERS)))
    return ROUTERS[name](sim)
