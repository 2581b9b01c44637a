"""The bad-input catalogue (docs/errors.md), walked: every CLI given a bad data file, config, schedule,
checkpoint, index file or hostfile must print one line naming the thing and the fix, exit non-zero with no
traceback, and leave nothing behind.

CLIs that start in well under a second (lfr-check-hostfile, lfr-inspect-data, lfr-train-tokenizer, the
multi-node launch script) run as real console-script subprocesses. The others import torch, megatron-core
and DeepSpeed (5-10 s a start on this machine), so they run in-process through ``run_cli``, which calls the
same ``main`` behind the same ``@cli`` wrapper.
Crafted pickles are in test_untrusted_files.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from clitools import CliResult, assert_one_line_error
from crafted import phase_manifest, state_json

from lfr_ds import train
from lfr_ds.compare import cli as compare
from lfr_ds.config import load_config
from lfr_ds.data import preprocess
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.sample_index import write_sample_index
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.eval import cli as eval_cli
from lfr_ds.identity import dataset_digest, record, tokenizer_digest
from lfr_ds.lfr import inspect_index, offline
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.schedule import Phase

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IN_PROCESS = {
    "lfr-train": train.main,
    "lfr-preprocess": preprocess.main,
    "lfr-eval": eval_cli.main,
    "lfr-rewrite": offline.main,
    "lfr-inspect-index": inspect_index.main,
}


@dataclass
class Ctx:
    """What a case builds its bad input from: a scratch directory and a good dataset."""

    tmp: Path
    data: str
    tok: str
    train_jsonl: Path
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables the command runs with."""

    def setenv(self, name: str, value: str) -> Ctx:
        self.env[name] = value
        return self

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def dataset_copy(self) -> Path:
        prefix = self.tmp / "copy" / "ds"
        prefix.parent.mkdir(exist_ok=True)
        for ext in (".bin", ".idx", ".meta.json", ".doc_source.npy"):
            shutil.copy(self.data + ext, str(prefix) + ext)
        return prefix

    def index(self, dataset: str | None = None) -> Path:
        """A valid phase index in a run directory whose config names the good dataset."""
        path = self.tmp / "run" / "index" / "phase_000_random.npy"
        path.parent.mkdir(parents=True)
        self.write("run/config.json", json.dumps({"data": {"path": self.data}}))
        fingerprint = dataset or open_dataset(self.data).fingerprint
        write_sample_index(
            path,
            np.arange(16, dtype=np.uint32),
            phase_manifest(dataset=fingerprint, num_blocks=64, seq_length=256, seed=[1234, 0]),
        )
        return path

    def train_args(self, *overrides: str) -> list[str]:
        return [f"data.path={self.data}", "model.preset=tiny", f"run_dir={self.tmp / 'run'}", *overrides]


def _truncate(path: Path, by: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - by)


def _other_build_sidecar(c: Ctx) -> Path:
    prefix = c.dataset_copy()
    meta = json.loads(Path(f"{prefix}.meta.json").read_text())
    meta["idx_sha256"] = "0" * 64
    Path(f"{prefix}.meta.json").write_text(json.dumps(meta))
    return prefix


def _dataset_of_other_tokenizer(c: Ctx) -> Path:
    prefix = c.dataset_copy()
    meta = json.loads(Path(f"{prefix}.meta.json").read_text())
    meta["tokenizer"]["sha256"] = "f" * 64
    Path(f"{prefix}.meta.json").write_text(json.dumps(meta))
    return prefix


def _wrong_magic(c: Ctx) -> Path:
    prefix = c.dataset_copy()
    with open(f"{prefix}.idx", "r+b") as f:
        f.write(b"NOTMEGA!!")
    return prefix


def _truncated_bin(c: Ctx) -> Path:
    prefix = c.dataset_copy()
    _truncate(Path(f"{prefix}.bin"), 10)
    return prefix


def _tampered_index(c: Ctx) -> Path:
    path = c.index()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _index_without_manifest(c: Ctx) -> Path:
    path = c.index()
    path.with_suffix(".json").unlink()
    return path


def _index_outside_run(c: Ctx) -> Path:
    path = c.index()
    (c.tmp / "run" / "config.json").unlink()
    return path


def _zero2_checkpoint(c: Ctx) -> Path:
    return _recorded_checkpoint(c, "engine.zero_stage=2")


