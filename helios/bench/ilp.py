"""``python -m helios.bench ilp``: the Helios placement MILP at DeepSeek-V3 scale.

For 256 experts on 64 and on 128 H100 (16 servers of 4 or 8 GPUs, one 400G NIC per
GPU) on a k=4 fat-tree and a 16-server dragonfly (a=4, p=1, h=1, g=4), all 58 MoE
layers, ``serving=ep`` decoding as in the engine benchmark's large cell, it places
``helios_static`` once and prints: the wall seconds of the whole placement (one core,
one HiGHS thread) against its time limit; how many layers were proven within the gap,
by the model's own bound or by HiGHS, and how many ship an unproven solver incumbent or
the start; the largest per-layer proven gap; the objective (summed MoE-layer critical
path of the representative step, microseconds) and that of the warm starts; and the
peak resident memory of the process.

Target (issue): every layer proven within 1% in at most 60 s, memory under 2 GB.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence

from helios.bench import BenchParser
from helios.cell import prepare
from helios.config import cell_config
from helios.placement import place
from helios.compose import compose

#: A decoding load: every rank starts with 256 running requests (warm start). Zipf(1)
#: popularity, more skewed than the measured default: the harder case for the solver.
#: The arrival rate is :data:`RATE_PER_GPU` per GPU (:func:`decode_overrides`).
DECODE = ("model=deepseek_v3", "serving=ep", "strategy=helios_static", "serving.dispatch=per_expert",
          "scenario.popularity=zipf", "serving.prompt_tokens=128", "serving.output_tokens=512",
          "serving.max_running_requests=256", "serving.initial_decode_requests=256",
          "sim.duration_s=1.0", "sim.warmup_s=0.2", "sim.drain_s=0")


#: Requests/s per GPU: ~900 on 128 GPUs, below the rate at which the steady-state step
#: would outgrow the 256 warm-start requests per rank (at 900/s on 64 GPUs it reaches
#: ``max_batch_tokens``, a prefill-bound step no longer a decoding load).
RATE_PER_GPU = 7.03125


def decode_overrides(name: str, gpus: int) -> tuple[str, ...]:
    """The benchmark's config of ``name`` with ``gpus`` GPUs (before the extra overrides)."""
    return (*DECODE, f"scenario.rate={RATE_PER_GPU * gpus:g}", *topology_overrides(name, gpus))


def topology_overrides(name: str, gpus: int) -> tuple[str, ...]:
    """16 servers of ``gpus / 16`` GPUs with a NIC each."""
    per_server = f"topology.gpus_per_server={gpus // 16}"
    if name == "fat_tree":
        return ("topology=fat_tree", "topology.k=4", per_server)
    return ("topology=dragonfly", "topology.a=4", "topology.p=1", "topology.h=1", "topology.g=4",
            per_server)


def row(name: str, gpus: int, time_limit: float, extra: Sequence[str]) -> dict:
    cfg = cell_config(compose([*decode_overrides(name, gpus),
                               f"strategy.ilp.time_limit_s={time_limit}", *extra]))
    ctx = prepare(cfg)[3]
    t0 = time.perf_counter()
    info = place(ctx).info
    seconds = time.perf_counter() - t0
    return {"topology": name, "gpus": gpus, "layers": ctx.layers, "seconds": seconds,
            "limit_s": time_limit, "by_bound": info["ilp_layers_proven_by_bound"],
            "by_solver": info["ilp_layers_proven_by_solver"], "feasible": info["ilp_layers_feasible"],
            "start": info["ilp_layers_start"], "max_gap": info["ilp_gap"],
            "objective": info["ilp_objective"], "start_obj": info["ilp_start_objective"],
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of the rows."""
    head = tuple(rows[0]) if rows else ()
    cells = [[f"{r[h]:.4g}" if isinstance(r[h], float) else str(r[h]) for h in head] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, cells)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(prog="python -m helios.bench ilp",
                         description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[64, 128], choices=(16, 32, 64, 128))
    parser.add_argument("--topology", choices=("fat_tree", "dragonfly", "both"), default="both")
    parser.add_argument("--time-limit", type=float, default=60.0, help="placement time limit, s")
    parser.add_argument("overrides", nargs="*", help="extra Hydra-style overrides, e.g. sim.layers=8")
    args = parser.parse_args(list(argv or []))
    names = ("fat_tree", "dragonfly") if args.topology == "both" else (args.topology,)
    rows = []
    for name in names:
        for gpus in args.gpus:
            rows.append(row(name, gpus, args.time_limit, args.overrides))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    return 0
