"""The step model against DeepEP's published kernel figures (helios.bench.deepep)."""

from __future__ import annotations

import pytest

from helios.bench import deepep

NORMAL = {ranks: (d, c) for ranks, d, c in deepep.NORMAL}
LOW_LATENCY = {ranks: (d, c) for ranks, d, c in deepep.LOW_LATENCY}


@pytest.mark.parametrize("ranks", [16, 32, 64])
def test_normal_internode_bandwidths_are_within_30_percent_of_deepep(ranks):
    d, c, t = deepep.simulate(ranks, 4096, "per_node", deepep.FP8_BYTES, deepep.BF16_BYTES, 4)
    pairs = t.per_node[:ranks].sum(axis=1).mean()
    published_d, published_c = NORMAL[ranks]
    assert pairs * deepep.FP8_BYTES / d / 1e9 == pytest.approx(published_d, rel=0.3)
    assert pairs * deepep.BF16_BYTES / c / 1e9 == pytest.approx(published_c, rel=0.3)


@pytest.mark.parametrize("ranks", [16, 32, 64])
def test_low_latency_times_are_within_30_percent_of_deepep(ranks):
    d, c, _ = deepep.simulate(ranks, 128, "per_expert", deepep.LL_FP8_BYTES, deepep.BF16_BYTES,
                              None)
    published_d, published_c = LOW_LATENCY[ranks]
    assert d * 1e6 == pytest.approx(published_d, rel=0.3)
    assert c * 1e6 == pytest.approx(published_c, rel=0.3)
