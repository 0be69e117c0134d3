"""Expert placement strategies and their registry.

A strategy is a function ``(PlacementContext) -> Placement``. Look one up with
:func:`get_strategy`; an unknown name fails with the list of valid names.
"""

from __future__ import annotations

from collections.abc import Callable

from helios.errors import ConfigError
from helios.placement.base import Placement, PlacementContext, check_fits
from helios.placement.baselines import greedy, round_robin

StrategyFn = Callable[[PlacementContext], Placement]

STRATEGIES: dict[str, StrategyFn] = {
    "round_robin": round_robin,
    "greedy": greedy,
}


def get_strategy(name: str) -> StrategyFn:
    """The placement function registered as ``name``."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError("strategy", name, "one of " + ", ".join(sorted(STRATEGIES))) from None


def place(ctx: PlacementContext) -> Placement:
    """Run the context's strategy and check the result against the memory budget."""
    check_fits(ctx.num_experts, ctx.num_gpus, ctx.slots_per_gpu)
    placement = get_strategy(ctx.strategy.name)(ctx)
    placement.validate(ctx.num_experts, ctx.slots_per_gpu)
    return placement


__all__ = ["Placement", "PlacementContext", "STRATEGIES", "get_strategy", "place"]
