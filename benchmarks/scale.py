"""Benchmark: per-trial overhead as a study grows (100, 1,000, 5,000 trials), and many workers on one study.

Sizes: one study per storage (SQLite, PostgreSQL) of tiny real trials (the pipeline's own search: the budgeted
storage, the tracked objective, the callback; 1 epoch on 64 images, no pruner, `--sampler random`, whose cost is
constant), pre-filled with synthetic finished trials (each linked to a closed MLflow run, as real ones are) up to each
size, then timed over real trials: per trial, from one objective's start to the next, less training, split into
sampler, storage, tracking and the rest. TPE's own cost (ask + the search space's suggestions, nothing stored) is
timed on copies of the same trials. Workers: `fashion-hpo study --workers N` on PostgreSQL + `mlflow server` on
loopback, straight and through `fashion-hpo storage-proxy` (scale_workers.py). Writes a JSON file next to this script.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
from benchmark_args import parse_args
from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from optuna_integration.mlflow.mlflow import RUN_ID_ATTRIBUTE_KEY
from scale_probe import Clock, Cycles, probed
from scale_workers import drop_database, new_database, worker_sweep

from fashion_hpo.core.constants import STUDY_TAG
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData, load_data
from fashion_hpo.pipeline.study import search_here
from fashion_hpo.search.samplers import TrialSeededSampler
from fashion_hpo.search.space import suggest_config
from fashion_hpo.search.study import open_study
from fashion_hpo.storage.budget import count_budget
from fashion_hpo.storage.rdb import BudgetedStorage, budget_used
from fashion_hpo.tracking.callback import STATE_TAG, TRIAL_NUMBER_TAG, trial_run_name
from fashion_hpo.tracking.runs import parent_run

STUDY = "scale"
TINY = {"epochs": 1, "max_train_samples": 64, "pruner": "none", "sampler": "random", "baseline_trial": False}


def tiny_settings(storage: str, n_trials: int) -> RunSettings:
    """A study of tiny trials on `storage`, `n_trials` in all."""
    return RunSettings(study_name=STUDY, storage=storage, n_trials=n_trials, timeout=0, progress_bar=False, **TINY)


def search(data: FashionData, settings: RunSettings) -> Cycles:
    """Run the pipeline's search up to the settings' total, timing each trial."""
    cycles = Cycles(Clock())
    with parent_run(settings), probed(cycles):
        search_here(open_study(settings), data, settings)
    return cycles


def random_value(distribution: BaseDistribution, rng: random.Random) -> object:
    """A value drawn uniformly from one of the search space's distributions."""
    if isinstance(distribution, CategoricalDistribution):
        return rng.choice(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return rng.randint(int(distribution.low), int(distribution.high))
    assert isinstance(distribution, FloatDistribution)
    if distribution.log:
        return distribution.low * (distribution.high / distribution.low) ** rng.random()
    return rng.uniform(distribution.low, distribution.high)


def closed_runs(count: int) -> list[str]:
    """`count` closed trial runs of the study, as the callback leaves them, in the active experiment."""
    client = MlflowClient()
    experiment = mlflow.set_experiment(STUDY).experiment_id
    ids = []
    for number in range(count):
        tags = {STUDY_TAG: STUDY, TRIAL_NUMBER_TAG: str(number), STATE_TAG: TrialState.COMPLETE.name}
        run = client.create_run(experiment, tags=tags, run_name=trial_run_name(number))
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return ids


def synthetic(template: FrozenTrial, run_id: str, rng: random.Random) -> FrozenTrial:
    """A finished trial shaped like `template` (its search space), with random params and value, linked to a run."""
    value = rng.uniform(0.1, 0.9)
    return optuna.trial.create_trial(
        value=value,
        params={name: random_value(d, rng) for name, d in template.distributions.items()},
        distributions=template.distributions,
        user_attrs={"model": template.user_attrs.get("model", "mlp")},
        system_attrs={RUN_ID_ATTRIBUTE_KEY: run_id},
        intermediate_values={1: value},
    )


def fill(storage: str, size: int, runs: list[str], rng: random.Random) -> None:
    """Add synthetic finished trials to the study until it has `size` trials."""
    study = open_study(tiny_settings(storage, size))
    trials = study.get_trials(deepcopy=False)
    templates = [t for t in trials if t.state == TrialState.COMPLETE]
    study.add_trials([synthetic(rng.choice(templates), runs[i], rng) for i in range(len(trials), size)])


def size_sweep(
    data: FashionData, storage: str, sizes: list[int], real: int, runs: list[str]
) -> list[dict[str, object]]:
    """Per size, the median per-trial overhead and its split over `real` timed trials."""
    rng, rows = random.Random(0), list[dict[str, float]]()
    search(data, tiny_settings(storage, 3))  # real trials first: the search space's shapes for the synthetic ones
    for size in sizes:
        fill(storage, size, runs, rng)
        before = len(open_study(tiny_settings(storage, size)).trials)
        cycles = search(data, tiny_settings(storage, before + real))
        rows.append({"size": size, "timed_trials": len(cycles.rows), **cycles.medians(), **budget_reads(storage)})
        print(f"  {size:>5} trials: " + "  ".join(f"{k} {v * 1000:.1f} ms" for k, v in cycles.medians().items()))
    return rows


def budget_reads(storage: str) -> dict[str, float]:
    """Seconds to count the budget as before (every trial read, then counted) and as now (counted in SQL)."""
    backend = BudgetedStorage(storage, 0, 60, 120, None)
    study_id = backend.get_study_id_from_name(STUDY)
    start = time.perf_counter()
    budget_used(backend.get_all_trials(study_id, deepcopy=False))
    middle = time.perf_counter()
    with backend.engine.connect() as conn:
        count_budget(conn, study_id)
    end = time.perf_counter()
    backend.engine.dispose()
    return {"budget_read_all_s": middle - start, "budget_sql_count_s": end - middle}


def sampler_cost(trials: list[FrozenTrial], sampler: str, asks: int) -> float:
    """Median seconds of one ask plus the search space's suggestions with `sampler` over a copy of `trials`."""
    study = optuna.create_study(direction="maximize", sampler=TrialSeededSampler(sampler, 0, 10))
    study.add_trials(trials)
    seconds = []
    for _ in range(asks):
        start = time.perf_counter()
        trial = study.ask()
        suggest_config(trial, "mlp")
        seconds.append(time.perf_counter() - start)
        study.tell(trial, state=TrialState.FAIL)  # no new information, so the next ask sees the same trials
    return statistics.median(seconds)


def sampler_growth(storage: str, sizes: list[int], asks: int) -> list[dict[str, float]]:
    """TPE's and random's own cost per trial at each size, on the study's first trials."""
    trials = [t for t in open_study(tiny_settings(storage, 1)).trials if t.state.is_finished()]
    return [
        {
            "size": n,
            "tpe_s": sampler_cost(trials[:n], "tpe", asks),
            "random_s": sampler_cost(trials[:n], "random", asks),
        }
        for n in sizes
    ]


def ratio(rows: list[dict[str, float]]) -> float:
    """The median per-trial overhead at the largest size over that at the smallest (goal: within 1.3)."""
    return rows[-1]["overhead"] / rows[0]["overhead"]


def main() -> None:
    """Sizes on SQLite and PostgreSQL, TPE's growth, then 1, 8, 16 and 32 workers; writes the JSON."""
    args = parse_args(__doc__, __file__, "sizes 20 and 40, 3 trials each, 2 workers", device=False)
    sizes, real, workers, worker_trials = (
        ([20, 40], 3, [2], 3) if args.quick else ([100, 1000, 5000], 40, [1, 8, 16, 32], 64)
    )
    postgres = os.environ.get("FASHION_HPO_TEST_POSTGRES_URL", "")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_data(args.data_dir, seed=42, device="cpu")
    result: dict[str, object] = {"sizes": sizes, "timed_trials": real, "trial": TINY}
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        runs = closed_runs(max(sizes))
        storages = {"sqlite": f"sqlite:///{folder}/optuna.db"}
        if postgres:
            storages["postgresql"] = new_database(postgres)
        for name, url in storages.items():
            print(f"{name}:")
            result[name] = size_sweep(data, url, sizes, real, runs)
            save(args.output, result)  # each stage kept, should a later one fail
        growth = sampler_growth(storages["sqlite"], sorted({*sizes, *[s // 2 for s in sizes]}), 3 if args.quick else 7)
        result["sampler_growth"] = growth
        save(args.output, result)
        for row in growth:
            print(
                f"  sampler at {row['size']:>5}: tpe {row['tpe_s'] * 1e3:.1f} ms, random {row['random_s'] * 1e3:.1f} ms"
            )
    if postgres:
        drop_database(postgres, storages["postgresql"])
        result["workers"] = worker_sweep(postgres, args.data_dir, workers, worker_trials, Path(tempfile.gettempdir()))
    result["overhead_ratio"] = {name: ratio(result[name]) for name in storages}  # type: ignore[arg-type]
    print(f"overhead at {sizes[-1]} / at {sizes[0]} trials: {result['overhead_ratio']} (goal <= 1.3)")
    save(args.output, result)


def save(output: Path, result: dict[str, object]) -> None:
    """Write the results so far."""
    output.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
