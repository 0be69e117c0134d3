"""Building a :class:`~helios.config.schema.CellConfig` from Hydra's mapping, and checking it.

:func:`cell_config` turns the mapping Hydra composes into the frozen dataclasses of
:mod:`helios.config.schema`, checking every key, type and range up front
(:func:`from_mapping`), then what single fields cannot show (:func:`check_consistency`),
so that a bad value fails with one :class:`~helios.errors.ConfigError` line before any
simulation starts. :func:`flatten` and :func:`to_dict` give a config back as plain data.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from typing import Any

import helios.config.scenarios  # noqa: F401  (registers the drift scenarios' options)
from helios.config.schema import (HIDDEN_AT_DEFAULT, SCENARIOS, SERVING, TOPOLOGIES, CellConfig,
                                  DragonflyConfig, EpServingConfig, FatTreeConfig, TopologyConfig)
from helios.errors import ConfigError


#: group name -> registry of option name -> dataclass, for groups chosen by ``name``.
GROUP_REGISTRIES: dict[str, Mapping[str, type]] = {
    "topology": TOPOLOGIES,
    "scenario": SCENARIOS,
    "serving": SERVING,
}


# --------------------------------------------------------------------------- parsing
def _describe_type(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return str(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise ConfigError(key, value, "a finite number")
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config field type {tp!r} for {key}")
    raise ConfigError(key, value, _describe_type(tp))


def _check_range(value: Any, meta: Mapping[str, Any], key: str, given: Any) -> None:
    """Check bounds of the coerced ``value``; errors show the user's ``given`` value."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(key, given, "one of " + ", ".join(map(str, choices)))
    pattern = meta.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, str(value)):
        raise ConfigError(key, given, meta.get("pattern_help", f"a string matching {pattern}"))
    bounds = [("gt", ">", lambda v, b: v > b), ("ge", ">=", lambda v, b: v >= b),
              ("lt", "<", lambda v, b: v < b), ("le", "<=", lambda v, b: v <= b)]
    needed = [(sym, b) for name, sym, ok in bounds
              if (b := meta.get(name)) is not None and not ok(value, b)]
    if needed:
        what = " and ".join(f"{sym} {b}" for name, sym, ok in bounds
                            if (b := meta.get(name)) is not None)
        raise ConfigError(key, given, f"{_describe_type(type(value))} {what}")


def from_mapping(cls: type, data: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and bad values.

    Nested dataclass fields are built recursively; keys are reported with their
    full dotted path (``prefix.key``).
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}".lstrip("."), data[key],
                              "unknown key; known keys: " + ", ".join(known))
    kwargs = {}
    for name, fld in known.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}".lstrip(".")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _group_from_mapping(name, tp, data[name], key)
        else:
            kwargs[name] = _coerce(data[name], tp, key)
            _check_range(kwargs[name], fld.metadata, key, data[name])
    return cls(**kwargs)


def _group_from_mapping(group: str, default_cls: type, data: Any, key: str) -> Any:
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(key, data, "a mapping of keys")
    registry = GROUP_REGISTRIES.get(group)
    if registry is None:
        return from_mapping(default_cls, data, key)
    name = (data or {}).get("name", default_cls().name)
    if name not in registry:
        raise ConfigError(group, name, "one of " + ", ".join(sorted(registry)))
    return from_mapping(registry[name], data, key)


def cell_config(data: Mapping[str, Any]) -> CellConfig:
    """Validate a composed config mapping and return the typed :class:`CellConfig`.

    Raises
    ------
    ConfigError
        For the first unknown key, wrong type, out-of-range value or inconsistent
        combination found.
    """
    from helios.preflight import check_cost

    cfg = from_mapping(CellConfig, {k: v for k, v in data.items() if k != "hydra"}, "")
    check_consistency(cfg)
    check_cost(cfg)
    return cfg


