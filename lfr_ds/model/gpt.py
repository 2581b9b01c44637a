"""GPT-2 as a megatron-core ``GPTModel``: building it, per-block losses, parameter and FLOP counts.

GPT-2's architecture (Radford et al. 2019) in megatron-core terms: learned absolute positions,
pre-LayerNorm, tanh-approximated GELU MLP of width 4h, biases on, a final LayerNorm, and input
embedding tied to the output projection. Tensor and pipeline parallel size are 1: DeepSpeed does the
data parallelism. Call :func:`lfr_ds.model.compat.setup_megatron` before :func:`build_model`.

The model keeps megatron's calling convention: ``model(tokens, position_ids, None, labels=labels)``
returns the per-token loss ``[b, s]``; without labels it returns logits ``[b, s, vocab]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    HAVE_TE,
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from lfr_ds.config import ModelConfig
from lfr_ds.errors import UserError
from lfr_ds.model.attention import SDPAttention
from lfr_ds.model.compat import init_parallel_state

#: Seed of the sketch projection. Fixed, not the run seed: sketches are only comparable across
#: ranks, restarts and runs if they all project with the same matrix.
SKETCH_SEED = 20240601


def build_model(cfg: ModelConfig, *, bf16: bool | None = None, zero3: dict | None = None) -> GPTModel:
    """Build the GPT for training, on the GPU if there is one, else on CPU.

    ``bf16`` stores parameters in bfloat16 (``None`` = on GPU only); read it back from
    ``model.config.bf16`` to configure DeepSpeed to match. The vocabulary is ``cfg.padded_vocab_size``.
    With ``cfg.sketch_dim > 0`` the model carries a :class:`BlockSketch` as ``model.block_sketch``.

    ``zero3``: a ZeRO-3 ds_config. The model is then built inside DeepSpeed's ``zero.Init``: each module's
    parameters are partitioned across the data-parallel ranks as soon as that module is built, so no rank
    ever holds the whole model (only the largest module, for a moment). Every rank draws the same
    initial values from the same seed before keeping its share, so the gathered weights equal those of
    a build without ``zero3``, bit for bit. A collective: call it on every rank.
    """
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("call lfr_ds.model.compat.setup_megatron(seed) before build_model")
    cuda = torch.cuda.is_available()
    bf16 = cuda if bf16 is None else bf16
    fused = cfg.fused_kernels == "on" or (cfg.fused_kernels == "auto" and cuda)
    with contextlib.nullcontext() if zero3 is None else _zero_init(zero3, bf16):
        model = _gpt_model(
            cfg,
            cfg.padded_vocab_size,
            layer_spec=_layer_spec(cfg),
            fused=fused,
            bf16=bf16,
            # On GPU, megatron's own path: linear layers initialise in place on the device with the
            # CUDA RNG tracker. On CPU that path needs CUDA, so everything initialises on the host.
            use_cpu_initialization=not cuda,
            initialize=True,
        )
    if zero3 is None:
        # Some modules (LayerNorms, position embeddings) are plain torch ones that megatron leaves on the
        # host in fp32 (its training loop moves and casts the whole model, as here). zero.Init has put
        # each partition on the device in the training dtype already.
        model.to(
            device=torch.device("cuda", torch.cuda.current_device()) if cuda else "cpu",
            dtype=torch.bfloat16 if bf16 else torch.float32,
        )
    if cfg.sketch_dim > 0:
        model.block_sketch = BlockSketch(model.decoder.final_layernorm, cfg.hidden_size, cfg.sketch_dim)
    return model


def _zero_init(ds_config: dict, bf16: bool) -> contextlib.AbstractContextManager:
    """DeepSpeed's ``zero.Init`` for ``ds_config``, storing each partition in the training dtype."""
    from lfr_ds.launch import import_deepspeed

    deepspeed = import_deepspeed()
    return deepspeed.zero.Init(
        config_dict_or_path=ds_config,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        # DeepSpeed's own F.linear would replace megatron's for the whole process; megatron's layers
        # call their own autograd functions, so it buys nothing here.
        mem_efficient_linear=False,
    )


