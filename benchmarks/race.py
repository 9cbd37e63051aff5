"""The race: this project's study against the tools a user would pick instead, on one budget, one search space
(this project's MLP space), one split (50,000 / 10,000 train/validation, the test set used once), one machine.

Contenders, one after another, each in a process of its own with fresh stores in a temporary folder:
- fashion-hpo: `fashion-hpo study` with its defaults (TPE, median pruner, baseline trial, MLflow tracking on),
  `--timeout` = the budget, `--no-register` (the refit is the race's, below);
- ray-tune-asha: Ray Tune's OptunaSearch + ASHA, tracked by Ray's MLflow logger callback (race_contenders.py);
- seed-loop: optuna-examples' pytorch_simple.py loop, per-sample DataLoader + ToTensor (race_contenders.py);
- random: `fashion-hpo study --sampler random`, otherwise as fashion-hpo.
Each contender's best trial, as its tool names it, is then refit by this project's recipe (pipeline/register.py:
the trial's configuration and seed, all 60,000 training images, twice the epochs it trained) and tested once, so
only the search differs. Per contender and seed: trials finished, best validation accuracy, test accuracy, the
seconds from the contender's start until its best validation accuracy first reached 0.88, 0.89 and 0.90 (null if
never), and the CPU seconds of all its processes (read from /proc: Linux only).

The same rules for all: every clock starts when the contender's process does (its start-up is part of the race);
each tool applies the budget its own way (Optuna's timeout lets the running trial finish, Ray's time_budget_s cuts
it); a trial counts when its tool finished it (Optuna: complete or pruned; Ray: done, whether at max_t or stopped by
ASHA; not one the budget cut); the best trial is the one its tool would name (Optuna: the best complete trial; Ray:
the best last result of its finished trials); the budget, not a trial count, ends every search.

    python benchmarks/race.py                     # 600 s per contender, seeds 42 and 1: 2-2.5 hours
    python benchmarks/race.py --quick --out F     # 10 s each, 1 seed, 2-epoch trials on 2,000 images
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from race_contenders import optuna_records

from fashion_hpo.core.seeding import trial_seed
from fashion_hpo.core.settings import REFIT_EPOCHS_FACTOR, RunSettings
from fashion_hpo.data.splits import FashionData, load_data
from fashion_hpo.search.space import config_from_params
from fashion_hpo.training.loop import build_and_fit, evaluate

HERE = Path(__file__).resolve().parent
CONTENDERS = ("fashion-hpo", "ray-tune-asha", "seed-loop", "random")
THRESHOLDS = (0.88, 0.89, 0.90)
PROJECT = RunSettings()  # the project's defaults: epochs per trial, trial training images
POLL_S = 0.2  # how often the CPU meter reads /proc; a process's CPU in its last poll interval goes uncounted
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UNCAPPED_TRIALS = 100_000


def parse_args() -> argparse.Namespace:
    """--budget, --seeds, --quick, --data-dir, --out, and the refit's size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=600, help="seconds of search per contender (default: 600)")
    parser.add_argument("--seeds", default="42,1", help="comma-separated seeds, a race each (default: 42,1)")
    parser.add_argument(
        "--quick", action="store_true", help="10 s each, the first seed, 2-epoch trials on 2,000 images, 1 refit epoch"
    )
    parser.add_argument(
        "--refit-epochs", type=int, default=0, help=f"0 = {REFIT_EPOCHS_FACTOR} x the best trial's (the project's)"
    )
    parser.add_argument("--refit-train-samples", type=int, default=0, help="refit images; 0 = all 60,000")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="FashionMNIST folder (default: data)")
    parser.add_argument("--out", "--output", type=Path, help="JSON result file (default: race.json beside this)")
    args = parser.parse_args()
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.epochs, args.train_samples = PROJECT.epochs, PROJECT.max_train_samples
    if args.quick:
        # 10 s leaves Ray room too: Tune's time_budget_s counts from its first scheduling step (after ray.init, the
        # data and the MLflow callback's setup); the trial actors' imports and a 2-epoch trial take a few seconds.
        args.budget, args.seeds, args.epochs, args.train_samples = 10, args.seeds[:1], 2, 2000
        args.refit_epochs, args.refit_train_samples = args.refit_epochs or 1, args.refit_train_samples or 5000
        args.out = args.out or Path(tempfile.gettempdir()) / "race_quick.json"
    args.data_dir, args.out = args.data_dir.resolve(), (args.out or HERE / "race.json").resolve()
    return args


