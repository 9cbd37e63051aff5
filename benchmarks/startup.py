"""Benchmark: a command's fixed cost before its first trial (imports, data, the tracking store's probe, the study).

Runs `fashion-hpo study` with two short trials per worker on fresh stores, with `--workers 1` and `--workers 2`, and
reads from the trials' start times how long after the command's start each process began its first trial. Each
configuration runs with the decoded-splits cache removed first (every start decodes the IDX files through
torchvision, as before the cache existed) and with the cache in place (as every start after the first).
Medians of --repeats runs; writes a JSON file next to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from fashion_hpo.data.cache import CACHE_NAME
from fashion_hpo.data.raw import raw_dir

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    """--quick, --repeats, --data-dir, --output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per configuration instead of --repeats")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (default: 3)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="FashionMNIST folder (default: data)")
    parser.add_argument("--output", type=Path, default=HERE / "startup.json", help="JSON result (default: beside it)")
    return parser.parse_args()


def first_trials(folder: Path, workers: int, data_dir: Path) -> list[float]:
    """Run a tiny study in `folder`; seconds from the command's start to each process's first trial, sorted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FASHION_HPO_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    storage = f"sqlite:///{folder}/optuna.db"
    # Trials of a few seconds, two per process: each process starts its first before the others use up the budget.
    # No refit or registration: what is timed ends with the first trials.
    flags = ["--n-trials", str(2 * workers), "--epochs", "2", "--max-train-samples", "10000", "--no-register"]
    command = [sys.executable, "-m", "fashion_hpo", "study", *flags, "--workers", str(workers), "--storage", storage]
    start = time.time()
    subprocess.run([*command, "--data-dir", str(data_dir)], cwd=folder, env=env, check=True, capture_output=True)
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    by_process: dict[str, float] = {}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for trial in trials:
        assert trial.datetime_start is not None
        process = client.get_run(trial.system_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
        by_process[process] = min(by_process.get(process, float("inf")), trial.datetime_start.timestamp() - start)
    if len(by_process) != workers:
        raise SystemExit(f"only {len(by_process)} of {workers} processes ran a trial: make the trials longer")
    return sorted(by_process.values())


def measure(workers: int, cached: bool, data_dir: Path, repeats: int) -> list[float]:
    """Median seconds to each process's first trial over `repeats` runs, with or without the splits cache."""
    runs = []
    for _ in range(repeats):
        cache = raw_dir(data_dir) / CACHE_NAME
        if not cached:
            cache.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            runs.append(first_trials(Path(folder), workers, data_dir))
    return [statistics.median(run[k] for run in runs) for k in range(workers)]


def main() -> None:
    args = parse_args()
    repeats = 1 if args.quick else args.repeats
    data_dir = args.data_dir.resolve()
    with tempfile.TemporaryDirectory() as copy:
        # A private copy of the raw files, so that removing the cache never touches the user's folder.
        shutil.copytree(raw_dir(data_dir), raw_dir(Path(copy)), ignore=shutil.ignore_patterns(CACHE_NAME, ".*lock"))
        rows = {
            f"workers {workers}, {'cache' if cached else 'no cache'}": measure(workers, cached, Path(copy), repeats)
            for workers in (1, 2)
            for cached in (False, True)
        }
    for label, seconds in rows.items():
        print(f"{label:<22} first trial after " + ", ".join(f"{s:.1f} s" for s in seconds))
    for workers in (1, 2):
        before, after = rows[f"workers {workers}, no cache"], rows[f"workers {workers}, cache"]
        print(f"--workers {workers}: the cache saves {before[-1] - after[-1]:.1f} s of the last process's start")
    args.output.write_text(json.dumps({"repeats": repeats, "first_trial_s": rows}, indent=2))


if __name__ == "__main__":
    main()
