"""Load-aware cost models of one layer's placement, one per serving model.

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

:class:`EpLayer` (``serving=ep``), per representative step, in microseconds:
``compute_weight * C + network_weight * (D + B)`` with ``C`` the busiest rank's
grouped GEMM (the engine's roofline, ``max(flops, bytes) + launch``, every held copy's
weights read once), ``D`` / ``B`` the busiest link's dispatch / combine
serialisation. This sum of maxima bounds the critical path ``max_g (dispatch-in +
GEMM + combine-out)`` from above; it is exact when one rank is the slowest in all
three. Valid cuts ``C >= launch + m load[e] (1/k + 1/(k+1) - n_e / (k (k+1)))``
(``n_e`` copies, the secants of ``1/n``) tighten the relaxation: the copy with the
largest share of an expert serves at least ``load[e] / n_e``.

:class:`RequestLayer` (``serving=request``), in microseconds per request: GPU and
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

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog
from scipy.stats import binom

from helios.placement.milp import Milp

__all__ = ["EpLayer", "RequestLayer", "LayerVars", "expert_busy_seconds", "link_coefficients",
           "hop_costs", "queue_cuts"]

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
    pi = np.clip(np.asarray(pi, dtype=float), 0.0, 1.0)
    ts, wr, ko = spec.token_seconds, spec.weight_read_seconds, spec.kernel_overhead_s
    n0 = math.floor(wr / ts) if ts > 0 else tokens
    none = binom.pmf(0, tokens, pi)
    floor_part = wr * np.clip(binom.cdf(n0, tokens, pi) - none, 0.0, 1.0)
    token_part = ts * tokens * pi * binom.sf(n0 - 1, tokens - 1, pi)
    return ko * (1.0 - none) + floor_part + token_part


@dataclass
class _Layer:
    """What both serving models share: loads, memory and the x / y / P columns."""

    load: np.ndarray
    slots: np.ndarray
    copies: int
    weights: tuple[float, float]  # (network, compute)
    metric: str

    @property
    def num_experts(self) -> int:
        return self.load.size

    @property
    def num_gpus(self) -> int:
        return self.slots.size

    def replicable(self) -> np.ndarray:
        """Experts that may get more than one copy: the ``2 (copies - E)`` hottest (the
        rule of :func:`~helios.placement.ilp.replica_counts` never picks beyond
        ``copies - E`` of the hottest). The others keep one copy, serving all their tokens."""
        extra = self.copies - self.num_experts
        order = np.lexsort((np.arange(self.num_experts), -self.load))
        return np.sort(order[:min(self.num_experts, 2 * extra)])

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


@dataclass
class EpLayer(_Layer):
    """``serving=ep``: one layer's critical path in a representative step (see module doc).

    ``load`` is pairs per step; ``gemm = (flop_s, byte_s, weight_s, launch_s)`` per pair,
    per pair, per held expert and per launch; ``out`` / ``back`` are
    :func:`link_coefficients`; ``hops`` per GPU, used when ``metric == "hops"``.
    """

    gemm: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    out: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    back: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    hops: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.hop_scale = 0.0
        if self.metric == "hops":
            balanced = np.full(self.num_gpus, self.load.sum() / self.num_gpus)
            true = self._link_seconds(balanced)
            denom = float(self.hops @ balanced)
            self.hop_scale = true / denom if denom > 0 else 0.0

    def _link_seconds(self, pairs: np.ndarray) -> float:
        return float((self.out @ pairs).max(initial=0.0) + (self.back @ pairs).max(initial=0.0))

    def _network(self, pairs: np.ndarray) -> float:
        if self.metric == "hops":
            return float(self.hop_scale * (self.hops @ pairs)) * US
        return self._link_seconds(pairs) * US

    def _compute(self, pairs: np.ndarray, held: np.ndarray) -> np.ndarray:
        flop_s, byte_s, weight_s, launch_s = self.gemm
        return np.maximum(flop_s * pairs, weight_s * held + byte_s * pairs) * US + launch_s * US

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """The objective (microseconds) of copies ``x`` and shares ``y``, shape (E, G)."""
        pairs = self.pairs_of(y)
        net_w, comp_w = self.weights
        return comp_w * float(self._compute(pairs, x.sum(axis=0)).max()) + net_w * self._network(pairs)

    def build(self) -> tuple[Milp, LayerVars, dict[str, np.ndarray]]:
        """The layer's MILP and its columns."""
        m = Milp()
        net_w, comp_w = self.weights
        G = self.num_gpus
        flop_s, byte_s, weight_s, launch_s = (v * US for v in self.gemm)
        hop_cost = net_w * self.hop_scale * US * self.hops if self.metric == "hops" else 0.0
        v = self._shared(m, hop_cost)
        c = m.add_cols(1, 0.0, cost=comp_w)
        g = np.arange(G)
        m.add_rows(np.r_[g, g], np.r_[np.repeat(c, G), v.pairs], np.r_[np.ones(G), -flop_s * np.ones(G)],
                   launch_s, np.inf)
        E = self.num_experts
        # The fullest GPU's copy count as an integer: branching on it settles whether an
        # extra copy (one more weight read on some GPU) pays, which the y <= x
        # relaxation alone cannot see.
        rows = np.r_[g, np.tile(g, E), g]
        m.add_rows(rows, np.r_[np.repeat(c, G), v.x.ravel(), v.pairs],
                   np.r_[np.ones(G), -weight_s * np.ones(E * G), -byte_s * np.ones(G)], launch_s, np.inf)
        held = m.add_cols(1, 0.0, float(self.slots.max()), integer=True)
        m.add_rows(np.r_[g, np.tile(g, E)], np.r_[np.repeat(held, G), v.x.ravel()],
                   np.r_[np.ones(G), -np.ones(E * G)], 0.0, np.inf)
        m.add_rows(np.zeros(2), np.r_[c, held], np.r_[1.0, -weight_s], launch_s, np.inf)
        self._secant_cuts(m, v, c[0], max(flop_s, byte_s), launch_s)
        aux = {"c": c, "held": held}
        if self.metric != "hops":
            for name, coef in (("d", self.out), ("b", self.back)):
                col = m.add_cols(1, 0.0, cost=net_w)
                k, gg = np.nonzero(coef)
                K = coef.shape[0]
                m.add_rows(np.r_[np.arange(K), k], np.r_[np.repeat(col, K), v.pairs[gg]],
                           np.r_[np.ones(K), -coef[k, gg] * US], 0.0, np.inf)
                # Every GPU's busiest ingress (egress) link carries its pairs, so the link
                # term too is at least its least such coefficient times load / copies.
                self._secant_cuts(m, v, col[0], _least_ingress(coef) * US, 0.0)
                aux[name] = col
        return m, v, aux

    def lower_bound(self) -> float:
        """A bound on the objective of every integer solution (microseconds).

        With ``T`` copies in all, the busiest GPU computes at least ``L(T) = min max_e
        load[e] / n_e`` over integer copy counts summing to ``T`` (what the replication
        rule of :func:`~helios.placement.ilp.replica_counts` reaches, optimal for this
        min-max), and the fullest GPU holds at least ``ceil(T / G)`` copies. So ``C >=
        launch + max(flop L, byte L, weight ceil(T / G))``, and each link term is at
        least the least per-GPU busiest-link coefficient times ``L`` (every GPU's
        busiest ingress link carries its pairs); the bound is the least over ``T``.
        """
        from helios.placement.ilp import replica_counts

        E, G = self.num_experts, self.num_gpus
        flop_s, byte_s, weight_s, launch_s = (v * US for v in self.gemm)
        net_w, comp_w = self.weights
        if self.metric == "hops":
            floor = self.hop_scale * float(self.hops.min()) * self.load.sum() * US
            net = lambda busiest: net_w * floor  # noqa: E731
        else:
            per_pair = (_least_ingress(self.out) + _least_ingress(self.back)) * US
            spread = self._link_floor() * US
            net = lambda busiest: net_w * max(per_pair * busiest, spread)  # noqa: E731
        hot = self.replicable()
        best = math.inf
        for total in range(E, self.copies + 1):
            counts = replica_counts(self.load, total, G, hot)
            busiest = max(float((self.load / counts).max()), self.load.sum() / G)
            if total == E:
                others = max(0, E - 1 - (G - 1) * math.ceil(E / G))
                ordered = np.sort(self.load)
                busiest = max(busiest, float(ordered[-1] + ordered[:others].sum()))
            fullest = math.ceil(total / G)
            work = max(flop_s * busiest, byte_s * busiest)
            # Either some GPU holds more than ceil(T / G) copies, or (T a multiple of G)
            # every GPU holds exactly ceil(T / G), the busiest one included.
            c = launch_s + max(work, weight_s * (fullest + 1))
            exact = weight_s * fullest + (byte_s * busiest if total % G == 0 else 0.0)
            c = min(c, launch_s + max(work, exact))
            best = min(best, comp_w * c + net(busiest))
        return best

    def _link_floor(self) -> float:
        """Least ``max_k out @ P + max_k back @ P`` over every split of the layer's pairs
        over the GPUs (an LP in ``P``, ``D``, ``B``): the link terms of any placement."""
        if self.out.size == 0:
            return 0.0
        G, K = self.num_gpus, self.out.shape[0]
        cost = np.r_[np.zeros(G), 1.0, 1.0]
        scale = 1.0 / max(self.out.max(), self.back.max())
        rows = np.block([[self.out * scale, -np.ones((K, 1)), np.zeros((K, 1))],
                         [self.back * scale, np.zeros((K, 1)), -np.ones((K, 1))]])
        lp = linprog(cost, A_ub=rows, b_ub=np.zeros(2 * K), A_eq=np.r_[np.ones(G), 0, 0][None, :],
                     b_eq=[self.load.sum()], bounds=[(0, None)] * (G + 2), method="highs")
        return float(lp.fun) / scale * (1 - 1e-9) if lp.status == 0 else 0.0

    def _secant_cuts(self, m: Milp, v: LayerVars, c: int, per_pair: float, launch: float) -> None:
        mean = self.load.sum() / self.num_gpus
        rows, cols, vals, lo = [], [], [], []
        G, r = self.num_gpus, 0
        for e in np.flatnonzero(self.load > mean):
            for k in range(1, min(G, int(math.ceil(self.load[e] / mean)) + 1)):
                rows += [r] * (G + 1)
                cols += [c, *v.x[e]]
                vals += [1.0, *([per_pair * self.load[e] / (k * (k + 1))] * G)]
                lo.append(launch + per_pair * self.load[e] * (1.0 / k + 1.0 / (k + 1)))
                r += 1
        if r:
            m.add_rows(np.array(rows), np.array(cols), np.array(vals), np.array(lo), np.inf)

    def complete(self, m: Milp, v: LayerVars, aux: dict[str, np.ndarray], x: np.ndarray,
                 y: np.ndarray) -> np.ndarray:
        """Every column's value at copies ``x`` and shares ``y`` (a MIP start)."""
        values = np.zeros(m.num_cols)
        pairs = self.pairs_of(y)
        values[v.y.ravel()], values[v.x.ravel()], values[v.pairs] = y.ravel(), x.ravel(), pairs
        values[aux["c"]] = self._compute(pairs, x.sum(axis=0)).max()
        cut_floor = _secant_floor(self.load, x.sum(axis=1), max(self.gemm[0], self.gemm[1]) * US,
                                  self.gemm[3] * US, self.num_gpus)
        values[aux["c"]] = max(values[aux["c"]][0], cut_floor)
        values[aux["held"]] = x.sum(axis=0).max()
        if "d" in aux:
            copies = x.sum(axis=1)
            for name, coef in (("d", self.out), ("b", self.back)):
                floor = _secant_floor(self.load, copies, _least_ingress(coef) * US,
                                      0.0, self.num_gpus)
                values[aux[name]] = max((coef @ pairs).max(initial=0.0) * US, floor)
        return values

    def marginal(self, state: dict[str, Any], e: int, share: float, cand: np.ndarray) -> np.ndarray:
        """Objective after adding a copy of ``e`` serving ``share`` to each GPU of ``cand``."""
        q = self.load[e] * share
        pairs, held = state["pairs"], state["held"]
        new_c = self._compute(pairs[cand] + q, held[cand] + 1)
        others = state.get("c_max", 0.0)
        net_w, comp_w = self.weights
        obj = comp_w * np.maximum(others, new_c)
        if self.metric == "hops":
            obj = obj + net_w * US * self.hop_scale * (self.hops @ pairs + self.hops[cand] * q)
        else:
            for coef, key in ((self.out, "d_load"), (self.back, "b_load")):
                cur = state[key]
                obj = obj + net_w * US * np.maximum(cur.max(initial=0.0),
                                                    (cur[:, None] + coef[:, cand] * q).max(axis=0, initial=0.0))
        return obj

    def new_state(self) -> dict[str, Any]:
        K = self.out.shape[0]
        return {"pairs": np.zeros(self.num_gpus), "held": np.zeros(self.num_gpus),
                "c_max": 0.0, "d_load": np.zeros(K), "b_load": np.zeros(K)}

    def add(self, state: dict[str, Any], e: int, share: float, g: int) -> None:
        q = self.load[e] * share
        state["pairs"][g] += q
        state["held"][g] += 1
        state["c_max"] = max(state["c_max"], float(self._compute(state["pairs"][g:g + 1],
                                                                  state["held"][g:g + 1])[0]))
        state["d_load"] += self.out[:, g] * q
        state["b_load"] += self.back[:, g] * q


