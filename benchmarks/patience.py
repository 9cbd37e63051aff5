"""What --patience saves and costs on the default MLP study: one seeded study without it, then the plateau rule
replayed on its trials in order. With the same seed the trials a --patience run starts are the same ones, so the
replay shows where that run would have stopped, how much of the search it saves, and the best value it keeps.

    python benchmarks/patience.py             # the default MLP study (600 s, seed 42), then the replay
    python benchmarks/patience.py --quick     # 10 s of trials on 2,000 images
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from benchmark_args import parse_args
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.search.stopping import Plateau

PATIENCES = (5, 10, 20)
MIN_DELTAS = (0.0, 0.001)


def run_study(folder: Path, data_dir: Path, quick: bool) -> str:
    """Run the study without --patience in `folder`; returns its storage URL."""
    storage = f"sqlite:///{folder / 'optuna.db'}"
    size = ["--timeout", "10", "--max-train-samples", "2000", "--epochs", "2"] if quick else []
    command = [sys.executable, "-m", "fashion_hpo", "study", "--no-register", "--storage", storage, *size]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FASHION_HPO_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    subprocess.run([*command, "--data-dir", str(data_dir.resolve())], cwd=folder, env=env, check=True, timeout=3600)
    return storage


def stop_point(trials: list[FrozenTrial], patience: int, min_delta: float) -> FrozenTrial | None:
    """The trial after which a --patience run of the same study stops (None: it never does)."""
    plateau = Plateau(optuna.create_study(direction="maximize"), patience, min_delta)
    for trial in trials:
        plateau.count(trial)
        if plateau.without_gain >= patience:
            return trial
    return None


def best_value(trials: list[FrozenTrial]) -> float:
    """The best validation accuracy among complete trials."""
    return max(t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None)


def replay(trials: list[FrozenTrial]) -> list[dict[str, object]]:
    """Each setting's stop trial, seconds of search, and best validation accuracy, against the whole study's."""
    start = min(t.datetime_start for t in trials if t.datetime_start)
    seconds = {t.number: (t.datetime_complete - start).total_seconds() for t in trials if t.datetime_complete}
    full_best = best_value(trials)
    rows = []
    for patience in PATIENCES:
        for min_delta in MIN_DELTAS:
            stop = stop_point(trials, patience, min_delta)
            kept = [t for t in trials if stop is None or t.number <= stop.number]
            best = best_value(kept)
            rows.append(
                {
                    "patience": patience,
                    "min_delta": min_delta,
                    "trials": len(kept),
                    "search_s": seconds[stop.number] if stop else max(seconds.values()),
                    "best_val_accuracy": best,
                    "lost_val_accuracy": full_best - best,
                }
            )
    return rows


def main() -> None:
    """Run the study, replay the rule, write the JSON."""
    args = parse_args(__doc__, __file__, "10 s of trials on 2,000 images")
    with tempfile.TemporaryDirectory() as folder:
        storage = run_study(Path(folder), args.data_dir, args.quick)
        study = optuna.load_study(study_name="fashion-mnist-mlp", storage=storage)
        counted = (TrialState.COMPLETE, TrialState.PRUNED)
        trials = sorted(study.get_trials(states=counted), key=lambda t: t.number)
        rows = replay(trials)
    full_s = max((t.datetime_complete - trials[0].datetime_start).total_seconds() for t in trials)
    report = {
        "command": "python benchmarks/patience.py" + (" --quick" if args.quick else ""),
        "study": {"trials": len(trials), "search_s": full_s, "best_val_accuracy": best_value(trials)},
        "with_patience": rows,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(
            f"--patience {row['patience']} --min-delta {row['min_delta']}: {row['trials']} trials, "
            f"{row['search_s']:.0f} of {full_s:.0f} s, best {row['best_val_accuracy']:.4f} "
            f"(lost {row['lost_val_accuracy']:.4f})"
        )


if __name__ == "__main__":
    main()
