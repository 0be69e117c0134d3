"""The SimPy engine against queueing theory, conservation laws and sanity checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import simpy

from _configs import config
from helios.cell import prepare, run_cell
from helios.placement import place
from helios.sim.engine import Simulation
from helios.sim.network import LinkMeter, Network

TIMING = ("sim_s", "placement_s", "placement_cache", "host", "git_sha", "finished_at")


def simulate(cfg):
    cluster, spec, workload, ctx = prepare(cfg)
    return Simulation(cluster, spec, place(ctx), workload, cfg.sim,
                      routing=cfg.strategy.routing).run()


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.8])
def test_single_link_matches_md1_waiting_time(rho):
    """Poisson arrivals of fixed-size messages on one FIFO link form an M/D/1 queue.

    Pollaczek-Khinchine: mean wait Wq = rho / (2 mu (1 - rho)) with service rate mu.
    """
    bandwidth, size, latency = 1e9, 1e5, 2e-6
    service = size / bandwidth
    lam = rho / service
    n = 200_000
    rng = np.random.default_rng(12345)
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    horizon = arrivals[-1] + 1.0
    env = simpy.Environment()
    meter = LinkMeter(1, 1.0, horizon, 0.0, horizon)
    net = Network(env, lambda s, d: (0,), [bandwidth], [latency], chunk_bytes=size, meter=meter)
    waits = np.empty(n)

    def source(env):
        for i, t in enumerate(arrivals):
            yield env.timeout(t - env.now)
            sent = env.now
            net.send(0, 1, size, lambda i=i, sent=sent: waits.__setitem__(
                i, env.now - sent - service - latency))

    env.process(source(env))
    env.run()
    expected = rho / (2 * (1 / service) * (1 - rho))
    measured = waits[n // 10:].mean()  # drop the transient from an empty queue
    assert measured == pytest.approx(expected, rel=0.05)
    assert meter.bytes_total[0] == pytest.approx(n * size)


def test_littles_law_from_sampled_queue_lengths():
    """Requests in the system, sampled on a clock of its own, average to lambda x W."""
    cfg = config("sim.duration_s=0.6", "sim.warmup_s=0.1", "scenario.rate=3000")
    cluster, spec, workload, ctx = prepare(cfg)
    sim = Simulation(cluster, spec, place(ctx), workload, cfg.sim)
    samples = []

    def sampler(env):
        while True:
            if sim.start <= env.now < sim.end:
                samples.append(sim._in_system)
            yield env.timeout(1e-5)

    sim.env.process(sampler(sim.env))
    sim.run()
    latencies = np.array([r.latency_ms / 1e3 for r in sim.records if sim.start <= r.arrival_s < sim.end])
    assert len(latencies) == len(sim.measured)  # the cell drained
    lam = len(latencies) / (sim.end - sim.start)
    L = np.mean(samples)
    assert L > 1  # requests overlap, so the check is not trivial
    assert L == pytest.approx(lam * latencies.mean(), rel=0.05)


def test_tokens_and_bytes_are_conserved():
    cfg = config("strategy=greedy")
    cluster, spec, workload, ctx = prepare(cfg)
    sim = Simulation(cluster, spec, place(ctx), workload, cfg.sim)
    sent = []
    original = sim.network.send
    sim.network.send = lambda s, d, b, cb: (sent.append((s, d, b)), original(s, d, b, cb))[1]
    sim.run()
    assert len(sim.records) > 50
    # every dispatched token-expert pair is computed once and combined back
    assert sim.pairs_dispatched == sim.gpus.pairs_computed == sim.pairs_combined
    assert sim.pairs_dispatched == sum(r.tokens for r in sim.records) * spec.top_k * sim.layers
    # bytes sent equal bytes received, and every link carried each message crossing it
    assert sim.network.bytes_sent == pytest.approx(sim.network.bytes_delivered)
    per_hop = sum(b * len(cluster.route(s, d)) for s, d, b in sent)
    assert sum(sim.link_meter.bytes_total) == pytest.approx(per_hop)
    cross = sum(b for s, d, b in sent if cluster.gpu_server[s] != cluster.gpu_server[d])
    assert sim.cross_server_bytes == pytest.approx(cross)


def test_link_and_window_utilisation_are_fractions():
    sim = simulate(config("scenario.rate=1500"))
    util = sim.link_meter.utilisation()
    windows = sim.link_meter.window_utilisation()
    assert util.max() > 0.05
    assert (util >= 0).all() and (util <= 1 + 1e-9).all()
    assert (windows >= 0).all() and (windows <= 1 + 1e-9).all()


def _message_seconds(cluster, src, dst, nbytes, chunk):
    """Store-and-forward time of one message on an idle network (at most one chunk here)."""
    assert nbytes <= chunk
    return sum(nbytes / cluster.link_bandwidth[l] + cluster.link_latency[l]
               for l in cluster.route(src, dst))


def test_an_isolated_request_takes_exactly_its_analytic_time():
    """With one request in the system at a time and one token (top-1), latency = sum over
    layers of dispatch + expert batch + combine on the idle network, from the gate alone."""
    cfg = config("scenario.rate=20", "scenario.tokens_per_request=1", "model.top_k=1",
                 "sim.duration_s=1.0",
                 "sim.warmup_s=0.01", "sim.window_s=0.01", "sim.drain_s=0.1")
    cluster, spec, workload, ctx = prepare(cfg)
    sim = Simulation(cluster, spec, place(ctx), workload, cfg.sim)
    sim.dispatch_log = []
    gates = {}
    dispatch = sim._dispatch

    def recording(req, layer, done):
        gates.setdefault(req.rid, {})[layer] = req.experts[layer]
        dispatch(req, layer, done)

    sim._dispatch = recording
    sim.run()
    records = sorted(sim.records, key=lambda r: r.arrival_s)
    assert len(records) >= 10
    # isolated: each request finished before the next arrived
    assert all(a.finish_s < b.arrival_s for a, b in zip(records, records[1:]))
    chunk = cfg.sim.chunk_kib * 1024
    remote = 0
    for rec in records:
        entries = [e for e in sim.dispatch_log if rec.arrival_s <= e[0] <= rec.finish_s]
        total = 0.0
        for layer in range(sim.layers):
            rows = [e for e in entries if e[1] == layer]
            per_gpu: dict[int, list[int]] = {}
            for _t, _l, _e, g, n in rows:
                per_gpu.setdefault(g, []).append(n)
            worst = 0.0
            for g, pairs in per_gpu.items():
                remote += g != rec.home_gpu
                # a token goes once to each GPU that serves any of its experts
                tokens = int(sum(g in set(sim._primary[layer][row].tolist())
                                 for row in gates[rec.rid][layer]))
                out = _message_seconds(cluster, rec.home_gpu, g, tokens * spec.dispatch_token_bytes, chunk) \
                    if g != rec.home_gpu else 0.0
                back = _message_seconds(cluster, g, rec.home_gpu, tokens * spec.combine_token_bytes, chunk) \
                    if g != rec.home_gpu else 0.0
                worst = max(worst, out + sum(spec.batch_seconds(np.array(pairs))) + back)
            total += worst
        assert rec.latency_ms == pytest.approx(total * 1e3, rel=1e-9)
    assert remote > 0  # the network part was exercised


def _row(cfg):
    row = run_cell(cfg).tables["cells"][0]
    return {k: v for k, v in row.items() if k not in TIMING}


def test_same_config_and_seed_give_identical_records():
    cfg = config("seed=7")
    first, second = run_cell(cfg), run_cell(cfg)
    for table in ("cells", "timeseries"):
        pd.testing.assert_frame_equal(
            pd.DataFrame(first.tables[table]).drop(columns=list(TIMING), errors="ignore"),
            pd.DataFrame(second.tables[table]).drop(columns=list(TIMING), errors="ignore"))
    assert _row(config("seed=8"))["p99_ms"] != first.tables["cells"][0]["p99_ms"]


def test_doubling_bandwidth_lowers_p99_on_a_network_bound_cell():
    slow = ("scenario.rate=1200",)
    fast = ("topology.nic_gbit_s=100", "topology.fabric_gbit_s=100", "topology.nvlink_gbyte_s=900",
            "scenario.rate=1200")
    assert _row(config(*fast))["p99_ms"] < _row(config(*slow))["p99_ms"]


def test_raising_the_request_rate_raises_p99():
    low, high = _row(config("scenario.rate=300")), _row(config("scenario.rate=2400"))
    assert high["p99_ms"] > low["p99_ms"]
    assert high["max_link_util"] > low["max_link_util"]


def test_overload_reports_unfinished_requests_as_infinite_latency():
    row = _row(config("scenario.rate=40000", "sim.drain_s=0.0", "sim.duration_s=0.1",
                      "sim.warmup_s=0.02", "sim.window_s=0.01"))
    assert row["requests_unfinished"] > 0
    assert row["p99_ms"] == float("inf")
    assert row["slo_attainment"] < 1


def test_cells_row_has_the_contract_columns():
    row = run_cell(config()).tables["cells"][0]
    for column in ("sweep", "cell_id", "topology", "model", "scenario", "strategy", "seed",
                   "p50_ms", "p90_ms", "p99_ms", "mean_ms", "goodput_tok_s", "throughput_tok_s",
                   "slo_attainment", "max_link_util", "peak_window_link_util", "cross_server_bytes",
                   "gpu_load_imbalance", "replicas_added", "replicas_evicted", "replication_bytes",
                   "placement_cache", "placement_s", "ilp_status", "ilp_gap", "sim_s", "events",
                   "helios_version", "git_sha", "host", "cfg.topology.k", "cfg.sim.duration_s"):
        assert column in row
    assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["goodput_tok_s"] <= row["throughput_tok_s"]
    assert row["peak_window_link_util"] >= row["max_link_util"] - 1e-9


def test_cell_id_ignores_output_location_but_not_the_seed():
    cfg = config()
    from helios.cell import cell_id
    moved = dataclasses.replace(cfg, output_dir="/elsewhere", sweep="other")
    assert cell_id(moved) == cell_id(cfg)
    assert cell_id(dataclasses.replace(cfg, seed=cfg.seed + 1)) != cell_id(cfg)