# ---- input formats and decoding (issues 12 and 14: readers) ---------------------------------------
_JSONL = b"".join(b'{"text": "document %d"}\n' % i for i in range(200))


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=50)
    return sink.getvalue().to_pybytes()


def _two_splits(c: Ctx) -> Path:
    c.write("snap/data/train-00000-of-00001.jsonl", _JSONL)
    return c.write("snap/data/validation-00000-of-00001.jsonl", _JSONL).parents[1]


def _preprocess_argv(make):
    return lambda c: [make(c), "-o", c.tmp / "ds", "-t", c.tok, "--no-progress", "-j", "1"]


# fmt: off
#: lfr-preprocess given damaged or unreadable input of each format: (name, input builder, needles).
_READER_CASES = [
    ("truncated-gzip", lambda c: c.write("in.jsonl.gz", _cut(gzip.compress(_JSONL))),
     ["in.jsonl.gz: the compressed stream ends early"]),
    ("truncated-zstd", lambda c: c.write("in.jsonl.zst", _cut(zstandard.compress(_JSONL))),
     ["in.jsonl.zst: the compressed stream ends early"]),
    ("truncated-parquet", lambda c: c.write("in.parquet", _cut(_parquet(pa.table({"text": ["a"] * 200})))),
     ["in.parquet: not a readable parquet file"]),
    ("parquet-no-text-column", lambda c: c.write("in.parquet", _parquet(pa.table({"body": ["a"], "id": [1]}))),
     ["in.parquet: no column 'text' (columns: body, id)", "--json-key"]),
    ("parquet-text-not-string", lambda c: c.write("in.parquet", _parquet(pa.table({"text": [1.5]}))),
     ["in.parquet: column 'text' holds double, not strings"]),
    ("lone-surrogate", lambda c: c.write("in.jsonl", '{"text": "ok"}\n{"text": "a\\udc00"}\n'),
     ["in.jsonl:2: the escape \\udc00 is half of a UTF-16 surrogate pair"]),
    ("json-nested-too-deep", lambda c: c.write("in.jsonl", '{"text": ' + "[" * 100_000 + "\n"),
     ["in.jsonl:1: not valid JSON (nested too deeply)"]),
    ("empty-directory", lambda c: c.write("corpus/.keep", "").parent, ["corpus: directory holds no input files"]),
    ("glob-matches-nothing", lambda c: c.tmp / "shard-*.parquet",
     ["shard-*.parquet: the pattern matches no input files"]),
    ("mixed-splits", _two_splits, ["snap: holds the splits train, validation; choose one with --split NAME"]),
]
# fmt: on
# ---- end of the reader block

# ---- checkpoints that do not fit the run (issue 12: resume compatibility, lfr_ds/identity.py) -------------


def _recorded_checkpoint(c: Ctx, *overrides: str, **fields) -> Path:
    """A checkpoint's lfr-ds state as lfr-train records it for ``c.train_args(*overrides)`` (``fields``
    replace recorded values), and a small loss table. No DeepSpeed files: every refusal comes first."""
    tok = Tokenizer(c.tok)
    recorded = record(
        load_config(None, c.train_args(*overrides)),
        vocab_size=tok.vocab_size,
        tokenizer=tokenizer_digest(tok),
        dataset=dataset_digest(open_dataset(c.data)),
    )
    step = c.write("ck/step_00000005/lfr/state.json", state_json(**{**recorded, **fields})).parents[1]
    np.savez(step / "lfr" / "arrays.npz", **LossTable(4, 1).arrays())
    return step


def _focus_checkpoint(c: Ctx) -> Path:
    """Step 20, the end of a focus:* phase that began at step 10."""
    phases = [Phase(0, "learn", 0, 10), Phase(1, "focus", 10, 10, 0.5)]
    return _recorded_checkpoint(c, "steps=20", step=20, phase=1, schedule=phases)


def _other_tokenizer(c: Ctx) -> Path:
    return _recorded_checkpoint(c, tokenizer={"path": "/runs/old/tok.model", "sha256": "0" * 64})


def _other_dataset(c: Ctx) -> Path:
    return _recorded_checkpoint(c, dataset="f" * 64, schedule=[Phase(0, "random", 0, 1000)])


