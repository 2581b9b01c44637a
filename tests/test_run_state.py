"""The run's on-disk records (lfr_ds/run_state.py): the committed experiment records still read and write
back byte for byte, damaged records are refused in one line, and the rewrite digest is the one recorded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from crafted import phase_manifest, state_json

from lfr_ds.config import LFRConfig
from lfr_ds.errors import UserError
from lfr_ds.lfr.drop_mask import write_drop_mask
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.rewriter import Rewriter, declared_settings
from lfr_ds.lfr.schedule import Phase
from lfr_ds.run_state import GuardState, PhaseManifest, RunState

RECORDS = Path(__file__).resolve().parents[1] / "docs" / "experiments"
MANIFESTS = sorted(RECORDS.glob("*/*/index/phase_*.json"))


def test_the_committed_records_are_there():
    kinds = {json.loads(p.read_text())["kind"] for p in MANIFESTS}
    assert len(MANIFESTS) > 30 and kinds == {"random", "learn", "focus", "review"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(RECORDS)))
def test_committed_manifests_read_and_write_back_unchanged(path):
    """Every manifest docs/experiments holds (shuffles, Focus with and without kp, @auto) reads as a
    PhaseManifest whose JSON is the file's, field for field: the optional fields stay optional."""
    raw = json.loads(path.read_text())
    assert PhaseManifest.from_json(raw, str(path)).to_json() == raw


@pytest.mark.parametrize(
    "path",
    [p for p in MANIFESTS if json.loads(p.read_text())["kind"] != "focus"],
    ids=lambda p: str(p.relative_to(RECORDS)),
)
def test_declared_digest_is_the_recorded_one(path):
    """The digest the rewriter computes now, from the inputs a committed manifest records, is the one that run
    recorded: a resumed or re-run comparison reuses its files instead of rewriting them."""
    m = PhaseManifest.from_json(json.loads(path.read_text()), str(path))
    phase = Phase(m.index, m.kind, m.start_step, m.steps, m.drop_fraction)
    rewriter = Rewriter(
        path.parent,
        LFRConfig(),
        m.seed[0],
        m.dataset,
        [],
        np.zeros(m.num_blocks, dtype=np.int64),
        m.seq_length,
        m.global_batch_size,
    )
    assert rewriter.digest(phase, None) == m.inputs_sha256


def _digest_as_hand_listed(
    phase: Phase, seed: int, dataset: str, global_batch: int, table: LossTable, options: LFRConfig
) -> str:
    """rewriter.inputs_digest as it was before the digest was declared (commit 7997273), verbatim."""
    settings = [phase.kind, phase.index, phase.start, phase.steps, phase.drop, seed, dataset, global_batch]
    if phase.kind == "focus" and options is not None:
        settings += [
            options.score,
            options.selection,
            options.max_cluster_drop,
            options.clusters,
            options.centroids,
            options.temperature,
        ]
        if phase.auto_drop or phase.kept_passes is not None:
            settings += [phase.auto_drop, phase.kept_passes, options.auto_max_drop if phase.auto_drop else None]
        if options.weighting != "perplexity":
            settings.append(options.weighting)
    h = hashlib.sha256(json.dumps(settings).encode())
    if table is not None and phase.kind == "focus":
        for arr in table.arrays().values():
            h.update(np.ascontiguousarray(arr))
    return h.hexdigest()


@pytest.mark.parametrize(
    "phase",
    [
        Phase(1, "focus", 10, 20, 0.5),
        Phase(1, "focus", 10, 20, 0.0, auto_drop=True),
        Phase(1, "focus", 10, 20, 0.5, kept_passes=1.0),
        Phase(3, "focus", 40, 7, 0.0, auto_drop=True, kept_passes=2.0),
        Phase(2, "review", 30, 10),
    ],
)
@pytest.mark.parametrize(
    "options",
    [
        # Every record made before the hand-listed digest was retired drew iid (the default until issue 25).
        LFRConfig(draw="iid"),
        LFRConfig(
            score="raw", selection="paper", max_cluster_drop=0.5, clusters=4, centroids=8, temperature=2.0, draw="iid"
        ),
        LFRConfig(weighting="learnable", auto_max_drop=0.3, draw="iid"),
        LFRConfig(distribute="broadcast", length_scale=0.5, schedule="paper", draw="iid"),
    ],
)
def test_declared_digest_equals_the_hand_listed_one(phase, options):
    """Focus digests need a loss table, which the committed records do not keep: here the declared digest is
    checked against the hand-listed function it replaced, over the settings' conditional inclusions."""
    table = LossTable(8, 4)
    table.loss[:] = np.arange(8)
    rewriter = Rewriter(Path("."), options, 1234, "f" * 64, [], np.zeros(8, dtype=np.int64), 64, 32)
    assert rewriter.digest(phase, table) == _digest_as_hand_listed(phase, 1234, "f" * 64, 32, table, options)


