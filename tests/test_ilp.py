"""Tests of the Helios placement ILP (helios.placement.ilp, helios.placement.ilp_costs)."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom

from helios import topology
from helios.config import GpuConfig, IlpConfig, ModelConfig, StrategyConfig
from helios.errors import ConfigError
from helios.moe import model_spec
from helios.placement import ilp
from helios.placement.base import PlacementContext
from helios.placement.baselines import greedy
from helios.placement.ilp_costs import build_costs, expert_busy_seconds, local_search, warm_start
from helios.topology import Cluster

HAVE_HIGHS = importlib.util.find_spec("highspy") is not None


def with_bandwidth(cluster: Cluster, changes: dict[tuple[str, str], float]) -> Cluster:
    """A copy of ``cluster`` whose named directed links get new bandwidths."""
    bw = cluster.link_bandwidth.copy()
    for edge, value in changes.items():
        bw[cluster.links.index(edge)] = value
    fields = {f.name: getattr(cluster, f.name) for f in dataclasses.fields(cluster)}
    return Cluster(**{**fields, "link_bandwidth": bw})


def slow_gpu_cluster() -> Cluster:
    """2 servers x 2 GPUs (k=2 fat-tree); GPU 1's NVLink runs at 1 GB/s each way."""
    base = topology.fat_tree(2, gpus_per_server=2)
    return with_bandwidth(base, {("gpu1", "nvs0"): 1e9, ("nvs0", "gpu1"): 1e9})


def context(cluster: Cluster, load: np.ndarray, slots: int, share=None, tokens: float = 64,
            top_k: int = 2, **ilp_opts) -> PlacementContext:
    spec = model_spec(ModelConfig(name="t", num_experts=load.shape[1], top_k=top_k,
                                  hidden_size=1024, expert_intermediate_size=1024,
                                  num_moe_layers=4, param_bytes=2, dispatch_bytes=2,
                                  combine_bytes=2), GpuConfig())
    share = np.full(cluster.num_gpus, 1 / cluster.num_gpus) if share is None else np.asarray(share)
    return PlacementContext(cluster=cluster, spec=spec, expected_load=np.asarray(load, float),
                            source_share=share, slots_per_gpu=slots,
                            strategy=StrategyConfig(name="helios_static", ilp=IlpConfig(**ilp_opts)),
                            tokens_per_request=tokens)


def brute_force(costs, num_gpus: int, slots: int) -> float:
    """Least objective over every assignment that respects the memory slots."""
    L, E = costs.busy.shape
    best = math.inf
    for flat in itertools.product(range(num_gpus), repeat=L * E):
        assign = np.array(flat).reshape(L, E)
        if max(np.bincount(row, minlength=num_gpus).max() for row in assign) > slots:
            continue
        best = min(best, costs.objective(assign))
    return best


# ---------------------------------------------------------------------------- cost model
def test_busy_seconds_equals_the_binomial_expectation():
    spec = model_spec(ModelConfig(), GpuConfig())
    pi = np.array([0.0, 1e-4, 0.02, 0.3, 0.97, 1.0])
    for tokens in (1, 7, 128, 700):
        n = np.arange(tokens + 1)
        direct = (binom.pmf(n[None, :], tokens, pi[:, None]) * spec.batch_seconds(n)[None, :]).sum(1)
        assert np.allclose(expert_busy_seconds(pi, tokens, spec), direct, rtol=1e-9, atol=1e-15)


def test_terms_match_a_first_principles_computation():
    """Network time, link utilisation and GPU time recomputed from routes and latencies."""
    cluster = slow_gpu_cluster()
    rng = np.random.default_rng(3)
    load = rng.uniform(1, 10, size=(2, 5)) * 1e4
    share = np.array([0.4, 0.3, 0.2, 0.1])
    ctx = context(cluster, load, slots=3, share=share, tokens=48)
    costs = build_costs(ctx)
    spec, G, k, T = ctx.spec, 4, 2, 48
    pi = np.clip(k * load / load.sum(1, keepdims=True), 0, 1 - 1e-9)
    m = min(T, T * k / min(G, 5))
    # per token: the slower direction of a representative message (full duplex)
    tau = np.array([sum(share[s] * max(cluster.path_latency(s, g, m * spec.dispatch_token_bytes),
                                       cluster.path_latency(g, s, m * spec.combine_token_bytes)) / m
                        for s in range(G)) for g in range(G)])
    tokens_per_s = load.sum(1).mean() / k
    for _ in range(20):
        assign = rng.integers(0, G, size=(2, 5))
        # sends per token: the model's piecewise-linear f of the summed intensity
        h = np.array([[np.interp(-np.log1p(-pi[l][assign[l] == g]).sum(), costs.breaks, costs.values)
                       for g in range(G)] for l in range(2)])
        network = (h @ tau).mean() / (k * tau.mean())
        link_bytes = np.zeros(cluster.num_links)
        for g in range(G):
            for s in range(G):
                for i in cluster.route(s, g):
                    link_bytes[i] += h[:, g].sum() * share[s] * spec.dispatch_token_bytes
                for i in cluster.route(g, s):
                    link_bytes[i] += h[:, g].sum() * share[s] * spec.combine_token_bytes
        congestion = (link_bytes * tokens_per_s / cluster.link_bandwidth).max()
        busy = expert_busy_seconds(pi, T, spec)
        compute = np.mean([max(busy[l][assign[l] == g].sum() for g in range(G)) for l in range(2)])
        compute /= T * k * tau.mean()
        assert np.allclose(costs.terms(assign), (network, congestion, compute), rtol=1e-9)


