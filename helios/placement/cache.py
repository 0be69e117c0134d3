"""Content-addressed placement cache: solve each placement once per sweep.

The key (:func:`placement_key`) is a SHA-256 of everything a placement depends on:

* the cluster's content (:func:`cluster_fingerprint`: GPUs, servers, every link's ends,
  bandwidth, latency and kind, and every GPU pair's route), not its config, so that two
  configs that build the same network share placements and a change of routing code
  cannot reuse stale ones;
* the model spec (expert bytes, token bytes, compute figures, slots per GPU);
* the *placement function* (module and name) and the strategy sections it declares in
  :class:`~helios.placement.Strategy.params` (e.g. ``ilp`` for the Helios ILP: weights,
  solver, time limit, gap); not the strategy's name, so strategies that share a
  placement function share placements, and not the sections it does not read (replica
  routing, adaptation);
* the expected load and the source share, rounded to 9 significant digits (so that
  last-bit float noise does not split keys), the memory slots and the mean tokens per
  request;
* :data:`KEY_VERSION`, bumped whenever a placement algorithm changes its output.

The cell seed is not part of the key: every seed of a sweep shares one placement, so
placement functions must not draw on ``ctx.seed`` (none does).

A store offers ``get_or_solve(key, solve) -> (placement, hit)``. :class:`DiskPlacementCache`
keeps one JSON file per key, written atomically (temporary file + ``os.replace``), so
readers never see half a file and two processes writing one key both leave a valid
file. A file that does not parse, has another format or key, or whose checksum does not
match its placement is ignored, solved again and overwritten. The Ray front
(:mod:`helios.placement.ray_cache`) wraps this store with the same interface.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from helios.placement import Placement, PlacementContext, get_strategy, place
from helios.placement.base import FORMAT_VERSION as PLACEMENT_FORMAT

__all__ = ["KEY_VERSION", "CACHE_FORMAT", "placement_key", "cluster_fingerprint",
           "DiskPlacementCache", "obtain_placement", "cache_root"]

#: Bump when any placement algorithm changes what it returns for the same inputs.
KEY_VERSION = "helios-placement-11"
#: Layout of a cache file.
CACHE_FORMAT = 1

_KEY_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,128}")
_fingerprints: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _rounded(values: Any) -> list[float]:
    """Values rounded to 9 significant digits (``+ 0.0`` folds -0.0 into 0.0)."""
    return [float(f"{v:.9g}") + 0.0 for v in np.asarray(values, dtype=float).ravel().tolist()]


def cluster_fingerprint(cluster: Any) -> str:
    """SHA-256 of a cluster's content: GPUs, links and all routes (memoised per object)."""
    found = _fingerprints.get(cluster)
    if found is not None:
        return found
    inc = cluster.incidence()
    routes = hashlib.sha256(np.ascontiguousarray(inc.indptr, dtype=np.int64).tobytes()
                            + np.ascontiguousarray(inc.indices, dtype=np.int64).tobytes())
    data = {
        "name": cluster.name, "num_gpus": int(cluster.num_gpus),
        "gpus_per_server": int(cluster.gpus_per_server), "num_servers": int(cluster.num_servers),
        "links": [list(edge) for edge in cluster.links], "kind": list(cluster.link_kind),
        "bandwidth": np.asarray(cluster.link_bandwidth, dtype=float).tolist(),
        "latency": np.asarray(cluster.link_latency, dtype=float).tolist(),
        "routes": routes.hexdigest(),
    }
    found = _fingerprints[cluster] = _sha256(_canonical(data))
    return found


def placement_key(ctx: PlacementContext) -> str:
    """Stable content hash (64 hex digits) of everything ``ctx``'s placement depends on."""
    strategy = get_strategy(ctx.strategy.name)
    fn = strategy.place
    load = np.asarray(ctx.expected_load, dtype=float)
    data = {
        "version": KEY_VERSION,
        "placement_format": PLACEMENT_FORMAT,
        "place": f"{fn.__module__}.{fn.__qualname__}",
        "params": {name: dataclasses.asdict(getattr(ctx.strategy, name))
                   for name in sorted(strategy.params)},
        "cluster": cluster_fingerprint(ctx.cluster),
        "spec": dataclasses.asdict(ctx.spec),
        "load_shape": list(load.shape),
        "expected_load": _rounded(load),
        "source_share": _rounded(ctx.source_share),
        "slots_per_gpu": int(ctx.slots_per_gpu),
        "tokens_per_request": ctx.tokens_per_request,
        "serving": ctx.serving,
        "ep_step": dataclasses.asdict(ctx.ep_step) if ctx.ep_step is not None else None,
        "sim_chunk_bytes": float(ctx.sim_chunk_bytes),
    }
    return _sha256(_canonical(data))


