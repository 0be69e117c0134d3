"""The worker side of a sweep: the Ray session and the actors that run cells.

- :func:`ray_session` joins a Ray cluster or starts a loopback-only local one.
- :class:`SimulationWorker` is a long-lived process that runs cells one after another
  and returns each cell's Parquet parts as bytes (:func:`encode_parts`), so workers need
  no shared file system.

Workers import this module to unpickle :class:`SimulationWorker`, so it imports only
what a worker needs: the driver-only modules (pandas, pyarrow, tqdm via
``helios.results``) are imported where they are used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterator
from typing import Any

import ray

from helios.config import CellConfig
from helios.placement.ray_cache import RayPlacementCache

#: Environment of the embedded, loopback-only Ray: Ray 2.60 turns on token auth and may
#: swap 127.0.0.1 for the machine's address unless told not to; no usage reporting.
EMBEDDED_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}

def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a cgroup cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class RayUnreachable(RuntimeError):
    """The cluster at ``address`` did not answer within the connect timeout."""

    def __init__(self, address: str, timeout_s: float) -> None:
        super().__init__(f"cannot reach Ray at {address} within {timeout_s:g} s")


def wait_reachable(address: str, timeout_s: float) -> None:
    """Return once ``address`` (``host:port`` or ``ray://host:port``) accepts a TCP
    connection; raise :class:`RayUnreachable` after ``timeout_s`` (``ray.init`` itself
    retries an unreachable address for minutes). ``auto`` is left to Ray."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RayUnreachable(address, timeout_s)
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(left, 2.0)):
                return
        except OSError:
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))


def stop_autoscaler_monitor() -> bool:
    """SIGKILL the embedded Ray's autoscaler monitor; True if it was running.

    Call it just before ``ray.shutdown()`` of a Ray this process started. Ray 2.60's
    shutdown stops the GCS before the monitor, whose SIGTERM handler then publishes an
    error through the GCS that is gone, and hangs there; the shutdown waits out its
    one-second grace and SIGKILLs it anyway. Killing it first saves that second (1.3 s
    against 0.07 s for the whole shutdown here). The monitor is the autoscaler, which
    has nothing to do on a fixed local cluster. It is reached through Ray's private node
    object; if a later Ray moves it, this does nothing and the shutdown is only slower.
    """
    try:
        from ray._private import ray_constants
        from ray._private.worker import _global_node as node

        if ray_constants.PROCESS_TYPE_MONITOR not in node.all_processes:
            return False
        node._kill_process_type(ray_constants.PROCESS_TYPE_MONITOR, check_alive=False,
                                allow_graceful=False, wait=True)
    except (AttributeError, ImportError, KeyError, TypeError):
        return False
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                connect_timeout_s: float = 30.0) -> Iterator[str]:
    """Make sure Ray is up for the duration of the block; yields how it was reached.

    - Ray already initialised in this process: use it (``"existing"``).
    - ``address`` or ``RAY_ADDRESS`` set (other than ``local``): join that cluster
      (``"cluster"``), once it accepts a connection within ``connect_timeout_s``
      (else :class:`RayUnreachable`). Its token
      authentication, if on, needs ``RAY_AUTH_MODE=token`` and the cluster's token
      (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) here too.
    - Otherwise start a local Ray bound to 127.0.0.1, with no dashboard, sized to
      ``num_cpus`` or the CPUs this process may use (``"embedded"``); token auth is off by
      default for it since nothing outside this machine can reach it.

    Ray is shut down at the end of the block only if this call started it.
    """
    if ray.is_initialized():
        yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":  # a fresh local Ray: the embedded, loopback-only one
        address = None
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address:
        wait_reachable(address, connect_timeout_s)
        ray.init(address=address, **quiet)
        mode = "cluster"
    else:
        for key, value in EMBEDDED_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.pop("RAY_ADDRESS", None)  # an empty RAY_ADDRESS would confuse ray.init
        # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported; without this the
        # driver would pick the machine's address and Ray would listen on every interface.
        from ray._private import ray_constants

        cluster_before = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus or usable_cpus(),
                 _node_ip_address="127.0.0.1", **quiet)
        mode = "embedded"
    try:
        yield mode
    finally:
        if mode == "embedded":
            stop_autoscaler_monitor()
        ray.shutdown()
        if mode == "embedded":
            ray_constants.ENABLE_RAY_CLUSTER = cluster_before


@ray.remote(num_cpus=1, max_restarts=0)
class SimulationWorker:
    """A process that runs cells one at a time, reusing what ``run_cell`` memoises."""

    def __init__(self, caches: dict[str, Any]) -> None:
        self.caches = caches  # placement cache actor of each results root
        # Import the simulator now, so that "ready" means ready to run a cell at full speed.
        import helios.cell  # noqa: F401
        import helios.results  # noqa: F401

        self.actor_id = ray.get_runtime_context().get_actor_id()

    def info(self) -> dict[str, Any]:
        """Process id and host of this worker (the runner waits for it before sending cells)."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "actor_id": self.actor_id}

    def run(self, cfg: CellConfig, root: str) -> dict[str, Any]:
        """Run one cell; an exception becomes a failure record instead of a task error."""
        from helios.cell import run_cell
        from helios.faults import inject_faults

        t0 = time.perf_counter()
        try:
            inject_faults(cfg)  # test-only faults (helios.faults); none by default
            client = RayPlacementCache(self.caches[root], owner=self.actor_id)
            result = run_cell(cfg, cache=client)
            run_s = time.perf_counter() - t0
            parts = encode_parts(result.cell_id, result.tables, result.config)
            encode_s = time.perf_counter() - t0 - run_s
        except Exception as exc:  # noqa: BLE001 - every cell error is data for the failures table
            return {"ok": False, "error_type": type(exc).__name__, "message": str(exc),
                    "traceback": traceback.format_exc(), "host": socket.gethostname(),
                    "run_s": time.perf_counter() - t0}
        return {"ok": True, "cell_id": result.cell_id, "parts": parts,
                "summary": result.summary, "run_s": run_s, "encode_s": encode_s}


def encode_parts(cell_id: str, tables: dict[str, list[dict[str, Any]]],
                 config: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Parquet bytes of each non-empty table of a cell, ``cells`` last (the write order)."""
    from helios.results import encode_part

    order = sorted((t for t in tables if tables[t]), key=lambda t: t == "cells")
    return [(table, encode_part(tables[table], config, table)) for table in order]
