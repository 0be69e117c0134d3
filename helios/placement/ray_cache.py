"""Shared, single-flight placement cache for a Ray sweep: a named actor and its client.

Many cells of a sweep need the same placement (every seed of one topology, model,
scenario and strategy shares its placement key), and a placement can take seconds
of ILP solving. The driver starts one :class:`PlacementCacheActor` on its own node;
it fronts the disk cache of :mod:`helios.placement.cache` under the results folder
(the disk lives where the driver writes results, so workers need no shared file
system). Workers reach it through :class:`RayPlacementCache`, which offers the same
``get_or_solve(key, solve)`` interface as the disk cache, so ``run_cell`` does not
know which one it talks to.

Protocol (single flight)
------------------------
``claim(key, owner)`` answers ``("hit", json)`` when the placement is in memory or
on disk, and ``("solve", None)`` to exactly one asker of a missing key, the
*solver*. Askers that arrive while the key is being solved wait (an
``asyncio.Event`` per key; the actor is async, so the waits cost no thread) and
receive the JSON once the solver ``publish``-es it. If the solver's ``solve``
raises, it calls ``abandon`` and one waiter is told to solve instead. If the solver
dies (its worker process is killed), the driver, which sees the actor die, calls
``abandon_owner`` with the dead worker's id, with the same effect.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from helios.placement.base import Placement

#: Ray namespace of the cache actors, so that drivers do not see each other's names.
NAMESPACE = "helios"


class _Miss(Exception):
    """Raised into the disk cache to ask "do you have it?" without solving."""


def _disk_cache(root: str | None) -> Any:
    if root is None:
        return None
    from helios.placement.cache import DiskPlacementCache

    return DiskPlacementCache(root)


def _disk_load(disk: Any, key: str) -> str | None:
    """JSON of ``key`` from the disk cache, or None if it is not there."""
    if disk is None:
        return None
    if hasattr(disk, "get"):
        found = disk.get(key)
        return None if found is None else found.to_json()

    def miss() -> Placement:
        raise _Miss(key)

    try:
        placement, _ = disk.get_or_solve(key, miss)
    except _Miss:
        return None
    return placement.to_json()


def _disk_store(disk: Any, key: str, text: str) -> None:
    if disk is None:
        return
    placement = Placement.from_json(text)
    if hasattr(disk, "put"):
        disk.put(key, placement)
    else:
        # get_or_solve stores what ``solve`` returns; here "solving" is parsing the JSON.
        disk.get_or_solve(key, lambda: placement)


@ray.remote(num_cpus=0, max_restarts=0)
class PlacementCacheActor:
    """Single-flight front of the disk placement cache (see the module docstring).

    Parameters
    ----------
    root : str or None
        Folder of the disk cache; None keeps placements in memory only.
    """

    def __init__(self, root: str | None) -> None:
        self._disk = _disk_cache(root)
        self._memory: dict[str, str] = {}
        # key -> (owner that is solving it, event set when it is published or given up)
        self._inflight: dict[str, tuple[str, asyncio.Event]] = {}
        self._stats = {"solves": 0, "memory_hits": 0, "disk_hits": 0, "waited": 0,
                       "abandoned": 0}

    async def claim(self, key: str, owner: str) -> tuple[str, str | None]:
        """``("hit", json)`` if the placement exists, else ``("solve", None)`` to one asker."""
        waited = False
        while True:
            if key in self._memory:
                self._stats["waited" if waited else "memory_hits"] += 1
                return "hit", self._memory[key]
            if key in self._inflight:
                waited = True
                await self._inflight[key][1].wait()
                continue  # published (memory hit) or abandoned (someone claims it anew)
            text = _disk_load(self._disk, key)
            if text is not None:
                self._memory[key] = text
                self._stats["disk_hits"] += 1
                return "hit", text
            self._inflight[key] = (owner, asyncio.Event())
            return "solve", None

    async def publish(self, key: str, owner: str, text: str) -> None:
        """Store the solver's placement (memory and disk) and wake the waiters."""
        Placement.from_json(text)  # refuse anything that is not a placement
        self._memory[key] = text
        _disk_store(self._disk, key, text)
        self._stats["solves"] += 1
        entry = self._inflight.pop(key, None)
        if entry is not None:
            entry[1].set()

    async def abandon(self, key: str, owner: str) -> None:
        """The solver of ``key`` failed: let one waiter solve instead."""
        entry = self._inflight.get(key)
        if entry is not None and entry[0] == owner:
            del self._inflight[key]
            self._stats["abandoned"] += 1
            entry[1].set()

    async def abandon_owner(self, owner: str) -> int:
        """Give up every key ``owner`` was solving (its process died); returns how many."""
        keys = [k for k, (o, _) in self._inflight.items() if o == owner]
        for key in keys:
            await self.abandon(key, owner)
        return len(keys)

    async def stats(self) -> dict[str, int]:
        """Counters: ``solves``, ``memory_hits``, ``disk_hits``, ``waited``, ``abandoned``."""
        return dict(self._stats)


class RayPlacementCache:
    """Client of a :class:`PlacementCacheActor`, with the disk cache's interface.

    Parameters
    ----------
    actor : ray.actor.ActorHandle
        The cache actor.
    owner : str, optional
        Who solves on this client's behalf; the runner passes the worker actor's id so
        that it can release the worker's claims when the worker dies. Defaults to the
        current Ray actor or worker id.
    """

    def __init__(self, actor: Any, owner: str | None = None) -> None:
        self.actor = actor
        if owner is None:
            ctx = ray.get_runtime_context()
            owner = ctx.get_actor_id() or ctx.get_worker_id()
        self.owner = owner

    @classmethod
    def from_name(cls, name: str, owner: str | None = None) -> "RayPlacementCache":
        """Client of the cache actor registered as ``name`` (see :func:`cache_actor_name`)."""
        return cls(ray.get_actor(name, namespace=NAMESPACE), owner)

    def get_or_solve(self, key: str, solve: Callable[[], Placement]) -> tuple[Placement, bool]:
        """The placement of ``key`` and whether it was a hit; runs ``solve`` on a miss only.

        Raises
        ------
        Exception
            Whatever ``solve`` raises, after handing the key to the next asker.
        """
        status, text = ray.get(self.actor.claim.remote(key, self.owner))
        if status == "hit":
            return Placement.from_json(text), True
        try:
            placement = solve()
        except BaseException:
            ray.get(self.actor.abandon.remote(key, self.owner))
            raise
        ray.get(self.actor.publish.remote(key, self.owner, placement.to_json()))
        return placement, False

    def put(self, key: str, placement: Placement) -> None:
        """Store ``placement`` under ``key`` (replacing a stored one that did not fit)."""
        ray.get(self.actor.publish.remote(key, self.owner, placement.to_json()))


def cache_actor_name(root: str | Path | None) -> str:
    """Name of the cache actor of disk folder ``root`` for the current Ray job."""
    job = ray.get_runtime_context().get_job_id()
    tag = zlib.crc32(str(Path(root).resolve() if root else "memory").encode())
    return f"helios-placement-cache-{job}-{tag:08x}"


def start_cache_actor(root: str | Path | None) -> Any:
    """Start (or find) the cache actor of ``root`` on the driver's node.

    It is created by the driver, not inside a task, because a named actor dies with
    the task or actor that created it; it is pinned to the driver's node because
    ``root`` is a folder on that machine.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return PlacementCacheActor.options(
        name=cache_actor_name(root), namespace=NAMESPACE, get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
    ).remote(None if root is None else str(root))
