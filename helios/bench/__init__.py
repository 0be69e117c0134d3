"""Benchmarks: ``python -m helios.bench <name> [options]`` prints a table of figures.

Each benchmark is a module of this package with a ``main(argv) -> int`` function,
registered in :data:`BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

BENCHMARKS: dict[str, str] = {
    "deepep": "helios.bench.deepep",
    "engine": "helios.bench.engine",
    "ilp": "helios.bench.ilp",
    "rank": "helios.bench.rank",
    "sweep": "helios.bench.sweep",
}


class BenchParser(argparse.ArgumentParser):
    """A benchmark's option parser: a bad option is one ``helios: config error`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"helios: config error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    """An option value that counts something: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value
