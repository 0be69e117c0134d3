"""Helios congestion-aware placement ILP (``helios_static``) and its hop-count ablation
(``helios_hops``).

One MILP (PuLP; CBC by default, HiGHS on request) over all simulated layers; the cost
model, its normalisation and bounds are in :mod:`helios.placement.ilp_costs`.

Variables: binary ``x[l, e, g]`` (expert ``e`` of layer ``l`` lives on GPU ``g``); for
the concave sends-per-token curve ``h[l, g] = f(W[l, g])``, ``W[l, g] = sum_e a[l, e]
x[l, e, g]``, the incremental piecewise-linear form (segment fills ``d[l, g, k]`` and
binaries ``z[l, g, k]`` that open segment ``k + 1`` only once ``k`` is full, since a
concave curve's cheap later segments must not be used first); ``H[g] = sum_l h[l, g]``;
``rho`` (busiest link utilisation); ``c[l]`` (busiest GPU time of layer ``l``).

Objective: ``latency_weight * mean_l sum_g cost[g] h[l, g] + congestion_weight * rho +
compute_weight * mean_l c[l]``. Constraints: one copy of every expert per layer;
``sum_e x[l, e, g] <= slots_per_gpu``; ``rows @ H <= rho`` (one row per distinct
loaded link); ``sum_e busy[l, e] x[l, e, g] <= c[l]``.

Why one joint problem and not one per layer: requests sit at different layers at the
same time, so every link carries all layers' traffic and its utilisation is a maximum
of a sum over layers, which per-layer problems cannot see. (The network and compute
terms add up over layers, a request's layers running one after another.)

Solving: the greedy :func:`~helios.placement.ilp_costs.warm_start`, improved by single
moves (:func:`~helios.placement.ilp_costs.local_search`), is handed to the solver as a
MIP start; if it is already within ``mip_gap`` of :meth:`IlpCosts.lower_bound`, no
solver runs. The relaxation of the concave sends curve is weak, so on instances of
realistic size (measured: 128 x 32 and up, 10 s) the solvers seldom improve on this
start and cannot prove much: expect ``feasible`` with a large gap there; on small
instances they find and prove the optimum. ``ilp_status`` comes from
``prob.sol_status`` (``LpStatus`` may read "Optimal" after a time limit): ``optimal``
(proven within ``mip_gap``), ``feasible`` (stopped with a solution), ``infeasible``,
``not_solved``; with no solution the strategy falls back to
:func:`~helios.placement.baselines.greedy` and records ``fallback_greedy``.
"""

from __future__ import annotations

import importlib.util
import math
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pulp

from helios.errors import ConfigError
from helios.placement.base import Placement, PlacementContext
from helios.placement.baselines import greedy
from helios.placement.ilp_costs import IlpCosts, build_costs, local_search, warm_start

__all__ = ["IlpSolution", "solve_ilp", "solve_placement", "helios_static", "helios_hops",
           "SOL_STATUS"]

#: PuLP ``sol_status`` -> recorded ``ilp_status``.
SOL_STATUS = {pulp.LpSolutionOptimal: "optimal", pulp.LpSolutionIntegerFeasible: "feasible",
              pulp.LpSolutionInfeasible: "infeasible", pulp.LpSolutionUnbounded: "not_solved",
              pulp.LpSolutionNoSolutionFound: "not_solved"}


@dataclass
class IlpSolution:
    """What one solver run returned; ``assign`` is None when no solution was found."""

    assign: np.ndarray | None
    status: str
    objective: float
    gap: float
    build_s: float
    solve_s: float
    info: dict[str, Any] = field(default_factory=dict)


class _WarmHiGHS(pulp.HiGHS):  # type: ignore[misc, valid-type]
    """PuLP's highspy interface, handing the variables' initial values to HiGHS as a start."""

    def callSolver(self, lp: pulp.LpProblem) -> None:
        import highspy

        sol = highspy.HighsSolution()
        sol.col_value = [v.varValue if v.varValue is not None else 0.0 for v in lp.variables()]
        sol.value_valid = True
        lp.solverModel.setSolution(sol)
        super().callSolver(lp)


