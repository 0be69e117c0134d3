"""``serving=ep``: data-parallel attention ranks with continuous batching and expert parallelism.

Model (how SGLang, vLLM and DeepSeek serve MoE with DP attention + EP MoE):

* **Requests** arrive by the scenario's process (Poisson, bursty, trace rate). Each has
  a prompt and an output length, fixed or lognormal with a given mean and CV
  (clipped to ``length_clip`` x the mean), drawn at arrival from the cell's size
  stream. It joins one attention rank (every GPU is one): ``round_robin`` in arrival
  order, or ``shortest_queue`` (fewest waiting + running requests, lowest rank on ties),
  as SGLang's DP load balancer offers.
* **Scheduler**: continuous batching with chunked prefill on every rank
  (:mod:`helios.sim.ep.scheduler`); KV-cache memory per rank bounds admission.
* **Steps** are global: all ranks start step ``s + 1`` when the last rank has finished
  step ``s``, as DP-attention ranks synchronise their batches at the start of every
  forward pass (each rank must join every layer's dispatch and combine, idle ranks with
  an empty batch). A step simulates the dense layers, every simulated MoE layer
  (attention + shared experts, dispatch, one grouped GEMM per rank, combine;
  :mod:`helios.sim.ep.step`) and the LM head, with roofline compute times
  (:mod:`helios.sim.ep.roofline`). The gate draws the top-k experts of every token
  of the batch from the layer's popularity at the step's start (cell gate stream;
  :mod:`helios.sim.ep.gate`).
* **Replicas**: a token goes to one replica of each chosen expert, by
  ``strategy.routing`` (:mod:`helios.sim.ep.replicas`): the nearest by unloaded
  store-and-forward delivery time, the next in turn, one drawn by the placement's
  shares, or the cheapest by delayed telemetry or by the exact queues (re-ranked at
  step starts; :mod:`helios.sim.ep.congestion`).
* **Network**: the step's messages go through the compiled FIFO-link kernel
  (:mod:`helios.sim.kernel`), exactly the link model of ``serving=request``; link
  queues persist across steps. SimPy sees one event per step: a step's tasks are
  resolved inside the kernel, which is exact because nothing else uses the network
  while a step runs (weight copies of dynamic strategies run between steps, or, with
  ``async`` transfers, as messages released at step boundaries; :mod:`helios.sim.ep.migration`).

What it leaves out: scheduler CPU time between steps, CUDA-graph padding, preemption
(KV is reserved for the whole request at admission), and prefix caching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from helios.config import GIB, CellConfig
from helios.placement.base import Placement
from helios.sim.ep.replicas import RANKED, ReplicaTables
from helios.sim.ep.roofline import step_costs
from helios.sim.ep.scheduler import Batch, RankScheduler, ServedRequest
from helios.sim.ep.step import StepBuilder, layer_traffic
from helios.sim.kernel import LinkState
from helios.sim.taskgraph import count_chunk_hops
from helios.sim.ep.gate import alias_table, fast_top_k
from helios.workload import Workload


@dataclass
class StepRecord:
    """One step: when it ran, its tokens and its slowest and mean rank.

    ``gemm_*_s``: the busiest and the mean rank's grouped-GEMM seconds; ``compute_*_s``:
    the same of all of a rank's compute (dense layers, attention and shared experts, grouped
    GEMMs, LM head; not ``serving.phase_overhead_us``).
    """

    start_s: float
    end_s: float
    tokens: int
    prefill_tokens: int
    decode_tokens: int
    output_tokens: int
    gemm_max_s: float
    gemm_mean_s: float
    compute_max_s: float
    compute_mean_s: float


def kv_budget_tokens(cfg: CellConfig) -> int:
    """Tokens of KV cache one rank holds."""
    costs = step_costs(cfg.model, cfg.gpu, cfg.serving)
    budget = cfg.serving.kv_memory_fraction * cfg.gpu.memory_gib * GIB
    return int(budget // costs.kv_bytes_per_token)


def longest_request(serving: Any) -> int:
    """Most KV tokens one request can reserve (prompt + output at their largest)."""
    def most(mean: int, cv: float) -> int:
        return mean if cv == 0 else int(np.ceil(serving.length_clip * mean))
    return most(serving.prompt_tokens, serving.prompt_cv) + most(serving.output_tokens,
                                                                 serving.output_cv)


class EpSimulation:
    """One cell of ``serving=ep``.

    Parameters
    ----------
    cluster : helios.topology.Cluster
    cfg : CellConfig
    placement : Placement
    workload : Workload
        Arrivals, the popularity over time and the cell's random streams.
    """

    def __init__(self, cluster: Any, cfg: CellConfig, placement: Placement,
                 workload: Workload, adapter: Any = None) -> None:
        self.env = simpy.Environment()
        self.cluster, self.cfg, self.workload = cluster, cfg, workload
        self.serving, self.sim_cfg = cfg.serving, cfg.sim
        self.num_gpus, self.layers = cluster.num_gpus, len(placement.replicas)
        self.num_experts, self.top_k = cfg.model.num_experts, cfg.model.top_k
        self.start, self.end = cfg.sim.warmup_s, cfg.sim.duration_s
        self.horizon = cfg.sim.duration_s + cfg.sim.drain_s
        self.costs = step_costs(cfg.model, cfg.gpu, cfg.serving)
        self.builder = StepBuilder(cluster.num_gpus, cluster.gpus_per_server, cfg.serving.dispatch,
                                   cfg.model.hidden_size * cfg.model.dispatch_bytes,
                                   cfg.model.hidden_size * cfg.model.combine_bytes,
                                   cfg.serving.relay_chunks, cfg.serving.phase_overhead_us * 1e-6)
        self.placement = placement
        self.replicas = self._replica_tables(placement, cfg.strategy.routing)
        kv_tokens = kv_budget_tokens(cfg)
        self.ranks = [RankScheduler(r, cfg.serving.max_running_requests,
                                    cfg.serving.max_batch_tokens, kv_tokens)
                      for r in range(self.num_gpus)]
        self._network_state()
        self.requests: list[ServedRequest] = []
        self.steps: list[StepRecord] = []
        self.pairs_per_gpu = np.zeros((self.layers, self.num_gpus))
        """Token-expert pairs computed per (layer, GPU) in steps that started in the interval."""
        self.gemm_busy = np.zeros(self.num_gpus)
        """Grouped-GEMM seconds per rank in steps that started in the interval."""
        self.window_expert_pairs = np.zeros((self.layers, self.num_experts))
        self.step_expert_pairs = np.zeros((self.layers, self.num_experts))
        """Token-expert pairs the gate drew per (layer, expert) in the last step."""
        self.pairs_dispatched = 0
        self.pairs_computed = 0
        self.network_bytes = 0.0
        self.kernel_tasks = 0
        self.chunk_hops = 0
        self.hop_bytes = 0.0
        """Bytes x hops of every step message (what the links must have carried)."""
        self.kernel_s = 0.0
        """Wall seconds spent in the network kernel (for ``helios.bench engine``)."""
        self.cross_server_bytes = 0.0
        self.in_system = 0
        self.queue_samples: list[tuple[float, int]] = []
        """(time, requests in the system) every ``sim.window_s / 20`` (a sampler process)."""
        self._idle: simpy.Event | None = None
        self._alias_cache: dict[int, tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = {}
        self._next_rank = 0
        self.adapter = adapter(self) if adapter is not None else None
        """Runtime adaptation (:mod:`helios.sim.ep.migration`), None for static strategies."""
        self.env.process(self._arrivals())
        self.env.process(self._steps())
        self.env.process(self._sampler(cfg.sim.window_s / 20))

    # ------------------------------------------------------------------ setup
    def _replica_tables(self, placement: Placement, routing: str) -> ReplicaTables:
        dispatch_s, gpu_job_s = None, 0.0
        if routing in RANKED:
            # Cost of one token's dispatch under the engine's own (store-and-forward) model.
            G = self.num_gpus
            nbytes = self.cfg.model.hidden_size * self.cfg.model.dispatch_bytes
            chunk = self.sim_cfg.chunk_kib * 1024
            dispatch_s = np.array([[self.cluster.transfer_time(s, d, nbytes, chunk)
                                    for d in range(G)] for s in range(G)])
            gpu_job_s = float(self.costs.grouped_gemm(np.ones(1), np.ones(1))[0])
        return ReplicaTables(placement, self.num_gpus, routing, dispatch_s, gpu_job_s)

    def set_layer(self, layer: int, replicas: list[list[int]], shares: list[list[float]]) -> None:
        """Serve ``layer`` from ``replicas`` (per expert, GPU lists) split by ``shares``."""
        self.replicas.set_layer(layer, replicas, shares)

    @property
    def replica_count(self) -> np.ndarray:
        """Replicas per (layer, expert)."""
        return self.replicas.count

    def _network_state(self) -> None:
        self.window = self.sim_cfg.window_s
        self.links = LinkState(self.cluster, self.sim_cfg.chunk_kib * 1024, self.window,
                               self.horizon, self.start, self.end)
        # The metering arrays, under the names the metrics read.
        self.route_len, self.chunk = self.links.route_len, self.links.chunk
        self.link_win, self.gpu_win = self.links.link_win, self.links.gpu_win
        self.link_meas, self.gpu_meas = self.links.link_meas, self.links.gpu_meas
        self.link_bytes = self.links.link_bytes

    # ------------------------------------------------------------------ requests
    def _length(self, rng: np.random.Generator, mean: int, cv: float) -> int:
        if cv == 0:
            return mean
        sigma2 = np.log1p(cv * cv)
        value = rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2))
        return int(min(max(1, round(value)), np.ceil(self.serving.length_clip * mean)))

    def _warm_start(self, rng: np.random.Generator) -> int:
        """Put ``serving.initial_decode_requests`` decoding requests on every rank at time 0.

        Each has its prompt prefilled and a uniform share of its output produced, so that
        their completions spread out as in a steady state. Returns the next request id.
        """
        s = self.serving
        rid = 0
        for rank in self.ranks:
            for _ in range(s.initial_decode_requests):
                prompt = self._length(rng, s.prompt_tokens, s.prompt_cv)
                output = self._length(rng, s.output_tokens, s.output_cv)
                req = ServedRequest(rid, 0.0, rank.rank, prompt, output, prefilled=prompt,
                                    generated=int(rng.integers(1, output)) if output > 1 else 0,
                                    first_token_s=0.0, warm=True)
                if not rank.admit_running(req):
                    raise ValueError(f"serving.initial_decode_requests={s.initial_decode_requests}"
                                     " does not fit a rank's running batch or KV cache")
                self.requests.append(req)
                self.in_system += 1
                rid += 1
        return rid

    def _arrivals(self):
        rng = self.workload._size_rng
        s = self.serving
        first = self._warm_start(rng)
        for rid, t in enumerate(self.workload.arrival_times(), start=first):
            yield self.env.timeout(t - self.env.now)
            prompt = self._length(rng, s.prompt_tokens, s.prompt_cv)
            output = self._length(rng, s.output_tokens, s.output_cv)
            if s.dp_balance == "round_robin":
                rank = self._next_rank
                self._next_rank = (rank + 1) % self.num_gpus
            else:
                rank = min(range(self.num_gpus), key=lambda r: (self.ranks[r].load(), r))
            req = ServedRequest(rid, t, rank, prompt, output)
            self.requests.append(req)
            self.in_system += 1
            self.ranks[rank].add(req)
            if self._idle is not None and not self._idle.triggered:
                self._idle.succeed()

    # ------------------------------------------------------------------ steps
    def _steps(self):
        while self.env.now < self.horizon:
            if self.adapter is not None:
                pause = self.adapter.before_step(self.env.now)
                if pause > 0:  # stop-the-world weight copies
                    yield self.env.timeout(pause)
            batches = [r.form_batch() for r in self.ranks]
            if not any(b.tokens for b in batches):
                self._idle = self.env.event()
                yield self._idle
                continue
            duration = self._run_step(batches)
            yield self.env.timeout(duration)
            # The clock reads now + (end - now), which can differ from the kernel's end by
            # an ulp; the record keeps the clock's value, so the next step starts at its end.
            self.steps[-1].end_s = self.env.now
            for rank, batch in zip(self.ranks, batches):
                self.in_system -= len(rank.finish_step(batch, self.env.now))
            if self.adapter is not None:
                self.adapter.after_step(self.env.now, self.step_expert_pairs.copy())

    def _sampler(self, period: float):
        while True:
            self.queue_samples.append((self.env.now, self.in_system))
            yield self.env.timeout(period)

    def _split(self, batches: list[Batch]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per micro-batch: tokens and context sum per rank."""
        tokens = np.array([b.tokens for b in batches], dtype=float)
        context = np.array([b.context for b in batches])
        if self.serving.overlap == "none":
            return [(tokens, context)]
        first = np.ceil(tokens / 2)
        share = np.divide(first, tokens, out=np.zeros_like(tokens), where=tokens > 0)
        return [(first, context * share), (tokens - first, context * (1 - share))]

    def _gate(self, tokens: np.ndarray, popularity: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """Per layer: (src rank, serving GPU, expert) of every token-expert pair of a micro-batch."""
        src = np.repeat(np.arange(self.num_gpus), tokens.astype(np.int64))
        count = src.size
        out = []
        rng = self.workload._gate_rng
        for l in range(self.layers):
            if count == 0:
                empty = np.zeros((0, self.top_k), dtype=np.int64)
                out.append((src, empty, empty))
                continue
            experts = fast_top_k(popularity[l], count, self.top_k, rng, self._alias(l, popularity[l]))
            gpu = self.replicas.choose(l, src, experts, rng)
            out.append((src, gpu, experts))
        return out

    def _alias(self, layer: int, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Alias table of a layer's popularity, rebuilt only when the popularity changes."""
        cached = self._alias_cache.get(layer)
        if cached is None or not np.array_equal(cached[0], probs):
            cached = (probs.copy(), alias_table(probs))
            self._alias_cache[layer] = cached
        return cached[1]

    def _run_step(self, batches: list[Batch]) -> float:
        now = self.env.now
        measured = self.start <= now < self.end
        popularity = self.workload.scenario.popularity(now)
        self.replicas.refresh(self.links, now, self.cfg.telemetry.delay_s)
        G, E = self.num_gpus, self.num_experts
        attn, gemm, traffic = [], [], []
        gemm_total = np.zeros(G)
        self.step_expert_pairs[...] = 0.0
        for tokens, context in self._split(batches):
            attn.append([self.costs.attention(tokens, context)] * self.layers)
            layer_gemm, layer_traffic_ = [], []
            for l, (src, gpu, experts) in enumerate(self._gate(tokens, popularity)):
                t = layer_traffic(src, gpu, experts, G, self.cluster.gpus_per_server, E)
                layer_traffic_.append(t)
                secs = self.costs.grouped_gemm(t.pairs, t.active)
                layer_gemm.append(secs)
                gemm_total += secs
                self.pairs_dispatched += experts.size
                self.pairs_computed += int(t.pairs.sum())
                drawn = np.bincount(experts.ravel(), minlength=E)
                self.window_expert_pairs[l] += drawn
                self.step_expert_pairs[l] += drawn
                if measured:
                    self.pairs_per_gpu[l] += t.pairs
                cross = self.cluster.gpu_server[:, None] != self.cluster.gpu_server[None, :]
                self.cross_server_bytes += float(
                    (t.per_gpu * cross).sum() * (self.builder.db + self.builder.cb))
            gemm.append(layer_gemm)
            traffic.append(layer_traffic_)
        tokens_all = np.array([b.tokens for b in batches], dtype=float)
        context_all = np.array([b.context for b in batches])
        dense = self.costs.dense_layers(tokens_all, context_all)
        head = self.costs.head(np.array([b.sampling for b in batches], dtype=float))
        compute = dense + head + gemm_total + sum(sum(layers) for layers in attn)
        plan = self.builder.build(now, dense, attn, gemm, traffic, head)
        self.network_bytes += plan.network_bytes
        arrays = plan.graph.arrays()
        self.kernel_tasks += arrays[0].size
        self._count_chunk_hops(arrays)
        t0 = time.perf_counter()
        finish = self.links.run(arrays)
        self.kernel_s += time.perf_counter() - t0
        end = float(finish[plan.tail].max())
        if measured:
            self.gemm_busy += gemm_total
        self.steps.append(StepRecord(
            now, end, int(tokens_all.sum()),
            sum(n for b in batches for _, n in b.prefill), sum(len(b.decode) for b in batches),
            sum(b.sampling for b in batches),
            float(gemm_total.max()), float(gemm_total.mean()),
            float(compute.max()), float(compute.mean())))
        return end - now

    def _count_chunk_hops(self, arrays: tuple[np.ndarray, ...]) -> None:
        chunk_hops, hop_bytes = count_chunk_hops(*arrays[:4], self.route_len, float(self.chunk))
        self.chunk_hops += chunk_hops
        self.hop_bytes += hop_bytes

    # ------------------------------------------------------------------ run
    def run(self) -> "EpSimulation":
        """Run to the horizon; returns ``self``."""
        self.env.run(until=self.horizon)
        return self