def check_consistency(cfg: CellConfig) -> None:
    """Cross-field checks that no single field can make."""
    from helios.moe import expert_slots_per_gpu
    from helios.placement import STRATEGIES
    from helios.sim.routing import ROUTERS

    model, sim, topo = cfg.model, cfg.sim, cfg.topology
    if cfg.strategy.name not in STRATEGIES:
        raise ConfigError("strategy", cfg.strategy.name, "one of " + ", ".join(sorted(STRATEGIES)))
    if cfg.strategy.routing not in ROUTERS:
        raise ConfigError("strategy.routing", cfg.strategy.routing,
                          "one of " + ", ".join(sorted(ROUTERS)))
    if model.top_k > model.num_experts:
        raise ConfigError("model.top_k", model.top_k,
                          f"at most model.num_experts ({model.num_experts})")
    if sim.warmup_s >= sim.duration_s:
        raise ConfigError("sim.warmup_s", sim.warmup_s,
                          f"less than sim.duration_s ({sim.duration_s})")
    if sim.window_s > sim.duration_s:
        raise ConfigError("sim.window_s", sim.window_s,
                          f"at most sim.duration_s ({sim.duration_s})")
    if sim.layers is not None and sim.layers > model.num_moe_layers:
        raise ConfigError("sim.layers", sim.layers,
                          f"at most model.num_moe_layers ({model.num_moe_layers})")
    _check_popularity(cfg)
    _check_thin_servers(cfg.topology)
    cfg.scenario.validate(cfg)
    homes = cfg.scenario.home_servers
    if homes is not None:
        servers = topology_num_gpus(topo) // topo.gpus_per_server
        if isinstance(cfg.serving, EpServingConfig):
            raise ConfigError("scenario.home_servers", homes,
                              "null with serving=ep (every GPU is an attention rank there)")
        if homes > servers:
            raise ConfigError("scenario.home_servers", homes, f"at most the {servers} servers")
    if isinstance(topo, FatTreeConfig) and topo.k % 2:
        raise ConfigError("topology.k", topo.k, "an even integer >= 2")
    if isinstance(topo, DragonflyConfig) and topo.g is not None and topo.g > topo.a * topo.h + 1:
        raise ConfigError("topology.g", topo.g,
                          f"at most a*h+1 = {topo.a * topo.h + 1} so every group pair is linked")
    num_gpus = topology_num_gpus(topo)
    slots = expert_slots_per_gpu(model, cfg.gpu)
    if slots * num_gpus < model.num_experts:
        raise ConfigError(
            "gpu.expert_memory_fraction", cfg.gpu.expert_memory_fraction,
            f"too small: {num_gpus} GPUs x {slots} expert slots per layer cannot hold "
            f"{model.num_experts} experts of {model.name}; give experts more memory or GPUs")
    _check_strategy_needs(cfg, num_gpus, slots)
    if isinstance(cfg.serving, EpServingConfig):
        _check_ep(cfg)
    else:
        from helios.sim.adaptation import CONTROLLERS
        from helios.sim.ep.adapters import EP_ADAPTERS

        if cfg.strategy.name in EP_ADAPTERS and cfg.strategy.name not in CONTROLLERS:
            raise ConfigError("strategy", cfg.strategy.name,
                              "a strategy of serving=request (this one runs with serving=ep; "
                              "the request model's dynamic strategies: "
                              + ", ".join(sorted(CONTROLLERS)) + ")")


def _check_thin_servers(topo: TopologyConfig) -> None:
    """The generators' mixed-server check, before any graph is built."""
    from helios.topology.builder import check_thin_servers

    if not topo.thin_servers:
        return
    check_thin_servers(topology_num_gpus(topo) // topo.gpus_per_server, topo.gpus_per_server,
                       topo.nic_per_gpu, topo.nics_per_server, topo.thin_servers, topo.thin_nics)


def _check_popularity(cfg: CellConfig) -> None:
    """A measured-skew target that top-k gating can reach."""
    from helios.popularity import max_gini

    scenario, model = cfg.scenario, cfg.model
    if scenario.popularity != "measured" or model.top_k >= model.num_experts:
        return  # every token picks every expert: the popularity has no effect
    ceiling = max_gini(model.num_experts, model.top_k)
    key, target = (("model.routing_gini", model.routing_gini) if scenario.gini is None
                   else ("scenario.gini", scenario.gini))
    if target >= ceiling:
        raise ConfigError(key, target, f"below 1 - model.top_k/model.num_experts = {ceiling:.4g} "
                                       "(the Gini when every token picks the same experts)")


