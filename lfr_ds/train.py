"""``lfr-train``: the training loop, top to bottom.

    deepspeed --num_gpus 8 -m lfr_ds.train --config cfg.yaml engine.zero_stage=3   # one node
    torchrun --nproc-per-node 2 -m lfr_ds.train --config cfg.yaml                  # or torchrun
    python -m lfr_ds.train --config cfg.yaml                                       # one process

Every optimizer step: look up this rank's micro-batches in the current phase's sample index, run
forward/backward through the DeepSpeed engine (per-block losses come out of that same forward),
all-gather the (block id, loss, tokens) records, let the guard (:mod:`lfr_ds.guard`) check them before the
optimizer update, put them into the loss table, log, and checkpoint on schedule. At each phase boundary
the rewriter writes the next phase's sample index from the loss table.

:func:`train` hands its work, in order, to :func:`preflight` (every input checked, and where to start:
a :class:`Plan`, before any process group), :func:`_enter_phase` (the rewriter, at a boundary),
:func:`train_step` (one optimizer step, guarded), :func:`_skip_step` and :func:`_rewind` (rewind-and-skip
after a loss spike), the :class:`Evaluator` and the :class:`Checkpointer` (each knowing when it is due).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
import torch.distributed as dist

from lfr_ds import atomic
from lfr_ds.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from lfr_ds.config import ModelConfig, TrainConfig, load_config
from lfr_ds.data.blend import Blend, BlendView
from lfr_ds.data.blocks import cache_dir
from lfr_ds.data.prefetch import Prefetcher
from lfr_ds.data.sampler import DataParallelSampler
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.engine import build_ds_config, build_engine, resolve_bf16
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.eval.periodic import PeriodicEval, check_eval_paths
from lfr_ds.faults import crash_point, loss_fault
from lfr_ds.guard import Guard, Verdict
from lfr_ds.identity import dataset_digest, record, run_identity, tokenizer_digest
from lfr_ds.launch import Geometry, check_memory, init_distributed, launch_env
from lfr_ds.lfr.loss_table import LossTable, gather_step, step_rows
from lfr_ds.lfr.probes import Probes, check_probe_set, split_probe_rows
from lfr_ds.lfr.rewriter import Rewriter
from lfr_ds.lfr.schedule import Phase, parse_schedule, phase_at, resolve_length, resumed_schedule
from lfr_ds.metrics import Metrics, StepStats, timer
from lfr_ds.resources import out_of_disk, out_of_memory
from lfr_ds.run_state import PhaseManifest, RunState


@dataclass
class StepRecord:
    """What one optimizer step trained on."""

    step: int  # optimizer steps completed, 1-based
    phase: str
    loss: float  # mean over the global batch
    local: np.ndarray  # this rank's rows: [n, 3] (block id, mean loss, tokens)
    rows: np.ndarray  # all ranks' rows in global-batch order: [global_batch, 3 (+ sketch)]


@dataclass
class Plan:
    """What lfr-train settles before any process group exists: every input checked, the schedule, and
    where to start. Bad input has failed by now, in one line, on every rank."""

    dataset: Blend
    """One dataset, or a weighted blend of several (issue 20)."""
    tokenizer: Tokenizer | None
    """``None`` for a plain Megatron dataset: nothing vouches that its ids fit ``model.vocab_size``."""
    model: ModelConfig
    """``cfg.model`` with the vocabulary size filled in."""
    phases: list[Phase]
    """The schedule; a resumed run's kp lengths as their boundaries resolved them."""
    num_blocks: int
    """Blocks of ``seq_length + 1`` tokens in one epoch of the dataset."""
    data_id: dict
    """The vocabulary size, tokenizer and dataset digests a checkpoint records and is checked against."""
    resume: Path | None
    """The checkpoint to resume from, or ``None`` to start fresh."""
    resume_state: RunState | None
    """Its ``lfr/state.json``, read once, when it was found."""
    resumed_digest: str | None
    """The digest of the phase file a run resumed mid-phase must reuse (see :func:`_resumed_digest`)."""
    bf16: bool
    """Train in bf16 (``engine.precision`` resolved for this machine)."""
    ds_config: dict
    """The DeepSpeed config, already checked by DeepSpeed's own validation."""


