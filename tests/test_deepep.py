"""The step model against DeepEP's published kernel figures (helios.bench.deepep)."""

from __future__ import annotations

import numpy as np
import pytest

from helios.bench import deepep
from helios.sim.ep.step import StepBuilder, layer_traffic
from helios.sim.kernel import LinkState

NORMAL = {ranks: (d, c) for ranks, d, c in deepep.NORMAL}
LOW_LATENCY = {ranks: (d, c) for ranks, d, c in deepep.LOW_LATENCY}


@pytest.fixture(scope="module")
def calibrated_normal_rows():
    """The normal-kernel rows with both calibrations of the bench: the fixed cost fitted
    on the low-latency rows, the sustained NVLink fraction on the EP8 rows."""
    overhead_s = deepep.fitted_overhead_us(deepep.low_latency_rows(0, 0.0)) * 1e-6
    fraction = deepep.fitted_nvlink_fraction(0, overhead_s)
    return fraction, deepep.normal_rows(0, overhead_s, fraction)


def test_the_fitted_nvlink_fraction_is_a_real_shortfall_below_the_links(calibrated_normal_rows):
    fraction, _ = calibrated_normal_rows
    assert 0.8 < fraction < 0.95


def test_calibrated_normal_internode_bandwidths_are_within_15_percent(calibrated_normal_rows):
    """Neither calibration saw an internode row: these six figures are held out."""
    _, rows = calibrated_normal_rows
    internode = [(name, sim, pub) for name, sim, pub, _ in rows if "internode" in name]
    assert len(internode) == 6
    for name, sim, pub in internode:
        assert sim == pytest.approx(pub, rel=0.15), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_per_node_combine_pipelines_its_rdma_behind_the_first_nvlink_piece(seed):
    """EP32: the relays' RDMA is the busiest link of the combine, NVLink carries ~3/4 of
    its time. With every GPU sending piece k of all its flows before piece k + 1, the
    RDMA starts after about one NVLink piece (1/8): the combine stays within 25% of the
    busiest link's busy time (it was 34-36% with the direct flows sent whole, first)."""
    ranks = 32
    cluster = deepep._cluster(ranks)
    G = cluster.num_gpus
    src, gpu, experts = deepep._gate(ranks, 1024, 4, np.random.default_rng(seed))
    traffic = layer_traffic(src, gpu, experts, G, 8, deepep.EXPERTS)
    zero = np.zeros(G)
    plan = StepBuilder(G, 8, "per_node", 0.0, deepep.BF16_BYTES).build(
        0.0, zero, [[zero]], [[zero]], [[traffic]], zero)
    links = LinkState(cluster, 512.0 * 1024)
    combine_s = links.run(plan.graph.arrays())[plan.tail].max()
    busiest_s = (links.link_bytes / cluster.link_bandwidth).max()
    assert busiest_s <= combine_s <= 1.25 * busiest_s


@pytest.mark.parametrize("ranks", [16, 32, 64])
def test_low_latency_times_are_within_30_percent_of_deepep(ranks):
    d, c, _ = deepep.simulate(ranks, 128, "per_expert", deepep.LL_FP8_BYTES, deepep.BF16_BYTES,
                              None)
    published_d, published_c = LOW_LATENCY[ranks]
    assert d * 1e6 == pytest.approx(published_d, rel=0.3)
    assert c * 1e6 == pytest.approx(published_c, rel=0.3)
