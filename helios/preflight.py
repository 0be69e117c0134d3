"""Cost preflight: refuse a cell this machine cannot run, before anything is built.

:func:`check_cost` estimates, from the config alone (no cluster, no workload), the two
costs that grow without bound with the inputs, and compares them with the limits
``sim.max_events`` and ``sim.max_memory_gib`` (null: half of this machine's memory):

* **events**: the units of work of the event loop.
  ``serving=request``: requests (``rate x duration``) x layers x destinations per
  token batch (``min(E, G, tokens x top_k)``) x (2 messages x hops x chunks each + 3).
  ``serving=ep``: gate draws (``rate x duration x (prompt + output) x top_k x layers``)
  plus steps x layers x tasks per layer, with at most ``horizon / t_min`` steps
  (``t_min``: the roofline time of a step of one token per rank), ``G x min(G, 64) x 2 x
  (relay_chunks + 1)`` messages and 6 hops x the chunks of the steady-state step's
  dispatch and combine bytes (:func:`~helios.sim.ep.steady.representative_step`) per layer;
* **memory** (bytes): route tables and pairwise costs (``G^2 x 160``), the per-window
  meters (``(links + G) x windows x 32``), and the largest per-step or per-request
  arrays (``serving=ep``: 2 x the steady-state step's token-expert pairs x layers x 48;
  request: ``tokens x top_k x layers x 48``).

These are upper estimates meant to catch runaway inputs (a 1e12 rate, a nanosecond
window, 100,000 GPUs per server), not to predict run time. The error names the input
that drives the cost most: of the keys the estimate grows with, the one furthest above
its default (or, for ``sim.window_s`` and ``sim.chunk_kib``, below it).
"""

from __future__ import annotations

import math
import os
from typing import Any

from helios.errors import ConfigError

#: Bytes per GPU pair of routes and pairwise transfer costs (Python and NumPy).
ROUTE_BYTES_PER_PAIR = 160
#: Bytes per meter cell (a window x a link or GPU), Python floats in lists.
METER_BYTES = 32
#: Bytes per token-expert pair of gate and traffic arrays.
PAIR_BYTES = 48


def machine_memory_gib() -> float:
    """Physical memory of this machine, GiB (64 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 64.0


def estimate(cfg: Any) -> tuple[float, float]:
    """(events, memory bytes) of a cell (module doc), from ``cfg`` alone."""
    from helios.config import EpServingConfig, simulated_layers, topology_num_gpus

    model, sim, scen = cfg.model, cfg.sim, cfg.scenario
    G = float(topology_num_gpus(cfg.topology))
    layers = float(simulated_layers(cfg))
    horizon = sim.duration_s + sim.drain_s
    windows = math.ceil(horizon / sim.window_s) + 1
    links = 6.0 * G  # GPU<->switch both ways and the fabric above, generously
    memory = G * G * ROUTE_BYTES_PER_PAIR + (links + G) * windows * METER_BYTES
    rate = max(scen.rate, getattr(scen, "burst_rate", 0.0))
    requests = rate * sim.duration_s
    chunk = sim.chunk_kib * 1024
    if isinstance(cfg.serving, EpServingConfig):
        s = cfg.serving
        from helios.sim.ep.roofline import step_costs

        import numpy as np

        from helios.sim.ep.steady import representative_step

        costs = step_costs(model, cfg.gpu, s)
        one = np.ones(1)
        t_min = float(np.sum(costs.dense_layers(one, one) + costs.head(one)
                             + layers * (costs.attention(one, one)
                                         + costs.grouped_gemm(one * model.top_k, one))))
        steps = horizon / max(t_min, 1e-6)
        pairs = representative_step(cfg, int(G), rate).step_tokens * model.top_k  # per layer
        chunks = pairs * model.hidden_size * (model.dispatch_bytes + model.combine_bytes) / chunk
        tasks = G * min(G, 64.0) * 2 * (s.relay_chunks + 1) + chunks * 6
        events = requests * (s.prompt_tokens + s.output_tokens) * model.top_k * layers \
            + steps * layers * tasks
        memory += 2 * pairs * layers * PAIR_BYTES
    else:
        tokens = float(scen.tokens_per_request)
        dests = min(model.num_experts, G, tokens * model.top_k)
        per_dest = tokens * model.top_k / dests * model.hidden_size * model.dispatch_bytes
        hops = 6.0
        events = requests * layers * dests * (2 * hops * math.ceil(per_dest / chunk) + 3)
        memory += tokens * model.top_k * layers * PAIR_BYTES
    return events, memory


#: Keys a cell's cost grows with (value / default) or falls with (default / value).
GROWS = ("scenario.rate", "sim.duration_s", "sim.drain_s", "scenario.tokens_per_request",
         "topology.k", "topology.gpus_per_server", "topology.a", "topology.p", "topology.h",
         "topology.g", "serving.prompt_tokens", "serving.output_tokens",
         "serving.max_batch_tokens", "scenario.burst_rate")
FALLS = ("sim.window_s", "sim.chunk_kib")


def _driver(cfg: Any) -> tuple[str, Any]:
    """The input furthest from its default in the costly direction."""
    from helios.config import CellConfig, SCENARIOS, SERVING, TOPOLOGIES, flatten

    values = flatten(cfg)
    defaults = {**flatten(CellConfig()),
                **{f"topology.{k}": v for k, v in flatten(TOPOLOGIES[cfg.topology.name]()).items()},
                **{f"scenario.{k}": v for k, v in flatten(SCENARIOS[cfg.scenario.name]()).items()},
                **{f"serving.{k}": v for k, v in flatten(SERVING[cfg.serving.name]()).items()}}
    best, ratio = ("scenario.rate", values.get("scenario.rate")), 0.0
    for key in GROWS + FALLS:
        value, default = values.get(key), defaults.get(key)
        if not isinstance(value, (int, float)) or not isinstance(default, (int, float)) or not default:
            continue
        r = value / default if key in GROWS else default / value
        if r > ratio:
            best, ratio = (key, value), r
    return best


def check_cost(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the driving key when a cell is beyond the limits."""
    events, memory = estimate(cfg)
    limit_gib = cfg.sim.max_memory_gib if cfg.sim.max_memory_gib is not None else machine_memory_gib() / 2
    if events <= cfg.sim.max_events and memory <= limit_gib * 2**30:
        return
    key, value = _driver(cfg)
    if memory > limit_gib * 2**30:
        what = f"~{memory / 2**30:.3g} GiB of memory > sim.max_memory_gib ({limit_gib:.3g})"
    else:
        what = f"~{events:.3g} simulated events > sim.max_events ({cfg.sim.max_events:.3g})"
    raise ConfigError(key, value, f"a cell this machine can run: this one needs {what}; "
                      "lower it or raise the limit")
