"""Benchmark 4: what pruning saves — the same seeded MLP study with `--pruner median`, `hyperband` and `none`.

Each study runs in this process on the same data (tracking off, trial time only), with the same sampler seed, trial
budget and epochs; reported per pruner: epochs trained in all, wall time, trials pruned, best validation accuracy,
and the epochs saved against `none`. Writes a JSON file next to this script.
"""

from __future__ import annotations

import json
import tempfile
import time

import optuna
from benchmark_args import parse_args

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData, load_data
from fashion_hpo.search.loop import run_search
from fashion_hpo.search.objective import make_objective
from fashion_hpo.search.study import open_study
from fashion_hpo.search.trials import trial_counts

PRUNERS = ("median", "hyperband", "none")


def run_pruner(data: FashionData, pruner: str, size: tuple[int, int, int]) -> dict[str, float]:
    """One seeded study with this pruner: epochs trained, wall seconds, pruned trials, best validation accuracy."""
    n_trials, epochs, samples = size
    with tempfile.TemporaryDirectory() as folder:
        settings = RunSettings(
            n_trials=n_trials, epochs=epochs, max_train_samples=samples, pruner=pruner, seed=1, timeout=0,
            study_name="pruning", storage=f"sqlite:///{folder}/optuna.db",
        )  # fmt: skip
        study = open_study(settings)
        objective = make_objective(data, settings)
        start = time.monotonic()
        run_search(study, objective, settings)
        wall = time.monotonic() - start
        trials = study.get_trials(deepcopy=False)
        return {
            "epochs_trained": sum(len(t.intermediate_values) for t in trials),
            "wall_s": wall,
            "pruned": trial_counts(study)["pruned"],
            "best_val_accuracy": study.best_value,
        }


def main() -> None:
    args = parse_args(__doc__, __file__, "4 trials x 2 epochs x 1,000 samples")
    size = (4, 2, 1000) if args.quick else (30, 8, 10_000)
    data = load_data(args.data_dir, seed=0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = {pruner: run_pruner(data, pruner, size) for pruner in PRUNERS}
    full = rows["none"]["epochs_trained"]
    print(f"{size[0]} trials x {size[1]} epochs x {size[2]} samples, MLP space, TPE seed 1")
    print(f"{'pruner':<10} {'epochs':>7} {'saved':>6} {'wall s':>7} {'pruned':>7} {'best val acc':>13}")
    for pruner, row in rows.items():
        row["epochs_saved"] = 1 - row["epochs_trained"] / full
        print(
            f"{pruner:<10} {row['epochs_trained']:>7} {row['epochs_saved']:>6.0%} {row['wall_s']:>7.1f}"
            f" {row['pruned']:>7} {row['best_val_accuracy']:>13.4f}"
        )
    args.output.write_text(json.dumps({"n_trials": size[0], "epochs": size[1], "samples": size[2], "rows": rows}))


if __name__ == "__main__":
    main()
