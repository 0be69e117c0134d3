"""Cost model of the Helios placement ILP: coefficients, objective, bounds, greedy start.

What a placement changes, per simulated layer ``l`` (a request's layers run one after
another; all requests share the links and GPUs):

* **Network**: a token is sent once to every GPU holding at least one of its top-k
  experts (the simulator's dispatch, as DeepEP's), so the expected sends per token to
  GPU ``g`` are ``h[l, g] = 1 - prod_{e on g} (1 - pi[l, e]) = f(W[l, g])`` with
  ``W[l, g] = sum_{e on g} a[l, e]``, ``a = -log(1 - pi)``, ``f(W) = 1 - exp(-W)``
  (selections treated as independent; top-k picks are distinct experts, so they are
  in fact slightly negatively correlated and this overstates what co-location saves),
  and ``pi[l, e] = top_k * load[l, e] /
  sum_e load[l, e]`` the per-token selection chance. ``f`` is concave: experts often
  picked together save traffic when they share a GPU. In the ILP ``f`` is the
  piecewise-linear interpolation of ``1 - exp(-W)`` at :data:`SEGMENTS` breakpoints
  (equal steps of ``f``, the last at the largest ``W`` a GPU can hold); this
  interpolation *is* the model, here and in the solver.
* **Network term** (expected dispatch+combine time, bandwidth-aware): a token sent to
  ``g`` costs ``tau[g] = sum_src share[src] max(T(src, g, m d), T(g, src, m b)) / m``,
  with ``T`` = :meth:`Cluster.path_latency` (propagation + bytes / bottleneck
  bandwidth: cut-through, whereas the simulator stores and forwards chunks, so
  messages under a chunk take about hops x bytes / bandwidth there), ``d``, ``b`` the dispatch / combine bytes of a token and ``m`` the tokens
  of a representative message, ``tokens_per_request * top_k / min(G, E)``. The larger
  of the two directions, not their sum: links are full duplex and a request has many
  messages in flight, so its combines (GPU -> home) stream while its later dispatches
  (home -> GPU) still go out, and the slower direction sets the request's time.
  ``helios_hops`` uses the routes' hop counts, scaled to the same mean, instead. The
  term is ``mean_l sum_g tau[g] h[l, g] / (top_k * mean(tau))``: 1 when every pair
  travels alone to an average GPU.
* **Compute term**: a request picking expert ``e`` for ``n ~ Binomial(tokens, pi)``
  tokens keeps its GPU busy ``E[batch_seconds(n)]`` (roofline with weight-read floor
  and launch overhead, :mod:`helios.moe`); a layer ends when its busiest GPU does, so
  the term is ``mean_l max_g busy[l, g]`` divided by the same reference time as the
  network term, ``tokens * top_k * mean(tau)`` (seconds over seconds).
* **Congestion term**: the predicted utilisation of the busiest link, ``max_i
  tokens_per_s * sum_{l, g} h[l, g] B[g, i] / bandwidth[i]`` with ``B[g, i] = sum_src
  share[src] (d [i in route(src, g)] + b [i in route(g, src)])`` bytes per token sent.

So two terms are fractions of a request-layer's reference time and the third is a
utilisation (queueing delay grows with it, roughly ``rho / (2 (1 - rho))`` of a
service time in an M/D/1 queue): weights of 1 compare them at their physical size.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog
from scipy.stats import binom

from helios.placement.base import PlacementContext

__all__ = ["IlpCosts", "SEGMENTS", "build_costs", "expert_busy_seconds", "warm_start",
           "local_search"]

#: Linear pieces of the concave sends-per-token curve ``f``.
SEGMENTS = 8


@dataclass(frozen=True)
class IlpCosts:
    """Coefficients of the placement ILP of one context (see the module docstring).

    Attributes
    ----------
    intensity : ndarray, shape (layers, experts)
        ``a[l, e] = -log(1 - pi[l, e])``.
    busy : ndarray, shape (layers, experts)
        Expected GPU busy time per request, over the reference time.
    gpu_cost : ndarray, shape (num_gpus,)
        ``tau[g] / (top_k * mean(tau))`` (or the hop-count version).
    link_rows : ndarray, shape (rows, num_gpus)
        Utilisation of each distinct loaded link per unit of ``sum_l h[l, g]``.
    breaks, values : ndarray, shape (SEGMENTS + 1,) or fewer
        Breakpoints of the piecewise-linear ``f`` and ``f`` there.
    weights : tuple of float
        ``(latency, congestion, compute)``.
    metric : str
        ``"latency"`` or ``"hops"``.
    """

    intensity: np.ndarray
    busy: np.ndarray
    gpu_cost: np.ndarray
    link_rows: np.ndarray
    breaks: np.ndarray
    values: np.ndarray
    weights: tuple[float, float, float]
    metric: str

    @property
    def num_gpus(self) -> int:
        return self.gpu_cost.shape[0]

    def hits(self, weight: np.ndarray) -> np.ndarray:
        """Sends per token ``f(W)`` (the piecewise-linear model)."""
        return np.interp(weight, self.breaks, self.values)

    def terms(self, assign: np.ndarray) -> tuple[float, float, float]:
        """``(network, congestion, compute)`` of an assignment ``(layers, experts) -> gpu``."""
        assign, G = np.asarray(assign), self.num_gpus
        h = np.array([self.hits(np.bincount(row, weights=a, minlength=G))
                      for row, a in zip(assign, self.intensity)])
        busiest = [np.bincount(row, weights=b, minlength=G).max() for row, b in zip(assign, self.busy)]
        network = float((h @ self.gpu_cost).mean())
        congestion = float((self.link_rows @ h.sum(axis=0)).max()) if self.link_rows.size else 0.0
        return network, congestion, float(np.mean(busiest))

    def objective(self, assign: np.ndarray) -> float:
        """The ILP objective of an assignment (what the solver minimises)."""
        return float(np.dot(self.weights, self.terms(assign)))

    def min_sends(self, slots: int) -> np.ndarray:
        """Per layer, the least ``sum_g h[l, g]`` any placement reaches: ``f`` is concave,
        so packing the ``slots`` most intense experts together, then the next, ... is
        optimal (its vector of GPU sums majorises every other)."""
        out = []
        for a in self.intensity:
            ordered = np.sort(a)[::-1]
            sums = np.add.reduceat(ordered, np.arange(0, ordered.size, slots))
            out.append(float(self.hits(sums).sum()))
        return np.array(out)

    def layer_compute_bounds(self) -> np.ndarray:
        """Least busiest-GPU time per layer: the mean, and the busiest expert alone."""
        return np.maximum(self.busy.sum(axis=1) / self.num_gpus, self.busy.max(axis=1))

    def congestion_bound(self, slots: int) -> float:
        """Least busiest-link utilisation over all splits of at least the fewest sends
        (a small LP), hence valid for every placement."""
        rows, G = self.link_rows, self.num_gpus
        if rows.size == 0:
            return 0.0
        least = float(self.min_sends(slots).sum())
        # variables (H_0 .. H_{G-1}, rho): min rho, rows @ H <= rho, sum H >= least, H >= 0.
        lp = linprog(np.r_[np.zeros(G), 1.0],
                     A_ub=np.r_[np.c_[rows, -np.ones(len(rows))], -np.r_[np.ones(G), 0.0][None, :]],
                     b_ub=np.r_[np.zeros(len(rows)), -least], bounds=[(0, None)] * (G + 1),
                     method="highs")
        return float(lp.fun) * (1 - 1e-9) if lp.status == 0 else 0.0

    def lower_bound(self, slots: int) -> float:
        """Weighted sum of the three terms' separate lower bounds: a bound of the objective."""
        w_net, w_cong, w_comp = self.weights
        network = float(self.gpu_cost.min() * self.min_sends(slots).mean())
        return (w_net * network + w_cong * self.congestion_bound(slots)
                + w_comp * float(self.layer_compute_bounds().mean()))


