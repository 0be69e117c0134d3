"""``python -m helios.bench rank``: does the placement MILP's cost rank placements as the
simulator does?

One config, at least 20 placements: random ones (one copy per expert on a random GPU
with a free slot, plus random extra copies), round_robin, greedy, the EPLB and vLLM
baselines, and helios_static with different weights and redundant budgets. Each is
simulated with ``strategy.routing=weighted`` (its shares; equal where it has none), so
that the cost model sees the split the simulator runs. The last line gives the Spearman
rank correlation between the two (target >= 0.8). With ``--seeds N`` every placement is
simulated on the workload seeds ``0..N-1`` and ranked by the mean over them; the last
lines then also give the simulator's own noise ceiling, the Spearman correlation between
the means over the even and over the odd seeds (what one seed's noise leaves of the
order: a P99 of a few hundred requests is a noisy figure).

* ``--serving ep`` (default): DeepSeek-V3, 8 simulated layers, skewed popularity, full
  prefill chunks on the default 16-GPU fat-tree (as ``tests/test_ep.py`` compares
  strategies). Predicted: the MoE time per representative step (the sum over layers of
  :meth:`EpLayer.evaluate`, microseconds); simulated: the mean step time.
* ``--serving request``: the ``grid_request`` sweep's medium cell (DeepSeek-V3, 2
  layers, Zipf(1), 2000 requests/s on the seed study's 64-GPU fat-tree). Predicted: the
  waiting and transfer time per request summed over the layers
  (:meth:`RequestLayer.evaluate`, each layer against the others' load under the same
  placement, microseconds); simulated: the mean and the P99 latency.
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
from helios.placement.ilp import layer_models, set_background
from helios.sim.engine import Simulation
from helios.sim.ep.engine import EpSimulation
from helios.sim.ep.metrics import ep_cell_metrics
from helios.sim.metrics import cell_metrics
from helios.compose import compose

BASE = ("topology=fat_tree", "model=deepseek_v3", "sim.layers=8", "scenario.popularity=zipf", "scenario.zipf_s=1.0",
        "scenario.rate=400", "serving.prompt_tokens=2048", "serving.output_tokens=2",
        "sim.duration_s=0.5", "sim.warmup_s=0.1", "sim.drain_s=0.1", "sim.window_s=0.05")

#: The ``grid_request`` sweep's medium cell: the request model on the seed study's fat-tree.
BASE_REQUEST = ("serving=request", "model=deepseek_v3", "topology=seed_fat_tree",
                "gpu.expert_memory_fraction=0.5", "sim.layers=2", "scenario.popularity=zipf",
                "scenario.rate=2000", "++strategy.ilp.time_limit_s=20", "sim.duration_s=0.2",
                "sim.warmup_s=0.04", "sim.window_s=0.02", "sim.drain_s=1.0")

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


def placement_matrices(models, placement: Placement) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each layer's copies ``x`` and shares ``y``, shape (E, G) each."""
    out = []
    for model, layer_r, layer_s in zip(models, placement.replicas, placement.share_table()):
        x = np.zeros((model.num_experts, model.num_gpus))
        y = np.zeros_like(x)
        for e, (gpus, share) in enumerate(zip(layer_r, layer_s)):
            x[e, gpus], y[e, gpus] = 1.0, share
        out.append((x, y))
    return out


def predicted_us(models, placement: Placement, serving: str = "ep") -> float:
    """The MILP cost of a placement: its layers' objectives with its shares (request
    model: each layer with the other layers' load under it as background, which this
    sets on the models)."""
    layers = placement_matrices(models, placement)
    total = 0.0
    for l, (model, (x, y)) in enumerate(zip(models, layers)):
        if serving == "request":
            set_background(models, [shares for _, shares in layers], l)
        total += model.evaluate(x, y)
    return total


def simulated_ms(base: Sequence[str], overrides: Sequence[str], placement: Placement,
                 seed: int = 0) -> tuple[float, ...]:
    """Simulated figures on workload ``seed``: the mean step (``ep``), or the mean and P99
    latency (``request``)."""
    cfg = cell_config(compose([*base, *overrides, "strategy.routing=weighted", f"seed={seed}"]))
    cluster, spec, workload, _ = prepare(cfg)
    if cfg.serving.name == "ep":
        return (float(ep_cell_metrics(EpSimulation(cluster, cfg, placement, workload).run()).step_ms_mean),)
    sim = Simulation(cluster, spec, placement, workload, cfg.sim, routing="weighted").run()
    metrics = cell_metrics(sim)
    return float(metrics.mean_ms), float(metrics.p99_ms)


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(prog="python -m helios.bench rank", description=__doc__.split("\n")[0])
    parser.add_argument("--random", type=positive_int, default=6,
                        help="random placements (default 6)")
    parser.add_argument("--serving", choices=("ep", "request"), default="ep",
                        help="serving model and its config (default ep)")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="workload seeds each placement is simulated on (default 1)")
    args = parser.parse_args(list(argv or []))
    base = BASE if args.serving == "ep" else BASE_REQUEST
    ctx = prepare(cell_config(compose([*base, "strategy=helios_static"])))[3]
    models = layer_models(ctx, "latency")
    names = ["mean step"] if args.serving == "ep" else ["mean latency", "P99 latency"]
    print(f"{'placement':<60} {'predicted':>15} {', '.join(names)}", flush=True)
    rows = []

    per_seed = []  # per placement: (seeds, figures)

    def add(name: str, placement: Placement, sim_overrides: Sequence[str]) -> None:
        figures = np.array([simulated_ms(base, sim_overrides, placement, seed)
                            for seed in range(args.seeds)])
        per_seed.append(figures)
        rows.append((name, predicted_us(models, placement, args.serving), *figures.mean(axis=0)))
        print(f"{name:<60} {rows[-1][1]:12.1f} us " + " ".join(f"{v:10.2f} ms" for v in rows[-1][2:]),
              flush=True)

    for variant in VARIANTS:
        placement = place(prepare(cell_config(compose([*base, *variant])))[3])
        add(" ".join(v.split("=", 1)[1] if v.startswith("strategy=") else v for v in variant),
            placement, variant)
    rng = np.random.default_rng(2026)
    for i in range(args.random):
        placement = random_placement(ctx.layers, ctx.num_experts, ctx.num_gpus, ctx.slots_per_gpu,
                                     16 * (i % 3), rng)
        add(f"random {i} (+{16 * (i % 3)} copies)", placement, ("strategy=round_robin",))
    predicted = [r[1] for r in rows]
    over = f", mean of {args.seeds} seeds" if args.seeds > 1 else ""
    for k, name in enumerate(names):
        rho = spearmanr(predicted, [r[2 + k] for r in rows]).statistic
        print(f"\n{len(rows)} placements: Spearman rank correlation (predicted cost, simulated "
              f"{name}{over}) = {rho:.3f}")
    if args.seeds > 1:
        for k, name in enumerate(names):
            even = [figures[0::2, k].mean() for figures in per_seed]
            odd = [figures[1::2, k].mean() for figures in per_seed]
            print(f"noise ceiling: Spearman (simulated {name}, even seeds; odd seeds) = "
                  f"{spearmanr(even, odd).statistic:.3f}")
    return 0