def process_table() -> dict[int, tuple[int, int, float]]:
    """Every process's parent, start time and CPU seconds so far (user + system), read from /proc (Linux)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # from the state on: ppid is [1], utime [11], starttime [19]
        table[int(entry)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return table


class CpuMeter:
    """CPU seconds of a process and all its descendants, sampled from /proc every POLL_S seconds.

    getrusage's children's times would miss Ray's trial workers: their parent never waits for them, so their times
    reach no one's; a process seen here counts with its last sample, whoever reaps it."""

    def __init__(self, root: int) -> None:
        self.root, self.done = root, threading.Event()
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        """Record the CPU time of the root and every process below it now."""
        table = process_table()
        children: dict[int, list[int]] = {}
        for pid, (parent, _, _) in table.items():
            children.setdefault(parent, []).append(pid)
        family = [self.root] if self.root in table else []
        for pid in family:  # grows while it is walked: breadth first down the tree
            family.extend(children.get(pid, []))
        for pid in family:
            _, started, cpu = table[pid]
            self.seen[(pid, started)] = cpu

    def run(self) -> None:
        """Sample until stopped."""
        while not self.done.wait(POLL_S):
            self.sample()

    def stop(self) -> float:
        """Stop sampling; the CPU seconds of every process seen."""
        self.done.set()
        self.thread.join()
        return sum(self.seen.values())


def command(name: str, args: argparse.Namespace, seed: int, folder: Path) -> list[str]:
    """The contender's command line: this project's CLI, or race_contenders.py for the peers."""
    sizes = ["--epochs", str(args.epochs), "--max-train-samples", str(args.train_samples)]
    if name in ("ray-tune-asha", "seed-loop"):
        script = [sys.executable, str(HERE / "race_contenders.py"), name, "--budget", str(args.budget)]
        return [*script, "--seed", str(seed), "--data-dir", str(args.data_dir), "--folder", str(folder), *sizes]
    study = [sys.executable, "-m", "fashion_hpo", "study", "--timeout", str(args.budget), "--seed", str(seed)]
    # The budget alone ends every search, as Ray's (num_samples=-1) and the seed loop's (timeout only): the default
    # cap of 100 trials could end a random search of small nets early.
    study += ["--n-trials", str(UNCAPPED_TRIALS)]
    # The race is on the CPU for every contender; --no-register: the race refits each best trial the same way.
    stores = ["--storage", f"sqlite:///{folder / 'optuna.db'}", "--checkpoint-dir", str(folder / "checkpoints")]
    options = ["--device", "cpu", "--no-register", "--data-dir", str(args.data_dir), *stores]
    sampler = ["--sampler", "random"] if name == "random" else []
    return [*study, *options, *sampler, *(sizes if args.quick else [])]


def run_contender(name: str, args: argparse.Namespace, seed: int) -> tuple[list[dict], dict, float]:
    """Run one contender to its end in a fresh folder: its finished trials, its costs (CPU and wall seconds, runs
    tracked in MLflow), and when it started (epoch seconds)."""
    with tempfile.TemporaryDirectory(prefix=f"race-{name}-") as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FASHION_HPO_", "RAY_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        log = folder / "output.log"
        with log.open("w") as output:
            started = time.time()
            process = subprocess.Popen(command(name, args, seed, folder), stdout=output, stderr=output, env=env)
            meter = CpuMeter(process.pid)
            code = process.wait()
            wall, cpu = time.time() - started, meter.stop()
        if code != 0:
            sys.exit(f"{name} (seed {seed}) failed with exit code {code}:\n{log.read_text()[-3000:]}")
        if name in ("ray-tune-asha", "seed-loop"):
            records = json.loads((folder / "trials.json").read_text())
        else:
            study = optuna.load_study(study_name=PROJECT.study_name, storage=f"sqlite:///{folder / 'optuna.db'}")
            records = optuna_records(study)
        runs = tracked_runs(folder)
    return records, {"cpu_s": cpu, "wall_s": wall, "tracked_runs": runs}, started


