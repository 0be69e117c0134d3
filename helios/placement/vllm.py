"""vLLM's static expert placements (``--expert-placement-strategy linear|round_robin``).

vLLM's ``determine_expert_map`` (``vllm/model_executor/layers/fused_moe/layer.py``)
gives EP rank ``r`` of ``G`` ranks ``E // G`` experts, one more for the first ``E % G``
ranks; ``linear`` gives it the contiguous block starting at ``r (E // G) + min(r, E % G)``,
``round_robin`` the experts ``r, r + G, r + 2G, ...``. Every layer gets the same map
(vLLM builds it per layer from the same arguments), one copy per expert; EP rank ``r`` is
GPU ``r`` here.

References
----------
vLLM documentation, ``vllm.config.parallel.ExpertPlacementStrategy`` and
``ParallelConfig.expert_placement_strategy`` (docs.vllm.ai, v0.11 and later).
"""

from __future__ import annotations

from helios.errors import ConfigError
from helios.placement.base import Placement, PlacementContext

__all__ = ["expert_ranks", "vllm_linear", "vllm_round_robin"]


def expert_ranks(num_experts: int, num_ranks: int, strategy: str) -> list[int]:
    """EP rank of each expert under vLLM's ``strategy`` (``linear`` or ``round_robin``)."""
    base, extra = divmod(num_experts, num_ranks)
    if strategy == "round_robin":
        return [e % num_ranks for e in range(num_experts)]
    ranks = []
    for r in range(num_ranks):
        ranks += [r] * (base + (1 if r < extra else 0))
    return ranks


def _place(ctx: PlacementContext, strategy: str) -> Placement:
    E, G = ctx.num_experts, ctx.num_gpus
    if -(-E // G) > ctx.slots_per_gpu:
        raise ConfigError("gpu.expert_memory_fraction", ctx.slots_per_gpu,
                          f"at least {-(-E // G)} expert slots per GPU for vLLM's {strategy} placement")
    layer = [[g] for g in expert_ranks(E, G, strategy)]
    return Placement([[list(g) for g in layer] for _ in range(ctx.layers)], G,
                     {"strategy": f"vllm_{strategy}"})


def vllm_linear(ctx: PlacementContext) -> Placement:
    """vLLM's default ``linear`` placement: contiguous blocks of experts per rank."""
    return _place(ctx, "linear")


def vllm_round_robin(ctx: PlacementContext) -> Placement:
    """vLLM's ``round_robin`` placement: expert ``e`` on rank ``e mod G``."""
    return _place(ctx, "round_robin")
