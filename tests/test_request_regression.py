"""serving=request gives, for the same config and seed, the figures it gave before serving=ep.

The figures were recorded with the engine as it was before the ``serving`` group existed
(commit 442dd73), from the configs below; each pins the request model's old defaults
explicitly (4-GPU servers behind one bonded NIC, 400G fabric, 2 layers, half of HBM for
experts), so that later default changes cannot move them.
"""

from __future__ import annotations

import pytest

from helios.cell import run_cell
from tests._configs import REQUEST_MODEL, config

OLD_FAT_TREE = ("topology.k=4", "topology.fabric_gbit_s=400")
OLD_DRAGONFLY = ("topology=dragonfly", "topology.local_gbit_s=400", "topology.global_gbit_s=400")

CASES = {
    "tiny_fat_tree_rr": (
        ("model=tiny", "topology.k=2", "sim.duration_s=0.2", "sim.warmup_s=0.04",
         "sim.window_s=0.02", "scenario.rate=600", "scenario.tokens_per_request=256",
         "topology.nic_gbit_s=50", "topology.fabric_gbit_s=50"),
        {"p50_ms": 1.2640506396019435, "p99_ms": 1.4897250134234048,
         "mean_ms": 1.0654388738603076, "goodput_tok_s": 150400.0,
         "max_link_util": 0.09791487999999855, "gpu_load_imbalance": 1.4580592105263157,
         "cross_server_bytes": 239710208.0, "requests_measured": 95}),
    "tiny_dragonfly_greedy_drift": (
        (*OLD_DRAGONFLY, "model=tiny", "topology.a=2", "topology.p=1", "topology.h=1",
         "strategy=greedy", "scenario=gradual_drift", "sim.duration_s=0.2", "sim.warmup_s=0.04",
         "sim.window_s=0.02", "scenario.rate=800", "scenario.tokens_per_request=128", "seed=3"),
        {"p50_ms": 0.07957483091203948, "p99_ms": 0.10574627980110621,
         "mean_ms": 0.0814187338797064, "goodput_tok_s": 100800.0,
         "max_link_util": 0.007862271999998323, "gpu_load_imbalance": 4.699404761904762,
         "cross_server_bytes": 268562432.0, "requests_measured": 126}),
    "dsv3_fat_tree_eplb": (
        (*OLD_FAT_TREE, "strategy=eplb", "sim.duration_s=0.1", "sim.warmup_s=0.02",
         "scenario.rate=1000", "seed=1"),
        {"p50_ms": 2.8617844983614553, "p99_ms": 6.084222606257131,
         "mean_ms": 3.3413991675908448, "goodput_tok_s": 473600.0,
         "max_link_util": 0.26502030087280043, "gpu_load_imbalance": 1.1050897107286708,
         "cross_server_bytes": 14785763328.0, "requests_measured": 74}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_request_model_figures_are_unchanged(name):
    overrides, expected = CASES[name]
    row = run_cell(config(*overrides, base=REQUEST_MODEL), cache=False).tables["cells"][0]
    assert {k: row[k] for k in expected} == expected
