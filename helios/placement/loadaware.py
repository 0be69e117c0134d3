"""Load-aware cost models of one layer's placement: what both serving models share.

Both models share the decision variables of a layer with ``E`` experts on ``G`` GPUs:

* ``x[e, g]`` (binary): GPU ``g`` holds a copy of expert ``e``; at most ``slots[g]``
  copies per GPU and ``copies = E + num_redundant`` in all (EPLB's redundant experts);
* ``y[e, g]`` in [0, 1]: the share of expert ``e``'s tokens that copy serves
  (``y <= x``, ``sum_g y[e, g] = 1``); routing honours the shares at run time;
* ``P[g] = sum_e load[e] y[e, g]``: token-expert pairs GPU ``g`` computes.

Traffic is counted per (token, expert) pair from every source GPU ``s`` in proportion
to ``source_share[s]``, so a link's load is linear in ``P``: ``sum_g K[k, g] P[g]``
with ``K[k, g] = sum_s share[s] [k on route(s, g)] bytes / bandwidth[k]`` (path
incidence; combines use the reverse routes). Co-location savings of per-GPU
deduplication (``dispatch=per_gpu``, the request model) are not credited, so the
model overstates their traffic; ``per_node`` relaying is costed on direct routes.

:class:`~helios.placement.ep_layer.EpLayer` (``serving=ep``), per representative step, in microseconds:
``compute_weight * C + network_weight * (D + B)`` with ``C`` the busiest rank's
grouped GEMM (the engine's roofline, ``max(flops, bytes) + launch``, every held copy's
weights read once), ``D`` / ``B`` the busiest link's dispatch / combine
serialisation. This sum of maxima bounds the critical path ``max_g (dispatch-in +
GEMM + combine-out)`` from above; it is exact when one rank is the slowest in all
three. Valid cuts ``C >= launch + m load[e] (1/k + 1/(k+1) - n_e / (k (k+1)))``
(``n_e`` copies, the secants of ``1/n``) tighten the relaxation: the copy with the
largest share of an expert serves at least ``load[e] / n_e``.

:class:`~helios.placement.request_layer.RequestLayer` (``serving=request``), per request, in microseconds: GPU and
link utilisations ``U[g] = bg[g] + sum_e busy[e] y[e, g]`` and ``V[k] = bg[k] +
sum_g K[k, g] P[g]`` are linear (``busy`` from the request model's roofline with its
weight-read floor, ``bg`` the other layers' load: requests visit every layer, so all
layers share the GPUs and links). The waiting time per request is, by Little's law,
the mean number waiting over the request rate; with the M/D/1 queue length
``Lq(rho) = rho^2 / (2 (1 - rho))`` (convex) as ``queue_cuts`` tangents, the objective
``(compute_weight sum_g Lq(U[g]) + network_weight (sum_k Lq(V[k]) + sum_g tau[g]
P[g])) / rate`` stays linear; ``tau[g]`` is a pair's unloaded store-and-forward
transfer time (:meth:`Cluster.transfer_time`, the engine's own switching model).
``U, V <= rho_max``.

``metric="hops"`` (the ``helios_hops`` ablation) replaces the network terms with the
routes' hop counts weighted by traffic, scaled to equal the true network term when
every GPU carries the same load.

References
----------
DeepSeek-AI (2025). Expert Parallelism Load Balancer (EPLB), github.com/deepseek-ai/EPLB.
Kleinrock, L. (1975). Queueing Systems, Vol. 1, section 5.6 (M/G/1 and M/D/1 waiting).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from helios.placement.milp import Milp

__all__ = ["LayerVars", "copy_busy_terms", "expert_busy_seconds", "link_coefficients", "undominated_rows", "hop_costs",
           "queue_cuts", "pwl", "replica_counts", "US"]

US = 1e6  # objective unit: microseconds


@dataclass(frozen=True)
class LayerVars:
    """Column indices of the shared variables (``x``, ``y`` of shape (E, G))."""

    x: np.ndarray
    y: np.ndarray
    pairs: np.ndarray


def link_coefficients(cluster: Any, share: np.ndarray, out_bytes: float,
                      back_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of link serialisation per pair computed on each GPU.

    Returns
    -------
    out, back : ndarray, shape (loaded links, num_gpus)
        Dispatch (source -> GPU) and combine (GPU -> source) rows of the links any
        route loads.
    """
    import scipy.sparse as sp  # here: a sweep's driver imports this module but never solves

    G = cluster.num_gpus
    src = np.flatnonzero(share)
    gpus, srcs = np.repeat(np.arange(G), src.size), np.tile(src, G)
    inc = cluster.incidence()

    def rows(route_rows: np.ndarray, nbytes: float) -> np.ndarray:
        pick = sp.csr_matrix((share[srcs] * nbytes, (gpus, route_rows)), shape=(G, G * G))
        return np.asarray((pick @ inc).todense()).T / cluster.link_bandwidth[:, None]

    out, back = rows(srcs * G + gpus, out_bytes), rows(gpus * G + srcs, back_bytes)
    loaded = (out.max(axis=1) > 0) | (back.max(axis=1) > 0)
    return out[loaded], back[loaded]


