"""The runtime adaptation engine (helios.sim.adaptation) and the replica routers."""

from __future__ import annotations

import collections
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import simpy

from _configs import config
from helios.cell import obtain_placement, prepare, run_cell
from helios.placement import place
from helios.sim.adaptation import HeliosEngine, make_controller
from helios.sim.adaptation.base import store_and_forward_s
from helios.sim.engine import Simulation
from helios.sim.network import LinkMeter, Network
from helios.sim.routing import ROUTERS, make_router
from helios.topology import fat_tree

#: Adaptation made busy on purpose: every GPU counts as congested, memory is tight
#: (3 expert slots per GPU and layer for 16 experts on 8 GPUs), experts cool fast, and
#: the popularity is skewed and shifts mid-run, so replications and cold evictions
#: happen in a 0.3 s run (and, with the greedy placement, one eviction for memory).
BUSY = ("strategy=helios_dynamic", "scenario=sudden_shift", "scenario.t_shift_s=0.1",
        "scenario.zipf_s=1.3", "sim.duration_s=0.3", "gpu.memory_gib=0.15",
        "strategy.adaptation.gpu_congested_util=0.001",
        "strategy.adaptation.link_congested_util=0.01",
        "strategy.adaptation.max_replicas_per_expert=4",
        "strategy.adaptation.cold_threshold=0.5", "strategy.adaptation.evict_after_windows=2",
        "strategy.ilp.time_limit_s=2")


class MemoryCache:
    """A placement store in memory: cells that share a placement key solve one ILP."""

    def __init__(self) -> None:
        self.store: dict = {}

    def get_or_solve(self, key, solve):
        hit = key in self.store
        if not hit:
            self.store[key] = solve()
        return self.store[key], hit


#: Shared by this module's cells (the ILP solves once per placement key).
CACHE = MemoryCache()


def initial_placement(cfg, strategy=None):
    ctx = prepare(cfg)[3]
    if strategy is not None:
        ctx = dataclasses.replace(ctx, strategy=dataclasses.replace(cfg.strategy, name=strategy))
    return place(ctx)


def simulate(cfg, probe=None, log=False, controller=None, placement=None):
    """Run ``cfg`` with its controller (or ``controller``); ``probe(sim)`` runs every 0.5 ms."""
    cluster, spec, workload, ctx = prepare(cfg)
    sim = Simulation(cluster, spec, placement or place(ctx), workload, cfg.sim,
                     routing=cfg.strategy.routing, controller=controller or make_controller(cfg))
    if log:
        sim.dispatch_log = []
    if probe is not None:
        def probing():
            while True:
                probe(sim)
                yield sim.env.timeout(5e-4)
        sim.env.process(probing())
    return sim.run()


@pytest.fixture(scope="module")
def busy_run():
    cfg = config(*BUSY)
    violations: list[str] = []

    def probe(sim):
        engine = sim.adaptation_engine
        cap = cfg.strategy.adaptation.max_replicas_per_expert
        for layer, row in enumerate(sim.replicas):
            held = np.zeros(sim.num_gpus, dtype=int)
            for expert, gpus in enumerate(row):
                incoming = [t.dst for t in engine.pending.get((layer, expert), [])]
                for g in gpus + incoming:
                    held[g] += 1
                if len(gpus) + len(incoming) > cap:
                    violations.append(f"t={sim.env.now} layer {layer} expert {expert}: "
                                      f"{len(gpus) + len(incoming)} replicas > cap {cap}")
                if len(set(gpus + incoming)) != len(gpus) + len(incoming):
                    violations.append(f"t={sim.env.now} layer {layer} expert {expert}: two copies on one GPU")
            if held.max() > sim.spec.slots_per_gpu:
                violations.append(f"t={sim.env.now} layer {layer}: {held.max()} slots used "
                                  f"> {sim.spec.slots_per_gpu}")
            if not np.array_equal(held, engine.held[layer]):
                violations.append(f"t={sim.env.now} layer {layer}: engine memory books differ")

    # greedy, not the ILP, under the engine: the test is about the engine, not the solver
    sim = simulate(cfg, probe=probe, log=True, placement=initial_placement(cfg, "greedy"))
    return cfg, sim, violations


