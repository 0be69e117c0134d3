"""Helios: simulate MoE expert placement and replication on GPU cluster networks.

``helios.run_cell(cfg)`` runs one cell in-process; ``python -m helios.sweep`` runs
cells from Hydra configs; ``python -m helios.report`` analyses a results folder.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def run_cell(cfg: Any) -> Any:
    """Run one cell; see :func:`helios.cell.run_cell`."""
    from helios.cell import run_cell as _run_cell

    return _run_cell(cfg)


__all__ = ["__version__", "run_cell"]