def test_sends_per_token_is_concave_and_exact_at_breakpoints():
    costs = build_costs(context(topology.fat_tree(2, gpus_per_server=2),
                                np.array([[9.0, 5, 3, 2, 1]]), slots=5))
    assert np.allclose(costs.values, 1 - np.exp(-costs.breaks))
    slopes = np.diff(costs.values) / np.diff(costs.breaks)
    assert np.all(np.diff(slopes) < 0)
    assert costs.breaks[-1] == pytest.approx(costs.intensity[0].sum())


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("layers, experts, slots", [(1, 6, 2), (2, 3, 2), (1, 5, 5)])
def test_ilp_optimum_equals_brute_force(layers, experts, slots):
    rng = np.random.default_rng(layers * 10 + experts)
    load = rng.zipf(1.6, size=(layers, experts)).astype(float) * 1e4 + rng.uniform(0, 1, (layers, experts))
    ctx = context(slow_gpu_cluster(), load, slots, share=[0.4, 0.3, 0.2, 0.1], tokens=48,
                  mip_gap=0.0, time_limit_s=60)
    costs = build_costs(ctx)
    best = brute_force(costs, 4, slots)
    assert costs.lower_bound(slots) <= best + 1e-12
    for start in (None, warm_start(costs, slots)):
        sol = ilp.solve_ilp(costs, slots, ctx.strategy.ilp, start)
        assert sol.status == "optimal"
        assert sol.objective == pytest.approx(best, rel=1e-6, abs=1e-9)
        assert costs.objective(sol.assign) == pytest.approx(best, rel=1e-6, abs=1e-9)
        assert np.bincount(sol.assign.ravel() + 4 * np.repeat(np.arange(layers), experts)).max() <= slots


@pytest.mark.skipif(not HAVE_HIGHS, reason="highspy not installed")
def test_highs_reaches_the_same_optimum():
    load = np.array([[40.0, 20, 9, 5, 3, 1]]) * 1e4
    ctx = context(slow_gpu_cluster(), load, 2, share=[0.4, 0.3, 0.2, 0.1], solver="highs", mip_gap=0.0)
    costs = build_costs(ctx)
    sol = ilp.solve_ilp(costs, 2, ctx.strategy.ilp)
    assert sol.status == "optimal"
    assert sol.objective == pytest.approx(brute_force(costs, 4, 2), rel=1e-6)


def test_highs_missing_is_a_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "highspy" else real(name, *a))
    ctx = context(slow_gpu_cluster(), np.array([[4.0, 3, 2, 1]]), 2, solver="highs", mip_gap=0.0)
    with pytest.raises(ConfigError) as err:
        ilp.solve_ilp(build_costs(ctx), 2, ctx.strategy.ilp)
    assert err.value.key == "strategy.ilp.solver"


# ---------------------------------------------------------------------------- ablation
def test_true_latency_and_hop_count_disagree_on_a_slow_link():
    """All tokens start on GPU 0. GPU 1 is 2 hops away behind a 1 GB/s NVLink, GPUs 2-3 are 8
    hops away over fast links: hop count prefers GPU 1, true latency avoids it, and the
    placement from true latency has the lower expected dispatch+combine time."""
    cluster = slow_gpu_cluster()
    assert cluster.hops(0, 1) < cluster.hops(0, 2)
    load = np.array([[50.0, 30, 20]]) * 1e4
    ctx = context(cluster, load, slots=1, share=[1, 0, 0, 0], tokens=64,
                  congestion_weight=0.0, compute_weight=0.0, mip_gap=0.0)
    static, hops = ilp.helios_static(ctx), ilp.helios_hops(ctx)
    used = lambda p: {g[0] for g in p.replicas[0]}  # noqa: E731
    assert 1 in used(hops) and 1 not in used(static)

    def expected_time(placement):  # per token: dispatch + combine of a representative message
        spec, m = ctx.spec, 64 * 2 / 3
        pi = 2 * load[0] / load[0].sum()
        return sum(p * (cluster.path_latency(0, g[0], m * spec.dispatch_token_bytes)
                        + cluster.path_latency(g[0], 0, m * spec.combine_token_bytes))
                   for p, g in zip(pi, placement.replicas[0]))

    assert expected_time(static) < 0.5 * expected_time(hops)