def test_busy_config_exercises_every_action(busy_run):
    _, sim, _ = busy_run
    actions = collections.Counter(e["action"] for e in sim.adaptation_events)
    assert actions["transfer_start"] >= 5
    assert actions["replica_ready"] == actions["transfer_start"] == sim.replicas_added
    assert actions["evict_cold"] >= 1 and actions["evict_for_memory"] >= 1
    assert sim.replicas_evicted == actions["evict_cold"] + actions["evict_for_memory"]
    assert sim.replication_bytes == pytest.approx(actions["transfer_start"] * sim.spec.expert_bytes)
    assert sim.replication_bytes_in_flight == pytest.approx(0.0)


def test_memory_budget_and_replica_cap_never_exceeded(busy_run):
    cfg, sim, violations = busy_run
    assert sim.spec.slots_per_gpu == 3  # the budget the probe checks binds
    assert violations == []


def test_copies_never_exceed_the_migration_budget():
    """Under a budget B the copies put at most B x (t - t0) bytes, plus the piece just
    released, on the network by every release time t; and the budget paces them: at
    0.3 GB/s (5% of a 50G NIC) the releases span the time the budget needs for them."""
    budget = 0.3
    cfg = config(*BUSY, f"strategy.adaptation.migration_gbyte_s={budget}")
    sim = simulate(cfg, placement=initial_placement(cfg, "greedy"))
    engine, chunk = sim.adaptation_engine, sim.network.chunk
    starts = [e["time_s"] for e in sim.adaptation_events if e["action"] == "transfer_start"]
    ready = sum(e["action"] == "replica_ready" for e in sim.adaptation_events)
    assert len(starts) >= 5 and ready == len(starts)
    times, sizes = np.array(engine.budget_log).T
    assert sizes.max() == chunk and sizes.sum() == pytest.approx(sim.replication_bytes)
    released = np.cumsum(sizes)
    assert (released <= budget * 1e9 * (times - starts[0]) + chunk + 1.0).all()
    assert times[-1] - starts[0] >= 0.9 * (released[-1] - chunk) / (budget * 1e9)


def test_event_replay_respects_memory_and_cap(busy_run):
    """Replaying the events from the initial placement never over-fills a GPU or an expert."""
    cfg, sim, _ = busy_run
    initial = initial_placement(cfg, "greedy").replicas
    held = [collections.Counter(g for gpus in row for g in gpus) for row in initial]
    count = collections.Counter({(l, e): len(g) for l, row in enumerate(initial) for e, g in enumerate(row)})
    for ev in sim.adaptation_events:
        key = (ev["layer"], ev["expert"])
        if ev["action"] == "transfer_start":
            held[ev["layer"]][ev["to_gpu"]] += 1
            count[key] += 1
        elif ev["action"].startswith("evict"):
            held[ev["layer"]][ev["from_gpu"]] -= 1
            count[key] -= 1
            assert count[key] >= 1, f"last replica of {key} evicted at {ev['time_s']}"
        assert max(held[ev["layer"]].values()) <= sim.spec.slots_per_gpu
        assert count[key] <= cfg.strategy.adaptation.max_replicas_per_expert


def serving_violations(initial, sim) -> list[tuple]:
    """Dispatch-log entries sent to a GPU that did not serve that expert at that time.

    A replica serves from its ``replica_ready`` event (the initial ones from 0) to its
    eviction, both ends included (events at one instant have no order among them).
    """
    serving: dict[tuple[int, int, int], list[list[float]]] = collections.defaultdict(list)
    for layer, row in enumerate(initial):
        for expert, gpus in enumerate(row):
            for g in gpus:
                serving[(layer, expert, g)].append([0.0, np.inf])
    for ev in sim.adaptation_events:
        if ev["action"] == "replica_ready":
            serving[(ev["layer"], ev["expert"], ev["to_gpu"])].append([ev["time_s"], np.inf])
        elif ev["action"].startswith("evict"):
            interval = serving[(ev["layer"], ev["expert"], ev["from_gpu"])][-1]
            assert interval[1] == np.inf
            interval[1] = ev["time_s"]
    return [(t, l, e, g) for t, l, e, g, _ in sim.dispatch_log
            if not any(start <= t <= end for start, end in serving.get((l, e, g), []))]


