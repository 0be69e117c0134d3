"""Popularity as a mixture of workload profiles: ``domain_shift`` and ``periodic``.

Served traffic is a mix of request types whose experts differ: expert activation
depends on the task and the language of the input (Huang et al. 2023 measured
per-task expert activation in MoE translation and language models, and sparse,
task-dependent hot sets), and the mix of a service's request types changes through
the day (Azure's LLM inference traces, Patel et al. 2024, keep coding and
conversation services apart because their load and shapes differ and vary over
time). A *profile* here is one request type's popularity: the scenario's popularity
shape (:mod:`helios.popularity`) over its own permutation of the experts (per layer,
from the popularity stream). At time ``t`` a token's experts are drawn from
``sum_k w_k(t) p_k``.

* ``domain_shift``: ``domains`` profiles (e.g. code, math, chat); one dominates at a
  time, holding ``dominant_weight`` of the traffic (the rest split evenly), and the
  dominant one changes every ``period_s``, blending linearly over ``transition_s``.
* ``periodic``: two profiles whose weights oscillate, ``w_1(t) = (1 + cos(2 pi t /
  period_s)) / 2`` and ``w_2 = 1 - w_1`` (hotness that rises and falls, as day and
  night traffic mixes).

The numbers (profile count, weights, periods) are assumptions to sweep, not measured
values; the simulated periods are compressed so that a run of seconds sees several.

References
----------
.. [1] H. Huang et al., "Towards MoE Deployment: Mitigating Inefficiencies in
   Mixture-of-Expert (MoE) Inference", arXiv:2303.06182, 2023.
.. [2] P. Patel et al., "Splitwise: Efficient Generative LLM Inference Using Phase
   Splitting", ISCA 2024 (Azure LLM inference traces, coding and conversation).
"""

from __future__ import annotations

import math

import numpy as np

from helios.config import DomainShiftConfig, PeriodicConfig, ScenarioConfig
from helios.stationary import Profile, Scenario


class Mixture(Scenario):
    """Popularity ``sum_k w_k(t) p_k`` of profiles ``p_k`` (subclasses give ``w``).

    Profile 0 is the base popularity (the permutations every scenario draws first), the
    others are drawn from the same popularity stream right after, so the mix is as
    seeded as the base.
    """

    def __init__(self, cfg: ScenarioConfig, num_experts: int, layers: int,
                 rng: np.random.Generator, profile: Profile | None = None) -> None:
        super().__init__(cfg, num_experts, layers, rng, profile)
        extra = [[rng.permutation(num_experts) for _ in range(layers)]
                 for _ in range(self.count() - 1)]
        self.profile_popularity = np.stack(
            [self._base] + [np.array([self.profile(p) for p in perms])
                            for perms in extra])  # (K, layers, E)
        self._cache: dict[bytes, np.ndarray] = {}

    def count(self) -> int:
        """Number of profiles (two, unless a subclass says otherwise)."""
        return 2

    def weights(self, t: float) -> np.ndarray:
        """Mixture weights at ``t``, shape (K,), summing to 1."""
        raise NotImplementedError

    def popularity(self, t: float) -> np.ndarray:
        w = np.round(self.weights(t), 4)  # quantised, so the mixes repeat and cache
        key = w.tobytes()
        probs = self._cache.get(key)
        if probs is None:
            probs = np.tensordot(w / w.sum(), self.profile_popularity, axes=1)
            probs.setflags(write=False)
            if len(self._cache) < 1024:
                self._cache[key] = probs
        return probs


class DomainShift(Mixture):
    """Profile ``floor(t / period_s) mod K`` dominates; blends over ``transition_s``."""

    cfg: DomainShiftConfig

    def count(self) -> int:
        return self.cfg.domains

    def _level(self, dominant: int) -> np.ndarray:
        K, top = self.cfg.domains, self.cfg.dominant_weight
        w = np.full(K, (1.0 - top) / (K - 1))
        w[dominant % K] = top
        return w

    def weights(self, t: float) -> np.ndarray:
        period, blend = self.cfg.period_s, min(self.cfg.transition_s, self.cfg.period_s)
        k = int(math.floor(t / period))
        into = t - k * period
        now = self._level(k)
        if k == 0 or blend <= 0 or into >= blend:
            return now
        a = into / blend
        return a * now + (1 - a) * self._level(k - 1)


class Periodic(Mixture):
    """Two profiles with weights ``(1 + cos(2 pi t / period_s)) / 2`` and its complement."""

    cfg: PeriodicConfig

    def weights(self, t: float) -> np.ndarray:
        w1 = 0.5 * (1.0 + math.cos(2.0 * math.pi * t / self.cfg.period_s))
        return np.array([w1, 1.0 - w1])

