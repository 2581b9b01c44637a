"""HuggingFace export: GPT2LMHeadModel logits equal lfr-ds's, AutoTokenizer ids equal lfr-ds's."""

from __future__ import annotations

import json

import pytest
import torch
from evalkit import SEQ, logits_of, small_config, small_model
from transformers import AutoTokenizer, GPT2LMHeadModel

from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import UserError
from lfr_ds.eval.export_hf import export_hf


@pytest.fixture(scope="module")
def tok(webmix_tokenizer) -> Tokenizer:
    return Tokenizer(webmix_tokenizer)


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    """A random small model whose vocabulary is padded (8192 -> 9000 rows), exported."""
    changes = {"make_vocab_size_divisible_by": 1000}
    model = small_model(tok.vocab_size, seed=5, **changes)
    out = export_hf(model, small_config(tok.vocab_size, **changes), tok, tmp_path_factory.mktemp("hf") / "gpt2")
    return model, out


def test_exported_gpt2_gives_the_same_logits(exported, tok):
    model, out = exported
    assert json.loads((out / "config.json").read_text())["vocab_size"] == tok.vocab_size  # padding dropped
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, as trained
    texts = ["A short one.", "Two sentences of text, the second\nafter a newline. " * 4]
    ids = [tok.encode([t])[0][:SEQ] for t in texts]
    for seq in ids:
        with torch.no_grad():
            theirs = hf(torch.tensor([seq])).logits[0]
        ours = logits_of(model, seq)
        assert ours.shape == (len(seq), 9000) and theirs.shape == (len(seq), tok.vocab_size)
        torch.testing.assert_close(theirs, ours[:, : tok.vocab_size], rtol=0, atol=1e-5)


def test_auto_tokenizer_gives_the_same_ids(exported, tok, webmix_train, eval_data):
    _, out = exported
    hf = AutoTokenizer.from_pretrained(out)
    texts = [json.loads(line)["text"] for line in (webmix_train.parent / "valid.jsonl").open()]
    texts += [json.loads(line)["text"] for line in (eval_data / "lambada_test.jsonl").open()][:1000]
    for name in ("adjunct_island", "irregular_plural_subject_verb_agreement_1", "wh_questions_object_gap"):
        texts += [json.loads(line)["sentence_good"] for line in (eval_data / "blimp" / f"{name}.jsonl").open()][:200]
    texts += [
        "  two leading spaces, three trailing   ",
        "tabs\tand\n\nblank lines \n x",
        "digits 1234567 and 3.14159",
        "unicode: naïve café, 中文, emoji 🤖, a\u00a0non-breaking space",
        "",
    ]
    ours = tok.encode(texts)
    theirs = hf(texts, add_special_tokens=True)["input_ids"]  # nothing added: no BOS, no EOS
    assert sum(a != b for a, b in zip(ours, theirs, strict=True)) == 0
    assert all(hf.decode(ids) == text for ids, text in zip(theirs[-5:], texts[-5:], strict=True))
    assert hf.eos_token_id == 2 and hf.pad_token_id == 0


def test_export_refuses_a_directory_in_use(exported, tok):
    model, out = exported
    with pytest.raises(UserError, match="not an empty directory"):
        export_hf(model, small_config(tok.vocab_size, make_vocab_size_divisible_by=1000), tok, out)
