"""The cells of the rows of docs/benchmarks.md that judge searches, quality.py's and race.py's (benchmarks/report.py
builds the table)."""

from __future__ import annotations

import re

DATA_DIR = re.compile(r" -P data_dir=\S+")  # a path of the machine that measured, not part of the command


def quality(r: dict) -> str:
    """Benchmark 5's cell."""
    trials = r["trials"]
    refit = f", refit {r['refit_epochs']} epochs on 60,000 images" if "refit_epochs" in r else ""
    return (
        f"`{DATA_DIR.sub('', r['command'])}`: {trials['finished']} trials ({trials['complete']} "
        f"complete, {trials['pruned']} pruned, {trials['failed']} failed) in {r['wall_s'] / 60:.0f} min; best trial "
        f"#{r['best_trial']} val {r['best_val_accuracy']:.4f}{baseline(r)}{refit}; registered model test accuracy "
        f"**{r['test_accuracy']:.4f}**" + cost(r) + time_to_quality(r)
    )


def baseline(r: dict) -> str:
    """The baseline trial's validation accuracy when another trial beat it (older results lack it)."""
    value = r.get("baseline_val_accuracy")
    if value is None or value == r["best_val_accuracy"]:
        return ""
    return f" (baseline trial val {value:.4f})"


def time_to_quality(r: dict) -> str:
    """When the study's best validation accuracy first reached the model's quality line (older results lack it)."""
    if "time_to_quality" not in r:
        return ""
    reached = r["time_to_quality"]
    when = "never" if reached["seconds"] is None else f"after **{reached['seconds'] / 60:.1f} min**"
    return f"; best val ≥ {reached['val_accuracy']} {when}"


def pareto(r: dict) -> str:
    """A multi-objective quality run's cell: the run, then its Pareto front (accuracy against the other objective)."""
    other = next(name for name in r["pareto_front"][0] if name not in ("trial", "val_accuracy"))
    unit = " ms" if other == "latency_ms" else " params"
    front = ", ".join(f"#{t['trial']} {t['val_accuracy']:.4f} @ {t[other]:.3g}{unit}" for t in r["pareto_front"])
    return f"{quality(r)}. Front (val accuracy @ {other}): {front}"


def cost(r: dict) -> str:
    """The registered model's size and CPU latency (older results lack them)."""
    if "n_params" not in r:
        return ""
    return f", {r['n_params']:,} parameters, {r['latency_ms']:.3f} ms per image on the CPU"


def race(r: dict) -> str:
    """The race's cell: each contender's seeds, with trials, best validation and test accuracy, minutes to each
    validation accuracy ("-": never) and CPU seconds."""
    names = list(dict.fromkeys(row["name"] for row in r["results"]))
    cells = []
    for name in names:
        seeds = [race_seed(row) for row in r["results"] if row["name"] == name]
        cells.append(f"**{name}** — {'; '.join(seeds)}")
    return f"{r['budget_s']} s each, {r['epochs']}-epoch trials — " + ". ".join(cells)


def race_seed(row: dict) -> str:
    """One contender's figures for one seed."""
    thresholds = [key for key in row if key.startswith("time_to_")]
    times = "/".join("-" if row[key] is None else f"{row[key] / 60:.1f}" for key in thresholds)
    levels = "/".join(key.removeprefix("time_to_") for key in thresholds)
    if row["best_val_accuracy"] is None:
        return f"seed {row['seed']}: {row['trials']} trials, none ranked"
    return (
        f"seed {row['seed']}: {row['trials']} trials, val {row['best_val_accuracy']:.4f}, test "
        f"**{row['test_accuracy']:.4f}**, {levels} after {times} min, {row['cpu_s']:,.0f} CPU s"
    )
