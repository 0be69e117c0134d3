"""Seeded MoE inference workload: arrivals, request sizes, home GPUs and gating.

Model:

* Requests arrive by a Poisson process of rate ``scenario.rate`` (time-varying rates
  use thinning, Lewis and Shedler 1979). A request is a batch of tokens that starts
  on a home GPU drawn uniformly over all GPUs (or over the GPUs of the first
  ``scenario.home_servers`` servers: non-uniform token sources).
* Every simulated MoE layer has its own expert popularity: a profile of
  :mod:`helios.popularity` (calibrated to measured routing skew by default, or Zipf)
  over popularity ranks, with the ranks assigned to experts by a random permutation
  per layer.
* The gate picks, for each token, ``top_k`` *distinct* experts by successive sampling
  without replacement proportional to popularity (:func:`sample_top_k`; equivalent to
  the Gumbel-top-k trick of Kool, van Hoof, Welling, ICML 2019).
* All of a request's draws are made when it arrives, from the popularity in force at
  its arrival time, in arrival order. So a seed gives the same requests whatever the
  placement strategy: seeds pair across strategies.

Random streams: the cell seed feeds a :class:`numpy.random.SeedSequence` whose
children drive arrivals, sizes, homes and gating separately. The popularity
permutation comes from ``scenario.popularity_seed`` when it is set (the same hot
experts for every cell seed, so placements are shared across seeds) and from the cell
seed otherwise.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from helios.config import ModelConfig, ScenarioConfig
from helios.popularity import profile_function
from helios.scenarios import SCENARIO_CLASSES
from helios.stationary import Profile


@dataclass
class Request:
    """One batch of tokens and its gate decisions for every simulated layer."""

    rid: int
    arrival: float
    home_gpu: int
    tokens: int
    experts: list[np.ndarray]
    """Per simulated layer, an int array of shape (tokens, top_k) of expert ids."""


def gumbel_top_k(log_probs: np.ndarray, tokens: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``k`` distinct experts per token without replacement, proportional to popularity.

    Uses the Gumbel-top-k trick (Kool et al. 2019): the ``k`` largest of
    ``log p + Gumbel`` noise are a sample without replacement.

    Parameters
    ----------
    log_probs : ndarray, shape (E,)
        Log popularity of each expert (``-inf`` for experts that are never chosen).
    tokens, k : int
        Number of tokens and experts per token, ``k <= E``.

    Returns
    -------
    ndarray, shape (tokens, k)
        Expert ids; the order within a row is not meaningful.
    """
    if k == log_probs.shape[0]:
        return np.broadcast_to(np.arange(k), (tokens, k)).copy()
    keys = log_probs + rng.gumbel(size=(tokens, log_probs.shape[0]))
    return np.argpartition(-keys, k - 1, axis=1)[:, :k]


