"""``serving=ep`` routers that weigh congestion: what each (rank, replica) pair costs now.

Both rank an expert's replicas per (sending rank, expert), for a whole step, by a cost
per GPU pair (shape ``(G, G)``) that starts from the idle-network delivery time of one
token under the engine's store-and-forward model, as ``nearest`` does, and adds:

* ``congestion_aware`` (deployable): what a deployment measures, late. Each link's and
  GPU's busy fraction ``rho`` over the newest metering window that ended at least
  ``telemetry.delay_s`` (null: one ``sim.window_s``) before the step starts, capped at
  :data:`RHO_MAX`; every link of the dispatch and the combine route adds the M/M/1 mean
  wait ``rho / (1 - rho)`` of one chunk's serialisation, the GPU ``rho / (1 - rho)``
  times one expert's grouped GEMM for a single pair (a weight read and a launch). No
  telemetry yet (the first windows): the idle cost alone.
* ``oracle_congestion`` (an ablation no deployment can run): the exact backlog, at the
  step's start, of every link on both routes (weight copies still queued there) and of
  the GPU.

The formulas are those of the request model's routers of the same names
(:mod:`helios.sim.routing`), on the EP engine's meters (:class:`helios.sim.kernel.LinkState`).
"""

from __future__ import annotations

import numpy as np

from helios.sim.kernel import LinkState
from helios.sim.routing import RHO_MAX

__all__ = ["TELEMETRY_ROUTERS", "congestion_cost", "oracle_cost"]

#: Routers whose replica choice follows the network's state, refreshed between steps.
TELEMETRY_ROUTERS = ("congestion_aware", "oracle_congestion")


def _route_sum(links: LinkState, per_link: np.ndarray) -> np.ndarray:
    """``sum over route(s, g) + sum over route(g, s)`` of ``per_link``, shape (G, G)."""
    padded = np.append(per_link, 0.0)[links.routes]  # the route table pads with num_links
    one_way = padded.sum(axis=2)
    return one_way + one_way.T


def congestion_cost(links: LinkState, idle_s: np.ndarray, w: int, gpu_job_s: float) -> np.ndarray:
    """``congestion_aware``'s cost per (rank, GPU) pair from window ``w``'s meters."""
    if w < 0 or w >= links.link_win.shape[0]:
        return idle_s
    link_rho = np.minimum(links.link_win[w] / links.window, RHO_MAX)
    gpu_rho = np.minimum(links.gpu_win[w] / links.window, RHO_MAX)
    link_wait = link_rho / (1.0 - link_rho) * links.chunk * links.inv_bw
    gpu_wait = gpu_rho / (1.0 - gpu_rho) * gpu_job_s
    return idle_s + _route_sum(links, link_wait) + gpu_wait[None, :]


def oracle_cost(links: LinkState, idle_s: np.ndarray, now: float) -> np.ndarray:
    """``oracle_congestion``'s cost per (rank, GPU) pair from the exact queues at ``now``."""
    link_backlog = np.maximum(links.link_free - now, 0.0)
    gpu_backlog = np.maximum(links.gpu_free - now, 0.0)
    return idle_s + _route_sum(links, link_backlog) + gpu_backlog[None, :]
