"""Real ZeRO-2 and ZeRO-3 checkpoints from short lfr-train runs: loading them, and lfr-eval end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from evalkit import logits_of

from lfr_ds.eval.checkpoint import find_checkpoint_dir, load_model, open_checkpoint
from lfr_ds.eval.cli import main
from lfr_ds.eval.perplexity import heldout_loss, load_heldout


def test_a_run_its_checkpoints_and_a_step_directory_name_the_same_checkpoint(trained_runs):
    run = trained_runs[2]
    step = run / "checkpoints" / "step_00000003"
    assert find_checkpoint_dir(run) == find_checkpoint_dir(run / "checkpoints") == find_checkpoint_dir(step) == step
    ckpt = open_checkpoint(run)
    assert ckpt.step == 3 and ckpt.model_config.num_layers == 4  # the tiny preset
    assert ckpt.model_config.vocab_size == ckpt.tokenizer.vocab_size == 8192


def test_zero2_weights_are_the_weights_deepspeed_saved(trained_runs):
    ckpt = open_checkpoint(trained_runs[2])
    loaded = load_model(ckpt).state_dict()
    # On CPU in fp32, ZeRO-2 also saves the full module, which must equal the consolidated masters.
    saved = torch.load(ckpt.path / "mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")["module"]
    tensors = {k: v for k, v in saved.items() if torch.is_tensor(v)}
    assert tensors.keys() == {k for k, v in loaded.items() if torch.is_tensor(v)}
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor.float()), name


def test_zero3_checkpoint_loads_the_model_zero2_trained(trained_runs):
    # Same seed, data and steps: the two runs differ only in how ZeRO shards and reduces. The other
    # reduction order moves a few weights by ~1e-6 after Adam's steps (seen: 1.07e-6 on 4 of 768 elements
    # with today's packages); a checkpoint loaded wrongly (another shard, another tensor, a fresh init)
    # moves them by the weights' own scale, ~1e-2. 1e-5 tells the two apart with room either side.
    zero2 = load_model(open_checkpoint(trained_runs[2])).state_dict()
    zero3 = load_model(open_checkpoint(trained_runs[3])).state_dict()
    for name, tensor in zero2.items():
        if torch.is_tensor(tensor):
            torch.testing.assert_close(zero3[name], tensor, rtol=0, atol=1e-5)
    assert not torch.equal(zero2["decoder.final_layernorm.weight"], torch.ones(256))  # trained, not fresh


def test_transformer_engine_names_are_mapped_back(trained_runs, tmp_path):
    # A GPU run on megatron's Transformer Engine spec names each LayerNorm as part of the linear layer
    # after it. Rename the parameters of a real checkpoint that way, in DeepSpeed's own records.
    te_names = {
        "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
        "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
    }

    def te(name: str) -> str:
        for local, fused in te_names.items():
            name = name.replace(local, fused)
        return name

    src = find_checkpoint_dir(trained_runs[2])
    dst = tmp_path / "checkpoints" / src.name
    shutil.copytree(src, dst)
    states = torch.load(dst / "mp_rank_00_model_states.pt", weights_only=False)
    states["param_shapes"] = [{te(k): v for k, v in group.items()} for group in states["param_shapes"]]
    states["module"] = {te(k): v for k, v in states["module"].items()}
    assert any("linear_qkv.layer_norm_weight" in k for k in states["module"])
    torch.save(states, dst / "mp_rank_00_model_states.pt")
    renamed = load_model(open_checkpoint(dst)).state_dict()
    original = load_model(open_checkpoint(src)).state_dict()
    for name, tensor in original.items():
        if torch.is_tensor(tensor):
            assert torch.equal(renamed[name], tensor), name


def test_lfr_eval_end_to_end(trained_runs, run_cli, tmp_path, valid_jsonl, small_dataset, mc_file, eval_data):
    run = trained_runs[2]
    out, hf_dir = tmp_path / "results.json", tmp_path / "hf"
    blimp = [eval_data / "blimp" / "causative.jsonl", eval_data / "blimp" / "drop_argument.jsonl"]
    argv = [run, "--valid", valid_jsonl, small_dataset, "--mc", mc_file, "--blimp", *blimp]
    argv += [
        "--lambada",
        eval_data / "lambada_test.jsonl",
        "--max-examples",
        6,
        "--json",
        out,
        "--export-hf",
        hf_dir,
    ]
    result = run_cli(main, argv)
    assert result.code == 0, result.err
    results = json.loads(out.read_text())
    assert results["step"] == 3 and results["checkpoint"].endswith("step_00000003")
    assert set(results) >= {"valid", "mc", "blimp", "lambada", "export_hf"}
    assert results["blimp"]["n"] == 12 and set(results["blimp"]["per_set"]) == {"causative", "drop_argument"}
    assert results["lambada"]["n"] == 6 and results["mc"][str(mc_file)]["n"] == 6
    for r in results["valid"].values():
        assert r["blocks"] == 6 and 0 < r["loss"] < np.log(8192) + 1
        assert sum(s["tokens"] for s in r["per_source"].values()) == r["tokens"]
    # The table names every task; results only on stdout.
    for needle in ("valid.jsonl", "small", "lastword.jsonl", "blimp (2 sets)", "lambada", "acc_norm", "ppl"):
        assert needle in result.out
    # The CLI's numbers are the API's. Not to the last bit: the same fp32 forward on the same blocks moved
    # by 1.8e-6 relative on CI (BLAS kernels may sum in another order for another buffer alignment), while
    # other blocks or another checkpoint move a 6-block loss by far more than 1e-5.
    ckpt = open_checkpoint(run)
    model = load_model(ckpt)
    data = load_heldout(str(valid_jsonl), 256, tokenizer=ckpt.tokenizer, max_blocks=6, seed=ckpt.data_seed)
    assert results["valid"][str(valid_jsonl)]["loss"] == pytest.approx(heldout_loss(model, data)["loss"], rel=1e-5)
    # The exported trained model computes the same logits.
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = ckpt.tokenizer.encode(["The committee met on Tuesday to discuss the harvest."])[0]
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits[0], logits_of(model, ids), rtol=0, atol=1e-5)


def test_lfr_eval_on_a_zero3_checkpoint(trained_runs, run_cli, tmp_path, valid_jsonl):
    out = tmp_path / "results.json"
    result = run_cli(main, [trained_runs[3], "--valid", valid_jsonl, "--max-examples", 4, "--json", out])
    assert result.code == 0, result.err
    zero3 = json.loads(out.read_text())["valid"][str(valid_jsonl)]
    result = run_cli(main, [trained_runs[2], "--valid", valid_jsonl, "--max-examples", 4, "--json", out])
    zero2 = json.loads(out.read_text())["valid"][str(valid_jsonl)]
    assert zero3["tokens"] == zero2["tokens"] == 4 * 256
    assert zero3["loss"] == pytest.approx(zero2["loss"], abs=1e-5)
