"""Typed run configuration: one dataclass per concern, every field documented and validated.

A run is described by :class:`TrainConfig`, loaded from a YAML or JSON file plus ``key=value``
command-line overrides (see :func:`load_config`). Bad values raise :class:`~lfr_ds.errors.UserError`
naming the field, so a typo never becomes a silent default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lfr_ds.errors import UserError

#: GPT-2 family shapes (Radford et al. 2019). Parameter counts with the GPT-2 BPE vocab (50,257) and
#: 1,024 positions, tied embeddings: 124,439,808 / 354,823,168 / 774,030,080 / 1,557,611,200.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=4, hidden_size=256, num_attention_heads=4, seq_length=256),
    "gpt2-124m": dict(num_layers=12, hidden_size=768, num_attention_heads=12, seq_length=1024),
    "gpt2-345m": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, seq_length=1024),
    "gpt2-774m": dict(num_layers=36, hidden_size=1280, num_attention_heads=20, seq_length=1024),
    "gpt2-1.5b": dict(num_layers=48, hidden_size=1600, num_attention_heads=25, seq_length=1024),
}


@dataclass
class ModelConfig:
    """The GPT shape. GPT-2 architecture throughout: learned absolute positions, pre-LayerNorm,
    GELU MLP of width 4h, biases on, input and output embeddings tied."""

    preset: str | None = "tiny"
    """A name from ``PRESETS``; its shape fills every shape field left at ``None``. ``None`` = custom."""
    num_layers: int | None = None
    """Transformer layers."""
    hidden_size: int | None = None
    """Model width h."""
    num_attention_heads: int | None = None
    """Attention heads; must divide ``hidden_size``."""
    seq_length: int | None = None
    """Tokens per training sample (the block is ``seq_length + 1`` tokens: inputs plus shifted labels)."""
    vocab_size: int | None = None
    """Vocabulary size. ``None`` takes it from the dataset's tokenizer, which is what you want."""
    make_vocab_size_divisible_by: int = 128
    """Pad the embedding table to a multiple of this, as Megatron does, for fast GEMMs. 1 = no padding."""
    hidden_dropout: float = 0.0
    """Dropout after attention and MLP. GPT-2 used 0.1; short data-limited runs do better with 0."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    init_method_std: float = 0.02
    """Std of the normal weight init (GPT-2's value)."""
    layernorm_epsilon: float = 1e-5
    """LayerNorm epsilon (GPT-2's value)."""
    attention_backend: str = "auto"
    """``auto`` = Transformer Engine spec when TE imports on a GPU, else ``sdpa``; or ``sdpa`` / ``te``."""
    fused_kernels: str = "auto"
    """megatron-core's fused bias-GELU and bias-dropout-add, plus its fused cross entropy in bf16:
    ``auto`` = on GPU only (on CPU they go through torch.compile and cost 11-26 s of compiling for no
    gain); ``on`` / ``off``. Attention is fused either way (SDPA or Transformer Engine)."""
    sketch_dim: int = 16
    """Width of the random projection of each block's mean final hidden state recorded during the
    training forward pass, a Focus clustering feature (it separates kinds of text that loss alone
    mixes up). Costs one [h, 16] matmul per micro-batch and 32 bytes per block in the loss table. 0 = off."""

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise UserError(
                    f"model.preset: unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}"
                )
            for key, value in PRESETS[self.preset].items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        for key in ("num_layers", "hidden_size", "num_attention_heads", "seq_length"):
            value = getattr(self, key)
            if value is None:
                raise UserError(f"model.{key}: required when model.preset is null; set it or pick a preset")
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"model.{key}: must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"model.num_attention_heads: {self.num_attention_heads} does not divide "
                f"model.hidden_size {self.hidden_size}"
            )
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise UserError(f"model.vocab_size: must be positive, got {self.vocab_size}")
        if self.make_vocab_size_divisible_by < 1:
            raise UserError("model.make_vocab_size_divisible_by: must be >= 1")
        for key in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"model.{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.attention_backend not in ("auto", "sdpa", "te"):
            raise UserError(f"model.attention_backend: {self.attention_backend!r}; use auto, sdpa or te")
        if self.fused_kernels not in ("auto", "on", "off"):
            raise UserError(f"model.fused_kernels: {self.fused_kernels!r}; use auto, on or off")
        if self.sketch_dim < 0:
            raise UserError("model.sketch_dim: must be >= 0")

    @property
    def padded_vocab_size(self) -> int:
        if self.vocab_size is None:
            raise ValueError("vocab_size is not set yet (it comes from the dataset's tokenizer)")
        m = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // m) * m


