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
from helios.sim.adaptation import make_controller
from helios.sim.adaptation.base import AdaptationEngine
from helios.sim.adaptation.helios_engine import best_move
from helios.bench.rank import placement_matrices
from helios.placement.ilp import layer_models, set_background
from helios.sim.engine import Simulation
from helios.sim.network import LinkMeter, Network
from helios.sim.routing import ROUTERS, make_router
from helios.topology import fat_tree

#: Adaptation made busy on purpose: memory is tight (3 expert slots per GPU and layer for
#: 16 experts on 8 GPUs, all held by EPLB's placement with 8 redundant copies), the
#: popularity is skewed and shifts mid-run, and a move need only cut its layer's cost by
#: 0.1%, so copies into cold copies' slots and copies moved off other GPUs both happen
#: in a 0.3 s run.
BUSY = ("strategy=helios_dynamic", "scenario=sudden_shift", "scenario.t_shift_s=0.1",
        "scenario.zipf_s=1.3", "sim.duration_s=0.3", "gpu.memory_gib=0.15",
        "strategy.adaptation.max_replicas_per_expert=4", "strategy.adaptation.min_gain=0.001",
        "++strategy.eplb.num_redundant=8", "strategy.ilp.time_limit_s=2")
#: The busy runs start from EPLB's placement (the engine is under test, not the solver).
BUSY_START = "eplb"


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
        for layer, row in enumerate(sim.replicas):
            held = np.zeros(sim.num_gpus, dtype=int)
            for expert, gpus in enumerate(row):
                incoming = [t.dst for t in engine.pending.get((layer, expert), [])]
                for g in gpus + incoming:
                    held[g] += 1
                cap = max(cfg.strategy.adaptation.max_replicas_per_expert, engine.initial_counts[layer, expert])
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

    sim = simulate(cfg, probe=probe, log=True, placement=initial_placement(cfg, BUSY_START))
    return cfg, sim, violations


def test_busy_config_exercises_every_action(busy_run):
    _, sim, _ = busy_run
    actions = collections.Counter(e["action"] for e in sim.adaptation_events)
    assert actions["transfer_start"] >= 5
    assert actions["replica_ready"] == actions["transfer_start"] == sim.replicas_added
    assert actions["evict_rebalance"] >= 1 and actions["evict_for_memory"] >= 1
    assert sim.replicas_evicted == actions["evict_rebalance"] + actions["evict_for_memory"]
    assert sim.replication_bytes == pytest.approx(actions["transfer_start"] * sim.spec.expert_bytes)
    assert sim.replication_bytes_in_flight == pytest.approx(0.0)
    # every expert ends with a share per serving copy, summing to 1, and some are unequal:
    # the decided shares reached the router
    shares = [(gpus, sh) for layer in range(sim.layers)
              for gpus, sh in zip(sim.replicas[layer], sim.shares[layer])]
    assert all(len(gpus) == len(sh) and sum(sh) == pytest.approx(1.0) for gpus, sh in shares)
    assert any(len(set(np.round(sh, 9))) > 1 for _, sh in shares)


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
    sim = simulate(cfg, placement=initial_placement(cfg, BUSY_START))
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
    initial = initial_placement(cfg, BUSY_START).replicas
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
        assert count[key] <= max(cfg.strategy.adaptation.max_replicas_per_expert, len(initial[key[0]][key[1]]))


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
    assert serving_violations(initial_placement(cfg, BUSY_START).replicas, sim) == []
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


@pytest.mark.parametrize("paced", [True, False])
def test_replication_bytes_appear_in_link_loads(paced):
    """A weight transfer adds expert_bytes to every link of its route, and nothing elsewhere."""
    cfg = config("strategy=greedy", "sim.duration_s=0.06", "sim.warmup_s=0.02")
    adapt = dataclasses.replace(cfg.strategy.adaptation, paced_transfers=paced)
    cfg = dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, adaptation=adapt))
    layer, expert = 1, 3
    moved = {}

    def controller(sim):
        engine = AdaptationEngine(sim, cfg)
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


def test_router_registry():
    assert {"nearest", "round_robin", "oracle_congestion", "least_loaded"} <= set(ROUTERS)


# --------------------------------------------------------------------------- a sudden shift
#: 16 GPUs, one per server behind its own 25 Gb/s NIC, 64 experts (top-4): the NICs of the
#: GPUs that hold the hottest experts are the congested links. The popularity is re-permuted
#: at 0.1 s (window 5 of 0.02 s); arrivals stop at 0.3 s (window 15).
SHIFT = ("model.num_experts=64", "model.top_k=4", "topology.k=4", "topology.gpus_per_server=1",
         "topology.nic_gbit_s=25", "topology.fabric_gbit_s=100", "scenario=sudden_shift",
         "scenario.t_shift_s=0.1", "scenario.rate=3000", "sim.duration_s=0.3",
         "strategy.ilp.time_limit_s=5")


