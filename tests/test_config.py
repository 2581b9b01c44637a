"""The typed config: every field documented, overrides coerced, bad keys and values refused clearly."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools

import pytest

from lfr_ds import config
from lfr_ds.config import load_config
from lfr_ds.errors import UserError


def _dataclasses():
    return [
        obj
        for _, obj in inspect.getmembers(config, inspect.isclass)
        if dataclasses.is_dataclass(obj) and obj.__module__ == config.__name__
    ]


def test_every_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(config))
    documented = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in itertools.pairwise(body):
                if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                    documented.setdefault(node.name, set()).add(a.target.id)
    for cls in _dataclasses():
        for f in dataclasses.fields(cls):
            assert f.name in documented.get(cls.__name__, set()), f"{cls.__name__}.{f.name} has no docstring"


def test_yaml_file_plus_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  path: d\noptim:\n  lr: 6e-4\nengine:\n  zero_stage: 3\n")
    cfg = load_config(
        str(p), ["engine.zero_stage=2", "optim.grad_clip=0.5", "log.peak_tflops=null", "log.trace_blocks=true"]
    )
    assert cfg.optim.lr == 6e-4 and cfg.engine.zero_stage == 2 and cfg.optim.grad_clip == 0.5
    assert cfg.log.peak_tflops is None and cfg.log.trace_blocks is True


def test_json_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"data": {"path": "d"}, "steps": 7}')
    assert load_config(str(p)).steps == 7


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.path=d", "optim.lr=fast"], "optim.lr: expected float"),
        (["data.path=d", "engine.zero_stage=1"], "engine.zero_stage: 1"),
        (["data.path=d", "steps"], "expected key=value"),
        (["data.path=d", "model=3"], "model: expected a mapping"),
        (["data.path=d", "lfr.distribute=nfs"], "lfr.distribute"),
        (["data.path=d", "model.preset=null", "model.num_layers=2"], "model.hidden_size: required"),
        (["data.path=d", "model.num_attention_heads=3"], "does not divide"),
        ([], "data.path: required"),
    ],
)
def test_bad_values(overrides, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)
