"""Drift scenarios: popularity that moves, rates that burst, and trace replay.

Each scenario is a config dataclass (a subclass of
:class:`~helios.config.ScenarioConfig`, registered in ``helios.config.SCENARIOS``) and
a workload class (a subclass of :class:`~helios.workload.Scenario`, registered in
``helios.workload.SCENARIO_CLASSES``), both under the same name.

Registration without import cycles: this module imports ``helios.config`` and
``helios.workload``; ``helios.config`` ends with ``import helios.workload`` and
``helios.workload`` ends with ``import helios.scenarios``. Whichever of the three is
imported first, every name this module needs is already defined when it runs, and
the registries are complete once any of them has finished importing.

Models (all seeded; see each class):

* ``gradual_drift``: every ``period_s`` the popularity ranks rotate by ``shift`` places;
* ``sudden_shift``: at ``t_shift_s`` each layer's popularity is re-permuted;
* ``bursty``: the arrival rate alternates between ``rate`` and ``burst_rate``;
* ``trace``: per-window expert loads replayed from a CSV or Parquet file.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helios.config import SCENARIOS, ScenarioConfig, spec
from helios.errors import ConfigError
from helios.traces import read_sglang, read_vllm, trace_format
from helios.workload import SCENARIO_CLASSES, Profile, Scenario

#: Repository root: relative trace paths not found from the working directory are
#: looked up here, so ``conf/traces/example_trace.csv`` works from any directory.
REPO_ROOT = Path(__file__).resolve().parent.parent

TRACE_COLUMNS = ("window", "layer", "expert", "load")
#: Largest ids and dense size a trace may have (checked before the dense array exists).
MAX_TRACE_IDS = {"window": 1 << 24, "layer": 1024, "expert": 1 << 16}
MAX_TRACE_CELLS = 1 << 28


# --------------------------------------------------------------------------- configs
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
        key = "scenario.trace_path"
        fmt = trace_format(self.trace_path)
        if fmt in ("sglang", "vllm") and layers != cell.model.num_moe_layers:
            raise ConfigError(key, self.trace_path,
                              f"a {fmt} trace of model.num_moe_layers ({cell.model.num_moe_layers}) "
                              f"MoE layers; it has {layers}")
        if fmt == "vllm":
            top_k = _vllm_top_k(self.trace_path)
            if top_k != cell.model.top_k:
                raise ConfigError(key, self.trace_path, f"vLLM routed experts with model.top_k "
                                  f"({cell.model.top_k}) experts per token; it has {top_k}")
        if fmt == "sglang" and experts != cell.model.num_experts:
            raise ConfigError(key, self.trace_path,
                              f"an SGLang dump of model.num_experts ({cell.model.num_experts}) "
                              f"logical experts; it has {experts}")
        if experts > cell.model.num_experts:
            raise ConfigError(key, self.trace_path,
                              f"a trace with expert ids < model.num_experts ({cell.model.num_experts}); "
                              f"it has expert id {experts - 1}")
        from helios.config import simulated_layers

        wanted = simulated_layers(cell)
        if layers < wanted:
            raise ConfigError(key, self.trace_path,
                              f"a trace with at least sim.layers ({wanted}) layers; it has {layers}")
        positive = (loads[:, :wanted] > 0).sum(axis=2)
        bad = np.argwhere(positive < cell.model.top_k)
        if len(bad):
            w, layer = bad[0]
            raise ConfigError(key, self.trace_path,
                              f"a trace where every window and layer has at least model.top_k "
                              f"({cell.model.top_k}) experts with positive load; window {w} layer "
                              f"{layer} has {positive[w, layer]}")


# --------------------------------------------------------------------------- workloads
class GradualDrift(Scenario):
    """Every ``period_s`` each expert moves ``shift`` popularity ranks down (mod E).

    In period ``k`` (``k = floor(t / period_s)``) the expert of rank ``r`` is
    ``permutation[(r - k * shift) mod E]``: the hottest experts cool down one step at
    a time, and the ``shift`` coldest ones jump to the top ranks. The popularity of
    each period is computed once and cached.
    """

    cfg: GradualDriftConfig

    def __init__(self, cfg: GradualDriftConfig, num_experts: int, layers: int,
                 rng: np.random.Generator, profile: Profile | None = None) -> None:
        super().__init__(cfg, num_experts, layers, rng, profile)
        self._cache: dict[int, np.ndarray] = {}

    def step(self, t: float) -> int:
        """Index of the rotation period that contains ``t``."""
        return int(math.floor(t / self.cfg.period_s))

    def popularity(self, t: float) -> np.ndarray:
        k = (self.step(t) * self.cfg.shift) % self.num_experts
        probs = self._cache.get(k)
        if probs is None:
            probs = np.array([self.profile(np.roll(p, k)) for p in self.permutations])
            probs.setflags(write=False)
            self._cache[k] = probs
        return probs


class SuddenShift(Scenario):
    """The popularity of every layer is re-permuted once, at ``t_shift_s``.

    The new permutations are drawn from the same popularity stream, right after the
    initial ones, so they are as seeded as the initial popularity (by
    ``popularity_seed``, or the cell seed when that is None).
    """

    cfg: SuddenShiftConfig

    def __init__(self, cfg: SuddenShiftConfig, num_experts: int, layers: int,
                 rng: np.random.Generator, profile: Profile | None = None) -> None:
        super().__init__(cfg, num_experts, layers, rng, profile)
        self.shifted_permutations = [rng.permutation(num_experts) for _ in range(layers)]
        self._shifted = np.array([self.profile(p) for p in self.shifted_permutations])

    def popularity(self, t: float) -> np.ndarray:
        return self._base if t < self.cfg.t_shift_s else self._shifted


class Bursty(Scenario):
    """Rate ``rate``, except during the last ``duty`` share of every period: ``burst_rate``.

    Cycle ``[n P, (n+1) P)`` runs at the base rate for ``(1 - duty) P`` and then at the
    burst rate for ``duty P``; the run starts at the base rate. Arrivals come from the
    thinning of :class:`~helios.workload.Workload` with bound :attr:`max_rate`.
    """

    cfg: BurstyConfig

    def rate(self, t: float) -> float:
        phase = (t % self.cfg.period_s) / self.cfg.period_s
        return self.cfg.burst_rate if phase >= 1.0 - self.cfg.duty else self.cfg.rate

    @property
    def max_rate(self) -> float:
        return max(self.cfg.rate, self.cfg.burst_rate)


class TraceReplay(Scenario):
    """Popularity of window ``floor(t / trace_window_s)`` = its loads, normalised per layer.

    Simulated layer ``i`` replays trace layer ``i``. Experts absent from a window have
    zero load and are never chosen in it. Past the last window the trace starts over
    (``loop``) or holds its last window.
    """

    cfg: TraceConfig

    def __init__(self, cfg: TraceConfig, num_experts: int, layers: int,
                 rng: np.random.Generator, profile: Profile | None = None) -> None:
        super().__init__(cfg, num_experts, layers, rng, profile)
        loads = load_trace(cfg.trace_path, cfg.trace_tokens_per_window)
        if loads.shape[1] < layers or loads.shape[2] > num_experts:
            raise ConfigError("scenario.trace_path", cfg.trace_path,
                              f"a trace of at least {layers} layers and at most {num_experts} experts")
        loads = loads[:, :layers]
        padded = np.zeros((loads.shape[0], layers, num_experts))
        padded[:, :, :loads.shape[2]] = loads
        totals = padded.sum(axis=2, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._probs = np.where(totals > 0, padded / totals, 1.0 / num_experts)
        self._probs.setflags(write=False)

    def window(self, t: float) -> int:
        """Trace window replayed at time ``t``."""
        w = int(math.floor(t / self.cfg.trace_window_s))
        count = self._probs.shape[0]
        return w % count if self.cfg.loop else min(w, count - 1)

    def popularity(self, t: float) -> np.ndarray:
        return self._probs[self.window(t)]


# --------------------------------------------------------------------------- trace files
def _vllm_top_k(path: str) -> int:
    """Experts per token of a vLLM routed-experts array (its last dimension)."""
    return int(np.load(resolve_trace_path(path), mmap_mode="r", allow_pickle=False).shape[-1])


def resolve_trace_path(path: str) -> Path:
    """The file a ``trace_path`` names: absolute, else from the working directory, else
    from the repository root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def load_trace(path: str, tokens_per_window: int = 4096) -> np.ndarray:
    """Read a trace file into a dense array of shape (windows, layers, experts).

    ``.npz`` (SGLang's recorder) and ``.npy`` (vLLM's routed experts, windows of
    ``tokens_per_window`` tokens) are read by :mod:`helios.traces`. Otherwise the file
    is CSV (``.csv``) or Parquet (``.parquet``, ``.pq``) with integer columns
    ``window``, ``layer``, ``expert`` (all >= 0) and a finite, non-negative ``load``;
    other columns are ignored. Windows must be numbered ``0..W-1`` without gaps;
    missing (window, layer, expert) rows mean zero load; a repeated triple is an error.
    The dims are ``max id + 1`` of each column. Results are cached per file content
    (path, size and modification time) and returned read-only.

    Raises
    ------
    ConfigError
        Naming ``scenario.trace_path`` and what is wrong with the file.
    """
    resolved = resolve_trace_path(path)
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise ConfigError("scenario.trace_path", path,
                          f"an existing trace file ({exc.strerror or exc})") from None
    if not resolved.is_file():
        raise ConfigError("scenario.trace_path", path, "a regular file")
    return _load_trace_cached(str(resolved), path, stat.st_size, stat.st_mtime_ns,
                              tokens_per_window)


