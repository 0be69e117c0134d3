"""``python -m helios.bench rank``: does the placement MILP's cost rank placements as the
simulator does?

One ``serving=ep`` config (DeepSeek-V3, 8 simulated layers, skewed popularity, full
prefill chunks on the default 16-GPU fat-tree, as ``tests/test_ep.py`` uses to compare
strategies), at least 20 placements: random ones (one copy per expert on a random GPU
with a free slot, plus random extra copies), round_robin, greedy, the EPLB and vLLM
baselines, and helios_static with different weights and redundant budgets. Each is
simulated with ``strategy.routing=weighted`` (its shares; equal where it has none), so
that the cost model sees the split the simulator runs. The table gives the model's
predicted MoE time per representative step (the sum over layers of
:meth:`EpLayer.evaluate`, microseconds) and the simulated mean step time; the last line
the Spearman rank correlation between the two (target >= 0.8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from helios.bench import BenchParser, positive_int
from helios.cell import prepare
from helios.config import cell_config
from helios.placement import place
from helios.placement.base import Placement
from helios.placement.ilp import layer_models
from helios.sim.ep.engine import EpSimulation
from helios.sim.ep.metrics import ep_cell_metrics
from helios.compose import compose

BASE = ("topology=fat_tree", "model=deepseek_v3", "sim.layers=8", "scenario.popularity=zipf", "scenario.zipf_s=1.0",
        "scenario.rate=400", "serving.prompt_tokens=2048", "serving.output_tokens=2",
        "sim.duration_s=0.5", "sim.warmup_s=0.1", "sim.drain_s=0.1", "sim.window_s=0.05")

VARIANTS: tuple[tuple[str, ...], ...] = (
    ("strategy=round_robin",), ("strategy=greedy",), ("strategy=eplb",), ("strategy=eplb_r0",),
    ("strategy=eplb_r32",), ("strategy=vllm_linear",), ("strategy=vllm_round_robin",),
    ("strategy=helios_static",), ("strategy=helios_hops",),
    ("strategy=helios_static", "strategy.ilp.num_redundant=0"),
    ("strategy=helios_static", "strategy.ilp.num_redundant=8"),
    ("strategy=helios_static", "strategy.ilp.num_redundant=32"),
    ("strategy=helios_static", "strategy.ilp.network_weight=0"),
    ("strategy=helios_static", "strategy.ilp.compute_weight=0"),
    ("strategy=helios_static", "strategy.ilp.compute_weight=0.2"),
)


def random_placement(layers: int, experts: int, gpus: int, slots: int, extra: int,
                     rng: np.random.Generator) -> Placement:
    """One copy per expert on a random GPU with a free slot, then ``extra`` random copies."""
    replicas = []
    for _ in range(layers):
        free = np.full(gpus, slots)
        layer: list[list[int]] = []
        for _e in range(experts):
            g = int(rng.choice(np.flatnonzero(free > 0)))
            free[g] -= 1
            layer.append([g])
        for _k in range(extra):
            e = int(rng.integers(experts))
            options = [g for g in np.flatnonzero(free > 0).tolist() if g not in layer[e]]
            if options:
                g = int(rng.choice(options))
                free[g] -= 1
                layer[e].append(g)
        replicas.append(layer)
    return Placement(replicas, gpus, {"strategy": "random"})


def predicted_us(models, placement: Placement) -> float:
    """The MILP cost of a placement: its layers' objectives with its shares."""
    total = 0.0
    for model, layer_r, layer_s in zip(models, placement.replicas, placement.share_table()):
        x = np.zeros((model.num_experts, model.num_gpus))
        y = np.zeros_like(x)
        for e, (gpus, share) in enumerate(zip(layer_r, layer_s)):
            x[e, gpus], y[e, gpus] = 1.0, share
        total += model.evaluate(x, y)
    return total


def simulated_ms(overrides: Sequence[str], placement: Placement) -> float:
    cfg = cell_config(compose([*BASE, *overrides, "strategy.routing=weighted"]))
    cluster, _, workload, _ = prepare(cfg)
    return float(ep_cell_metrics(EpSimulation(cluster, cfg, placement, workload).run()).step_ms_mean)


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(prog="python -m helios.bench rank", description=__doc__.split("\n")[0])
    parser.add_argument("--random", type=positive_int, default=6,
                        help="random placements (default 6)")
    args = parser.parse_args(list(argv or []))
    cfg = cell_config(compose([*BASE, "strategy=helios_static"]))
    ctx = prepare(cfg)[3]
    models = layer_models(ctx, "latency")
    rows = []
    for variant in VARIANTS:
        vctx = prepare(cell_config(compose([*BASE, *variant])))[3]
        placement = place(vctx)
        rows.append((" ".join(v.split("=", 1)[1] if v.startswith("strategy=") else v for v in variant),
                     predicted_us(models, placement), simulated_ms(variant, placement)))
        print(f"{rows[-1][0]:<60} {rows[-1][1]:12.1f} us {rows[-1][2]:10.2f} ms", flush=True)
    rng = np.random.default_rng(2026)
    for i in range(args.random):
        placement = random_placement(ctx.layers, ctx.num_experts, ctx.num_gpus, ctx.slots_per_gpu,
                                     16 * (i % 3), rng)
        rows.append((f"random {i} (+{16 * (i % 3)} copies)", predicted_us(models, placement),
                     simulated_ms(("strategy=round_robin",), placement)))
        print(f"{rows[-1][0]:<60} {rows[-1][1]:12.1f} us {rows[-1][2]:10.2f} ms", flush=True)
    rho = spearmanr([r[1] for r in rows], [r[2] for r in rows]).statistic
    print(f"\n{len(rows)} placements: Spearman rank correlation (predicted cost, simulated mean "
          f"step) = {rho:.3f}")
    return 0