def test_replicas_serve_only_between_arrival_and_eviction(busy_run):
    """No token is dispatched to a replica before its weights arrived or after its eviction."""
    cfg, sim, _ = busy_run
    assert serving_violations(initial_placement(cfg, "greedy").replicas, sim) == []
    # the check has teeth: replicas that arrived late did get tokens after arriving, and
    # evicted ones had got tokens before
    late = {(ev["layer"], ev["expert"], ev["to_gpu"]) for ev in sim.adaptation_events
            if ev["action"] == "replica_ready"}
    gone = {(ev["layer"], ev["expert"], ev["from_gpu"]) for ev in sim.adaptation_events
            if ev["action"].startswith("evict")}
    used = {(l, e, g) for _, l, e, g, _ in sim.dispatch_log}
    assert late & used and gone & used


def test_window_samples_show_replicas_and_transfers(busy_run):
    _, sim, _ = busy_run
    width = sim.cfg.window_s
    starts = [e["time_s"] for e in sim.adaptation_events if e["action"] == "transfer_start"]
    for t in starts:
        w = int(round(t / width))  # transfers start at window boundaries, inside window w
        assert sim.window_samples[w]["replication_bytes_in_flight"] >= sim.spec.expert_bytes
    idle = set(range(len(sim.window_samples))) - {int(round(t / width)) for t in starts}
    ends = [e["time_s"] for e in sim.adaptation_events if e["action"] == "replica_ready"]
    quiet = [w for w in idle if not any(w * width <= t < (w + 1) * width for t in ends)
             and not any(s < w * width and t >= (w + 1) * width for s, t in zip(starts, ends))]
    assert quiet and all(sim.window_samples[w]["replication_bytes_in_flight"] == 0 for w in quiet)
    final = sum(len(g) for row in sim.replicas for g in row)
    assert sim.window_samples[-1]["replicas"] == final


def test_full_memory_evicts_a_colder_replicated_expert_never_a_last_copy():
    cfg = config("strategy=helios_dynamic", "gpu.memory_gib=0.15")  # 3 slots per GPU and layer
    placement = initial_placement(cfg, "round_robin")  # expert e of layer 0 on GPU e % 8
    sim = Simulation(*prepare(cfg)[:2], placement, prepare(cfg)[2], cfg.sim)
    engine = HeliosEngine(sim, cfg)
    layer, hot, lukewarm, cold, other = 0, 0, 1, 2, 3
    # fill the one free slot of every GPU in layer 0 with extra copies
    for expert, gpus in ((lukewarm, [2, 4, 5, 6, 7]), (cold, [3, 0]), (other, [1])):
        sim.set_replicas(layer, expert, sim.replicas[layer][expert] + gpus)
    engine.held[layer] = np.bincount([g for gpus in sim.replicas[layer] for g in gpus], minlength=8)
    assert engine.free_slots(layer).max() == 0
    engine.ewma = np.ones((sim.layers, 16))
    engine.ewma[layer, [hot, lukewarm, cold, other]] = [40.0, 14.0, 1.5, 2.0]
    engine.refresh_costs()
    dst = engine._choose_target(layer, hot, engine.gpu_util.copy())
    # the coldest load per copy is expert 2's (0.5, on GPUs 2, 3, 0); GPU 0 holds the hot
    # expert already, so the copy on GPU 2 (lowest id of the rest) goes
    assert (dst, sim.replicas[layer][cold]) == (2, [3, 0])
    assert sim.adaptation_events[-1]["action"] == "evict_for_memory"
    assert engine.free_slots(layer)[2] == 1
    # with only last copies (and hot experts) left, nothing is evicted
    for expert in range(16):
        while len(sim.replicas[layer][expert]) > 1 and expert != lukewarm:
            engine.evict(layer, expert, sim.replicas[layer][expert][-1], "evict_cold")
    engine.ewma[layer, lukewarm] = 200.0
    engine.held[layer] = engine.slots
    assert engine._make_room(layer, hot, engine.holders(layer, hot)) is None
    with pytest.raises(ValueError, match="cannot evict"):
        engine.evict(layer, cold, sim.replicas[layer][cold][0], "evict_cold")