@dataclass
class _Run:
    """What :func:`train` builds once, before its first step, and carries through the loop."""

    blocks: BlendView
    rewriter: Rewriter
    engine: object
    table: LossTable
    guard: Guard
    metrics: Metrics
    evaluator: Evaluator
    checkpointer: Checkpointer
    stepper: Stepper
    prefetch: Prefetcher
    """This rank's batches of a step, read ahead while the step before trains (``data.prefetch``)."""
    trace: TextIO | None
    """``trace/steps.jsonl`` on rank 0 with ``log.trace_blocks``, else ``None``."""
    step: int
    """Optimizer steps completed: 0, or the resumed checkpoint's."""
    global_batch: int
    seq_length: int


def train(cfg: TrainConfig) -> Iterator[StepRecord]:
    """Run (or resume) ``cfg``; yields a :class:`StepRecord` after every optimizer step, on every rank."""
    plan = preflight(cfg)  # bad input fails fast, in one line, before any process group starts
    info = init_distributed(cfg.engine.backend)
    run = _setup(cfg, plan, info)
    engine, table, guard, metrics, evaluator = run.engine, run.table, run.guard, run.metrics, run.evaluator
    step, trace = run.step, run.trace
    phases, phase = plan.phases, None
    while step < cfg.steps:
        # ---- phase boundary: the rewriter writes (rank 0) and distributes this phase's sample index
        if phase is None or step >= phase.end:
            # A diverged run's losses rank nothing: a Focus that cannot trust the table drops nothing (issue 27).
            distrust = guard.distrust(step, bool(table.seen.any()))
            ranked = table if distrust is None else None
            phases, phase, sampler, manifest = _enter_phase(cfg, plan, info, run.rewriter, ranked, phases, step)
            if distrust is not None and phase.kind == "focus" and step == phase.start:
                metrics.log(f"{phase.name}: drops no block and draws every block alike: {distrust}")
            metrics.phase_start(phase, manifest, table, step)

        if guard.skips(step + 1):  # a batch a rewind skipped: its place in the order and its lr pass, no update
            step = _skip_step(engine, table, phase, step, trace)
        else:
            # ---- one optimizer step, checked by the guard before its update; its rows into the loss table
            t0 = timer()
            lr = engine.get_lr()[0]
            batches = run.prefetch.get(sampler, step - phase.start)
            if step + 1 < phase.end:  # the next step's batches are read while this one trains
                run.prefetch.ahead(sampler, step + 1 - phase.start)
            local, rows, probe_rows, verdict = train_step(run.stepper, batches, step, phase)
            if verdict.rewind:  # back to the last checkpoint before the spike; the batches around it are skipped
                plan, step, table = _rewind(engine, info, cfg, plan, guard, verdict, metrics)
                trace, evaluator.log = _reopen(trace, step), _reopen(evaluator.log, step)
                phases, phase = plan.phases, None
                continue
            if verdict.keep_rows:  # a spiking step's losses never rank a block
                table.update(rows, step, probe_rows)
            else:
                metrics.log(verdict.warning)
            step += 1
            if step == phase.end:
                table.end_phase(phase.index)
            metrics.step(_step_stats(run, step, phase, verdict, lr, timer() - t0))
            if step % cfg.log.interval == 0:
                metrics.loss_table(table, step)
            if trace is not None:
                _trace_step(trace, step, phase, verdict, rows)
            yield StepRecord(step, phase.kind, verdict.loss, local, rows)

        if evaluator.due(step, cfg.steps):
            evaluator.run(engine, step, phase)
        if run.checkpointer.due(step):
            state = _checkpoint_state(cfg, plan, info, step, phases, phase, manifest)
            metrics.log(f"saved checkpoint {run.checkpointer.save(engine, step, state, table)}")
    run.prefetch.close()
    metrics.close()