def expert_busy_seconds(pi: np.ndarray, tokens: int, spec: Any) -> np.ndarray:
    """``E[spec.batch_seconds(n)]`` for ``n ~ Binomial(tokens, pi)``, elementwise.

    ``batch_seconds(n) = max(n * ts, wr) + overhead`` for ``n > 0``, 0 for ``n = 0``; with
    ``n0 = floor(wr / ts)`` this is ``overhead P(n >= 1) + wr P(1 <= n <= n0) + ts
    E[n; n > n0]``, and ``E[n; n >= m] = tokens * pi * P(Binomial(tokens - 1, pi) >= m - 1)``.
    """
    pi = np.clip(np.asarray(pi, dtype=float), 0.0, 1.0)
    ts, wr, ko = spec.token_seconds, spec.weight_read_seconds, spec.kernel_overhead_s
    n0 = math.floor(wr / ts) if ts > 0 else tokens
    none = binom.pmf(0, tokens, pi)
    floor_part = wr * np.clip(binom.cdf(n0, tokens, pi) - none, 0.0, 1.0)
    token_part = ts * tokens * pi * binom.sf(n0 - 1, tokens - 1, pi)
    return ko * (1.0 - none) + floor_part + token_part


def _token_costs(cluster: Any, share: np.ndarray, message: float, spec: Any,
                 metric: str) -> np.ndarray:
    """Per GPU: expected time (or hops) of one token's dispatch + combine, over sources."""
    out_bytes, back_bytes = message * spec.dispatch_token_bytes, message * spec.combine_token_bytes
    cost = np.zeros(cluster.num_gpus)
    for src in np.flatnonzero(share).tolist():
        for g in range(cluster.num_gpus):
            if metric == "hops":
                there = cluster.hops(src, g) + cluster.hops(g, src)
            else:  # full duplex: a request's dispatches and combines overlap (see module doc)
                there = max(cluster.path_latency(src, g, out_bytes),
                            cluster.path_latency(g, src, back_bytes)) / message
            cost[g] += share[src] * there
    return cost


