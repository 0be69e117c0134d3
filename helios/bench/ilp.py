"""``python -m helios.bench ilp``: build and solve times of the Helios placement ILP.

For experts x GPUs from 64 x 16 to 256 x 128 (one MoE layer, Zipf(1) expert popularity
over a seeded permutation, DeepSeek-V3 shapes, 512 tokens per request, uniform home GPUs)
on a k=4 Fat-Tree (16 servers) or a 16-server Dragonfly (a=4, p=1, h=1, g=4) with
``GPUs / 16`` GPUs per server, the table gives, per solver (CBC; HiGHS if highspy is
installed): the seconds to build the coefficients, the greedy start and the PuLP model;
the solver's seconds; its status and relative gap (to its own bound); the objective of
the solver's answer and of the start it was given (greedy + single-move local search). The solver always runs here (no shortcut by the bound). The
last rows time DeepSeek EPLB on the same loads (one redundant replica per GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Sequence

import numpy as np

from helios import topology
from helios.config import GpuConfig, IlpConfig, ModelConfig, StrategyConfig
from helios.moe import model_spec
from helios.placement.base import PlacementContext
from helios.placement.eplb import balancedness, rebalance_experts
from helios.placement.ilp import solve_ilp
from helios.placement.ilp_costs import build_costs, local_search, warm_start
from helios.workload import zipf_popularity

SIZES = ((64, 16), (128, 32), (256, 64), (256, 128))
QUICK_SIZES = ((64, 16), (128, 32))
TOKENS = 512
RATE = 1000.0


def cluster_for(name: str, gpus: int):
    """A 16-server cluster of ``gpus`` GPUs (``gpus / 16`` per server)."""
    per_server = max(1, gpus // 16)
    if name == "fat_tree":
        return topology.fat_tree(4, gpus_per_server=per_server)
    return topology.dragonfly(4, 1, 1, 4, gpus_per_server=per_server)


def context(name: str, experts: int, gpus: int, solver: str, time_limit: float,
            gap: float) -> PlacementContext:
    """One layer of Zipf load on the cluster ``name``."""
    spec = model_spec(ModelConfig(num_experts=experts), GpuConfig())
    perm = np.random.default_rng(experts * 1000 + gpus).permutation(experts)
    load = zipf_popularity(experts, 1.0, perm)[None, :] * RATE * TOKENS * spec.top_k
    cluster = cluster_for(name, gpus)
    return PlacementContext(
        cluster=cluster, spec=spec, expected_load=load,
        source_share=np.full(cluster.num_gpus, 1.0 / cluster.num_gpus),
        slots_per_gpu=spec.slots_per_gpu, tokens_per_request=TOKENS,
        strategy=StrategyConfig(name="helios_static",
                                ilp=IlpConfig(solver=solver, time_limit_s=time_limit, mip_gap=gap)))


def ilp_row(name: str, experts: int, gpus: int, solver: str, time_limit: float, gap: float) -> dict:
    ctx = context(name, experts, gpus, solver, time_limit, gap)
    t0 = time.perf_counter()
    costs = build_costs(ctx)
    start = local_search(costs, warm_start(costs, ctx.slots_per_gpu), ctx.slots_per_gpu)
    prep_s = time.perf_counter() - t0
    sol = solve_ilp(costs, ctx.slots_per_gpu, ctx.strategy.ilp, start)
    return {"topology": name, "experts": experts, "gpus": gpus, "method": solver,
            "build_s": prep_s + sol.build_s, "solve_s": sol.solve_s, "status": sol.status,
            "gap": sol.gap, "objective": sol.objective, "start": costs.objective(start),
            "vars": sol.info.get("ilp_variables", 0)}


def eplb_row(name: str, experts: int, gpus: int) -> dict:
    ctx = context(name, experts, gpus, "cbc", 1.0, 0.0)
    t0 = time.perf_counter()
    phy2log, _, logcnt = rebalance_experts(ctx.expected_load, experts + gpus, 1,
                                           ctx.cluster.num_servers, gpus)
    elapsed = time.perf_counter() - t0
    bal = balancedness(ctx.expected_load[0], phy2log[0], logcnt[0], gpus)
    return {"topology": name, "experts": experts, "gpus": gpus, "method": "eplb",
            "build_s": 0.0, "solve_s": elapsed, "status": f"balance={bal:.3f}",
            "gap": float("nan"), "objective": float("nan"), "start": float("nan"), "vars": 0}


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of the rows."""
    head = ("topology", "experts", "gpus", "method", "build_s", "solve_s", "status", "gap",
            "objective", "start", "vars")
    cells = [[f"{r[h]:.3f}" if isinstance(r[h], float) else str(r[h]) for h in head] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, cells)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helios.bench ilp", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 64x16 and 128x32")
    parser.add_argument("--topology", choices=("fat_tree", "dragonfly", "both"), default="fat_tree")
    parser.add_argument("--time-limit", type=float, default=10.0, help="solver time limit, s")
    parser.add_argument("--gap", type=float, default=0.02, help="relative MIP gap")
    args = parser.parse_args(list(argv or []))
    solvers = ["cbc"] + (["highs"] if importlib.util.find_spec("highspy") else [])
    names = ("fat_tree", "dragonfly") if args.topology == "both" else (args.topology,)
    sizes = QUICK_SIZES if args.quick else SIZES
    rows = []
    for name in names:
        for experts, gpus in sizes:
            for solver in solvers:
                rows.append(ilp_row(name, experts, gpus, solver, args.time_limit, args.gap))
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        rows += [eplb_row(name, e, g) for e, g in sizes]
    print()
    print(format_table(rows))
    return 0