def _setup(cfg: TrainConfig, plan: Plan, info: Geometry) -> _Run:
    """Everything the loop needs, built once: the block view, the rewriter, evaluation, the engine, the
    probes, the loss table (restored on resume), the guard, the logs and the metrics."""
    from lfr_ds.model.compat import setup_megatron
    from lfr_ds.model.gpt import flops_per_token

    setup_megatron(cfg.seed)
    G, micro, seq = cfg.engine.global_batch_size, cfg.engine.micro_batch_size, plan.model.seq_length
    # Rank 0 builds the block index cache; the others wait for it, then load it.
    blocks = BlendView(plan.dataset, seq, cfg.data.seed, rank=info.rank, barrier=dist.barrier)
    assert blocks.num_blocks == plan.num_blocks, (blocks.num_blocks, plan.num_blocks)
    rewriter = Rewriter.for_run(
        cfg, plan.dataset, blocks, rank=info.rank, device=info.device if info.device.type == "cuda" else None
    )
    valid_seed = cfg.data.seed if cfg.eval.valid_seed is None else cfg.eval.valid_seed
    periodic = PeriodicEval(
        cfg.eval,
        tokenizer=plan.tokenizer,
        seq_length=seq,
        seed=valid_seed,
        micro_batch_size=micro,
        rank=info.rank,
        barrier=dist.barrier,
    )
    model, engine = _build(cfg, plan)
    probes = Probes.for_run(cfg, seq, info.rank, info.world_size, dist.barrier)  # probes (issue 21)
    table = LossTable(blocks.num_blocks, len(plan.phases), plan.model.sketch_dim, probes=probes is not None)
    step = 0
    # The guard (non-finite and spiking losses, rewind-and-skip) carries its run state in every checkpoint.
    guard = Guard(cfg.train, plan.model.vocab_size, plan.resume_state.guard if plan.resume_state else None)
    if plan.resume is not None:
        step, table = _restore(engine, info, cfg, plan)
        guard.saved(step, str(plan.resume))  # the checkpoint a spike would rewind to
    run_dir = Path(cfg.run_dir)
    if info.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    trace = _open_log(run_dir / "trace" / "steps.jsonl", step) if cfg.log.trace_blocks and info.rank == 0 else None
    metrics = Metrics(
        str(run_dir),
        cfg.log,
        rank=info.rank,
        world_size=info.world_size,
        flops_per_token=flops_per_token(plan.model),
        total_steps=cfg.steps,
    )
    metrics.log(
        f"lfr-ds: {info.world_size} rank(s), {info.device.type}, {'bf16' if plan.bf16 else 'fp32'}, "
        f"ZeRO-{cfg.engine.zero_stage}, "
        f"{plan.model.preset or 'custom'} ({_params(model, cfg.engine.zero_stage)}), "
        f"{blocks.num_blocks:,} blocks of {seq + 1} tokens, global batch {G} = {micro} x {info.world_size} ranks x "
        f"{cfg.engine.accumulation_steps(info.world_size)} accum"
        + (f"; resumed from {plan.resume} at step {step}" if plan.resume else "")
    )
    metrics.start(step)
    # The advice when a step runs out of memory: the micro batch never changes the data order.
    oom_fix = (
        f"lower engine.micro_batch_size (now {micro}; the global batch, so the data order, stays the same), "
        "or use engine.zero_stage=3"
    )
    eval_log = _open_log(run_dir / "eval.jsonl", step) if periodic.enabled and info.rank == 0 else None
    evaluator = Evaluator(periodic, metrics, G * seq, oom_fix, eval_log)
    stepper = Stepper(engine, info.device, oom_fix, guard, probes)
    checkpointer = Checkpointer(cfg, info, guard)
    prefetch = Prefetcher(
        lambda sampler, i: list(_micro_batches(sampler.micro_batches(i), blocks, plan)), cfg.data.prefetch
    )
    return _Run(
        blocks, rewriter, engine, table, guard, metrics, evaluator, checkpointer, stepper, prefetch, trace, step, G, seq
    )