def _damaged_state(c: Ctx) -> Path:
    c.write("ck/step_00000005/lfr/arrays.npz", b"")
    return c.write("ck/step_00000005/lfr/state.json", "{not json").parents[1]


# fmt: off
FIT_CASES = [
    ("resume-other-shape", "lfr-train",
     lambda c: c.train_args("model.num_layers=2", "model.seq_length=128",
                            f"checkpoint.resume={_recorded_checkpoint(c)}"),
     ["step_00000005: the checkpoint has 4 layers, this run 2 layers (set model.num_layers=4); the checkpoint has "
      "sequence length 256, this run sequence length 128 (set model.seq_length=256); or train from scratch"]),
    ("resume-other-batch-and-seed", "lfr-train",
     lambda c: c.train_args("engine.global_batch_size=64", "data.seed=1",
                            f"checkpoint.resume={_recorded_checkpoint(c)}"),
     ["has blocks cut with data.seed 1234", "(set data.seed=1234)", "(set engine.global_batch_size=32)"]),
    ("resume-other-dataset", "lfr-train",
     lambda c: c.train_args(f"checkpoint.resume={_recorded_checkpoint(c, dataset='f' * 64)}"),
     ["the checkpoint has dataset", "(fingerprint ffffffffffff)", "has changed since: restore it"]),
    ("resume-focus-lengthened", "lfr-train",
     lambda c: c.train_args("steps=25", "lfr.schedule=learn:10,focus:*@0.5",
                            f"checkpoint.resume={_focus_checkpoint(c)}"),
     ["steps=25: lengthens phase_001_focus from 10 to 15 steps", "keep it at 10 steps in lfr.schedule"]),
    ("eval-other-tokenizer", "lfr-eval",
     lambda c: [_other_tokenizer(c), "--tokenizer", c.tok, "--valid", c.train_jsonl],
     ["the checkpoint has tokenizer /runs/old/tok.model (sha256 000000000000)",
      "(pass --tokenizer /runs/old/tok.model)"]),
    ("rewrite-other-dataset", "lfr-rewrite", lambda c: [_other_dataset(c), "--phase", "0", "--out", c.tmp / "x.npy"],
     ["the checkpoint has dataset", "(fingerprint ffffffffffff)", "has changed since: restore it"]),
    ("rewrite-damaged-state", "lfr-rewrite", lambda c: [_damaged_state(c), "--out", c.tmp / "x.npy"],
     ["step_00000005/lfr/state.json: unreadable (Expecting property name"]),
]
# fmt: on

# ---- end of the resume-compatibility block -------------------------------------------------------------