def _engine_on_round_robin(cfg):
    """A HeliosEngine over the round-robin placement (expert e of layer 0 on GPU e % 8)."""
    placement = initial_placement(cfg, "round_robin")
    cluster, spec, workload, _ = prepare(cfg)
    sim = Simulation(cluster, spec, placement, workload, cfg.sim)
    return sim, HeliosEngine(sim, cfg)


def test_visit_probability_is_the_chance_another_pick_lands_on_the_gpu():
    cfg = config("strategy=helios_dynamic")
    sim, engine = _engine_on_round_robin(cfg)
    layer, k = 0, sim.spec.top_k
    engine.ewma = np.zeros((sim.layers, 16))
    engine.ewma[layer, [0, 1, 9]] = [2.0, 1.0, 1.0]  # experts 1 and 9 both live on GPU 1
    sim.set_replicas(layer, 9, [1, 3])  # expert 9 also on GPU 3: its load splits in two
    q = engine.visit_probability(layer, 0)
    # shares of the layer's load, without expert 0: GPU 1 = 1/4 + 1/8, GPU 3 = 1/8
    expected = np.zeros(8)
    expected[1] = 1 - (1 - 0.375) ** (k - 1)
    expected[3] = 1 - (1 - 0.125) ** (k - 1)
    assert q == pytest.approx(expected)
    # an expert's own replicas do not count: its tokens visit them for it, not anyway
    assert engine.visit_probability(layer, 1)[1] == pytest.approx(1 - (1 - 0.125) ** (k - 1))


def test_replica_target_prefers_a_gpu_the_tokens_visit_anyway():
    cfg = config("strategy=helios_dynamic")
    sim, engine = _engine_on_round_robin(cfg)
    layer, hot = 0, 0
    engine.ewma = np.ones((sim.layers, 16))
    engine.refresh_costs()
    base = engine.target_costs(layer, hot, engine.gpu_util.copy())
    # Make GPU 5 (experts 5 and 13) serve most of the layer's other tokens: a replica
    # there adds almost no messages, so its network cost nearly vanishes.
    engine.ewma[layer, [5, 13]] = 50.0
    costs = engine.target_costs(layer, hot, engine.gpu_util.copy())
    assert costs[5] < 0.1 * base[5]
    assert int(np.argmin(np.delete(costs, 0))) + 1 == 5  # (GPU 0 already holds the expert)


@pytest.mark.parametrize("paced", [True, False])
def test_replication_bytes_appear_in_link_loads(paced):
    """A weight transfer adds expert_bytes to every link of its route, and nothing elsewhere."""
    cfg = config("strategy=greedy", "sim.duration_s=0.06", "sim.warmup_s=0.02")
    adapt = dataclasses.replace(cfg.strategy.adaptation, paced_transfers=paced)
    cfg = dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, adaptation=adapt))
    layer, expert = 1, 3
    moved = {}

    def controller(sim):
        engine = HeliosEngine(sim, cfg)
        src = sim.replicas[layer][expert][0]
        dst = (src + sim.cluster.gpus_per_server) % sim.num_gpus  # another server
        moved.update(src=src, dst=dst)
        yield sim.env.timeout(0.5)  # long after the last request finished
        engine.start_transfer(layer, expert, dst)

    base = simulate(cfg)
    sim = simulate(cfg, controller=controller)
    route = sim.cluster.route(moved["src"], moved["dst"])
    assert len(route) >= 4
    extra = np.asarray(sim.link_meter.bytes_total) - np.asarray(base.link_meter.bytes_total)
    expected = np.zeros_like(extra)
    expected[list(route)] = sim.spec.expert_bytes
    np.testing.assert_allclose(extra, expected, atol=1e-3)
    assert extra.sum() == pytest.approx(sim.spec.expert_bytes * len(route))
    assert sim.replicas[layer][expert] == [moved["src"], moved["dst"]]
    assert sim.replication_bytes == sim.spec.expert_bytes and sim.replicas_added == 1
    assert [e["action"] for e in sim.adaptation_events] == ["transfer_start", "replica_ready"]


