"""Configs shared by tests: composed from the real conf/ tree, memoised."""

from __future__ import annotations

import functools

from helios.config import CellConfig, cell_config
from helios.compose import compose

#: The request model's defaults before serving=ep became the default (4-GPU servers behind
#: one bonded NIC, 2 simulated layers, half of HBM for experts, Zipf(1) popularity).
REQUEST_MODEL = ("serving=request", "sim.layers=2", "topology.gpus_per_server=4",
                 "topology.nics_per_server=1", "topology.nic_per_gpu=false",
                 "gpu.expert_memory_fraction=0.5", "scenario.popularity=zipf")

#: A small, fast cell of the request model: tiny model on a k=2 fat-tree (2 servers x 4 GPUs).
TINY = (*REQUEST_MODEL, "model=tiny", "topology.k=2", "sim.duration_s=0.2", "sim.warmup_s=0.04",
        "sim.window_s=0.02", "scenario.rate=600", "scenario.tokens_per_request=256",
        "topology.nic_gbit_s=50", "topology.fabric_gbit_s=50")

#: A small, fast cell of serving=ep: tiny model, 2 servers x 4 GPUs with a NIC per GPU,
#: Zipf(1) popularity (skewed enough for placement and adaptation to matter on 16 experts).
TINY_EP = ("serving=ep", "model=tiny", "scenario.popularity=zipf", "topology.k=2", "topology.gpus_per_server=4",
           "topology.fabric_gbit_s=1600", "sim.duration_s=0.4", "sim.warmup_s=0.1",
           "sim.window_s=0.05", "sim.drain_s=0.5", "scenario.rate=400",
           "serving.prompt_tokens=128", "serving.output_tokens=16")


@functools.lru_cache(maxsize=64)
def _composed(overrides: tuple[str, ...]) -> CellConfig:
    return cell_config(compose(list(overrides)))


def config(*overrides: str, base: tuple[str, ...] = TINY) -> CellConfig:
    """The validated config of ``base`` plus ``overrides`` (later ones win)."""
    return _composed(tuple(base) + tuple(overrides))
