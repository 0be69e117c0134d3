"""Helios load-aware placement (``helios_static``) and its hop-count ablation (``helios_hops``).

Per layer, a MILP over copies and token shares (:mod:`helios.placement.loadaware`:
the step's critical path under ``serving=ep``, the waiting and transfer time per
request under ``serving=request``), solved by HiGHS (:mod:`helios.placement.milp`)
from a warm start built for the same objective:

1. **Copies**: every expert one, then the ``num_redundant`` extra copies one by one to
   the expert with the largest load per copy (EPLB's replication rule, which minimises
   the largest load per copy).
2. **Assignment**: copies by decreasing load per copy, each to the GPU with a free slot
   (not already holding the expert) where the layer's objective after the move is
   least; ties to the least-loaded, then the lowest GPU. Under ``serving=request`` only
   GPUs that keep it and (true latency) every link within ``rho_max`` are candidates
   while any is: the MILP's caps, which its objective's tangents would otherwise
   extrapolate past, so a start that ships (or that the search starts from) is one of
   the MILP's solutions.
3. **Shares**: the LP of the layer with the copies fixed (the optimal shares for them;
   under ``serving=ep`` a compact LP over the replicated experts' shares only,
   :meth:`EpLayer.share_lp`).
4. **Swaps** (``serving=ep``), while the start is not yet proven within ``mip_gap`` by
   the model's own bound: :func:`~helios.placement.ep_search.swap_search` moves load
   off the busiest GPUs by swapping copies, each move costed exactly.
5. **Neighbourhoods** (``serving=request``, whose whole MILP's root LP alone outlasts a
   sweep's time limit at real size):
   :func:`~helios.placement.request_search.neighbourhood_search` has HiGHS re-seat the
   single-copy experts of a few GPUs at a time, on the layer's model restricted to them,
   for the first ``1 - SEARCH_SHARE`` of the time left; the whole MILP then starts
   from what it reached, for HiGHS's bound (the layer's own,
   :meth:`RequestLayer.lower_bound`, is reported but not added as a cut).

Where the start is then within ``mip_gap`` of the bound it ships as proven
(``proven_by="bound"``); otherwise the MILP starts from it. A layer's result is
``optimal`` (proven within ``mip_gap``, by the bound or by HiGHS), ``feasible`` (time
limit; HiGHS's incumbent, of the whole model or of a neighbourhood's, beats the start)
or ``start`` (time limit, the start is what ships); the cell's ``ilp_status`` is the
worst layer's, and ``ilp_gap`` the largest proven gap.

Layers: under ``serving=ep`` a step runs the layers one after another, so they share
nothing and are solved independently. Under ``serving=request`` all layers share the
GPUs and links; the layers are solved in turn, each against the others' current load
(``gpu_bg``, ``link_bg``: block coordinate descent on the joint objective, one pass
after a sequential warm start). A layer's sequential start is the cheapest of its greedy
starts over the copy totals, as :func:`solve_layer` picks among them: the full budget's
start, whose extra copies each pay their weight read, would burden the layers solved
against it with load that layer's own solve does not keep.

The time limit ``time_limit_s`` covers the whole placement (starts, builds, solves):
first every layer gets its greedy start (step 2 with equal shares), the fallback that
ships where time runs out; then each layer's improvement gets the remaining time over
the layers left, its MIP that time less the layer's longest share LP (HiGHS runs past
a MIP time limit by about one root LP: ~1 s on a 72-server request-model layer). The
most any layer has run past its share (HiGHS's set-up before it reads its clock,
0.05-0.1 s on a 256 x 48 EP layer) is held back from the time left, for the last layer
to run past in, and each layer's replica lists are built as it is solved: the placement
overruns its limit by at most how much further the last layer slips than any layer
before it. Only
the greedy starts themselves may run past a limit too small for them. Solves stopped by
the time limit depend on the machine's speed; proven ones do not (one thread, fixed
seed).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from helios.config import EplbConfig
from helios.placement.base import Placement, PlacementContext
from helios.placement.ep_layer import EpLayer
from helios.placement.ep_search import swap_search
from helios.placement.loadaware import (copy_busy_terms, hop_costs, link_coefficients,
                                        replica_counts, undominated_rows)
from helios.placement.request_layer import RequestLayer
from helios.placement.request_search import neighbourhood_search

__all__ = ["LayerSolution", "layer_models", "with_load", "set_background", "warm_start", "greedy_solution", "solve_layer", "solve_placement",
           "helios_static", "helios_hops"]

#: Layer outcomes from best to worst; a cell reports its worst layer's.
STATUS_ORDER = ("optimal", "feasible", "start")


@dataclass
class LayerSolution:
    """One layer's copies ``x`` and shares ``y`` (shape (E, G)) and how they were found."""

    x: np.ndarray
    y: np.ndarray
    objective: float
    start_objective: float
    bound: float
    status: str
    build_s: float = 0.0
    solve_s: float = 0.0
    proven_by: str = ""
    """``"bound"`` (the start met the model's own bound), ``"solver"`` or ``""``."""
    start_s: float = 0.0
    """Seconds until the start was ready (model, bound, starts and their shares; the
    swap search, which stops at the deadline, comes after)."""
    search_moves: int = 0
    """Moves the start's search took: swaps (``serving=ep``) or improving neighbourhoods
    (``serving=request``)."""

    @property
    def gap(self) -> float:
        if not math.isfinite(self.bound) or self.objective <= 0:
            return math.inf if self.objective > 0 else 0.0
        return max(0.0, (self.objective - self.bound) / abs(self.objective))


