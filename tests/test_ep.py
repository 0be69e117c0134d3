"""serving=ep: analytic step times, batching, balance, conservation, Little's law, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helios.cell import prepare, run_cell
from helios.config import EpServingConfig
from helios.placement.cache import obtain_placement
from helios.sim.ep.engine import EpSimulation
from helios.sim.ep.roofline import step_costs
from helios.sim.ep.step import LayerTraffic, StepBuilder
from helios.sim.kernel import LinkState
from helios.topology import fat_tree
from tests._configs import TINY_EP
from tests._configs import config as _config


def config(*overrides):
    return _config(*overrides, base=TINY_EP)

NIC = 50e9  # 400 Gb/s


def _run(cluster, plan, chunk=16 * 1024):
    arrays = plan.graph.arrays()
    return LinkState(cluster, chunk, window=10.0, horizon=10.0).run(arrays), arrays


def _uniform_traffic(G, tokens):
    per_gpu = np.full((G, G), tokens)
    np.fill_diagonal(per_gpu, 0)
    return LayerTraffic(per_gpu, per_gpu, np.zeros((G, 1)), per_gpu.sum(0), np.full(G, 8))


def test_uniform_dispatch_takes_bytes_per_nic_over_its_bandwidth_plus_path_latency():
    # 2 servers x 8 GPUs, a NIC per GPU, a fabric that never limits: each GPU sends
    # 8 remote messages through its own NIC (and 7 over NVLink, 9x faster).
    cluster = fat_tree(2, gpus_per_server=8, nic_per_gpu=True, nic_bandwidth=NIC,
                       fabric_bandwidth=1e15, seed=0)
    G, tokens, token_bytes = cluster.num_gpus, 512, 7168.0
    builder = StepBuilder(G, 8, "per_gpu", token_bytes, 2 * token_bytes)
    zero = np.zeros(G)
    gemm = np.full(G, 1e-4)
    plan = builder.build(0.0, zero, [[zero]], [[gemm]], [[_uniform_traffic(G, tokens)]], zero)
    finish, arrays = _run(cluster, plan)
    kind = arrays[0]
    gemm_ids = np.flatnonzero(kind == 0)[3 * G:4 * G]  # pre, tail, attn, gemm in build order
    dispatch_done = finish[gemm_ids] - 1e-4
    remote = cluster.route(0, G - 1)
    expected = 8 * tokens * token_bytes / NIC + cluster.link_latency[list(remote)].sum()
    np.testing.assert_allclose(dispatch_done, expected, rtol=0.02)


def test_a_hotter_expert_raises_the_step_by_its_ranks_extra_gemm_time():
    cfg = config()
    costs = step_costs(cfg.model, cfg.gpu, cfg.serving)
    cluster = fat_tree(2, gpus_per_server=4, nic_per_gpu=True, nic_bandwidth=1e15,
                       nvlink_bandwidth=1e15, fabric_bandwidth=1e15, nvlink_latency=0.0,
                       link_latency=0.0, seed=0)
    G = cluster.num_gpus
    builder = StepBuilder(G, 4, "per_gpu", 1024.0, 2048.0)
    zero = np.zeros(G)
    traffic = _uniform_traffic(G, 64)
    attn = costs.attention(np.full(G, 64.0), np.full(G, 64.0 * 128))

    def step(pairs):
        gemm = costs.grouped_gemm(pairs, np.full(G, 2))
        plan = builder.build(0.0, zero, [[attn]], [[gemm]], [[traffic]], zero)
        finish, _ = _run(cluster, plan)
        return finish[plan.tail].max(), gemm

    base_pairs = np.full(G, 20000.0)  # compute-bound: above the ridge point
    hot_pairs = base_pairs.copy()
    hot_pairs[3] += 3 * 10000.0      # one of rank 3's two experts gets 4x its tokens
    base, gemm_base = step(base_pairs)
    hot, gemm_hot = step(hot_pairs)
    assert hot - base == pytest.approx(gemm_hot[3] - gemm_base[3], rel=0.02)


def test_batching_amortises_expert_weights_below_the_ridge_point():
    cfg = config("model=deepseek_v3", "topology.gpus_per_server=8")
    costs = step_costs(cfg.model, cfg.gpu, cfg.serving)
    ridge = costs.expert_weight_bytes * costs.flops_per_s / (
        costs.bytes_per_s * costs.expert_flops_per_pair)
    batches = np.array([1, 4, 16, 0.45 * ridge, 0.9 * ridge])
    per_token = costs.grouped_gemm(batches, np.ones_like(batches)) / batches
    assert np.all(np.diff(per_token) < 0)
    # Above the ridge point a token costs its arithmetic, whatever the batch.
    big = np.array([4 * ridge, 8 * ridge])
    flat = (costs.grouped_gemm(big, np.ones(2)) - costs.overhead_s) / big
    assert flat[0] == pytest.approx(flat[1], rel=0.05)


def _ep_sim(*overrides):
    cfg = config(*overrides)
    cluster, _spec, workload, ctx = prepare(cfg)
    placement, _ = obtain_placement(ctx, None)
    return EpSimulation(cluster, cfg, placement, workload).run()


@pytest.mark.parametrize("dispatch", ["per_gpu", "per_node", "per_expert"])
def test_tokens_and_bytes_are_conserved(dispatch):
    sim = _ep_sim(f"serving.dispatch={dispatch}", "sim.drain_s=2")
    assert sim.pairs_dispatched == sim.pairs_computed > 0
    # Every request finished with all its prompt prefilled and all its output produced,
    # and the steps produced exactly those tokens.
    assert all(r.prefilled == r.prompt and r.generated == r.output for r in sim.requests)
    assert sum(s.output_tokens for s in sim.steps) == sum(r.output for r in sim.requests)
    assert sum(s.prefill_tokens for s in sim.steps) == sum(r.prompt for r in sim.requests)
    # Bytes on links = bytes of the messages times the hops of their routes.
    assert sim.network_bytes > 0
    assert sim.link_bytes.sum() == pytest.approx(sim.hop_bytes, rel=1e-12)


@pytest.mark.parametrize("overlap", ["none", "two_batch"])
def test_step_records_sum_the_compute_the_kernel_ran(overlap):
    # The records add up cost arrays; the kernel meters the compute tasks it ran.
    sim = _ep_sim(f"serving.overlap={overlap}", "sim.drain_s=2")
    recorded = sum(s.compute_mean_s for s in sim.steps) * sim.num_gpus
    assert recorded == pytest.approx(sim.links.gpu_win.sum(), rel=1e-9)
    # No rank computes for longer than its step lasts (one-token steps are all compute).
    assert all(s.gemm_max_s < s.compute_max_s <= (s.end_s - s.start_s) * (1 + 1e-9)
               for s in sim.steps)


def test_relay_pieces_change_timing_not_bytes():
    from helios.sim.ep.step import layer_traffic

    rng = np.random.default_rng(0)
    G, E = 16, 64
    src = np.repeat(np.arange(G), 50)
    experts = np.argsort(rng.random((src.size, E)), axis=1)[:, :4]
    traffic = layer_traffic(src, experts // (E // G), experts, G, 8, E)
    zero = np.zeros(G)
    totals = []
    for pieces in (1, 8):
        builder = StepBuilder(G, 8, "per_node", 7168.0, 14336.0, relay_chunks=pieces)
        plan = builder.build(0.0, zero, [[zero]], [[zero]], [[traffic]], zero)
        totals.append(plan.network_bytes)
    assert totals[0] == totals[1] > 0


def test_littles_law_from_sampled_queue_lengths():
    # 0.25 s measured (~300 requests, L ~ 10): L and lambda*W agree within 2.8% on seeds
    # 0-4 (within 1.1% over 0.7 s)
    sim = _ep_sim("scenario.rate=1200", "serving.output_tokens=64", "sim.duration_s=0.35",
                  "sim.warmup_s=0.1", "sim.drain_s=0.5")
    samples = np.array(sim.queue_samples)
    inside = (samples[:, 0] >= sim.start) & (samples[:, 0] < sim.end)
    L = samples[inside, 1].mean()
    measured = [r for r in sim.requests if sim.start <= r.arrival < sim.end]
    lam = len(measured) / (sim.end - sim.start)
    W = np.mean([r.finish_s - r.arrival for r in measured])
    assert L > 1  # requests overlap: the check is not trivial
    assert L == pytest.approx(lam * W, rel=0.05)


@pytest.mark.parametrize("topology", ["fat_tree", "dragonfly"])
def test_eplb_and_helios_steps_are_faster_than_round_robin_under_skew(topology, run_cells):
    # Every rank runs full prefill chunks, so that attention is even across ranks and
    # the grouped GEMMs are compute-bound: the busiest GPU paces each layer. The default
    # clusters: EP16 on the fat-tree, 48 GPUs on the dragonfly.
    common = (f"topology={topology}", "model=deepseek_v3", "sim.layers=8",
              "scenario.popularity=zipf", "scenario.zipf_s=1.0", "scenario.rate=400", "serving.prompt_tokens=2048",
              "serving.output_tokens=2", "sim.duration_s=0.5", "sim.warmup_s=0.1",
              "sim.drain_s=0.1", "sim.window_s=0.05")
    strategies = ("round_robin", "eplb", "helios_static")
    rows = run_cells([_config(*common, f"strategy={name}", f"seed={seed}", base=())
                      for seed in (0, 1, 2) for name in strategies])
    for seed in (0, 1, 2):
        rr, ep, helios = rows[3 * seed:3 * seed + 3]
        assert ep["step_ms_mean"] < 0.9 * rr["step_ms_mean"]
        assert ep["balancedness"] > rr["balancedness"]
        # The load-aware MILP on the same memory (EPLB's redundant count), proven within 1%:
        # never slower than EPLB, the strongest baseline, and better balanced.
        assert helios["ilp_status"] == "optimal"
        assert helios["step_ms_mean"] <= ep["step_ms_mean"]
        assert helios["balancedness"] > ep["balancedness"]


def test_same_config_and_seed_give_identical_rows():
    cfg = config("seed=4", "sim.duration_s=0.25")
    volatile = {"sim_s", "placement_s", "host", "finished_at"}
    a, b = (run_cell(cfg, cache=False).tables for _ in range(2))
    for table in ("cells", "timeseries"):
        frame_a = pd.DataFrame(a[table]).drop(columns=list(volatile), errors="ignore")
        frame_b = pd.DataFrame(b[table]).drop(columns=list(volatile), errors="ignore")
        pd.testing.assert_frame_equal(frame_a, frame_b)


def test_two_batch_overlap_hides_communication():
    slow_net = ("topology.nic_gbit_s=25", "scenario.rate=300", "sim.duration_s=0.2")  # 2-3% on seeds 0-2
    plain = _ep_sim(*slow_net)
    overlapped = _ep_sim(*slow_net, "serving.overlap=two_batch")
    mean = lambda sim: np.mean([s.end_s - s.start_s for s in sim.steps if s.decode_tokens])  # noqa: E731
    assert mean(overlapped) < mean(plain)


def test_ep_serving_config_defaults_are_the_yaml_defaults():
    assert config().serving.dispatch == EpServingConfig().dispatch


def test_the_compiled_gate_draws_the_same_distribution_as_the_reference_sampler():
    from helios.sim.ep.gate import fast_top_k
    from helios.popularity import zipf_popularity
    from helios.workload import sample_top_k

    probs = zipf_popularity(32, 1.2, np.random.default_rng(0).permutation(32))
    fast = fast_top_k(probs, 40_000, 4, np.random.default_rng(1))
    ref = sample_top_k(probs, 40_000, 4, np.random.default_rng(2))
    assert all(len(set(row)) == 4 for row in fast[:500].tolist())
    f = np.bincount(fast.ravel(), minlength=32) / fast.size
    r = np.bincount(ref.ravel(), minlength=32) / ref.size
    # inclusion shares agree within sampling noise (~0.1% absolute at this size)
    np.testing.assert_allclose(f, r, atol=4e-3)


def test_weighted_routing_sends_each_replica_its_share():
    """Expert 0 on GPUs 0 and 5 with shares 0.7 / 0.3: the gate's choices split so."""
    cfg = config("strategy.routing=weighted")
    cluster, _spec, workload, ctx = prepare(cfg)
    placement, _ = obtain_placement(ctx, None)
    placement.replicas[0][0] = [0, 5]
    placement.shares = [[[1.0 / len(g)] * len(g) for g in layer] for layer in placement.replicas]
    placement.shares[0][0] = [0.7, 0.3]
    sim = EpSimulation(cluster, cfg, placement, workload)
    tokens = np.full(cluster.num_gpus, 4000.0)
    popularity = workload.scenario.popularity(0.0)
    src, gpu, experts = sim._gate(tokens, popularity)[0]
    chosen = gpu[experts == 0]
    assert set(np.unique(chosen)) == {0, 5}
    assert np.mean(chosen == 0) == pytest.approx(0.7, abs=0.03)
    # the split is the same from every rank (as the placement model assumes)
    for rank in (0, 3, 6):
        assert np.mean(gpu[(experts == 0) & (src[:, None] == rank)] == 0) == pytest.approx(0.7, abs=0.1)


