"""``serving=ep``: one layer's placement cost, the step's critical path (see
:mod:`helios.placement.loadaware` for the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from helios.placement.loadaware import US, LayerVars, _Layer, replica_counts
from helios.placement.milp import Milp

__all__ = ["EpLayer"]


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

    def shares(self, x: np.ndarray) -> np.ndarray | None:
        """The optimal shares for copies ``x`` (bool, shape (E, G)), or None if the LP fails."""
        solved = self.share_lp(x)
        return None if solved is None else solved[0]

    def share_lp(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The optimal shares for copies ``x`` and each GPU's price of a pair, or None.

        The layer's LP with the copies fixed, over the shares of the experts with more than
        one copy only (a single copy serves all its expert's tokens): columns ``y`` of
        those copies, ``P``, ``C``, ``D``, ``B``; the rows of :meth:`build` less its
        integer and cut rows, which fixed copies make redundant. A few hundred columns where
        the whole model has ``E x G``, so a local search can afford one per move.

        The objective is a max, so many shares are optimal; of those, the LP's second
        phase picks the ones with the least total excess of pairs over the mean GPU's,
        so that a GPU sits at the busiest level only where no optimal shares move it off.

        Returns ``(y, price)``: shares, shape (E, G), and ``price[g]``, the objective's
        rate of change per pair added to GPU ``g`` (the first phase's dual of its
        pair-count row).
        """
        x = np.asarray(x) > 0.5
        G = x.shape[1]
        copies = x.sum(axis=1)
        y = x / np.maximum(copies, 1)[:, None]
        flex = np.flatnonzero(copies > 1)
        fe, fg = np.nonzero(x[flex])
        n = fe.size
        rigid = self.load @ (x & (copies == 1)[:, None])
        # columns: the n shares, the G pair counts P, C, D, B, then the G excesses Z
        width = n + 2 * G + 3
        c_col, d_col, b_col, z0 = n + G, n + G + 1, n + G + 2, n + G + 3
        flop_s, byte_s, weight_s, launch_s = (v * US for v in self.gemm)
        net_w, comp_w = self.weights
        hops = self.metric == "hops"
        g = np.arange(G)
        ones, c_cols = np.ones(G), np.full(G, c_col)
        # P[g] - the shares' pairs on g = the single copies' pairs on g; shares sum to 1
        blocks = [_rows(np.r_[g, fg], np.r_[n + g, np.arange(n)], np.r_[ones, -self.load[flex[fe]]], G, width),
                  _rows(fe, np.arange(n), np.ones(n), flex.size, width),
                  _rows(np.r_[g, g], np.r_[n + g, c_cols], np.r_[np.full(G, flop_s), -ones], G, width),
                  _rows(np.r_[g, g], np.r_[n + g, c_cols], np.r_[np.full(G, byte_s), -ones], G, width),
                  _rows(np.r_[g, g], np.r_[z0 + g, n + g], np.r_[ones, -ones], G, width)]
        lower = [rigid, np.ones(flex.size), np.full(G, -np.inf), np.full(G, -np.inf),
                 np.full(G, -self.load.sum() / G)]
        upper = [rigid, np.ones(flex.size), np.full(G, -launch_s), -launch_s - weight_s * x.sum(axis=0),
                 np.full(G, np.inf)]
        cost = np.zeros(width)
        cost[[c_col, d_col, b_col]] = comp_w, net_w, net_w
        if hops:
            cost[n:n + G] = net_w * self.hop_scale * US * self.hops
        elif self.out.size:
            for col, coef in ((d_col, self.out), (b_col, self.back)):
                k, gg = np.nonzero(coef)
                K = coef.shape[0]
                blocks.append(_rows(np.r_[k, np.arange(K)], np.r_[n + gg, np.full(K, col)],
                                    np.r_[coef[k, gg] * US, -np.ones(K)], K, width))
                lower.append(np.full(K, -np.inf))
                upper.append(np.zeros(K))
        col_upper = np.full(width, np.inf)
        col_upper[:n] = 1.0
        if hops:
            col_upper[[d_col, b_col]] = 0.0
        import scipy.sparse as sp  # here: a sweep's driver imports this module but never solves

        solved = _lexicographic_lp(cost, z0, sp.vstack(blocks, format="csc"), np.concatenate(lower),
                                   np.concatenate(upper), col_upper)
        if solved is None:
            return None
        values, price = solved
        y[flex] = 0.0
        y[flex[fe], fg] = np.clip(values[:n], 0.0, None)
        total = y[flex].sum(axis=1, keepdims=True)
        y[flex] = np.where(total > 0, y[flex] / np.where(total > 0, total, 1.0), x[flex] / copies[flex, None])
        return y, price[:G]

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
        rule of :func:`~helios.placement.loadaware.replica_counts` reaches, optimal for this
        min-max), and the fullest GPU holds at least ``ceil(T / G)`` copies. So ``C >=
        launch + max(flop L, byte L, weight ceil(T / G))``, and each link term is at
        least the least per-GPU busiest-link coefficient times ``L`` (every GPU's
        busiest ingress link carries its pairs); the bound is the least over ``T``.
        """
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
        from scipy.optimize import linprog  # here: only the ILP needs scipy.optimize (0.7 s)

        G, K, Kb = self.num_gpus, self.out.shape[0], self.back.shape[0]
        cost = np.r_[np.zeros(G), 1.0, 1.0]
        scale = 1.0 / max(self.out.max(), self.back.max())
        rows = np.block([[self.out * scale, -np.ones((K, 1)), np.zeros((K, 1))],
                         [self.back * scale, np.zeros((Kb, 1)), -np.ones((Kb, 1))]])
        lp = linprog(cost, A_ub=rows, b_ub=np.zeros(K + Kb), A_eq=np.r_[np.ones(G), 0, 0][None, :],
                     b_eq=[self.load.sum()], bounds=[(0, None)] * (G + 2), method="highs")
        return float(lp.fun) / scale * (1 - 1e-9) if lp.status == 0 else 0.0

    def _secant_cuts(self, m: Milp, v: LayerVars, c: int, per_pair: float, launch: float) -> None:
        rows, cols, vals, lo = [], [], [], []
        G, r = self.num_gpus, 0
        for e, k in _secant_points(self.load, G):
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
        return {"pairs": np.zeros(self.num_gpus), "held": np.zeros(self.num_gpus),
                "c_max": 0.0, "d_load": np.zeros(self.out.shape[0]), "b_load": np.zeros(self.back.shape[0])}

    def add(self, state: dict[str, Any], e: int, share: float, g: int) -> None:
        q = self.load[e] * share
        state["pairs"][g] += q
        state["held"][g] += 1
        state["c_max"] = max(state["c_max"], float(self._compute(state["pairs"][g:g + 1],
                                                                  state["held"][g:g + 1])[0]))
        state["d_load"] += self.out[:, g] * q
        state["b_load"] += self.back[:, g] * q


def _lexicographic_lp(cost: np.ndarray, z0: int, a: Any, row_lo: np.ndarray,
                      row_hi: np.ndarray, col_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Minimise ``cost`` (columns from ``z0`` on excluded), then, with it held at its
    optimum, the columns from ``z0`` on; returns the second point and the first's row
    duals, or None. HiGHS re-solves the second LP from the first's basis."""
    import highspy

    width = cost.size
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = width, a.shape[0]
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, np.zeros(width), col_hi
    lp.row_lower_, lp.row_upper_ = row_lo, row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr.astype(np.int32)
    lp.a_matrix_.index_ = a.indices.astype(np.int32)
    lp.a_matrix_.value_ = a.data
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.passModel(lp)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    best = h.getInfo().objective_function_value
    duals = np.asarray(h.getSolution().row_dual)
    used = np.flatnonzero(cost)
    h.addRow(-np.inf, best + 1e-9 * abs(best), used.size, used.astype(np.int32), cost[used])
    second = np.zeros(width)
    second[z0:] = 1.0
    h.changeColsCost(width, np.arange(width, dtype=np.int32), second)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return np.asarray(h.getSolution().col_value), duals