#: (id, cli, argv builder, needles in the error line). A "!" after the CLI: run it as a real process.
# fmt: off
CASES = [
    # ---- hostfiles
    ("hostfile-missing", "lfr-check-hostfile", lambda c: [c.tmp / "hosts"], ["hosts: hostfile not found"]),
    ("hostfile-syntax", "lfr-check-hostfile", lambda c: [c.write("hosts", "node-a slots=two\n")],
     ["hosts:1: expected 'HOSTNAME slots=N'"]),
    ("hostfile-duplicate", "lfr-check-hostfile", lambda c: [c.write("hosts", "a slots=1\nb slots=1\na slots=2\n")],
     ["hosts:3: host a is already listed on line 1"]),
    ("hostfile-zero-slots", "lfr-check-hostfile", lambda c: [c.write("hosts", "# two nodes\na slots=8\nb slots=0\n")],
     ["hosts:3: b has slots=0"]),
    ("hostfile-empty", "lfr-check-hostfile", lambda c: [c.write("hosts", "# nodes go here\n\n")], ["lists no hosts"]),
    # ---- data files
    ("tokenizer-input-missing", "lfr-train-tokenizer", lambda c: [c.tmp / "none.jsonl", "-o", c.tmp / "t.model"],
     ["none.jsonl: input file does not exist"]),
    ("tokenizer-vocab-too-small", "lfr-train-tokenizer",
     lambda c: [c.train_jsonl, "-o", c.tmp / "t.model", "--vocab-size", "100"], ["--vocab-size 100"]),
    ("preprocess-bad-json", "lfr-preprocess",
     lambda c: [c.write("in.jsonl", '{"text": "ok"}\n{"text": oops}\n'), "-o", c.tmp / "ds", "-t", c.tok, "-j", "1",
                "--no-progress"], ["in.jsonl:2: not valid JSON"]),
    ("preprocess-not-utf8", "lfr-preprocess",
     lambda c: [c.write("in.jsonl", b'{"text": "caf\xe9"}\n'), "-o", c.tmp / "ds", "-t", c.tok, "--no-progress"],
     ["in.jsonl:1: not valid UTF-8"]),
    ("preprocess-tokenizer-not-a-model", "lfr-preprocess",
     lambda c: [c.train_jsonl, "-o", c.tmp / "ds", "-t", c.write("tok.model", "not a model"), "--no-progress"],
     ["tok.model: not a sentencepiece model"]),
    ("dataset-truncated-bin", "lfr-inspect-data!", lambda c: [_truncated_bin(c)], ["ds.bin", "disagrees"]),
    ("dataset-wrong-magic", "lfr-inspect-data!", lambda c: [_wrong_magic(c)], ["ds.idx", "wrong magic number"]),
    ("dataset-other-build-sidecar", "lfr-inspect-data!", lambda c: [_other_build_sidecar(c)],
     ["ds.meta.json", "checksum mismatch"]),
    ("dataset-missing", "lfr-train", lambda c: [f"data.path={c.tmp / 'nothing'}", f"run_dir={c.tmp / 'run'}"],
     ["nothing.idx: dataset file not found"]),
    # ---- blends of corpora (issue 20)
    ("dataset-blend-weight-unparsable", "lfr-train", lambda c: c.train_args(f"data.path=0.5 {c.data} x {c.data}"),
     ["data.path: weight 'x' does not parse as a number"]),
    ("dataset-blend-weight-negative", "lfr-train", lambda c: c.train_args(f"data.path=0.5 {c.data} -1 {c.tmp / 'b'}"),
     ["data.path: weight '-1' is negative"]),
    ("dataset-blend-weights-zero", "lfr-train", lambda c: c.train_args(f"data.path=0 {c.data} 0 {c.tmp / 'b'}"),
     ["data.path: the blend's weights sum to zero"]),
    ("dataset-blend-odd-tokens", "lfr-train", lambda c: c.train_args(f"data.path=0.5 {c.data} 0.5"),
     ["has 3 tokens, an odd number", "'W1 PREFIX1 W2 PREFIX2 ...'"]),
    ("dataset-blend-missing-prefix", "lfr-train",
     lambda c: c.train_args(f"data.path=0.5 {c.data} 0.5 {c.tmp / 'nothing'}"),
     ["nothing.idx: dataset file not found"]),
    ("dataset-blend-two-tokenizers", "lfr-train",
     lambda c: c.train_args(f"data.path=0.5 {c.data} 0.5 {_dataset_of_other_tokenizer(c)}"),
     ["a blend needs one tokenizer"]),
    ("config-empty-setting", "lfr-train", lambda c: c.train_args("lfr.schedule="),
     ["lfr.schedule: ''; give random, paper or phases such as learn:2000,focus:*@0.5"]),
    # ---- configs
    ("config-unknown-key", "lfr-train", lambda c: c.train_args("optim.learning_rate=1e-3"),
     ["unknown config key optim.learning_rate"]),
    ("config-bad-yaml", "lfr-train", lambda c: ["--config", c.write("cfg.yaml", "data: [unclosed\n")],
     ["cfg.yaml: not valid YAML"]),
    ("config-file-missing", "lfr-train", lambda c: ["--config", c.tmp / "none.yaml"],
     ["none.yaml: config file not found"]),
    ("config-bad-type", "lfr-train", lambda c: c.train_args("steps=many"), ["steps", "'many'"]),
    ("config-batch-split", "lfr-train",
     lambda c: c.train_args("engine.global_batch_size=10", "engine.micro_batch_size=4"),
     ["engine.global_batch_size 10: not a multiple of engine.micro_batch_size 4"]),
    ("ds-config-derived-key", "lfr-train",
     lambda c: c.train_args(f"engine.ds_config={c.write('ds.json', json.dumps({'train_batch_size': 8}))}"),
     ["ds.json: sets 'train_batch_size', which lfr-ds derives", "remove it"]),
    # ---- schedules
    ("schedule-sum", "lfr-train", lambda c: c.train_args("steps=10", "lfr.schedule=learn:4,focus:4@0.5"),
     ["add up to 8 steps but the run has steps=10"]),
    ("schedule-starts-with-focus", "lfr-train", lambda c: c.train_args("steps=10", "lfr.schedule=focus:*@0.5"),
     ["must start with learn"]),
    ("schedule-focus-without-drop", "lfr-train", lambda c: c.train_args("steps=10", "lfr.schedule=learn:5,focus:*"),
     ["a focus phase needs a drop fraction"]),
    ("schedule-unknown-kind", "lfr-train", lambda c: c.train_args("steps=10", "lfr.schedule=learn:5,cram:*"),
     ["unknown kind 'cram'"]),
    # ---- schedules: kept passes and @auto (issue 11)
    ("schedule-unknown-length-unit", "lfr-train",
     lambda c: c.train_args("steps=10", "lfr.schedule=learn:5,focus:2xp@0.5,review:*"),
     ["unknown length unit 'xp'"]),
    ("schedule-auto-not-focus", "lfr-train", lambda c: c.train_args("steps=10", "lfr.schedule=learn:5,review:*@auto"),
     ["@auto chooses a Focus drop fraction; only focus phases take it"]),
    ("schedule-kp-on-review", "lfr-train",
     lambda c: c.train_args("steps=10", "lfr.schedule=learn:5,focus:*@0.5,review:1kp"),
     ["kp (passes over the blocks a Focus keeps) is a Focus length; use ep for review"]),
    ("schedule-kp-without-star", "lfr-train",
     lambda c: c.train_args("steps=10", "lfr.schedule=learn:5,focus:1kp@0.5,review:1"),
     ["a later phase of length '*' must absorb the difference"]),
    # ---- checkpoints
    ("resume-no-checkpoint", "lfr-train", lambda c: c.train_args(f"checkpoint.resume={c.write('empty/x', '').parent}"),
     ["checkpoint.resume", "no complete lfr-ds checkpoint"]),
    ("resume-damaged-state", "lfr-train",
     lambda c: c.train_args(f"checkpoint.resume={c.write('ck/step_00000005/lfr/state.json', '{}').parents[1]}"),
     ["step_00000005/lfr/state.json: unreadable"]),
    ("resume-other-zero-stage", "lfr-train",
     lambda c: c.train_args("engine.zero_stage=3", f"checkpoint.resume={_zero2_checkpoint(c)}"),
     ["the checkpoint has ZeRO stage 2, this run ZeRO stage 3 (set engine.zero_stage=2)"]),
    ("eval-partial-checkpoint", "lfr-eval",
     lambda c: [c.write("ckpts/step_00000005.partial/lfr/state.json", "{}").parents[1], "--valid", c.train_jsonl],
     ["step_00000005.partial: an incomplete checkpoint"]),
    ("eval-not-a-checkpoint", "lfr-eval", lambda c: [c.write("nock/notes.txt", "").parent, "--valid", c.train_jsonl],
     ["nock: holds no lfr-ds checkpoint"]),
    ("eval-damaged-state", "lfr-eval",
     lambda c: [c.write("ckpts/step_00000005/lfr/state.json", "{not json").parents[1], "--valid", c.train_jsonl],
     ["state.json: unreadable"]),
    ("rewrite-not-a-checkpoint", "lfr-rewrite", lambda c: [c.tmp, "--out", c.tmp / "x.npy"],
     ["not an lfr-ds checkpoint (no lfr/state.json)"]),
    # ---- index files
    ("index-tampered", "lfr-inspect-index", lambda c: [_tampered_index(c)],
     ["phase_000_random.npy: checksum does not match its manifest"]),
    ("index-no-manifest", "lfr-inspect-index", lambda c: [_index_without_manifest(c)],
     ["phase_000_random.json is missing"]),
    ("index-other-dataset", "lfr-inspect-index", lambda c: [c.index(dataset="f" * 64)],
     ["belongs to another dataset"]),
    ("index-outside-run", "lfr-inspect-index", lambda c: [_index_outside_run(c)],
     ["not inside a run directory", "--data"]),
    # ---- input formats and decoding (issues 12 and 14: readers) -----------------------------------
    *[(f"preprocess-{name}", "lfr-preprocess", _preprocess_argv(make), needles)
      for name, make, needles in _READER_CASES],
    ("tokenizer-lone-surrogate", "lfr-train-tokenizer",
     lambda c: [c.write("in.jsonl", '{"text": "ok"}\n{"text": "\\ud800"}\n'), "-o", c.tmp / "t.model"],
     ["in.jsonl:2: the escape \\ud800 is half of a UTF-16 surrogate pair"]),
    ("tokenizer-truncated-zstd", "lfr-train-tokenizer",
     lambda c: [c.write("in.jsonl.zst", _cut(zstandard.compress(_JSONL))), "-o", c.tmp / "t.model"],
     ["in.jsonl.zst: the compressed stream ends early"]),
    # ---- end of the reader block
    *FIT_CASES,
]
# fmt: on


