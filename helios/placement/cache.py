"""Placement cache (first version: no reuse yet — every call solves).

``obtain_placement(ctx, cache)`` returns ``(placement, hit)``.
"""

from __future__ import annotations

from typing import Any

from helios.placement import Placement, PlacementContext, place


def obtain_placement(ctx: PlacementContext, cache: Any = None) -> tuple[Placement, bool]:
    """Solve the placement of ``ctx``; ``cache`` is not used yet."""
    return place(ctx), False