def _solver(cfg: Any, log_path: Path) -> pulp.LpSolver:
    if cfg.solver == "cbc":
        # PuLP 3.3 flags its bundled CBC as deprecated in favour of a separately installed
        # one (COIN_CMD); the bundled binary is the one the pinned stack ships, so keep it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # CBC's probing cuts took most of the time at 256 x 128 and never cut anything.
            return pulp.PULP_CBC_CMD(msg=False, timeLimit=cfg.time_limit_s, gapRel=cfg.mip_gap,
                                     warmStart=True, logPath=str(log_path),
                                     options=["probing off"])
    if importlib.util.find_spec("highspy") is None:
        raise ConfigError("strategy.ilp.solver", cfg.solver, "cbc (highspy is not installed)")
    return _WarmHiGHS(msg=False, timeLimit=cfg.time_limit_s, gapRel=cfg.mip_gap, threads=1)


def _cbc_gap(log_path: Path, objective: float) -> float:
    """Relative gap ``(objective - bound) / |objective|`` from CBC's log; NaN if unknown.

    The bound is, by preference, that of a search stopped early ("Partial search ...
    best possible", "Lower bound:"); none for a completed search (gap 0); else the root
    LP value (CBC reports "Optimal" when a time limit stops it before the root ends).
    """
    try:
        text = log_path.read_text()
    except OSError:
        return math.nan
    number = r"(-?[0-9.]+(?:[eE][+-]?[0-9]+)?)"
    found = (re.findall(r"Cbc0005I.*best possible " + number, text)
             or re.findall(r"Lower bound:\s+" + number, text))
    if not found and "Cbc0001I Search completed" in text:
        return 0.0
    found = found or re.findall(r"Continuous objective value is " + number, text)
    if not found:
        return math.nan
    return max(0.0, (objective - float(found[-1])) / max(abs(objective), 1e-12))


def _pwl_fill(costs: IlpCosts, weight: float) -> tuple[list[float], list[int]]:
    """Segment fills and open-flags of the incremental form at ``W = weight``."""
    lengths = np.diff(costs.breaks)
    fill = np.clip(weight - costs.breaks[:-1], 0.0, lengths)
    return fill.tolist(), [int(f >= n - 1e-12) for f, n in zip(fill[:-1], lengths[:-1])]