# ==== issue 12: config values, the launch environment, third-party errors, resources (begin) ====


def _tiny_dataset(c: Ctx) -> Path:
    """A dataset of one short document: fewer tokens than one block of the tiny preset."""
    prefix = c.tmp / "tiny" / "ds"
    prefix.parent.mkdir()
    preprocess.preprocess([str(c.write("tiny.jsonl", '{"text": "a few words"}\n'))], str(prefix), c.tok, progress=False)
    return prefix


def _rewrite_checkpoint(c: Ctx, **model) -> Path:
    """An lfr/ directory as lfr-rewrite reads it (state and loss table), its config's model changed by ``model``."""
    cfg = dataclasses.asdict(load_config(None, [f"data.path={c.data}"]))
    cfg["model"].update(model)
    lfr = c.tmp / "ck" / "step_00000004" / "lfr"
    lfr.mkdir(parents=True)
    (lfr / "state.json").write_text(state_json(config=cfg, step=4, schedule=[]))
    np.savez(lfr / "arrays.npz", **LossTable(64, 1).arrays())
    return lfr.parent


_HUGE_MODEL = (
    "model.preset=null",
    "model.num_layers=1024",
    "model.hidden_size=65536",
    "model.num_attention_heads=64",
    "model.seq_length=64",
)

