"""Test-only fault injection: a cell's config can ask for the cell to fail.

``+fault.raise_in_cell=true`` on the command line makes the cell raise
:class:`FaultInjected` when a worker (or the one-cell command) starts it, on every
attempt. The fault tests (``tests/test_faults.py``) use it to check that a failing cell
is recorded and reported while the rest of the sweep completes. ``+fault.delay_s=<s>``
makes the cell wait before it starts, so that a test can lose a node while cells run. The ``fault`` section
is not in ``conf/config.yaml`` (hence the ``+``); at its defaults it is part of neither
the cell id nor the ``cfg.*`` columns (see :class:`helios.config.FaultConfig`).
"""

from __future__ import annotations

import time
from typing import Any


class FaultInjected(RuntimeError):
    """The failure a cell with ``fault.raise_in_cell=true`` raises."""


def inject_faults(cfg: Any) -> None:
    """Wait and raise as ``cfg.fault`` asks; nothing at its defaults."""
    if cfg.fault.delay_s:
        time.sleep(cfg.fault.delay_s)
    if cfg.fault.raise_in_cell:
        raise FaultInjected(f"injected fault (fault.raise_in_cell=true) in the "
                            f"{cfg.strategy.name} cell of seed {cfg.seed}")
