"""Bytes, FLOPs and compute time of one MoE expert.

Model (stated once, used everywhere):

* An expert is a SwiGLU FFN with three matrices (gate, up: h x i; down: i x h), so it
  holds ``3 * h * i`` parameters and costs ``2 * 3 * h * i`` FLOPs per token
  (one multiply-add = 2 FLOPs).
* Dispatch sends each token's hidden vector (``h`` elements of ``dispatch_bytes``)
  once to every GPU that holds at least one of its chosen experts; combine sends
  one reduced vector (``h`` elements of ``combine_bytes``) back per token and GPU,
  as DeepEP's normal kernels do.
* A batch of ``n`` tokens for one expert takes, by the roofline model (Williams,
  Waterman, Patterson, CACM 2009), ``max(n * flops / (peak * efficiency),
  expert_bytes / hbm_bandwidth) + kernel_overhead``: small batches are bound by
  reading the weights, large ones by arithmetic.
* GPU memory: ``expert_memory_fraction`` of HBM holds routed-expert weights of all
  ``num_moe_layers`` layers; every layer gets the same number of slots per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helios.config import GIB, GpuConfig, ModelConfig


@dataclass(frozen=True)
class ModelSpec:
    """Derived per-expert and per-token figures of a model on a GPU."""

    num_experts: int
    top_k: int
    expert_bytes: float
    """Bytes of one expert's weights (what a replica transfer moves)."""
    dispatch_token_bytes: float
    combine_token_bytes: float
    flops_per_token: float
    """FLOPs of one token through one expert."""
    token_seconds: float
    """Arithmetic time of one token through one expert at the effective FLOP/s."""
    weight_read_seconds: float
    """Time to stream one expert's weights from HBM once."""
    kernel_overhead_s: float
    slots_per_gpu: int
    """Expert slots per GPU per MoE layer."""

    def batch_seconds(self, tokens: np.ndarray | int) -> np.ndarray | float:
        """Roofline compute time of batches of ``tokens`` tokens for one expert.

        Zero-token batches cost nothing (the expert is not run).
        """
        t = np.maximum(np.asarray(tokens) * self.token_seconds, self.weight_read_seconds)
        t = np.where(np.asarray(tokens) > 0, t + self.kernel_overhead_s, 0.0)
        return t if t.ndim else float(t)


def expert_bytes(model: ModelConfig) -> float:
    """Bytes of one routed expert: ``3 * hidden * intermediate * param_bytes``."""
    return 3.0 * model.hidden_size * model.expert_intermediate_size * model.param_bytes


def expert_slots_per_gpu(model: ModelConfig, gpu: GpuConfig) -> int:
    """Expert slots per GPU per MoE layer that the expert memory budget allows."""
    budget = gpu.memory_gib * GIB * gpu.expert_memory_fraction
    return int(budget // (expert_bytes(model) * model.num_moe_layers))


def model_spec(model: ModelConfig, gpu: GpuConfig) -> ModelSpec:
    """Derive the :class:`ModelSpec` of ``model`` running on ``gpu``."""
    flops = 2.0 * 3.0 * model.hidden_size * model.expert_intermediate_size
    nbytes = expert_bytes(model)
    return ModelSpec(
        num_experts=model.num_experts,
        top_k=model.top_k,
        expert_bytes=nbytes,
        dispatch_token_bytes=model.hidden_size * model.dispatch_bytes,
        combine_token_bytes=model.hidden_size * model.combine_bytes,
        flops_per_token=flops,
        token_seconds=flops / (gpu.peak_tflops * 1e12 * gpu.efficiency),
        weight_read_seconds=nbytes / (gpu.hbm_tbyte_s * 1e12),
        kernel_overhead_s=gpu.kernel_overhead_us * 1e-6,
        slots_per_gpu=expert_slots_per_gpu(model, gpu),
    )