def _params(model: torch.nn.Module, zero_stage: int) -> str:
    """The start line's parameter count: the model's, and under ZeRO-3 this rank's partition of it."""
    from lfr_ds.model.gpt import parameter_counts

    full, mine = parameter_counts(model)
    return f"{full / 1e6:.1f}M params" + (f", {mine / 1e6:.1f}M on rank 0" if zero_stage == 3 else "")


def _step_stats(run: _Run, step: int, phase: Phase, verdict: Verdict, lr: float, seconds: float) -> StepStats:
    G, seq, guard = run.global_batch, run.seq_length, run.guard
    return StepStats(
        step=step,
        phase=phase.kind,
        loss=verdict.loss,
        lr=lr,
        grad_norm=verdict.grad_norm,
        loss_scale=1.0,
        samples=step * G,
        tokens=step * G * seq,
        step_time=seconds,
        batch_size=G,
        tokens_per_step=G * seq,
        spikes=guard.spikes,
        rewinds=guard.rewinds,
        skipped=len(guard.skipped),
    )


def _trace_step(trace: TextIO, step: int, phase: Phase, verdict: Verdict, rows: np.ndarray) -> None:
    """One line of ``trace/steps.jsonl``: the step's blocks and their losses, in global-batch order."""
    line = {
        "step": step,
        "phase": phase.index,
        "loss": verdict.loss,
        "ids": rows[:, 0].astype(int).tolist(),
        "losses": rows[:, 1].tolist(),
    }
    _write_line(trace, {**line, **({"spike": True} if verdict.spike else {})})


def preflight(cfg: TrainConfig) -> Plan:
    """Check every input, and find the checkpoint to resume from, before any process group starts."""
    env = launch_env()
    _check_run_dir(cfg.run_dir)
    dataset = Blend(cfg.data.path)  # blend (issue 20): one dataset, or a weighted blend of several
    tokenizer, vocab_size = _tokenizer(cfg, dataset)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab_size)
    G, seq = cfg.engine.global_batch_size, model_cfg.seq_length
    cfg.engine.accumulation_steps(env.world_size)  # the global batch divides across the ranks
    num_blocks = dataset.num_blocks(seq)  # Megatron's cut, per corpus: floor((tokens - 1) / seq) blocks of seq + 1
    phases = parse_schedule(
        cfg.lfr.schedule,
        total_steps=cfg.steps,
        tokens_per_step=G * seq,
        review_steps=math.ceil(num_blocks / G),
        scale=cfg.lfr.length_scale,
    )
    for corpus in dataset.datasets:
        cache = Path(cache_dir(corpus, seq, cfg.data.seed))
        if env.rank == 0 and not cache.is_dir() and (blocked := _unwritable(cache)):
            raise UserError(
                f"data.path: {blocked} is read-only to this user, and lfr-ds caches the block index beside the dataset "
                f"({cache.parent}); make it writable, or copy the dataset's files somewhere writable"
            )
    # Resuming: the checkpoint must fit this run (shape, vocabulary, data, batch), refused before DeepSpeed.
    data_id = {"vocab_size": vocab_size, "tokenizer": tokenizer_digest(tokenizer), "dataset": dataset_digest(dataset)}
    found = find_checkpoint(cfg, run_identity(cfg, **data_id))
    resumed_digest = None
    if found:
        phases = resumed_schedule(phases, found[1].schedule)  # kp lengths as their boundaries resolved them
        resumed_digest = _resumed_digest(found[1], phases, cfg.steps)
    check_eval_paths(cfg.eval)
    if cfg.lfr.probe_path is not None:  # probes (issue 21)
        check_probe_set(cfg.lfr.probe_path, seq, num_blocks)
    bf16 = resolve_bf16(cfg.engine.precision)
    ds_config = build_ds_config(cfg, env.world_size, bf16)
    check_memory(model_cfg, cfg.engine, env, bf16, ds_config["zero_optimization"])
    return Plan(
        dataset,
        tokenizer,
        model_cfg,
        phases,
        num_blocks,
        data_id,
        *(found or (None, None)),
        resumed_digest,
        bf16,
        ds_config,
    )