def test_stationary_uncongested_run_is_left_alone():
    """With nothing congested the engine does nothing: the run equals the static one."""
    # Any ILP placement will do; both cells share it. No redundant copies: the cold rule
    # would rightly evict the ILP's lightly loaded ones, which is not what this tests.
    fast = ("strategy.ilp.time_limit_s=2", "strategy.ilp.num_redundant=0")
    dynamic = run_cell(config("strategy=helios_dynamic", *fast), cache=CACHE)
    static = run_cell(config("strategy=helios_static", *fast), cache=CACHE)
    row_d, row_s = dynamic.tables["cells"][0], static.tables["cells"][0]
    assert row_d["replicas_added"] == 0 and dynamic.tables["events"] == []
    for key in ("p99_ms", "mean_ms", "max_link_util", "throughput_tok_s"):
        assert row_d[key] == row_s[key]


def test_dynamic_cell_is_deterministic():
    cfg = config(*BUSY)
    first, second = run_cell(cfg, cache=CACHE), run_cell(cfg, cache=CACHE)
    volatile = ("sim_s", "placement_s", "placement_cache", "finished_at")
    strip = lambda row: {k: v for k, v in row.items() if k not in volatile}  # noqa: E731
    assert strip(first.tables["cells"][0]) == strip(second.tables["cells"][0])
    assert first.tables["events"] == second.tables["events"] and first.tables["events"]
    assert first.tables["timeseries"] == second.tables["timeseries"]


def test_eplb_dynamic_pays_migration_under_drift():
    cfg = config("strategy=eplb_dynamic", "scenario=gradual_drift", "scenario.period_s=0.04",
                 "scenario.zipf_s=1.2", "strategy.eplb.num_redundant=8")
    violations = []

    def probe(sim):
        engine = sim.adaptation_engine
        for layer in range(sim.layers):
            held = collections.Counter(g for gpus in sim.replicas[layer] for g in gpus)
            for (l, _), transfers in engine.pending.items():
                if l == layer:
                    held.update(t.dst for t in transfers)
            if max(held.values()) > sim.spec.slots_per_gpu:
                violations.append((sim.env.now, layer))

    sim = simulate(cfg, probe=probe, log=True)
    actions = collections.Counter(e["action"] for e in sim.adaptation_events)
    assert sim.replication_bytes > 0 and actions["transfer_start"] > 0
    # a moved expert keeps serving at its old place until its new copy has arrived
    assert serving_violations(place(prepare(cfg)[3]).replicas, sim) == []
    assert sim.replication_bytes == pytest.approx(actions["transfer_start"] * sim.spec.expert_bytes)
    assert actions["evict_rebalance"] > 0 and violations == []
    row = run_cell(cfg, cache=CACHE).tables["cells"][0]
    assert row["replication_bytes"] == sim.replication_bytes > 0


# --------------------------------------------------------------------------- routers
def fake_sim(gpu_backlog: dict[int, float], link_backlog: dict[int, float]):
    cluster = fat_tree(4, gpus_per_server=2)
    return SimpleNamespace(
        cluster=cluster, spec=SimpleNamespace(dispatch_token_bytes=4096.0),
        network=SimpleNamespace(backlog=lambda link: link_backlog.get(link, 0.0), chunk=512 * 1024.0),
        gpus=SimpleNamespace(backlog=lambda gpu: gpu_backlog.get(gpu, 0.0)))


def test_oracle_congestion_prefers_an_empty_queue_over_a_nearer_congested_one():
    src, near, far = 0, 1, 30  # GPU 1 shares GPU 0's server; GPU 30 is in another pod
    sim = fake_sim({near: 2e-3}, {})
    assert sim.cluster.path_latency(src, near, 4096) < sim.cluster.path_latency(src, far, 4096)
    router = make_router("oracle_congestion", sim)
    assert router.choose(0, 0, src, [near, far]) == far
    assert make_router("nearest", sim).choose(0, 0, src, [near, far]) == near
    idle = make_router("oracle_congestion", fake_sim({}, {}))
    assert idle.choose(0, 0, src, [far, near]) == near


