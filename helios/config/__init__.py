"""Typed, validated configuration of one simulation cell.

Hydra composes the YAML files under ``conf/`` into a plain mapping; :func:`cell_config`
turns that mapping into frozen dataclasses, checking every key, type and range up
front so that a bad value fails with one :class:`~helios.errors.ConfigError` line
before any simulation starts.

* :mod:`helios.config.schema`: the dataclasses (plain typed data, with help texts);
* :mod:`helios.config.scenarios`: the drift scenarios' options;
* :mod:`helios.config.build`: building and checking a config, and flattening it.

This package imports nothing of Helios but :mod:`helios.errors` and
:mod:`helios.traces` (a trace scenario checks its file), so every other module may
import it.
"""

from __future__ import annotations

from helios.config.build import (GROUP_REGISTRIES, cell_config, check_consistency, flatten,
                                 from_mapping, to_dict, topology_num_gpus)
from helios.config.scenarios import (BurstyConfig, DomainShiftConfig, GradualDriftConfig,
                                     PeriodicConfig, SuddenShiftConfig, TraceConfig)
from helios.config.schema import (GIB, HIDDEN_AT_DEFAULT, NAME_HELP, NAME_PATTERN, SCENARIOS,
                                  SERVING, TOPOLOGIES, AdaptationConfig, CellConfig,
                                  DragonflyConfig, EplbConfig, EpServingConfig, FatTreeConfig,
                                  FaultConfig, FileStrategyConfig, GpuConfig, IlpConfig,
                                  ModelConfig, RayConfig, RecordConfig, RequestServingConfig,
                                  ScenarioConfig, ServingConfig, SimConfig, StrategyConfig,
                                  TelemetryConfig, TopologyConfig, simulated_layers, spec)

__all__ = [
    "GROUP_REGISTRIES", "cell_config", "check_consistency", "flatten", "from_mapping", "to_dict",
    "topology_num_gpus", "BurstyConfig", "DomainShiftConfig", "GradualDriftConfig",
    "PeriodicConfig", "SuddenShiftConfig", "TraceConfig", "GIB", "HIDDEN_AT_DEFAULT",
    "NAME_HELP", "NAME_PATTERN", "SCENARIOS", "SERVING", "TOPOLOGIES", "AdaptationConfig",
    "CellConfig", "DragonflyConfig", "EplbConfig", "EpServingConfig", "FatTreeConfig",
    "FaultConfig", "FileStrategyConfig", "GpuConfig", "IlpConfig", "ModelConfig", "RayConfig",
    "RecordConfig", "RequestServingConfig", "ScenarioConfig", "ServingConfig", "SimConfig",
    "StrategyConfig", "TelemetryConfig", "TopologyConfig", "simulated_layers", "spec",
]
