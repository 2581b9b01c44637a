"""The floor for every throughput ratio: a plain PyTorch GPT-2 training loop, no DeepSpeed, no megatron-core.

nanoGPT's model (Karpathy, ``model.py``) written out again so a ratio never needs an outside checkout: learned
absolute positions, pre-LayerNorm blocks, causal SDPA attention, a 4h GELU MLP, biases on, a final LayerNorm,
the input embedding tied to the output projection, N(0, 0.02) init with the residual projections scaled by
1/sqrt(2 layers). The step is nanoGPT's: forward, mean cross-entropy, backward, clip the gradient norm at 1.0,
AdamW (weight decay on the 2-D weights only), fp32, ``zero_grad(set_to_none=True)``.

The project's GPT (megatron-core) uses the tanh GELU of GPT-2's paper, so this one does too; the FLOPs are the
same either way. ``step`` returns the loss as a tensor and never reads it back: a plain loop that prints every
few hundred steps does not sync on the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Shape:
    """A model and batch shape, named as in ``lfr_ds.config.ModelConfig`` and ``EngineConfig``."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    seq_length: int
    vocab_size: int
    batch: int
    """Blocks per optimizer step (one micro-batch: no accumulation)."""


#: The two shapes of issue 28: the tiny preset as bench/throughput.py runs it, and the demo's model.
SHAPES = {
    "tiny": Shape(4, 256, 4, 256, 8192, 16),
    "micro": Shape(2, 128, 4, 64, 512, 32),
}


class Block(nn.Module):
    def __init__(self, h: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.c_attn, self.c_proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.c_fc, self.mlp_proj = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(h, dim=2)
        q, k, v = (t.view(b, s, self.heads, h // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, s, h))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, shape: Shape) -> None:
        super().__init__()
        h = shape.hidden_size
        self.wte, self.wpe = nn.Embedding(shape.vocab_size, h), nn.Embedding(shape.seq_length, h)
        self.blocks = nn.ModuleList(Block(h, shape.num_attention_heads) for _ in range(shape.num_layers))
        self.ln_f = nn.LayerNorm(h)
        self.lm_head = nn.Linear(h, shape.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.ndim == 2:
                scaled = name.endswith(("c_proj.weight", "mlp_proj.weight"))
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * shape.num_layers) if scaled else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


class ReferenceLoop:
    """nanoGPT's training step on :class:`GPT`: the floor a training framework's step is compared with."""

    def __init__(self, shape: Shape, seed: int = 0, lr: float = 3e-4) -> None:
        torch.manual_seed(seed)
        self.shape = shape
        self.model = GPT(shape)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> torch.Tensor:
        """One optimizer step on a fresh batch of random tokens; returns the loss, not read back."""
        s = self.shape
        batch = torch.randint(0, s.vocab_size, (s.batch, s.seq_length + 1), generator=self.generator)
        loss = self.model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()