def _link_rows(cluster: Any, share: np.ndarray, spec: Any, tokens_per_s: float) -> np.ndarray:
    """Distinct rows ``tokens_per_s * B[g, i] / bandwidth[i]`` of the links routes load."""
    G = cluster.num_gpus
    src = np.flatnonzero(share)
    rows, srcs = np.repeat(np.arange(G), len(src)), np.tile(src, G)
    w = share[srcs]
    # Row g of `pick` adds the incidence rows of route(src, g) and route(g, src).
    pick = sp.csr_matrix((np.concatenate([w * spec.dispatch_token_bytes, w * spec.combine_token_bytes]),
                          (np.concatenate([rows, rows]),
                           np.concatenate([srcs * G + rows, rows * G + srcs]))), shape=(G, G * G))
    util = np.asarray((pick @ cluster.incidence()).todense()) * tokens_per_s / cluster.link_bandwidth
    util = util[:, util.max(axis=0) > 0].T  # (loaded links, G)
    return np.unique(np.round(util, 15), axis=0) if util.size else np.zeros((0, G))


def _breakpoints(intensity: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints at equal steps of ``1 - exp(-W)``, ending at the largest ``W`` one GPU
    can hold (its ``slots`` most intense experts)."""
    top = max(float(np.sort(a)[::-1][:slots].sum()) for a in intensity)
    steps = -np.log1p(-np.arange(SEGMENTS) / SEGMENTS)
    breaks = np.r_[steps[steps < top], top] if top > 0 else np.array([0.0, 1.0])
    return breaks, -np.expm1(-breaks)


def build_costs(ctx: PlacementContext, metric: str = "latency") -> IlpCosts:
    """ILP coefficients of ``ctx``, with ``"latency"`` or ``"hops"`` as the network metric."""
    if metric not in ("latency", "hops"):
        raise ValueError(f"metric must be 'latency' or 'hops', not {metric!r}")
    if ctx.tokens_per_request is None:
        raise ValueError("the placement ILP needs PlacementContext.tokens_per_request")
    ilp, spec, cluster, G = ctx.strategy.ilp, ctx.spec, ctx.cluster, ctx.num_gpus
    load = np.asarray(ctx.expected_load, dtype=float)
    per_layer = load.sum(axis=1, keepdims=True)
    pi = spec.top_k * np.divide(load, per_layer, out=np.full(load.shape, 1.0 / load.shape[1]),
                                where=per_layer > 0)
    pi = np.clip(pi, 0.0, 1.0 - 1e-9)
    tokens = max(1, round(ctx.tokens_per_request))
    tokens_per_s = float(per_layer.mean()) / spec.top_k
    share = np.asarray(ctx.source_share, dtype=float)
    share = share / share.sum()
    message = min(float(tokens), max(1.0, tokens * spec.top_k / min(G, ctx.num_experts)))
    tau = _token_costs(cluster, share, message, spec, "latency")
    shape = tau if metric == "latency" else _token_costs(cluster, share, message, spec, "hops")
    scale = spec.top_k * tau.mean()  # the reference: every pair alone to an average GPU
    gpu_cost = shape / shape.mean() * tau.mean() / scale if shape.mean() > 0 else np.zeros(G)
    reference_s = tokens * scale if scale > 0 else 1.0
    busy = expert_busy_seconds(pi, tokens, spec) / reference_s
    intensity = -np.log1p(-pi)
    breaks, values = _breakpoints(intensity, ctx.slots_per_gpu)
    return IlpCosts(intensity, busy, gpu_cost, _link_rows(cluster, share, spec, tokens_per_s),
                    breaks, values, (ilp.latency_weight, ilp.congestion_weight, ilp.compute_weight),
                    metric)


def warm_start(costs: IlpCosts, slots: int) -> np.ndarray:
    """Greedy start: (layer, expert) pairs by decreasing busy time (longest processing
    time first), each to the GPU with a free slot in its layer that raises the objective
    least.

    Ties (common: symmetric GPUs) go to the least busy GPU, then by a fixed pseudo-random
    GPU order (crc32 of the id). Not the lowest id: that would put every layer's hottest
    experts on GPUs 0, 1, ..., and the simulator's home GPU sends a request's messages
    in GPU-id order, so labels that follow popularity change latency by themselves.
    """
    L, E = costs.busy.shape
    G = costs.num_gpus
    w_net, w_cong, w_comp = costs.weights
    rows = costs.link_rows if costs.link_rows.size else np.zeros((1, G))
    busy, weight = np.zeros((L, G)), np.zeros((L, G))
    link_load = rows @ np.zeros(G)
    used = np.zeros((L, G), dtype=int)
    assign = np.zeros((L, E), dtype=int)
    rank = np.argsort(np.argsort([zlib.crc32(b"helios-gpu-%d" % g) for g in range(G)]))
    for flat in np.lexsort((-costs.intensity.ravel(), -costs.busy.ravel())):
        layer, expert = divmod(int(flat), E)
        a, b = costs.intensity[layer, expert], costs.busy[layer, expert]
        cand = np.flatnonzero(used[layer] < slots)
        more = costs.hits(weight[layer, cand] + a) - costs.hits(weight[layer, cand])
        score = (w_net * costs.gpu_cost[cand] * more / L
                 + w_cong * (link_load[:, None] + rows[:, cand] * more).max(axis=0)
                 + w_comp * np.maximum(busy[layer].max(), busy[layer, cand] + b) / L)
        best = cand[score <= score.min() + 1e-12 * max(1.0, abs(score.min()))]
        best = best[busy[layer, best] <= busy[layer, best].min() * (1 + 1e-12)]
        gpu = int(best[np.argmin(rank[best])])
        link_load += rows[:, gpu] * (costs.hits(weight[layer, gpu] + a) - costs.hits(weight[layer, gpu]))
        assign[layer, expert] = gpu
        busy[layer, gpu] += b
        weight[layer, gpu] += a
        used[layer, gpu] += 1
    return assign


def local_search(costs: IlpCosts, assign: np.ndarray, slots: int, max_passes: int = 4) -> np.ndarray:
    """Improve an assignment by single moves: each (layer, expert), hottest first, goes to
    the GPU with a free slot where the objective is lowest, if that beats staying put;
    passes repeat until none moves an expert (or ``max_passes``). Never worsens."""
    assign = np.array(assign, dtype=int)
    L, E = assign.shape
    G = costs.num_gpus
    w_net, w_cong, w_comp = costs.weights
    rows = costs.link_rows if costs.link_rows.size else np.zeros((1, G))
    weight = np.array([np.bincount(r, weights=a, minlength=G) for r, a in zip(assign, costs.intensity)])
    busy = np.array([np.bincount(r, weights=b, minlength=G) for r, b in zip(assign, costs.busy)])
    used = np.array([np.bincount(r, minlength=G) for r in assign])
    link_load = rows @ costs.hits(weight).sum(axis=0)
    order = np.lexsort((-costs.intensity.ravel(), -costs.busy.ravel()))
    for _ in range(max_passes):
        moved = False
        for flat in order:
            layer, expert = divmod(int(flat), E)
            a, b, here = costs.intensity[layer, expert], costs.busy[layer, expert], assign[layer, expert]
            # take the expert out, then score every GPU that has room (including its own)
            out = costs.hits(weight[layer, here] - a) - costs.hits(weight[layer, here])
            base_links = link_load + rows[:, here] * out
            base_busy = busy[layer].copy()
            base_busy[here] -= b
            cand = np.flatnonzero((used[layer] < slots) | (np.arange(G) == here))
            more = costs.hits(weight[layer, cand] + a) - costs.hits(weight[layer, cand])
            more = np.where(cand == here, -out, more)  # back where it was: undo the removal
            # busiest GPU of the layer other than the candidate: the top, or the runner-up
            first = int(np.argmax(base_busy))
            runner_up = np.max(np.delete(base_busy, first)) if G > 1 else 0.0
            top_other = np.where(cand == first, runner_up, base_busy[first])
            score = (w_net * costs.gpu_cost[cand] * more / L
                     + w_cong * (base_links[:, None] + rows[:, cand] * more).max(axis=0)
                     + w_comp * np.maximum(top_other, base_busy[cand] + b) / L)
            stay = score[np.flatnonzero(cand == here)[0]]
            best = int(np.argmin(score))
            if score[best] < stay - 1e-12 * max(1.0, abs(stay)):
                gpu = int(cand[best])
                link_load = base_links + rows[:, gpu] * more[best]
                weight[layer, here] -= a
                weight[layer, gpu] += a
                busy[layer, here] -= b
                busy[layer, gpu] += b
                used[layer, here] -= 1
                used[layer, gpu] += 1
                assign[layer, expert] = gpu
                moved = True
        if not moved:
            break
    return assign
