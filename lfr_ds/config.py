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
import math
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lfr_ds.data.blend import blend_prefixes
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

#: Seeds feed numpy's RandomState (megatron-core's document shuffle) and torch's generators: both take
#: [0, 2**32 - 1].
MAX_SEED = 2**32 - 1
#: Token ids are int32 in megatron-core's datasets and embedding lookups.
MAX_VOCAB = 2**31 - 1
#: Steps, intervals and counts are stored as int32 in the loss table and the checkpoints' arrays.
MAX_COUNT = 2**31 - 1


# ---- validation helpers: every message names the field and the accepted range, on one line ---------


def check_int(name: str, value: object, low: int, high: int) -> None:
    """``value`` is an int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name}: must be an integer in [{low}, {high}], got {value!r}")


def check_number(
    name: str, value: object, low: float, high: float, *, open_low: bool = False, open_high: bool = False
) -> None:
    """``value`` is a finite number in the interval (NaN and ±inf are refused: torch and DeepSpeed
    would accept some of them and fail, or silently train on NaN, later)."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low < value if open_low else low <= value)
        and (value < high if open_high else value <= high)
    )
    if not ok:
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise UserError(f"{name}: must be a finite number in {interval}, got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"{name}: {value!r}; use {', '.join(choices[:-1])} or {choices[-1]}")


def check_path(name: str, value: object, *, optional: bool = False) -> None:
    """A non-empty path string without NUL bytes (which every OS call refuses with a ValueError)."""
    if optional and value is None:
        return
    if not isinstance(value, str) or not value or "\0" in value:
        raise UserError(f"{name}: must be a non-empty path without NUL bytes, got {value!r}")


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
    sketch_dim: int = 0
    """Width of the random projection of each block's mean final hidden state recorded during the
    training forward pass, an optional Focus clustering feature; 0 = off (the default). Costs one
    [h, dim] matmul per micro-batch and 2 × dim bytes per block in the loss table (16 = 3.2 GB more at
    100M blocks). Off because it did not change what Focus drops or draws: on the planted corpus and on
    webmix with 50% copies (``bench/selection.py``), see docs/lfr.md "The loss table"."""

    def __post_init__(self) -> None:
        if self.preset is not None:
            if not isinstance(self.preset, str) or self.preset not in PRESETS:
                raise UserError(f"model.preset: unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
            for key, value in PRESETS[self.preset].items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        # Upper bounds are far past any GPT-2-family shape; they keep sizes inside what megatron-core
        # indexes with int32 and catch a slipped digit before it becomes an allocation failure.
        for key, high in (
            ("num_layers", 1024),
            ("hidden_size", 65536),
            ("num_attention_heads", 1024),
            ("seq_length", 131072),
        ):
            value = getattr(self, key)
            if value is None:
                raise UserError(f"model.{key}: required when model.preset is null; set it or pick a preset")
            check_int(f"model.{key}", value, 1, high)
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"model.num_attention_heads: {self.num_attention_heads} does not divide "
                f"model.hidden_size {self.hidden_size}"
            )
        if self.vocab_size is not None:
            check_int("model.vocab_size", self.vocab_size, 1, MAX_VOCAB)
        check_int("model.make_vocab_size_divisible_by", self.make_vocab_size_divisible_by, 1, 65536)
        if self.vocab_size is not None and self.padded_vocab_size > MAX_VOCAB:
            raise UserError(
                f"model.make_vocab_size_divisible_by: padding model.vocab_size {self.vocab_size} to a multiple "
                f"of {self.make_vocab_size_divisible_by} exceeds {MAX_VOCAB} token ids; lower it"
            )
        for key in ("hidden_dropout", "attention_dropout"):
            check_number(f"model.{key}", getattr(self, key), 0.0, 1.0, open_high=True)
        check_number("model.init_method_std", self.init_method_std, 0.0, 1.0, open_low=True)
        check_number("model.layernorm_epsilon", self.layernorm_epsilon, 0.0, 1.0, open_low=True)
        check_choice("model.attention_backend", self.attention_backend, ("auto", "sdpa", "te"))
        check_choice("model.fused_kernels", self.fused_kernels, ("auto", "on", "off"))
        check_int("model.sketch_dim", self.sketch_dim, 0, 4096)

    @property
    def num_parameters(self) -> int:
        """Parameters of this GPT-2 (tied embeddings, padded vocabulary), counted from its shape: per
        layer QKV 3h²+3h, attention output h²+h, MLP 8h²+5h, two LayerNorms 4h; plus the embedding,
        the positions and the final LayerNorm. ``lfr_ds.model.gpt.count_parameters`` builds the model to
        count the same number."""
        h = self.hidden_size
        return self.padded_vocab_size * h + self.seq_length * h + self.num_layers * (12 * h * h + 13 * h) + 2 * h

    @property
    def padded_vocab_size(self) -> int:
        if self.vocab_size is None:
            raise ValueError("vocab_size is not set yet (it comes from the dataset's tokenizer)")
        m = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // m) * m


@dataclass
class DataConfig:
    """Where the training blocks come from."""

    path: str | list = ""
    """Dataset prefix (``PREFIX.bin``/``PREFIX.idx``) from ``lfr-preprocess``, or a weighted blend of
    several: Megatron's string ``"0.3 data/web 0.7 data/code"`` or a YAML list of ``{weight, path}``
    (:mod:`lfr_ds.data.blend`, docs/data_format.md). Required."""
    tokenizer: str | None = None
    """Tokenizer ``.model``; ``None`` = the one recorded in the dataset's sidecar. A different one is refused."""
    seed: int = 1234
    """Seeds the document shuffle that defines blocks (so block ids) and every sample-order shuffle."""
    prefetch: bool = True
    """Read the next step's batches on a background thread while this step trains (issue 28). Off: each step
    reads its own, before its forward. The batches, so the losses, are the same either way."""

    def __post_init__(self) -> None:
        # An empty path is allowed here (the default, so a config can be built up); TrainConfig requires it.
        if self.path:
            for prefix in blend_prefixes(self.path, "data.path"):
                check_path("data.path", prefix)
        check_path("data.tokenizer", self.tokenizer, optional=True)
        check_int("data.seed", self.seed, 0, MAX_SEED)


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
        # AdamW's decoupled decay scales weights by 1 - lr * weight_decay each step: past 1 they flip sign.
        check_number("optim.lr", self.lr, 0.0, 1.0, open_low=True)
        check_number("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_int("optim.warmup_steps", self.warmup_steps, 0, MAX_COUNT)
        check_number("optim.weight_decay", self.weight_decay, 0.0, 1.0)
        check_number("optim.beta1", self.beta1, 0.0, 1.0, open_high=True)
        check_number("optim.beta2", self.beta2, 0.0, 1.0, open_high=True)
        check_number("optim.eps", self.eps, 0.0, math.inf, open_low=True, open_high=True)
        check_number("optim.grad_clip", self.grad_clip, 0.0, math.inf, open_high=True)


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
            raise UserError(f"engine.zero_stage: {self.zero_stage!r}; lfr-ds supports ZeRO stage 2 or 3")
        check_path("engine.ds_config", self.ds_config)
        check_choice("engine.precision", self.precision, ("auto", "bf16", "fp32"))
        check_choice("engine.backend", self.backend, ("auto", "nccl", "gloo"))
        check_int("engine.global_batch_size", self.global_batch_size, 1, 2**24)
        check_int("engine.micro_batch_size", self.micro_batch_size, 1, 2**24)
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
        check_int("checkpoint.interval", self.interval, 0, MAX_COUNT)
        check_int("checkpoint.keep_last", self.keep_last, 1, 10**6)
        check_path("checkpoint.resume", self.resume)


@dataclass
class LogConfig:
    """TensorBoard, console and traces."""

    interval: int = 10
    """Console log line and TensorBoard scalars every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard event files to ``RUN_DIR/tb`` (rank 0 only)."""
    peak_tflops: float | None = None
    """Per-device peak TFLOP/s for MFU. ``None`` = from the GPU name (H100/H200 989, A100 312 bf16
    dense); on CPU and on other GPUs there is no trustworthy peak, and no MFU is reported unless this is
    set (the achieved TFLOP/s always is)."""
    trace_blocks: bool = False
    """Append every step's gathered (block id, loss, tokens) to ``RUN_DIR/trace/steps.jsonl`` (rank 0); a
    step flagged as a loss spike carries ``"spike": true``, a step skipped after a rewind is only
    ``{"step", "phase", "skipped": true}``.
    Costs ~20 bytes per block per step: for tests and analysis, not for long runs."""
    progress_bar: bool = True
    """Show a progress bar with ETA on rank 0 (only when stderr is a terminal)."""

    def __post_init__(self) -> None:
        check_int("log.interval", self.interval, 1, MAX_COUNT)
        if self.peak_tflops is not None:
            check_number("log.peak_tflops", self.peak_tflops, 0.0, math.inf, open_low=True, open_high=True)


# ---- which LFR settings change a phase file: each LFRConfig field declares it (its ``digest`` metadata),
# and lfr_ds.lfr.rewriter.Rewriter.digest builds the phase file's inputs digest from those declarations,
# as megatron-core's datasets build their cache key from ``_key_config_attributes``. A run that resumes or
# replays a phase reuses its file only if the digest is the same, so a setting that changes the order and is
# left out would reuse a stale file: tests/lfr/test_digest.py fails on a field that declares nothing.

#: In every Focus phase's digest, in the order the fields are defined.
IN_FOCUS_DIGEST = {"digest": "focus"}
#: In a Focus phase's digest only when not the default, so the digests of runs made before the setting existed
#: stay the same.
IN_FOCUS_DIGEST_IF_CHANGED = {"digest": "focus-if-changed"}


def in_focus_digest_unless(value: object) -> dict:
    """Field metadata: in a Focus phase's digest only when not ``value``, for a setting whose default has moved
    off ``value``: the digests of runs made with ``value`` (before the move) stay the same."""
    return {"digest": "focus-if-changed", "unless": value}


#: In the digest of an ``@auto`` or ``kp`` Focus phase (``None`` unless ``@auto``), after the phase's
#: ``auto_drop`` and ``kept_passes``; likewise only where they matter, for the same reason.
IN_AUTO_DIGEST = {"digest": "auto"}
#: A file's SHA-256 in every Focus phase's digest, only when the setting is set (its path never enters: the
#: run may move). oracle (issue 21)
FILE_IN_FOCUS_DIGEST_IF_SET = {"digest": "focus-file-if-set"}


def not_in_digest(why: str) -> dict:
    """Field metadata: the setting does not change what a phase file holds, for the reason ``why``."""
    return {"digest": None, "why": why}


@dataclass
class LFRConfig:
    """Which blocks to train on, phase by phase (the Learn-Focus-Review schedule)."""

    schedule: str = field(
        default="random", metadata=not_in_digest("the digest holds the phase itself: kind, place, length, drop")
    )
    """``random`` (the baseline: a seeded shuffle of all blocks, epoch after epoch, for the whole run),
    ``paper``, or a Learn-Focus-Review schedule such as ``learn:2000,focus:2000@0.5,review,focus:*@0.7``
    (grammar in :mod:`lfr_ds.lfr.schedule`)."""
    distribute: str = field(
        default="shared_fs", metadata=not_in_digest("how the file reaches the ranks, not what it holds")
    )
    """How ranks other than 0 get each phase's sample index: ``shared_fs`` (read rank 0's file after a
    barrier) or ``broadcast`` (rank 0 sends the bytes; for clusters without a shared filesystem)."""
    score: str = field(default="relative", metadata=IN_FOCUS_DIGEST)
    """What ranks a block's difficulty: ``relative`` = its loss minus the mean loss of the global batch it
    was recorded in (same model, same step: no drift from when it was seen), or ``raw`` = the recorded
    loss itself, as in the paper (biased towards blocks seen early, when the model was worse)."""
    selection: str = field(default="capped", metadata=IN_FOCUS_DIGEST)
    """How Focus drops: ``capped`` = the easiest blocks overall, but no cluster loses more than
    ``max_cluster_drop`` of its blocks (every region stays represented); ``paper`` = whole clusters,
    easiest mean perplexity first."""
    max_cluster_drop: float = field(default=0.95, metadata=IN_FOCUS_DIGEST)
    """``capped`` only: the largest fraction of any cluster's seen blocks one Focus may drop."""
    clusters: int = field(default=16, metadata=IN_FOCUS_DIGEST)
    """Clusters after Ward merging of the k-means centroids."""
    centroids: int = field(default=256, metadata=IN_FOCUS_DIGEST)
    """Mini-batch k-means centroids (the first clustering level)."""
    temperature: float = field(default=1.0, metadata=IN_FOCUS_DIGEST)
    """Focus sampling weight ∝ (relative) perplexity^(1/T): 1 samples a block e times more often per nat
    of extra loss; larger is flatter (∞ = uniform over kept blocks)."""
    weighting: str = field(default="perplexity", metadata=IN_FOCUS_DIGEST_IF_CHANGED)
    """How Focus weights the draw among kept clusters: ``perplexity`` (the paper's) = ∝ kept blocks ×
    exp(mean difficulty / T); ``learnable`` = ∝ kept blocks × the cluster's learnability, the share of its
    excess relative loss that it lost between its blocks' last two visits (in [0.05, 1]; 1 for clusters no
    harder than average or not yet seen twice), so hard text the model does not learn (noise) is drawn
    less. Within a cluster both draw ∝ exp(difficulty / T). See docs/lfr.md."""
    draw: str = field(default="systematic", metadata=in_focus_digest_unless("iid"))
    """How Focus draws its order from those weights: ``systematic`` (the default since issue 25: the same
    expected draws per block as ``iid``, each block drawn the floor or ceiling of its expectation, so with flat
    weights a ``1kp`` pass is a permutation of the kept blocks, as a ``kp`` length promises) or ``iid`` (the
    paper's: every draw independent, so a ``1kp`` pass visits only about 63% of its kept blocks and repeats
    others; the default before issue 25). In the data-rich regime it was no worse on the mean (seeds 1-3,
    R = 0.5: the recipe -0.54% against -0.50%). See docs/lfr.md."""
    auto_max_drop: float = field(default=0.7, metadata=IN_AUTO_DIGEST)
    """``focus:...@auto`` only: the largest fraction of the seen blocks it may drop (it drops only blocks
    the loss table says are learned, see docs/lfr.md)."""
    blend: str = field(default="keep", metadata=IN_FOCUS_DIGEST_IF_CHANGED)
    """A blend of corpora (``data.path``) in a Focus phase. Either way each corpus drops the phase's
    fraction of its own seen blocks, clustered apart from the others. ``keep``: each corpus makes its
    blend weight of the draws, as in Learn. ``free``: one draw over all corpora, each cluster weighted as
    in a single corpus times its corpus's weight per kept block, so a corpus harder than the others
    gains share (LFR as an online mixture); the manifest and TensorBoard record each corpus's share
    against its weight. No effect on a single dataset."""
    drop_mask: str | None = field(default=None, metadata=FILE_IN_FOCUS_DIGEST_IF_SET)
    """An experiment hook, not a selection mode: a packed bool mask over block ids (:mod:`lfr_ds.lfr.drop_mask`)
    that, when set, replaces every Focus phase's drop decision: it drops exactly the masked blocks and draws
    from the rest as usual. ``lfr-compare``'s ``oracle`` arm sets it to the builder's copy blocks. ``None`` = off."""
    # ---- probes (issue 21): the model's loss on text it never trains on, scored inside every step
    probe_path: str | None = field(
        default=None, metadata=not_in_digest("its records are in the loss table, which the digest hashes")
    )
    """A dataset prefix of documents from the training corpus that no run trains on and that is not the dev split
    (``lfr-preprocess --probe-fraction`` writes one; ``lfr-compare`` makes one). ``None`` = no probes. Its
    blocks (at least 64, at most half the training blocks) are scored forward-only inside each training step,
    with the weights that score that step's blocks, and recorded relative to the step's batch mean loss;
    they calibrate ``@auto`` (see ``absorbed_alpha`` and docs/lfr.md). They never change the training."""
    probe_blocks: int = field(
        default=1, metadata=not_in_digest("its records are in the loss table, which the digest hashes")
    )
    """Probe blocks scored per step (rounded up to a multiple of the data-parallel size: each rank scores
    its share, one forward of that many blocks, no backward). A deterministic draw of (data.seed, step). A
    forward costs ~1/3 of a trained block, so p probes add ~p / (3 × global batch) to a step: 1 (one per
    rank) keeps it at 2.1% at global batch 16 (``bench/probes.py``) and 0.5% for GPT-2 1.5B at 512 on 8 GPUs."""
    absorbed_alpha: float = field(default=0.1, metadata=IN_FOCUS_DIGEST_IF_CHANGED)
    """``@auto`` with probes: a seen block is absorbed (and may be dropped) when its relative loss is below
    the α-quantile of the probes' relative losses around its visit, at both visits where it had two. On
    unseen text the test flags about α of the blocks; in (0, 0.5]."""
    length_scale: float = field(
        default=1.0, metadata=not_in_digest("it sets the phases' lengths, which the digest holds")
    )
    """Multiplies every absolute phase length of ``schedule`` (steps, tokens, passes, kept passes, the default Review).
    For budget sweeps: the same schedule at a fraction of the tokens (``steps`` scaled alike), so a
    1-pass Learn at 0.5 is half a pass. Shares (``%``) and ``*`` follow ``steps`` by themselves."""

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, str) or not self.schedule.strip():
            raise UserError(
                f"lfr.schedule: {self.schedule!r}; give random, paper or phases such as learn:2000,focus:*@0.5"
            )
        check_choice("lfr.distribute", self.distribute, ("shared_fs", "broadcast"))
        check_choice("lfr.score", self.score, ("relative", "raw"))
        check_choice("lfr.selection", self.selection, ("capped", "paper"))
        check_number("lfr.max_cluster_drop", self.max_cluster_drop, 0.0, 1.0, open_low=True)
        check_int("lfr.clusters", self.clusters, 1, 65536)
        check_int("lfr.centroids", self.centroids, 1, 65536)
        if self.centroids < self.clusters:
            raise UserError(f"lfr.centroids ({self.centroids}) must be >= lfr.clusters ({self.clusters})")
        check_choice("lfr.weighting", self.weighting, ("perplexity", "learnable"))
        check_choice("lfr.draw", self.draw, ("iid", "systematic"))
        check_number("lfr.auto_max_drop", self.auto_max_drop, 0.0, 1.0, open_low=True, open_high=True)
        # +inf is meaningful (uniform weights); NaN and non-positive values are not.
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, int | float)
            or not self.temperature > 0
        ):
            raise UserError(f"lfr.temperature: {self.temperature!r} must be positive")
        check_choice("lfr.blend", self.blend, ("keep", "free"))
        check_number("lfr.length_scale", self.length_scale, 0.0, 1e6, open_low=True)
        check_path("lfr.drop_mask", self.drop_mask, optional=True)
        check_path("lfr.probe_path", self.probe_path, optional=True)
        check_int("lfr.probe_blocks", self.probe_blocks, 1, 4096)
        check_number("lfr.absorbed_alpha", self.absorbed_alpha, 0.0, 0.5, open_low=True)


