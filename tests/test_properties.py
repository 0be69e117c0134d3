"""Property tests (Hypothesis) of the engine on small random clusters and workloads."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helios.cell import prepare, run_cell
from helios.config import cell_config
from helios.placement import place
from helios.sim.engine import Simulation
from helios.workload import Workload

TIMING = ["sim_s", "placement_s", "placement_cache", "host", "git_sha", "finished_at"]


@st.composite
def cells(draw):
    if draw(st.booleans()):
        topology = {"name": "fat_tree", "k": draw(st.sampled_from([2, 4]))}
    else:
        topology = {"name": "dragonfly", "a": draw(st.integers(1, 2)), "p": draw(st.integers(1, 2)),
                    "h": draw(st.integers(1, 2))}
    topology["gpus_per_server"] = draw(st.integers(1, 4))
    topology["nic_gbit_s"] = draw(st.sampled_from([25.0, 100.0, 400.0]))
    experts = draw(st.integers(2, 24))
    model = {"name": "tiny", "num_experts": experts, "top_k": draw(st.integers(1, min(4, experts))),
             "hidden_size": draw(st.sampled_from([256, 1024, 4096])), "expert_intermediate_size": 512,
             "num_moe_layers": 4, "param_bytes": 2.0, "dispatch_bytes": 2.0, "combine_bytes": 2.0}
    scenario = {"rate": draw(st.floats(50, 3000)), "tokens_per_request": draw(st.integers(1, 64)),
                "token_distribution": draw(st.sampled_from(["fixed", "poisson", "geometric"])),
                "zipf_s": draw(st.floats(0, 2)),
                "popularity": draw(st.sampled_from(["measured", "zipf"]))}
    # a measured skew that top-k gating can reach (below 1 - top_k / experts)
    scenario["gini"] = draw(st.floats(0, 0.95)) * (1 - model["top_k"] / experts)
    sim = {"duration_s": 0.06, "warmup_s": 0.01, "window_s": 0.01, "drain_s": 0.5,
           "layers": draw(st.integers(1, 3)), "chunk_kib": draw(st.sampled_from([16.0, 512.0]))}
    strategy = {"name": draw(st.sampled_from(["round_robin", "greedy"]))}
    return cell_config({"topology": topology, "model": model, "scenario": scenario, "sim": sim,
                        "strategy": strategy, "serving": {"name": "request"},
                        "seed": draw(st.integers(0, 2**16))})


PROPERTY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _simulate(cfg):
    cluster, spec, workload, ctx = prepare(cfg)
    placement = place(ctx)
    sim = Simulation(cluster, spec, placement, workload, cfg.sim).run()
    return cluster, spec, ctx, placement, sim


@PROPERTY
@given(cells())
def test_conservation_bounds_and_memory(cfg):
    cluster, spec, ctx, placement, sim = _simulate(cfg)
    # placements within memory, every expert placed
    assert (placement.memory_use() <= spec.slots_per_gpu).all()
    assert (placement.replica_counts() >= 1).all()
    # token and byte conservation (the run drains: light load and a long drain)
    assert sim.pairs_dispatched == sim.gpus.pairs_computed == sim.pairs_combined
    assert np.isclose(sim.network.bytes_sent, sim.network.bytes_delivered)
    # utilisation is a fraction
    util, windows = sim.link_meter.utilisation(), sim.link_meter.window_utilisation()
    assert (util >= 0).all() and (util <= 1 + 1e-9).all()
    assert (windows >= 0).all() and (windows <= 1 + 1e-9).all()
    # every request takes at least its no-contention time
    replay = Workload(cfg.scenario, spec.num_experts, spec.top_k, cluster.num_gpus,
                      cfg.sim.layers, cfg.sim.duration_s, cfg.seed,
                      routing_gini=cfg.model.routing_gini)
    finished = {r.rid: r.latency_ms / 1e3 for r in sim.records}
    gpu_of = placement.primary()
    for req in replay.requests():
        bound = 0.0
        for layer, experts in enumerate(req.experts):
            pairs = np.bincount(experts.ravel(), minlength=spec.num_experts)
            per_gpu: dict[int, list] = {}
            for e in np.flatnonzero(pairs):
                per_gpu.setdefault(int(gpu_of[layer, e]), []).append(pairs[e])
            layer_bound = 0.0
            for g, batches in per_gpu.items():
                tokens = int(np.isin(experts, np.flatnonzero(gpu_of[layer] == g)).any(axis=1).sum())
                t = (cluster.path_latency(req.home_gpu, g, tokens * spec.dispatch_token_bytes)
                     + float(np.sum(spec.batch_seconds(np.array(batches))))
                     + cluster.path_latency(g, req.home_gpu, tokens * spec.combine_token_bytes))
                layer_bound = max(layer_bound, t)
            bound += layer_bound
        if req.rid in finished:
            assert finished[req.rid] >= bound * (1 - 1e-9)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_rerun_is_identical(cfg):
    a = pd.DataFrame(run_cell(cfg).tables["cells"]).drop(columns=TIMING)
    b = pd.DataFrame(run_cell(cfg).tables["cells"]).drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)


@st.composite
def ep_cells(draw):
    """Small serving=ep cells: random clusters, model shapes, dispatch and overlap modes."""
    if draw(st.booleans()):
        topology = {"name": "fat_tree", "k": 2}
    else:
        topology = {"name": "dragonfly", "a": draw(st.integers(1, 2)), "p": 1, "h": 1}
    topology.update(gpus_per_server=draw(st.sampled_from([2, 4])),
                    nic_per_gpu=draw(st.booleans()),
                    nic_gbit_s=draw(st.sampled_from([25.0, 400.0])))
    experts = draw(st.integers(4, 24))
    model = {"name": "tiny", "num_experts": experts, "top_k": draw(st.integers(1, min(4, experts))),
             "hidden_size": draw(st.sampled_from([256, 1024])), "expert_intermediate_size": 512,
             "num_moe_layers": 3, "num_attention_heads": 4, "num_kv_heads": 2, "head_dim": 64,
             "attention": "gqa", "num_dense_layers": draw(st.integers(0, 1)),
             "num_shared_experts": draw(st.integers(0, 1)), "vocab_size": 1000}
    serving = {"name": "ep", "dispatch": draw(st.sampled_from(["per_gpu", "per_node", "per_expert"])),
               "overlap": draw(st.sampled_from(["none", "two_batch"])),
               "relay_chunks": draw(st.sampled_from([1, 3])),
               "prompt_tokens": draw(st.integers(1, 64)), "prompt_cv": draw(st.sampled_from([0.0, 1.0])),
               "output_tokens": draw(st.integers(1, 8)), "max_batch_tokens": draw(st.integers(8, 256)),
               "max_running_requests": draw(st.integers(1, 16))}
    scenario = {"rate": draw(st.floats(20, 400)), "zipf_s": draw(st.floats(0, 1.5)),
                "popularity": draw(st.sampled_from(["measured", "zipf"])),
                "gini": draw(st.floats(0, 0.95)) * (1 - model["top_k"] / experts)}
    sim = {"duration_s": 0.05, "warmup_s": 0.01, "window_s": 0.01, "drain_s": 2.0,
           "chunk_kib": draw(st.sampled_from([16.0, 512.0]))}
    strategy = {"name": draw(st.sampled_from(["round_robin", "greedy"]))}
    return cell_config({"topology": topology, "model": model, "scenario": scenario, "sim": sim,
                        "serving": serving, "strategy": strategy,
                        "seed": draw(st.integers(0, 2**16))})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ep_cells())
def test_ep_conservation_and_progress(cfg):
    from helios.placement.cache import obtain_placement
    from helios.sim.ep.engine import EpSimulation

    cluster, _spec, workload, ctx = prepare(cfg)
    placement, _ = obtain_placement(ctx, None)
    sim = EpSimulation(cluster, cfg, placement, workload).run()
    # every pair dispatched is computed; the links carried each message over each hop
    assert sim.pairs_dispatched == sim.pairs_computed
    assert np.isclose(sim.link_bytes.sum(), sim.hop_bytes)
    # every request finished (light load, long drain), in order of its own progress
    for r in sim.requests:
        assert r.prefilled == r.prompt and r.generated == r.output
        assert r.arrival <= r.first_token_s <= r.finish_s
    # steps are back to back and never overlap; the KV cache was released
    for a, b in zip(sim.steps, sim.steps[1:]):
        assert a.start_s < a.end_s <= b.start_s
    assert all(rank.kv_used == 0 and not rank.running for rank in sim.ranks)
    # utilisation is a fraction
    length = sim.end - sim.start
    assert (sim.link_meas / length <= 1 + 1e-9).all() and (sim.gpu_meas / length <= 1 + 1e-9).all()