def _slots(ctx: PlacementContext) -> np.ndarray:
    return np.full(ctx.num_gpus, ctx.slots_per_gpu)


def _copies(ctx: PlacementContext) -> int:
    """Copy budget per layer: experts plus the redundant copies.

    Null ``num_redundant`` gives what strategy ``eplb`` uses by default (16, rounded up
    so that every GPU holds as many copies), or what memory holds if that is less: the
    two then compare on the same memory.
    """
    E, G = ctx.num_experts, ctx.num_gpus
    extra = ctx.strategy.ilp.num_redundant
    eplb_default = EplbConfig().num_redundant
    total = -(-(E + eplb_default) // G) * G if extra is None else E + extra
    return min(total, G * ctx.slots_per_gpu)


def layer_models(ctx: PlacementContext, metric: str) -> list[EpLayer | RequestLayer]:
    """One cost model per simulated layer (request models start with no background)."""
    cfg, spec, cluster = ctx.strategy.ilp, ctx.spec, ctx.cluster
    weights = (cfg.network_weight, cfg.compute_weight)
    share = np.asarray(ctx.source_share, dtype=float)
    hops = hop_costs(cluster, share) if metric == "hops" else np.zeros(ctx.num_gpus)
    load = np.asarray(ctx.expected_load, dtype=float)
    common = dict(slots=_slots(ctx), copies=_copies(ctx), weights=weights, metric=metric)
    out, back = link_coefficients(cluster, share, spec.dispatch_token_bytes, spec.combine_token_bytes)
    if ctx.serving == "ep":
        step = ctx.ep_step
        gemm = (step.flop_s_per_pair, step.byte_s_per_pair, step.weight_s_per_expert, step.launch_s)
        pairs = load / load.sum(axis=1, keepdims=True) * spec.top_k * step.step_tokens
        # only busiest links count in this model: rows another bounds are redundant
        out, back = undominated_rows(out), undominated_rows(back)
        return [EpLayer(load=p, gemm=gemm, out=out, back=back, hops=hops, **common) for p in pairs]
    tokens = int(round(ctx.tokens_per_request))
    coef = out + back
    message = max(1.0, tokens * spec.top_k / min(ctx.num_gpus, ctx.num_experts))
    tau = _transfer_costs(cluster, share, message, spec, ctx.sim_chunk_bytes)
    template = RequestLayer(load=np.ones(ctx.num_experts), tokens=tokens, coef=coef, tau=tau, hops=hops,
                            gpu_bg=np.zeros(ctx.num_gpus), link_bg=np.zeros(coef.shape[0]),
                            rho_max=cfg.rho_max, cuts=cfg.queue_cuts, **common)
    return [with_load(template, p, spec) for p in load]


def with_load(model: RequestLayer, load: np.ndarray, spec: Any) -> RequestLayer:
    """Request model: ``model`` for the pairs per second ``load`` (shape (E,), positive
    sum): the rate and the busy terms follow it, the cluster's terms stay, and the
    background is none."""
    tokens = model.tokens
    rate = float(load.sum()) / (tokens * spec.top_k)
    fixed, busy = copy_busy_terms(load / (rate * tokens), tokens, spec, rate)
    return dataclasses.replace(model, load=load, busy=busy, copy_busy=fixed, rate=rate,
                               gpu_bg=np.zeros(model.num_gpus), link_bg=np.zeros(model.coef.shape[0]),
                               weight_bg=None)


def _transfer_costs(cluster: Any, share: np.ndarray, message: float, spec: Any,
                    chunk: float) -> np.ndarray:
    """Per GPU: a pair's unloaded dispatch + combine seconds (store and forward, as the
    engine), for a representative message of ``message`` tokens, over sources."""
    G = cluster.num_gpus
    out, back = message * spec.dispatch_token_bytes, message * spec.combine_token_bytes
    cost = np.zeros(G)
    for s in np.flatnonzero(share).tolist():
        for g in range(G):
            t = cluster.transfer_time(s, g, out, chunk) + cluster.transfer_time(g, s, back, chunk)
            cost[g] += share[s] * t / message
    return cost


def copy_totals(model: EpLayer | RequestLayer) -> list[int]:
    """Totals of copies the warm start tries: ``E``, each multiple of ``G`` in between
    (a GPU's copy count, hence its weight reads, steps at multiples of ``G``) and the
    budget ``E + num_redundant``: extra copies cost weight reads, so fewer can win."""
    E, G, budget = model.num_experts, model.num_gpus, model.copies
    middle = range((E // G + 1) * G, budget, G)
    return sorted({E, *middle, budget})


def warm_start(model: EpLayer | RequestLayer, copies: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Copies ``x`` (bool) and equal shares ``y`` by the objective-greedy assignment of
    ``copies`` copies (default: the budget)."""
    E, G = model.num_experts, model.num_gpus
    count = replica_counts(model.load, model.copies if copies is None else copies, G,
                           model.replicable())
    order = sorted(((model.load[e] / count[e], e) for e in range(E) for _ in range(count[e])),
                   key=lambda t: (-t[0], t[1]))
    x = np.zeros((E, G), dtype=bool)
    free = model.slots.astype(np.int64).copy()
    state = model.new_state()
    for _, e in order:
        cand = np.flatnonzero((free > 0) & ~x[e])
        if cand.size == 0:
            continue  # an extra copy with nowhere to go
        share = 1.0 / count[e]
        within = model.fits(state, e, share, cand)
        if within.any():  # else the least costly GPU, over a cap (the start then breaks it)
            cand = cand[within]
        obj = model.marginal(state, e, share, cand)
        pick = cand[np.lexsort((cand, state["pairs"][cand], np.round(obj, 9)))[0]]
        x[e, pick] = True
        free[pick] -= 1
        model.add(state, e, share, pick)
    y = x / x.sum(axis=1, keepdims=True)
    return x, y


def greedy_solution(model: EpLayer | RequestLayer, copies: int | None = None) -> LayerSolution:
    """The greedy start of ``copies`` copies (default: the budget) with equal shares,
    unproven: what ships when time runs out."""
    x, y = warm_start(model, copies)
    obj = model.evaluate(x.astype(float), y)
    return LayerSolution(x.astype(float), y, obj, obj, -math.inf, "start")


def solve_layer(model: EpLayer | RequestLayer, time_limit_s: float, mip_gap: float,
                greedy: LayerSolution | None = None) -> LayerSolution:
    """Warm starts, their optimal shares, then the MILP from the best (module doc).

    No solver runs when the best start is already within ``mip_gap`` of the model's
    own lower bound (``proven_by="bound"``). ``greedy``, the layer's
    :func:`greedy_solution` if already computed, saves recomputing the start of the
    full copy budget.
    """
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    if time_limit_s <= 0:
        return greedy if greedy is not None else greedy_solution(model)
    m, v, aux = model.build()
    if isinstance(model, RequestLayer):  # its link LP may use a tenth of the layer's time
        floor = model.lower_bound(BOUND_SHARE * time_limit_s)
    else:
        floor = model.lower_bound()
    build_s = time.perf_counter() - t0
    # the greedy start is the floor: a layer's time may run out before its own total
    best = None if greedy is None else (greedy.objective, greedy.x, greedy.y)
    lp_s = 0.0  # the longest share LP: HiGHS runs past a MIP time limit by about its root LP
    for total in copy_totals(model):
        if best is not None and time.perf_counter() >= deadline:
            break
        if greedy is not None and total == model.copies:
            x0, y0 = greedy.x > 0.5, greedy.y
        else:
            x0, y0 = warm_start(model, total)
        lp_start = time.perf_counter()
        y0 = _start_shares(model, m, v, x0, y0, deadline)
        if isinstance(model, RequestLayer):  # a copy left without tokens is not shipped nor paid
            x0 = x0 & (y0 > 0)
        lp_s = max(lp_s, time.perf_counter() - lp_start)
        obj = model.evaluate(x0.astype(float), y0)
        if best is None or obj < best[0] * (1 - 1e-12):
            best = (obj, x0.astype(float), y0)
    start_obj, x0, y0 = best
    start_s, moves = time.perf_counter() - t0, 0
    proven = floor / (1 - mip_gap) if mip_gap < 1 else math.inf  # an objective the bound proves
    if isinstance(model, EpLayer) and start_obj > proven:
        x0, y0, start_obj, moves = swap_search(model, x0, y0, start_obj, proven, deadline)
    sol = LayerSolution(x0, y0, start_obj, start_obj, min(floor, start_obj), "start", build_s)
    sol.start_s, sol.search_moves = start_s, moves
    if sol.gap <= mip_gap:
        sol.status, sol.proven_by = "optimal", "bound"
        sol.solve_s = time.perf_counter() - t0 - build_s
        return sol
    if isinstance(model, RequestLayer):
        search_end = deadline - SEARCH_SHARE * (deadline - time.perf_counter())
        x0, y0 = _improve_request_start(model, m, v, sol, search_end, deadline)
    cost = m.cost
    used = np.flatnonzero(cost)
    # The EP bound as a cut: HiGHS prunes with it. The request model's is only reported:
    # it does not change what HiGHS returns (placements as at helios-placement-5).
    if math.isfinite(floor) and isinstance(model, EpLayer):
        m.add_rows(np.zeros(used.size), used, cost[used], floor, np.inf)
    result = m.solve(model.complete(m, v, aux, x0, y0), deadline - time.perf_counter() - lp_s,
                     mip_gap)
    sol.solve_s = time.perf_counter() - t0 - build_s
    if result.values is not None:
        rx = np.round(result.values[v.x.ravel()].reshape(x0.shape))
        ry = _normalised(result.values[v.y.ravel()].reshape(y0.shape), rx)
        r_obj = model.evaluate(rx, ry)
        if r_obj < sol.objective * (1 - 1e-9):
            sol.x, sol.y, sol.objective, sol.status = rx, ry, r_obj, "feasible"
    if math.isfinite(result.bound):
        sol.bound = min(max(floor, result.bound), sol.objective)
    if result.stop == "optimal" or sol.gap <= mip_gap:
        sol.status, sol.proven_by = "optimal", "solver"
    return sol


#: Request model: the share of a layer's time its bound's link LP may take (else the links
#: are bounded at their background; 0.03-0.4 s on the seed clusters).
BOUND_SHARE = 0.1

#: Request model: the part of a layer's time left after its start that the whole MILP keeps
#: (for its bound; its root LP alone outlasts a sweep's limit at real size).
SEARCH_SHARE = 0.25


def _improve_request_start(model: RequestLayer, m: Any, v: Any, sol: LayerSolution,
                           search_end: float, deadline: float) -> tuple[np.ndarray, np.ndarray]:
    """The request model's neighbourhood search from the start until ``search_end``, then
    the layer's share LP for the copies it reached (by ``deadline``); ``sol`` takes what
    beats its start (status ``feasible``)."""
    x, y, objective, moves = neighbourhood_search(model, sol.x, sol.y, sol.objective, search_end)
    if moves:
        shares = _start_shares(model, m, v, x > 0.5, y, deadline)
        kept = ((x > 0.5) & (shares > 0)).astype(float)
        cost = model.evaluate(kept, shares)
        if cost < objective:
            x, y, objective = kept, shares, cost
        sol.x, sol.y, sol.objective, sol.search_moves = x, y, objective, moves
        sol.status = "feasible"
    return sol.x, sol.y


def _start_shares(model: EpLayer | RequestLayer, m: Any, v: Any, x0: np.ndarray, y0: np.ndarray,
                  deadline: float) -> np.ndarray:
    """The optimal shares of copies ``x0`` (``y0`` if the LP gives none): the EP layer's
    compact LP, else the layer's whole model with the copies fixed."""
    if isinstance(model, EpLayer):
        shares = model.shares(x0)
        return y0 if shares is None else shares
    shares = m.solve(None, max(deadline - time.perf_counter(), 1e-3), 0.0, relax=True,
                     fix=(v.x.ravel(), x0.ravel().astype(float)))
    return y0 if shares.values is None else _normalised(shares.values[v.y.ravel()].reshape(y0.shape), x0)


def _normalised(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Shares cleaned of solver noise: zero off the copies, each expert's summing to 1."""
    y = np.clip(y, 0.0, None) * (x > 0.5)
    return y / y.sum(axis=1, keepdims=True)


def solve_placement(ctx: PlacementContext, metric: str) -> Placement:
    """Solve every layer (module doc) and return the placement with its shares."""
    cfg = ctx.strategy.ilp
    t0 = time.perf_counter()
    deadline = t0 + cfg.time_limit_s
    models = layer_models(ctx, metric)
    if ctx.serving == "request":
        solutions = _sequential_starts(models)
    else:
        solutions = [greedy_solution(model) for model in models]
    # each layer's lists are built as it is solved, so nothing sizeable runs past the loop
    lists = [_replica_lists(sol) for sol in solutions]
    start_s = 0.0  # the most a layer took to get its start ready so far
    slip = 0.0  # the most a layer ran past its share (HiGHS's set-up): held back for the last
    for l, model in enumerate(models):
        if ctx.serving == "request":
            set_background(models, [sol.y for sol in solutions], l)
        left = max(deadline - time.perf_counter() - slip, 0.0) / (len(models) - l)
        if left <= start_s:  # too little time for a layer's full start: keep its greedy one
            if ctx.serving == "request":  # its objective against the current background
                sol = solutions[l]
                sol.objective = sol.start_objective = model.evaluate(sol.x, sol.y)
            continue
        # the request model's background changed since its sequential start: not reused
        greedy = solutions[l] if ctx.serving == "ep" else None
        began = time.perf_counter()
        solutions[l] = solve_layer(model, left, cfg.mip_gap, greedy)
        lists[l] = _replica_lists(solutions[l])
        slip = max(slip, time.perf_counter() - began - left)
        start_s = max(start_s, solutions[l].start_s)
    replicas, shares = [r for r, _ in lists], [s for _, s in lists]
    info = _info(ctx, solutions, replicas, time.perf_counter() - t0)
    return Placement(replicas, ctx.num_gpus, info, shares=shares)


def _sequential_starts(models: list[Any]) -> list[LayerSolution]:
    """Request model: greedy starts layer by layer, each seeing the earlier layers' load;
    each the cheapest over the layer's copy totals (fewest copies on ties)."""
    gpu_bg, link_bg = np.zeros_like(models[0].gpu_bg), np.zeros_like(models[0].link_bg)
    solutions = []
    for model in models:
        model.gpu_bg, model.link_bg = gpu_bg.copy(), link_bg.copy()
        starts = [greedy_solution(model, total) for total in copy_totals(model)]
        solutions.append(min(starts, key=lambda sol: sol.objective))
        gpu_bg, link_bg = model.utilisation(solutions[-1].y)
    return solutions


def set_background(models: list[Any], shares: list[np.ndarray], layer: int) -> None:
    """Request model: the other layers' GPU and link load under their ``shares`` (each
    shape (E, G)) as ``layer``'s background."""
    model = models[layer]
    model.gpu_bg, model.link_bg = np.zeros(model.num_gpus), np.zeros(model.coef.shape[0])
    for i, (other, y) in enumerate(zip(models, shares)):
        if i != layer:
            gpu, link = other.own_load(y)
            model.gpu_bg += gpu
            model.link_bg += link


def _replica_lists(sol: LayerSolution) -> tuple[list[list[int]], list[list[float]]]:
    """A layer's replicas and shares: largest share first, ties to the lower GPU."""
    # a copy the solution gives no tokens is not worth its memory
    y = np.where((sol.x > 0.5) & (sol.y > 1e-9), sol.y, 0.0)
    order = np.argsort(-y, axis=1, kind="stable")
    kept = np.count_nonzero(y, axis=1).tolist()
    ranked = np.take_along_axis(y, order, axis=1) / y.sum(axis=1, keepdims=True)
    return ([row[:k] for row, k in zip(order.tolist(), kept)],
            [row[:k] for row, k in zip(ranked.tolist(), kept)])


def _info(ctx: PlacementContext, solutions: list[LayerSolution], replicas: list[Any],
          seconds: float) -> dict[str, Any]:
    """The placement's ``info``: the worst layer's status, sums and the largest gap."""
    status = max((s.status for s in solutions), key=STATUS_ORDER.index)
    objective = sum(s.objective for s in solutions)
    bound = sum(s.bound for s in solutions)
    return {
        "strategy": ctx.strategy.name,
        "ilp_status": status,
        "ilp_gap": float(max(s.gap for s in solutions)),
        "ilp_total_gap": float((objective - bound) / objective) if objective > 0 else 0.0,
        "ilp_objective": float(objective),
        "ilp_start_objective": float(sum(s.start_objective for s in solutions)),
        "ilp_bound": float(bound),
        **{f"ilp_layers_{name}": sum(s.status == name for s in solutions) for name in STATUS_ORDER},
        "ilp_layers_proven_by_bound": sum(s.proven_by == "bound" for s in solutions),
        "ilp_layers_proven_by_solver": sum(s.proven_by == "solver" for s in solutions),
        "ilp_copies": int(sum(len(g) for layer in replicas for g in layer)),
        "ilp_search_moves": int(sum(s.search_moves for s in solutions)),
        "ilp_build_s": float(sum(s.build_s for s in solutions)),
        "ilp_solve_s": float(sum(s.solve_s for s in solutions)),
        "ilp_seconds": float(seconds),
        "ilp_objective_unit": "us per step (MoE layers)" if ctx.serving == "ep" else "us per request",
    }


def helios_static(ctx: PlacementContext) -> Placement:
    """Helios load-aware placement: per-layer MILP with bandwidth-aware link costs."""
    return solve_placement(ctx, "latency")


def helios_hops(ctx: PlacementContext) -> Placement:
    """Ablation of :func:`helios_static`: hop counts in place of link serialisation."""
    return solve_placement(ctx, "hops")
