"""Runtime adaptation engine (first version: static strategies only).

``make_controller(cfg)`` returns the SimPy controller factory of a strategy, or None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def make_controller(cfg: Any) -> Callable[[Any], Any] | None:
    """Controller of ``cfg.strategy``; static strategies have none."""
    return None