# fmt: off
CASES += [
    # ---- config values: non-finite, out of range, cross-field, malformed paths
    ("config-non-finite-lr", "lfr-train!", lambda c: c.train_args("optim.lr=nan"),
     ["optim.lr: must be a finite number in (0.0, 1.0], got nan"]),
    ("config-infinite-eps", "lfr-train", lambda c: c.train_args("optim.eps=.inf"),
     ["optim.eps: must be a finite number"]),
    ("config-seed-out-of-range", "lfr-train", lambda c: c.train_args("data.seed=-1"),
     ["data.seed: must be an integer in [0, 4294967295], got -1"]),
    ("config-heads-do-not-divide", "lfr-train", lambda c: c.train_args("model.num_attention_heads=3"),
     ["model.num_attention_heads: 3 does not divide model.hidden_size 256"]),
    ("config-path-with-nul", "lfr-train", lambda c: [*c.train_args(), "run_dir=run\0x"],
     ["run_dir: must be a non-empty path without NUL bytes"]),
    ("config-schedule-infinite-length", "lfr-train",
     lambda c: c.train_args("steps=10", "lfr.schedule=learn:infep,focus:*@0.5"),
     ["phase 1 ('learn:infep'): length 'infep' is not a finite number"]),
    ("config-sequence-longer-than-the-data", "lfr-train",
     lambda c: [f"data.path={_tiny_dataset(c)}", "model.preset=tiny", f"run_dir={c.tmp / 'run'}"],
     ["model.seq_length 256", "not one block of 257"]),
    ("config-run-dir-is-a-file", "lfr-train", lambda c: [*c.train_args(), f"run_dir={c.write('taken', '')}"],
     ["run_dir: ", "taken exists and is not a directory"]),
    ("config-eval-path-missing", "lfr-train", lambda c: c.train_args(f"eval.valid_path={c.tmp / 'held.jsonl'}"),
     ["eval.valid_path: ", "held.jsonl not found"]),
    ("ds-config-deepspeed-rejects-a-field", "lfr-train",
     lambda c: c.train_args(
         f"engine.ds_config={c.write('ds.json', json.dumps({'zero_optimization': {'stage': 2, 'bogus': 1}}))}"),
     ["engine.ds_config: ", "ds.json: bogus: Extra inputs are not permitted"]),
    ("rewrite-override-non-finite", "lfr-rewrite",
     lambda c: [_rewrite_checkpoint(c), "--out", c.tmp / "x.npy", "lfr.temperature=nan"],
     ["lfr.temperature: nan must be positive"]),
    ("rewrite-checkpoint-config-invalid", "lfr-rewrite",
     lambda c: [_rewrite_checkpoint(c, hidden_dropout=2.0), "--out", c.tmp / "x.npy"],
     ["lfr/state.json: the run's config is not valid here", "model.hidden_dropout"]),
    ("eval-checkpoint-model-invalid", "lfr-eval",
     lambda c: [c.write("ck/step_00000005/lfr/state.json", state_json(config={"model": {"num_layers": 0}})).parents[1],
                "--valid", c.train_jsonl], ["config.model is not valid", "model.num_layers"]),
    # ---- the launch environment
    ("env-world-size-not-a-number", "lfr-train", lambda c: c.setenv("WORLD_SIZE", "two").train_args(),
     ["WORLD_SIZE='two': must be an integer", "unset it"]),
    ("env-rank-beyond-world-size", "lfr-train", lambda c: c.setenv("WORLD_SIZE", "2").setenv("RANK", "2").train_args(),
     ["RANK='2': must be an integer in [0, 1]"]),
    ("env-local-rank-beyond-rank", "lfr-train",
     lambda c: c.setenv("WORLD_SIZE", "2").setenv("RANK", "0").setenv("LOCAL_RANK", "1").setenv("LOCAL_WORLD_SIZE", "2")
     .train_args(),
     ["RANK=0, LOCAL_RANK=1, LOCAL_WORLD_SIZE=2, WORLD_SIZE=2: this node's ranks would run from -1 to 0"]),
    ("env-node-past-world-size", "lfr-train",
     lambda c: c.setenv("WORLD_SIZE", "4").setenv("RANK", "3").setenv("LOCAL_RANK", "0").setenv("LOCAL_WORLD_SIZE", "2")
     .train_args(), ["this node's ranks would run from 3 to 4, outside [0, 3]", "unset them to run one process"]),
    ("env-master-port", "lfr-train", lambda c: c.setenv("MASTER_PORT", "http").train_args(), ["MASTER_PORT='http'"]),
    ("env-master-addr-unresolvable", "lfr-train", lambda c: c.setenv("MASTER_ADDR", "node-zero.invalid").train_args(),
     ["MASTER_ADDR='node-zero.invalid': does not resolve"]),
    ("env-ds-accelerator", "lfr-train", lambda c: c.setenv("DS_ACCELERATOR", "tpu").train_args(),
     ["DS_ACCELERATOR='tpu': lfr-ds runs on"]),
    # ---- resources (a full disk and allocation failures: tests/test_edges.py)
    ("memory-model-cannot-fit", "lfr-train", lambda c: c.train_args(*_HUGE_MODEL),
     ["GiB of host memory per rank (runtime", "GiB is free; use engine.zero_stage=3 (about",
      "more ranks (ZeRO-3 divides the model among them)", "or a smaller model.preset or model.*"]),
    # ---- probes (issue 21)
    ("probe-set-too-small", "lfr-train", lambda c: c.train_args(f"lfr.probe_path={_tiny_dataset(c)}"),
     ["lfr.probe_path: ", "holds 0 blocks of 257 tokens, fewer than 64", "lfr-preprocess --probe-fraction"]),
    ("probe-set-too-large", "lfr-train", lambda c: c.train_args(f"lfr.probe_path={c.data}"),
     ["lfr.probe_path: ", "more than half the training data's", "split off a smaller fraction"]),
    ("absorbed-alpha-out-of-range", "lfr-train", lambda c: c.train_args("lfr.absorbed_alpha=0.7"),
     ["lfr.absorbed_alpha: must be a finite number in (0.0, 0.5], got 0.7"]),
]
# fmt: on