@dataclass
class EvalConfig:
    """Evaluation during training: held-out loss per source and BLiMP accuracy, to TensorBoard and
    ``RUN_DIR/eval.jsonl`` (the held-out curve ``lfr-compare`` plots)."""

    interval: int = 0
    """Evaluate every this many steps, and after the last; 0 = only after the last step."""
    valid_path: str | list | None = None
    """Held-out data: a dataset prefix, a blend of them (as ``data.path``: the held-out loss is then
    reported per corpus, ``valid_blocks`` from each) or a raw ``.jsonl`` (tokenized with the run's
    tokenizer). ``None`` = none."""
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
        check_int("eval.interval", self.interval, 0, MAX_COUNT)
        if self.valid_path is not None:
            for prefix in blend_prefixes(self.valid_path, "eval.valid_path"):
                check_path("eval.valid_path", prefix)
        check_int("eval.valid_blocks", self.valid_blocks, 1, 2**24)
        check_path("eval.blimp", self.blimp, optional=True)
        check_int("eval.blimp_pairs", self.blimp_pairs, 1, 10**6)


@dataclass
class GuardConfig:
    """Training hygiene in the step loop (:mod:`lfr_ds.guard`). A non-finite loss or gradient norm always
    stops the run, before that step's optimizer update and before any checkpoint of it. Two rules flag a
    finite step loss (the global batch's mean), and ``on_spike`` says what a flagged step does:

    - **divergence**, from the first step, with no statistics: the loss is more than ``diverge_margin``
      nats above ln V, the loss of a uniform guess over the data's V-token vocabulary (a model that scores
      worse has stopped being a language model). ``diverged_steps`` such steps in a row stop the run under
      any ``on_spike``: it is dead.
    - **spike**, against the run's recent losses: more than ``jump_ratio`` times the phase's level (the mean
      of its last ``spike_warmup`` unflagged step losses) from a phase's second step on, and at a phase's
      first step more than ``boundary_ratio`` times the previous phase's level (the statistics live across
      LFR phase boundaries, rewinds and resumes); or, once the phase has ``spike_warmup`` unflagged steps,
      more than ``spike_sigmas`` standard deviations *and* ``spike_ratio`` times above the mean of the
      phase's last ``spike_window`` (a Focus phase on hard blocks raises the level by design, so these
      statistics are the phase's own).

    A flagged step's losses never enter the statistics or the loss table. Defaults measured by
    ``bench/spikes.py`` on normal runs (README, *Diverging runs*): no step fires."""

    on_spike: str = "warn"
    """What a spike does: ``warn`` (a console line and TensorBoard scalar; the step is trained on, its
    losses are kept out of the loss table), ``stop`` (one line, exit non-zero, the step not applied), or
    ``rewind`` (reload the last checkpoint before the spike and skip ``rewind_skip`` global batches)."""
    spike_window: int = 50
    """Steps of running statistics: the mean and standard deviation of the last this many (non-spiking)
    step losses of the current phase."""
    spike_warmup: int = 20
    """Steps a phase must have recorded before a spike can fire (at most ``spike_window``)."""
    spike_sigmas: float = 6.0
    """A spike's loss exceeds the window mean by more than this many window standard deviations..."""
    spike_ratio: float = 1.1
    """...and is more than this many times the window mean (1.1 = 10 % above: 0.6 nats at a loss of 6),
    so a window of nearly equal losses (a tiny deviation) does not fire on noise."""
    rewind_skip: int = 100
    """``rewind``: global batches skipped after a spike at step s: steps max(c + 1, s - rewind_skip + 1)
    through s, c being the checkpoint rewound to (PaLM skipped the 200-500 batches before and during each
    spike). A skipped step consumes its batch position, the schedule and the learning rate without an
    optimizer update, so phases and data order are unchanged and the run ends at ``steps`` with fewer updates."""
    max_rewinds: int = 5
    """``rewind``: a run that spikes again after this many rewinds stops, with one line."""
    jump_ratio: float = 1.75
    """A step loss more than this many times the phase's level (the mean of its last ``spike_warmup``
    unflagged step losses; from the phase's second step, warm-up or not) is a spike. A doubled loss is one;
    batch noise on the demo's planted corpus (losses near 1) reaches 1.37x."""
    boundary_ratio: float = 3.0
    """A phase's first step loss more than this many times the previous phase's level is a spike. Wider
    than ``jump_ratio``: a Focus on hard blocks raises the level by design (1.7x on the demo's planted
    corpus, whose Focus drops nearly all its trivial text), but not threefold."""
    diverge_margin: float = 3.0
    """A step loss more than this many nats above ln V (V: the data's vocabulary, unpadded) has diverged.
    An untrained model starts near ln V: its excess is about half its logits' variance (0.02² × hidden
    size / 2 with Megatron's init: 0.15 at hidden 768, 0.33 at 1600), plus at most ln(padded V / V) for
    the padding rows, so 3 nats (1/20 of a uniform guess's probability per token) never fires on a
    healthy start."""
    diverged_steps: int = 20
    """This many diverged steps in a row stop the run under any ``on_spike`` (``warn`` included): a run
    worse than a uniform guess for that long is dead, and going on only spends the machines."""

    def __post_init__(self) -> None:
        check_choice("train.on_spike", self.on_spike, ("warn", "stop", "rewind"))
        check_int("train.spike_window", self.spike_window, 2, 100_000)
        check_int("train.spike_warmup", self.spike_warmup, 2, self.spike_window)
        check_number("train.spike_sigmas", self.spike_sigmas, 0.0, 1e6, open_low=True)
        check_number("train.spike_ratio", self.spike_ratio, 1.0, 1e6)
        check_int("train.rewind_skip", self.rewind_skip, 1, MAX_COUNT)
        check_int("train.max_rewinds", self.max_rewinds, 1, 10**6)
        check_number("train.jump_ratio", self.jump_ratio, 1.0, 1e6, open_low=True)
        check_number("train.boundary_ratio", self.boundary_ratio, 1.0, 1e6, open_low=True)
        check_number("train.diverge_margin", self.diverge_margin, 0.0, 1e6, open_low=True)
        check_int("train.diverged_steps", self.diverged_steps, 1, MAX_COUNT)


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
    train: GuardConfig = field(default_factory=GuardConfig)
    """Training hygiene: non-finite and spiking losses, rewind-and-skip."""

    def __post_init__(self) -> None:
        check_path("run_dir", self.run_dir)
        check_int("steps", self.steps, 1, MAX_COUNT)
        check_int("seed", self.seed, 0, MAX_SEED)
        if not self.data.path:
            raise UserError("data.path: required; set it to the dataset prefix written by lfr-preprocess")
        if self.train.on_spike == "rewind" and not self.checkpoint.interval:
            raise UserError(
                "train.on_spike: rewind returns to the last checkpoint before a spike, and checkpoint.interval=0 saves "
                "only at the end; set checkpoint.interval (e.g. 100) or use train.on_spike=warn or stop"
            )


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
    except OSError as e:
        raise UserError(f"{path}: config file cannot be read ({e.strerror}); check its permissions") from None
    except (ValueError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} ({first})") from None
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
            kwargs[key] = _build(hint, {} if value is None else value, prefix + key + ".")
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
        if base is not str:
            raise UserError(f"{name}: may not be null")
        value = ""  # an empty setting (``lfr.schedule=``): the field's own check names what it takes
    if isinstance(value, list) and list in args:
        return value
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
