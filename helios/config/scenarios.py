"""Options of the drift scenarios: one frozen dataclass each, registered in ``SCENARIOS``.

Their workloads (how each moves popularity or the rate over time) are in
:mod:`helios.scenarios` and :mod:`helios.mixtures`, under the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from helios.config.schema import SCENARIOS, ScenarioConfig, simulated_layers, spec
from helios.errors import ConfigError
from helios.traces import KEY, load_trace, trace_format, vllm_top_k


@dataclass(frozen=True)
class GradualDriftConfig(ScenarioConfig):
    """Popularity whose ranks rotate by ``shift`` every ``period_s`` seconds."""

    name: str = spec("gradual_drift", "scenario name")
    period_s: float = spec(0.1, "time between two rank rotations, s", gt=0)
    shift: int = spec(1, "ranks every expert moves down per period (mod num_experts)", ge=0)


@dataclass(frozen=True)
class SuddenShiftConfig(ScenarioConfig):
    """Popularity re-permuted once, at ``t_shift_s``."""

    name: str = spec("sudden_shift", "scenario name")
    t_shift_s: float = spec(0.15, "time of the popularity shift, s", ge=0)


@dataclass(frozen=True)
class BurstyConfig(ScenarioConfig):
    """Arrival rate ``rate`` with bursts of ``burst_rate`` for ``duty`` of every period."""

    name: str = spec("bursty", "scenario name")
    burst_rate: float = spec(2000.0, "arrival rate during a burst, requests/s", gt=0)
    period_s: float = spec(0.1, "length of one base + burst cycle, s", gt=0)
    duty: float = spec(0.3, "share of each period spent in the burst", gt=0, lt=1)


@dataclass(frozen=True)
class TraceConfig(ScenarioConfig):
    """Expert popularity replayed from a file of per-window loads."""

    name: str = spec("trace", "scenario name")
    trace_path: str = spec("conf/traces/example_trace.csv",
                           "CSV or Parquet (window, layer, expert, load), an SGLang expert "
                           "distribution dump (.npz) or vLLM routed experts (.npy); see helios.traces")
    trace_window_s: float = spec(0.03, "simulated seconds per trace window", gt=0)
    loop: bool = spec(True, "replay the trace from its start when it runs out (else hold the last window)")
    trace_tokens_per_window: int = spec(
        4096, "vLLM routed-experts traces (.npy): tokens per trace window", ge=1, le=1 << 30)

    def validate(self, cell: Any) -> None:
        """Load the trace and check it against the model and ``sim.layers``.

        Raises
        ------
        ConfigError
            Naming ``scenario.trace_path`` for a missing, unreadable or malformed file.
        """
        loads = load_trace(self.trace_path, self.trace_tokens_per_window)
        windows, layers, experts = loads.shape
        fmt = trace_format(self.trace_path)
        if fmt in ("sglang", "vllm") and layers != cell.model.num_moe_layers:
            raise ConfigError(KEY, self.trace_path,
                              f"a {fmt} trace of model.num_moe_layers ({cell.model.num_moe_layers}) "
                              f"MoE layers; it has {layers}")
        if fmt == "vllm":
            top_k = vllm_top_k(self.trace_path)
            if top_k != cell.model.top_k:
                raise ConfigError(KEY, self.trace_path, f"vLLM routed experts with model.top_k "
                                  f"({cell.model.top_k}) experts per token; it has {top_k}")
        if fmt == "sglang" and experts != cell.model.num_experts:
            raise ConfigError(KEY, self.trace_path,
                              f"an SGLang dump of model.num_experts ({cell.model.num_experts}) "
                              f"logical experts; it has {experts}")
        if experts > cell.model.num_experts:
            raise ConfigError(KEY, self.trace_path,
                              f"a trace with expert ids < model.num_experts ({cell.model.num_experts}); "
                              f"it has expert id {experts - 1}")
        wanted = simulated_layers(cell)
        if layers < wanted:
            raise ConfigError(KEY, self.trace_path,
                              f"a trace with at least sim.layers ({wanted}) layers; it has {layers}")
        positive = (loads[:, :wanted] > 0).sum(axis=2)
        bad = np.argwhere(positive < cell.model.top_k)
        if len(bad):
            w, layer = bad[0]
            raise ConfigError(KEY, self.trace_path,
                              f"a trace where every window and layer has at least model.top_k "
                              f"({cell.model.top_k}) experts with positive load; window {w} layer "
                              f"{layer} has {positive[w, layer]}")


@dataclass(frozen=True)
class DomainShiftConfig(ScenarioConfig):
    """A mixture of ``domains`` popularity profiles whose dominant one changes over time."""

    name: str = spec("domain_shift", "scenario name")
    domains: int = spec(3, "popularity profiles (request types, e.g. code / math / chat)", ge=2, le=64)
    dominant_weight: float = spec(0.7, "share of the traffic of the dominant profile", gt=0, le=1)
    period_s: float = spec(0.5, "time each profile dominates, s", gt=0)
    transition_s: float = spec(0.1, "blend time from one dominant profile to the next, s", ge=0)


@dataclass(frozen=True)
class PeriodicConfig(ScenarioConfig):
    """Two popularity profiles whose weights oscillate with period ``period_s``."""

    name: str = spec("periodic", "scenario name")
    period_s: float = spec(1.0, "period of the oscillation, s", gt=0)


for _config_cls in (GradualDriftConfig, SuddenShiftConfig, BurstyConfig, TraceConfig,
                    DomainShiftConfig, PeriodicConfig):
    SCENARIOS[_config_cls.name] = _config_cls
