"""Helpers for the evaluation tests: small models, a rigged stub model, and log-likelihoods by hand."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from lfr_ds.config import ModelConfig
from lfr_ds.model.compat import setup_megatron
from lfr_ds.model.gpt import build_model

SEQ = 64


def small_config(vocab_size: int, **changes) -> ModelConfig:
    return ModelConfig(
        preset=None,
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        seq_length=SEQ,
        vocab_size=vocab_size,
        **changes,
    )


def small_model(vocab_size: int, seed: int = 0, **changes) -> torch.nn.Module:
    """A randomly initialised 2-layer GPT (milliseconds per forward on CPU), in eval mode."""
    setup_megatron(seed)
    return build_model(small_config(vocab_size, **changes), bf16=False).eval()


def logits_of(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Logits ``[len(ids), vocab]`` of one unpadded sequence."""
    x = torch.tensor([ids])
    with torch.no_grad():
        return model(x, torch.arange(len(ids))[None], None)[0]


def logprob_by_hand(model: torch.nn.Module, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Summed log-probability of ``continuation`` after ``context`` and whether it is the greedy choice:
    one unbatched forward, log-softmax written out (a row's log-sum-exp), no truncation."""
    ids = context + continuation
    logits = logits_of(model, ids[:-1]).double()
    logprob, greedy = 0.0, True
    for pos in range(len(context), len(ids)):
        row = logits[pos - 1]
        logprob += float(row[ids[pos]] - torch.logsumexp(row, dim=0))
        greedy &= int(row.argmax()) == ids[pos]
    return logprob, greedy


class NextTokenStub(torch.nn.Module):
    """A stand-in model that, after token ``a``, puts logit ``strength`` on ``follow[a]`` and 0 everywhere
    else: text that follows the table is near-certain, anything else costs ``strength`` nats a token."""

    def __init__(self, vocab_size: int, follow: dict[int, int], strength: float = 20.0) -> None:
        super().__init__()
        self.vocab_size, self.follow, self.strength = vocab_size, follow, strength
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # scorers read the device off the parameters

    def forward(self, tokens: torch.Tensor, position_ids, attention_mask, labels=None) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, self.vocab_size)
        for b, row in enumerate(tokens.tolist()):
            for s, token in enumerate(row):
                if token in self.follow:
                    logits[b, s, self.follow[token]] = self.strength
        if labels is None:
            return logits
        return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")


def chain(follow: dict[int, int], ids: list[int]) -> bool:
    """Make ``follow`` map each token of ``ids`` to the next; False (and unchanged) if that contradicts it."""
    new: dict[int, int] = {}
    for a, b in itertools.pairwise(ids):
        if new.setdefault(a, b) != b or follow.get(a, b) != b:
            return False
    follow.update(new)
    return True


def heldout_on_rank(
    rank: int, world: int, port: int, tokenizer: str, path: str, blocks: int, micro: int, out_dir: str
) -> None:
    """One gloo rank (``torch.multiprocessing.spawn`` target), as in training: the small model in a
    DeepSpeed ZeRO-3 engine (parameters sharded over the ranks) scores held-out blocks; writes the
    result and the number of forward passes to ``out_dir/rank{rank}.json``."""
    import json
    import os
    from pathlib import Path

    from lfr_ds.config import load_config
    from lfr_ds.data.tokenizer import Tokenizer
    from lfr_ds.engine import build_ds_config, build_engine
    from lfr_ds.eval.perplexity import heldout_loss, load_heldout
    from lfr_ds.launch import init_distributed

    torch.set_num_threads(1)
    # As a launcher sets them (one node): an inherited LOCAL_WORLD_SIZE=1 would not fit LOCAL_RANK=1.
    env = dict(
        RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world, LOCAL_WORLD_SIZE=world, MASTER_ADDR="127.0.0.1", MASTER_PORT=port
    )
    os.environ.update({k: str(v) for k, v in env.items()})
    init_distributed("gloo")
    tok = Tokenizer(tokenizer)
    model = small_model(tok.vocab_size)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    cfg = load_config(None, ["data.path=unused", "engine.zero_stage=3", f"engine.micro_batch_size={micro}"])
    engine = build_engine(model, cfg, build_ds_config(cfg, world, bf16=False))
    data = load_heldout(path, SEQ, tokenizer=tok, max_blocks=blocks, seed=1)
    result = heldout_loss(engine, data, micro_batch_size=micro)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"forwards": len(forwards), "result": result}))