def test_telemetry_window_is_the_newest_seen_one():
    from helios.sim.routing import telemetry_window

    # window 0 is [0, 0.05): it ended at 0.05 and is seen one window later, at 0.1
    assert telemetry_window(0.099, 0.05, None) == -1
    assert telemetry_window(0.1, 0.05, None) == 0
    assert telemetry_window(0.1, 0.05, 0.0) == 1
    assert telemetry_window(0.26, 0.05, 0.02) == 3  # window 3 ended at 0.2, seen from 0.22


def _two_copy_sim(router: str):
    """Expert 0 of layer 0 on GPU 0 (rank 1's server) and GPU 5 (the other server)."""
    cfg = config(f"strategy.routing={router}", "sim.window_s=0.05")
    cluster, _spec, workload, ctx = prepare(cfg)
    placement, _ = obtain_placement(ctx, None)
    placement.replicas[0][0] = [0, 5]
    placement.shares = None
    return cluster, workload, EpSimulation(cluster, cfg, placement, workload)


@pytest.mark.parametrize("router", ["congestion_aware", "oracle_congestion"])
def test_congestion_routers_turn_from_a_busy_path_to_an_idle_one(router):
    cluster, workload, sim = _two_copy_sim(router)
    src = 1
    busy = cluster.route(src, 0)[-1]  # the NVLink into GPU 0
    assert busy not in cluster.route(src, 5) + cluster.route(5, src)
    assert sim.replicas.nearest[0][src, 0] == 0  # idle: the copy in its own server
    if router == "congestion_aware":
        sim.links.link_win[0, busy] = 0.9 * sim.window  # 90% busy in window 0, [0, 0.05)
        sim.replicas.refresh(sim.links, 0.099, sim.cfg.telemetry.delay_s)
        assert sim.replicas.nearest[0][src, 0] == 0  # window 0 is not yet seen (one window late)
        sim.replicas.refresh(sim.links, 0.1, sim.cfg.telemetry.delay_s)
    else:
        sim.links.link_free[busy] = 1e-3  # 1 ms of weight copies queued on it now
        sim.replicas.refresh(sim.links, 0.0, sim.cfg.telemetry.delay_s)
    assert sim.replicas.nearest[0][src, 0] == 5
    tokens = np.full(cluster.num_gpus, 200.0)
    src_of, gpu, experts = sim._gate(tokens, workload.scenario.popularity(0.0))[0]
    mine = (experts == 0) & (src_of[:, None] == src)
    assert mine.any() and (gpu[mine] == 5).all()
    if router == "oracle_congestion":
        sim.replicas.refresh(sim.links, 2e-3, sim.cfg.telemetry.delay_s)  # the queue has drained
        assert sim.replicas.nearest[0][src, 0] == 0