def _least_ingress(coef: np.ndarray) -> float:
    """``min_g max_k coef[k, g]``: the least, over GPUs, of a GPU's busiest link per pair."""
    return float(coef.max(axis=0).min()) if coef.size else 0.0


def _secant_floor(load: np.ndarray, copies: np.ndarray, per_pair: float, launch: float,
                  num_gpus: int) -> float:
    """The largest right-hand side of the secant cuts at the given copy counts."""
    mean = load.sum() / num_gpus
    best = 0.0
    for e in np.flatnonzero(load > mean):
        n = copies[e]
        for k in range(1, min(num_gpus, int(math.ceil(load[e] / mean)) + 1)):
            best = max(best, launch + per_pair * load[e] * (1.0 / k + 1.0 / (k + 1) - n / (k * (k + 1))))
    return best


@dataclass
class RequestLayer(_Layer):
    """``serving=request``: one layer's waiting + transfer time per request (module doc).

    ``load`` is pairs per second, ``busy`` the GPU busy seconds per second each expert
    would cause on one GPU, ``rate`` requests per second of ``tokens`` tokens, ``coef``
    the combined dispatch + combine :func:`link_coefficients` (seconds per token sent),
    ``tau`` a token's unloaded transfer seconds per GPU, ``gpu_bg`` / ``link_bg`` the
    other layers' utilisations.

    The request model sends a token once to every GPU holding one of its experts, so a
    GPU receives ``rate tokens f(W[g])`` tokens per second, ``W[g] = sum_e a[e] y[e, g]``,
    ``a[e] = -log(1 - pi[e])`` (``pi[e]`` the chance a token picks ``e``; selections
    treated as independent, and a replicated expert's share as a thinned intensity),
    ``f(W) = 1 - exp(-W)``. ``f`` is concave: experts picked together save sends when
    they share a GPU. It enters as the incremental piecewise-linear interpolation at
    ``segments`` breakpoints (equal steps of ``f``; binaries open a segment only once the
    previous one is full); this interpolation is the model, here and in the MILP.
    """

    busy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rate: float = 1.0
    tokens: int = 1
    coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    tau: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hops: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gpu_bg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    link_bg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rho_max: float = 0.95
    cuts: int = 16
    segments: int = 8

    def __post_init__(self) -> None:
        self.hop_scale = 0.0
        self.slopes, self.intercepts = queue_cuts(self.rho_max, self.cuts)
        pi = np.clip(self.load / (self.rate * self.tokens), 0.0, 1.0 - 1e-9)
        self.intensity = -np.log1p(-pi)
        most = float(np.sort(self.intensity)[::-1][:int(self.slots.max())].sum())
        levels = np.linspace(0.0, 1.0 - math.exp(-most), self.segments + 1)
        self.breaks = -np.log1p(-levels)
        self.breaks[-1] = most
        self.values = 1.0 - np.exp(-self.breaks)
        if self.metric == "hops":
            balanced = np.full(self.num_gpus, self.intensity.sum() / self.num_gpus)
            sends = self.rate * self.tokens * np.interp(balanced, self.breaks, self.values)
            true = self._network(sends, use_hops=False)
            denom = float(self.hops @ sends)
            self.hop_scale = true / denom if denom > 0 else 0.0

    def sends_of(self, y: np.ndarray) -> np.ndarray:
        """Tokens per second each GPU receives (the piecewise-linear model)."""
        return self.rate * self.tokens * np.interp(self.intensity @ y, self.breaks, self.values)

    def _network(self, sends: np.ndarray, use_hops: bool | None = None) -> float:
        """Network seconds per request times the request rate."""
        if use_hops if use_hops is not None else self.metric == "hops":
            return float(self.hop_scale * (self.hops @ sends))
        links = pwl(self.link_bg + self.coef @ sends, self.slopes, self.intercepts).sum()
        return float(links + self.tau @ sends)

    def utilisation(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GPU and link utilisations, including the other layers'."""
        return self.gpu_bg + self.busy @ y, self.link_bg + self.coef @ self.sends_of(y)

    def own_load(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This layer's own GPU and link utilisations."""
        return self.busy @ y, self.coef @ self.sends_of(y)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """The objective (microseconds per request) of copies ``x`` and shares ``y``."""
        net_w, comp_w = self.weights
        gpu = pwl(self.gpu_bg + self.busy @ y, self.slopes, self.intercepts).sum()
        return (comp_w * float(gpu) + net_w * self._network(self.sends_of(y))) * US / self.rate

    def build(self) -> tuple[Milp, LayerVars, dict[str, np.ndarray]]:
        m = Milp()
        net_w, comp_w = self.weights
        E, G = self.num_experts, self.num_gpus
        scale = US / self.rate
        v = self._shared(m)
        g = np.arange(G)
        u = m.add_cols(G, 0.0, self.rho_max)
        m.add_rows(np.r_[g, np.tile(g, E)], np.r_[u, v.y.ravel()],
                   np.r_[np.ones(G), -np.repeat(self.busy, G)], self.gpu_bg, self.gpu_bg)
        w = m.add_cols(G, 0.0, cost=comp_w * scale)
        self._cut_rows(m, w, u)
        send_cost = self.hop_scale * self.hops if self.metric == "hops" else self.tau
        sends = self._sends_rows(m, v, net_w * scale * send_cost)
        aux = {"u": u, "w": w, "sends": sends}
        if self.metric != "hops":
            K = self.coef.shape[0]
            util = m.add_cols(K, 0.0, self.rho_max)
            k, gg = np.nonzero(self.coef)
            m.add_rows(np.r_[np.arange(K), k], np.r_[util, sends[gg]],
                       np.r_[np.ones(K), -self.coef[k, gg]], self.link_bg, self.link_bg)
            wait = m.add_cols(K, 0.0, cost=net_w * scale)
            self._cut_rows(m, wait, util)
            aux.update(util=util, wait=wait)
        return m, v, aux

    def _sends_rows(self, m: Milp, v: LayerVars, cost: np.ndarray) -> np.ndarray:
        """Columns ``S[g]`` = tokens/s sent to ``g``, by the incremental PWL of ``f``."""
        E, G, n = self.num_experts, self.num_gpus, self.segments
        width = np.diff(self.breaks)
        slope = np.diff(self.values) / width
        fill = m.add_cols(G * n, 0.0, np.tile(width, G)).reshape(G, n)
        opened = m.add_cols(G * (n - 1), 0.0, 1.0, integer=True).reshape(G, n - 1)
        g = np.arange(G)
        # sum_k fill[g, k] = sum_e a[e] y[e, g]
        m.add_rows(np.r_[np.repeat(g, n), np.tile(g, E)], np.r_[fill.ravel(), v.y.ravel()],
                   np.r_[np.ones(G * n), -np.repeat(self.intensity, G)], 0.0, 0.0)
        r = np.arange(G * (n - 1))
        # segment k full before k + 1 opens: fill[k] >= width[k] z[k], fill[k + 1] <= width[k + 1] z[k]
        m.add_rows(np.r_[r, r], np.r_[fill[:, :-1].ravel(), opened.ravel()],
                   np.r_[np.ones(r.size), -np.tile(width[:-1], G)], 0.0, np.inf)
        m.add_rows(np.r_[r, r], np.r_[fill[:, 1:].ravel(), opened.ravel()],
                   np.r_[np.ones(r.size), -np.tile(width[1:], G)], -np.inf, 0.0)
        sends = m.add_cols(G, 0.0, cost=cost)
        m.add_rows(np.r_[g, np.repeat(g, n)], np.r_[sends, fill.ravel()],
                   np.r_[np.ones(G), -self.rate * self.tokens * np.tile(slope, G)], 0.0, 0.0)
        self._fill, self._opened = fill, opened
        return sends

    def lower_bound(self) -> float:
        """No bound of its own: the solver's bound is the proof (returns ``-inf``)."""
        return -math.inf

    def _cut_rows(self, m: Milp, wait: np.ndarray, util: np.ndarray) -> None:
        n, cuts = wait.size, self.slopes.size
        rows = np.arange(n * cuts)
        m.add_rows(np.r_[rows, rows], np.r_[np.repeat(wait, cuts), np.repeat(util, cuts)],
                   np.r_[np.ones(n * cuts), -np.tile(self.slopes, n)],
                   np.tile(self.intercepts, n), np.inf)

    def complete(self, m: Milp, v: LayerVars, aux: dict[str, np.ndarray], x: np.ndarray,
                 y: np.ndarray) -> np.ndarray:
        values = np.zeros(m.num_cols)
        values[v.y.ravel()], values[v.x.ravel()], values[v.pairs] = y.ravel(), x.ravel(), self.pairs_of(y)
        gpu, link = self.utilisation(y)
        values[aux["u"]] = gpu
        values[aux["w"]] = np.maximum(pwl(gpu, self.slopes, self.intercepts), 0.0)
        weight = np.minimum(self.intensity @ y, self.breaks[-1])
        width = np.diff(self.breaks)
        fill = np.clip(weight[:, None] - self.breaks[None, :-1], 0.0, width[None, :])
        values[self._fill.ravel()] = fill.ravel()
        values[self._opened.ravel()] = (fill[:, :-1] >= width[None, :-1] * (1 - 1e-12)).ravel()
        values[aux["sends"]] = self.sends_of(y)
        if "util" in aux:
            values[aux["util"]] = link
            values[aux["wait"]] = np.maximum(pwl(link, self.slopes, self.intercepts), 0.0)
        return values

    def new_state(self) -> dict[str, Any]:
        return {"gpu": self.gpu_bg.copy(), "link": self.link_bg.copy(),
                "weight": np.zeros(self.num_gpus), "pairs": np.zeros(self.num_gpus)}

    def _sends(self, weight: np.ndarray) -> np.ndarray:
        return self.rate * self.tokens * np.interp(weight, self.breaks, self.values)

    def marginal(self, state: dict[str, Any], e: int, share: float, cand: np.ndarray) -> np.ndarray:
        net_w, comp_w = self.weights
        u = self.busy[e] * share
        gpu = state["gpu"][cand]
        obj = comp_w * (pwl(gpu + u, self.slopes, self.intercepts) - pwl(gpu, self.slopes, self.intercepts))
        weight = state["weight"][cand]
        extra = self._sends(weight + self.intensity[e] * share) - self._sends(weight)
        if self.metric == "hops":
            return obj + net_w * self.hop_scale * self.hops[cand] * extra
        # Links: the queueing cost's slope at the current load (first order; a copy moves
        # one link's utilisation by little), one K x G product per copy.
        link = state["link"]
        slope = self.slopes[np.argmax(link[:, None] * self.slopes + self.intercepts, axis=1)]
        return obj + net_w * (slope @ self.coef[:, cand] + self.tau[cand]) * extra

    def add(self, state: dict[str, Any], e: int, share: float, g: int) -> None:
        weight = state["weight"][g]
        extra = float(self._sends(np.array([weight + self.intensity[e] * share]))[0]
                      - self._sends(np.array([weight]))[0])
        state["weight"][g] += self.intensity[e] * share
        state["gpu"][g] += self.busy[e] * share
        state["link"] += self.coef[:, g] * extra
        state["pairs"][g] += self.load[e] * share
