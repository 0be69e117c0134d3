"""Benchmarks: ``python -m helios.bench <name> [options]`` prints a table of figures.

Each benchmark is a module of this package with a ``main(argv) -> int`` function,
registered in :data:`BENCHMARKS`.
"""

from __future__ import annotations

BENCHMARKS: dict[str, str] = {
    "deepep": "helios.bench.deepep",
    "engine": "helios.bench.engine",
    "ilp": "helios.bench.ilp",
    "rank": "helios.bench.rank",
    "sweep": "helios.bench.sweep",
}
