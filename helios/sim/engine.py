"""SimPy model of MoE inference: requests, all-to-all dispatch, expert compute, combine.

Per request (a batch of tokens homed on one GPU) and per simulated MoE layer:

1. **gate**: the request's pre-drawn top-k experts of every token for this layer;
   each chosen expert is mapped to one of its serving replicas by the router;
2. **dispatch**: one message per destination GPU carrying the request's tokens for
   that GPU (a token is sent once per GPU, however many of its experts live there);
3. **expert compute**: the message joins its GPU's FIFO compute queue; its service
   time is the sum of the roofline times of its expert batches (:mod:`helios.moe`);
4. **combine**: the results travel back to the home GPU as one message;
5. the next layer starts when every combine message of this layer has arrived.

Tokens for the home GPU itself skip the network. Attention and the other dense parts
of a layer are not modelled: latency here is the MoE (all-to-all + expert) part.

Requests arrive during ``[0, duration)``; the run goes on for ``drain`` more seconds
so that requests near the end can finish. Metrics count requests that arrived in
``[warmup, duration)``; a request still unfinished when the run stops has infinite
latency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy
from simpy.events import Timeout

from helios.moe import ModelSpec
from helios.placement.base import Placement
from helios.sim.network import LinkMeter, Network
from helios.sim.routing import make_router, telemetry_window
from helios.workload import Request, Workload


@dataclass
class RequestRecord:
    """One request's outcome (a row of the ``requests`` table).

    ``tokens`` is the request's batch (``serving=request``) or prompt (``serving=ep``);
    ``home_gpu`` its home GPU or attention rank.
    """

    rid: int
    arrival_s: float
    finish_s: float
    latency_ms: float
    tokens: int
    home_gpu: int
    # serving=ep (NaN / 0 in serving=request): time to first token, time per output token.
    ttft_ms: float = float("nan")
    tpot_ms: float = float("nan")
    output_tokens: int = 0


class GpuQueues:
    """Each GPU runs expert batches one at a time, in arrival order (virtual clock)."""

    def __init__(self, env: simpy.Environment, num_gpus: int, meter: LinkMeter) -> None:
        self.env = env
        self.free_at = [0.0] * num_gpus
        self.meter = meter
        self.pairs = np.zeros(num_gpus)
        self.pairs_computed = 0

    def submit(self, gpu: int, seconds: float, pairs: int, done: Callable[[], None]) -> None:
        """Queue ``seconds`` of work computing ``pairs`` token-expert pairs; call ``done()`` after."""
        now = self.env.now
        begin = max(now, self.free_at[gpu])
        finish = begin + seconds
        self.free_at[gpu] = finish
        self.meter.record(gpu, begin, finish, pairs)
        if self.meter.start <= now < self.meter.end:
            self.pairs[gpu] += pairs
        self.pairs_computed += pairs
        Timeout(self.env, finish - now).callbacks.append(lambda _e: done())

    def backlog(self, gpu: int) -> float:
        """Seconds of queued compute on ``gpu``."""
        return max(0.0, self.free_at[gpu] - self.env.now)


class Simulation:
    """One cell's discrete-event run.

    Parameters
    ----------
    cluster : helios.topology.Cluster
    spec : ModelSpec
    placement : Placement
        Initial placement; its replicas are serving from time 0.
    workload : Workload
    sim_cfg : SimConfig
    routing : str
        Replica router name (:mod:`helios.sim.routing`).
    controller : callable, optional
        ``controller(sim)`` returns a generator run as a SimPy process (the runtime
        adaptation engine), or ``None``.
    telemetry_delay_s : float, optional
        Age of the telemetry (``telemetry.delay_s``; None: one ``sim_cfg.window_s``).
    """

    def __init__(self, cluster: Any, spec: ModelSpec, placement: Placement, workload: Workload,
                 sim_cfg: Any, routing: str = "nearest",
                 controller: Callable[["Simulation"], Any] | None = None,
                 telemetry_delay_s: float | None = None) -> None:
        self.env = simpy.Environment()
        self.telemetry_delay_s = sim_cfg.window_s if telemetry_delay_s is None else telemetry_delay_s
        """Age of the link and GPU telemetry routers and engines see (``telemetry.delay_s``)."""
        self.cluster, self.spec, self.workload, self.cfg = cluster, spec, workload, sim_cfg
        self.num_gpus, self.layers = cluster.num_gpus, len(placement.replicas)
        self.start, self.end = sim_cfg.warmup_s, sim_cfg.duration_s
        self.horizon = sim_cfg.duration_s + sim_cfg.drain_s
        meter_args = (sim_cfg.window_s, self.horizon, self.start, self.end)
        self.link_meter = LinkMeter(cluster.num_links, *meter_args)
        self.gpu_meter = LinkMeter(cluster.num_gpus, *meter_args)
        self.network = Network(self.env, cluster.route, cluster.link_bandwidth.tolist(),
                               cluster.link_latency.tolist(), sim_cfg.chunk_kib * 1024,
                               self.link_meter)
        self.gpus = GpuQueues(self.env, cluster.num_gpus, self.gpu_meter)
        self.replicas = [[list(g) for g in layer] for layer in placement.replicas]
        self.shares = [[list(s) for s in layer] for layer in placement.share_table()]
        self.router = make_router(routing, self)
        self._primary = [np.array([g[0] for g in layer]) for layer in self.replicas]
        self._multi = [np.array([len(g) > 1 for g in layer]) for layer in self.replicas]
        self.records: list[RequestRecord] = []
        self.measured: dict[int, Request] = {}
        """Requests that arrived in the measured interval, by id (gate arrays dropped)."""
        self.window_expert_pairs = np.zeros((self.layers, spec.num_experts))
        self.cross_server_bytes = 0.0
        self.pairs_dispatched = 0
        self.pairs_combined = 0
        # Written by the adaptation controller (helios.sim.adaptation), read by metrics.
        self.replication_bytes_in_flight = 0.0
        self.replicas_added = 0
        self.replicas_evicted = 0
        self.replication_bytes = 0.0
        self.adaptation_events: list[dict[str, Any]] = []
        #: When a list, every (time, layer, expert, gpu, pairs) dispatch decision is appended (tests).
        self.dispatch_log: list[tuple[float, int, int, int, int]] | None = None
        self.window_samples: list[dict[str, float]] = []
        self._in_system = 0
        self._area = 0.0
        self._last_change = 0.0
        self.env.process(self._arrivals())
        self.env.process(self._window_ticker())
        if controller is not None:
            self.env.process(controller(self))

    # ------------------------------------------------------------------ replicas
    def set_replicas(self, layer: int, expert: int, gpus: list[int],
                     shares: list[float] | None = None) -> None:
        """Replace the serving replicas of (layer, expert) and their token shares (default
        equal); routing sees it at once."""
        if not gpus:
            raise ValueError(f"layer {layer} expert {expert} would have no serving replica")
        if shares is not None and len(shares) != len(gpus):
            raise ValueError(f"{len(shares)} shares for {len(gpus)} replicas")
        self.replicas[layer][expert] = list(gpus)
        self.shares[layer][expert] = [1.0 / len(gpus)] * len(gpus) if shares is None else list(shares)
        self._primary[layer][expert] = gpus[0]
        self._multi[layer][expert] = len(gpus) > 1

    def replica_count(self) -> int:
        return sum(len(g) for layer in self.replicas for g in layer)

    def _assign(self, layer: int, experts: np.ndarray, src: int) -> np.ndarray:
        """GPU per expert id (array over all experts; only ``experts`` are meaningful)."""
        gpu_of = self._primary[layer]
        multi = experts[self._multi[layer][experts]]
        if len(multi):
            gpu_of = gpu_of.copy()
            for e in multi.tolist():
                gpu_of[e] = self.router.choose(layer, e, src, self.replicas[layer][e])
        return gpu_of

    # ------------------------------------------------------------------ processes
    def _arrivals(self):
        for req in self.workload.requests():
            yield self.env.timeout(req.arrival - self.env.now)
            self.env.process(self._serve(req))

    def _serve(self, req: Request):
        self._count_in_system(+1)
        if self.start <= req.arrival < self.end:
            self.measured[req.rid] = Request(req.rid, req.arrival, req.home_gpu, req.tokens, [])
        for layer in range(self.layers):
            done = self.env.event()
            self._dispatch(req, layer, done)
            yield done
        self._count_in_system(-1)
        now = self.env.now
        self.records.append(RequestRecord(req.rid, req.arrival, now,
                                          (now - req.arrival) * 1e3, req.tokens, req.home_gpu))

    def _dispatch(self, req: Request, layer: int, done: simpy.Event) -> None:
        spec, G = self.spec, self.num_gpus
        choices = req.experts[layer]
        pairs_e = np.bincount(choices.ravel(), minlength=spec.num_experts)
        self.window_expert_pairs[layer] += pairs_e
        chosen = np.flatnonzero(pairs_e)
        gpu_of = self._assign(layer, chosen, req.home_gpu)
        dest_of_chosen = gpu_of[chosen]
        if self.dispatch_log is not None:
            now = self.env.now
            self.dispatch_log.extend((now, layer, int(e), int(g), int(n)) for e, g, n in
                                     zip(chosen, dest_of_chosen, pairs_e[chosen]))
        seconds = np.bincount(dest_of_chosen, weights=spec.batch_seconds(pairs_e[chosen]),
                              minlength=G)
        pairs = np.bincount(dest_of_chosen, weights=pairs_e[chosen], minlength=G)
        token_gpu = np.unique(gpu_of[choices] + (np.arange(req.tokens) * G)[:, None])
        tokens_at = np.bincount(token_gpu % G, minlength=G)
        dests = np.flatnonzero(tokens_at)
        self.pairs_dispatched += choices.size
        left = [len(dests)]
        home = req.home_gpu
        home_server = self.cluster.gpu_server[home]

        def combined(n_pairs: int) -> None:
            self.pairs_combined += n_pairs
            left[0] -= 1
            if left[0] == 0:
                done.succeed()

        for g, n_tok, secs, n_pairs in zip(dests.tolist(), tokens_at[dests].tolist(),
                                           seconds[dests].tolist(), pairs[dests].astype(int).tolist()):
            out_bytes = n_tok * spec.dispatch_token_bytes
            back_bytes = n_tok * spec.combine_token_bytes
            if self.cluster.gpu_server[g] != home_server:
                self.cross_server_bytes += out_bytes + back_bytes
            self.network.send(home, g, out_bytes, self._after_dispatch(
                g, home, secs, n_pairs, back_bytes, combined))

    def _after_dispatch(self, gpu: int, home: int, seconds: float, pairs: int,
                        back_bytes: float, combined: Callable[[int], None]) -> Callable[[], None]:
        def computed() -> None:
            self.network.send(gpu, home, back_bytes, lambda: combined(pairs))
        return lambda: self.gpus.submit(gpu, seconds, pairs, computed)

    def _window_ticker(self):
        """Sample replica state at every window boundary (for the timeseries table)."""
        while True:
            self.window_samples.append({"t": self.env.now, "replicas": self.replica_count(),
                                        "replication_bytes_in_flight": self.replication_bytes_in_flight})
            yield self.env.timeout(self.cfg.window_s)

    def _count_in_system(self, delta: int) -> None:
        now = self.env.now
        overlap = min(now, self.end) - max(self._last_change, self.start)
        if overlap > 0:
            self._area += self._in_system * overlap
        self._in_system += delta
        self._last_change = now

    # ------------------------------------------------------------------ run
    def telemetry_window(self, now: float) -> int:
        """Newest metering window whose telemetry is visible at ``now`` (-1: none yet):
        the last window that ended ``telemetry_delay_s`` or more before ``now``."""
        return telemetry_window(now, self.cfg.window_s, self.telemetry_delay_s)

    def run(self) -> "Simulation":
        """Run to the horizon; returns ``self`` for chaining."""
        self.env.run(until=self.horizon)
        self._count_in_system(0)
        return self

    def mean_in_system(self) -> float:
        """Time-average number of requests in the system over the measured interval."""
        return self._area / (self.end - self.start)
