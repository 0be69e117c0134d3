"""Expert placement strategies and their registry.

A strategy names a placement function ``(PlacementContext) -> Placement`` and the
sections of :class:`~helios.config.StrategyConfig` that placement depends on (they
enter the placement cache key). Look one up with :func:`get_strategy`; an unknown
name fails with the list of valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from helios.errors import ConfigError
from helios.placement.base import Placement, PlacementContext, check_fits
from helios.placement.baselines import greedy, round_robin
from helios.placement.deploy import from_file
from helios.placement.eplb import eplb
from helios.placement.ilp import helios_hops, helios_static
from helios.placement.vllm import vllm_linear, vllm_round_robin

PlaceFn = Callable[[PlacementContext], Placement]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: how it places experts, and what that depends on."""

    place: PlaceFn
    params: tuple[str, ...] = ()
    """Sections of ``StrategyConfig`` (e.g. ``"ilp"``) the placement reads."""
    cacheable: bool = True
    """False where the placement reads something outside the key (a file's contents)."""


STRATEGIES: dict[str, Strategy] = {
    "round_robin": Strategy(round_robin),
    "greedy": Strategy(greedy),
    "helios_static": Strategy(helios_static, params=("ilp",)),
    "helios_hops": Strategy(helios_hops, params=("ilp",)),
    "eplb": Strategy(eplb, params=("eplb",)),
    # DeepSeek EPLB with 0 and 32 redundant experts (conf/strategy/eplb_r0.yaml, eplb_r32.yaml).
    "eplb_r0": Strategy(eplb, params=("eplb",)),
    "eplb_r32": Strategy(eplb, params=("eplb",)),
    "from_file": Strategy(from_file, params=("file",), cacheable=False),
    "vllm_linear": Strategy(vllm_linear),
    "vllm_round_robin": Strategy(vllm_round_robin),
    # Dynamic strategies: the same initial placement, plus the runtime adaptation engine
    # (helios.sim.adaptation.CONTROLLERS) whose `adaptation` section does not change it.
    "helios_dynamic": Strategy(helios_static, params=("ilp",)),
    "eplb_dynamic": Strategy(eplb, params=("eplb",)),
    "eplb_dynamic_sglang": Strategy(eplb, params=("eplb",)),
    "eplb_incremental": Strategy(eplb, params=("eplb",)),
    # A bound, not a strategy (helios.sim.ep.adapters): starts from helios_static's placement.
    "oracle_static_window": Strategy(helios_static, params=("ilp",)),
}


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError("strategy", name, "one of " + ", ".join(sorted(STRATEGIES))) from None


def place(ctx: PlacementContext) -> Placement:
    """Run the context's strategy and check the result against the memory budget."""
    check_fits(ctx.num_experts, ctx.num_gpus, ctx.slots_per_gpu)
    placement = get_strategy(ctx.strategy.name).place(ctx)
    placement.validate(ctx.num_experts, ctx.slots_per_gpu)
    return placement


__all__ = ["Placement", "PlacementContext", "STRATEGIES", "Strategy", "get_strategy", "place"]
