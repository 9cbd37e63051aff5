"""Benchmark: trials per hour with `--workers 1` vs `--workers 2` on this machine, default MLP search space.

Each way runs the real command (`python -m fashion_hpo study --workers W`) on a fresh SQLite study; with the random
sampler seeded per trial number, both ways train the very same trials (pruning off, so each trains every epoch).
Trials per hour = trials / (last trial's end - first trial's start): process start-up and data loading excluded
(the command's whole wall time is printed too). Order 1, 2, 2, 1 so that drift of the machine cancels out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from benchmark_args import parse_args


def run_study(workers: int, folder: Path, data_dir: Path, size: tuple[int, int, int]) -> dict[str, float]:
    """Run the study command once; its search window, trials per hour and wall time."""
    n_trials, epochs, samples = size
    storage = f"sqlite:///{folder}/optuna.db"
    command = [sys.executable, "-m", "fashion_hpo", "study", "--workers", str(workers), "--no-register"]
    command += ["--n-trials", str(n_trials), "--epochs", str(epochs), "--max-train-samples", str(samples)]
    command += ["--sampler", "random", "--pruner", "none", "--timeout", "0", "--study-name", "workers"]
    command += ["--storage", storage, "--data-dir", str(data_dir), "--no-progress-bar"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    start = time.monotonic()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    wall = time.monotonic() - start
    trials = optuna.load_study(study_name="workers", storage=storage).trials
    window = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {"window_s": window, "wall_s": wall, "trials_per_hour": len(trials) * 3600 / window}


def main() -> None:
    args = parse_args(__doc__, __file__, "2 trials x 1 epoch x 1,000 samples")
    size = (2, 1, 1000) if args.quick else (12, 3, 20_000)
    order = [1, 2] if args.quick else [1, 2, 2, 1]
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for workers in order:
        with tempfile.TemporaryDirectory() as folder:
            runs[workers].append(run_study(workers, Path(folder), args.data_dir.resolve(), size))
    rate = {w: len(r) * size[0] * 3600 / sum(x["window_s"] for x in r) for w, r in runs.items()}
    ratio = rate[2] / rate[1]
    print(f"{size[0]} trials x {size[1]} epochs x {size[2]} samples, default MLP space, random sampler, no pruning")
    for workers in (1, 2):
        walls = ", ".join(f"{x['wall_s']:.0f} s" for x in runs[workers])
        print(f"--workers {workers}: {rate[workers]:.0f} trials/hour (command wall: {walls})")
    print(f"ratio: {ratio:.2f}x (goal >= 1.6x)")
    result = {"n_trials": size[0], "epochs": size[1], "samples": size[2], "runs": runs, "ratio": ratio}
    args.output.write_text(json.dumps({**result, "trials_per_hour": rate}, indent=2))


if __name__ == "__main__":
    main()
