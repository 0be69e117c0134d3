"""Configs shared by tests: composed from the real conf/ tree, memoised."""

from __future__ import annotations

import functools

from helios.config import CellConfig, cell_config
from helios.sweep import compose

#: A small, fast cell: tiny model on a k=2 fat-tree (2 servers x 4 GPUs).
TINY = ("model=tiny", "topology.k=2", "sim.duration_s=0.2", "sim.warmup_s=0.04",
        "sim.window_s=0.02", "scenario.rate=600", "scenario.tokens_per_request=256",
        "topology.nic_gbit_s=50", "topology.fabric_gbit_s=50")


@functools.lru_cache(maxsize=64)
def _composed(overrides: tuple[str, ...]) -> CellConfig:
    return cell_config(compose(list(overrides)))


def config(*overrides: str, base: tuple[str, ...] = TINY) -> CellConfig:
    """The validated config of ``base`` plus ``overrides`` (later ones win)."""
    return _composed(tuple(base) + tuple(overrides))