def undominated_rows(coef: np.ndarray) -> np.ndarray:
    """``coef`` without the rows another row bounds elementwise (ties: the first kept).

    For ``P >= 0``, ``max_k coef[k] @ P`` is the same over the kept rows: what a
    busiest-link term needs, at a third of the rows on the built-in fabrics (a NIC's
    link is dominated by the switch link its traffic continues on).
    """
    order = np.lexsort((np.arange(coef.shape[0]), -coef.sum(axis=1)))
    kept: list[int] = []
    for k in order.tolist():
        if not kept or not (coef[kept] >= coef[k]).all(axis=1).any():
            kept.append(k)
    return coef[np.sort(kept)]


def hop_costs(cluster: Any, share: np.ndarray) -> np.ndarray:
    """Per GPU: expected hops of a pair's dispatch plus combine, over sources."""
    G = cluster.num_gpus
    hops = np.array([[cluster.hops(s, g) for g in range(G)] for s in range(G)], dtype=float)
    return share @ (hops + hops.T)


def queue_cuts(rho_max: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Tangents ``Lq(r) + Lq'(r) (rho - r)`` of the M/D/1 queue length at ``n`` points
    in ``[0, rho_max]``, denser near ``rho_max`` where ``Lq`` bends.

    Returns ``(slopes, intercepts)``, shape (n,) each.
    """
    r = rho_max * (1.0 - (1.0 - np.linspace(0.0, 1.0, n)) ** 2)
    lq = r * r / (2.0 * (1.0 - r))
    slope = r * (2.0 - r) / (2.0 * (1.0 - r) ** 2)
    return slope, lq - slope * r


def pwl(values: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """The tangent model of ``Lq`` (max over the cuts), elementwise."""
    values = np.asarray(values, dtype=float)
    return np.max(values[..., None] * slopes + intercepts, axis=-1)


def expert_busy_seconds(pi: np.ndarray, tokens: int, spec: Any) -> np.ndarray:
    """``E[spec.batch_seconds(n)]`` for ``n ~ Binomial(tokens, pi)``, elementwise.

    ``batch_seconds(n) = max(n * ts, wr) + overhead`` for ``n > 0``, 0 for ``n = 0``; with
    ``n0 = floor(wr / ts)`` this is ``overhead P(n >= 1) + wr P(1 <= n <= n0) + ts
    E[n; n > n0]``, and ``E[n; n >= m] = tokens * pi * P(Binomial(tokens - 1, pi) >= m - 1)``.
    """
    from scipy.stats import binom  # here: scipy.stats is 0.6 s of importing the simulator

    pi = np.clip(np.asarray(pi, dtype=float), 0.0, 1.0)
    ts, wr, ko = spec.token_seconds, spec.weight_read_seconds, spec.kernel_overhead_s
    n0 = math.floor(wr / ts) if ts > 0 else tokens
    none = binom.pmf(0, tokens, pi)
    floor_part = wr * np.clip(binom.cdf(n0, tokens, pi) - none, 0.0, 1.0)
    token_part = ts * tokens * pi * binom.sf(n0 - 1, tokens - 1, pi)
    return ko * (1.0 - none) + floor_part + token_part


def copy_busy_terms(pi: np.ndarray, tokens: int, spec: Any, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """A copy's GPU busy seconds per second as ``fixed + per_share * s`` for share ``s``.

    A request's tokens reach a copy of share ``s`` as ``Binomial(tokens, pi s)``, so its
    busy time is ``h(s) = rate E[batch_seconds]`` (:func:`expert_busy_seconds`), concave
    in ``s``: every copy a request reaches pays its own weight read and launch. The line
    through ``h(1/2)`` and ``h(1)`` is exact for one copy and for two equal ones (above
    ``h`` below a half, below it between a half and one): ``fixed = 2 h(1/2) -
    h(1)`` and ``per_share = 2 (h(1) - h(1/2))``, each at least zero. Shapes (E,).
    """
    whole = rate * expert_busy_seconds(pi, tokens, spec)
    half = rate * expert_busy_seconds(pi / 2, tokens, spec)
    fixed = np.clip(2 * half - whole, 0.0, whole)
    # a per-share part below a thousandth of the whole is noise that can fall under
    # HiGHS's 1e-9 matrix floor: the whole cost is then the copy's (exact at s = 1 still)
    fixed = np.where(whole - fixed < 1e-3 * whole, whole, fixed)
    return fixed, whole - fixed


@dataclass
class _Layer:
    """What both serving models share: loads, memory and the x / y / P columns."""

    load: np.ndarray
    slots: np.ndarray
    copies: int
    weights: tuple[float, float]  # (network, compute)
    metric: str
    also_replicable: np.ndarray | None = None
    """Experts that may hold more than one copy besides :meth:`replicable`'s rule
    (runtime adaptation: those that already do)."""

    @property
    def num_experts(self) -> int:
        return self.load.size

    @property
    def num_gpus(self) -> int:
        return self.slots.size

    def replicable(self) -> np.ndarray:
        """Experts that may get more than one copy: the ``2 (copies - E)`` hottest (the
        rule of :func:`~helios.placement.loadaware.replica_counts` never picks beyond
        ``copies - E`` of the hottest), and ``also_replicable``. The others keep one copy,
        serving all their tokens."""
        extra = self.copies - self.num_experts
        order = np.lexsort((np.arange(self.num_experts), -self.load))
        rule = np.sort(order[:min(self.num_experts, 2 * extra)])
        return rule if self.also_replicable is None else np.union1d(rule, self.also_replicable)

    def _shared(self, m: Milp, pair_cost: np.ndarray | float = 0.0) -> LayerVars:
        E, G = self.num_experts, self.num_gpus
        x = m.add_cols(E * G, 0.0, 1.0, integer=True).reshape(E, G)
        hot = self.replicable()
        y = x.copy()  # a single-copy expert's share column is its copy column
        y[hot] = m.add_cols(hot.size * G, 0.0, 1.0).reshape(hot.size, G)
        pairs = m.add_cols(G, 0.0, cost=pair_cost)
        rows_e = np.repeat(np.arange(E), G)
        m.add_rows(rows_e, y.ravel(), np.ones(E * G), 1.0, 1.0)               # shares sum to 1
        idx = np.arange(hot.size * G)
        m.add_rows(np.r_[idx, idx], np.r_[y[hot].ravel(), x[hot].ravel()],
                   np.r_[np.ones(idx.size), -np.ones(idx.size)], -np.inf, 0.0)  # y <= x
        rows_g = np.tile(np.arange(G), E)
        m.add_rows(rows_g, x.ravel(), np.ones(E * G), 0.0, self.slots.astype(float))  # memory
        m.add_rows(np.zeros(hot.size * G), x[hot].ravel(), np.ones(hot.size * G), 0.0,
                   float(self.copies - E + hot.size))                           # copy budget
        m.add_rows(np.r_[np.arange(G), rows_g], np.r_[pairs, y.ravel()],
                   np.r_[np.ones(G), -np.repeat(self.load, G)], 0.0, 0.0)     # P = load @ y
        return LayerVars(x, y, pairs)

    def pairs_of(self, y: np.ndarray) -> np.ndarray:
        return self.load @ y

    def fits(self, state: dict[str, Any], e: int, share: float, cand: np.ndarray) -> np.ndarray:
        """Which GPUs of ``cand`` can take a copy of ``e`` with ``share`` within the model's
        utilisation caps (bool, shape ``cand``); none here."""
        return np.ones(cand.size, dtype=bool)


def replica_counts(load: np.ndarray, copies: int, num_gpus: int,
                   replicable: np.ndarray | None = None) -> np.ndarray:
    """Copies per expert: one each, then each extra to the largest load per copy.

    This greedy minimises ``max_e load[e] / count[e]`` for every total (each step
    lowers the current maximum, and no other choice can lower it).

    Parameters
    ----------
    load : ndarray, shape (E,)
    copies : int
        Total copies, at least E.
    num_gpus : int
        Most copies of one expert.
    replicable : ndarray of int, optional
        The experts that may get extra copies (default: all).
    """
    E = load.size
    count = np.ones(E, dtype=np.int64)
    allowed = range(E) if replicable is None else replicable.tolist()
    heap = [(-load[e], e) for e in allowed]
    heapq.heapify(heap)
    for _ in range(copies - E):
        while heap:
            _, e = heapq.heappop(heap)
            if count[e] < num_gpus:
                break
        else:
            break
        count[e] += 1
        if count[e] < num_gpus:
            heapq.heappush(heap, (-load[e] / count[e], e))
    return count