# ---------------------------------------------------------------------------- solver handling
def big_context(**ilp_opts) -> PlacementContext:
    cluster = topology.fat_tree(4, gpus_per_server=2)  # 32 GPUs
    rng = np.random.default_rng(0)
    load = 1e5 / np.arange(1, 129) ** 1.0
    load = np.stack([rng.permutation(load) for _ in range(2)])
    return context(cluster, load, slots=8, tokens=256, top_k=8, **ilp_opts)


def test_time_limit_records_the_status_and_a_valid_placement():
    ctx = big_context(time_limit_s=0.05, mip_gap=0.0)
    placement = ilp.helios_static(ctx)
    placement.validate(ctx.num_experts, ctx.slots_per_gpu)
    info = placement.info
    assert info["ilp_status"] in ("optimal", "feasible")
    assert info["ilp_proven_by"] == "solver"
    # the start is handed over, so a solution exists; the gap to a bound is known
    assert info["ilp_objective"] <= info["ilp_start_objective"] + 1e-6
    assert 0 <= info["ilp_gap"] < 1
    if info["ilp_status"] == "feasible":  # unproven: the machine-independent start is used
        costs = build_costs(ctx)
        start = local_search(costs, warm_start(costs, 8), 8)
        assert np.array_equal(np.array(placement.primary()), start)
    assert info["ilp_solve_s"] > 0 and info["ilp_build_s"] > 0


def test_no_solution_falls_back_to_greedy(monkeypatch):
    ctx = big_context(mip_gap=0.0)
    failed = ilp.IlpSolution(None, "not_solved", math.nan, math.nan, 0.1, 0.2)
    monkeypatch.setattr(ilp, "solve_ilp", lambda *a, **k: failed)
    placement = ilp.helios_static(ctx)
    assert placement.replicas == greedy(ctx).replicas
    assert placement.info["ilp_status"] == "fallback_greedy"
    assert placement.info["ilp_solver_status"] == "not_solved"
    assert math.isnan(placement.info["ilp_gap"])


def test_a_start_within_the_gap_skips_the_solver(monkeypatch):
    ctx = big_context(mip_gap=0.99)
    monkeypatch.setattr(ilp, "solve_ilp", lambda *a, **k: pytest.fail("solver called"))
    info = ilp.helios_static(ctx).info
    assert info["ilp_status"] == "optimal" and info["ilp_proven_by"] == "bound"
    assert info["ilp_gap"] <= 0.99


@pytest.mark.parametrize("text, expected", [
    ("Cbc0005I Partial search - best objective 2 (best possible 1.5), took 1 iterations\n"
     "Objective value: 2.0\nLower bound: 1.500\n", 0.25),
    ("Cbc0011I Exiting as integer gap of 0.1 less than 1e-10 or 5%\n"
     "Result - Optimal solution found (within gap tolerance)\nLower bound: 1.900\n", 0.05),
    ("Cbc0001I Search completed - best objective 2, took 5 iterations\n", 0.0),
    ("Continuous objective value is 1.8 - 0.1 seconds\nCbc0006I The LP relaxation is "
     "infeasible or too expensive\n", 0.1),
    ("nothing useful\n", math.nan),
])
def test_cbc_gap_is_read_from_the_log(tmp_path, text, expected):
    log = tmp_path / "cbc.log"
    log.write_text(text)
    gap = ilp._cbc_gap(log, 2.0)
    assert (math.isnan(gap) and math.isnan(expected)) or gap == pytest.approx(expected)


def test_local_search_never_worsens_and_keeps_memory():
    rng = np.random.default_rng(5)
    cluster = slow_gpu_cluster()
    for trial in range(5):
        load = rng.zipf(1.5, size=(2, 7)).astype(float) * 1e4
        ctx = context(cluster, load, slots=3, share=rng.dirichlet(np.ones(4)), tokens=96)
        costs = build_costs(ctx)
        start = rng.integers(0, 4, size=(2, 7))
        for row in start:  # make the random start respect 3 slots per GPU
            row[:] = rng.permutation(np.repeat(np.arange(4), 3))[:7]
        better = local_search(costs, start, 3)
        assert costs.objective(better) <= costs.objective(start) + 1e-12
        assert max(np.bincount(row, minlength=4).max() for row in better) <= 3
