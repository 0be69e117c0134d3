"""Cell and window figures of a finished :class:`~helios.sim.ep.engine.EpSimulation`.

Definitions (measured interval ``[warmup, duration)`` of length ``T``):

* requests measured: those that *arrived* in the interval; one never finished counts
  as infinitely late in every percentile (as in ``serving=request``);
* TTFT: first output token minus arrival; TPOT: (finish - first token) / (output - 1),
  over requests with at least two output tokens (vLLM's definition); E2E: finish minus
  arrival. ``p50_ms`` .. ``mean_ms`` are E2E;
* ``input_tok_s`` / ``output_tok_s``: prompt tokens prefilled / output tokens produced
  by steps that *ended* in the interval, over ``T`` (``_per_gpu``: divided by the GPU
  count); ``throughput_tok_s`` is ``output_tok_s``;
* goodput (DistServe, Zhong et al., OSDI 2024): requests meeting *both* the TTFT and
  the TPOT objective; ``goodput_tok_s`` counts their output tokens and
  ``goodput_req_s`` the requests, over those that finished in the interval;
  ``slo_attainment`` is the share of measured requests that met both;
* per step (steps that *started* in the interval): ``step_ms_mean`` / ``_p99``;
  ``straggler_ratio``: the slowest rank's grouped-GEMM seconds over the mean rank's;
  ``balancedness``: sum over layers of the mean token-expert pairs per GPU over the
  sum over layers of the largest (how vLLM's EPLB logs it); ``gpu_load_imbalance``
  is its inverse over all layers' pairs, max / mean;
* ``gpu_util_*``: busy fraction of each GPU's compute stream over the interval;
  link figures as in ``serving=request``.
"""

from __future__ import annotations

import numpy as np

from helios.sim.engine import RequestRecord
from helios.config import EpServingConfig
from helios.sim.ep.engine import EpSimulation
from helios.sim.ep.scheduler import ServedRequest
from helios.sim.metrics import CellMetrics, WindowRecord, percentiles


def _times_ms(r: ServedRequest) -> tuple[float, float, float]:
    """TTFT, TPOT and E2E of a request, ms: inf until they happen; TPOT is NaN for a
    one-token output (it has no time per output token)."""
    ttft = (r.first_token_s - r.arrival) * 1e3 if not np.isnan(r.first_token_s) else np.inf
    e2e = (r.finish_s - r.arrival) * 1e3 if not np.isnan(r.finish_s) else np.inf
    if r.output < 2:
        tpot = np.nan
    else:
        tpot = (r.finish_s - r.first_token_s) / (r.output - 1) * 1e3 if np.isfinite(e2e) else np.inf
    return ttft, tpot, e2e


def _meets_slos(times: tuple[float, float, float], serving: EpServingConfig) -> bool:
    """Both objectives met (a NaN TPOT, one output token, passes the TPOT one)."""
    ttft, tpot, _ = times
    return bool(ttft <= serving.ttft_slo_ms and not tpot > serving.tpot_slo_ms)


def request_records(sim: EpSimulation) -> list[RequestRecord]:
    """Finished requests as rows of the ``requests`` table."""
    out = []
    for r in sim.requests:
        if np.isnan(r.finish_s):
            continue
        ttft, tpot, e2e = _times_ms(r)
        out.append(RequestRecord(r.rid, r.arrival, r.finish_s, e2e, r.prompt, r.rank, ttft,
                                 tpot, r.output))
    return out