def _gathered(init: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
    """``init`` that also works on a parameter zero.Init has already partitioned.

    A module may initialise a child's parameter after the child is built: megatron's embedding builds
    ``torch.nn.Embedding`` for the positions (which draws its own default init), then draws GPT-2's
    init into its weight. Under zero.Init the child is partitioned by then, so the init would write to
    an empty tensor, keep torch's default, and shift every later draw. Gathered, the init sees the whole
    tensor and draws as an unpartitioned build does; every rank draws the same values (same seed), and
    rank 0's are kept (``modifier_rank``) so the ranks cannot drift apart.
    """

    def init_param(tensor: torch.Tensor) -> None:
        if not hasattr(tensor, "ds_id"):  # a plain tensor, or a parameter of the module being built
            return init(tensor)
        from lfr_ds.launch import import_deepspeed

        with import_deepspeed().zero.GatheredParameters(tensor, modifier_rank=0):
            return init(tensor)

    return init_param


class BlockLoss(NamedTuple):
    """The loss of one micro-batch of blocks, per block and overall."""

    loss: torch.Tensor
    """Scalar: mean per-token loss over all counted tokens of the micro-batch. Call backward on this."""
    per_block: torch.Tensor
    """``[b]`` float32, detached: each block's mean per-token loss over its counted tokens."""
    tokens: torch.Tensor
    """``[b]`` float32: how many tokens of each block were counted (``loss_mask`` sum)."""
    sketch: torch.Tensor | None
    """``[b, sketch_dim]`` float32 from this forward pass, or ``None`` when the sketch is off."""


def per_block_loss(
    model: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor
) -> BlockLoss:
    """One forward pass over ``[b, s]`` blocks; reduce the per-token loss per block and overall.

    ``model`` is the GPTModel or a DeepSpeed engine wrapping it. Tokens where ``loss_mask`` is 0
    count towards nothing; a block with none counted has loss 0.
    """
    b, s = tokens.shape
    position_ids = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    token_loss = model(tokens, position_ids, None, labels=labels).float()  # [b, s]
    mask = loss_mask.to(token_loss.dtype)
    summed = (token_loss * mask).sum(dim=1)
    counted = mask.sum(dim=1)
    sketch = getattr(model, "block_sketch", None)
    return BlockLoss(
        loss=summed.sum() / counted.sum().clamp(min=1),
        per_block=(summed / counted.clamp(min=1)).detach(),
        tokens=counted,
        sketch=sketch.last if sketch is not None else None,
    )


class BlockSketch:
    """A fixed random projection of each block's mean final hidden state, taken during the forward.

    A forward hook on the final LayerNorm reads its output ``[s, b, h]``, averages over positions and
    projects with a seeded Gaussian matrix ``[h, dim]`` (scaled by ``1/sqrt(dim)`` so distances are
    preserved in expectation, Johnson-Lindenstrauss style). No extra pass, no gradient, and the
    model's output is untouched. ``last`` holds the ``[b, dim]`` float32 result of the latest forward.
    """

    def __init__(self, final_norm: torch.nn.Module, hidden_size: int, dim: int) -> None:
        # A private generator: building the sketch must not shift the model's weight init.
        generator = torch.Generator().manual_seed(SKETCH_SEED)
        self.projection = torch.randn(hidden_size, dim, generator=generator) / math.sqrt(dim)
        self.last: torch.Tensor | None = None
        final_norm.register_forward_hook(self._capture)

    def _capture(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        with torch.no_grad():
            mean = output.float().mean(dim=0)  # [s, b, h] -> [b, h]
            self.projection = self.projection.to(mean.device)
            self.last = mean @ self.projection


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(the model's parameters, this rank's share)``, each tied tensor once. Under ZeRO-3 a parameter's
    local tensor is an empty placeholder: its size is ``ds_numel`` and this rank's partition ``ds_tensor``
    (padded to divide evenly); otherwise the rank holds every parameter whole."""
    full = mine = 0
    for p in model.parameters():
        full += getattr(p, "ds_numel", p.numel())
        mine += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
    return full, mine


def count_parameters(cfg: ModelConfig, vocab_size: int) -> int:
    """Parameters of the model ``cfg`` describes with a ``vocab_size`` vocabulary (padded as ``cfg``
    says), each tied tensor once. Builds on the meta device: no memory, no init, milliseconds.

    Sets up megatron's parallel state (single-process if nothing else is there) if it is not yet.
    """
    if not parallel_state.model_parallel_is_initialized():
        init_parallel_state()
    cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    with torch.device("meta"):
        model = _gpt_model(
            cfg,
            cfg.padded_vocab_size,
            layer_spec=_local_spec(),  # the TE spec has the same parameters, but needs CUDA to build
            fused=False,
            bf16=False,
            use_cpu_initialization=True,  # megatron's GPU path would allocate on CUDA, not meta
            initialize=False,
        )
    # parameters() yields each tensor once, so the tied embedding / output weight counts once.
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs (forward + backward) per token, for MFU, as Megatron-LM and PaLM count them."""
    L, h, s, V = cfg.num_layers, cfg.hidden_size, cfg.seq_length, cfg.padded_vocab_size
    # N = the weights that take part in a matmul: per layer QKV 3h² + attention output h² + MLP 8h²
    # = 12h², plus the logit projection V·h (the padded vocabulary: that is the GEMM that runs). The
    # input embedding is tied to it and its lookup is no matmul; position embeddings, biases and
    # LayerNorms are not matmuls either (together <1% of the work) and are left out.
    n = 12 * L * h * h + V * h
    # A weight costs 2 FLOPs per token forward (multiply, add) and 4 backward (input and weight
    # gradients): 6N. Attention adds QKᵀ and PV, each 2·s·h per token per layer forward, so
    # 4·L·s·h forward and 12·L·s·h with backward, over the full s×s scores (not halved for the
    # causal mask, by convention). Activation recomputation is not counted (MFU, not HFU).
    return float(6 * n + 12 * L * s * h)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, the tanh approximation (the same function megatron's fused bias-GELU computes)."""
    return F.gelu(x, approximate="tanh")


def _gpt_model(
    cfg: ModelConfig,
    vocab_size: int,
    *,
    layer_spec: ModuleSpec,
    fused: bool,
    bf16: bool,
    use_cpu_initialization: bool,
    initialize: bool,
) -> GPTModel:
    return GPTModel(
        config=transformer_config(
            cfg, fused=fused, bf16=bf16, use_cpu_initialization=use_cpu_initialization, initialize=initialize
        ),
        transformer_layer_spec=layer_spec,
        vocab_size=vocab_size,
        max_sequence_length=cfg.seq_length,
        share_embeddings_and_output_weights=True,
        position_embedding_type="learned_absolute",
    )


def transformer_config(
    cfg: ModelConfig, *, fused: bool, bf16: bool, use_cpu_initialization: bool, initialize: bool
) -> TransformerConfig:
    """megatron-core's config for GPT-2 of ``cfg``'s shape (megatron validates it on construction)."""
    config = TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        ffn_hidden_size=4 * cfg.hidden_size,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        layernorm_epsilon=cfg.layernorm_epsilon,
        add_bias_linear=True,
        # megatron enables its fused bias-GELU only for activation_func == F.gelu, and that kernel
        # is tanh-approximated; unfused, F.gelu would be the exact erf GELU. gelu_tanh keeps both
        # paths the same function, GPT-2's.
        activation_func=F.gelu if fused else gelu_tanh,
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        # megatron's native fused cross entropy casts its gradient to bfloat16 unconditionally, so it
        # is only right for bf16 models. (Masked-softmax fusion is left off: only megatron's
        # DotProductAttention reads it, and neither SDPA nor TE attention is that.)
        cross_entropy_loss_fusion=fused and bf16,
        cross_entropy_fusion_impl="native",
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=use_cpu_initialization,
        perform_initialization=initialize,
    )
    # Partitioned builds (zero.Init) need inits that gather a parameter already partitioned; elsewhere
    # the wrapper calls straight through.
    config.init_method = _gathered(config.init_method)
    config.output_layer_init_method = _gathered(config.output_layer_init_method)
    config.embedding_init_method = _gathered(config.embedding_init_method)
    return config


def _layer_spec(cfg: ModelConfig) -> ModuleSpec:
    """megatron's TE spec when ``cfg.attention_backend`` asks for it and it can run, else our local spec."""
    te_usable = HAVE_TE and torch.cuda.is_available()
    if cfg.attention_backend == "te" and not te_usable:
        missing = "transformer_engine does not import" if not HAVE_TE else "there is no CUDA GPU"
        raise UserError(
            f"model.attention_backend: 'te' needs Transformer Engine on a GPU, but {missing}; use auto or sdpa"
        )
    if cfg.attention_backend != "sdpa" and te_usable:
        return get_gpt_layer_with_transformer_engine_spec()
    return _local_spec()


def _local_spec() -> ModuleSpec:
    """megatron-core's local (pure-torch) GPT layer spec with SDPA as the core attention."""
    spec = get_gpt_layer_local_spec()  # a fresh spec per call, so editing it in place is safe
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec
