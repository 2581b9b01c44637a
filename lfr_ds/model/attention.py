"""Causal self-attention through ``torch.nn.functional.scaled_dot_product_attention``.

A drop-in for megatron-core's ``DotProductAttention`` as the ``core_attention`` submodule of the
local layer spec. It computes the same function (same scale, same causal mask) in one fused call,
which picks flash/memory-efficient kernels where the hardware has them, and it needs no CUDA-only
scratch buffer, so it also runs on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPAttention(MegatronModule):
    """Core attention for GPT training: causal, no padding mask, tensor-parallel size 1.

    Takes query, key and value as ``[s, b, heads, head_dim]`` and returns ``[s, b, heads * head_dim]``,
    the layout megatron's ``SelfAttention`` passes to and expects from ``DotProductAttention``.
    Attention dropout draws from the default generator; DotProductAttention forks to megatron's
    model-parallel RNG stream, which only matters when heads are split across tensor-parallel ranks.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        **parallel: object,
    ) -> None:
        # ``parallel``: the context-parallel communication type and process groups megatron passes every
        # core attention (cp_comm_type, pg_collection); this one is checked to run at TP = CP = 1, where
        # neither is used.
        super().__init__(config=config)
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"SDPAttention is causal-only, got attn_mask_type={attn_mask_type}")
        if config.num_query_groups != config.num_attention_heads:
            raise ValueError("SDPAttention does not implement grouped-query attention")
        if config.tensor_model_parallel_size != 1 or config.context_parallel_size != 1:
            raise ValueError("SDPAttention supports tensor- and context-parallel size 1 only")
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        # DotProductAttention's default scale (our configs leave query-key layer scaling off).
        self.softmax_scale = 1.0 / math.sqrt(config.kv_channels) if softmax_scale is None else softmax_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        # The causal structure is the whole mask: GPT training feeds full blocks with no padding, so
        # an explicit mask would only ever repeat it (and would stop SDPA using its fused kernels).
        if attention_mask is not None or attention_bias is not None or packed_seq_params is not None:
            raise ValueError("SDPAttention takes no attention mask, bias or packed sequences")
        s, b, heads, head_dim = query.shape
        # [s, b, n, d] -> [b, n, s, d], the layout SDPA expects.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=True,
            scale=self.softmax_scale,
        )
        # [b, n, s, d] -> [s, b, n * d]
        return context.permute(2, 0, 1, 3).reshape(s, b, heads * head_dim)
