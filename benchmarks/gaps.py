"""Benchmark: does the gap between trials grow with the study? One real study of tiny trials, as a user runs it.

Runs `fashion-hpo study` once with --n-trials 600 (the default), `--sampler random` (whose own cost is constant, so
what grows is ours), 1 epoch on 256 images, no pruner, no registration, on fresh SQLite stores. From the stored trials
it reads each gap: from one trial's end to the next one's start (the callback, the tracking, the sampler, the storage).
It compares the median gap of the first 100 trials with that of the last 100 (goal: within 1.3x), and times the
summary: from the last trial's end to the command's exit (goal: within 15 s). Writes a JSON file next to this script.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

HERE = Path(__file__).resolve().parent
STUDY = "gaps"
TINY = ["--epochs", "1", "--max-train-samples", "256", "--pruner", "none", "--sampler", "random", "--no-register"]


def parse_args() -> argparse.Namespace:
    """--n-trials, --window, --quick, --data-dir, --output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=600, help="the study's trials (default: 600)")
    parser.add_argument("--window", type=int, default=100, help="trials in the first and last window (default: 100)")
    parser.add_argument("--quick", action="store_true", help="a run of under a minute: 30 trials, windows of 10")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="FashionMNIST folder (default: data)")
    parser.add_argument("--output", type=Path, default=HERE / "gaps.json", help="JSON result (default: beside it)")
    args = parser.parse_args()
    if args.quick:
        args.n_trials, args.window = 30, 10
    return args


def run_study(folder: Path, n_trials: int, data_dir: Path) -> tuple[list[str], float]:
    """Run the study in `folder`; its command and the wall-clock time at which it exited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FASHION_HPO_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    flags = ["--study-name", STUDY, "--n-trials", str(n_trials), "--timeout", "0", *TINY]
    command = [sys.executable, "-m", "fashion_hpo", "study", *flags]
    where = ["--storage", f"sqlite:///{folder}/optuna.db", "--data-dir", str(data_dir)]
    subprocess.run([*command, *where], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    return ["fashion-hpo", *command[3:]], time.time()


def gaps(trials: list[FrozenTrial]) -> list[float]:
    """Seconds from each trial's end to the next one's start, in trial order."""
    ordered = sorted(trials, key=lambda t: t.number)
    return [
        (after.datetime_start - before.datetime_complete).total_seconds()  # type: ignore[operator]
        for before, after in itertools.pairwise(ordered)
    ]


def measure(args: argparse.Namespace) -> dict[str, object]:
    """The study's gaps per window, its trials' median length and the summary's time."""
    with tempfile.TemporaryDirectory(prefix="gaps-") as tmp:
        command, exited = run_study(Path(tmp), args.n_trials, args.data_dir.resolve())
        trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp}/optuna.db").get_trials(deepcopy=False)
    between = gaps(trials)
    first, last = between[: args.window], between[-args.window :]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete is not None]
    lengths = [t.duration.total_seconds() for t in trials if t.duration is not None]
    return {
        "command": " ".join(command),
        "n_trials": len(trials),
        "window": args.window,
        "median_gap_first_s": statistics.median(first),
        "median_gap_last_s": statistics.median(last),
        "gap_ratio": statistics.median(last) / statistics.median(first),
        "median_trial_s": statistics.median(lengths),
        "summary_s": exited - max(ends),
    }


def main() -> None:
    args = parse_args()
    result = measure(args)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['n_trials']} trials: median gap {result['median_gap_first_s']:.3f} s in the first {args.window}, "
        f"{result['median_gap_last_s']:.3f} s in the last {args.window} ({result['gap_ratio']:.2f}x, goal <= 1.3x); "
        f"summary {result['summary_s']:.1f} s after the last trial (goal <= 15 s)"
    )


if __name__ == "__main__":
    main()