def solve_ilp(costs: IlpCosts, slots: int, cfg: Any, start: np.ndarray | None = None) -> IlpSolution:
    """Build and solve the placement MILP of ``costs`` with solver settings ``cfg`` (IlpConfig).

    ``start`` (an assignment) is handed to the solver as a MIP start.
    """
    t0 = time.perf_counter()
    a, busy, (L, E), G = costs.intensity, costs.busy, costs.busy.shape, costs.num_gpus
    w_net, w_cong, w_comp = costs.weights
    lengths = np.diff(costs.breaks)
    slopes = np.diff(costs.values) / lengths
    K = len(lengths)
    prob = pulp.LpProblem("helios_placement", pulp.LpMinimize)
    var = prob.add_variable
    x = [[[var(f"x_{l}_{e}_{g}", cat=pulp.LpBinary) for g in range(G)]
          for e in range(E)] for l in range(L)]
    d = [[[var(f"d_{l}_{g}_{k}", lowBound=0, upBound=float(lengths[k])) for k in range(K)]
          for g in range(G)] for l in range(L)]
    z = [[[var(f"z_{l}_{g}_{k}", cat=pulp.LpBinary) for k in range(K - 1)]
          for g in range(G)] for l in range(L)]
    H = [var(f"H_{g}", lowBound=0) for g in range(G)]
    # Valid lower bounds that the LP relaxation (which spreads experts thinly) misses.
    rho = var("rho", lowBound=costs.congestion_bound(slots) if w_cong > 0 else 0.0)
    c = [var(f"c_{l}", lowBound=float(v)) for l, v in enumerate(costs.layer_compute_bounds())]
    for l in range(L):
        for e in range(E):
            prob += pulp.LpAffineExpression([(v, 1.0) for v in x[l][e]]) == 1, f"one_{l}_{e}"
        for g in range(G):
            if slots < E:
                prob += pulp.LpAffineExpression([(x[l][e][g], 1.0) for e in range(E)]) <= slots, \
                    f"mem_{l}_{g}"
            # W[l, g] = sum of the segment fills; segment k+1 opens only when k is full.
            prob += pulp.LpAffineExpression([(v, 1.0) for v in d[l][g]] + [
                (x[l][e][g], -float(a[l, e])) for e in range(E) if a[l, e] > 0]) == 0, f"w_{l}_{g}"
            for k in range(K - 1):
                prob += pulp.LpAffineExpression([(d[l][g][k], 1.0), (z[l][g][k], -float(lengths[k]))]) \
                    >= 0, f"full_{l}_{g}_{k}"
                prob += pulp.LpAffineExpression([(d[l][g][k + 1], 1.0),
                                                 (z[l][g][k], -float(lengths[k + 1]))]) <= 0, \
                    f"open_{l}_{g}_{k}"
            if w_comp > 0:
                prob += pulp.LpAffineExpression([(x[l][e][g], float(busy[l, e])) for e in range(E)
                                                 if busy[l, e] > 0] + [(c[l], -1.0)]) <= 0, \
                    f"busy_{l}_{g}"
    for g in range(G):
        prob += pulp.LpAffineExpression([(H[g], 1.0)] + [
            (d[l][g][k], -float(slopes[k])) for l in range(L) for k in range(K)]) == 0, f"H_{g}"
    # Valid: no placement sends fewer tokens than the most concentrated one (see
    # IlpCosts.min_sends); the relaxation alone would spread every expert thinly.
    for l, least in enumerate(costs.min_sends(slots)):
        prob += pulp.LpAffineExpression([(d[l][g][k], float(slopes[k])) for g in range(G)
                                         for k in range(K)]) >= float(least) * (1 - 1e-9), \
            f"sends_{l}"
    if w_cong > 0:
        for i, row in enumerate(costs.link_rows):
            prob += pulp.LpAffineExpression([(H[g], float(row[g])) for g in np.flatnonzero(row)]
                                            + [(rho, -1.0)]) <= 0, f"link_{i}"
    prob += pulp.LpAffineExpression(
        [(d[l][g][k], w_net / L * float(costs.gpu_cost[g] * slopes[k]))
         for l in range(L) for g in range(G) for k in range(K) if costs.gpu_cost[g] > 0]
        + [(rho, w_cong)] + [(c_l, w_comp / L) for c_l in c])
    if start is not None:
        _set_start(costs, start, x, d, z, H, rho, c)
    build_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="helios_ilp_") as tmp:
        log_path = Path(tmp) / "cbc.log"
        solver = _solver(cfg, log_path)
        t0 = time.perf_counter()
        prob.solve(solver)
        solve_s = time.perf_counter() - t0
        status = SOL_STATUS.get(prob.sol_status, "not_solved")
        if status not in ("optimal", "feasible"):
            return IlpSolution(None, status, math.nan, math.nan, build_s, solve_s)
        value = float(pulp.value(prob.objective))
        if cfg.solver == "highs":
            gap = float(prob.solverModel.getInfo().mip_gap)
            gap = gap if 0 <= gap < 1e30 else math.nan
        else:
            gap = _cbc_gap(log_path, value)
    if status == "optimal" and not gap <= cfg.mip_gap + 1e-9:
        status = "feasible"  # no bound backs the solver's "optimal" (CBC after a time limit)
    assign = np.array([[int(np.argmax([v.varValue or 0.0 for v in x[l][e]])) for e in range(E)]
                       for l in range(L)])
    info = {"ilp_variables": prob.numVariables(), "ilp_constraints": prob.numConstraints()}
    return IlpSolution(assign, status, value, gap, build_s, solve_s, info)