def test_every_lfr_setting_declares_whether_it_changes_the_order():
    """A new LFRConfig field must say whether a phase file depends on it; otherwise a run that changed it
    would silently reuse a stale file."""
    for f in dataclasses.fields(LFRConfig):
        assert "digest" in f.metadata, f"LFRConfig.{f.name}: declare it IN_*_DIGEST or not_in_digest(why)"
        role = f.metadata["digest"]
        assert role in ("focus", "focus-if-changed", "auto", "focus-file-if-set") or (
            role is None and f.metadata["why"]
        ), f.name


def test_a_changed_setting_changes_the_digest_and_a_transport_setting_does_not(tmp_path):
    phase = Phase(1, "focus", 10, 20, 0.5, auto_drop=True)
    base = declared_settings(phase, LFRConfig())
    mask = tmp_path / "drop.npy"
    write_drop_mask(mask, np.arange(20) % 3 == 0)
    for f in dataclasses.fields(LFRConfig):
        if f.metadata["digest"] is None:
            continue
        other = {
            "score": "raw",
            "selection": "paper",
            "max_cluster_drop": 0.9,
            "clusters": 8,
            "centroids": 32,
            "temperature": 3.0,
            "weighting": "learnable",
            "auto_max_drop": 0.5,
            "blend": "free",
            "drop_mask": str(mask),
            "absorbed_alpha": 0.2,
            "draw": "iid",
        }[f.name]
        assert declared_settings(phase, LFRConfig(**{f.name: other})) != base, f.name
    assert (
        declared_settings(phase, LFRConfig(distribute="broadcast", length_scale=2.0, probe_path="p", probe_blocks=4))
        == base
    )


def test_a_drop_mask_enters_the_digest_by_its_content_not_its_path(tmp_path):
    phase = Phase(1, "focus", 10, 20, 0.5)
    a, b = tmp_path / "a.npy", tmp_path / "moved" / "b.npy"
    b.parent.mkdir()
    write_drop_mask(a, np.arange(20) % 3 == 0)
    b.write_bytes(a.read_bytes())
    assert declared_settings(phase, LFRConfig(drop_mask=str(a))) == declared_settings(
        phase, LFRConfig(drop_mask=str(b))
    )
    write_drop_mask(b, np.arange(20) % 3 == 1)
    assert declared_settings(phase, LFRConfig(drop_mask=str(a))) != declared_settings(
        phase, LFRConfig(drop_mask=str(b))
    )
    # Unset, it adds nothing: the digests of runs made before the hook existed stay the same.
    assert len(declared_settings(phase, LFRConfig(drop_mask=str(a)))) == len(declared_settings(phase, LFRConfig())) + 1


STATE_FIELDS = [f.name for f in dataclasses.fields(RunState) if not f.metadata.get("optional")]
GUARD = GuardState(skipped=[7, 8], rewinds=1, spikes=2, phase=0, losses=[6.5, 6.25], in_phase=1, diverged=0)
#: A guard state from before issue 27: no ``in_phase`` (its window was the phase's), no ``diverged``.
OLD_GUARD = GuardState(skipped=[7, 8], rewinds=1, spikes=2, phase=0, losses=[6.5, 6.25])


def test_the_optional_state_fields_are_the_guards():
    assert [f.name for f in dataclasses.fields(RunState) if f.metadata.get("optional")] == ["guard"]


@pytest.mark.parametrize("name", STATE_FIELDS)
def test_a_state_missing_a_field_is_refused_in_one_line(name):
    state = json.loads(state_json())
    del state[name]
    with pytest.raises(UserError, match=rf"state.json: unreadable \(no '{name}'\); the checkpoint is damaged"):
        RunState.from_json(state, "ck/lfr/state.json")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("step", "5"),
        ("step", True),
        ("schedule", {}),
        ("tokenizer", 1),
        ("config", []),
        ("schedule", [{"kind": "random"}]),
        ("phase", 3),
    ],
)
def test_a_state_with_a_wrong_field_is_refused_in_one_line(name, value):
    state = json.loads(state_json())
    state[name] = value
    with pytest.raises(UserError, match=r"state.json: unreadable \(.*\); the checkpoint is damaged"):
        RunState.from_json(state, "ck/lfr/state.json")


