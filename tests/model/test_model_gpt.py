"""The GPT model: shapes and parameter counts, SDPA vs megatron's attention, losses, sketch, training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention

from lfr_ds.config import ModelConfig
from lfr_ds.errors import UserError
from lfr_ds.model.attention import SDPAttention
from lfr_ds.model.compat import setup_megatron
from lfr_ds.model.gpt import build_model, count_parameters, flops_per_token, per_block_loss

VOCAB = 512
#: A small shape so each forward/backward takes milliseconds on two cores.
SMALL = ModelConfig(
    preset=None, num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, vocab_size=VOCAB, sketch_dim=0
)


def make_batch(b: int = 3, s: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(0, VOCAB, (b, s + 1), generator=g)
    return block[:, :-1], block[:, 1:]


def positions(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1]).expand_as(tokens)


def fresh_model(cfg: ModelConfig = SMALL, seed: int = 0) -> torch.nn.Module:
    setup_megatron(seed)
    return build_model(cfg)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("gpt2-124m", 124_439_808),
        ("gpt2-345m", 354_823_168),
        ("gpt2-774m", 774_030_080),
        ("gpt2-1.5b", 1_557_611_200),
    ],
)
def test_gpt2_parameter_counts_match_openai(preset: str, expected: int) -> None:
    cfg = ModelConfig(preset=preset, make_vocab_size_divisible_by=1)
    assert count_parameters(cfg, 50257) == expected


def test_tiny_preset_is_a_few_million_parameters_and_padding_counts() -> None:
    n = count_parameters(ModelConfig(preset="tiny"), 8000)  # padded to 8064 by default
    assert 2_000_000 < n < 10_000_000
    unpadded = count_parameters(ModelConfig(preset="tiny", make_vocab_size_divisible_by=1), 8000)
    assert n - unpadded == 64 * 256  # 64 padding rows of the (tied) embedding


def test_count_matches_a_built_model() -> None:
    model = fresh_model()
    unique = {id(p): p.numel() for p in model.parameters()}
    assert count_parameters(SMALL, VOCAB) == sum(unique.values())
    # Tied: the output layer owns no weight; the logits use the input embedding.
    assert model.output_layer.weight is None


def test_flops_per_token_counts_the_models_matmul_weights() -> None:
    cfg = dataclasses.replace(ModelConfig(preset="gpt2-124m"), vocab_size=50257)
    model = fresh_model(dataclasses.replace(cfg, num_layers=1))  # one layer is enough to measure
    per_layer = sum(
        p.numel() for name, p in model.decoder.layers[0].named_parameters() if name.endswith("weight") and p.dim() == 2
    )
    logits = model.embedding.word_embeddings.weight.numel()  # padded vocab x h
    L, s, h = cfg.num_layers, cfg.seq_length, cfg.hidden_size
    assert flops_per_token(cfg) == 6 * (L * per_layer + logits) + 12 * L * s * h
    assert cfg.padded_vocab_size == 50304 and per_layer == 12 * h * h


def test_auto_backend_on_cpu_is_sdpa_and_te_without_te_is_a_user_error() -> None:
    model = fresh_model()
    for layer in model.decoder.layers:
        assert isinstance(layer.self_attention.core_attention, SDPAttention)
    assert next(model.parameters()).dtype == torch.float32
    assert not model.config.bf16 and not model.config.bias_activation_fusion  # fused=auto: GPU only
    with pytest.raises(UserError, match="attention_backend"):
        build_model(dataclasses.replace(SMALL, attention_backend="te"))


def test_sdpa_matches_megatron_dot_product_attention() -> None:
    model = fresh_model()
    tokens, labels = make_batch()

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model(tokens, positions(tokens), None, labels=labels).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    sdpa_loss, sdpa_grads = loss_and_grads()
    # Same weights, megatron's own core attention (runs on CPU through lfr_ds.model.compat).
    for layer in model.decoder.layers:
        attn = layer.self_attention
        attn.core_attention = DotProductAttention(
            config=model.config,
            layer_number=attn.layer_number,
            attn_mask_type=attn.attn_mask_type,
            attention_type="self",
        )
    ref_loss, ref_grads = loss_and_grads()
    torch.testing.assert_close(sdpa_loss, ref_loss, rtol=0, atol=1e-6)
    for got, want in zip(sdpa_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_attention_dropout_only_in_training() -> None:
    model = fresh_model(dataclasses.replace(SMALL, attention_dropout=0.5))
    tokens, labels = make_batch()
    with torch.no_grad():
        model.eval()
        a, b = (model(tokens, positions(tokens), None, labels=labels) for _ in range(2))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        model.train()
        c = model(tokens, positions(tokens), None, labels=labels)
        assert not torch.allclose(a, c)


def test_per_token_and_per_block_losses_match_cross_entropy_of_the_logits() -> None:
    model = fresh_model()
    tokens, labels = make_batch()
    with torch.no_grad():
        logits = model(tokens, positions(tokens), None)
        assert logits.shape == (3, 32, model.vocab_size)
        want = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(3, 32)
        token_loss = model(tokens, positions(tokens), None, labels=labels)
        assert token_loss.shape == (3, 32)
        torch.testing.assert_close(token_loss, want)

        loss_mask = torch.ones(3, 32)
        loss_mask[0, :10] = 0  # e.g. tokens of a document that started before this block
        loss_mask[2] = 0  # nothing counted: loss 0, and no division by zero
        out = per_block_loss(model, tokens, labels, loss_mask)
    torch.testing.assert_close(out.tokens, torch.tensor([22.0, 32.0, 0.0]))
    torch.testing.assert_close(out.per_block, torch.stack([want[0, 10:].mean(), want[1].mean(), torch.tensor(0.0)]))
    torch.testing.assert_close(out.loss, torch.cat([want[0, 10:], want[1]]).mean())
    assert out.sketch is None


def test_sketch_has_the_right_shape_and_leaves_the_loss_alone() -> None:
    tokens, labels = make_batch()
    mask = torch.ones(3, 32)
    plain = per_block_loss(fresh_model(seed=1), tokens, labels, mask)
    sketched_model = fresh_model(dataclasses.replace(SMALL, sketch_dim=8), seed=1)
    sketched = per_block_loss(sketched_model, tokens, labels, mask)
    assert sketched.sketch.shape == (3, 8) and sketched.sketch.dtype == torch.float32
    assert not sketched.sketch.requires_grad
    torch.testing.assert_close(sketched.loss, plain.loss, rtol=0, atol=0)
    # It is the projection of the mean final hidden state, and identical blocks sketch identically.
    same = per_block_loss(sketched_model, tokens[:1].repeat(2, 1), labels[:1].repeat(2, 1), mask[:2])
    torch.testing.assert_close(same.sketch[0], same.sketch[1])
    torch.testing.assert_close(same.sketch[0], sketched.sketch[0])
    assert not torch.allclose(sketched.sketch[0], sketched.sketch[1])


def test_a_few_adamw_steps_lower_the_loss() -> None:
    model = fresh_model(dataclasses.replace(ModelConfig(preset="tiny"), vocab_size=VOCAB))
    tokens, labels = make_batch(b=4, s=64)
    mask = torch.ones(4, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        out = per_block_loss(model, tokens, labels, mask)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_setup_and_build_twice_in_one_process_is_reproducible() -> None:
    tokens, labels = make_batch()
    first = fresh_model(seed=7)(tokens, positions(tokens), None, labels=labels)
    second = fresh_model(seed=7)(tokens, positions(tokens), None, labels=labels)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    other = fresh_model(seed=8)(tokens, positions(tokens), None, labels=labels)
    assert not torch.allclose(first, other)