def test_oracle_congestion_counts_link_queues_on_the_route():
    src, near, far = 0, 1, 30
    sim = fake_sim({}, {})
    busy_link = sim.cluster.route(src, near)[-1]  # NVSwitch -> GPU 1: not on the way to GPU 30
    assert busy_link not in sim.cluster.route(src, far)
    sim.network.backlog = lambda link: 1e-3 if link == busy_link else 0.0
    assert make_router("oracle_congestion", sim).choose(0, 0, src, [near, far]) == far


def test_least_loaded_picks_the_shortest_gpu_queue():
    sim = fake_sim({1: 3e-3, 30: 1e-3, 12: 2e-3}, {})
    assert make_router("least_loaded", sim).choose(0, 0, 0, [1, 12, 30]) == 30
    assert make_router("least_loaded", fake_sim({}, {})).choose(0, 0, 0, [30, 1]) == 1


def idle_delivery_s(cluster, src: int, dst: int, nbytes: float, chunk: float) -> float:
    """When the engine's link model delivers one message on an idle network."""
    env = simpy.Environment()
    meter = LinkMeter(cluster.num_links, 1.0, 1.0, 0.0, 1.0)
    net = Network(env, cluster.route, cluster.link_bandwidth.tolist(),
                  cluster.link_latency.tolist(), chunk, meter)
    done = []
    net.send(src, dst, nbytes, lambda: done.append(env.now))
    env.run()
    return done[0]


def test_nearest_picks_the_replica_the_engine_delivers_to_first():
    """Zero-latency links, NVLink slower than the fabric: cut-through timing (one
    serialisation at the bottleneck) puts a GPU of the other server first, but the engine
    serialises a chunk at every hop, so the GPU in the same server receives first."""
    cluster = fat_tree(2, gpus_per_server=2, nvlink_bandwidth=60e9, nic_bandwidth=100e9,
                       fabric_bandwidth=100e9, nvlink_latency=0.0, link_latency=0.0)
    nbytes, chunk = 4096.0, 512 * 1024.0
    sim = SimpleNamespace(cluster=cluster, spec=SimpleNamespace(dispatch_token_bytes=nbytes),
                          network=SimpleNamespace(chunk=chunk))
    G = cluster.num_gpus
    arrival = np.array([[idle_delivery_s(cluster, s, d, nbytes, chunk) if s != d else 0.0
                         for d in range(G)] for s in range(G)])
    router = make_router("nearest", sim)
    disagree = 0
    for src in range(G):
        for a in range(G):
            for b in range(a + 1, G):
                chosen = router.choose(0, 0, src, [a, b])
                assert arrival[src, chosen] == min(arrival[src, a], arrival[src, b])
                by_cut_through = min((a, b), key=lambda g: (cluster.path_latency(src, g, nbytes), g))
                disagree += by_cut_through != chosen
    assert disagree > 0  # the case the test is about: the two timings rank differently
    assert router.choose(0, 0, 0, [1, 2]) == 1


def test_helios_dynamic_path_costs_are_the_engines_store_and_forward_times():
    cfg = config("strategy=helios_dynamic")
    sim, engine = _engine_on_round_robin(cfg)
    engine.link_util = np.zeros_like(engine.link_util)
    terms = engine.path_cost_matrices()
    cluster, chunk = sim.cluster, sim.network.chunk
    for s in range(sim.num_gpus):
        for d in range(sim.num_gpus):
            pair = [m[s, d] for m in terms]
            one_chunk_per_hop = sum(chunk / cluster.link_bandwidth[k] for k in cluster.route(s, d))
            for nbytes in (4096.0, 0.3 * chunk, chunk, 3 * chunk):  # at most a chunk, or whole ones
                assert store_and_forward_s(*pair, nbytes, chunk) == pytest.approx(
                    cluster.transfer_time(s, d, nbytes, chunk), rel=1e-12, abs=1e-15)
            exact = cluster.transfer_time(s, d, 3.5 * chunk, chunk)  # a short last chunk
            estimate = store_and_forward_s(*pair, 3.5 * chunk, chunk)
            assert exact - 1e-15 <= estimate <= exact + one_chunk_per_hop


