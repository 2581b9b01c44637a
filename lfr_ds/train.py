"""``lfr-train``: the training loop, top to bottom.

    deepspeed --num_gpus 8 -m lfr_ds.train --config cfg.yaml engine.zero_stage=3   # one node
    torchrun --nproc-per-node 2 -m lfr_ds.train --config cfg.yaml                  # or torchrun
    python -m lfr_ds.train --config cfg.yaml                                       # one process

Every optimizer step: look up this rank's micro-batches in the current phase's sample index, run
forward/backward through the DeepSpeed engine (per-block losses come out of that same forward),
all-gather the (block id, loss, tokens) records into the loss table, log, and checkpoint on schedule.
At each phase boundary the rewriter writes the next phase's sample index from the loss table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lfr_ds import atomic
from lfr_ds.config import TrainConfig, load_config
from lfr_ds.data.blocks import BlockView, cache_dir
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.sampler import DataParallelSampler
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.engine import (
    build_ds_config,
    build_engine,
    check_memory,
    find_checkpoint,
    init_distributed,
    launch_env,
    load_checkpoint,
    resolve_bf16,
    save_checkpoint,
)
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.eval.periodic import PeriodicEval, check_eval_paths
from lfr_ds.faults import crash_point, loss_fault
from lfr_ds.guard import Guard
from lfr_ds.identity import dataset_digest, record, run_identity, tokenizer_digest
from lfr_ds.lfr.loss_table import LossTable, gather_step
from lfr_ds.lfr.rewriter import prepare_phase
from lfr_ds.lfr.schedule import Phase, parse_schedule, phase_at, resolve_length, resumed_schedule
from lfr_ds.metrics import Metrics, StepStats, timer
from lfr_ds.resources import out_of_disk, out_of_memory


@dataclass
class StepRecord:
    """What one optimizer step trained on."""

    step: int  # optimizer steps completed, 1-based
    phase: str
    loss: float  # mean over the global batch
    local: np.ndarray  # this rank's rows: [n, 3] (block id, mean loss, tokens)
    rows: np.ndarray  # all ranks' rows in global-batch order: [global_batch, 3 (+ sketch)]


def train(cfg: TrainConfig) -> Iterator[StepRecord]:
    """Run (or resume) ``cfg``; yields a :class:`StepRecord` after every optimizer step, on every rank."""
    # ---- check the inputs before starting any process group: bad input fails fast, in one line
    env = launch_env()
    _check_run_dir(cfg.run_dir)
    dataset = open_dataset(cfg.data.path)
    tokenizer, vocab_size = _tokenizer(cfg, dataset)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab_size)
    accumulation = cfg.engine.accumulation_steps(env.world_size)
    G, micro, seq = cfg.engine.global_batch_size, cfg.engine.micro_batch_size, model_cfg.seq_length
    # Megatron cuts one epoch of the stream into floor((tokens - 1) / seq) blocks of seq + 1 tokens.
    num_blocks = (dataset.num_tokens - 1) // seq
    if num_blocks < 1:
        raise UserError(
            f"model.seq_length {seq}: {dataset.prefix} holds {dataset.num_tokens:,} tokens, not one block of "
            f"{seq + 1}; use more data or a shorter model.seq_length"
        )
    phases = parse_schedule(
        cfg.lfr.schedule,
        total_steps=cfg.steps,
        tokens_per_step=G * seq,
        review_steps=math.ceil(num_blocks / G),
        scale=cfg.lfr.length_scale,
    )
    cache = Path(cache_dir(dataset, seq, cfg.data.seed))
    if env.rank == 0 and not cache.is_dir() and (blocked := _unwritable(cache)):
        raise UserError(
            f"data.path: {blocked} is read-only to this user, and lfr-ds caches the block index beside the dataset "
            f"({cache.parent}); make it writable, or copy the dataset's files somewhere writable"
        )
    # Resuming: the checkpoint must fit this run (shape, vocabulary, data, batch), refused before DeepSpeed.
    data_id = {"vocab_size": vocab_size, "tokenizer": tokenizer_digest(tokenizer), "dataset": dataset_digest(dataset)}
    identity = run_identity(cfg, **data_id)
    found = find_checkpoint(cfg, identity)
    resume = found[0] if found else None
    if found:
        phases = resumed_schedule(phases, found[1]["schedule"])  # kp lengths as their boundaries resolved them
    resumed_digest = _resumed_digest(found[1], phases, cfg.steps) if found else None
    check_eval_paths(cfg.eval)
    bf16 = resolve_bf16(cfg.engine.precision)
    ds_config = build_ds_config(cfg, env.world_size, bf16)
    check_memory(model_cfg, cfg.engine.zero_stage, env, bf16)

    info = init_distributed(cfg.engine.backend)
    from lfr_ds.model.compat import setup_megatron
    from lfr_ds.model.gpt import build_model, flops_per_token, per_block_loss

    setup_megatron(cfg.seed)
    run_dir = Path(cfg.run_dir)
    # Rank 0 builds the block index cache; the others wait for it, then load it.
    blocks = BlockView(dataset, seq, cfg.data.seed, rank=info.rank, barrier=dist.barrier)
    assert blocks.num_blocks == num_blocks, (blocks.num_blocks, num_blocks)
    block_source = blocks.block_source
    valid_seed = cfg.data.seed if cfg.eval.valid_seed is None else cfg.eval.valid_seed
    evaluator = PeriodicEval(cfg.eval, tokenizer=tokenizer, seq_length=seq, seed=valid_seed, micro_batch_size=micro,
                             rank=info.rank, barrier=dist.barrier)

    # ---- model and engine
    with out_of_memory(
        "building the model and its optimizer state",
        "use a smaller model (model.preset or model.*), engine.zero_stage=3, or more ranks",
    ):
        model = build_model(model_cfg, bf16=bf16)
        engine = build_engine(model, cfg, ds_config)

    # ---- loss table, and where to start
    table = LossTable(blocks.num_blocks, len(phases), model_cfg.sketch_dim)
    step = 0
    if resume is not None:
        state, arrays = load_checkpoint(engine, info, cfg, resume)
        step = state["step"]
        table = LossTable.from_arrays(arrays, num_phases=len(phases))
    # guard: non-finite and spiking losses, rewind-and-skip; its run state rides in the checkpoint's state
    guard = Guard(cfg.train, state.get("guard") if resume is not None else None)
    if resume is not None:
        guard.saved(step, str(resume))
    if info.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    trace = _open_log(run_dir / "trace" / "steps.jsonl", step) if cfg.log.trace_blocks and info.rank == 0 else None
    eval_log = _open_log(run_dir / "eval.jsonl", step) if evaluator.enabled and info.rank == 0 else None
    metrics = Metrics(
        str(run_dir),
        rank=info.rank,
        world_size=info.world_size,
        flops_per_token=flops_per_token(model_cfg),
        peak=cfg.log.peak_tflops,
        interval=cfg.log.interval,
        tensorboard=cfg.log.tensorboard,
        total_steps=cfg.steps,
        progress_bar=cfg.log.progress_bar,
    )
    metrics.log(
        f"lfr-ds: {info.world_size} rank(s), {info.device.type}, {'bf16' if bf16 else 'fp32'}, ZeRO-{cfg.engine.zero_stage}, "
        f"{model_cfg.preset or 'custom'} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params on rank 0), "
        f"{blocks.num_blocks:,} blocks of {seq + 1} tokens, global batch {G} = {micro} x {info.world_size} ranks x {accumulation} accum"
        + (f"; resumed from {resume} at step {step}" if resume else "")
    )
    metrics.start(step)

    phase, sampler = None, None
    step_fix = (
        f"lower engine.micro_batch_size (now {micro}; the global batch, so the data order, stays the same), "
        "or use engine.zero_stage=3"
    )

    def evaluate_and_checkpoint() -> None:
        """After step ``step`` (trained or skipped): evaluate and checkpoint when due."""
        if evaluator.due(step, cfg.steps):
            t_eval = timer()
            with out_of_memory("in an evaluation", step_fix):
                scores = evaluator.run(engine)
            results = {"step": step, "tokens": step * G * seq, "phase": phase.index, **scores}
            results["seconds"] = round(timer() - t_eval, 3)
            metrics.evaluation(results)
            if eval_log is not None:
                eval_log.write(json.dumps(results) + "\n")
                eval_log.flush()

        if step == cfg.steps or (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0):
            state = {
                "step": step,
                "samples": step * G,
                "tokens": step * G * seq,
                "phase": phase.index,
                "phase_digest": manifest["inputs_sha256"],
                "world_size": info.world_size,
                "schedule": [dataclasses.asdict(p) for p in phases],
                "guard": guard.state(),  # guard: skipped steps, rewinds, spike statistics
                **record(cfg, **data_id),
            }
            path = save_checkpoint(engine, info, cfg, step, state, table.arrays())
            guard.saved(step, str(path))
            metrics.log(f"saved checkpoint {path}")

    while step < cfg.steps:
        # ---- phase boundary: the rewriter writes (rank 0) and distributes this phase's sample index
        if phase is None or step >= phase.end:
            phase = phase_at(phases, step)
            order, manifest = prepare_phase(
                phase,
                run_dir=cfg.run_dir,
                rank=info.rank,
                distribute=cfg.lfr.distribute,
                num_blocks=blocks.num_blocks,
                seq_length=seq,
                global_batch=G,
                seed=cfg.data.seed,
                dataset=dataset.fingerprint,
                table=table,
                block_source=block_source,
                sources=dataset.sources,
                options=cfg.lfr,
                device=info.device if info.device.type == "cuda" else None,
                resumed_digest=resumed_digest if step > phase.start else None,
            )
            if manifest["steps"] != phase.steps:  # a kp phase: its length is known now that its kept set is
                phases = resolve_length(phases, phase.index, manifest["steps"])
                phase = phases[phase.index]
            sampler = DataParallelSampler(order, G, micro, info.rank, info.world_size)
            metrics.phase_start(phase, manifest, table, step)

        if guard.skips(step + 1):  # guard: a batch skipped after a rewind: a step without an update
            engine.lr_scheduler.step()  # the schedule stays a function of the step
            step += 1
            if step == phase.end:
                table.end_phase(phase.index)
            if trace is not None:
                trace.write(json.dumps({"step": step, "phase": phase.index, "skipped": True}) + "\n")
                trace.flush()
            evaluate_and_checkpoint()
            continue

        # ---- one optimizer step: forward/backward per micro-batch, DeepSpeed accumulates and steps
        t0 = timer()
        lr = engine.get_lr()[0]
        local = []
        sketches = []
        micro_batches = list(sampler.micro_batches(step - phase.start))
        for i, ids in enumerate(micro_batches):
            tokens_np = blocks.batch(ids)
            if tokenizer is None:  # a plain Megatron dataset: nothing vouches that its ids fit model.vocab_size
                _check_token_ids(tokens_np, ids, vocab_size, dataset.prefix)
            with out_of_memory("in a training step", step_fix):
                batch = torch.from_numpy(tokens_np).to(info.device)
                tokens, labels = batch[:, :-1], batch[:, 1:]
                out = per_block_loss(engine, tokens, labels, torch.ones_like(labels, dtype=torch.float32))
                out = loss_fault(out, step + 1)
                engine.backward(out.loss)
                crash_point("step", step + 1)
                if i < len(micro_batches) - 1:  # the boundary step (the update) waits for the guard, below
                    engine.step()
            local.append(
                torch.stack(
                    [
                        torch.as_tensor(ids, dtype=torch.float64, device=info.device),
                        out.per_block.double(),
                        out.tokens.double(),
                    ],
                    dim=1,
                )
            )
            if out.sketch is not None:
                sketches.append(out.sketch)
        local = torch.cat(local)
        rows = gather_step(
            local[:, 0].cpu().numpy(), local[:, 1], local[:, 2], torch.cat(sketches) if sketches else None
        )
        where = (phase.index, phase.kind)
        verdict = guard.check_loss(step + 1, where, rows)  # guard: before the update; stops on a non-finite loss
        with out_of_memory("in a training step", step_fix):
            engine.step()  # the boundary: DeepSpeed's optimizer update
        grad_norm = float(engine.get_global_grad_norm() or 0.0)
        if verdict.spike and cfg.train.on_spike == "rewind":  # guard: reload the last checkpoint, skip batches
            # The update above ran only so that DeepSpeed's accumulation buffers end the step as they always
            # do; the reload overwrites the weights, optimizer and scheduler it touched.
            path, skip = guard.rewind(step + 1)
            metrics.log(f"rewind {guard.rewinds}/{cfg.train.max_rewinds}: loss spike at step {step + 1} ({verdict.loss:.4f}, "
                        f"{verdict.zscore:.1f} sigmas); back to {path}, skipping steps {skip[0]}-{skip[-1]}")
            state, arrays = load_checkpoint(engine, info, cfg, Path(path))
            crash_point("rewind", step + 1)
            step = state["step"]
            phases = resumed_schedule(phases, state["schedule"])
            resumed_digest = _resumed_digest(state, phases, cfg.steps)
            table = LossTable.from_arrays(arrays, num_phases=len(phases))
            guard.rewound(state)
            trace, eval_log = _reopen(trace, run_dir / "trace" / "steps.jsonl", step), _reopen(eval_log, run_dir / "eval.jsonl", step)
            phase = None
            metrics.start(step)
            continue
        guard.check_grad_norm(step + 1, where, grad_norm)  # guard: DeepSpeed skipped a non-finite update; stop
        if verdict.keep_rows:  # guard: a spiking step's losses never rank a block
            table.update(rows, step)
        else:
            metrics.log(f"warning: loss spike at step {step + 1} (phase {phase.index} {phase.kind}): {verdict.loss:.4f} is {verdict.zscore:.1f} "
                        f"sigmas above the running mean; its block losses are kept out of the loss table (train.on_spike=warn)")
        step += 1
        if step == phase.end:
            table.end_phase(phase.index)

        loss = float(rows[:, 1].mean())
        metrics.step(
            StepStats(
                step=step,
                phase=phase.kind,
                loss=loss,
                lr=lr,
                grad_norm=grad_norm,
                loss_scale=1.0,
                samples=step * G,
                tokens=step * G * seq,
                step_time=timer() - t0,
                batch_size=G,
                tokens_per_step=G * seq,
                spikes=guard.spikes,
                rewinds=guard.rewinds,
                skipped=len(guard.skipped),
            )
        )
        if step % cfg.log.interval == 0:
            metrics.loss_table(table, step)
        if trace is not None:
            trace.write(
                json.dumps(
                    {
                        "step": step,
                        "phase": phase.index,
                        "loss": loss,
                        "ids": rows[:, 0].astype(int).tolist(),
                        "losses": rows[:, 1].tolist(),
                        **({"spike": True} if verdict.spike else {}),
                    }
                )
                + "\n"
            )
            trace.flush()
        yield StepRecord(step, phase.kind, loss, local.cpu().numpy(), rows)
        evaluate_and_checkpoint()
    metrics.close()


def _tokenizer(cfg: TrainConfig, dataset) -> tuple[Tokenizer | None, int]:
    """The run's tokenizer (checked against the dataset's sidecar) and vocabulary size. A plain Megatron
    dataset with no sidecar and no ``data.tokenizer`` has no tokenizer: ``model.vocab_size`` must be set."""
    tok_path = cfg.data.tokenizer or (dataset.meta or {}).get("tokenizer", {}).get("path")
    if tok_path is None:
        if cfg.model.vocab_size is None:
            raise UserError(
                f"data.tokenizer: {dataset.prefix} has no lfr-ds sidecar naming its tokenizer; set data.tokenizer or model.vocab_size"
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
        raise UserError(f"run_dir: {run_dir} cannot be written ({blocked} is read-only to this user); choose another run_dir")


def _unwritable(path: Path) -> Path | None:
    """The nearest existing directory at or above ``path`` if this user cannot create files in it, else ``None``."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    return None if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK) else existing


def _resumed_digest(state: dict, phases: list[Phase], steps: int) -> str | None:
    """The digest of the sample index that a run resumed mid-phase (from checkpoint ``state``) must reuse as
    it was written: the loss table has moved on since the phase began. ``None`` where it may be rebuilt: a
    shuffle phase that the new ``steps`` lengthened (its seeded epochs put the same blocks first). A Focus
    phase lengthened mid-phase is refused: its order was drawn once, from the table at its start."""
    step = state["step"]
    if step >= steps:
        return None
    phase, was = phase_at(phases, step), Phase(**state["schedule"][state["phase"]])
    # The same phase (its kind, place and drop; whether its length was given as '*' does not matter here)?
    same = dataclasses.replace(was, steps=phase.steps, rest=phase.rest) == phase
    if not same or phase.steps <= was.steps:
        return state["phase_digest"]
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


def _reopen(log, path: Path, step: int):
    """A rewound run's log (``None`` stays ``None``): closed, its lines past ``step`` dropped, reopened."""
    if log is None:
        return None
    log.close()
    return _open_log(path, step)


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
        epilog="Overrides: any config field as section.key=value, e.g. engine.zero_stage=3 lfr.schedule=paper steps=5000.",
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
