"""MFU is reported only against a peak lfr-ds can trust: a listed GPU's datasheet figure or log.peak_tflops.
On a CPU (whose speed no constant describes) and on an unlisted GPU there is none, so no MFU, and never
one above 100% from a guessed peak."""

from __future__ import annotations

import json

import pytest
import torch

from lfr_ds import metrics
from lfr_ds.config import LogConfig
from lfr_ds.metrics import Metrics, StepStats, peak_tflops


def _one_window(tmp_path, peak: float | None, step_time: float) -> dict:
    """Two logged steps (a warm-up window, then one measured) of 1,000 tokens of 6 MFLOP each, every
    step taking ``step_time``; returns metrics.json (the console lines go to stderr)."""
    log = LogConfig(interval=1, tensorboard=False, peak_tflops=peak, progress_bar=False)
    m = Metrics(str(tmp_path), log, rank=0, world_size=1, flops_per_token=6e6, total_steps=2)
    m.start(0)
    for step in (1, 2):
        m.step(
            StepStats(
                step=step,
                phase="learn",
                loss=2.0,
                lr=1e-3,
                grad_norm=1.0,
                loss_scale=1.0,
                samples=4 * step,
                tokens=1000 * step,
                step_time=step_time,
                batch_size=4,
                tokens_per_step=1000,
            )
        )
    m.close()
    return json.loads((tmp_path / "metrics.json").read_text())


def test_a_fast_cpu_reports_tflops_and_no_mfu(tmp_path, capsys):
    # 1,000 tokens × 6 MFLOP in 1 ms: 6 TFLOP/s, which the old 2-thread CPU constant (0.15) showed as 4,000% MFU.
    summary = _one_window(tmp_path, None, step_time=1e-3)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("6.00 TFLOP/s | " in line and "mfu" not in line for line in lines)
    assert summary["mfu_percent"] is None and summary["peak_tflops"] is None
    assert summary["tflops_per_device"] == pytest.approx(6.0)


def test_a_configured_peak_gives_mfu(tmp_path, capsys):
    summary = _one_window(tmp_path, 12.0, step_time=1e-3)
    assert all("| mfu 50.0% |" in line for line in capsys.readouterr().err.splitlines())
    assert summary["mfu_percent"] == pytest.approx(50.0) and summary["peak_tflops"] == 12.0


@pytest.mark.parametrize(
    ("gpu", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA A100-SXM4-40GB", 312.0),
        ("NVIDIA B200", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_is_a_listed_gpus_or_none(monkeypatch, gpu, peak):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: gpu)
    assert peak_tflops(None) == peak
    assert peak_tflops(400.0) == 400.0


def test_no_peak_on_cpu_whatever_its_threads(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for threads in (1, 2, 64):
        monkeypatch.setattr(metrics.torch, "get_num_threads", lambda t=threads: t)
        assert peak_tflops(None) is None