def _rows(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, num_rows: int, width: int) -> Any:
    """A ``scipy.sparse.csr_matrix`` of shape ``(num_rows, width)``."""
    import scipy.sparse as sp

    return sp.csr_matrix((vals, (rows, cols)), shape=(num_rows, width))


def _least_ingress(coef: np.ndarray) -> float:
    """``min_g max_k coef[k, g]``: the least, over GPUs, of a GPU's busiest link per pair."""
    return float(coef.max(axis=0).min()) if coef.size else 0.0


def _secant_points(load: np.ndarray, num_gpus: int) -> list[tuple[int, int]]:
    """The (expert, k) of the secant cuts: experts above the mean GPU load, each with the
    integer copy counts k below which one copy would carry more than the mean."""
    mean = load.sum() / num_gpus
    return [(int(e), k) for e in np.flatnonzero(load > mean)
            for k in range(1, min(num_gpus, int(math.ceil(load[e] / mean)) + 1))]


def _secant_floor(load: np.ndarray, copies: np.ndarray, per_pair: float, launch: float,
                  num_gpus: int) -> float:
    """The largest right-hand side of the secant cuts at the given copy counts."""
    return max([0.0] + [launch + per_pair * load[e] * (1.0 / k + 1.0 / (k + 1) - copies[e] / (k * (k + 1)))
                        for e, k in _secant_points(load, num_gpus)])