def test_compare_checks_the_arms_config_before_writing_anything(run_cli, tmp_path):
    result = run_cli(compare.main, ["--out", tmp_path / "cmp", "--preset", "smoke", "optim.lr=inf"])
    assert_one_line_error(result, "optim.lr: must be a finite number", "got inf")
    assert result.code == 2 and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("arms", ["random,oracle", "random,lfr,dedup"])
def test_compare_refuses_a_ceiling_without_copy_labels(run_cli, tmp_path, arms):
    result = run_cli(
        compare.main, ["--out", tmp_path / "cmp", "--preset", "smoke", "--arms", arms, "--redundancy", "0"]
    )
    assert_one_line_error(result, f"--arms {arms}: ", "need the redundancy builder's copy labels", "--redundancy R > 0")
    assert result.code == 2 and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("read_only", ["run_dir", "data.path"])
def test_read_only_directories_are_named_before_any_process_starts(
    read_only, run_cli, tmp_path, monkeypatch, webmix_dataset, webmix_tokenizer, webmix_train
):
    """A read-only directory for the run, or beside a dataset whose block index is not cached yet (rank 0
    writes it there). Running as root, the test makes the directory read-only by answering os.access."""
    c = Ctx(tmp_path, str(webmix_dataset), str(webmix_tokenizer), webmix_train)
    prefix = c.dataset_copy()  # no block-index cache beside it yet
    blocked = prefix.parent if read_only == "data.path" else tmp_path
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != blocked and real_access(p, mode))
    run_dir = tmp_path / "run" if read_only == "run_dir" else tmp_path / "writable" / "run"
    (tmp_path / "writable").mkdir()
    result = run_cli(train.main, [f"data.path={prefix}", f"run_dir={run_dir}"])
    assert_one_line_error(result, f"{read_only}: ", f"{blocked} is read-only to this user")
    assert not run_dir.exists() and not Path(f"{prefix}.lfr_cache").exists()


