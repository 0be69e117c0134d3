"""``python -m helios.bench engine [overrides...]``: the default cell's cost.

Runs one cell (default config plus any Hydra-style overrides) in this process and
prints wall time, SimPy events and events/s, next to a bare SimPy timeout loop and
a bare callback-timeout loop measured in the same process, so the ratio of engine
to SimPy floor is comparable across machines.
"""

from __future__ import annotations

import argparse
import time

import simpy
from simpy.events import Timeout


def bare_process_rate(n: int = 300_000) -> float:
    """Timeouts/s of one SimPy process yielding ``n`` timeouts."""
    env = simpy.Environment()

    def loop(env: simpy.Environment):
        for _ in range(n):
            yield env.timeout(1e-6)

    env.process(loop(env))
    t0 = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t0)


def bare_callback_rate(n: int = 300_000) -> float:
    """Timeouts/s of a chain of ``n`` timeouts driven by callbacks (the engine's style)."""
    env = simpy.Environment()
    left = [n]

    def fire(_event: object) -> None:
        left[0] -= 1
        if left[0]:
            Timeout(env, 1e-6).callbacks.append(fire)

    Timeout(env, 0.0).callbacks.append(fire)
    t0 = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m helios.bench engine")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. strategy=greedy")
    parser.add_argument("--repeat", type=int, default=1, help="cells to run (best time wins)")
    args = parser.parse_args(argv)

    from helios.cell import run_cell
    from helios.config import cell_config
    from helios.errors import ConfigError
    from helios.sweep import compose

    try:
        cfg = cell_config(compose(args.overrides))
    except ConfigError as err:
        print(err.one_line())
        return 2
    best = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = run_cell(cfg, cache=None)
        wall = time.perf_counter() - t0
        row = result.tables["cells"][0]
        if best is None or wall < best[0]:
            best = (wall, row)
    wall, row = best
    proc, cb = bare_process_rate(), bare_callback_rate()
    engine_rate = row["events"] / row["sim_s"]
    print(result.summary)
    print(f"{'figure':<40}{'value':>16}")
    lines = [
        ("cell wall time (s)", f"{wall:.2f}"),
        ("  of which simulation (s)", f"{row['sim_s']:.2f}"),
        ("  of which placement (s)", f"{row['placement_s']:.2f}"),
        ("SimPy events", f"{row['events']:,}"),
        ("engine events/s", f"{engine_rate:,.0f}"),
        ("bare SimPy process timeouts/s", f"{proc:,.0f}"),
        ("bare SimPy callback timeouts/s", f"{cb:,.0f}"),
        ("engine / bare callback rate", f"{engine_rate / cb:.2f}"),
        ("requests measured", f"{row['requests_measured']:,}"),
    ]
    for name, value in lines:
        print(f"{name:<40}{value:>16}")
    return 0