@functools.lru_cache(maxsize=8)
def _load_trace_cached(resolved: str, path: str, size: int, mtime_ns: int,
                       tokens_per_window: int) -> np.ndarray:
    import pandas as pd

    key = "scenario.trace_path"
    suffix = Path(resolved).suffix.lower()
    fmt = trace_format(resolved)
    if fmt in ("sglang", "vllm"):
        loads = (read_sglang(path, resolved) if fmt == "sglang"
                 else read_vllm(path, resolved, tokens_per_window))
        if loads.size == 0 or loads.shape[1] == 0:
            raise ConfigError(key, path, "a trace with at least one window and layer of counts")
        loads = loads.astype(float)
        loads.setflags(write=False)
        return loads
    if suffix == ".pt":
        raise ConfigError(key, path, "a NumPy copy of SGLang's torch.save dump (.npz, see "
                          "helios.traces: Helios does not unpickle files)")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(resolved)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(resolved)
        else:
            raise ConfigError(key, path, "a file ending in .csv, .parquet, .pq, .npz (SGLang) "
                              "or .npy (vLLM)")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(key, path, f"a readable CSV or Parquet trace ({first})") from None
    missing = [c for c in TRACE_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(key, path, "a trace with columns " + ", ".join(TRACE_COLUMNS)
                          + "; missing " + ", ".join(missing))
    if frame.empty:
        raise ConfigError(key, path, "a trace with at least one row")
    ids = {}
    for col in TRACE_COLUMNS[:3]:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        if not (np.isfinite(values).all() and (values == np.floor(values)).all() and (values >= 0).all()):
            raise ConfigError(key, path, f"a trace whose '{col}' column holds integers >= 0")
        ids[col] = values.astype(np.int64)
    load = pd.to_numeric(frame["load"], errors="coerce").to_numpy(dtype=float)
    if not (np.isfinite(load).all() and (load >= 0).all()):
        raise ConfigError(key, path, "a trace whose 'load' column holds finite numbers >= 0")
    shape = tuple(int(ids[c].max()) + 1 for c in TRACE_COLUMNS[:3])
    for col, size in zip(TRACE_COLUMNS[:3], shape):  # before a dense array is built
        if size > MAX_TRACE_IDS[col]:
            raise ConfigError(key, path, f"a trace whose '{col}' ids are below {MAX_TRACE_IDS[col]}; "
                              f"it has {size - 1}")
    if math.prod(shape) > MAX_TRACE_CELLS:
        raise ConfigError(key, path, f"a trace of at most {MAX_TRACE_CELLS:.3g} (window, layer, "
                          f"expert) cells; it spans {math.prod(shape):.3g}")
    present = np.unique(ids["window"])
    if len(present) != shape[0]:
        gap = int(np.setdiff1d(np.arange(shape[0]), present)[0])
        raise ConfigError(key, path, f"a trace with windows numbered 0..{shape[0] - 1}; window {gap} is missing")
    flat = np.ravel_multi_index((ids["window"], ids["layer"], ids["expert"]), shape)
    if len(np.unique(flat)) != len(flat):
        raise ConfigError(key, path, "a trace with one row per (window, layer, expert); some repeat")
    dense = np.zeros(int(np.prod(shape)))
    dense[flat] = load
    dense = dense.reshape(shape)
    dense.setflags(write=False)
    return dense


# --------------------------------------------------------------------------- registration
_SCENARIOS: dict[str, tuple[type[ScenarioConfig], type[Scenario]]] = {
    "gradual_drift": (GradualDriftConfig, GradualDrift),
    "sudden_shift": (SuddenShiftConfig, SuddenShift),
    "bursty": (BurstyConfig, Bursty),
    "trace": (TraceConfig, TraceReplay),
}
for _name, (_config_cls, _scenario_cls) in _SCENARIOS.items():
    SCENARIOS[_name] = _config_cls
    SCENARIO_CLASSES[_name] = _scenario_cls

# The mixture scenarios (domain_shift, periodic) register themselves on import.
import helios.mixtures  # noqa: E402,F401