def ep_cell_metrics(sim: EpSimulation) -> CellMetrics:
    """Summarise a finished ``serving=ep`` simulation."""
    length = sim.end - sim.start
    s = sim.serving
    measured = [_times_ms(r) for r in sim.requests
                if sim.start <= r.arrival < sim.end and not r.warm]
    ttft, tpot, e2e = np.array(measured, dtype=float).reshape(-1, 3).T
    good = np.array([_meets_slos(t, s) for t in measured], dtype=bool)
    done = [r for r in sim.requests if sim.start <= r.finish_s < sim.end and not r.warm]
    good_done = [r for r in done if _meets_slos(_times_ms(r), s)]
    ended = [st for st in sim.steps if sim.start <= st.end_s < sim.end]
    started = [st for st in sim.steps if sim.start <= st.start_s < sim.end]
    step_ms = np.array([(st.end_s - st.start_s) * 1e3 for st in started])
    output_tok = sum(st.output_tokens for st in ended) / length
    input_tok = sum(st.prefill_tokens for st in ended) / length
    pairs = sim.pairs_per_gpu
    link_util = sim.link_meas / length
    first, last = int(np.ceil(sim.start / sim.window)), int(sim.end // sim.window)
    windows = sim.link_win[first:last] / sim.window
    gpu_util = sim.gpu_meas / length
    tpot_q = percentiles(tpot[~np.isnan(tpot)], [50, 90, 99])
    G = sim.num_gpus
    return CellMetrics(
        p50_ms=percentiles(e2e, [50])[0], p90_ms=percentiles(e2e, [90])[0],
        p99_ms=percentiles(e2e, [99])[0],
        mean_ms=float(e2e.mean()) if len(e2e) else np.nan,
        goodput_tok_s=sum(r.output for r in good_done) / length,
        throughput_tok_s=output_tok,
        slo_attainment=float(good.mean()) if len(good) else np.nan,
        max_link_util=float(link_util.max()) if link_util.size else 0.0,
        peak_window_link_util=float(windows.max()) if windows.size else np.nan,
        cross_server_bytes=sim.cross_server_bytes,
        gpu_load_imbalance=(float(pairs.sum(0).max() / pairs.sum(0).mean())
                            if pairs.sum() > 0 else np.nan),
        requests_measured=len(e2e), requests_unfinished=int(np.isinf(e2e).sum()),
        ttft_p50_ms=percentiles(ttft, [50])[0], ttft_p90_ms=percentiles(ttft, [90])[0],
        ttft_p99_ms=percentiles(ttft, [99])[0],
        tpot_p50_ms=tpot_q[0], tpot_p90_ms=tpot_q[1], tpot_p99_ms=tpot_q[2],
        e2e_p50_ms=percentiles(e2e, [50])[0], e2e_p90_ms=percentiles(e2e, [90])[0],
        e2e_p99_ms=percentiles(e2e, [99])[0],
        input_tok_s=input_tok, output_tok_s=output_tok,
        input_tok_s_per_gpu=input_tok / G, output_tok_s_per_gpu=output_tok / G,
        goodput_req_s=len(good_done) / length,
        gpu_util_max=float(gpu_util.max()), gpu_util_mean=float(gpu_util.mean()),
        step_ms_mean=float(step_ms.mean()) if len(step_ms) else np.nan,
        step_ms_p99=float(np.percentile(step_ms, 99)) if len(step_ms) else np.nan,
        straggler_ratio=(float(sim.gemm_busy.max() / sim.gemm_busy.mean())
                         if sim.gemm_busy.sum() > 0 else np.nan),
        balancedness=(float(pairs.mean(axis=1).sum() / pairs.max(axis=1).sum())
                      if pairs.sum() > 0 else np.nan),
        steps=float(len(started)),
    )


def ep_window_records(sim: EpSimulation) -> list[WindowRecord]:
    """Per-window figures over ``[0, duration)`` (warm-up included, for plots)."""
    width = sim.window
    count = int(np.ceil(sim.end / width))
    finished: list[list[float]] = [[] for _ in range(count)]
    for r in sim.requests:
        if not np.isnan(r.finish_s) and int(r.finish_s // width) < count:
            finished[int(r.finish_s // width)].append((r.finish_s - r.arrival) * 1e3)
    produced = np.zeros(count)
    for st in sim.steps:
        w = int(st.end_s // width)
        if w < count:
            produced[w] += st.output_tokens
    replicas = int(sim.replica_count.sum())
    out = []
    for w in range(count):
        lat = np.array(finished[w])
        out.append(WindowRecord(
            window_start_s=w * width,
            p99_ms=float(np.percentile(lat, 99)) if len(lat) else np.nan,
            requests_finished=len(lat),
            throughput_tok_s=produced[w] / width,
            max_link_util=float(sim.link_win[w].max() / width) if sim.link_win.shape[1] else 0.0,
            replicas=replicas, replication_bytes_in_flight=0.0))
    return out
