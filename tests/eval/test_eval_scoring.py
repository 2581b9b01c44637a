"""The scorers against log-likelihoods computed by hand from a small model's logits, and held-out sets
against their definition."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from evalkit import SEQ, logits_of, logprob_by_hand, small_model

from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.tokenizer import EOD_ID, Tokenizer
from lfr_ds.eval.perplexity import NOT_SCORED, heldout_loss, load_heldout
from lfr_ds.eval.zeroshot import (
    MCItem,
    encode_pair,
    evaluate_blimp,
    evaluate_lambada,
    evaluate_mc,
    load_blimp,
    load_lambada,
)
from lfr_ds.model.gpt import per_block_loss


@pytest.fixture(scope="module")
def tok(webmix_tokenizer) -> Tokenizer:
    return Tokenizer(webmix_tokenizer)


@pytest.fixture(scope="module")
def model(tok):
    return small_model(tok.vocab_size, make_vocab_size_divisible_by=1000)  # 8192 -> 9000: padding rows too


def test_encode_pair_splits_as_lm_evaluation_harness(tok):
    # Trailing whitespace of the context moves to the continuation; the continuation is what follows the
    # context's own tokens in the tokenization of the whole string.
    context, continuation = encode_pair(tok, "The cat sat on the ", "mat")
    assert context == tok.encode(["The cat sat on the"])[0]
    assert continuation == tok.encode(["The cat sat on the mat"])[0][len(context) :]
    assert tok.decode(continuation) == " mat"
    # An empty context is <eod>, so the first token of the continuation is scored too.
    assert encode_pair(tok, "", "Dogs bark.") == ([EOD_ID], tok.encode(["Dogs bark."])[0])


def test_multiple_choice_matches_hand_computed_log_likelihoods(tok, model, eval_data):
    texts = [json.loads(line)["text"] for line in (eval_data / "lambada_test.jsonl").open()][:5]
    items = [
        MCItem(texts[0][:200], [" yes", " no, not at all", " maybe"], 0),
        MCItem(texts[1][:120] + " ", ["it was", "nothing"], 1),  # trailing space moves to the choices
        MCItem(texts[2], [" and then", " so"], 1),  # longer than seq_length: cut from the left
        MCItem("", ["Hello there.", "Goodbye."], 0),
        MCItem(texts[3][:50], [" a", " b", " c", " d"], 3),
    ]
    assert len(tok.encode([texts[2]])[0]) > SEQ
    # batch_size 3: batches of mixed lengths, right-padded
    result = evaluate_mc(model, tok, items, seq_length=SEQ, batch_size=3)
    acc = acc_norm = 0
    for item, got in zip(items, result["logprobs"], strict=True):
        expected = []
        for choice in item.choices:
            context, continuation = encode_pair(tok, item.context, choice)
            context = context[-(SEQ + 1 - len(continuation)) :]  # the window the model can see
            expected.append(logprob_by_hand(model, context, continuation)[0])
        assert got == pytest.approx(expected, abs=1e-4)
        acc += int(np.argmax(expected) == item.label)
        acc_norm += int(np.argmax(np.array(expected) / [len(c) for c in item.choices]) == item.label)
    assert result["acc"] == acc / len(items) and result["acc_norm"] == acc_norm / len(items)


def test_blimp_scores_whole_sentences_after_eod(tok, model, eval_data):
    sets = load_blimp([eval_data / "blimp" / "anaphor_gender_agreement.jsonl", eval_data / "blimp" / "causative.jsonl"])
    sets = {name: pairs[:4] for name, pairs in sets.items()}
    result = evaluate_blimp(model, tok, sets, seq_length=SEQ, batch_size=5)
    right = 0
    for name, pairs in sets.items():
        expected = [tuple(logprob_by_hand(model, [EOD_ID], tok.encode([s])[0])[0] for s in pair) for pair in pairs]
        assert np.array(result["logprobs"][name]) == pytest.approx(np.array(expected), abs=1e-4)
        assert result["per_set"][name] == {"acc": sum(g > b for g, b in expected) / 4, "n": 4}
        right += sum(g > b for g, b in expected)
    assert result["acc"] == right / 8 and result["n"] == 8


def test_lambada_last_word_log_likelihood_and_greedy_match(tok, model, eval_data):
    pairs = load_lambada(eval_data / "lambada_test.jsonl")[:6]
    assert all(word.startswith(" ") and " " not in word[1:] for _, word in pairs)
    result = evaluate_lambada(model, tok, pairs, seq_length=SEQ, batch_size=4)
    expected = []
    for context, word in pairs:
        ctx, cont = encode_pair(tok, context, word)
        expected.append(logprob_by_hand(model, ctx[-(SEQ + 1 - len(cont)) :], cont))
    assert result["logprobs"] == pytest.approx([lp for lp, _ in expected], abs=1e-4)
    assert result["acc"] == np.mean([g for _, g in expected])
    assert result["ppl"] == pytest.approx(math.exp(-np.mean([lp for lp, _ in expected])), rel=1e-5)


def test_raw_text_heldout_is_every_document_once_in_a_seeded_order(tok, valid_jsonl):
    docs = [json.loads(line) for line in valid_jsonl.open()]
    data = load_heldout(str(valid_jsonl), SEQ, tokenizer=tok, seed=7)
    tokens, source = data.read(np.arange(data.num_blocks))
    assert tokens.shape == (data.num_blocks, SEQ + 1) and source.shape == (data.num_blocks, SEQ)
    # Neighbouring blocks share one token; the stream is the documents, each closed by <eod>.
    scored = source != NOT_SCORED
    stream = np.concatenate([tokens[0, :1], tokens[:, 1:][scored]])
    ends = np.flatnonzero(stream == EOD_ID)
    assert ends[-1] == len(stream) - 1
    texts = [tok.decode(d) for d in np.split(stream, ends[:-1] + 1)]
    assert sorted(texts) == sorted(d["text"] for d in docs)
    assert texts != [d["text"] for d in docs]  # shuffled: the file is grouped by source
    assert scored.sum() == sum(len(tok.encode([d["text"]])[0]) + 1 for d in docs) - 1
    # Each label counts for its own document's source.
    by_text = {d["text"]: d["source"] for d in docs}
    first = texts[0]
    n_first = len(tok.encode([first])[0]) + 1
    assert {data.sources[s] for s in source.flatten()[: n_first - 1]} == {by_text[first]}
    # A limit takes the first blocks of the same order.
    head = load_heldout(str(valid_jsonl), SEQ, tokenizer=tok, seed=7, max_blocks=3)
    assert head.num_blocks == 3
    np.testing.assert_array_equal(head.read(np.arange(3))[0], tokens[:3])


def test_heldout_loss_matches_hand_computed_cross_entropy(tok, model, valid_jsonl):
    data = load_heldout(str(valid_jsonl), SEQ, tokenizer=tok, seed=3, max_blocks=5)
    result = heldout_loss(model, data, micro_batch_size=2)
    tokens, source = data.read(np.arange(data.num_blocks))
    sums: dict[str, list[float]] = {}
    for block, labels_source in zip(tokens.tolist(), source.tolist(), strict=True):
        logits = logits_of(model, block[:-1]).double()
        nll = torch.logsumexp(logits, dim=1) - logits[torch.arange(SEQ), block[1:]]
        for value, s in zip(nll.tolist(), labels_source, strict=True):
            sums.setdefault(data.sources[s], []).append(value)
    everything = [v for values in sums.values() for v in values]
    assert result["loss"] == pytest.approx(np.mean(everything), abs=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))
    assert result["tokens"] == len(everything) == 5 * SEQ and result["blocks"] == 5
    assert set(result["per_source"]) == set(sums)
    for name, values in sums.items():
        assert result["per_source"][name]["loss"] == pytest.approx(np.mean(values), abs=1e-5)
        assert result["per_source"][name]["tokens"] == len(values)


def test_dataset_heldout_is_evenly_spaced_blocks_scored_as_in_training(tok, model, small_dataset):
    view = BlockView(open_dataset(str(small_dataset)), SEQ, seed=11)
    data = load_heldout(str(small_dataset), SEQ, tokenizer=tok, seed=11, max_blocks=6)
    ids = np.arange(6) * view.num_blocks // 6
    tokens, source = data.read(np.arange(6))
    np.testing.assert_array_equal(tokens, view.batch(ids))
    np.testing.assert_array_equal(source, np.repeat(view.block_source[ids][:, None], SEQ, axis=1))
    # The held-out loss is the training loss (per_block_loss) of those blocks.
    batch = torch.from_numpy(tokens)
    with torch.no_grad():
        train = per_block_loss(model, batch[:, :-1], batch[:, 1:], torch.ones(6, SEQ))
    result = heldout_loss(model, data, micro_batch_size=4)
    assert result["loss"] == pytest.approx(float(train.loss), abs=1e-5)
    for code in set(view.block_source[ids].tolist()):
        rows = view.block_source[ids] == code
        assert result["per_source"][data.sources[code]]["loss"] == pytest.approx(
            float(train.per_block[torch.from_numpy(rows)].mean()), abs=1e-5
        )
