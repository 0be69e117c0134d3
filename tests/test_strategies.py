"""Every placement strategy on real (tiny) configs: memory, coverage, EPLB wrapper, and
whether helios_static beats round_robin in simulation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from helios.cell import prepare, run_cell
from helios.errors import ConfigError
from helios.placement import STRATEGIES, place
from helios.placement.eplb import eplb
from tests._configs import REQUEST_MODEL, TINY, config

ALL = ("round_robin", "greedy", "helios_static", "helios_hops", "eplb", "eplb_r0", "vllm_linear",
       "vllm_round_robin")

# 8 GPUs (k=2 fat-tree, 4 GPUs per server); tiny model of 16 experts x 4 MoE layers of
# 25.2 MB; 0.25 GiB x 0.5 holds 5 slots per GPU per layer, so memory binds.
TIGHT = ("topology.k=2", "gpu.memory_gib=0.25", "sim.layers=2")
# The same on a dragonfly of 2 groups x 2 routers x 1 server x 2 GPUs (8 GPUs).
DRAGONFLY = ("topology=dragonfly", "topology.a=2", "topology.p=1", "topology.h=1", "topology.g=2",
             "topology.gpus_per_server=2", "model=tiny", "gpu.memory_gib=0.25", "sim.layers=2")


def strategy_overrides(strategy: str) -> tuple[str, ...]:
    """The strategy plus its own settings (Hydra rejects keys a strategy file lacks)."""
    own = {"helios_static": ("strategy.ilp.time_limit_s=0.3",),
           "helios_hops": ("strategy.ilp.time_limit_s=0.3",),
           "eplb": ("strategy.eplb.num_redundant=8",)}
    return (f"strategy={strategy}", *own.get(strategy, ()))


def test_all_strategies_are_registered():
    assert set(ALL) <= set(STRATEGIES)
    for name in ("helios_static", "helios_hops"):
        assert STRATEGIES[name].params == ("ilp",)
    assert STRATEGIES["eplb"].params == ("eplb",)


@pytest.mark.parametrize("base", [TIGHT, DRAGONFLY], ids=["fat_tree", "dragonfly"])
@pytest.mark.parametrize("strategy", ALL)
def test_placement_respects_memory_and_places_every_expert(strategy, base):
    # TINY minus its fat-tree keys, so that the dragonfly base can pick its own topology
    tiny = tuple(o for o in TINY if not o.startswith("topology"))
    cfg = config(*base, *strategy_overrides(strategy), base=tiny)
    _, spec, _, ctx = prepare(cfg)
    assert ctx.slots_per_gpu == 5
    placement = place(ctx)
    use = placement.memory_use()
    assert use.shape == (cfg.sim.layers, ctx.num_gpus)
    assert use.max() <= ctx.slots_per_gpu
    counts = placement.replica_counts()
    assert counts.shape == (cfg.sim.layers, spec.num_experts) and counts.min() >= 1
    for layer in placement.replicas:
        for gpus in layer:
            assert len(set(gpus)) == len(gpus) and all(0 <= g < ctx.num_gpus for g in gpus)


# ---------------------------------------------------------------------------- vllm
def test_vllm_placements_follow_determine_expert_map():
    from helios.placement.vllm import expert_ranks

    # 10 experts on 4 ranks: 3, 3, 2, 2 experts; linear in blocks, round_robin by e mod 4
    assert expert_ranks(10, 4, "linear") == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert expert_ranks(10, 4, "round_robin") == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    ctx = prepare(config(*TIGHT, "strategy=vllm_linear"))[3]
    placement = place(ctx)
    assert placement.replicas[0] == placement.replicas[1]  # the same map in every layer
    assert [g[0] for g in placement.replicas[0]] == expert_ranks(16, 8, "linear")


def test_eplb_presets_set_their_redundant_experts():
    assert config("strategy=eplb_r0").strategy.eplb.num_redundant == 0
    assert config("strategy=eplb_r32").strategy.eplb.num_redundant == 32


# ---------------------------------------------------------------------------- eplb
def eplb_context(*overrides):
    return prepare(config("strategy=eplb", *TIGHT, *overrides))[3]


def test_eplb_replicates_hot_experts_and_balances_better_than_round_robin():
    ctx = eplb_context("strategy.eplb.num_redundant=16")  # 32 slots = 4 per GPU
    placement = eplb(ctx)
    assert placement.info["eplb_num_replicas"] == 32
    counts = placement.replica_counts()
    assert counts.sum() + placement.info["eplb_merged_replicas"] == 32 * ctx.layers
    for layer in range(ctx.layers):  # the hottest expert has the most replicas
        hottest = int(np.argmax(ctx.expected_load[layer]))
        assert counts[layer, hottest] == counts[layer].max() > 1
    rr = STRATEGIES["round_robin"].place(dataclasses.replace(
        ctx, strategy=dataclasses.replace(ctx.strategy, name="round_robin")))

    def imbalance(p):
        load = p.gpu_load(ctx.expected_load)
        return (load.max(axis=1) / load.mean(axis=1)).mean()

    assert imbalance(placement) < 0.8 * imbalance(rr)


def test_eplb_rounds_replicas_up_to_a_multiple_of_the_gpus():
    placement = eplb(eplb_context("strategy.eplb.num_redundant=3"))  # 16 + 3 -> 24 on 8 GPUs
    assert placement.info["eplb_num_replicas"] == 24
    assert placement.info["eplb_redundant"] == 8


def test_eplb_replicas_that_do_not_fit_are_a_config_error():
    with pytest.raises(ConfigError) as err:
        eplb(eplb_context("strategy.eplb.num_redundant=25"))  # 41 -> 48 = 6 per GPU > 5
    assert err.value.key == "strategy.eplb.num_redundant"
    assert "at most 24" in str(err.value)


def test_eplb_groups_must_divide_the_experts_under_the_hierarchical_policy():
    with pytest.raises(ConfigError) as err:
        eplb(eplb_context("strategy.eplb.num_groups=6"))  # 6 groups on 2 servers: hierarchical
    assert err.value.key == "strategy.eplb.num_groups"
    # 3 groups do not divide among 2 servers: the global policy, which ignores groups
    assert eplb(eplb_context("strategy.eplb.num_groups=3")).info["eplb_policy"] == "global"


def test_eplb_hierarchical_policy_when_groups_divide_by_servers():
    placement = eplb(eplb_context("strategy.eplb.num_groups=4"))  # 2 servers
    assert placement.info["eplb_policy"] == "hierarchical"
    # each group of 4 experts stays inside one server (2 x 4 GPUs)
    for layer in placement.replicas:
        for group in range(4):
            servers = {g // 4 for e in range(group * 4, group * 4 + 4) for g in layer[e]}
            assert len(servers) == 1


# ---------------------------------------------------------------------------- simulation
def mean_p99(strategy: str, seeds, *overrides, tmp_path, base=None) -> float:
    kwargs = {} if base is None else {"base": base}
    rows = [run_cell(config(f"strategy={strategy}", f"seed={s}", f"output_dir={tmp_path}",
                            *overrides, **kwargs)).tables["cells"][0] for s in seeds]
    return float(np.mean([row["p99_ms"] for row in rows]))


#: The default skewed stationary fat-tree cell (DeepSeek-V3 on 64 GPUs), stated explicitly
#: so that changes of the defaults do not change what these tests measure.
DEFAULT_CELL = (*REQUEST_MODEL, "scenario=stationary", "topology=fat_tree", "topology.k=4",
                "topology.fabric_gbit_s=400", "model=deepseek_v3", "sim.window_s=0.025",
                "sim.drain_s=1.0", "scenario.rate=1000", "scenario.tokens_per_request=512",
                "scenario.zipf_s=1.0")


def test_helios_static_beats_round_robin_on_a_short_default_cell(tmp_path):
    """Fast variant of the acceptance test: the default cell, shortened, 2 seeds."""
    over = (*DEFAULT_CELL, "sim.duration_s=0.12", "sim.warmup_s=0.04")
    # The request model's sends curve keeps the relaxation weak: in 4 s the solver proves
    # little, and the objective-greedy start is what ships (ilp_status=start).
    static = mean_p99("helios_static", range(2), *over, "strategy.ilp.time_limit_s=4",
                      tmp_path=tmp_path, base=())
    rr = mean_p99("round_robin", range(2), *over, tmp_path=tmp_path, base=())
    assert static < 0.9 * rr


@pytest.mark.slow
def test_helios_static_beats_round_robin_on_the_default_scenario(tmp_path):
    """The acceptance criterion: default skewed stationary fat-tree cell, 5 seeds."""
    over = (*DEFAULT_CELL, "sim.duration_s=0.35", "sim.warmup_s=0.05")
    static = mean_p99("helios_static", range(5), *over, tmp_path=tmp_path, base=())
    rr = mean_p99("round_robin", range(5), *over, tmp_path=tmp_path, base=())
    assert static < rr


#: The seed study's Dragonfly (288 GPUs) at 2500 requests/s, where the former ILP stacked
#: each layer's hottest experts on 2 GPUs (91-97% busy) and lost to round_robin (P99 9.8
#: against 5.7 ms).
#: Issue 11's case (Zipf(1) popularity, as the seed study ran it).
SEED_DRAGONFLY_HIGH = ("serving=request", "scenario.popularity=zipf", "topology=seed_dragonfly",
                       "gpu.expert_memory_fraction=0.5",
                       "sim.layers=2", "sim.duration_s=0.15", "sim.warmup_s=0.05",
                       "sim.window_s=0.025", "sim.drain_s=1.0", "scenario.rate=2500")


def test_helios_static_is_not_worse_than_round_robin_on_the_loaded_dragonfly(run_cells):
    """Issue 11's regression case. At this size (288 GPUs) the MILP ships its load-aware
    start (``ilp_status`` ``start``) at a 3 s limit as at 10 s, so 3 s keeps the test
    within the suite's budget and tests the same placement rule, as do 0.05 s measured
    (P99 3.3-3.6 ms against round_robin's 3.9-6.0 on seeds 0-2). The four cells run two
    at a time (~40 s)."""
    over = {"helios_static": ("strategy.ilp.time_limit_s=3",), "round_robin": ()}
    rows = run_cells([config(*SEED_DRAGONFLY_HIGH, f"strategy={name}", *extra, f"seed={seed}",
                             "sim.duration_s=0.1", base=())
                      for name, extra in over.items() for seed in range(2)])
    static, rr = np.mean([r["p99_ms"] for r in rows[:2]]), np.mean([r["p99_ms"] for r in rows[2:]])
    assert static <= rr