def _build(cfg: TrainConfig, plan: Plan):
    """The model and its DeepSpeed engine (optimizer state included)."""
    from lfr_ds.model.gpt import build_model

    with out_of_memory(
        "building the model and its optimizer state",
        "use a smaller model (model.preset or model.*), engine.zero_stage=3, or more ranks",
    ):
        # Built whole, then partitioned by DeepSpeed. build_model(zero3=...) builds partitioned (zero.Init) and
        # bitwise equal (tests/model/test_partitioned_build.py), but ZeRO-3 training from it moved the tiny
        # preset's weights 6e-5 off ZeRO-2's in 3 steps, where the whole build stays within 1e-6
        # (tests/eval/test_eval_checkpoint.py): not switched on until that is understood (issue 26).
        model = build_model(plan.model, bf16=plan.bf16)
        return model, build_engine(model, cfg, plan.ds_config)


def _restore(engine, info: Geometry, cfg: TrainConfig, plan: Plan) -> tuple[int, LossTable]:
    """Load ``plan.resume`` into ``engine`` (and the RNG); returns the step it was saved at and its loss table."""
    arrays = load_checkpoint(engine, info, cfg, plan.resume, plan.resume_state)
    return plan.resume_state.step, LossTable.from_arrays(arrays, num_phases=len(plan.phases))


def _enter_phase(
    cfg: TrainConfig,
    plan: Plan,
    info: Geometry,
    rewriter: Rewriter,
    table: LossTable | None,
    phases: list[Phase],
    step: int,
) -> tuple[list[Phase], Phase, DataParallelSampler, PhaseManifest]:
    """The phase at ``step``, its sample index written (rank 0) and distributed by the rewriter, and this
    rank's sampler over it; returns the schedule too, a kp phase's length resolved. ``table``: ``None``
    where a Focus must not rank by it (the guard distrusts it)."""
    phase = phase_at(phases, step)
    order, manifest = rewriter.prepare(phase, table, plan.resumed_digest if step > phase.start else None)
    if manifest.steps != phase.steps:  # a kp phase: its length is known now that its kept set is
        phases = resolve_length(phases, phase.index, manifest.steps)
        phase = phases[phase.index]
    sampler = DataParallelSampler(
        order, cfg.engine.global_batch_size, cfg.engine.micro_batch_size, info.rank, info.world_size
    )
    return phases, phase, sampler, manifest


