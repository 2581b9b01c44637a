"""Property-based: random values in every config field give either a one-line UserError that names a field
it was given, or a config that torch, DeepSpeed and megatron-core all accept. In-process, no process group.

"Accept" is checked by the same constructors a run calls: megatron-core's TransformerConfig for the model
shape, DeepSpeed's config validation on the assembled ds_config, torch's AdamW with the optimizer settings
it passes on (two steps, which must leave the weights finite, under the run's LR schedule), and the LFR
schedule resolved against the run's steps and batch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lfr_ds.config import ModelConfig, TrainConfig, config_from_dict, load_config
from lfr_ds.engine import build_ds_config, lr_lambda
from lfr_ds.errors import UserError
from lfr_ds.lfr.schedule import parse_schedule
from lfr_ds.model.gpt import transformer_config


def _leaves(cls, prefix: str = "") -> list[tuple[str, object]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _leaves(hint, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, hint))
    return out


FIELDS = [name for name, _ in _leaves(TrainConfig)]
#: Values near every range's edges, non-finite numbers, wrong types, and strings that are valid somewhere.
NUMBERS = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, -1, 2, 3, 4, 8, 16, 100, 256, 1024, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 0.999999, 1.0, 1.5, 1e-8, 5e-324, 1e300, math.nan, math.inf, -math.inf]),
)
WORDS = st.sampled_from(
    [
        "auto",
        "sdpa",
        "te",
        "on",
        "off",
        "bf16",
        "fp32",
        "nccl",
        "gloo",
        "shared_fs",
        "broadcast",
        "relative",
        "raw",
        "capped",
        "paper",
        "random",
        "never",
        "tiny",
        "gpt2-124m",
        "learn:2,focus:*@0.5",
        "learn:1ep,review,focus:*@0.7",
        "learn:infep,focus:*@0.5",
        "learn:1e999ep,focus:*@0.5",
        "learn:nan%,focus:*@0.5",
        "learn:5,focus:*@nan",
        "runs/x",
        "",
        " ",
        "a\0b",
        "a\nb",
        "1e3",
        "nan",
        "-inf",
        "yes",
    ]
)
GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
VALUES = st.one_of(NUMBERS, WORDS, GARBAGE)
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def _set(raw: dict, name: str, value) -> dict:
    *sections, key = name.split(".")
    node = raw
    for s in sections:
        node = node.setdefault(s, {})
    node[key] = value
    return raw


def _base() -> dict:
    return {"data": {"path": "data/train"}, "steps": 100}


def _check_error(e: UserError, given: typing.Iterable[str]) -> None:
    event("refused")
    msg = str(e)
    assert msg and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
    # The message names a field it was given (as a whole dotted name, not as part of a longer one).
    assert any(re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", msg) for name in given), (given, msg)


def _check_accepted(cfg: TrainConfig) -> None:
    """What a run does with the config before and while building: none of it may raise but a UserError."""
    event("accepted")
    for name, _ in _leaves(TrainConfig):
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        if isinstance(value, float) and name != "lfr.temperature":  # +inf temperature: uniform weights
            assert math.isfinite(value), name
    m, e = cfg.model, cfg.engine
    assert m.hidden_size % m.num_attention_heads == 0 and e.global_batch_size % e.micro_batch_size == 0
    model = dataclasses.replace(m, vocab_size=m.vocab_size or 8192)
    transformer_config(model, fused=False, bf16=False, use_cpu_initialization=True, initialize=False)
    if e.ds_config != "auto":  # a random path: the file must be refused, in one line
        with pytest.raises(UserError, match=r"engine\.ds_config"):
            build_ds_config(cfg, 1, bf16=False)
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(e, ds_config="auto"))
    ds = build_ds_config(cfg, 1, bf16=False)
    params = {k: v for k, v in ds["optimizer"]["params"].items() if k != "torch_adam"}
    weight = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([weight], **params)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    for _ in range(2):
        weight.grad = torch.ones(4)
        opt.step()
        schedule.step()
    assert torch.isfinite(weight).all()
    try:
        phases = parse_schedule(
            cfg.lfr.schedule,
            total_steps=cfg.steps,
            tokens_per_step=e.global_batch_size * m.seq_length,
            review_steps=-(-1000 // e.global_batch_size),
        )
    except UserError as err:
        _check_error(err, ["lfr.schedule"])
    else:
        assert phases[-1].end == cfg.steps


def _outcome(raw: dict, given: list[str]) -> None:
    try:
        cfg = config_from_dict(raw)
    except UserError as e:
        _check_error(e, given)
    else:
        _check_accepted(cfg)


@pytest.mark.parametrize("name", FIELDS)
@settings(FAST, max_examples=5)
@given(value=VALUES)
def test_every_field_alone(name, value):
    _outcome(_set(_base(), name, value), [name])


@settings(FAST, max_examples=120)
@given(values=st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=2, max_size=6))
def test_several_fields_together(values):
    """Cross-field rules (heads divide the width, micro divides global, clusters <= centroids, ...)."""
    raw = _base()
    for name, value in values.items():
        _set(raw, name, value)
    _outcome(raw, list(values))


@settings(FAST, max_examples=60)
@given(
    overrides=st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.text(max_size=12), WORDS), min_size=1, max_size=3)
)
def test_command_line_overrides(overrides):
    """key=value text, parsed as YAML scalars the way lfr-train's command line is."""
    items = [f"{k}={v}" for k, v in overrides.items()]
    try:
        cfg = load_config(None, ["data.path=data/train", *items])
    except UserError as e:
        _check_error(e, [*overrides, *(i for i in items if "\n" not in i)])
    else:
        _check_accepted(cfg)


MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]


@settings(FAST, max_examples=60)
@given(values=st.dictionaries(st.sampled_from(MODEL_FIELDS), VALUES, min_size=1, max_size=4))
def test_model_config_from_a_checkpoint(values):
    """lfr-eval builds ModelConfig straight from a checkpoint's JSON, with no type coercion in between."""
    try:
        model = ModelConfig(**values)
    except UserError as e:
        _check_error(e, [f"model.{k}" for k in values])
    else:
        _check_accepted(config_from_dict({**_base(), "model": dataclasses.asdict(model)}))
