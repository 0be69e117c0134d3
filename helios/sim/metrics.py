"""Cell metrics from a finished :class:`~helios.sim.engine.Simulation`, as flat records.

Definitions (measured interval ``[warmup, duration)``, length ``T``):

* latency percentiles and mean: over requests that *arrived* in the interval; a request
  unfinished when the run stops counts as infinitely late (so P99 is ``inf`` when
  more than 1% never finish: the cell is overloaded);
* throughput: tokens of requests that *finished* in the interval, divided by ``T``;
  goodput: the same, counting only requests whose latency met ``sim.slo_ms``;
* SLO attainment: share of arrived requests that finished within the SLO;
* max link utilisation: the largest busy-time fraction of any link over the interval;
  peak window link utilisation: the largest over the windows inside the interval;
* GPU load imbalance: max / mean token-expert pairs computed per GPU (all GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAN = float("nan")

from helios.sim.engine import Simulation


@dataclass
class CellMetrics:
    """The measured figures of one cell (part of a ``cells`` row)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    goodput_tok_s: float
    throughput_tok_s: float
    slo_attainment: float
    max_link_util: float
    peak_window_link_util: float
    cross_server_bytes: float
    gpu_load_imbalance: float
    requests_measured: int
    requests_unfinished: int
    # serving=ep figures (NaN in serving=request; see helios.sim.ep.metrics).
    ttft_p50_ms: float = NAN
    ttft_p90_ms: float = NAN
    ttft_p99_ms: float = NAN
    tpot_p50_ms: float = NAN
    tpot_p90_ms: float = NAN
    tpot_p99_ms: float = NAN
    e2e_p50_ms: float = NAN
    e2e_p90_ms: float = NAN
    e2e_p99_ms: float = NAN
    input_tok_s: float = NAN
    output_tok_s: float = NAN
    input_tok_s_per_gpu: float = NAN
    output_tok_s_per_gpu: float = NAN
    goodput_req_s: float = NAN
    gpu_util_max: float = NAN
    gpu_util_mean: float = NAN
    step_ms_mean: float = NAN
    step_ms_p99: float = NAN
    straggler_ratio: float = NAN
    balancedness: float = NAN
    steps: float = NAN


@dataclass
class WindowRecord:
    """One measurement window of one cell (a row of the ``timeseries`` table)."""

    window_start_s: float
    p99_ms: float
    requests_finished: int
    throughput_tok_s: float
    max_link_util: float
    replicas: int
    replication_bytes_in_flight: float


def percentiles(latencies: np.ndarray, qs: list[float]) -> list[float]:
    if len(latencies) == 0:
        return [float("nan")] * len(qs)
    with np.errstate(invalid="ignore"):
        values = np.percentile(latencies, qs)
    # Interpolating between two infinite latencies gives NaN; it is still infinite.
    return [float("inf") if np.isnan(v) else float(v) for v in values]


def measured_latencies(sim: Simulation) -> np.ndarray:
    """Latency (ms) of every request that arrived in the measured interval; inf if unfinished."""
    finished = {r.rid: r.latency_ms for r in sim.records}
    return np.array([finished.get(rid, np.inf) for rid in sim.measured], dtype=float)


def cell_metrics(sim: Simulation) -> CellMetrics:
    """Summarise a finished simulation."""
    start, end, slo = sim.start, sim.end, sim.cfg.slo_ms
    length = end - start
    lat = measured_latencies(sim)
    p50, p90, p99 = percentiles(lat, [50, 90, 99])
    done = [r for r in sim.records if start <= r.finish_s < end]
    tokens_done = sum(r.tokens for r in done)
    tokens_good = sum(r.tokens for r in done if r.latency_ms <= slo)
    util = sim.link_meter.utilisation()
    first, last = int(np.ceil(start / sim.cfg.window_s)), int(end // sim.cfg.window_s)
    windows = sim.link_meter.window_utilisation()[first:last]
    pairs = sim.gpus.pairs
    return CellMetrics(
        p50_ms=p50, p90_ms=p90, p99_ms=p99,
        mean_ms=float(lat.mean()) if len(lat) else float("nan"),
        goodput_tok_s=tokens_good / length,
        throughput_tok_s=tokens_done / length,
        slo_attainment=float(np.mean(lat <= slo)) if len(lat) else float("nan"),
        max_link_util=float(util.max()) if len(util) else 0.0,
        peak_window_link_util=float(windows.max()) if windows.size else float("nan"),
        cross_server_bytes=sim.cross_server_bytes,
        gpu_load_imbalance=float(pairs.max() / pairs.mean()) if pairs.sum() > 0 else float("nan"),
        requests_measured=len(lat),
        requests_unfinished=int(np.isinf(lat).sum()),
    )


def window_records(sim: Simulation) -> list[WindowRecord]:
    """Per-window figures over ``[0, duration)`` (warm-up included, for plots)."""
    width = sim.cfg.window_s
    count = int(np.ceil(sim.end / width))
    finished: list[list] = [[] for _ in range(count)]
    for r in sim.records:
        w = int(r.finish_s // width)
        if w < count:
            finished[w].append(r)
    util = sim.link_meter.window_utilisation()
    out = []
    for w in range(count):
        lat = np.array([r.latency_ms for r in finished[w]])
        sample = sim.window_samples[w] if w < len(sim.window_samples) else sim.window_samples[-1]
        out.append(WindowRecord(
            window_start_s=w * width,
            p99_ms=float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            requests_finished=len(lat),
            throughput_tok_s=sum(r.tokens for r in finished[w]) / width,
            max_link_util=float(util[w].max()) if util.shape[1] else 0.0,
            replicas=int(sample["replicas"]),
            replication_bytes_in_flight=float(sample["replication_bytes_in_flight"]),
        ))
    return out
