"""Roofline times of one serving step's compute on a rank (Williams et al., CACM 2009).

Every compute task takes ``max(flops / (peak * efficiency), bytes / hbm_bandwidth)``
plus ``gpu.kernel_overhead_us``: small batches are bound by reading weights and KV
cache, large ones by arithmetic. Counts per token and layer:

* **Attention.** GQA (Mixtral, Qwen3): weights ``h*H*d + 2*h*K*d + H*d*h``; KV per
  token ``2*K*d`` elements; ``4*H*d`` FLOPs per token and context position
  (scores and values). MLA (DeepSeek-V3, arXiv:2412.19437): weights
  ``h*q_lora + q_lora*H*(nope+rope) + h*(kv_lora+rope) + kv_lora*H*(nope+v) + H*v*h``
  (with ``q_lora_rank = 0``: ``h*H*(nope+rope)`` for the query); KV per token
  ``kv_lora + rope`` elements (the compressed latent); with the absorbed decode
  kernel ``2*H*(kv_lora+rope) + 2*H*kv_lora`` FLOPs per token and context position.
  Linear layers cost 2 FLOPs per weight and token. KV bytes read are the context of
  every token in the batch times the KV bytes per token (``serving.kv_cache_bytes``
  per element).
* **Shared experts** run on the token's own rank inside the attention task:
  ``3*h*i`` weights each.
* **Dense layers** (DeepSeek-V3's first three) are attention plus a dense SwiGLU FFN
  (``3*h*dense_intermediate``) per layer, one task per rank and step.
* **LM head**: ``h*vocab`` BF16 weights read once per step, 2 FLOPs per weight for
  each token that samples (decode tokens and the last chunk of a prefill).
* **Grouped expert GEMM**: one task per rank and MoE layer over all received
  token-expert pairs: ``6*h*i`` FLOPs per pair; each *active* local expert's weights
  (``3*h*i*param_bytes``) are read once, plus the activations in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helios.config import EpServingConfig, GpuConfig, ModelConfig


@dataclass(frozen=True)
class StepCosts:
    """Per-token and per-weight figures of a model on a GPU, for roofline times."""

    flops_per_s: float
    bytes_per_s: float
    overhead_s: float
    attn_weight_bytes: float
    attn_flops_per_token: float
    attn_flops_per_context: float
    kv_bytes_per_token_layer: float
    shared_weight_bytes: float
    shared_flops_per_token: float
    dense_ffn_weight_bytes: float
    dense_ffn_flops_per_token: float
    num_dense_layers: int
    head_weight_bytes: float
    head_flops_per_token: float
    expert_weight_bytes: float
    expert_flops_per_pair: float
    expert_act_bytes_per_pair: float
    kv_bytes_per_token: float
    """KV-cache bytes of one token over all layers (what admission reserves)."""

    def _time(self, flops: np.ndarray | float, nbytes: np.ndarray | float) -> np.ndarray:
        return np.maximum(np.asarray(flops) / self.flops_per_s,
                          np.asarray(nbytes) / self.bytes_per_s) + self.overhead_s

    def attention(self, tokens: np.ndarray, context: np.ndarray) -> np.ndarray:
        """One MoE layer's attention + shared experts per rank.

        ``tokens``: tokens in each rank's batch; ``context``: the sum over those tokens
        of the positions they attend to. Shape (ranks,) each.
        """
        flops = (tokens * (self.attn_flops_per_token + self.shared_flops_per_token)
                 + context * self.attn_flops_per_context)
        nbytes = (self.attn_weight_bytes + self.shared_weight_bytes
                  + context * self.kv_bytes_per_token_layer)
        return self._time(flops, nbytes)

    def dense_layers(self, tokens: np.ndarray, context: np.ndarray) -> np.ndarray:
        """All dense (non-MoE) layers of the model per rank; zero if it has none."""
        if self.num_dense_layers == 0:
            return np.zeros(np.shape(tokens))
        flops = (tokens * (self.attn_flops_per_token + self.dense_ffn_flops_per_token)
                 + context * self.attn_flops_per_context)
        nbytes = (self.attn_weight_bytes + self.dense_ffn_weight_bytes
                  + context * self.kv_bytes_per_token_layer)
        return self.num_dense_layers * self._time(flops, nbytes)

    def head(self, sampling_tokens: np.ndarray) -> np.ndarray:
        """LM head per rank for ``sampling_tokens`` tokens that produce an output token."""
        return self._time(sampling_tokens * self.head_flops_per_token, self.head_weight_bytes)

    def grouped_gemm(self, pairs: np.ndarray, active_experts: np.ndarray) -> np.ndarray:
        """One grouped GEMM per rank: ``pairs`` token-expert pairs over ``active_experts``.

        A rank with no pair still launches its (empty) kernel, as every EP rank does.
        """
        flops = pairs * self.expert_flops_per_pair
        nbytes = active_experts * self.expert_weight_bytes + pairs * self.expert_act_bytes_per_pair
        return self._time(flops, nbytes)


def attention_shapes(model: ModelConfig) -> tuple[float, float, float]:
    """Attention weights, FLOPs per context position, KV elements per token (one layer)."""
    h, heads = model.hidden_size, model.num_attention_heads
    if model.attention == "gqa":
        d, kv = model.head_dim, model.num_kv_heads
        weights = h * heads * d + 2 * h * kv * d + heads * d * h
        return float(weights), 4.0 * heads * d, 2.0 * kv * d
    nope, rope, v = model.qk_nope_head_dim, model.qk_rope_head_dim, model.v_head_dim
    lora, q_lora = model.kv_lora_rank, model.q_lora_rank
    query = h * q_lora + q_lora * heads * (nope + rope) if q_lora else h * heads * (nope + rope)
    weights = query + h * (lora + rope) + lora * heads * (nope + v) + heads * v * h
    per_context = 2.0 * heads * (lora + rope) + 2.0 * heads * lora
    return float(weights), per_context, float(lora + rope)


def step_costs(model: ModelConfig, gpu: GpuConfig, serving: EpServingConfig) -> StepCosts:
    """The :class:`StepCosts` of ``model`` on ``gpu`` with ``serving``'s KV-cache dtype."""
    h, i = model.hidden_size, model.expert_intermediate_size
    attn_weights, per_context, kv_elements = attention_shapes(model)
    shared = model.num_shared_experts * 3.0 * h * i
    dense_ffn = 3.0 * h * model.dense_intermediate_size
    kv_layer = kv_elements * serving.kv_cache_bytes
    all_layers = model.num_moe_layers + model.num_dense_layers
    return StepCosts(
        flops_per_s=gpu.peak_tflops * 1e12 * gpu.efficiency,
        bytes_per_s=gpu.hbm_tbyte_s * 1e12,
        overhead_s=gpu.kernel_overhead_us * 1e-6,
        attn_weight_bytes=attn_weights * model.dense_param_bytes,
        attn_flops_per_token=2.0 * attn_weights,
        attn_flops_per_context=per_context,
        kv_bytes_per_token_layer=kv_layer,
        shared_weight_bytes=shared * model.dense_param_bytes,
        shared_flops_per_token=2.0 * shared,
        dense_ffn_weight_bytes=dense_ffn * model.dense_param_bytes,
        dense_ffn_flops_per_token=2.0 * dense_ffn,
        num_dense_layers=model.num_dense_layers,
        head_weight_bytes=2.0 * h * model.vocab_size,
        head_flops_per_token=2.0 * h * model.vocab_size,
        expert_weight_bytes=3.0 * h * i * model.param_bytes,
        expert_flops_per_pair=6.0 * h * i,
        expert_act_bytes_per_pair=h * (model.dispatch_bytes + model.combine_bytes),
        kv_bytes_per_token=kv_layer * all_layers,
    )
