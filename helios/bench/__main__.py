"""Entry point of ``python -m helios.bench <name>``."""

from __future__ import annotations

import importlib
import sys

from helios.bench import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--help"], ["-h"]):
        print("usage: python -m helios.bench {" + ",".join(sorted(BENCHMARKS)) + "} [options]\n"
              "  each benchmark takes --help for its own options")
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        name = argv[0] if argv else ""
        print(f"helios: config error: bench={name}: one of {', '.join(sorted(BENCHMARKS))}",
              file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
