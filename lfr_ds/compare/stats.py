"""The comparison's arithmetic: paired differences across seeds and the two token ratios.

Everything here is pure: it takes per-seed numbers and returns numbers, so the definitions can be
pinned by unit tests on hand-made curves.

- **Paired difference** of an arm on a seed = its final held-out loss minus the random arm's on the
  same seed (same initialisation, same held-out blocks). Summarised by the mean over seeds and its
  standard error (sample standard deviation / sqrt(n)); a mean smaller than about two standard
  errors is no difference.
- **Budget-sweep token ratio** (``--budgets``): each budget b is its own run, with its own full
  warmup-and-cosine schedule on a fraction b of the full tokens, for every arm, random included. The
  baseline is random's **best budget** b* on the same seed: the one with the lowest final held-out loss
  L* (so a random run that overfits by its last pass does not flatter the arm; b* = 1 where it does not).
  The arm's ratio is the smallest b such that *every* budget >= b ends at or below L*, interpolated
  linearly between the last budget above the target and the next one, over b*: the arm's tokens over
  the tokens random needed for L* (above 1 when the arm needs more). Comparing whole runs avoids the
  bias of reading a point inside a run, whose learning rate has not been annealed (Kaddour et al. 2023,
  "No Train No Gain"). Results made before random had a sweep hold random at 1.0 alone: b* = 1.
- **In-run proxy** (no ``--budgets``): the tokens from which the arm's held-out curve *stays* at or
  below random's final loss, over random's tokens. A curve that dips under once and comes back up
  does not count until it stays under. It favours neither arm's annealing only when both arms share
  the schedule, so it is labelled a proxy.

Either is ``None`` when never reached; summaries count such a seed as 1.0 (no saving). The paired
difference is always against random at the full budget, and each summary names its baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Curve = Sequence[tuple[float, float]]


def stays_below_from(curve: Curve, target: float) -> float | None:
    """First token count from which ``curve`` (tokens, loss) stays at or below ``target``."""
    if not curve or curve[-1][1] > target:
        return None
    above = [i for i, (_, loss) in enumerate(curve) if loss > target]
    if not above:
        return float(curve[0][0])
    (t0, l0), (t1, l1) = curve[above[-1]], curve[above[-1] + 1]
    return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)


def budget_ratio(finals: dict[float, float], target: float) -> float | None:
    """Smallest budget b with every budget >= b ending at or below ``target`` (``finals``: budget -> loss)."""
    budgets = sorted(finals)
    if not budgets or finals[budgets[-1]] > target:
        return None
    above = [i for i, b in enumerate(budgets) if finals[b] > target]
    if not above:
        return budgets[0]
    b0, b1 = budgets[above[-1]], budgets[above[-1] + 1]
    l0, l1 = finals[b0], finals[b1]
    return b0 + (b1 - b0) * (l0 - target) / (l0 - l1)


def mean_se(values: Sequence[float]) -> dict:
    """Mean, standard error of the mean (``None`` for one value) and the values themselves."""
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
    return {"mean": mean, "se": se, "values": list(values)}


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation and range of per-seed values."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "values": list(values)}


def ratio_summary(per_seed: Sequence[float | None], kind: str) -> dict:
    """Per-seed token ratios (``None`` = never reached) summarised, never counted as 1.0."""
    counted = [1.0 if r is None else r for r in per_seed]
    out = {"kind": kind, "per_seed": list(per_seed), **spread(counted), "reached": sum(r is not None for r in per_seed)}
    if out["reached"] == 0:
        out["mean"] = None
        out["reason"] = "never reached random's final held-out loss on any seed"
    elif out["reached"] < len(per_seed):
        out["reason"] = f"reached on {out['reached']} of {len(per_seed)} seeds; the others count as 1.0"
    return out


def summarise(
    results: dict[tuple[str, int, float], dict], arms: list[str], seeds: list[int], budgets: list[float]
) -> dict:
    """Per arm: per-seed results at the full budget, their means, and (other than random) the paired
    differences from random and the token ratio. ``results`` maps (arm, seed, budget) to
    :func:`lfr_ds.compare.runs.result`."""
    base = [results["random", s, 1.0] for s in seeds]
    best = random_best(results, seeds, budgets)
    out = {}
    for arm in arms:
        runs = [results[arm, s, 1.0] for s in seeds]
        entry = {"seeds": runs, "mean": _means(runs)}
        if arm == "random":
            entry["spread"] = spread([r["valid_loss"] for r in runs])
            entry["best_budget"] = {"budget": [b for b, _ in best], "valid_loss": [loss for _, loss in best]}
        else:
            entry["paired"] = _paired(runs, base)
            entry["token_ratio"] = _token_ratio(arm, results, seeds, budgets, best)
        ran = [b for b in budgets if all((arm, s, b) in results for s in seeds)]
        if len(ran) > 1:
            entry["budgets"] = {str(b): spread([results[arm, s, b]["valid_loss"] for s in seeds]) for b in ran}
        out[arm] = entry
    return out


def _means(runs: list[dict]) -> dict:
    def avg(key):
        return sum(r[key] for r in runs) / len(runs)

    m = {k: avg(k) for k in ("valid_loss", "valid_ppl", "unique_blocks_trained", "repeat_token_share_trained")}
    m["per_source"] = {s: sum(r["per_source"][s] for r in runs) / len(runs) for s in runs[0]["per_source"]}
    m["blimp_acc"] = avg("blimp_acc") if runs[0]["blimp_acc"] is not None else None
    m["tokens"] = runs[0]["tokens"]
    points = min(len(r["curve"]) for r in runs)
    m["curve"] = [(runs[0]["curve"][i][0], sum(r["curve"][i][1] for r in runs) / len(runs)) for i in range(points)]
    if "test" in runs[0]:
        m["test"] = {f: sum(r["test"][f]["loss"] for r in runs) / len(runs) for f in runs[0]["test"]}
    return m


def _paired(runs: list[dict], base: list[dict]) -> dict:
    """Arm minus random, seed by seed: the final loss (absolute and relative to random), per source, at
    every evaluation point (equal tokens: every arm shares the steps and the evaluation interval), and
    on each test set."""
    pairs = list(zip(runs, base, strict=True))

    def paired(get) -> dict:
        return mean_se([get(r) - get(b) for r, b in pairs])

    def random_mean(get) -> float:
        return sum(get(b) for b in base) / len(base)

    out = {"valid_loss": paired(lambda r: r["valid_loss"])}
    out["relative"] = out["valid_loss"]["mean"] / random_mean(lambda r: r["valid_loss"])
    sources = list(base[0]["per_source"])
    out["per_source"] = {s: paired(lambda r, s=s: r["per_source"][s]) for s in sources}
    out["per_source_relative"] = {
        s: out["per_source"][s]["mean"] / random_mean(lambda r, s=s: r["per_source"][s]) for s in sources
    }
    points = min(len(r["curve"]) for r in runs + base)
    out["curve"] = [(base[0]["curve"][i][0], paired(lambda r, i=i: r["curve"][i][1])) for i in range(points)]
    if "test" in base[0]:
        out["test"] = {f: paired(lambda r, f=f: r["test"][f]["loss"]) for f in base[0]["test"]}
    return out


def random_best(results: dict, seeds: list[int], budgets: list[float]) -> list[tuple[float, float]]:
    """Per seed, random's best budget and its final held-out loss: the lowest over the budgets random ran
    (the smaller budget on a tie); 1.0 alone in results made before random had a sweep."""
    out = []
    for s in seeds:
        ran = [b for b in budgets if ("random", s, b) in results]
        b = min(ran, key=lambda b: results["random", s, b]["valid_loss"])
        out.append((b, results["random", s, b]["valid_loss"]))
    return out


def _token_ratio(
    arm: str, results: dict, seeds: list[int], budgets: list[float], best: list[tuple[float, float]]
) -> dict:
    if len(budgets) > 1:
        per_seed = []
        for s, (b_best, loss) in zip(seeds, best, strict=True):
            reached = budget_ratio({b: results[arm, s, b]["valid_loss"] for b in budgets}, loss)
            per_seed.append(None if reached is None else reached / b_best)
        swept = any(("random", s, b) in results for s in seeds for b in budgets if b != 1.0)
        baseline = "random's best budget" if swept else "random at 1.0 (random ran no sweep)"
        return {**ratio_summary(per_seed, "budget sweep"), "baseline": baseline, "random_budget": [b for b, _ in best]}
    per_seed = []
    for s, (_, loss) in zip(seeds, best, strict=True):
        reached = stays_below_from(results[arm, s, 1.0]["curve"], loss)
        per_seed.append(None if reached is None else reached / results["random", s, 1.0]["tokens"])
    return {
        **ratio_summary(per_seed, "in-run proxy (not annealed: prefer --budgets)"),
        "baseline": "random at 1.0",
        "random_budget": [1.0] * len(seeds),
    }