@pytest.mark.slow
def test_sudden_shift_helios_dynamic_settles_below_helios_static():
    """After the shift the static placement is solved for the wrong load; helios_dynamic's
    moves by the same cost bring its P99 below helios_static's once they are done, on
    every seed. Measured (post-shift mean P99 over windows 9-14, static / dynamic, ms):
    4.06 / 3.92, 4.53 / 4.26, 4.20 / 4.03, 4.18 / 3.94, 4.18 / 4.02 on seeds 0-4, with
    0.04 GB of copies a cell. Its whole-run P99 is not lower on every seed: the window
    in which the first copies travel is slower (7.1 against 5.4 ms on seed 0)."""
    for seed in range(5):
        post = {}
        for strategy in ("helios_static", "helios_dynamic"):
            res = run_cell(config(*SHIFT, f"strategy={strategy}", f"seed={seed}"), cache=CACHE)
            post[strategy] = np.mean([w["p99_ms"] for w in res.tables["timeseries"][9:]])
            if strategy == "helios_dynamic":
                assert res.tables["cells"][0]["replication_bytes"] > 0
        assert post["helios_dynamic"] < post["helios_static"], (seed, post)


@pytest.mark.slow
def test_migration_budget_keeps_weight_copies_from_hurting_the_tokens():
    """In the congested shift cell, eplb_dynamic re-run every window copies so much that,
    without a budget (the default 20 GB/s of helios_dynamic does not bind on 25G NICs),
    tokens queue behind the weights on the very NICs that are hot; a 0.2 GB/s budget
    (6.4% of one NIC) cuts its whole-run P99 more than tenfold on every seed. Measured,
    seeds 0-4 (no budget / 0.2 GB/s, ms): 146.7 / 6.96, 146.3 / 6.76, 111.4 / 5.53,
    119.4 / 6.23, 112.5 / 6.65."""
    eplb_cell = SHIFT[:-1]  # eplb_dynamic solves no ILP
    for seed in range(5):
        p99 = {}
        for budget in ("null", "0.2"):
            cfg = config(*eplb_cell, "strategy=eplb_dynamic", f"seed={seed}",
                         f"strategy.adaptation.migration_gbyte_s={budget}")
            p99[budget] = run_cell(cfg, cache=CACHE).tables["cells"][0]["p99_ms"]
        assert p99["0.2"] < 0.1 * p99["null"], (seed, p99)


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


def _shifted_layer(layer=0):
    """A layer of the congested shift cell after the shift: helios_static's copies and
    shares (solved for the load before it), costed on the load after it."""
    cfg = config(*SHIFT, "strategy=helios_static")
    cluster, spec, workload, ctx = prepare(cfg)
    placement, _ = obtain_placement(ctx, CACHE)
    models = layer_models(dataclasses.replace(ctx, expected_load=workload.expected_load(0.2)), "latency")
    layers = placement_matrices(models, placement)
    set_background(models, [y for _, y in layers], layer)
    x, y = layers[layer]
    return models[layer], x > 0.5, y


def _all_single_moves(model, x, y):
    """Cost of every move of one copy: each expert's copy to each GPU without it, or an
    extra copy there (brute force)."""
    costs = []
    for e in range(x.shape[0]):
        for g in np.flatnonzero(~x[e]):
            for s in [*np.flatnonzero(x[e]).tolist(), None]:
                x2, y2 = x.copy(), y.copy()
                if s is not None:
                    x2[e, s] = False
                x2[e, g] = True
                y2[e] = x2[e] / x2[e].sum()
                costs.append(model.evaluate(x2.astype(float), y2))
    return np.array(costs)


def test_best_move_finds_most_of_the_best_single_moves_gain_after_a_shift():
    """After the shift the static placement is far from cheap by its own cost; the move
    search, which costs only the 6 targets the model prices lowest for each of 8 hot
    experts, finds the best single move over all experts and GPUs (brute force; measured:
    exactly it on both layers, 19% and 9% below the cost before)."""
    for layer in (0, 1):
        model, x, y = _shifted_layer(layer)
        base = model.evaluate(x.astype(float), y)
        toggles, cost = best_move(model, x, y)
        best = _all_single_moves(model, x, y).min()
        assert base - cost >= 0.95 * (base - best) > 0.05 * base, (layer, base, cost, best)


def test_best_move_leaves_frozen_experts_and_capped_ones_alone():
    model, x, y = _shifted_layer()
    toggles, _ = best_move(model, x, y)
    moved = {e for e, _, _ in toggles}
    again, _ = best_move(model, x, y, frozen=moved)
    assert not moved & {e for e, _, _ in again}
    capped, _ = best_move(model, x, y, cap=x.sum(axis=1))  # no expert may gain a copy
    gains = collections.Counter()
    for e, _, on in capped:
        gains[e] += 1 if on else -1
    assert max(gains.values()) <= 0


def test_weighted_routing_follows_the_shares_set_with_the_replicas():
    cfg = config("strategy=round_robin", "strategy.routing=weighted")
    cluster, spec, workload, ctx = prepare(cfg)
    sim = Simulation(cluster, spec, place(ctx), workload, cfg.sim, routing="weighted")
    sim.set_replicas(0, 3, [3, 5, 6], [0.5, 0.3, 0.2])
    picks = collections.Counter(sim.router.choose(0, 3, 0, sim.replicas[0][3]) for _ in range(1000))
    assert picks == {3: 500, 5: 300, 6: 200}
    sim.set_replicas(0, 3, [5, 6])  # no shares named: equal
    picks = collections.Counter(sim.router.choose(0, 3, 0, sim.replicas[0][3]) for _ in range(1000))
    assert abs(picks[5] - 500) <= 1 and abs(picks[6] - 500) <= 1
    with pytest.raises(ValueError, match="2 shares for 3 replicas"):
        sim.set_replicas(0, 3, [1, 2, 4], [0.5, 0.5])
