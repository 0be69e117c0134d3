"""``serving=ep``: the representative step a placement is costed for.

A placement is solved before any step runs, so it needs the step it will mostly see.
In steady state at request rate ``lambda`` over ``G`` ranks, every request brings its
prompt and output tokens once, so a step of ``t`` seconds carries ``b = lambda (P + O)
t / G`` tokens per rank, and ``t`` itself grows with ``b`` (the roofline of a balanced
step: dense layers, every simulated layer's attention and grouped GEMM with each rank
holding ``E / G`` experts, and the LM head; communication left out). The fixed point
of ``b -> lambda (P + O) t(b) / G``, capped at ``serving.max_batch_tokens``, is the
representative step; once at least one request arrives per step, ``t`` is that of a
rank prefilling a whole prompt chunk (the slowest rank paces the step, and prompts
arrive whole). A warm start's ``initial_decode_requests`` per rank is a floor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from helios.config import CellConfig, simulated_layers
from helios.placement.base import EpStep
from helios.sim.ep.roofline import step_costs

__all__ = ["mean_rate", "representative_step"]


def mean_rate(scenario: Any, duration_s: float, samples: int = 1000) -> float:
    """A scenario's arrival rate averaged over ``[0, duration_s)``."""
    times = (np.arange(samples) + 0.5) * duration_s / samples
    return float(np.mean([scenario.rate(t) for t in times]))


def representative_step(cfg: CellConfig, num_gpus: int, rate: float) -> EpStep:
    """The steady-state step of ``cfg`` on ``num_gpus`` ranks at ``rate`` requests/s."""
    costs = step_costs(cfg.model, cfg.gpu, cfg.serving)
    serving, model = cfg.serving, cfg.model
    layers = simulated_layers(cfg)
    held = model.num_experts / num_gpus
    per_token = serving.prompt_tokens + serving.output_tokens
    prompt_chunk = min(serving.prompt_tokens, serving.max_batch_tokens)
    tokens, step_s = 1.0, 0.0
    for _ in range(200):
        # A step is as long as its slowest rank; once a request arrives per step, some
        # rank prefills a whole prompt chunk in it.
        pacing = max(tokens, prompt_chunk) if rate * step_s >= 1.0 else tokens
        b = np.array([pacing])
        context = b * (serving.prompt_tokens + serving.output_tokens / 2)
        step = (costs.dense_layers(b, context) + costs.head(b)
                + layers * (costs.attention(b, context)
                            + costs.grouped_gemm(b * model.top_k, np.minimum(held, b * model.top_k))))
        new = float(min(serving.max_batch_tokens, max(1.0, rate * per_token * step[0] / num_gpus)))
        if abs(new - tokens) <= 1e-9 * tokens and abs(step[0] - step_s) <= 1e-9 * step[0]:
            break
        tokens, step_s = new, float(step[0])
    # A warm start (serving.initial_decode_requests) decodes that many requests per rank
    # from the first step on.
    tokens = max(tokens, float(serving.initial_decode_requests))
    return EpStep(step_tokens=tokens * num_gpus,
                  flop_s_per_pair=costs.expert_flops_per_pair / costs.flops_per_s,
                  byte_s_per_pair=costs.expert_act_bytes_per_pair / costs.bytes_per_s,
                  weight_s_per_expert=costs.expert_weight_bytes / costs.bytes_per_s,
                  launch_s=costs.overhead_s)