# ==== issue 12: config values, the launch environment, third-party errors, resources (end) ====


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _run(cli: str, argv: list, run_cli) -> CliResult:
    if not cli.endswith("!") and cli in IN_PROCESS:
        return run_cli(IN_PROCESS[cli], argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(BIN / cli.rstrip("!")), *map(str, argv)], capture_output=True, text=True, env=env, timeout=300
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize(("cli", "make", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(cli, make, needles, tmp_path, run_cli, webmix_dataset, webmix_tokenizer, webmix_train, monkeypatch):
    ctx = Ctx(tmp_path, str(webmix_dataset), str(webmix_tokenizer), webmix_train)
    argv = make(ctx)
    for name, value in ctx.env.items():
        monkeypatch.setenv(name, value)
    before = _snapshot(tmp_path)
    result = _run(cli, argv, run_cli)
    assert_one_line_error(result, *needles)
    assert result.code == 2
    assert _snapshot(tmp_path) == before, "a failed command left files behind"


def test_catalogue_covers_every_cli_and_kind_of_input():
    clis = {c[1].rstrip("!") for c in CASES}
    assert clis >= {
        "lfr-check-hostfile",
        "lfr-train-tokenizer",
        "lfr-preprocess",
        "lfr-inspect-data",
        "lfr-train",
        "lfr-eval",
        "lfr-rewrite",
        "lfr-inspect-index",
    }
    kinds = {c[0].split("-")[0] for c in CASES}
    assert kinds >= {
        "hostfile",
        "tokenizer",
        "preprocess",
        "dataset",
        "config",
        "schedule",
        "resume",
        "index",
    }
    assert len(CASES) >= 25
    doc = (ROOT / "docs" / "errors.md").read_text()
    for cli in clis:
        assert f"## {cli}" in doc, f"docs/errors.md has no section for {cli}"


def test_multinode_script_checks_the_hostfile_before_launching(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=1\nnode-a slots=1\n")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DATA": "x", "HOSTFILE": str(hosts), "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "launch_scripts" / "gpt2-124m_multinode.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert_one_line_error(
        CliResult(proc.returncode, proc.stdout, proc.stderr), "hosts:2: host node-a is already listed"
    )
    assert proc.returncode == 2


def test_good_hostfile_passes(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# the cluster\nnode-a slots=8\n\nnode-b slots=8  # spare\n")
    proc = subprocess.run([str(BIN / "lfr-check-hostfile"), str(hosts)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr
    assert proc.stdout == f"{hosts}: 2 node(s), 16 slots (node-a=8, node-b=8)\n"