def _micro_batches(
    ids_per_micro: Iterable[np.ndarray], blocks: BlendView, plan: Plan
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This rank's micro-batches of one step, as ``(block ids, tokens [micro, seq + 1])``."""
    for ids in ids_per_micro:
        tokens = blocks.batch(ids)
        if plan.tokenizer is None:  # a plain Megatron dataset: nothing vouches that its ids fit model.vocab_size
            _check_token_ids(tokens, ids, plan.model.vocab_size, plan.dataset.prefix)
        yield ids, tokens


@dataclass
class Stepper:
    """What every optimizer step of a run works with."""

    engine: object
    """The DeepSpeed engine."""
    device: torch.device
    oom_fix: str
    """The advice when a step runs out of memory."""
    guard: Guard
    """Checks a step's losses before its update, and its gradient norm after (issue 19)."""
    probes: Probes | None = None
    """Scored forward-only inside the step, before the update (issue 21); ``None``: no probes."""


def train_step(
    run: Stepper, batches: Iterable[tuple[np.ndarray, np.ndarray]], step: int, phase: Phase
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Verdict]:
    """One optimizer step: forward/backward per micro-batch (DeepSpeed accumulates the gradients), the
    per-block losses coming out of that same forward; the guard checks the all-gathered losses, and only
    then does the optimizer step (a non-finite step is never applied); then the guard checks the gradient
    norm. Returns this rank's ``(block id, loss, tokens)`` rows, every rank's rows
    (:func:`~lfr_ds.lfr.loss_table.step_rows`) in global-batch order, every rank's probe rows (scored before
    the optimizer moves; ``None`` without probes) and the guard's verdict."""
    from lfr_ds.model.gpt import per_block_loss

    engine, device, oom_fix, guard = run.engine, run.device, run.oom_fix, run.guard
    # probes (issue 21): forward-only, first, so the weights are the ones the step's blocks are scored with
    # and the training forwards overwrite anything the probe forward leaves behind (the sketch hook).
    probe = run.probes.score(engine, step, device) if run.probes is not None else None
    ids, losses, tokens, sketches = [], [], [], []
    for micro_ids, micro_tokens in batches:
        with out_of_memory("in a training step", oom_fix):
            batch = torch.from_numpy(micro_tokens).to(device)
            inputs, labels = batch[:, :-1], batch[:, 1:]
            out = per_block_loss(engine, inputs, labels, torch.ones_like(labels, dtype=torch.float32))
            out = loss_fault(out, step + 1)
            engine.backward(out.loss)
            crash_point("step", step + 1)
            if not engine.is_gradient_accumulation_boundary():  # the boundary's update waits for the guard
                engine.step()
        ids.append(micro_ids)
        losses.append(out.per_block)
        tokens.append(out.tokens)
        if out.sketch is not None:
            sketches.append(out.sketch)
    mine = step_rows(
        np.concatenate(ids), torch.cat(losses), torch.cat(tokens), torch.cat(sketches) if sketches else None
    )
    if probe is None:
        rows, probe_rows = gather_step(mine), None
    else:  # probes (issue 21): gathered with the step's rows, one collective
        rows, probe_rows = split_probe_rows(gather_step(torch.cat([mine, probe])))
    # Every rank holds the same gathered rows, so every rank reaches the same verdict with no collective.
    verdict = guard.check_loss(step + 1, (phase.index, phase.kind), rows)  # stops on a non-finite loss
    with out_of_memory("in a training step", oom_fix):
        engine.step()  # the boundary: DeepSpeed's optimizer update (a rewound step's is undone by the reload)
    # The step's host reads: the gathered rows above (the guard, the table, the log and this rank's own rows
    # all use that one copy) and the gradient norm here (issue 28: a GPU waits for each).
    norm = engine.get_global_grad_norm()
    verdict.grad_norm = 0.0 if norm is None else float(norm)
    if not verdict.rewind:  # DeepSpeed skipped a non-finite update: stop before any checkpoint of it
        guard.check_grad_norm(step + 1, (phase.index, phase.kind), verdict.grad_norm)
    n = len(mine)  # ranks hold consecutive, equal slices of the global batch
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rows[rank * n : (rank + 1) * n, :3], rows, probe_rows, verdict


def _skip_step(engine, table: LossTable, phase: Phase, step: int, trace: TextIO | None) -> int:
    """Pass 0-based ``step``, whose global batch a rewind skipped: no forward, backward or update, but the
    learning-rate schedule and the step count move on, so both stay a function of the step. Returns the
    steps completed."""
    engine.lr_scheduler.step()
    step += 1
    if step == phase.end:
        table.end_phase(phase.index)
    if trace is not None:
        _write_line(trace, {"step": step, "phase": phase.index, "skipped": True})
    return step


def _rewind(
    engine, info: Geometry, cfg: TrainConfig, plan: Plan, guard: Guard, verdict: Verdict, metrics: Metrics
) -> tuple[Plan, int, LossTable]:
    """After a spike at ``verdict.step`` under ``train.on_spike=rewind``: reload the last checkpoint before
    it, exactly as a resume would, with the batches around the spike marked skipped. Returns the plan
    resumed from that checkpoint, its step and its loss table."""
    path, skip = guard.rewind(verdict.step)
    metrics.log(
        f"rewind {guard.rewinds}/{cfg.train.max_rewinds}: {verdict.flag} at step {verdict.step} ({verdict.why}); "
        f"back to {path}, skipping steps {skip[0]}-{skip[-1]}"
    )
    state = RunState.read(path)
    phases = resumed_schedule(plan.phases, state.schedule)
    plan = dataclasses.replace(
        plan,
        phases=phases,
        resume=Path(path),
        resume_state=state,
        resumed_digest=_resumed_digest(state, phases, cfg.steps),
    )
    step, table = _restore(engine, info, cfg, plan)
    crash_point("rewind", verdict.step)
    guard.rewound(state.guard)  # its spike statistics; this run's skips and rewinds only grow
    metrics.start(step)  # the steps logged since the checkpoint are undone
    return plan, step, table


@dataclass
class Evaluator:
    """Evaluation during training (``eval.*``): when it is due, and where its results go."""

    periodic: PeriodicEval
    metrics: Metrics
    tokens_per_step: int
    oom_fix: str
    log: TextIO | None
    """``RUN_DIR/eval.jsonl`` (rank 0)."""

    def due(self, step: int, last: int) -> bool:
        return self.periodic.due(step, last)

    def run(self, engine, step: int, phase: Phase) -> None:
        t0 = timer()
        with out_of_memory("in an evaluation", self.oom_fix):
            scores = self.periodic.run(engine)
        results = {"step": step, "tokens": step * self.tokens_per_step, "phase": phase.index, **scores}
        results["seconds"] = round(timer() - t0, 3)
        self.metrics.evaluation(results)
        if self.log is not None:
            _write_line(self.log, results)


@dataclass
class Checkpointer:
    """When a checkpoint is due (every ``checkpoint.interval`` steps and at the last), and the save."""

    cfg: TrainConfig
    info: Geometry
    guard: Guard
    """Its run state goes into every checkpoint, and it rewinds to the newest one."""

    def due(self, step: int) -> bool:
        return step == self.cfg.steps or bool(self.cfg.checkpoint.interval and step % self.cfg.checkpoint.interval == 0)

    def save(self, engine, step: int, state: RunState, table: LossTable) -> Path:
        state = dataclasses.replace(state, guard=self.guard.state())  # skipped steps, rewinds, spike statistics
        path = save_checkpoint(engine, self.info, self.cfg, step, state, table.arrays())
        self.guard.saved(step, str(path))
        return path


def _checkpoint_state(
    cfg: TrainConfig, plan: Plan, info: Geometry, step: int, phases: list[Phase], phase: Phase, manifest: PhaseManifest
) -> RunState:
    """lfr-ds's state at ``step``, as a checkpoint records it (``lfr/state.json``)."""
    G, seq = cfg.engine.global_batch_size, plan.model.seq_length
    return RunState(
        step=step,
        samples=step * G,
        tokens=step * G * seq,
        phase=phase.index,
        phase_digest=manifest.inputs_sha256,
        world_size=info.world_size,
        schedule=phases,
        **record(cfg, **plan.data_id),
    )


def _tokenizer(cfg: TrainConfig, dataset) -> tuple[Tokenizer | None, int]:
    """The run's tokenizer (checked against the dataset's sidecar) and vocabulary size. A plain Megatron
    dataset with no sidecar and no ``data.tokenizer`` has no tokenizer: ``model.vocab_size`` must be set."""
    tok_path = cfg.data.tokenizer or (dataset.meta or {}).get("tokenizer", {}).get("path")
    if tok_path is None:
        if cfg.model.vocab_size is None:
            raise UserError(
                f"data.tokenizer: {dataset.prefix} has no lfr-ds sidecar naming its tokenizer; "
                "set data.tokenizer or model.vocab_size"
            )
        return None, cfg.model.vocab_size
    tokenizer = Tokenizer(tok_path)
    dataset.check_tokenizer(tokenizer)
    if cfg.model.vocab_size is not None and cfg.model.vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"model.vocab_size {cfg.model.vocab_size} does not match the dataset's tokenizer ({tokenizer.vocab_size}); "
            "leave model.vocab_size unset to take it from the tokenizer"
        )
    return tokenizer, tokenizer.vocab_size


