"""The race's two peers that are not this project's CLI, each as its own documentation runs it, in a process of its
own (so that benchmarks/race.py can measure its CPU time):

    python benchmarks/race_contenders.py ray-tune-asha --budget 600 --seed 42 --folder F
    python benchmarks/race_contenders.py seed-loop --budget 600 --seed 42 --folder F

ray-tune-asha: Ray Tune's OptunaSearch (a define-by-run space: this project's `suggest_config`) with the ASHA
scheduler and Ray's MLflow logger callback, on a local 2-CPU Ray, trials training this project's model and loop on
its split (loaded once, handed to the trials with `tune.with_parameters`).
seed-loop: optuna-examples' pytorch_simple.py loop: torchvision's FashionMNIST with `ToTensor` per sample through a
`DataLoader`, Optuna's default pruner (MedianPruner), on this project's space and split.

Each writes F/trials.json: one record per trial that its tool finished (see `record`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch.utils.data import DataLoader, Subset

from fashion_hpo.data.splits import TRAIN_SIZE, VAL_SIZE, FashionData, Split, load_data
from fashion_hpo.model.architectures import build_model
from fashion_hpo.search.space import AnyTrial, config_from_params, suggest_config
from fashion_hpo.training.loop import EpochResult, build_and_fit, make_optimizer

METRIC = "val_accuracy"
RAY_CPUS = 2  # this machine's cores


def record(number: int, params: dict[str, Any], value: float, epochs: int, finished_at: float, ranked: bool) -> dict:
    """One finished trial: its params, last validation accuracy, epochs trained, when it ended (epoch seconds), and
    whether its tool ranks it when naming the best trial (Optuna: complete trials; Ray: every finished one)."""
    return {
        "number": number,
        "params": params,
        "value": value,
        "epochs": epochs,
        "finished_at": finished_at,
        "ranked": ranked,
    }


def optuna_records(study: optuna.Study) -> list[dict]:
    """The complete and pruned trials of an Optuna study, as records."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return [
        record(
            t.number,
            t.params,
            t.value if t.value is not None else max(t.intermediate_values.values(), default=0.0),
            len(t.intermediate_values),
            t.datetime_complete.timestamp(),  # set on every finished trial
            t.state == TrialState.COMPLETE,
        )
        for t in finished
    ]


def define_by_run(trial: AnyTrial) -> None:
    """Ray's define-by-run search space: exactly this project's MLP space."""
    suggest_config(trial, "mlp")


def train_fashion(config: dict[str, Any], train: Split, val: Split, epochs: int, seed: int) -> None:
    """A Ray Tune trial: this project's model and training loop, each epoch's validation accuracy reported to Tune
    (where ASHA may stop it)."""
    from ray import tune

    def report(result: EpochResult) -> None:
        tune.report({METRIC: result.val.accuracy})

    build_and_fit(config_from_params(config, "mlp"), train, val, epochs, seed, report)


def ray_tune_asha(args: argparse.Namespace) -> list[dict]:
    """Ray Tune with OptunaSearch and ASHA for `args.budget` seconds, tracked by Ray's MLflow logger callback."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves this machine
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False)
    data = load_data(args.data_dir, args.seed)
    trainable = tune.with_parameters(
        train_fashion, train=data.train.head(args.max_train_samples), val=data.val, epochs=args.epochs, seed=args.seed
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=OptunaSearch(space=define_by_run, metric=METRIC, mode="max", seed=args.seed),
            scheduler=ASHAScheduler(max_t=args.epochs, grace_period=1),
            num_samples=-1,  # as many trials as the budget allows
            time_budget_s=args.budget,
        ),
        run_config=tune.RunConfig(
            name="race",
            storage_path=str(args.folder / "ray_results"),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{args.folder / 'mlflow.db'}", experiment_name="race", save_artifact=True
                )
            ],
        ),
    )
    grid = tuner.fit()
    ray.shutdown()
    # A trial that Tune ended (max_t reached or stopped by ASHA) reports done; one cut off by the budget does not.
    return [
        record(
            i,
            result.config,
            result.metrics[METRIC],
            result.metrics["training_iteration"],
            result.metrics["timestamp"],
            True,
        )
        for i, result in enumerate(grid)
        if result.error is None and result.metrics.get("done") and METRIC in result.metrics
    ]


def seed_datasets(data_dir: Path, seed: int, max_train_samples: int) -> tuple[Subset, Subset]:
    """The train and validation splits as torchvision datasets with `ToTensor` per sample, as the seed notebook
    loaded them, cut as this project cuts them (checked against `load_data`'s labels)."""
    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    official = FashionMNIST(str(data_dir), train=True, transform=transforms.ToTensor())
    # The same permutation as `fashion_hpo.data.splits.load_data`.
    order = torch.randperm(len(official), generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[:TRAIN_SIZE], order[TRAIN_SIZE : TRAIN_SIZE + VAL_SIZE]
    ours: FashionData = load_data(data_dir, seed)
    if not (
        torch.equal(official.targets[train_idx], ours.train.labels)
        and torch.equal(official.targets[val_idx], ours.val.labels)
    ):
        raise RuntimeError("the seed loop's split is not this project's: fashion_hpo.data.splits changed its cut")
    train_idx = train_idx[:max_train_samples] if max_train_samples else train_idx
    return Subset(official, train_idx.tolist()), Subset(official, val_idx.tolist())


def seed_objective(train: Subset, val: Subset, epochs: int) -> Callable[[optuna.Trial], float]:
    """pytorch_simple.py's objective on this project's space: per-sample batches, each epoch scored and reported."""

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, "mlp")
        model = build_model(config.model)
        optimizer = make_optimizer(model, config)
        train_loader = DataLoader(train, batch_size=config.batch_size, shuffle=True)
        valid_loader = DataLoader(val, batch_size=config.batch_size)
        accuracy = 0.0
        for epoch in range(epochs):
            model.train()
            for images, labels in train_loader:
                optimizer.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                optimizer.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for images, labels in valid_loader:
                    correct += (model(images).argmax(dim=1) == labels).sum().item()
            accuracy = correct / len(val)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    return objective


def seed_loop(args: argparse.Namespace) -> list[dict]:
    """The seed notebook's study for `args.budget` seconds: TPE (seeded) and Optuna's default MedianPruner; the
    budget alone ends it (pytorch_simple.py also stops at 100 trials, which the race lifts for every contender)."""
    torch.manual_seed(args.seed)
    train, val = seed_datasets(args.data_dir, args.seed, args.max_train_samples)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.optimize(seed_objective(train, val, args.epochs), timeout=args.budget)
    return optuna_records(study)


CONTENDERS = {"ray-tune-asha": ray_tune_asha, "seed-loop": seed_loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=list(CONTENDERS))
    parser.add_argument("--budget", type=int, required=True, help="seconds of search")
    parser.add_argument("--seed", type=int, required=True, help="sampler, split and torch seed")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (default: 10, the project's)")
    parser.add_argument("--max-train-samples", type=int, default=0, help="train images per trial; 0 = all 50,000")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="FashionMNIST folder (default: data)")
    parser.add_argument("--folder", type=Path, required=True, help="where the run keeps its files and trials.json")
    args = parser.parse_args()
    args.data_dir, args.folder = args.data_dir.resolve(), args.folder.resolve()
    records = CONTENDERS[args.name](args)
    (args.folder / "trials.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
