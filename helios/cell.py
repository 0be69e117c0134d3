"""Run one cell (one composed config + one seed) in-process: :func:`run_cell`.

This is what every worker calls; it is a pure function of the config. Built clusters
are memoised per process, so a worker that runs many cells on one topology builds
its graph and route tables once.
"""

from __future__ import annotations

import datetime
import functools
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helios import __version__
from helios.config import CellConfig, TopologyConfig, cell_config, flatten, simulated_layers, to_dict
from helios.identity import cell_id
from helios.moe import model_spec
from helios.placement import PlacementContext
from helios.placement.cache import DiskPlacementCache, cache_root, obtain_placement
from helios.sim.adaptation import make_controller
from helios.sim.engine import Simulation
from helios.sim.ep.adapters import EP_ADAPTERS
from helios.sim.ep.engine import EpSimulation
from helios.sim.ep.metrics import ep_cell_metrics, ep_window_records, request_records
from helios.sim.ep.steady import mean_rate, representative_step
from helios.sim.metrics import cell_metrics, window_records
from helios.workload import Workload

#: ECMP hash salt of a cluster. It belongs to the cluster, not the workload, so it is
#: fixed: every seed of a sweep sees the same routes and can share one placement.
ROUTE_SALT = 0


@dataclass
class CellResult:
    """Rows a cell contributes to each table (``pd.DataFrame(result.tables[t])`` works)."""

    cell_id: str
    tables: dict[str, list[dict[str, Any]]]
    summary: str
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Cost figures that are not results (e.g. the kernel's chunk-hops), for benchmarks."""


@functools.lru_cache(maxsize=8)
def build_cluster(topo: TopologyConfig) -> Any:
    """Build (once per process) the cluster a topology config describes."""
    from helios import topology

    return topology.build(topo, seed=ROUTE_SALT)


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """Commit of the Helios source tree, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def summary_line(strategy: str, p99_ms: float, goodput: float, max_link_util: float) -> str:
    """The seed study's one-line summary of a cell."""
    return (f"Strategy: {strategy}, P99 Latency: {p99_ms:.1f} ms, Goodput: {goodput:.1f} "
            f"tokens/sec, Max Link Congestion: {max_link_util * 100:.1f}%")


def prepare(cfg: CellConfig) -> tuple[Any, Any, Workload, PlacementContext]:
    """Cluster, model spec, workload and placement inputs of a cell (no simulation)."""
    cluster = build_cluster(cfg.topology)
    spec = model_spec(cfg.model, cfg.gpu)
    homes = cfg.scenario.home_servers
    workload = Workload(cfg.scenario, spec.num_experts, spec.top_k, cluster.num_gpus,
                        simulated_layers(cfg), cfg.sim.duration_s, cfg.seed,
                        None if homes is None else homes * cluster.gpus_per_server,
                        cfg.model.routing_gini)
    ep_step = None
    if cfg.serving.name == "ep":
        rate = mean_rate(workload.scenario, cfg.sim.duration_s)
        ep_step = representative_step(cfg, cluster.num_gpus, rate)
    ctx = PlacementContext(cluster=cluster, spec=spec, expected_load=workload.expected_load(0.0),
                           source_share=workload.source_distribution(),
                           slots_per_gpu=spec.slots_per_gpu, strategy=cfg.strategy, seed=cfg.seed,
                           tokens_per_request=float(cfg.scenario.tokens_per_request),
                           serving=cfg.serving.name, ep_step=ep_step,
                           sim_chunk_bytes=cfg.sim.chunk_kib * 1024,
                           num_moe_layers=cfg.model.num_moe_layers,
                           num_dense_layers=cfg.model.num_dense_layers)
    return cluster, spec, workload, ctx


def run_cell(cfg: CellConfig | Mapping[str, Any], cache: Any = None) -> CellResult:
    """Simulate one cell and return its table rows.

    Parameters
    ----------
    cfg : CellConfig or mapping
        A validated config, or a composed mapping that is validated first.
    cache : placement cache, optional
        Where solved placements are shared (see :mod:`helios.placement.cache`);
        by default (None) a disk cache under ``<cfg.output_dir>/placement_cache``;
        ``False`` solves without any cache.
    """
    if not isinstance(cfg, CellConfig):
        cfg = cell_config(cfg)
    cid = cell_id(cfg)
    cluster, spec, workload, ctx = prepare(cfg)
    t0 = time.perf_counter()
    if cache is None:
        cache = DiskPlacementCache(cache_root(cfg))
    placement, cache_hit = obtain_placement(ctx, cache if cache is not False else None)
    placement_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if cfg.serving.name == "ep":
        adapter_cls = EP_ADAPTERS.get(cfg.strategy.name)
        factory = None if adapter_cls is None else (lambda s: adapter_cls(s, cfg, ctx))
        sim = EpSimulation(cluster, cfg, placement, workload, factory).run()
        metrics, windows, records = ep_cell_metrics(sim), ep_window_records(sim), request_records(sim)
        a = sim.adapter
        replica_stats = (0, 0, 0.0) if a is None else (a.replicas_added, a.replicas_evicted,
                                                       a.replication_bytes)
        decisions, pause_s = (0, 0.0) if a is None else (a.rebalances, a.pause_s)
        events, adaptation_events = next(sim.env._eid) + sim.kernel_tasks, [] if a is None else a.events
        extra = {"chunk_hops": sim.chunk_hops, "kernel_s": sim.kernel_s}
    else:
        sim = Simulation(cluster, spec, placement, workload, cfg.sim, routing=cfg.strategy.routing,
                         controller=make_controller(cfg),
                         telemetry_delay_s=cfg.telemetry.delay_s).run()
        metrics, windows, records = cell_metrics(sim), window_records(sim), sim.records
        replica_stats = (sim.replicas_added, sim.replicas_evicted, sim.replication_bytes)
        engine = getattr(sim, "adaptation_engine", None)
        decisions, pause_s = (0 if engine is None else engine.decisions), 0.0
        # SimPy numbers every scheduled event; the counter's next value is the total.
        events, adaptation_events = next(sim.env._eid), sim.adaptation_events
        extra = {}
    sim_s = time.perf_counter() - t0

    keys = {"sweep": cfg.sweep, "cell_id": cid}
    choices = {"topology": cfg.topology.name, "model": cfg.model.name,
               "scenario": cfg.scenario.name, "strategy": cfg.strategy.name, "seed": cfg.seed}
    row = {
        **keys, **choices,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **{f"cfg.{k}": v for k, v in flatten(cfg).items()},
        **asdict(metrics),
        "replicas_added": replica_stats[0], "replicas_evicted": replica_stats[1],
        "replication_bytes": replica_stats[2],
        "adapt_decisions": decisions, "migration_pause_s": pause_s,
        "placement_cache": "hit" if cache_hit else "miss",
        "placement_s": placement_s,
        "ilp_status": placement.info.get("ilp_status", ""),
        "ilp_gap": float(placement.info.get("ilp_gap", float("nan"))),
        "sim_s": sim_s,
        "events": events,
        "helios_version": __version__, "git_sha": git_sha(), "host": socket.gethostname(),
    }
    tables = {
        "cells": [row],
        "timeseries": [{**keys, **choices, "window": i, **asdict(w)} for i, w in enumerate(windows)],
        "events": [{**keys, **choices, **event} for event in adaptation_events],
        "requests": ([{**keys, **choices, **asdict(r)} for r in records]
                     if cfg.record.requests else []),
    }
    # serving=ep: "P99 Latency" is the P99 time per output token, goodput its output tokens/s.
    p99 = metrics.tpot_p99_ms if cfg.serving.name == "ep" else metrics.p99_ms
    summary = summary_line(cfg.strategy.name, p99, metrics.goodput_tok_s, metrics.max_link_util)
    return CellResult(cell_id=cid, tables=tables, summary=summary, config=to_dict(cfg), extra=extra)
