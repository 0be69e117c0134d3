"""Drift scenarios: popularity that moves, rates that burst, and trace replay.

Each scenario is an options dataclass (:mod:`helios.config.scenarios`, registered in
``helios.config.SCENARIOS``) and a workload class (a subclass of
:class:`helios.stationary.Scenario`, registered here in :data:`SCENARIO_CLASSES`), both
under the same name. Imports go one way: this module imports :mod:`helios.mixtures`
and :mod:`helios.stationary`, and :mod:`helios.workload` imports this one.

Models (all seeded; see each class):

* ``gradual_drift``: every ``period_s`` the popularity ranks rotate by ``shift`` places;
* ``sudden_shift``: at ``t_shift_s`` each layer's popularity is re-permuted;
* ``bursty``: the arrival rate alternates between ``rate`` and ``burst_rate``;
* ``trace``: per-window expert loads replayed from a file (:mod:`helios.traces`);
* ``domain_shift`` and ``periodic``: mixtures of popularity profiles (:mod:`helios.mixtures`).
"""

from __future__ import annotations

import math

import numpy as np

from helios.config import BurstyConfig, GradualDriftConfig, SuddenShiftConfig, TraceConfig
from helios.errors import ConfigError
from helios.mixtures import DomainShift, Periodic
from helios.stationary import Profile, Scenario
from helios.traces import load_trace


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


# --------------------------------------------------------------------------- registration
#: Scenario name -> workload class (the options class of the same name is in
#: ``helios.config.SCENARIOS``).
SCENARIO_CLASSES: dict[str, type[Scenario]] = {
    "stationary": Scenario,
    "gradual_drift": GradualDrift,
    "sudden_shift": SuddenShift,
    "bursty": Bursty,
    "trace": TraceReplay,
    "domain_shift": DomainShift,
    "periodic": Periodic,
}
