"""Workload draws: Poisson arrivals, Zipf popularity, top-k sampling, seeding; MoE figures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from _configs import config
from helios.moe import expert_bytes, expert_slots_per_gpu, model_spec
from helios.popularity import zipf_popularity
from helios.workload import Workload, gumbel_top_k, sample_top_k


def workload(seed=0, **scenario):
    cfg = config()
    from dataclasses import replace
    sc = replace(cfg.scenario, **scenario)
    return Workload(sc, 16, 2, 8, layers=2, duration=2.0, seed=seed)


def numpy_sample_top_k(probs, tokens, k, rng):
    """The numpy formulation of :func:`sample_top_k` (searchsorted draws, first distinct
    found through a stable sort of each row), which the compiled loop must reproduce."""
    num = probs.shape[0]
    if k == num:
        return np.broadcast_to(np.arange(k), (tokens, k)).copy()
    cdf = np.cumsum(probs)
    picks = np.searchsorted(cdf, rng.random((tokens, 2 * k + 4)) * cdf[-1], side="right")
    np.minimum(picks, num - 1, out=picks)
    order = np.argsort(picks, axis=1, kind="stable")
    ranked = np.take_along_axis(picks, order, axis=1)
    first_sorted = np.ones_like(ranked, dtype=bool)
    first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    keep = first & (np.cumsum(first, axis=1) <= k)
    short = keep.sum(axis=1) < k
    out = np.empty((tokens, k), dtype=picks.dtype)
    out[~short] = picks[~short][keep[~short]].reshape(-1, k)
    if short.any():
        with np.errstate(divide="ignore"):
            out[short] = gumbel_top_k(np.log(probs), int(short.sum()), k, rng)
    return out


@pytest.mark.parametrize("experts,k,tokens,skew", [
    (256, 8, 8192, 1.0),   # the expected-load profile of DeepSeek-V3 under Zipf(1)
    (256, 8, 300, 3.0),
    (64, 6, 5000, 0.0),    # uniform
    (16, 4, 1000, 2.0),    # skewed: about half the tokens fall back to Gumbel-top-k
    (32, 1, 100, 1.0),
    (256, 8, 0, 1.0),
])
def test_compiled_top_k_draws_are_the_numpy_draws(experts, k, tokens, skew):
    rng = np.random.default_rng(experts + tokens)
    p = rng.permutation(np.arange(1, experts + 1) ** -skew)
    p[experts // 2] = 0.0  # an expert nobody picks: equal CDF steps, searchsorted's right side
    p /= p.sum()
    want_rng, got_rng = np.random.default_rng(5), np.random.default_rng(5)
    want = numpy_sample_top_k(p, tokens, k, want_rng)
    got = sample_top_k(p, tokens, k, got_rng)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert got_rng.random() == want_rng.random()  # the two streams stay in step
    assert (np.sort(got, axis=1)[:, 1:] != np.sort(got, axis=1)[:, :-1]).all()


def test_compiled_draws_break_cdf_ties_as_searchsorted_right_does():
    from helios.sim.draws import first_distinct_by_cdf

    cdf = np.array([0.25, 0.5, 0.5, 1.0])  # expert 2 has no mass: a tie at 0.5
    u = np.array([[0.5, 0.25, 0.0, 0.99, 0.5, 0.7]])
    out = np.empty((1, 3), dtype=np.intp)
    assert not first_distinct_by_cdf(u, cdf, 3, out).any()
    want = np.minimum(np.searchsorted(cdf, u[0] * cdf[-1], side="right"), 3)
    assert out[0].tolist() == list(dict.fromkeys(want.tolist()))[:3] == [3, 1, 0]


def test_zipf_popularity_follows_rank_power_law():
    perm = np.random.default_rng(1).permutation(10)
    p = zipf_popularity(10, 1.2, perm)
    assert p.sum() == pytest.approx(1)
    assert p[perm[0]] / p[perm[3]] == pytest.approx(4**1.2)


@pytest.mark.parametrize("sampler", [sample_top_k, lambda p, t, k, r: gumbel_top_k(np.log(p), t, k, r)])
def test_top_k_sampling_is_without_replacement_and_matches_exact_inclusion(sampler):
    """Compare with exact inclusion probabilities of successive sampling (enumerated)."""
    p = np.array([0.5, 0.25, 0.15, 0.1])
    k = 2
    # P(i in first two) = p_i + sum_{j != i} p_j * p_i / (1 - p_j)
    exact = np.array([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i)
                      for i in range(4)])
    picks = sampler(p, 100_000, k, np.random.default_rng(3))
    assert all(len(set(row)) == k for row in picks[:2000])
    freq = np.bincount(picks.ravel(), minlength=4) / 100_000
    np.testing.assert_allclose(freq, exact, atol=0.006)


def test_arrivals_are_poisson_at_the_configured_rate():
    wl = workload(rate=2000.0)
    times = np.array(list(wl.arrival_times()))
    assert len(times) == pytest.approx(4000, rel=0.05)
    gaps = np.diff(times)
    assert stats.kstest(gaps, "expon", args=(0, 1 / 2000)).pvalue > 0.01


def test_requests_are_reproducible_and_seed_dependent():
    a = list(workload(seed=5).requests())[:50]
    b = list(workload(seed=5).requests())[:50]
    c = list(workload(seed=6).requests())[:50]
    assert [r.arrival for r in a] == [r.arrival for r in b]
    assert all((x.experts[1] == y.experts[1]).all() for x, y in zip(a, b))
    assert [r.arrival for r in a] != [r.arrival for r in c]


def test_popularity_seed_fixes_hot_experts_across_cell_seeds():
    assert (workload(seed=1).scenario.popularity(0) == workload(seed=2).scenario.popularity(0)).all()
    free = [workload(seed=s, popularity_seed=None).scenario.popularity(0) for s in (1, 2)]
    assert not (free[0] == free[1]).all()


def test_token_distributions_have_the_configured_mean():
    for dist in ("fixed", "poisson", "geometric"):
        wl = workload(token_distribution=dist, tokens_per_request=40)
        sizes = [wl.tokens() for _ in range(4000)]
        assert min(sizes) >= 1
        assert np.mean(sizes) == pytest.approx(40, rel=0.05)


def test_expected_load_matches_the_gate_draws_of_the_requests():
    """The placement's expected load (from a profiling batch on a stream of its own) agrees
    with the expert counts of the requests the cell actually draws."""
    wl = workload(rate=2000.0, tokens_per_request=10)
    load = wl.expected_load()
    counts = np.zeros_like(load)
    for req in wl.requests():
        for layer, experts in enumerate(req.experts):
            counts[layer] += np.bincount(experts.ravel(), minlength=load.shape[1])
    observed = counts / wl.duration
    # Poisson arrivals: each count has relative noise ~ 1/sqrt(count); compare shares
    np.testing.assert_allclose(observed / observed.sum(1, keepdims=True),
                               load / load.sum(1, keepdims=True), atol=0.01)
    assert observed.sum() == pytest.approx(load.sum(), rel=0.1)


def test_expected_load_is_profiled_once_for_cells_that_share_a_popularity(monkeypatch):
    """Cells that differ only in their seed share the popularity and so the profile: a
    worker draws it once. The memo must not merge what differs (popularity, rate, k)."""
    import helios.workload as wmod

    monkeypatch.setattr(wmod, "_PROFILES", wmod.OrderedDict())
    draws = []
    real = wmod.sample_top_k
    monkeypatch.setattr(wmod, "sample_top_k", lambda *a: draws.append(1) or real(*a))
    first = workload(seed=1, rate=500.0).expected_load()
    profiled = len(draws)
    assert profiled == 2  # one batch per layer
    same = workload(seed=7, rate=1000.0).expected_load()
    assert len(draws) == profiled  # memoised: only the seed and the rate differ
    np.testing.assert_array_equal(same, 2 * first)
    first[0, 0] = -1.0  # a caller's array is its own
    assert workload(seed=1, rate=500.0).expected_load()[0, 0] >= 0
    own = workload(seed=1, rate=500.0, popularity_seed=None).expected_load()
    assert len(draws) == 2 * profiled  # another popularity: profiled anew
    assert not np.array_equal(own, first)
    drift = Workload(config("scenario=gradual_drift").scenario, 16, 2, 8, layers=2, duration=2.0, seed=1)
    early, late = drift.expected_load(0.0), drift.expected_load(1.9)
    assert not np.array_equal(early, late)  # the popularity at time t is part of the key


def test_moe_figures_for_deepseek_v3_on_h100():
    cfg = config("model=deepseek_v3", base=())
    spec = model_spec(cfg.model, cfg.gpu)
    assert expert_bytes(cfg.model) == 3 * 7168 * 2048 * 1
    assert spec.flops_per_token == 6 * 7168 * 2048
    assert spec.dispatch_token_bytes == 7168 and spec.combine_token_bytes == 2 * 7168
    # one token is weight-read bound; a big batch is compute bound
    assert spec.batch_seconds(1) == pytest.approx(spec.weight_read_seconds + spec.kernel_overhead_s)
    assert spec.batch_seconds(100_000) == pytest.approx(100_000 * spec.token_seconds + spec.kernel_overhead_s)
    assert spec.batch_seconds(0) == 0
    budget = 80 * 1024**3 * 0.55
    assert expert_slots_per_gpu(cfg.model, cfg.gpu) == int(budget // (expert_bytes(cfg.model) * 58))