def _set_start(costs: IlpCosts, start: np.ndarray, x: list, d: list, z: list, H: list,
               rho: Any, c: list) -> None:
    L, E = costs.busy.shape
    G = costs.num_gpus
    for l, e in np.ndindex(L, E):
        for g, v in enumerate(x[l][e]):
            v.setInitialValue(1 if g == start[l, e] else 0)
    sends = np.zeros(G)
    for l in range(L):
        weight = np.bincount(start[l], weights=costs.intensity[l], minlength=G)
        sends += costs.hits(weight)
        for g in range(G):
            fill, full = _pwl_fill(costs, float(weight[g]))
            for v, f in zip(d[l][g], fill):
                v.setInitialValue(f)
            for v, f in zip(z[l][g], full):
                v.setInitialValue(f)
        busiest = np.bincount(start[l], weights=costs.busy[l], minlength=G).max()
        c[l].setInitialValue(max(float(busiest), c[l].lowBound))
    for g, v in enumerate(H):
        v.setInitialValue(float(sends[g]))
    rho.setInitialValue(max(costs.terms(start)[1], rho.lowBound))


def solve_placement(ctx: PlacementContext, metric: str) -> Placement:
    """Place ``ctx``'s experts with the ILP of ``metric``; greedy when no solution is found.

    When the start (greedy + local search) is already within ``strategy.ilp.mip_gap`` of
    :meth:`IlpCosts.lower_bound` it is proven good enough and no solver runs
    (``ilp_proven_by = "bound"``). Otherwise the solver's answer is used when it is
    proven (``optimal``); when the time limit stops it first (``feasible``) the start is
    used, so that the placement does not depend on the machine's speed (its better but
    unproven objective, if any, is kept as ``ilp_solver_objective``).
    """
    cfg = ctx.strategy.ilp
    t0 = time.perf_counter()
    costs = build_costs(ctx, metric)
    greedy_start = warm_start(costs, ctx.slots_per_gpu)
    start = local_search(costs, greedy_start, ctx.slots_per_gpu)
    start_objective, bound = costs.objective(start), costs.lower_bound(ctx.slots_per_gpu)

    def gap_to_bound(value: float) -> float:
        return max(0.0, value - bound) / max(abs(value), 1e-12)

    info: dict[str, Any] = {"strategy": "helios_static" if metric == "latency" else "helios_hops",
                            "ilp_metric": metric, "ilp_solver": cfg.solver,
                            "ilp_greedy_objective": costs.objective(greedy_start),
                            "ilp_start_objective": start_objective, "ilp_lower_bound": bound}
    if gap_to_bound(start_objective) <= cfg.mip_gap:
        sol = IlpSolution(start, "optimal", start_objective, gap_to_bound(start_objective),
                          time.perf_counter() - t0, 0.0, {"ilp_proven_by": "bound"})
    else:
        sol = solve_ilp(costs, ctx.slots_per_gpu, cfg, start)
        sol.build_s = time.perf_counter() - t0 - sol.solve_s  # coefficients + start + model
        sol.info["ilp_proven_by"] = "solver"
        if sol.assign is not None and sol.status != "optimal":
            # How far an unfinished search got depends on the machine (a wall-clock
            # limit); a cell must not, so the deterministic start is used, with its gap
            # to our own bound (the solver's partial objective and gap go to info only).
            sol.info.update(ilp_solver_objective=sol.objective, ilp_solver_gap=sol.gap)
            sol.assign, sol.objective, sol.gap = start, start_objective, gap_to_bound(start_objective)
    info.update(ilp_build_s=sol.build_s, ilp_solve_s=sol.solve_s, **sol.info)
    if sol.assign is None:
        placement = greedy(ctx)
        info.update(ilp_status="fallback_greedy", ilp_solver_status=sol.status,
                    ilp_objective=math.nan, ilp_gap=math.nan)
        placement.info = {**placement.info, **info}
        return placement
    network, congestion, compute = costs.terms(sol.assign)
    info.update(ilp_status=sol.status, ilp_objective=sol.objective, ilp_gap=sol.gap,
                ilp_network_term=network, ilp_congestion_term=congestion,
                ilp_compute_term=compute)
    return Placement([[[int(g)] for g in layer] for layer in sol.assign], ctx.num_gpus, info)


def helios_static(ctx: PlacementContext) -> Placement:
    """Helios congestion-aware placement: the ILP with bandwidth-aware latency."""
    return solve_placement(ctx, "latency")


def helios_hops(ctx: PlacementContext) -> Placement:
    """Ablation of :func:`helios_static`: hop count in place of bandwidth-aware latency."""
    return solve_placement(ctx, "hops")