class DiskPlacementCache:
    """Placements as JSON files ``<root>/<key>.json``, safe against torn or edited files.

    A file holds ``{"format", "key", "sha256", "placement"}``; ``sha256`` is the hash of
    the canonical JSON of ``placement``.

    Parameters
    ----------
    root : str or Path
        Folder of the cache (created on the first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """File of ``key``; keys are restricted to letters, digits, ``_`` and ``-``."""
        if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"bad placement cache key {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str) -> Placement | None:
        """The stored placement of ``key``, or None if missing or not trustworthy."""
        try:
            doc = json.loads(self.path(key).read_text())
            if (not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT
                    or doc.get("key") != key or not isinstance(doc.get("placement"), dict)
                    or doc.get("sha256") != _sha256(_canonical(doc["placement"]))):
                return None
            return Placement.from_json(json.dumps(doc["placement"]))
        except (OSError, ValueError, KeyError, TypeError):
            # Missing, unreadable, truncated (JSONDecodeError is a ValueError) or malformed.
            return None

    def put(self, key: str, placement: Placement) -> None:
        """Store ``placement`` under ``key`` atomically (replacing any previous file).

        The cache only saves solves: where it cannot be written (a directory where the
        file or a file where the folder should be, no permission, a full disk) one line
        says so on stderr, the file is left alone and the caller goes on uncached.
        """
        try:
            self._write(key, placement)
        except OSError as err:
            print(f"helios: placement cache: cannot store {self.path(key)} "
                  f"({err.strerror or err}); this placement is not cached", file=sys.stderr)

    def _write(self, key: str, placement: Placement) -> None:
        path = self.path(key)
        payload = json.loads(placement.to_json())
        doc = {"format": CACHE_FORMAT, "key": key, "sha256": _sha256(_canonical(payload)),
               "placement": payload}
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(doc, sort_keys=True))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def get_or_solve(self, key: str, solve: Callable[[], Placement]) -> tuple[Placement, bool]:
        """The placement of ``key`` and whether it came from the cache; ``solve()`` on a miss."""
        found = self.get(key)
        if found is not None:
            return found, True
        placement = solve()
        self.put(key, placement)
        return placement, False


def cache_root(cfg: Any) -> Path:
    """Folder of a cell's disk placement cache: ``<output_dir>/placement_cache``."""
    return Path(cfg.output_dir) / "placement_cache"


def _matches(placement: Placement, ctx: PlacementContext) -> bool:
    try:
        if placement.num_gpus != ctx.num_gpus or placement.layers != ctx.layers:
            return False
        placement.validate(ctx.num_experts, ctx.slots_per_gpu)
    except (ValueError, TypeError, IndexError):
        return False
    return True


def obtain_placement(ctx: PlacementContext, cache: Any = None) -> tuple[Placement, bool]:
    """The placement of ``ctx`` and whether it was a cache hit.

    Parameters
    ----------
    ctx : PlacementContext
    cache : store with ``get_or_solve(key, solve)``, optional
        None solves without caching. A hit that does not fit ``ctx`` (GPU count,
        layers, experts, slots) is not trusted: it is solved again (and stored, if the
        store has ``put``).
    """
    def solve() -> Placement:
        return place(ctx)  # place() validates the placement against the memory budget

    if cache is None or not get_strategy(ctx.strategy.name).cacheable:
        return solve(), False
    key = placement_key(ctx)
    placement, hit = cache.get_or_solve(key, solve)
    if hit and not _matches(placement, ctx):
        placement, hit = solve(), False
        if hasattr(cache, "put"):
            cache.put(key, placement)
    return placement, hit
