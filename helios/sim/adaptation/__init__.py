"""Runtime adaptation engine: monitor, replicate, evict (``helios_dynamic``, ``eplb_dynamic``).

:func:`make_controller` returns the SimPy controller factory of a dynamic strategy
(``None`` for static ones); the simulation runs it as one process that wakes at every
window boundary ``k * sim.window_s``.

- :mod:`~helios.sim.adaptation.base`: monitoring, slots, transfers, evictions;
- :mod:`~helios.sim.adaptation.helios_engine`: ``helios_dynamic``;
- :mod:`~helios.sim.adaptation.eplb_engine`: ``eplb_dynamic``, ``eplb_incremental``;
- :mod:`~helios.sim.adaptation.oracle_engine`: ``oracle_static_window`` (a bound).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from helios.sim.adaptation.base import AdaptationEngine, Transfer
from helios.sim.adaptation.eplb_engine import EplbEngine, EplbIncrementalEngine
from helios.sim.adaptation.helios_engine import HeliosEngine
from helios.sim.adaptation.oracle_engine import OracleEngine

__all__ = ["CONTROLLERS", "AdaptationEngine", "EplbEngine", "EplbIncrementalEngine", "HeliosEngine",
           "OracleEngine", "Transfer", "make_controller"]

#: Dynamic strategies and their engines; every other strategy is static.
CONTROLLERS: dict[str, type] = {
    "helios_dynamic": HeliosEngine,
    "eplb_dynamic": EplbEngine,
    "eplb_incremental": EplbIncrementalEngine,
    "oracle_static_window": OracleEngine,
}


def make_controller(cfg: Any) -> Callable[[Any], Any] | None:
    """Controller factory of ``cfg.strategy`` (``controller(sim)`` -> SimPy generator), or None.

    Parameters
    ----------
    cfg : helios.config.CellConfig
    """
    engine_cls = CONTROLLERS.get(cfg.strategy.name)
    if engine_cls is None:
        return None
    return lambda sim: engine_cls(sim, cfg).run()
