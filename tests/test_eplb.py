"""Tests for the numpy DeepSeek-EPLB port (helios.placement.eplb)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from helios.errors import ConfigError
from helios.placement.eplb import balanced_packing, balancedness, rebalance_experts, replicate_experts

# The example of https://github.com/deepseek-ai/EPLB (README): 2 layers x 12 experts,
# 16 replicas, 4 groups, 2 nodes, 8 GPUs, and the phy2log it publishes.
README_WEIGHT = np.array(
    [
        [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
        [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
    ]
)
README_PHY2LOG = np.array(
    [
        [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
        [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
    ]
)


def assert_consistent(weight, phy2log, log2phy, logcnt, num_replicas):
    """Shapes, replica counts and the two maps agreeing with each other."""
    num_layers, num_log = weight.shape
    assert phy2log.shape == (num_layers, num_replicas)
    assert log2phy.shape == (num_layers, num_log, logcnt.max())  # the reference's width
    assert logcnt.shape == (num_layers, num_log)
    assert np.all(logcnt >= 1)
    assert np.all(logcnt.sum(axis=1) == num_replicas)
    for layer in range(num_layers):
        counts = np.bincount(phy2log[layer], minlength=num_log)
        assert np.array_equal(counts, logcnt[layer])
        for expert in range(num_log):
            n = logcnt[layer, expert]
            slots = log2phy[layer, expert, :n]
            assert sorted(slots.tolist()) == np.flatnonzero(phy2log[layer] == expert).tolist()
            assert np.all(log2phy[layer, expert, n:] == -1)


# --- an independent, list-based reading of the published algorithm, one layer at a time ---


def _ref_pack(loads, num_packs):
    """Items (in entry order) of each pack."""
    per_pack = len(loads) // num_packs
    if per_pack == 1:
        return [[i] for i in range(len(loads))]
    packs = [[] for _ in range(num_packs)]
    totals = [np.float32(0)] * num_packs
    for item in sorted(range(len(loads)), key=lambda i: -loads[i]):  # Python's sort is stable
        open_packs = [p for p in range(num_packs) if len(packs[p]) < per_pack]
        pack = min(open_packs, key=lambda p: totals[p])
        packs[pack].append(item)
        totals[pack] = np.float32(totals[pack] + loads[item])
    return packs


def _ref_layer(row, num_replicas, num_groups, num_nodes, num_gpus):
    """(phy2log, log2phy as list of slot lists) for one layer of integer loads."""
    row = [np.float32(x) for x in row]
    num_log = len(row)
    if num_groups % num_nodes:
        num_groups, num_nodes = 1, 1
    size = num_log // num_groups
    group_load = [np.float32(sum(row[g * size:(g + 1) * size])) for g in range(num_groups)]
    phy2log, replicas = [], {e: [] for e in range(num_log)}
    for node_groups in _ref_pack(group_load, num_nodes):
        experts = [g * size + j for g in node_groups for j in range(size)]
        slots, count = list(experts), {e: 1 for e in experts}
        for _ in range(num_replicas // num_nodes - len(experts)):
            best = experts[0]
            for e in experts:
                if row[e] / np.float32(count[e]) > row[best] / np.float32(count[best]):
                    best = e
            slots.append(best)
            count[best] += 1
        ranks = [slots[:k].count(e) for k, e in enumerate(slots)]
        shares = [row[e] / np.float32(count[e]) for e in slots]
        for gpu_items in _ref_pack(shares, num_gpus // num_nodes):
            for k in gpu_items:
                replicas[slots[k]].append((ranks[k], len(phy2log)))
                phy2log.append(slots[k])
    return phy2log, {e: [s for _, s in sorted(v)] for e, v in replicas.items()}


def assert_matches_reference(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """The port's maps are consistent and equal the list-based reading's, layer by layer."""
    phy2log, log2phy, logcnt = rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)
    assert_consistent(weight, phy2log, log2phy, logcnt, num_replicas)
    for layer in range(weight.shape[0]):
        ref_phy2log, ref_replicas = _ref_layer(weight[layer], num_replicas, num_groups, num_nodes, num_gpus)
        assert phy2log[layer].tolist() == ref_phy2log
        for e in range(weight.shape[1]):
            assert log2phy[layer, e, : logcnt[layer, e]].tolist() == ref_replicas[e]


# --- tests ---


def test_readme_example_reproduces_published_phy2log():
    phy2log, log2phy, logcnt = rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    np.testing.assert_array_equal(phy2log, README_PHY2LOG)
    assert_consistent(README_WEIGHT, phy2log, log2phy, logcnt, 16)
    # Hierarchical policy: each group's 3 experts sit on one node (slots 0-7 or 8-15).
    for layer in range(2):
        for group in range(4):
            nodes = {s // 8 for e in range(group * 3, group * 3 + 3) for s in log2phy[layer, e, : logcnt[layer, e]]}
            assert len(nodes) == 1


@pytest.mark.parametrize(
    "num_replicas, num_groups, num_nodes, num_gpus",
    [(16, 4, 2, 8), (24, 4, 4, 8), (24, 6, 2, 4), (12, 4, 1, 4), (16, 4, 8, 8), (20, 3, 2, 4), (12, 1, 1, 12)],
)
def test_invariants_and_match_with_reference_reading(num_replicas, num_groups, num_nodes, num_gpus):
    # Small integer loads give many ties, which exercises the tie-breaking rules.
    rng = np.random.default_rng(1234)
    weight = rng.integers(0, 6, size=(5, 12))
    assert_matches_reference(weight, num_replicas, num_groups, num_nodes, num_gpus)


@pytest.mark.parametrize(
    "num_replicas, num_groups, num_nodes, num_gpus",
    [(16, 4, 2, 8), (24, 6, 2, 4), (16, 4, 8, 8), (24, 4, 4, 8),   # hierarchical
     (16, 5, 2, 8), (24, 4, 3, 8), (12, 7, 2, 4), (12, 1, 5, 6),   # global, inputs only it allows
     (12, 1, 1, 12)],
)
def test_matches_the_reference_reading_on_loads_without_ties(num_replicas, num_groups, num_nodes,
                                                              num_gpus):
    """Continuous loads (no ties), both policies, and the global policy's inputs the
    reference accepts although groups or nodes do not divide (it ignores both)."""
    rng = np.random.default_rng(num_replicas * 100 + num_groups * 10 + num_nodes)
    weight = rng.gamma(0.6, 50.0, size=(6, 12))
    assert_matches_reference(weight, num_replicas, num_groups, num_nodes, num_gpus)


def test_global_policy_when_groups_do_not_split_over_nodes():
    rng = np.random.default_rng(5)
    weight = rng.gamma(0.5, 100.0, size=(3, 16))
    # 4 groups over 3 nodes: not divisible, so the global policy runs.
    phy2log, log2phy, logcnt = rebalance_experts(weight, 24, 4, 3, 6)
    assert_consistent(weight, phy2log, log2phy, logcnt, 24)
    # Global means one node: same result as asking for one group on one node.
    same = rebalance_experts(weight, 24, 1, 1, 6)
    for ours, theirs in zip((phy2log, log2phy, logcnt), same):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("num_groups, num_nodes", [(1, 1), (8, 2)])
def test_balancedness_improves_with_redundant_experts_on_zipf(num_groups, num_nodes):
    ranks = np.random.default_rng(7).permutation(64) + 1  # which expert is how popular
    load = ranks.astype(float) ** -1.2
    scores = []
    for redundant in (0, 16, 32, 64):
        phy2log, _, logcnt = rebalance_experts(load[None, :], 64 + redundant, num_groups, num_nodes, 16)
        scores.append(balancedness(load, phy2log[0], logcnt[0], 16))
    assert all(b >= a - 1e-12 for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > scores[0] + 0.1, scores
    assert all(0.0 < s <= 1.0 for s in scores)


def test_balancedness_value():
    # Two GPUs, slots [e0, e1 | e0, e2]: e0 split in half -> GPU loads 4+2=6 and 4+6=10.
    value = balancedness(np.array([8.0, 2.0, 6.0]), np.array([0, 1, 0, 2]), np.array([2, 1, 1]), 2)
    assert value == pytest.approx(8.0 / 10.0)
    assert balancedness(np.zeros(3), np.array([0, 1, 2, 0]), np.array([2, 1, 1]), 2) == 1.0


@pytest.mark.parametrize("num_log, redundant", [(n, r) for n in range(1, 5) for r in range(0, 4)])
def test_replication_minimises_max_load_per_replica(num_log, redundant):
    rng = np.random.default_rng(100 * num_log + redundant)
    for weight in (rng.uniform(0.0, 10.0, num_log), rng.integers(0, 4, num_log).astype(float)):
        _, _, logcnt = rebalance_experts(weight[None, :], num_log + redundant, 1, 1, 1)
        greedy = np.max(weight / logcnt[0])
        best = min(
            np.max(weight / (1 + np.bincount(extra, minlength=num_log)))
            for extra in itertools.combinations_with_replacement(range(num_log), redundant)
        )
        assert greedy == pytest.approx(best, rel=1e-6)


def test_ties_go_to_the_first_index():
    phy2log, rank, logcnt = replicate_experts(np.full((1, 3), 5.0, dtype=np.float32), 5)
    assert phy2log.tolist() == [[0, 1, 2, 0, 1]]
    assert rank.tolist() == [[0, 0, 0, 1, 1]]
    assert logcnt.tolist() == [[2, 2, 1]]
    pack, rank_in_pack = balanced_packing(np.ones((1, 4), dtype=np.float32), 2)
    assert pack.tolist() == [[0, 1, 0, 1]]
    assert rank_in_pack.tolist() == [[0, 0, 1, 1]]


def test_balanced_packing_fills_every_pack_equally():
    weight = np.random.default_rng(3).uniform(0, 1, size=(4, 12)).astype(np.float32)
    pack, rank_in_pack = balanced_packing(weight, 3)
    for row in range(4):
        assert np.array_equal(np.bincount(pack[row], minlength=3), [4, 4, 4])
        for p in range(3):
            assert sorted(rank_in_pack[row, pack[row] == p].tolist()) == [0, 1, 2, 3]


GOOD = dict(num_replicas=16, num_groups=4, num_nodes=2, num_gpus=8)


@pytest.mark.parametrize(
    "weight, overrides, key",
    [
        (README_WEIGHT, {"num_replicas": 18}, "num_replicas"),  # not a multiple of num_gpus
        (README_WEIGHT, {"num_replicas": 8}, "num_replicas"),  # fewer slots than experts
        (README_WEIGHT, {"num_groups": 8}, "num_groups"),  # hierarchical, 12 experts not divisible by 8
        (README_WEIGHT, {"num_nodes": 3, "num_groups": 3}, "num_nodes"),  # 3 nodes do not divide 8 GPUs
        (README_WEIGHT, {"num_gpus": 0}, "num_gpus"),
        (README_WEIGHT, {"num_groups": -4}, "num_groups"),
        (README_WEIGHT, {"num_nodes": 2.0}, "num_nodes"),
        (README_WEIGHT, {"num_gpus": True}, "num_gpus"),
        (README_WEIGHT[0], {}, "weight"),  # 1-D
        (README_WEIGHT[None], {}, "weight"),  # 3-D
        (np.zeros((2, 0)), {}, "weight"),  # no experts
        (README_WEIGHT * np.where(np.arange(12) == 3, -1, 1), {}, "weight"),  # negative load
        (np.where(np.arange(12) == 0, np.nan, README_WEIGHT), {}, "weight"),
        (np.where(np.arange(12) == 0, np.inf, README_WEIGHT), {}, "weight"),
        (np.full((2, 12), 1e38), {}, "weight"),  # per-layer total overflows float32
        (README_WEIGHT.astype(str), {}, "weight"),
    ],
)
def test_bad_inputs_raise_value_error(weight, overrides, key):
    with pytest.raises(ValueError) as info:
        rebalance_experts(weight, **{**GOOD, **overrides})
    assert isinstance(info.value, ConfigError)
    assert info.value.key == key