def tracked_runs(folder: Path) -> int:
    """The runs in the contender's MLflow store (0 when it tracked nothing)."""
    if not (folder / "mlflow.db").exists():
        return 0
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return len(client.search_runs(experiments, max_results=50_000))


def refit_test(data: FashionData, best: dict, seed: int, args: argparse.Namespace) -> float:
    """This project's refit (pipeline/register.py `refit_and_test`): the best trial's configuration, rebuilt through
    the search space, trained with its trial's seed on all 60,000 training images for REFIT_EPOCHS_FACTOR x the
    epochs it trained, then tested once; returns the test accuracy."""
    config = config_from_params(best["params"], "mlp")
    epochs = args.refit_epochs or REFIT_EPOCHS_FACTOR * best["epochs"]
    train = data.full_train.head(args.refit_train_samples)
    model = build_and_fit(config, train, None, epochs, trial_seed(seed, best["number"])).model
    return evaluate(model, data.test).accuracy


def result_row(name: str, seed: int, records: list[dict], started: float) -> tuple[dict, dict | None]:
    """The row's search figures, and the best trial as its tool names it (None when it ranked none)."""
    ranked = sorted((r for r in records if r["ranked"]), key=lambda r: r["finished_at"])
    best = max(ranked, key=lambda r: r["value"], default=None)
    row: dict = {
        "name": name,
        "seed": seed,
        "trials": len(records),
        "best_val_accuracy": best["value"] if best else None,
        "test_accuracy": None,
    }
    for threshold in THRESHOLDS:
        reached = (r["finished_at"] - started for r in ranked if r["value"] >= threshold)
        row[f"time_to_{threshold:.2f}"] = next(reached, None)
    return row, best


def race(args: argparse.Namespace) -> dict:
    """Every contender for every seed, one after another; the report is rewritten after each."""
    report: dict = {
        "budget_s": args.budget,
        "command": "python benchmarks/race.py "
        + ("--quick" if args.quick else f"--budget {args.budget} --seeds {','.join(map(str, args.seeds))}"),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "max_train_samples": args.train_samples,
        "results": [],
    }
    for seed in args.seeds:
        data = load_data(args.data_dir, seed)
        # The refit is deterministic (the configuration, its seed and epochs decide it): two contenders naming the
        # same trial, as fashion-hpo and random do when the baseline trial stays the best, share one refit.
        refits: dict[str, float] = {}
        for name in CONTENDERS:
            print(f"{name} (seed {seed}): {args.budget} s of search ...", flush=True)
            records, costs, started = run_contender(name, args, seed)
            row, best = result_row(name, seed, records, started)
            if best is not None:
                key = json.dumps([best["params"], best["number"], best["epochs"]], sort_keys=True)
                if key not in refits:
                    refits[key] = refit_test(data, best, seed, args)
                row["test_accuracy"] = refits[key]
            report["results"].append({**row, **costs})
            args.out.write_text(json.dumps(report, indent=2) + "\n")
            print(describe(report["results"][-1]), flush=True)
    return report


def describe(row: dict) -> str:
    """One line of the table the script prints."""
    best, test = row["best_val_accuracy"], row["test_accuracy"]
    reached = {t: row[f"time_to_{t:.2f}"] for t in THRESHOLDS}
    times = ", ".join(f"{t:.2f} {'never' if s is None else f'{s:.0f} s'}" for t, s in reached.items())
    scores = f"best val {best:.4f}, test {test:.4f}" if best is not None and test is not None else "no best trial"
    return (
        f"  {row['name']:<14} seed {row['seed']}: {row['trials']} trials, {scores}; reached {times}; "
        f"{row['cpu_s']:.0f} CPU s in {row['wall_s']:.0f} s"
    )


def main() -> None:
    args = parse_args()
    race(args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
