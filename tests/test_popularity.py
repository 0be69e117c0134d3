"""Expert popularity calibrated to measured routing skew (helios.popularity).

The calibration solves for the Gini of *expected* top-k counts; these tests check it
against gates actually sampled by the simulator's own sampler, over several seeds.
"""

import numpy as np
import pytest

from helios.cell import prepare
from helios.popularity import (gini, inclusion_probabilities, max_gini, measured_popularity,
                               zipf_popularity)
from helios.workload import sample_top_k
from tests._configs import config

TOKENS = 300_000


def sampled_gini(probs: np.ndarray, k: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    picks = sample_top_k(probs, TOKENS, k, rng)
    return gini(np.bincount(picks.ravel(), minlength=probs.size))


@pytest.mark.parametrize("experts,k,target", [(256, 8, 0.25), (128, 8, 0.19), (8, 2, 0.19),
                                              (64, 6, 0.40), (16, 4, 0.5)])
def test_sampled_gates_have_the_target_gini(experts, k, target):
    """DeepSeek-V3, Qwen3, Mixtral (exact enumeration), and strong skews: within 0.005."""
    perm = np.random.default_rng(7).permutation(experts)
    probs = measured_popularity(experts, k, target, perm)
    assert abs(probs.sum() - 1) < 1e-12
    for seed in range(3):
        assert abs(sampled_gini(probs, k, seed) - target) < 0.005, seed


def test_inclusion_probabilities_match_sampling_where_exact_and_approximate():
    rng = np.random.default_rng(0)
    for experts, k in ((8, 3), (300, 8)):  # 336 ordered picks: exact; 300 experts: Rosen
        probs = rng.dirichlet(np.full(experts, 0.7))
        counts = np.bincount(sample_top_k(probs, TOKENS, k, rng).ravel(), minlength=experts)
        pi = inclusion_probabilities(probs, k)
        assert abs(pi.sum() - k) < 1e-9
        assert np.abs(counts / TOKENS - pi).max() < 0.01


def test_zipf_1_is_far_more_skewed_than_the_measurement():
    """The seed study's Zipf(1) on DeepSeek-V3 (top-8 of 256): Gini ~0.63, not ~0.25."""
    probs = zipf_popularity(256, 1.0, np.arange(256))
    assert 0.60 < sampled_gini(probs, 8, 0) < 0.66


def test_the_default_cell_draws_the_models_measured_skew():
    """Through config, workload and the gate: every simulated layer's token counts over
    the requests of a run have the model's routing Gini, with its own hot experts."""
    for model, target in (("deepseek_v3", 0.25), ("qwen3_30b_a3b", 0.19)):
        cfg = config(f"model={model}", "sim.layers=3", "sim.duration_s=2.0", "scenario.rate=100",
                     base=())
        assert cfg.scenario.popularity == "measured" and cfg.model.routing_gini == target
        workload = prepare(cfg)[2]
        counts = np.zeros((3, cfg.model.num_experts))
        for req in workload.requests():
            for layer, experts in enumerate(req.experts):
                counts[layer] += np.bincount(experts.ravel(), minlength=cfg.model.num_experts)
        assert counts.sum() > 50_000
        for layer in range(3):
            assert abs(gini(counts[layer]) - target) < 0.01, (model, layer)
        assert len({int(np.argmax(c)) for c in counts}) > 1  # hot experts differ per layer


def test_a_zipf_cell_still_draws_zipf():
    cfg = config("scenario.popularity=zipf", "scenario.zipf_s=0.6", "sim.layers=1", base=())
    pop = prepare(cfg)[2].scenario.popularity(0.0)[0]
    assert np.allclose(np.sort(pop)[::-1], zipf_popularity(256, 0.6, np.arange(256)))


def test_gini_and_its_ceiling():
    assert gini(np.ones(10)) == 0.0
    assert gini(np.r_[np.zeros(9), 1.0]) == pytest.approx(0.9)
    # every token picking the same k experts is the most top-k gating can skew
    assert gini(np.r_[np.zeros(254), 1.0, 1.0]) == pytest.approx(max_gini(256, 2))


def test_top_k_of_every_expert_needs_no_reachable_gini():
    """A model whose tokens pick every expert has no skew to calibrate: it is valid, and
    every expert gets every token."""
    cfg = config("model.top_k=16", "sim.layers=1")  # tiny: 16 experts
    workload = prepare(cfg)[2]
    req = next(workload.requests())
    assert sorted(req.experts[0][0].tolist()) == list(range(16))