def test_router_registry():
    assert {"nearest", "round_robin", "oracle_congestion", "least_loaded"} <= set(ROUTERS)


# --------------------------------------------------------------------------- recovery
#: 16 GPUs, one per server behind its own 25 Gb/s NIC, 64 experts (top-4): the NICs of the
#: GPUs that hold the hottest experts are the congested links. The popularity is re-permuted
#: at 0.1 s (window 5 of 0.02 s); arrivals stop at 0.3 s (window 15).
SHIFT = ("model.num_experts=64", "model.top_k=4", "topology.k=4", "topology.gpus_per_server=1",
         "topology.nic_gbit_s=25", "topology.fabric_gbit_s=100", "scenario=sudden_shift",
         "scenario.t_shift_s=0.1", "scenario.rate=3000", "sim.duration_s=0.3",
         "strategy.ilp.time_limit_s=5")


def recovery_windows(p99: np.ndarray, shift: int, level: float, span: int = 3) -> int:
    """Windows after ``shift`` until the ``span``-window rolling mean of P99 is <= ``level``
    and stays so to the end; ``len(p99)`` if never."""
    rolling = np.convolve(p99, np.ones(span) / span, mode="valid")  # rolling[i]: windows i..i+span-1
    for k in range(shift, len(rolling)):
        if np.all(rolling[k:] <= level):
            return k - shift
    return len(p99)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "the request model's helios_dynamic no longer beats the load-aware helios_static after "
    "a sudden shift (README, the paper sweep): since the MILP places replicas with token "
    "shares and routers read delayed telemetry, the engine's weight copies load "
    "the congested 25G NICs more than its replicas relieve them; seeds 0-4 at rate 3000: "
    "post-shift mean P99 5.01/6.92, 4.93/5.15, 5.54/5.00, 4.12/4.36, 4.83/5.38 ms "
    "(static/dynamic; the default 20 GB/s budget does not bind on 25G NICs), and "
    "5.47, 5.48, 6.09, 4.24, 5.50 ms for dynamic within a 0.2 GB/s budget"))
def test_sudden_shift_helios_dynamic_recovers_faster_than_helios_static():
    """After the shift, helios_dynamic's windowed P99 returns to the pre-shift level sooner
    and settles below helios_static's.

    Expected to fail (strict): the claim held for the replica-free ILP placement with
    oracle routing it was written for (figures below), not for today's; it is kept so
    that an engine that earns it again turns this test red until the mark goes.

    Reference level: helios_static's median windowed P99 before the shift (the system
    the shift perturbs). Recovery: windows after the shift until the 3-window rolling
    mean stays within 1.2x of it. Measured when it held (seed: static / dynamic recovery
    in windows of 20 ms, 15 = never; post-shift mean P99 in ms, windows 9-14): 0: 6 / 2, 4.78 / 4.21;
    1: 15 / 6, 5.67 / 4.58; 2: 0 / 0, 4.33 / 4.13; 3: 15 / 3, 4.43 / 3.98; 4: 15 / 3,
    4.60 / 3.90. This test runs seed 0.
    """
    series = {}
    for strategy in ("helios_static", "helios_dynamic"):
        cfg = config(*SHIFT, f"strategy={strategy}")
        res = run_cell(cfg, cache=CACHE)
        series[strategy] = np.array([w["p99_ms"] for w in res.tables["timeseries"]])
    first, shift, settle = 2, 5, 4  # warm-up 0.04 s; the shift at window 5
    static, dynamic = series["helios_static"], series["helios_dynamic"]
    reference = 1.2 * float(np.median(static[first:shift]))
    rec_static = recovery_windows(static, shift, reference)
    rec_dynamic = recovery_windows(dynamic, shift, reference)
    assert rec_dynamic <= settle and rec_dynamic < rec_static
    assert dynamic[shift + settle:].mean() < static[shift + settle:].mean()


