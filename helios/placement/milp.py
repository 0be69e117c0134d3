"""A small array-built MILP, solved by HiGHS through highspy's array API.

Models are assembled as column blocks and sparse row blocks (no per-variable Python
objects: a DeepSeek-V3 layer on 128 GPUs has ~66 k columns and ~100 k rows), handed to
HiGHS in one ``passModel`` call, and solved single-threaded from a MIP start.

References
----------
Huangfu, Q. and Hall, J. A. J. (2018). Parallelizing the dual revised simplex method.
Mathematical Programming Computation 10, 119-142. (HiGHS.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Milp", "MilpResult"]

INF = float("inf")


@dataclass
class MilpResult:
    """What one HiGHS run returned.

    ``values`` is None when HiGHS found no feasible point; ``stop`` is ``"optimal"``
    (proven within the gap), ``"time"`` (time limit), ``"infeasible"`` or ``"error"``.
    """

    values: np.ndarray | None
    objective: float
    bound: float
    gap: float
    stop: str
    seconds: float
    nodes: int


class Milp:
    """Columns and rows of a MILP ``min c.x  s.t.  lo <= A x <= hi,  l <= x <= u``."""

    def __init__(self) -> None:
        self._cost: list[np.ndarray] = []
        self._lower: list[np.ndarray] = []
        self._upper: list[np.ndarray] = []
        self._integer: list[np.ndarray] = []
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
        self._row_lo: list[np.ndarray] = []
        self._row_hi: list[np.ndarray] = []
        self.num_cols = 0

    def add_cols(self, n: int, lower: float | np.ndarray = 0.0, upper: float | np.ndarray = INF,
                 cost: float | np.ndarray = 0.0, integer: bool = False) -> np.ndarray:
        """Add ``n`` columns; returns their indices."""
        self._cost.append(np.broadcast_to(np.asarray(cost, dtype=float), (n,)).copy())
        self._lower.append(np.broadcast_to(np.asarray(lower, dtype=float), (n,)).copy())
        self._upper.append(np.broadcast_to(np.asarray(upper, dtype=float), (n,)).copy())
        self._integer.append(np.full(n, 1 if integer else 0, dtype=np.int32))
        idx = np.arange(self.num_cols, self.num_cols + n)
        self.num_cols += n
        return idx

    def add_rows(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                 lower: float | np.ndarray, upper: float | np.ndarray) -> None:
        """Add rows given as triplets; ``rows`` count from 0 within this block."""
        rows = np.asarray(rows, dtype=np.int64)
        n = int(rows.max()) + 1 if rows.size else 0
        if isinstance(lower, np.ndarray):
            n = max(n, lower.size)
        if isinstance(upper, np.ndarray):
            n = max(n, upper.size)
        self._rows.append((rows, np.asarray(cols, dtype=np.int64), np.asarray(vals, dtype=float), n))
        self._row_lo.append(np.broadcast_to(np.asarray(lower, dtype=float), (n,)).copy())
        self._row_hi.append(np.broadcast_to(np.asarray(upper, dtype=float), (n,)).copy())

    def matrix(self) -> Any:
        """The constraint matrix, shape (rows, columns): a ``scipy.sparse.csr_matrix``."""
        import scipy.sparse as sp  # here: a sweep's driver imports this module but never solves

        blocks = [sp.coo_matrix((v, (r, c)), shape=(n, self.num_cols)) for r, c, v, n in self._rows]
        return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, self.num_cols))

    @property
    def cost(self) -> np.ndarray:
        return np.concatenate(self._cost)

    def solve(self, start: np.ndarray | None, time_limit_s: float, mip_gap: float,
              relax: bool = False, fix: tuple[np.ndarray, np.ndarray] | None = None) -> MilpResult:
        """Solve with HiGHS (one thread, fixed random seed), from ``start`` if given.

        ``relax=True`` drops integrality (an LP); ``fix = (columns, values)`` pins those
        columns. A time limit of at most 0 returns the start unsolved, stop ``"time"``.
        """
        import highspy

        t0 = time.perf_counter()
        cost = self.cost
        if time_limit_s <= 0:
            obj = float(cost @ start) if start is not None else INF
            return MilpResult(start, obj, -INF, INF, "time", 0.0, 0)
        a = self.matrix().tocsc()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.num_cols, a.shape[0]
        lp.col_cost_ = cost
        lower, upper = np.concatenate(self._lower), np.concatenate(self._upper)
        if fix is not None:
            lower[fix[0]] = upper[fix[0]] = fix[1]
        lp.col_lower_, lp.col_upper_ = lower, upper
        lp.row_lower_, lp.row_upper_ = np.concatenate(self._row_lo), np.concatenate(self._row_hi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = a.indptr.astype(np.int32)
        lp.a_matrix_.index_ = a.indices.astype(np.int32)
        lp.a_matrix_.value_ = a.data
        integer = np.concatenate(self._integer)
        if not relax and integer.any():
            lp.integrality_ = [highspy.HighsVarType(int(v)) for v in integer]
        h = highspy.Highs()
        for name, value in (("output_flag", False), ("threads", 1), ("random_seed", 0),
                            ("mip_rel_gap", float(mip_gap)), ("presolve", "on")):
            h.setOptionValue(name, value)
        h.passModel(lp)
        if start is not None and not relax:
            sol = highspy.HighsSolution()
            sol.col_value = np.asarray(start, dtype=float).tolist()
            sol.value_valid = True
            h.setSolution(sol)
        # the limit covers building and passing the model too, not only HiGHS's run
        h.setOptionValue("time_limit", max(time_limit_s - (time.perf_counter() - t0), 1e-3))
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        seconds = time.perf_counter() - t0
        has_point = info.primal_solution_status == 2  # kSolutionStatusFeasible
        values = np.asarray(h.getSolution().col_value) if has_point else None
        if status == highspy.HighsModelStatus.kOptimal:
            stop = "optimal"
        elif status == highspy.HighsModelStatus.kInfeasible:
            stop = "infeasible"
        elif status in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kSolutionLimit,
                        highspy.HighsModelStatus.kIterationLimit):
            stop = "time"
        else:
            stop = "error"
        objective = info.objective_function_value if has_point else INF
        if relax:
            bound, gap = objective, 0.0 if stop == "optimal" else INF
        else:
            bound, gap = info.mip_dual_bound, info.mip_gap
        return MilpResult(values, float(objective), float(bound), float(gap), stop, seconds,
                          int(info.mip_node_count) if not relax else 0)
