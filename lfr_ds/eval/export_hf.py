"""Export a model to a HuggingFace ``GPT2LMHeadModel`` directory, with a tokenizer ``AutoTokenizer`` loads.

Written: ``config.json`` (``GPT2Config``), ``model.safetensors`` (fp32), the sentencepiece model as
``tokenizer.model``, and ``tokenizer.json`` + ``tokenizer_config.json``: a fast (``tokenizers``) BPE
that reproduces the sentencepiece model's ids on plain text, so
``AutoTokenizer.from_pretrained(dir)`` works offline and needs no sentencepiece. Text containing the
literal strings ``<pad>``, ``<unk>`` or ``<eod>`` is the exception: HF maps them to their special ids,
sentencepiece spells them out. Needs ``transformers`` (not a training dependency).

The weight mapping, megatron-core -> HF GPT-2:

* the vocabulary is the tokenizer's real one: megatron's padding rows of the tied embedding are
  dropped (HF's softmax then spans only real tokens; the rows carry the little probability mass a
  trained model still gives tokens that never occur);
* megatron's fused ``linear_qkv`` interleaves heads on its output dimension, ``[heads, (q, k, v),
  head_dim]``; HF's ``c_attn`` concatenates ``q | k | v``, each ``[heads, head_dim]``;
* megatron's linear layers store ``[out, in]`` (``y = x W^T``); HF GPT-2's ``Conv1D`` stores
  ``[in, out]`` (``y = x W``), so every matrix is transposed;
* the rest matches as is: learned positions, LayerNorm (eps from the config, 1e-5 for GPT-2),
  tanh-approximated GELU (HF ``gelu_new``), softmax scale ``1/sqrt(head_dim)``, tied output layer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lfr_ds import atomic
from lfr_ds.config import ModelConfig
from lfr_ds.data.tokenizer import EOD_ID, PAD_ID, UNK_ID, Tokenizer
from lfr_ds.errors import UserError


def hf_state_dict(state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """megatron-core GPT weights (local layer spec names) as HF ``GPT2LMHeadModel`` weights, fp32."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads

    def w(name: str) -> torch.Tensor:
        return state_dict[name].detach().float().cpu()

    out = {
        "transformer.wte.weight": w("embedding.word_embeddings.weight")[: cfg.vocab_size],
        "transformer.wpe.weight": w("embedding.position_embeddings.weight"),
        "transformer.ln_f.weight": w("decoder.final_layernorm.weight"),
        "transformer.ln_f.bias": w("decoder.final_layernorm.bias"),
    }
    for i in range(cfg.num_layers):
        src, dst = f"decoder.layers.{i}.", f"transformer.h.{i}."
        qkv_weight = w(src + "self_attention.linear_qkv.weight").view(heads, 3, h // heads, h)
        qkv_bias = w(src + "self_attention.linear_qkv.bias").view(heads, 3, h // heads)
        out.update(
            {
                dst + "ln_1.weight": w(src + "input_layernorm.weight"),
                dst + "ln_1.bias": w(src + "input_layernorm.bias"),
                # [heads, 3, d, in] -> [3, heads, d, in] = q | k | v rows, then Conv1D's [in, out].
                dst + "attn.c_attn.weight": qkv_weight.transpose(0, 1).reshape(3 * h, h).t(),
                dst + "attn.c_attn.bias": qkv_bias.transpose(0, 1).reshape(3 * h),
                dst + "attn.c_proj.weight": w(src + "self_attention.linear_proj.weight").t(),
                dst + "attn.c_proj.bias": w(src + "self_attention.linear_proj.bias"),
                dst + "ln_2.weight": w(src + "pre_mlp_layernorm.weight"),
                dst + "ln_2.bias": w(src + "pre_mlp_layernorm.bias"),
                dst + "mlp.c_fc.weight": w(src + "mlp.linear_fc1.weight").t(),
                dst + "mlp.c_fc.bias": w(src + "mlp.linear_fc1.bias"),
                dst + "mlp.c_proj.weight": w(src + "mlp.linear_fc2.weight").t(),
                dst + "mlp.c_proj.bias": w(src + "mlp.linear_fc2.bias"),
            }
        )
    # safetensors wants each tensor to own compact storage (no views of a shared buffer).
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_tokenizer(tokenizer: Tokenizer):
    """A ``tokenizers`` BPE equal to the sentencepiece model on plain text.

    sentencepiece (identity normalisation, no dummy prefix) replaces spaces with ``▁``, cuts the text
    into words that each start at a run of ``▁`` (whitespace-only pieces allowed, so the run stays
    whole), then merges within a word, best-scoring resulting piece first, falling back to bytes.
    HF BPE merges by rank, so every way to split a piece into two pieces becomes a merge ranked by the
    piece's score. ``"\\n"`` is a user-defined piece: never merged, so an added token.
    """
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    sp = tokenizer.sp
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i):
            continue
        piece = sp.id_to_piece(i)
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges.extend((sp.get_score(i), vocab[a], vocab[b], a, b) for a, b in splits)
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    hf = HFTokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(a, b) for *_, a, b in merges],
            unk_token=sp.id_to_piece(UNK_ID),
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    hf.normalizer = normalizers.Replace(" ", "▁")
    hf.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated")
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    hf.add_special_tokens(
        [AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in (PAD_ID, UNK_ID, EOD_ID)]
    )
    hf.add_tokens([AddedToken("\n", special=False, normalized=False)])
    return hf


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path, if an export can be written there: new or empty, in an existing directory."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not an empty directory; choose a new path")
    if not out.absolute().parent.is_dir():
        raise UserError(f"{out}: parent directory {out.absolute().parent} does not exist; create it first")
    return out


def export_hf(model: torch.nn.Module, cfg: ModelConfig, tokenizer: Tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` (a megatron-core GPT with the local layer spec, shape ``cfg``) and ``tokenizer`` as
    a HuggingFace GPT-2 directory ``out_dir`` (created whole, atomically; it must not exist or be empty)."""
    try:
        from safetensors.torch import save_file
        from transformers import GPT2Config
    except ImportError:
        raise UserError("--export-hf needs transformers; pip install transformers") from None
    out = check_out_dir(out_dir)
    if out.exists():
        out.rmdir()  # empty: replaced by the complete directory below
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces, the config {cfg.vocab_size}")
    config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.seq_length,
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_attention_heads,
        activation_function="gelu_new",
        resid_pdrop=cfg.hidden_dropout,
        embd_pdrop=cfg.hidden_dropout,
        attn_pdrop=cfg.attention_dropout,
        layer_norm_epsilon=cfg.layernorm_epsilon,
        initializer_range=cfg.init_method_std,
        bos_token_id=EOD_ID,
        eos_token_id=EOD_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
        dtype="float32",
    )
    tokenizer_config = {
        # The generic fast tokenizer class, which transformers 4.x and 5.x both resolve.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "eos_token": "<eod>",
        "model_max_length": cfg.seq_length,
        "clean_up_tokenization_spaces": False,  # decode gives back the exact text, as sentencepiece does
    }
    with atomic.atomic_path(out, is_dir=True) as tmp:
        config.save_pretrained(tmp)
        save_file(hf_state_dict(model.state_dict(), cfg), tmp / "model.safetensors", metadata={"format": "pt"})
        shutil.copyfile(tokenizer.path, tmp / "tokenizer.model")
        hf_tokenizer(tokenizer).save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return out
