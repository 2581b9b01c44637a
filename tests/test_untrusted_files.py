"""Loading a checkpoint, an index file or a dataset's caches from an untrusted path never runs code.

Each crafted file below would run ``touch MARKER`` if unpickled. Every loader must refuse it with one line
naming the file, and the marker must never appear.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from clitools import assert_one_line_error
from crafted import fake_checkpoint, object_array, phase_manifest, plain_pickle, state_json, torch_pickle

from lfr_ds import train
from lfr_ds.config import load_config
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset, sha256_file
from lfr_ds.data.sample_index import write_sample_index
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import UserError
from lfr_ds.eval import cli as eval_cli
from lfr_ds.identity import Digest, record, tokenizer_digest
from lfr_ds.lfr import inspect_index, offline
from lfr_ds.safe_load import DEEPSPEED_GLOBALS, check_checkpoint_files, load_arrays, weights_only_loads


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a crafted file ran code"


def test_weights_only_loads_refuses_a_crafted_pickle_whatever_the_caller_asks(tmp_path, marker):
    f = torch_pickle(tmp_path / "evil.pt", marker)
    real = torch.load
    with weights_only_loads(), pytest.raises(UserError, match=r"evil\.pt: refused to load"):
        torch.load(f, weights_only=False)  # what DeepSpeed passes
    assert torch.load is real


def test_checkpoint_check_names_the_file_and_the_code_it_would_run(tmp_path, marker):
    fake_checkpoint(tmp_path / "step_00000005", marker)
    with pytest.raises(UserError, match=r"mp_rank_00_model_states.pt: refused to load: the file references .*system"):
        check_checkpoint_files(tmp_path / "step_00000005")
    plain_pickle(tmp_path / "raw.pt", marker)
    with pytest.raises(UserError, match=r"raw\.pt: not a torch zip checkpoint"):
        check_checkpoint_files(tmp_path)


def test_deepspeed_types_are_the_only_ones_allowed(tmp_path):
    """The allow-list is exactly what a real DeepSpeed checkpoint needs: its own types load weights-only."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    f = tmp_path / "ds.pt"
    torch.save({"scaler": LossScaler(1.0), "stage": ZeroStageEnum(2), "map": fragment_address(numel=4, start=0)}, f)
    assert sorted(torch.serialization.get_unsafe_globals_in_checkpoint(f)) == sorted(DEEPSPEED_GLOBALS)
    check_checkpoint_files(tmp_path)
    with weights_only_loads():
        assert torch.load(f)["stage"] == ZeroStageEnum(2)


def test_lfr_eval_refuses_a_crafted_checkpoint(tmp_path, marker, run_cli, webmix_tokenizer, webmix_train):
    cfg = load_config(None, ["data.path=x", "model.preset=tiny", f"data.tokenizer={webmix_tokenizer}"])
    tok = Tokenizer(webmix_tokenizer)
    recorded = record(
        cfg, vocab_size=tok.vocab_size, tokenizer=tokenizer_digest(tok), dataset=Digest("0" * 64, "x", "fingerprint")
    )
    ckpt = fake_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000005", marker, recorded)
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(webmix_train.read_text().splitlines(keepends=True)[:20]))
    r = run_cli(eval_cli.main, [ckpt, "--valid", valid, "--json", tmp_path / "out.json"])
    assert_one_line_error(r, "mp_rank_00_model_states.pt: refused to load")
    assert not (tmp_path / "out.json").exists()


def test_lfr_train_refuses_to_resume_from_a_crafted_checkpoint(tmp_path, marker, run_cli, webmix_dataset):
    """Checked with the other inputs, before any process group: every rank refuses at once."""
    ckpt = fake_checkpoint(tmp_path / "ckpt" / "step_00000005", marker)
    r = run_cli(
        train.main,
        [f"data.path={webmix_dataset}", f"run_dir={tmp_path / 'run'}", f"checkpoint.resume={ckpt}"],
    )
    assert_one_line_error(r, "step_00000005/mp_rank_00_model_states.pt: refused to load")
    assert not (tmp_path / "run").exists()


def test_lfr_rewrite_refuses_a_loss_table_of_pickled_objects(tmp_path, marker, run_cli):
    lfr_dir = tmp_path / "step_00000005" / "lfr"
    lfr_dir.mkdir(parents=True)
    (lfr_dir / "state.json").write_text(state_json())
    object_array(tmp_path / "loss.npy", marker)
    shutil.make_archive(str(tmp_path / "arrays"), "zip", tmp_path, "loss.npy")
    (tmp_path / "arrays.zip").rename(lfr_dir / "arrays.npz")
    r = run_cli(offline.main, [tmp_path / "step_00000005", "--out", tmp_path / "x.npy"])
    assert_one_line_error(r, "arrays.npz: not an archive of plain numpy arrays")
    with pytest.raises(UserError):
        load_arrays(tmp_path / "loss.npy")
    assert not (tmp_path / "x.npy").exists()


def test_sample_index_that_is_a_pickle_is_refused(tmp_path, marker, run_cli, webmix_dataset):
    ds = open_dataset(str(webmix_dataset))
    path = tmp_path / "run" / "index" / "phase_000_random.npy"
    path.parent.mkdir(parents=True)
    write_sample_index(
        path,
        torch.arange(8).numpy(),
        phase_manifest(dataset=ds.fingerprint),
    )
    object_array(path, marker)
    manifest = json.loads(path.with_suffix(".json").read_text())  # an attacker rewrites the checksum too
    manifest["sha256"] = sha256_file(path)
    path.with_suffix(".json").write_text(json.dumps(manifest))
    r = run_cli(inspect_index.main, [path, "--data", webmix_dataset])
    assert_one_line_error(r, "phase_000_random.npy: not a numpy array file")


@pytest.mark.parametrize("craft", [plain_pickle, object_array])
def test_block_index_cache_that_is_a_pickle_is_refused(tmp_path, marker, webmix_dataset, craft):
    """megatron-core loads these caches with allow_pickle=True: lfr-ds checks them first."""
    prefix = tmp_path / "data"
    for ext in (".bin", ".idx", ".meta.json", ".doc_source.npy"):
        shutil.copy(str(webmix_dataset) + ext, str(prefix) + ext)
    ds = open_dataset(str(prefix))
    view = BlockView(ds, 256, 1234)
    cache = next(
        p for p in sorted(os.scandir(view.cache_dir), key=lambda e: e.name) if p.name.endswith("sample_index.npy")
    )
    craft(tmp_path / "evil", marker).replace(cache.path)
    with pytest.raises(UserError, match=r"sample_index\.npy: not a plain numpy array"):
        BlockView(ds, 256, 1234)
