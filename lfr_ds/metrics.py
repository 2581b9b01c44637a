"""TensorBoard scalars and the console line, with stable names.

Names follow Megatron-LM where it has one (``lm loss``, ``learning-rate``, ``grad-norm``, ``loss-scale``,
``iteration-time``, ``batch-size``, and the ``… vs samples`` / ``… vs tokens`` views, whose x-axis is samples
or tokens consumed) and torchtitan's for throughput (``throughput(tps)``, ``tflops``, ``mfu(%)``).
Only rank 0 writes.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from lfr_ds.config import LogConfig
from lfr_ds.run_state import PhaseManifest

#: Peak dense bf16 TFLOP/s per device, by substring of the CUDA device name (the datasheet figure MFU is
#: conventionally quoted against).
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


#: Above this the console prints ``>1e6`` for a perplexity: a model that far gone is diverged, and the exact
#: number (up to e^50, the clamp TensorBoard still gets) says nothing more.
PPL_SHOWN = 1e6


def console_ppl(ppl: float) -> str:
    """A perplexity for the console, 8 columns: ``>1e6`` above :data:`PPL_SHOWN` (TensorBoard keeps the value)."""
    return f"{ppl:8.2f}" if ppl <= PPL_SHOWN else f"{'>1e6':>8}"


def peak_tflops(configured: float | None) -> float | None:
    """The per-device peak TFLOP/s that MFU divides by: ``log.peak_tflops`` if set, else a listed GPU's
    datasheet figure, else ``None``, and no MFU is reported (the achieved TFLOP/s still is).

    A CPU has no peak torch can read. A constant per thread (as this once was) showed a faster CPU at
    100-104%, and a peak timed at startup is only as good as the machine's quiet at that moment: on a
    shared host it reads low and MFU high, by any factor. A GPU missing from the table likewise: a guess
    from another model shows a faster one above 100%. Better no number than a wrong one."""
    if configured is not None:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
    return None


@dataclass
class StepStats:
    step: int  # optimizer steps completed
    phase: str
    loss: float  # mean over the global batch
    lr: float
    grad_norm: float
    loss_scale: float
    samples: int  # consumed so far
    tokens: int
    step_time: float  # seconds for this step
    batch_size: int  # blocks per optimizer step
    tokens_per_step: int
    spikes: int = 0  # loss spikes so far (lfr_ds.guard)
    rewinds: int = 0  # rewinds so far
    skipped: int = 0  # global batches skipped by rewinds so far


class Metrics:
    """Writes scalars every ``log.interval`` steps (rank 0) and the console line."""

    def __init__(
        self, run_dir: str, log: LogConfig, *, rank: int, world_size: int, flops_per_token: float, total_steps: int
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.flops_per_token = flops_per_token
        self.peak = peak_tflops(log.peak_tflops)
        self.interval = log.interval
        self.total_steps = total_steps
        self.writer = None
        if rank == 0 and log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=f"{run_dir}/tb")
        self.bar = None
        if rank == 0 and log.progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)
        self._window: list[StepStats] = []
        self._summary: list[tuple[float, int]] = []  # (seconds, tokens) per step, after the first window
        self._summary_path = f"{run_dir}/metrics.json"

    def start(self, step: int) -> None:
        """At the first step, and again after a rewind (the steps logged since are undone)."""
        self._run_from = None  # (step, time) at the end of the first step: warm-up (compiles, allocator) excluded
        self._window = []
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def step(self, s: StepStats) -> None:
        if self.rank != 0:
            return
        self._run_to = (s.step, time.perf_counter())
        self._run_from = self._run_from or self._run_to
        self._window.append(s)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{s.phase} loss {s.loss:.3f}", refresh=False)
        if s.step % self.interval and s.step != self.total_steps:
            return
        w = self._window
        self._window = []
        if s.step > self.interval:  # the first window holds warm-up: allocator growth, lazy init, compiles
            self._summary += [(x.step_time, x.tokens_per_step) for x in w]
        secs = sum(x.step_time for x in w)
        tokens = sum(x.tokens_per_step for x in w)
        tps = tokens / max(secs, 1e-9)
        tflops = tps * self.flops_per_token / 1e12 / self.world_size  # per device
        loss = sum(x.loss for x in w) / len(w)
        mem = self._memory()
        scalars = {
            "lm loss": loss,
            "lm loss ppl": math.exp(min(loss, 50.0)),
            "learning-rate": s.lr,
            "grad-norm": s.grad_norm,
            "loss-scale": s.loss_scale,
            "batch-size": s.batch_size,
            "samples": s.samples,
            "tokens": s.tokens,
            "iteration-time": secs / len(w),
            "throughput(tps)": tps,
            "tflops": tflops,
            "mem-max-allocated-bytes" if torch.cuda.is_available() else "mem-max-rss-bytes": mem,
            "spikes": s.spikes,
            "rewinds": s.rewinds,
            "skipped-batches": s.skipped,
        }
        if self.peak is not None:
            scalars["mfu(%)"] = 100.0 * tflops / self.peak
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, s.step)
            for name in ("lm loss", "learning-rate"):
                self.writer.add_scalar(f"{name} vs samples", scalars[name], s.samples)
                self.writer.add_scalar(f"{name} vs tokens", scalars[name], s.tokens)
            self.writer.flush()
        mfu = f"mfu {scalars['mfu(%)']:.1f}% | " if "mfu(%)" in scalars else ""
        line = (
            f"step {s.step:>6}/{self.total_steps} | {s.phase:<8} | loss {loss:.4f} | "
            f"ppl {console_ppl(scalars['lm loss ppl'])} | "
            f"lr {s.lr:.2e} | gnorm {s.grad_norm:.3f} | {tps:,.0f} tok/s | {tflops:.2f} TFLOP/s | {mfu}"
            f"{secs / len(w):.2f} s/it | {mem / 2**30:.1f} GiB"
        )
        if s.spikes or s.rewinds:
            line += f" | spikes {s.spikes} rewinds {s.rewinds} skipped {s.skipped}"
        self.log(line)

    @staticmethod
    def _memory() -> int:
        """Peak GPU memory allocated, or on CPU the process's peak resident set."""
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def log(self, line: str) -> None:
        """A console line from rank 0 that does not break the progress bar."""
        if self.rank != 0:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def evaluation(self, results: dict) -> None:
        """Held-out loss (overall and per source) and BLiMP accuracy, against steps and tokens."""
        step, tokens = results["step"], results["tokens"]
        parts = []
        if "valid" in results:
            v = results["valid"]
            parts.append(f"valid loss {v['loss']:.4f} (ppl {console_ppl(v['ppl']).strip()})")
            if self.writer is not None:
                self.writer.add_scalar("lm loss validation", v["loss"], step)
                self.writer.add_scalar("lm loss validation ppl", v["ppl"], step)
                self.writer.add_scalar("lm loss validation vs tokens", v["loss"], tokens)
                for source, s in v["per_source"].items():
                    self.writer.add_scalar(f"lm loss validation/{source}", s["loss"], step)
        if "blimp" in results:
            parts.append(f"BLiMP {results['blimp']['acc']:.3f}")
            if self.writer is not None:
                self.writer.add_scalar("blimp acc", results["blimp"]["acc"], step)
        self.log(
            f"eval step {step}: "
            + ", ".join(parts)
            + (f" in {results['seconds']:.1f}s" if "seconds" in results else "")
        )

    def phase_start(self, phase, manifest: PhaseManifest, table, step: int) -> None:
        """At a phase boundary: the console line, the phase's kept fraction and source shares (on a blend,
        each corpus's share of the draws, its weight and its Focus drop), and a histogram of block
        perplexity as the phase starts."""
        num_blocks = manifest.num_blocks
        line = (
            f"phase {phase.index} {phase.kind}: steps {phase.start}-{phase.end}, keeps {manifest.kept:,} of "
            f"{num_blocks:,} blocks"
        )
        if manifest.source_drop_fraction is not None:  # a Focus that ranked blocks (not one the guard stopped)
            drops = ", ".join(f"{s} {f:.0%}" for s, f in manifest.source_drop_fraction.items())
            line += (
                f" (drops {manifest.drop_fraction:.0%} of seen blocks{' (auto)' if phase.auto_drop else ''}; "
                f"per source: {drops})"
            )
        if manifest.corpora is not None:
            line += "; corpus share (weight): " + ", ".join(
                f"{name} {c['share']:.1%} ({c['weight']:.1%})" for name, c in manifest.corpora.items()
            )
        self.log(line)
        if self.writer is None:
            return
        self.writer.add_scalar("lfr/phase", phase.index, step)
        self.writer.add_scalar("lfr/kept fraction", manifest.kept / num_blocks, step)
        for source, share in manifest.source_share.items():
            self.writer.add_scalar(f"lfr/source share/{source}", share, step)
        for corpus, c in (manifest.corpora or {}).items():  # a blend: each corpus's draws against its weight
            self.writer.add_scalar(f"lfr/corpus share/{corpus}", c["share"], step)
            self.writer.add_scalar(f"lfr/corpus weight/{corpus}", c["weight"], step)
        for corpus, fraction in (manifest.corpus_drop_fraction or {}).items():
            self.writer.add_scalar(f"lfr/corpus drop fraction/{corpus}", fraction, step)
        seen = table.loss[table.seen > 0]
        if len(seen):
            self.writer.add_histogram("lfr/block ppl", np.exp(np.minimum(seen, 20.0)), step)

    def loss_table(self, table, step: int) -> None:
        """Coverage and loss-table quantiles (on an evenly spaced sample of at most 1M blocks)."""
        if self.writer is None:
            return
        stride = max(1, table.num_blocks // 1_000_000)
        sample = table.loss[::stride]
        sample = sample[~np.isnan(sample)]
        self.writer.add_scalar("lfr/blocks seen", int(table.seen.sum(dtype=np.int64)), step)
        self.writer.add_scalar("lfr/unique blocks seen", int(np.count_nonzero(table.seen)), step)
        if len(sample):
            for q, v in zip((10, 50, 90), np.percentile(sample, (10, 50, 90)), strict=True):
                self.writer.add_scalar(f"lfr/block loss p{q}", float(v), step)

    def close(self) -> None:
        """Write ``RUN_DIR/metrics.json``, the run's steady-state throughput, and close the writers.

        ``run_seconds`` is the wall time of the ``run_steps`` steps after this process's first (warm-up),
        phase boundaries (the LFR rewrites) and evaluations included: LFR's total cost over random's."""
        if self.rank == 0 and self._summary:
            from lfr_ds import atomic

            secs = sum(t for t, _ in self._summary)
            tps = sum(n for _, n in self._summary) / max(secs, 1e-9)
            tflops = tps * self.flops_per_token / 1e12 / self.world_size
            atomic.write_json(
                self._summary_path,
                {
                    "steps_measured": len(self._summary),
                    "iteration_time": secs / len(self._summary),
                    "tokens_per_s": tps,
                    "tflops_per_device": tflops,
                    "mfu_percent": None if self.peak is None else 100.0 * tflops / self.peak,
                    "peak_tflops": self.peak,
                    "peak_memory_bytes": self._memory(),
                    "world_size": self.world_size,
                    "run_steps": self._run_to[0] - self._run_from[0],
                    "run_seconds": self._run_to[1] - self._run_from[1],
                },
            )
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def timer() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()