@dataclass
class DataConfig:
    """Where the training blocks come from."""

    path: str = ""
    """Dataset prefix (``PREFIX.bin``/``PREFIX.idx``) from ``lfr-preprocess``. Required."""
    tokenizer: str | None = None
    """Tokenizer ``.model``; ``None`` = the one recorded in the dataset's sidecar. A different one is refused."""
    seed: int = 1234
    """Seeds the document shuffle that defines blocks (so block ids) and every sample-order shuffle."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to a floor; one schedule spans the whole run."""

    lr: float = 6e-4
    """Peak learning rate (GPT-2 124M: 6e-4)."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine decay as a fraction of ``lr``."""
    warmup_steps: int = 100
    """Steps of linear warmup from ``lr / warmup_steps`` to ``lr``."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2 (0.95, as GPT-3 and Megatron use, is steadier than 0.999 at large batch)."""
    eps: float = 1e-8
    """AdamW ε."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = off."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise UserError(f"optim.lr: must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"optim.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise UserError("optim.warmup_steps: must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError("optim.beta1/beta2: must be in [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.eps <= 0:
            raise UserError("optim.grad_clip and optim.weight_decay must be >= 0, optim.eps > 0")


@dataclass
class EngineConfig:
    """DeepSpeed: ZeRO stage, precision, batch geometry."""

    zero_stage: int = 2
    """ZeRO stage, 2 (shard optimizer state and gradients) or 3 (also parameters)."""
    ds_config: str = "auto"
    """DeepSpeed JSON; ``auto`` = ``ds_configs/zero{stage}.json`` on GPU, ``zero{stage}_cpu.json`` on CPU.
    Fields lfr-ds derives (batch sizes, optimizer, scheduler, clipping) must be absent or ``"auto"``."""
    precision: str = "auto"
    """``auto`` (bf16 on GPU, fp32 on CPU), ``bf16`` or ``fp32``."""
    micro_batch_size: int = 8
    """Blocks per rank per forward/backward."""
    global_batch_size: int = 32
    """Blocks per optimizer step across all ranks; must be a multiple of micro_batch_size × ranks.
    Gradient accumulation steps = global / (micro × ranks), so the data order never depends on ranks."""
    backend: str = "auto"
    """torch.distributed backend: ``auto`` (NCCL on GPU, gloo on CPU), ``nccl`` or ``gloo``."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (2, 3):
            raise UserError(f"engine.zero_stage: {self.zero_stage}; lfr-ds supports ZeRO stage 2 or 3")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"engine.precision: {self.precision!r}; use auto, bf16 or fp32")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise UserError(f"engine.backend: {self.backend!r}; use auto, nccl or gloo")
        if self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise UserError("engine.micro_batch_size and engine.global_batch_size: must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise UserError(
                f"engine.global_batch_size {self.global_batch_size}: not a multiple of engine.micro_batch_size "
                f"{self.micro_batch_size}"
            )

    def accumulation_steps(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise UserError(
                f"engine.global_batch_size {self.global_batch_size} does not divide across {world_size} ranks × "
                f"micro batch {self.micro_batch_size}; make it a multiple of {per_step}"
            )
        return self.global_batch_size // per_step


@dataclass
class CheckpointConfig:
    """Checkpointing and resume."""

    interval: int = 500
    """Save every this many steps (and at the end of the run). 0 = only at the end."""
    keep_last: int = 3
    """Keep this many most recent checkpoints; older ones are deleted after a newer one is complete."""
    resume: str = "auto"
    """``auto``: continue from ``RUN_DIR/checkpoints/latest`` if it exists, else start fresh; ``never``;
    or a checkpoint directory to resume from (an error if it holds no complete checkpoint)."""
    shared_fs: bool = True
    """All nodes see one checkpoint directory (Lustre, NFS…). ``False``: node-local disks; each node
    finalises its own shards."""

    def __post_init__(self) -> None:
        if self.interval < 0 or self.keep_last < 1:
            raise UserError("checkpoint.interval must be >= 0 and checkpoint.keep_last >= 1")


@dataclass
class LogConfig:
    """TensorBoard, console and traces."""

    interval: int = 10
    """Console log line and TensorBoard scalars every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard event files to ``RUN_DIR/tb`` (rank 0 only)."""
    peak_tflops: float | None = None
    """Per-device peak TFLOP/s for MFU. ``None`` = from the GPU name (H100/H200 989, A100 312 bf16
    dense) or, on CPU, 0.15 (a 2-core AVX2 host's 2-thread fp32 GEMM peak)."""
    trace_blocks: bool = False
    """Append every step's gathered (block id, loss, tokens) to ``RUN_DIR/trace/steps.jsonl`` (rank 0).
    Costs ~20 bytes per block per step: for tests and analysis, not for long runs."""
    progress_bar: bool = True
    """Show a progress bar with ETA on rank 0 (only when stderr is a terminal)."""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise UserError("log.interval: must be >= 1")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise UserError("log.peak_tflops: must be positive (or null for the default)")


@dataclass
class LFRConfig:
    """Which blocks to train on, phase by phase (the Learn-Focus-Review schedule)."""

    schedule: str = "random"
    """``random`` (the baseline: a seeded shuffle of all blocks, epoch after epoch, for the whole run),
    ``paper``, or a Learn-Focus-Review schedule such as ``learn:2000,focus:2000@0.5,review,focus:*@0.7``
    (grammar in :mod:`lfr_ds.lfr.schedule`)."""
    distribute: str = "shared_fs"
    """How ranks other than 0 get each phase's sample index: ``shared_fs`` (read rank 0's file after a
    barrier) or ``broadcast`` (rank 0 sends the bytes; for clusters without a shared filesystem)."""
    score: str = "relative"
    """What ranks a block's difficulty: ``relative`` = its loss minus the mean loss of the global batch it
    was recorded in (same model, same step: no drift from when it was seen), or ``raw`` = the recorded
    loss itself, as in the paper (biased towards blocks seen early, when the model was worse)."""
    selection: str = "capped"
    """How Focus drops: ``capped`` = the easiest blocks overall, but no cluster loses more than
    ``max_cluster_drop`` of its blocks (every region stays represented); ``paper`` = whole clusters,
    easiest mean perplexity first."""
    max_cluster_drop: float = 0.95
    """``capped`` only: the largest fraction of any cluster's seen blocks one Focus may drop."""
    clusters: int = 16
    """Clusters after Ward merging of the k-means centroids."""
    centroids: int = 256
    """Mini-batch k-means centroids (the first clustering level)."""
    temperature: float = 1.0
    """Focus sampling weight ∝ (relative) perplexity^(1/T): 1 samples a block e times more often per nat
    of extra loss; larger is flatter (∞ = uniform over kept blocks)."""
    length_scale: float = 1.0
    """Multiplies every absolute phase length of ``schedule`` (steps, tokens, passes, the default Review).
    For budget sweeps: the same schedule at a fraction of the tokens (``steps`` scaled alike), so a
    1-pass Learn at 0.5 is half a pass. Shares (``%``) and ``*`` follow ``steps`` by themselves."""

    def __post_init__(self) -> None:
        if self.distribute not in ("shared_fs", "broadcast"):
            raise UserError(f"lfr.distribute: {self.distribute!r}; use shared_fs or broadcast")
        if self.score not in ("relative", "raw"):
            raise UserError(f"lfr.score: {self.score!r}; use relative or raw")
        if self.selection not in ("capped", "paper"):
            raise UserError(f"lfr.selection: {self.selection!r}; use capped or paper")
        if not 0.0 < self.max_cluster_drop <= 1.0:
            raise UserError(f"lfr.max_cluster_drop: {self.max_cluster_drop} must be in (0, 1]")
        if self.clusters < 1 or self.centroids < self.clusters:
            raise UserError(f"lfr.clusters ({self.clusters}) must be >= 1 and lfr.centroids ({self.centroids}) >= clusters")
        if not self.temperature > 0:
            raise UserError(f"lfr.temperature: {self.temperature} must be positive")
        if not 0.0 < self.length_scale <= 1e6:
            raise UserError(f"lfr.length_scale: {self.length_scale} must be a positive number")


@dataclass
class EvalConfig:
    """Evaluation during training: held-out loss per source and BLiMP accuracy, to TensorBoard and
    ``RUN_DIR/eval.jsonl`` (the held-out curve ``lfr-compare`` plots)."""

    interval: int = 0
    """Evaluate every this many steps, and after the last; 0 = only after the last step."""
    valid_path: str | None = None
    """Held-out data: a dataset prefix or a raw ``.jsonl`` (tokenized with the run's tokenizer). ``None`` = none."""
    valid_blocks: int = 64
    """Held-out blocks scored per evaluation (a fixed subset: evenly spaced, or after a seeded document shuffle)."""
    valid_seed: int | None = None
    """Seed that cuts the held-out blocks (the document shuffle); ``None`` = the run's ``data.seed``. Fix it to
    score runs of different seeds on the very same blocks (``lfr-compare`` does)."""
    blimp: str | None = None
    """BLiMP directory (or one ``.jsonl``) of minimal pairs; ``None`` = none."""
    blimp_pairs: int = 10
    """Pairs taken from the start of each BLiMP file per evaluation (67 files: 670 pairs at 10)."""

    def __post_init__(self) -> None:
        if self.interval < 0 or self.valid_blocks < 1 or self.blimp_pairs < 1:
            raise UserError("eval.interval must be >= 0, eval.valid_blocks and eval.blimp_pairs >= 1")


@dataclass
class TrainConfig:
    """One training run."""

    run_dir: str = "runs/default"
    """Output directory: checkpoints, sample index files, TensorBoard, traces, the resolved config."""
    steps: int = 1000
    """Optimizer steps in the run (each ``engine.global_batch_size`` blocks)."""
    seed: int = 1234
    """Model init and dropout seed."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The GPT shape."""
    data: DataConfig = field(default_factory=DataConfig)
    """The dataset and held-out data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW and the learning-rate schedule."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """DeepSpeed: ZeRO stage, precision, batch sizes."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint interval, retention, resume."""
    log: LogConfig = field(default_factory=LogConfig)
    """TensorBoard, console, traces."""
    lfr: LFRConfig = field(default_factory=LFRConfig)
    """The data-selection schedule."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation during training."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError(f"steps: must be >= 1, got {self.steps}")
        if not self.data.path:
            raise UserError("data.path: required; set it to the dataset prefix written by lfr-preprocess")


# ---- loading ---------------------------------------------------------------------------------------


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML/JSON file (optional) plus ``a.b=value`` overrides.

    Every key is checked against the dataclasses: an unknown one is an error that suggests the closest
    valid key. Override values are parsed as YAML scalars (``8``, ``1e-3``, ``true``, ``null``).
    """
    raw: dict = {}
    if path is not None:
        raw = _read_file(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key=value, e.g. engine.micro_batch_size=4")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = _parse_scalar(value)
    return _build(TrainConfig, raw, prefix="")


def config_from_dict(raw: dict) -> TrainConfig:
    """A :class:`TrainConfig` from its ``dataclasses.asdict`` form (as saved in checkpoints)."""
    return _build(TrainConfig, raw, prefix="")


def _read_file(path: str) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"{path}: config file not found")
    try:
        text = Path(path).read_text()
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} ({first})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of config sections")
    return data


def _parse_scalar(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            valid = [prefix + k for k in fields]
            close = difflib.get_close_matches(prefix + str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
            raise UserError(f"unknown config key {prefix}{key}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, hint, prefix + key)
    return cls(**kwargs)


def _coerce(value, hint, name: str):
    """Check a value against a field's type (int, float, str, bool, or ``X | None``)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise UserError(f"{name}: may not be null")
    if isinstance(value, str) and base in (int, float):
        # YAML 1.1 reads 6e-4 (no dot) as a string; accept any number Python can parse.
        with contextlib.suppress(ValueError):
            value = float(value)
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise UserError(f"{name}: expected {base.__name__}, got {value!r}")