def _check_token_ids(tokens: np.ndarray, ids: np.ndarray, vocab_size: int, prefix: str) -> None:
    """Token ids at or past the vocabulary would index past the embedding: an IndexError on CPU, a device-side
    assert that kills the CUDA context on a GPU."""
    if tokens.size and int(tokens.max()) >= vocab_size:
        block = int(ids[int(np.argmax(tokens.max(axis=1)))])
        raise UserError(
            f"model.vocab_size {vocab_size}: block {block} of {prefix} holds token id {int(tokens.max())}; set "
            "model.vocab_size to the tokenizer's size (or data.tokenizer)"
        )


def _check_run_dir(run_dir: str) -> None:
    """``run_dir`` is, or can be created as, a writable directory (checked before any rank starts)."""
    path = Path(run_dir).absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"run_dir: {run_dir} exists and is not a directory; choose a new run_dir")
    if blocked := _unwritable(path):
        raise UserError(
            f"run_dir: {run_dir} cannot be written ({blocked} is read-only to this user); choose another run_dir"
        )


def _unwritable(path: Path) -> Path | None:
    """The nearest existing directory at or above ``path`` if this user cannot create files in it, else ``None``."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    return None if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK) else existing


def _resumed_digest(state: RunState, phases: list[Phase], steps: int) -> str | None:
    """The digest of the sample index that a run resumed mid-phase (from checkpoint ``state``) must reuse as
    it was written: the loss table has moved on since the phase began. ``None`` where it may be rebuilt: a
    shuffle phase that the new ``steps`` lengthened (its seeded epochs put the same blocks first). A Focus
    phase lengthened mid-phase is refused: its order was drawn once, from the table at its start."""
    step = state.step
    if step >= steps:
        return None
    phase, was = phase_at(phases, step), state.schedule[state.phase]
    # The same phase (its kind, place and drop; whether its length was given as '*' does not matter here)?
    same = dataclasses.replace(was, steps=phase.steps, rest=phase.rest) == phase
    if not same or phase.steps <= was.steps:
        return state.phase_digest
    if phase.kind != "focus":
        return None
    raise UserError(
        f"steps={steps}: lengthens {phase.name} from {was.steps} to {phase.steps} steps, but a Focus phase draws its "
        f"order once, from the loss table at its start (step {phase.start}); keep it at {was.steps} steps in "
        "lfr.schedule and add a phase after it"
    )


def _open_log(path: Path, step: int):
    """Open a JSON-lines log for appending, dropping lines past ``step`` left by a run that died after it
    (and a line it may have torn, killed mid-write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        keep = [line for line in path.read_text().split("\n") if _logged_step(line) <= step]
        atomic.write_bytes(path, "".join(line + "\n" for line in keep).encode())
    return open(path, "a")


def _reopen(log: TextIO | None, step: int) -> TextIO | None:
    """A rewound run's log (``None`` stays ``None``): closed, its lines past ``step`` dropped, reopened."""
    if log is None:
        return None
    log.close()
    return _open_log(Path(log.name), step)


def _write_line(log: TextIO, record: dict) -> None:
    """One JSON line, flushed: a run killed after the step still has it."""
    log.write(json.dumps(record) + "\n")
    log.flush()


def _logged_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # blank, or torn
        return math.inf


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-train",
        description="Train a GPT-2 model with DeepSpeed on Learn-Focus-Review (or random) data order.",
        epilog=(
            "Overrides: any config field as section.key=value, e.g. engine.zero_stage=3 lfr.schedule=paper steps=5000."
        ),
    )
    p.add_argument("--config", "-c", help="YAML or JSON config (see configs/ and lfr_ds/config.py)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options
    cfg = load_config(args.config, args.overrides)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*cuda_graph_scope.*")
    # Everything lfr-train writes goes under run_dir, except the block index cache beside the dataset.
    with out_of_disk(cfg.run_dir, "run_dir"):
        for _ in train(cfg):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
