"""How long a tracking-server outage a study rides through with MLflow's client retry settings (the defaults unless
the environment sets MLFLOW_HTTP_REQUEST_*).

Two measurements against a real `mlflow server` (SQLite store and artifacts in a temporary folder, a free loopback
port): how long one MLflow request keeps retrying before it gives up on a port where nothing answers, and what a
tiny study (`fashion-hpo study`, its own process) does when the server is stopped for --outage seconds after its
first trial and then started again on the same port and store. Writes a JSON file next to this script.

    python benchmarks/tracking_outage.py --outage 200   # from the repository root, in the dev environment
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import TrackingServer, free_port  # noqa: E402  (the tests' server helper, run from the repo)

STUDY = "outage"
RETRY_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def give_up_seconds() -> float:
    """Seconds one MLflow request retries against a loopback port where nothing listens before it raises."""
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    try:
        client.search_experiments(max_results=1)
    except Exception:
        return time.monotonic() - start
    raise RuntimeError("a request to a closed port succeeded")


def finished(storage: str) -> int:
    """How many trials of the study have finished (0 before it exists)."""
    try:
        trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return 0
    return sum(t.state.is_finished() for t in trials)


def study_with_outage(work: Path, data_dir: Path, outage: float, n_trials: int) -> dict[str, object]:
    """Run a tiny study, stop its tracking server for `outage` seconds after its first trial, start the server
    again; report how the study ended."""
    server = TrackingServer(work, f"sqlite:///{work / 'server.db'}")
    server.start()
    storage = f"sqlite:///{work / 'optuna.db'}"
    command = [sys.executable, "-m", "fashion_hpo", "study", "--study-name", STUDY, "--storage", storage]
    command += ["--n-trials", str(n_trials), "--epochs", "2", "--max-train-samples", "500", "--timeout", "0"]
    command += ["--data-dir", str(data_dir), "--threads", "1", "--no-register", "--no-progress-bar"]
    command += ["--no-baseline-trial"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "PYTHONUNBUFFERED": "1"}
    with (work / "study.log").open("w") as log:
        study = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900
        while finished(storage) < 1 and study.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        stopped = time.monotonic()  # from SIGTERM on, the server refuses requests, however long its shutdown takes
        server.stop()
        while time.monotonic() - stopped < outage and study.poll() is None:
            time.sleep(0.5)
        server.start()
        back = time.monotonic() - stopped
        code = study.wait(timeout=3600)
    after = time.monotonic() - stopped
    server.stop()
    lines = (work / "study.log").read_text().strip().splitlines()
    return {
        "outage_s": round(back, 1),  # from the stop to the server answering again
        "exit_code": code,
        "ended_s_after_stop": round(after, 1),
        "finished_trials": finished(storage),
        "n_trials": n_trials,
        "last_line": lines[-1] if lines else "",
    }


def main() -> None:
    """Measure and print; write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, required=True, help="seconds the server stays stopped")
    parser.add_argument("--n-trials", type=int, default=4, help="trials of the study (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="FashionMNIST folder (default: data)")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_suffix(".json"), help="JSON result file")
    args = parser.parse_args()
    settings = {name: os.environ.get(name, "default") for name in RETRY_SETTINGS}
    gives_up = give_up_seconds()
    print(f"MLflow gives up on an unreachable server after {gives_up:.1f} s ({settings})", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        result = study_with_outage(Path(scratch), args.data_dir.resolve(), args.outage, args.n_trials)
    verdict = "rode through it" if result["exit_code"] == 0 else "stopped"
    print(
        f"Study with the server down {result['outage_s']} s: {verdict} (exit {result['exit_code']}, "
        f"{result['finished_trials']}/{result['n_trials']} trials finished); last line: {result['last_line']}"
    )
    report = {"retry_settings": settings, "request_gives_up_s": round(gives_up, 1), **result}
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