def sample_top_k(probs: np.ndarray, tokens: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Same distribution as :func:`gumbel_top_k`, at a fraction of its cost for ``k << E``.

    Successive sampling: draw experts with replacement proportionally to ``probs``
    and keep each token's first ``k`` distinct ones, which is sampling without
    replacement. A token that gets fewer than ``k`` distinct experts from its
    ``2k + 4`` draws is drawn again with :func:`gumbel_top_k`.

    Parameters
    ----------
    probs : ndarray, shape (E,)
        Popularity, summing to 1.

    Returns
    -------
    ndarray, shape (tokens, k)
    """
    num = probs.shape[0]
    if k == num:
        return np.broadcast_to(np.arange(k), (tokens, k)).copy()
    from helios.sim.draws import first_distinct_by_cdf  # numba: not at import time

    draws = 2 * k + 4
    cdf = np.cumsum(probs)
    out = np.empty((tokens, k), dtype=np.intp)
    short = first_distinct_by_cdf(rng.random((tokens, draws)), cdf, k, out)
    if short.any():
        with np.errstate(divide="ignore"):
            out[short] = gumbel_top_k(np.log(probs), int(short.sum()), k, rng)
    return out


def popularity_profile(cfg: ScenarioConfig, num_experts: int, top_k: int,
                       routing_gini: float) -> Profile:
    """The profile ``cfg.popularity`` names; ``measured`` targets ``cfg.gini``, or the
    model's ``routing_gini`` when that is None."""
    target = routing_gini if cfg.gini is None else cfg.gini
    return profile_function(cfg.popularity, num_experts, top_k, cfg.zipf_s, target)


class Workload:
    """All random draws of one cell, in arrival order.

    Parameters
    ----------
    scenario_cfg : ScenarioConfig
    num_experts, top_k : int
    num_gpus : int
        Home GPUs are uniform over ``range(num_gpus)``.
    layers : int
        Simulated MoE layers per request.
    duration : float
        Requests arrive in ``[0, duration)``.
    seed : int
        The cell seed.
    home_gpus : int, optional
        Requests are homed on the first ``home_gpus`` GPUs (default all).
    routing_gini : float, optional
        The model's measured routing skew, used by ``popularity=measured`` when
        ``scenario.gini`` is None (default: that of the default model config).
    """

    def __init__(self, scenario_cfg: ScenarioConfig, num_experts: int, top_k: int,
                 num_gpus: int, layers: int, duration: float, seed: int,
                 home_gpus: int | None = None, routing_gini: float | None = None) -> None:
        self.cfg = scenario_cfg
        self.num_experts, self.top_k = num_experts, top_k
        self.num_gpus, self.layers, self.duration = num_gpus, layers, duration
        self.home_gpus = num_gpus if home_gpus is None else home_gpus
        arrivals, sizes, homes, gate = np.random.SeedSequence(seed).spawn(4)
        self._arrival_rng = np.random.default_rng(arrivals)
        self._size_rng = np.random.default_rng(sizes)
        self._home_rng = np.random.default_rng(homes)
        self._gate_rng = np.random.default_rng(gate)
        pop_seed = getattr(scenario_cfg, "popularity_seed", None)
        self._pop_entropy = [seed, 1] if pop_seed is None else [pop_seed, 2]
        if routing_gini is None:
            routing_gini = ModelConfig().routing_gini
        profile = popularity_profile(scenario_cfg, num_experts, top_k, routing_gini)
        self.scenario = SCENARIO_CLASSES[scenario_cfg.name](
            scenario_cfg, num_experts, layers, np.random.default_rng(self._pop_entropy), profile)

    def tokens(self) -> int:
        """Tokens of the next request (mean ``tokens_per_request``, at least 1)."""
        mean = self.cfg.tokens_per_request
        dist = self.cfg.token_distribution
        if dist == "fixed":
            return mean
        if dist == "poisson":
            return max(1, int(self._size_rng.poisson(mean)))
        return int(self._size_rng.geometric(1.0 / mean))

    def arrival_times(self) -> Iterator[float]:
        """Arrival times in ``[0, duration)`` of a (possibly non-homogeneous) Poisson process."""
        t = 0.0
        peak = self.scenario.max_rate
        while True:
            t += self._arrival_rng.exponential(1.0 / peak)
            if t >= self.duration:
                return
            if self._arrival_rng.random() * peak <= self.scenario.rate(t):
                yield t

    def requests(self) -> Iterator[Request]:
        """Requests in arrival order, with all their gate decisions drawn."""
        for rid, t in enumerate(self.arrival_times()):
            tokens = self.tokens()
            home = int(self._home_rng.integers(self.home_gpus))
            pop = self.scenario.popularity(t)
            experts = [sample_top_k(pop[layer], tokens, self.top_k, self._gate_rng)
                       for layer in range(self.layers)]
            yield Request(rid, t, home, tokens, experts)

    def expected_load(self, t: float = 0.0, profile_tokens: int = 8192) -> np.ndarray:
        """Expected token-expert pairs per second of each expert at time ``t``.

        The per-token inclusion probability of an expert under top-k sampling without
        replacement has no closed form, so it is measured on a profiling batch of
        ``profile_tokens`` tokens drawn from a stream of its own (the same for every
        cell seed that shares the popularity), once per process for each popularity
        (:func:`_profile`).

        Returns
        -------
        ndarray, shape (layers, num_experts)
        """
        pop = np.ascontiguousarray(self.scenario.popularity(t)[:self.layers])
        load = _profile(tuple(self._pop_entropy), pop, self.top_k, profile_tokens)
        mean_tokens = self.cfg.tokens_per_request
        return load * self.scenario.rate(t) * mean_tokens

    def source_distribution(self) -> np.ndarray:
        """Share of requests homed on each GPU: shape (num_gpus,), uniform over the home GPUs."""
        share = np.zeros(self.num_gpus)
        share[:self.home_gpus] = 1.0 / self.home_gpus
        return share


#: Profiles of recent calls, keyed by everything a profile depends on; cells that share
#: a popularity (``scenario.popularity_seed``, the default) differ only in their seed,
#: which the profile does not read, so a worker measures it once per sweep.
_PROFILES: OrderedDict[tuple, np.ndarray] = OrderedDict()
_PROFILES_KEPT = 32


def _profile(entropy: tuple[int, ...], pop: np.ndarray, k: int, tokens: int) -> np.ndarray:
    """Share of ``tokens`` profiling tokens that pick each expert, per layer: shape (L, E).

    Drawn from a stream of its own, ``default_rng([*entropy, 3])``, layer by layer, so
    the result is a pure function of the arguments, and memoised (read-only arrays).
    """
    key = (entropy, pop.shape, hashlib.sha256(pop.tobytes()).hexdigest(), k, tokens)
    found = _PROFILES.get(key)
    if found is not None:
        _PROFILES.move_to_end(key)
        return found
    rng = np.random.default_rng([*entropy, 3])
    layers, experts = pop.shape
    load = np.empty((layers, experts))
    for layer in range(layers):
        picks = sample_top_k(pop[layer], tokens, k, rng)
        load[layer] = np.bincount(picks.ravel(), minlength=experts) / tokens
    load.flags.writeable = False
    _PROFILES[key] = load
    if len(_PROFILES) > _PROFILES_KEPT:
        _PROFILES.popitem(last=False)
    return load

