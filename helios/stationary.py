"""The stationary scenario: the base class of every scenario's workload.

A scenario gives, at any simulated time, the arrival rate and every simulated layer's
expert popularity. The stationary one holds both fixed: a popularity profile
(:mod:`helios.popularity`) over a random rank permutation per layer. The drift
scenarios (:mod:`helios.scenarios`, :mod:`helios.mixtures`) override :meth:`Scenario.rate`
or :meth:`Scenario.popularity`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helios.config import ScenarioConfig
from helios.popularity import zipf_popularity

#: A layer's popularity as a function of its rank permutation (shape (E,) -> (E,)).
Profile = Callable[[np.ndarray], np.ndarray]


class Scenario:
    """Stationary workload; subclasses override :meth:`rate` or :meth:`popularity`.

    Parameters
    ----------
    cfg : ScenarioConfig
        The scenario's config.
    num_experts, layers : int
        Experts per layer and simulated layers.
    rng : numpy.random.Generator
        Stream for the popularity permutations.
    profile : callable, optional
        A layer's popularity from its rank permutation (:func:`helios.workload.popularity_profile`);
        default Zipf(``cfg.zipf_s``).
    """

    def __init__(self, cfg: ScenarioConfig, num_experts: int, layers: int,
                 rng: np.random.Generator, profile: Profile | None = None) -> None:
        self.cfg = cfg
        self.num_experts = num_experts
        self.layers = layers
        self.profile = profile or (lambda p: zipf_popularity(num_experts, cfg.zipf_s, p))
        self.permutations = [rng.permutation(num_experts) for _ in range(layers)]
        self._base = np.array([self.profile(p) for p in self.permutations])

    def rate(self, t: float) -> float:
        """Arrival rate (requests/s) at time ``t``."""
        return self.cfg.rate

    @property
    def max_rate(self) -> float:
        """An upper bound of :meth:`rate` over the run, for thinning."""
        return self.cfg.rate

    def popularity(self, t: float) -> np.ndarray:
        """Expert popularity at time ``t``: shape (layers, num_experts), rows sum to 1."""
        return self._base
