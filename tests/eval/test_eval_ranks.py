"""heldout_loss as the training loop runs it: on every rank, through a ZeRO-3 engine; each rank scores a
share of the blocks and all return the single-process numbers."""

from __future__ import annotations

import json

import torch.multiprocessing as mp
from evalkit import SEQ, heldout_on_rank, small_model
from launch import free_port

from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.eval.perplexity import heldout_loss, load_heldout

BLOCKS, MICRO = 5, 2  # 3 micro-batches over 2 ranks: rank 1 has none in the second round


def test_two_ranks_return_the_single_process_numbers(tmp_path, webmix_tokenizer, valid_jsonl):
    tok = Tokenizer(webmix_tokenizer)
    data = load_heldout(str(valid_jsonl), SEQ, tokenizer=tok, max_blocks=BLOCKS, seed=1)
    expected = heldout_loss(small_model(tok.vocab_size), data, micro_batch_size=MICRO)
    args = (2, free_port(), str(webmix_tokenizer), str(valid_jsonl), BLOCKS, MICRO, str(tmp_path))
    mp.spawn(heldout_on_rank, args=args, nprocs=2)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["forwards"] == 2  # the same forward passes on every rank (ZeRO-3 needs it)
        assert got["result"]["tokens"] == expected["tokens"] == BLOCKS * SEQ
        assert abs(got["result"]["loss"] - expected["loss"]) < 1e-6
        assert got["result"]["per_source"].keys() == expected["per_source"].keys()
