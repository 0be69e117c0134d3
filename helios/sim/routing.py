"""Choice among an expert's active replicas, one decision per (request, layer, expert).

Every router sees the sending GPU and the list of GPUs that hold a serving replica,
and returns one of them. Routers are looked up by name with :func:`make_router`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helios.errors import ConfigError


class Router:
    """Base router: ``nearest`` — the replica with the lowest no-load path latency.

    The path latency of a token-sized message (propagation plus serialisation at the
    bottleneck, :meth:`Cluster.path_latency`) ranks replicas; ties go to the lowest
    GPU id. The ranking is static, so it is cached per (source, replica set).
    """

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self._cache: dict[tuple[int, tuple[int, ...]], int] = {}

    def choose(self, layer: int, expert: int, src: int, replicas: Sequence[int]) -> int:
        key = (src, tuple(replicas))
        gpu = self._cache.get(key)
        if gpu is None:
            nbytes = self.sim.spec.dispatch_token_bytes
            gpu = min(replicas, key=lambda g: (self.sim.cluster.path_latency(src, g, nbytes), g))
            self._cache[key] = gpu
        return gpu


class RoundRobinRouter(Router):
    """Cycle through the replicas of each (layer, expert), ignoring the network."""

    def __init__(self, sim: Any) -> None:
        super().__init__(sim)
        self._turn: dict[tuple[int, int], int] = {}

    def choose(self, layer: int, expert: int, src: int, replicas: Sequence[int]) -> int:
        turn = self._turn.get((layer, expert), 0)
        self._turn[(layer, expert)] = turn + 1
        return replicas[turn % len(replicas)]


ROUTERS: dict[str, type[Router]] = {
    "nearest": Router,
    "round_robin": RoundRobinRouter,
}


def make_router(name: str, sim: Any) -> Router:
    """Build the router registered as ``name`` for simulation ``sim``."""
    if name not in ROUTERS:
        raise ConfigError("strategy.routing", name, "one of " + ", ".join(sorted(ROUTERS)))
    return ROUTERS[name](sim)
