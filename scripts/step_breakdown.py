"""Where a ``serving=ep`` cell's steps go: decode-only against prefill steps, per strategy.

Usage::

    python scripts/step_breakdown.py +sweep=grid_ep topology=dragonfly scenario.rate=150 \\
        scenario.zipf_s=1.0 --strategies round_robin,helios_static,eplb

Runs one cell per strategy in this process (same config and seed, so the same requests)
and prints, over all its steps: the step count and mean duration, split into steps
with no prefill token and steps with one (a prompt chunk on some rank); the busiest
and the mean rank's grouped-GEMM time in each; the busiest and the mean rank's whole compute
(dense layers, attention and shared experts, GEMMs, LM head), and the busiest one's share
of the step's duration (mean over steps: near 1 when that rank's compute paces the step,
low when communication does); and how many servers other than its
own one token of GPU 0 reaches in a dispatch (``per_node`` sends a token once per
destination server), from 4096 tokens per simulated layer drawn from the layer's
popularity at time 0, each expert's copy drawn by the placement's shares as
``weighted`` routing does (equal shares: as ``round_robin`` routing does on average).
The placement comes from the cache under ``output_dir``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from helios.cell import obtain_placement, prepare
from helios.config import cell_config
from helios.errors import ConfigError
from helios.sim.ep.engine import EpSimulation
from helios.compose import compose
from helios.workload import sample_top_k


def remote_servers_per_token(cluster, placement, popularity: np.ndarray, top_k: int,
                             rng: np.random.Generator, tokens: int = 4096) -> float:
    """Mean number of servers other than GPU 0's that one of its tokens is sent to."""
    server = cluster.gpu_server
    counts = []
    for layer in range(popularity.shape[0]):
        replicas, shares = placement.replicas[layer], placement.share_table()[layer]
        for experts in sample_top_k(popularity[layer], tokens, top_k, rng):
            gpus = [copies[0] if len(copies) == 1 else
                    copies[rng.choice(len(copies), p=np.asarray(split) / np.sum(split))]
                    for copies, split in ((replicas[e], shares[e]) for e in experts)]
            counts.append(len({server[g] for g in gpus} - {server[0]}))
    return float(np.mean(counts))


def breakdown(overrides: list[str], strategy: str) -> dict[str, float]:
    cfg = cell_config(compose([*overrides, f"strategy={strategy}"]))
    if cfg.serving.name != "ep":
        raise ConfigError("serving", cfg.serving.name, "ep (this breakdown is of EP steps)")
    cluster, _spec, workload, ctx = prepare(cfg)
    placement, _ = obtain_placement(ctx, None)
    sim = EpSimulation(cluster, cfg, placement, workload).run()
    duration = np.array([s.end_s - s.start_s for s in sim.steps]) * 1e3
    prefill = np.array([s.prefill_tokens > 0 for s in sim.steps])
    gemm_max = np.array([s.gemm_max_s for s in sim.steps]) * 1e3
    gemm_mean = np.array([s.gemm_mean_s for s in sim.steps]) * 1e3
    compute_max = np.array([s.compute_max_s for s in sim.steps]) * 1e3
    compute_mean = np.array([s.compute_mean_s for s in sim.steps]) * 1e3
    row = {"steps": len(sim.steps), "step_ms": duration.mean(),
           "compute_max_ms": compute_max.mean(), "compute_mean_ms": compute_mean.mean(),
           "compute_max_share": float(np.mean(compute_max / duration))}
    for name, mask in (("decode", ~prefill), ("prefill", prefill)):
        row[f"{name}_steps"] = int(mask.sum())
        for key, values in ((f"{name}_ms", duration), (f"{name}_gemm_max_ms", gemm_max),
                            (f"{name}_gemm_mean_ms", gemm_mean),
                            (f"{name}_compute_max_ms", compute_max)):
            row[key] = float(values[mask].mean()) if mask.any() else float("nan")
    row["remote_servers_per_token"] = remote_servers_per_token(
        cluster, placement, workload.scenario.popularity(0.0), cfg.model.top_k,
        np.random.default_rng(cfg.seed))
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default="round_robin,helios_static,eplb")
    args, overrides = parser.parse_known_args(argv)
    try:
        rows = {s: breakdown(overrides, s) for s in args.strategies.split(",")}
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        return 2
    keys = list(next(iter(rows.values())))
    print(f"{'':<26}" + "".join(f"{s:>16}" for s in rows))
    for key in keys:
        print(f"{key:<26}" + "".join(f"{rows[s][key]:>16.3f}" for s in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