@pytest.mark.parametrize("router", ["congestion_aware", "oracle_congestion"])
def test_congestion_routed_cells_conserve_tokens(router):
    sim = _ep_sim("strategy=helios_static", f"strategy.routing={router}", "sim.drain_s=2")
    assert sim.pairs_dispatched == sim.pairs_computed > 0
    assert all(r.generated == r.output for r in sim.requests)


@pytest.mark.parametrize("dispatch,ranks,tokens", [("per_expert", 16, 128), ("per_node", 16, 512)])
def test_the_fixed_phase_cost_adds_exactly_once_per_dispatch_and_combine(dispatch, ranks, tokens):
    """serving.phase_overhead_us sits between a phase's last arrival and what waits for it:
    each of DeepEP's phases, timed as its benchmark times them, grows by exactly that."""
    from helios.bench.deepep import BF16_BYTES, FP8_BYTES, simulate

    groups = None if dispatch == "per_expert" else 2
    d0, c0, _ = simulate(ranks, tokens, dispatch, FP8_BYTES, BF16_BYTES, groups, 1)
    d1, c1, _ = simulate(ranks, tokens, dispatch, FP8_BYTES, BF16_BYTES, groups, 1, 40e-6)
    assert d1 - d0 == pytest.approx(40e-6, rel=1e-6)
    assert c1 - c0 == pytest.approx(40e-6, rel=1e-6)


def test_the_fixed_phase_cost_lengthens_every_step_by_two_per_layer():
    """Idle ranks included, every layer of a step pays it twice (dispatch, combine): on a
    light load the mean step grows by 2 x layers x the cost, within the small shifts the
    longer steps cause in batching."""
    base = ("scenario.rate=100", "sim.layers=2")
    cost_us = 200.0
    steps = [run_cell(config(*base, f"serving.phase_overhead_us={c}"), cache=False)
             .tables["cells"][0]["step_ms_mean"] for c in (0.0, cost_us)]
    assert steps[1] - steps[0] == pytest.approx(2 * 2 * cost_us / 1e3, rel=0.1)
