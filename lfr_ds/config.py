"""Typed run configuration: one dataclass per concern, every field documented and validated.

A run is described by :class:`TrainConfig`, loaded from a YAML or JSON file plus ``key=value``
command-line overrides (see :func:`load_config`). Bad values raise :class:`~lfr_ds.errors.UserError`
naming the field, so a typo never becomes a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass

from lfr_ds.errors import UserError

#: GPT-2 family shapes (Radford et al. 2019). Parameter counts with the GPT-2 BPE vocab (50,257) and
#: 1,024 positions, tied embeddings: 124,439,808 / 354,823,168 / 774,030,080 / 1,557,611,200.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=4, hidden_size=256, num_attention_heads=4, seq_length=256),
    "gpt2-124m": dict(num_layers=12, hidden_size=768, num_attention_heads=12, seq_length=1024),
    "gpt2-345m": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, seq_length=1024),
    "gpt2-774m": dict(num_layers=36, hidden_size=1280, num_attention_heads=20, seq_length=1024),
    "gpt2-1.5b": dict(num_layers=48, hidden_size=1600, num_attention_heads=25, seq_length=1024),
}


@dataclass
class ModelConfig:
    """The GPT shape. GPT-2 architecture throughout: learned absolute positions, pre-LayerNorm,
    GELU MLP of width 4h, biases on, input and output embeddings tied."""

    preset: str | None = "tiny"
    """A name from ``PRESETS``; its shape fills every shape field left at ``None``. ``None`` = custom."""
    num_layers: int | None = None
    """Transformer layers."""
    hidden_size: int | None = None
    """Model width h."""
    num_attention_heads: int | None = None
    """Attention heads; must divide ``hidden_size``."""
    seq_length: int | None = None
    """Tokens per training sample (the block is ``seq_length + 1`` tokens: inputs plus shifted labels)."""
    vocab_size: int | None = None
    """Vocabulary size. ``None`` takes it from the dataset's tokenizer, which is what you want."""
    make_vocab_size_divisible_by: int = 128
    """Pad the embedding table to a multiple of this, as Megatron does, for fast GEMMs. 1 = no padding."""
    hidden_dropout: float = 0.0
    """Dropout after attention and MLP. GPT-2 used 0.1; short data-limited runs do better with 0."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    init_method_std: float = 0.02
    """Std of the normal weight init (GPT-2's value)."""
    layernorm_epsilon: float = 1e-5
    """LayerNorm epsilon (GPT-2's value)."""
    attention_backend: str = "auto"
    """``auto`` = Transformer Engine spec when TE imports on a GPU, else ``sdpa``; or ``sdpa`` / ``te``."""
    fused_kernels: str = "auto"
    """megatron-core's fused bias-GELU and bias-dropout-add, plus its fused cross entropy in bf16:
    ``auto`` = on GPU only (on CPU they go through torch.compile and cost 11-26 s of compiling for no
    gain); ``on`` / ``off``. Attention is fused either way (SDPA or Transformer Engine)."""
    sketch_dim: int = 0
    """If > 0, record a ``sketch_dim``-wide random projection of each block's mean final hidden state
    during the training forward pass (an optional LFR clustering feature). 0 = off."""

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise UserError(
                    f"model.preset: unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}"
                )
            for key, value in PRESETS[self.preset].items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        for key in ("num_layers", "hidden_size", "num_attention_heads", "seq_length"):
            value = getattr(self, key)
            if value is None:
                raise UserError(f"model.{key}: required when model.preset is null; set it or pick a preset")
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"model.{key}: must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"model.num_attention_heads: {self.num_attention_heads} does not divide "
                f"model.hidden_size {self.hidden_size}"
            )
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise UserError(f"model.vocab_size: must be positive, got {self.vocab_size}")
        if self.make_vocab_size_divisible_by < 1:
            raise UserError("model.make_vocab_size_divisible_by: must be >= 1")
        for key in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"model.{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.attention_backend not in ("auto", "sdpa", "te"):
            raise UserError(f"model.attention_backend: {self.attention_backend!r}; use auto, sdpa or te")
        if self.fused_kernels not in ("auto", "on", "off"):
            raise UserError(f"model.fused_kernels: {self.fused_kernels!r}; use auto, on or off")
        if self.sketch_dim < 0:
            raise UserError("model.sketch_dim: must be >= 0")

    @property
    def padded_vocab_size(self) -> int:
        if self.vocab_size is None:
            raise ValueError("vocab_size is not set yet (it comes from the dataset's tokenizer)")
        m = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // m) * m
