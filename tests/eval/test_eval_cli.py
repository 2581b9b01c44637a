"""lfr-eval's bad-input contract: one line on stderr naming the problem, exit 2, no traceback.

Most cases need a checkpoint only as far as its ``lfr/state.json`` (inputs are checked before any
weights load), so they use a stand-in with no DeepSpeed files: no training run needed.
"""

from __future__ import annotations

import json
import shutil

import pytest
from clitools import assert_one_line_error
from crafted import state_json

from lfr_ds.config import load_config
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.tokenizer import Tokenizer, train_tokenizer
from lfr_ds.eval.cli import main
from lfr_ds.identity import dataset_digest, record, tokenizer_digest


@pytest.fixture
def stand_in(tmp_path, small_dataset, webmix_tokenizer):
    """A checkpoint directory with only lfr-ds's state, recorded as lfr-train records it: its config names
    the small dataset."""
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    (ckpt / "lfr").mkdir(parents=True)
    tok = Tokenizer(webmix_tokenizer)
    state = record(
        load_config(None, [f"data.path={small_dataset}"]),
        vocab_size=tok.vocab_size,
        tokenizer=tokenizer_digest(tok),
        dataset=dataset_digest(open_dataset(str(small_dataset))),
    )
    (ckpt / "lfr" / "state.json").write_text(state_json(step=1, **state))
    (ckpt.parent / "latest").write_text(ckpt.name)
    return ckpt.parents[1]


@pytest.fixture
def mc(tmp_path):
    def write(*lines: str):
        path = tmp_path / "mc.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        return path

    return write


GOOD_MC = json.dumps({"context": "Sky is", "choices": [" blue", " green"], "label": 0})


def test_missing_path(run_cli, tmp_path):
    assert_one_line_error(run_cli(main, [tmp_path / "nope", "--mc", "x"]), "nope", "no such file")


def test_directory_without_a_checkpoint(run_cli, tmp_path):
    assert_one_line_error(run_cli(main, [tmp_path, "--mc", "x"]), str(tmp_path), "no lfr-ds checkpoint")


def test_unfinished_checkpoint(run_cli, stand_in):
    partial = stand_in / "checkpoints" / "step_00000002.partial"
    shutil.copytree(stand_in / "checkpoints" / "step_00000001", partial)
    assert_one_line_error(run_cli(main, [partial, "--mc", "x"]), "incomplete checkpoint")


def test_damaged_state(run_cli, stand_in):
    (stand_in / "checkpoints" / "step_00000001" / "lfr" / "state.json").write_text("{")
    assert_one_line_error(run_cli(main, [stand_in, "--mc", "x"]), "state.json", "damaged")


def test_nothing_to_do(run_cli, stand_in):
    assert_one_line_error(run_cli(main, [stand_in]), "nothing to do")


def test_missing_valid_file_and_dataset(run_cli, stand_in, tmp_path):
    assert_one_line_error(run_cli(main, [stand_in, "--valid", tmp_path / "v.jsonl"]), "v.jsonl", "does not exist")
    assert_one_line_error(run_cli(main, [stand_in, "--valid", tmp_path / "v"]), "v.idx", "not found")


def test_bad_json_line_names_file_and_line(run_cli, stand_in, mc):
    path = mc(GOOD_MC, '{"context": "x", "choices": [" a", " b"], "label": 0')
    assert_one_line_error(run_cli(main, [stand_in, "--mc", path]), f"{path}:2", "not valid JSON")


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ({"context": "x", "choices": [" a", " b"]}, "no 'label' field"),
        ({"context": "x", "choices": [" a", " b"], "label": 2}, "not an index"),
        ({"context": "x", "choices": [" a", " b"], "label": True}, "'label' must be an integer"),
        ({"context": "x", "choices": [" a", ""], "label": 0}, "non-empty strings"),
        ({"context": 3, "choices": [" a", " b"], "label": 0}, "'context' must be a string"),
    ],
)
def test_bad_multiple_choice_item(run_cli, stand_in, mc, item, needle):
    path = mc(GOOD_MC, "", json.dumps(item))
    assert_one_line_error(run_cli(main, [stand_in, "--mc", path]), f"{path}:3", needle)


def test_bad_blimp_and_lambada(run_cli, stand_in, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli(main, [stand_in, "--blimp", tmp_path / "empty"]), "holds no .jsonl")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"sentence_good": "A cat."}) + "\n")
    assert_one_line_error(run_cli(main, [stand_in, "--blimp", pairs]), f"{pairs}:1", "'sentence_bad'")
    assert_one_line_error(run_cli(main, [stand_in, "--lambada", tmp_path / "l.jsonl"]), "l.jsonl", "not found")
    one_word = tmp_path / "one.jsonl"
    one_word.write_text(json.dumps({"text": "Hello"}) + "\n")
    assert_one_line_error(run_cli(main, [stand_in, "--lambada", one_word]), f"{one_word}:1", "no last word")


def test_bad_flags(run_cli, stand_in, tmp_path, mc):
    path = mc(GOOD_MC)
    assert_one_line_error(run_cli(main, [stand_in, "--mc", path, "--max-examples", 0]), "--max-examples")
    assert_one_line_error(run_cli(main, [stand_in, "--mc", path, "--batch-size", "x"]), "--batch-size")
    assert_one_line_error(
        run_cli(main, [stand_in, "--mc", path, "--json", tmp_path / "no" / "r.json"]), "does not exist"
    )
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "f").write_text("")
    assert_one_line_error(run_cli(main, [stand_in, "--export-hf", tmp_path / "used"]), "not an empty directory")


def test_checkpoint_without_deepspeed_files(run_cli, stand_in, mc):
    assert_one_line_error(run_cli(main, [stand_in, "--mc", mc(GOOD_MC)]), "DeepSpeed cannot consolidate")


def test_lost_tokenizer(run_cli, stand_in, tmp_path, mc):
    state = stand_in / "checkpoints" / "step_00000001" / "lfr" / "state.json"
    data = json.loads(state.read_text())
    data["config"]["data"]["path"] = str(tmp_path / "moved")
    state.write_text(json.dumps(data))
    assert_one_line_error(run_cli(main, [stand_in, "--mc", mc(GOOD_MC)]), "moved.meta.json", "--tokenizer")


def test_tokenizer_other_than_the_runs(run_cli, stand_in, tmp_path, mc, small_dataset, webmix_tokenizer):
    other = tmp_path / "other.model"
    train_tokenizer([str(small_dataset) + ".jsonl"], str(other), 500)
    result = run_cli(main, [stand_in, "--tokenizer", other, "--mc", mc(GOOD_MC)])
    assert_one_line_error(
        result, f"the checkpoint has tokenizer {webmix_tokenizer} (sha256", f"(pass --tokenizer {webmix_tokenizer})"
    )
