"""The task metrics on a stub model rigged to know the answers: every answer it knows must be taken."""

from __future__ import annotations

import json

import pytest
from evalkit import SEQ, NextTokenStub, chain

from lfr_ds.data.tokenizer import EOD_ID, Tokenizer
from lfr_ds.eval.zeroshot import (
    MCItem,
    encode_pair,
    evaluate_blimp,
    evaluate_lambada,
    evaluate_mc,
    load_blimp,
)

DISTRACTORS = [" the", " nevertheless", " 42", " blue whales", ","]


@pytest.fixture(scope="module")
def tok(webmix_tokenizer) -> Tokenizer:
    return Tokenizer(webmix_tokenizer)


@pytest.fixture(scope="module")
def passages(eval_data) -> list[tuple[str, str]]:
    """(context, last word) of LAMBADA passages, the context cut short."""
    rows = [json.loads(line)["text"] for line in (eval_data / "lambada_test.jsonl").open()][:60]
    return [(text.rpartition(" ")[0][-150:], " " + text.rpartition(" ")[2]) for text in rows]


def test_multiple_choice_takes_the_answer_a_rigged_model_knows(tok, passages):
    # The stub continues each context with its true last word; the distractors start elsewhere.
    follow: dict[int, int] = {}
    items = []
    for i, (context, word) in enumerate(passages):
        choices = [c for c in DISTRACTORS[: 2 + i % 4] if c != word]
        label = i % (len(choices) + 1)
        choices.insert(label, word)
        ctx, cont = encode_pair(tok, context, word)
        firsts = {encode_pair(tok, context, c)[1][0] for c in choices if c != word}
        if cont[0] not in firsts and chain(follow, [ctx[-1], *cont]):
            items.append(MCItem(context, choices, label))
    assert len(items) >= 15  # enough answers, in every position
    assert {it.label for it in items} == {0, 1, 2, 3, 4, 5}
    stub = NextTokenStub(tok.vocab_size, follow)
    result = evaluate_mc(stub, tok, items, seq_length=SEQ, batch_size=4)
    assert result["acc"] == 1.0 and result["acc_norm"] == 1.0
    # The same items with every label moved off the known answer: none is right.
    moved = [MCItem(it.context, it.choices, (it.label + 1) % len(it.choices)) for it in items]
    result = evaluate_mc(stub, tok, moved, seq_length=SEQ, batch_size=4)
    assert result["acc"] == 0.0 and result["acc_norm"] == 0.0


def test_lambada_accuracy_counts_exactly_the_words_decoded_greedily(tok, passages):
    requests = [encode_pair(tok, context, word) for context, word in passages]
    follow: dict[int, int] = {}
    whole = partial = 0
    for i, (ctx, cont) in enumerate(requests):
        if len(cont) < 2 or i % 2:
            continue  # odd passages: never taught
        if i % 4 == 0 and chain(follow, [ctx[-1], *cont]):
            whole += 1  # the whole word
        elif i % 4 == 2 and chain(follow, [ctx[-1], *cont[:-1]]):
            partial += 1  # all but the word's last token: greedy decoding gets it wrong
    assert whole >= 4 and partial >= 4
    result = evaluate_lambada(NextTokenStub(tok.vocab_size, follow), tok, passages, seq_length=SEQ, batch_size=8)
    assert result["acc"] == whole / len(passages)


def test_blimp_prefers_the_sentence_a_rigged_model_knows(tok, eval_data):
    # Every sentence follows <eod>, so a stub can know one sentence: one stub per pair.
    sets = load_blimp(
        [eval_data / "blimp" / "determiner_noun_agreement_1.jsonl", eval_data / "blimp" / "causative.jsonl"]
    )
    checked = 0
    for pairs in sets.values():
        for good, bad in pairs[:10]:
            follow: dict[int, int] = {}
            if not chain(follow, [EOD_ID, *tok.encode([good])[0]]):
                continue  # a token followed by two different ones: no such stub
            stub = NextTokenStub(tok.vocab_size, follow)
            assert evaluate_blimp(stub, tok, {"set": [(good, bad)]}, seq_length=SEQ)["acc"] == 1.0
            assert evaluate_blimp(stub, tok, {"set": [(bad, good)]}, seq_length=SEQ)["acc"] == 0.0
            checked += 1
    assert checked >= 10
