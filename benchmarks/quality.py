"""Benchmark 5: model quality within the time budget — the README's main command, `mlflow run .`, on fresh stores.

Runs `mlflow run <repo> --env-manager local` (plus any `-P` overrides) with MLflow's and Optuna's databases in a
temporary folder, so that the study starts empty, and reads the result back from the tracking store: trials, best
validation accuracy, and the registered model's test accuracy.
`--model cnn --timeout 1800` is the CNN study; `--max-params N` the same study under a parameter budget, and
`--objectives val_accuracy,latency_ms` a multi-objective study whose Pareto front the JSON lists (accuracy against
cost). Time to quality: from the command's start, the wall seconds until the study's best validation accuracy first
reached 0.90 (MLP) or 0.925 (CNN), read from the trials' completion times; `--pruner` compares pruners on it.
`--max-train-samples N` sets the training-set size, the trials' resource: each trial trains on N images (0 = all;
validation stays whole; the project's default is 10,000 for the CNN, all for the MLP), and the best configuration is
still refit on all 60,000.
`--seed N` runs the study with another seed (sampler, split and torch) to show run-to-run noise: the seed decides the
configurations drawn and how they train, so a rerun with the same seed is no second sample.
Writes a JSON file (named after the model, the budget, the objectives, a non-default pruner, TPE start, training
subset or seed) next to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from report import quality_json_name

from fashion_hpo.core.constants import BASELINE
from fashion_hpo.core.settings import RunSettings

HERE = Path(__file__).resolve().parent
QUALITY = {"mlp": 0.90, "cnn": 0.925}  # the validation accuracy that time to quality waits for
PROJECT = RunSettings()  # the project's defaults, which a run overrides only where its flags differ
STUDY_FLAGS = ("max_params", "objectives", "pruner", "startup_trials", "max_train_samples", "seed")


def parse_args() -> argparse.Namespace:
    """--quick, --model, --timeout, the study's flags to compare (--max-params to --seed), --output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a run of under a minute (2 trials x 1 epoch, refit 1 epoch)"
    )
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="search space (default: mlp)")
    parser.add_argument("--timeout", type=int, default=600, help="the study's budget in seconds (default: 600)")
    parser.add_argument(
        "--max-params",
        type=int,
        default=PROJECT.max_params,
        help="the study's --max-params constraint; 0 = none (default: %(default)s, the project's)",
    )
    parser.add_argument(
        "--objectives",
        default=PROJECT.objectives,
        help="the study's --objectives, e.g. val_accuracy,latency_ms (default: %(default)s, the project's)",
    )
    parser.add_argument(
        "--pruner", default=PROJECT.pruner, help="the study's --pruner (default: %(default)s, the project's)"
    )
    parser.add_argument(
        "--startup-trials",
        type=int,
        default=PROJECT.startup_trials,
        help="the study's --startup-trials: TPE's random trials (default: %(default)s, the project's)",
    )
    parser.add_argument(
        "--max-train-samples",
        type=int,
        help="the study's --max-train-samples: each trial trains on this many images; 0 = all (default: the "
        "project's, auto: 10,000 for cnn, all for mlp)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=PROJECT.seed,
        help="the study's --seed (sampler, train/validation split, torch); another seed gives a second sample of "
        "a study (default: %(default)s, the project's)",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="FashionMNIST folder (default: data)")
    parser.add_argument("--output", type=Path, help="JSON result file (default: quality_<model>.json beside it)")
    return parser.parse_args()


def study_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The -P settings this run changes from the project's defaults, which also name its JSON file."""
    # --max-train-samples counts whenever given: the project's default for it depends on the model.
    overrides: dict[str, str] = {}
    for name in STUDY_FLAGS:
        value = getattr(args, name)
        if value is not None and (name == "max_train_samples" or value != getattr(PROJECT, name)):
            overrides[name] = str(value)
    return overrides


def run_project(folder: Path, params: dict[str, str]) -> float:
    """`mlflow run` of this project in `folder`; returns its wall seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [shutil.which("mlflow", path=env["PATH"]) or "mlflow", "run", str(HERE.parent), "--env-manager", "local"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    start = time.monotonic()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    return time.monotonic() - start


def main() -> None:
    args = parse_args()
    overrides = study_overrides(args)
    name = quality_json_name(args.model, overrides)
    params = {"model": args.model, "timeout": str(args.timeout), "data_dir": str(args.data_dir.resolve()), **overrides}
    if args.quick:
        params.update(n_trials="2", epochs="1", refit_epochs="1", max_train_samples="1000")
    with tempfile.TemporaryDirectory() as folder:
        # `mlflow run` starts the entry point in the project folder: a relative storage would continue whatever
        # study an earlier run left in the checkout's optuna.db. Each benchmark run is a new study.
        started = time.time()
        wall = run_project(Path(folder), {**params, "storage": f"sqlite:///{folder}/optuna.db"})
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "metrics.test_accuracy > 0")
        metrics, run_params, tags = runs[0].data.metrics, runs[0].data.params, runs[0].data.tags
        version = client.get_model_version_by_alias("fashion-mnist-classifier", "champion")
        front = pareto_front(f"sqlite:///{folder}/optuna.db", args.objectives)
        reached = time_to_quality(f"sqlite:///{folder}/optuna.db", QUALITY[args.model], started)
        baseline = baseline_val_accuracy(f"sqlite:///{folder}/optuna.db")
    result = {
        "command": "mlflow run . --env-manager local " + " ".join(f"-P {k}={v}" for k, v in params.items()),
        "wall_s": wall,
        "trials": {state: int(metrics[f"trials_{state}"]) for state in ("finished", "complete", "pruned", "failed")},
        "best_trial": int(metrics["best_trial_number"]),
        "best_val_accuracy": metrics["best_val_accuracy"],
        "baseline_val_accuracy": baseline,
        "test_accuracy": metrics["test_accuracy"],
        "refit_epochs": int(tags["refit_epochs"]),
        "n_params": int(version.tags["n_params"]),
        "latency_ms": float(version.tags["latency_ms"]),
        "best_params": {k[len("best_") :]: v for k, v in run_params.items() if k.startswith("best_")},
        "time_to_quality": {"val_accuracy": QUALITY[args.model], "seconds": reached},
        **({"pareto_front": front} if front else {}),
    }
    print(json.dumps(result, indent=2))
    (args.output or HERE / name).write_text(json.dumps(result, indent=2))


def time_to_quality(storage: str, threshold: float, started: float) -> float | None:
    """Seconds from `started` (epoch seconds) until a finished trial first reached `threshold` validation accuracy;
    None if none did."""
    trials = the_study(storage).get_trials(states=[TrialState.COMPLETE])
    reached = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete and t.values[0] >= threshold]
    return min(reached) - started if reached else None


def baseline_val_accuracy(storage: str) -> float | None:
    """The baseline trial's validation accuracy (what the search has to beat); None if it did not complete."""
    trials = the_study(storage).get_trials(states=[TrialState.COMPLETE])
    return next((t.values[0] for t in trials if t.user_attrs.get(BASELINE)), None)


def pareto_front(storage: str, objectives: str) -> list[dict[str, float]]:
    """A multi-objective study's Pareto front, most accurate first: each trial's number and objective values."""
    names = objectives.split(",")
    if len(names) == 1:
        return []
    study = the_study(storage)
    front = sorted(study.best_trials, key=lambda trial: -trial.values[0])
    return [{"trial": trial.number, **dict(zip(names, trial.values, strict=True))} for trial in front]


def the_study(storage: str) -> optuna.Study:
    """The one study of the benchmark's fresh storage."""
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


if __name__ == "__main__":
    main()