@pytest.mark.slow
def test_migration_budget_keeps_weight_copies_from_hurting_the_tokens():
    """In the congested shift cell, the copies without a budget (the default 20 GB/s does
    not bind on 25G NICs) queue tokens behind them on the very NICs that are hot; a
    0.2 GB/s budget (6.4% of one NIC) lowers helios_dynamic's whole-run P99 on every
    seed. Measured, seeds 0-4 (no budget / 0.2 GB/s, ms): 13.95 / 7.51, 7.83 / 6.55,
    8.51 / 8.30, 6.01 / 4.83, 12.26 / 7.54."""
    for seed in range(5):
        p99 = {}
        for budget in ("null", "0.2"):
            cfg = config(*SHIFT, "strategy=helios_dynamic", f"seed={seed}",
                         f"strategy.adaptation.migration_gbyte_s={budget}")
            p99[budget] = run_cell(cfg, cache=CACHE).tables["cells"][0]["p99_ms"]
        assert p99["0.2"] < p99["null"], (seed, p99)


def test_congestion_aware_sees_only_delayed_window_telemetry():
    """The telemetry router ranks replicas by the busy fractions of the newest window
    that is telemetry.delay_s old; a queue that builds up now is invisible to it, while
    the oracle sees it at once."""
    cfg = config("strategy.routing=congestion_aware")
    cluster, spec, workload, ctx = prepare(cfg)
    placement, _ = obtain_placement(ctx, None)
    sim = Simulation(cluster, spec, placement, workload, cfg.sim, routing="congestion_aware")
    router, oracle = sim.router, make_router("oracle_congestion", sim)
    src, near, far = 0, 1, 5  # GPU 1 shares GPU 0's server; GPU 5 is on the other one
    window = cfg.sim.window_s
    sim.env.run(until=2.5 * window)  # telemetry of window 0 is visible now (delay: one window)
    assert sim.telemetry_window(sim.env.now) == 0
    assert router.choose(0, 0, src, [near, far]) == near
    sim.gpus.submit(near, 10 * window, 1, lambda: None)  # a long job queued on `near` now
    assert oracle.choose(0, 0, src, [near, far]) == far
    assert router.choose(0, 0, src, [near, far]) == near  # not seen yet
    sim.gpu_meter.busy_windows[0][near] = window  # what window 0 recorded, had it been busy
    router._seen = -2  # forget the cached sample
    assert router.choose(0, 0, src, [near, far]) == far


def test_request_model_incremental_eplb_copies_less_and_the_oracle_copies_nothing():
    drift = ("scenario=gradual_drift", "scenario.period_s=0.05")
    rows = {st: run_cell(config(f"strategy={st}", *drift), cache=False).tables["cells"][0]
            for st in ("eplb_dynamic", "eplb_incremental", "oracle_static_window")}
    assert rows["eplb_incremental"]["adapt_decisions"] == rows["eplb_dynamic"]["adapt_decisions"] > 0
    assert 0 < rows["eplb_incremental"]["replication_bytes"] < 0.5 * rows["eplb_dynamic"]["replication_bytes"]
    oracle = rows["oracle_static_window"]
    assert oracle["adapt_decisions"] >= 1 and oracle["replication_bytes"] == 0


def test_request_model_rebalance_interval_is_in_seconds():
    """sim.window_s=0.02 over 0.2 s: every window decides by default, every third with
    interval_s=0.06 (windows 3, 6, 9)."""
    drift = ("strategy=eplb_dynamic", "scenario=gradual_drift", "scenario.period_s=0.05")
    every = run_cell(config(*drift), cache=False).tables["cells"][0]
    third = run_cell(config(*drift, "strategy.adaptation.interval_s=0.06"), cache=False).tables["cells"][0]
    assert (every["adapt_decisions"], third["adapt_decisions"]) == (10, 3)
    assert third["replication_bytes"] < every["replication_bytes"]