def test_a_state_reads_back_what_was_written():
    text = state_json(
        tokenizer={"path": "t.model", "sha256": "0" * 64},
        schedule=[Phase(0, "learn", 0, 5), Phase(1, "focus", 5, 5, 0.5, kept_passes=1.0)],
        phase=1,
    )
    state = RunState.from_json(json.loads(text), "x")
    assert state.schedule[1] == Phase(1, "focus", 5, 5, 0.5, kept_passes=1.0)
    assert json.dumps(state.to_json()) == text


def test_an_older_state_without_later_phase_fields_reads():
    """Checkpoints from before @auto and kp record phases without auto_drop, kept_passes and rest."""
    state = json.loads(state_json())
    state["schedule"] = [{"index": 0, "kind": "random", "start": 0, "steps": 1000, "drop": 0.0}]
    assert RunState.from_json(state, "x").schedule == [Phase(0, "random", 0, 1000)]


def test_a_state_without_the_guard_reads_and_writes_back_without_it():
    """Checkpoints from before the training guard have no 'guard': none is assumed, and none is written."""
    state = RunState.from_json(json.loads(state_json()), "x")
    assert state.guard is None and "guard" not in state.to_json()


@pytest.mark.parametrize("guard", [GUARD, OLD_GUARD])
def test_the_guard_state_reads_back_what_was_written(guard):
    text = state_json(guard=guard)
    state = RunState.from_json(json.loads(text), "x")
    assert state.guard == guard and json.dumps(state.to_json()) == text
    assert ("in_phase" in text) == (guard.in_phase is not None)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(GuardState) if not f.metadata.get("optional")])
def test_a_guard_state_missing_a_field_is_refused_in_one_line(name):
    state = json.loads(state_json(guard=GUARD))
    del state["guard"][name]
    with pytest.raises(
        UserError, match=rf"state.json \(its 'guard'\): unreadable \(no '{name}'\); the checkpoint is damaged"
    ):
        RunState.from_json(state, "ck/lfr/state.json")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("skipped", [7.5]),
        ("skipped", 7),
        ("rewinds", "1"),
        ("spikes", True),
        ("phase", None),
        ("losses", ["6.5"]),
        ("in_phase", 1.5),
        ("diverged", "0"),
    ],
)
def test_a_guard_state_with_a_wrong_field_is_refused_in_one_line(name, value):
    state = json.loads(state_json(guard=GUARD))
    state["guard"][name] = value
    with pytest.raises(UserError, match=rf"\(its 'guard'\): unreadable \('{name}' is not of type .*\); the checkpoint"):
        RunState.from_json(state, "ck/lfr/state.json")


def test_a_guard_state_that_is_not_an_object_is_refused_in_one_line():
    state = json.loads(state_json())
    state["guard"] = [7, 8]
    with pytest.raises(UserError, match=r"state.json: unreadable \('guard' is not of type"):
        RunState.from_json(state, "ck/lfr/state.json")


REQUIRED = [f.name for f in dataclasses.fields(PhaseManifest) if not f.metadata.get("optional")]


@pytest.mark.parametrize("name", [n for n in REQUIRED if n != "format"])
def test_a_manifest_missing_a_field_is_refused_in_one_line(name):
    manifest = dataclasses.replace(phase_manifest(), length=4, sha256="0" * 64).to_json()
    del manifest[name]
    with pytest.raises(UserError, match=rf"p.json: unreadable \(no '{name}'\); delete the pair and re-run the rewrite"):
        PhaseManifest.from_json(manifest, "p.json")


def test_a_foreign_manifest_is_named_as_such():
    with pytest.raises(UserError, match="not an lfr-ds sample index manifest"):
        PhaseManifest.from_json({"format": "other/1"}, "p.json")
    manifest = phase_manifest().to_json()
    manifest["kept"] = 1.5
    with pytest.raises(UserError, match=r"unreadable \('kept' is not of type int\)"):
        PhaseManifest.from_json(manifest, "p.json")