def _check_ep(cfg: CellConfig) -> None:
    """serving=ep checks: what the model supports and a KV cache that holds a request."""
    from helios.sim.ep.engine import kv_budget_tokens, longest_request

    adapt = cfg.strategy.adaptation
    if adapt.migration_gbyte_s is not None and adapt.transfer != "async":
        raise ConfigError("strategy.adaptation.migration_gbyte_s", adapt.migration_gbyte_s,
                          "null with strategy.adaptation.transfer=stop_the_world (a budget "
                          "paces background copies; set transfer=async)")
    if cfg.strategy.routing == "least_loaded":
        raise ConfigError("strategy.routing", cfg.strategy.routing,
                          "nearest, round_robin, weighted, congestion_aware or oracle_congestion "
                          "with serving=ep (a step leaves no GPU queue to compare)")
    if cfg.serving.dispatch == "per_node" and cfg.topology.gpus_per_server == 1:
        raise ConfigError("serving.dispatch", "per_node",
                          "per_gpu or per_expert on servers of one GPU (per_node forwards "
                          "over a server's NVLink)")
    serving = cfg.serving
    if serving.initial_decode_requests > serving.max_running_requests:
        raise ConfigError("serving.initial_decode_requests", serving.initial_decode_requests,
                          f"at most serving.max_running_requests ({serving.max_running_requests})")
    budget, need = kv_budget_tokens(cfg), longest_request(cfg.serving)
    if serving.initial_decode_requests * need > budget:
        raise ConfigError("serving.initial_decode_requests", serving.initial_decode_requests,
                          f"at most {budget // need} requests of {need} tokens in a rank's KV "
                          f"cache of {budget} tokens")
    if budget < need:
        raise ConfigError("serving.kv_memory_fraction", cfg.serving.kv_memory_fraction,
                          f"large enough for one request of {need} tokens; it holds {budget} "
                          f"tokens of {cfg.model.name}'s KV cache")


def _check_strategy_needs(cfg: CellConfig, num_gpus: int, slots: int) -> None:
    """Strategy checks that would otherwise fail only inside the simulation."""
    import importlib.util

    from helios.placement import STRATEGIES
    from helios.placement.eplb import check_eplb_fits

    params = STRATEGIES[cfg.strategy.name].params
    if "file" in params:
        _check_placement_file(cfg, num_gpus, slots)
    if "eplb" in params:
        check_eplb_fits(cfg.strategy.eplb, cfg.model.num_experts, num_gpus, slots,
                        num_gpus // cfg.topology.gpus_per_server)
    if "ilp" in params:
        if importlib.util.find_spec("highspy") is None:
            raise ConfigError("strategy.ilp.solver", "highs", "an installed highspy (pip install highspy)")
        extra, E = cfg.strategy.ilp.num_redundant, cfg.model.num_experts
        if extra is not None and E + extra > num_gpus * slots:
            raise ConfigError("strategy.ilp.num_redundant", extra,
                              f"at most {num_gpus * slots - E}: {num_gpus} GPUs x {slots} expert "
                              f"slots per layer hold {num_gpus * slots} copies of {E} experts")


def _check_placement_file(cfg: CellConfig, num_gpus: int, slots: int) -> None:
    """strategy=from_file: the file exists, parses, and fits the model, cluster and memory."""
    from helios.placement.deploy import placement_from_document, read_document

    path = cfg.strategy.file.path
    if not path:
        raise ConfigError("strategy.file.path", path, "the placement file to simulate")
    model = cfg.model
    placement = placement_from_document(read_document(path), model.num_experts,
                                        model.num_moe_layers, model.num_dense_layers, num_gpus, path)
    if placement.info["file_slots_per_gpu"] > slots:
        raise ConfigError("strategy.file.path", path,
                          f"at most {slots} expert slots per GPU per layer "
                          f"(the file has {placement.info['file_slots_per_gpu']})")


def topology_num_gpus(topo: TopologyConfig) -> int:
    """Number of GPUs the topology config describes, without building the graph."""
    if isinstance(topo, FatTreeConfig):
        servers = topo.k**3 // 4
    elif isinstance(topo, DragonflyConfig):
        groups = topo.g if topo.g is not None else topo.a * topo.h + 1
        servers = groups * topo.a * topo.p
    else:  # pragma: no cover - registry and this function are kept together
        raise TypeError(type(topo))
    return servers * topo.gpus_per_server


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a (nested) config dataclass as ``{"dotted.key": value}``."""
    out: dict[str, Any] = {}
    for fld in dataclasses.fields(cfg):
        value = getattr(cfg, fld.name)
        key = f"{prefix}{fld.name}"
        if _hidden(cfg, fld.name):
            continue
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as nested plain dicts (JSON/YAML-ready); ``cell_config`` reads it back."""
    data = dataclasses.asdict(cfg)
    for name in [n for n in data if _hidden(cfg, n)]:
        del data[name]
    return data


def _hidden(cfg: Any, name: str) -> bool:
    """Whether section ``name`` of ``cfg`` is left out (see :data:`HIDDEN_AT_DEFAULT`)."""
    if not isinstance(cfg, CellConfig) or name not in HIDDEN_AT_DEFAULT:
        return False
    value = getattr(cfg, name)
    return bool(value == type(value)())

