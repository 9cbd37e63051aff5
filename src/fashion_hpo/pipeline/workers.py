"""`--workers N`: N processes on this machine search one study together, each with its share of the cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import mlflow

from fashion_hpo.core.process import signal_name
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.core.validation import threads_per_worker
from fashion_hpo.tracking.runs import end_dead_worker_runs


class WorkersFailed(RuntimeError):
    """At least one worker process exited with an error."""


def worker_settings(settings: RunSettings, parent_run_id: str, index: int) -> RunSettings:
    """One worker's settings: the same study and budget, its share of the threads, its run under the parent."""
    return replace(
        settings,
        workers=1,
        threads=threads_per_worker(settings),
        run_name=f"{settings.study_name}-worker-{index}",
        parent_run_id=parent_run_id,
        register=False,  # the command that started the workers registers the study's best, once
        progress_bar=False,  # N bars would overwrite one another; Optuna still logs each trial
    )


def worker_env(parent_run_id: str, threads: int) -> dict[str, str]:
    """The environment of a worker: this tracking store and experiment, but not this process's run."""
    env = dict(os.environ)
    env.pop("MLFLOW_RUN_ID", None)  # set by `mlflow run`: a worker would resume the project's run instead of its own
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    env["MLFLOW_EXPERIMENT_ID"] = mlflow.get_run(parent_run_id).info.experiment_id
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def start_worker(settings: RunSettings, env: dict[str, str]) -> subprocess.Popen:
    """Start one worker process (`fashion_hpo.cli.worker`) and hand it its settings on standard input, in its own
    session so that a terminal's Ctrl-C reaches only this process."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "fashion_hpo.cli.worker"], env=env, stdin=subprocess.PIPE, start_new_session=True
    )
    assert worker.stdin is not None  # stdin=PIPE
    with worker.stdin:
        worker.stdin.write(settings.to_json().encode())
    return worker


def start_workers(settings: RunSettings, parent_run_id: str) -> list[subprocess.Popen]:
    """Start the worker processes, each with its own settings."""
    env = worker_env(parent_run_id, threads_per_worker(settings))
    return [start_worker(worker_settings(settings, parent_run_id, k), env) for k in range(1, settings.workers + 1)]


def wait_for(workers: list[subprocess.Popen]) -> list[int]:
    """Wait for every worker; an interrupt is passed on to each (as the same signal), and so is every SIGINT /
    SIGTERM after it until they have all stopped, before it is raised here."""
    try:
        return [worker.wait() for worker in workers]
    except KeyboardInterrupt as interrupt:
        with passing_signals_on(workers):
            pass_on(workers, signal_name(interrupt))
            for worker in workers:
                worker.wait()
        raise


def pass_on(workers: list[subprocess.Popen], signum: int) -> None:
    """Send `signum` to the workers still running."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signum)


@contextmanager
def passing_signals_on(workers: list[subprocess.Popen]) -> Iterator[None]:
    """Within: each SIGINT / SIGTERM this process gets goes to the workers, as a terminal's would (each holds back
    its second and stops at its third: see StopSignals); this process's own handlers come back after."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    passed = {signum: handler for signum, handler in previous.items() if handler not in (signal.SIG_IGN, None)}
    for signum in passed:
        signal.signal(signum, lambda received, frame: pass_on(workers, received))
    try:
        yield
    finally:
        for signum, handler in passed.items():
            signal.signal(signum, handler)


def exit_reason(index: int, code: int) -> str:
    """How worker `index` ended, for a message: its exit code, or the signal that killed it."""
    if code < 0:
        return f"worker {index} was killed by {signal.Signals(-code).name}"
    return f"worker {index} exited with code {code}"


def search_in_workers(settings: RunSettings, parent_run_id: str) -> None:
    """Run the search in `--workers` processes and wait for all; raise WorkersFailed naming those that failed.

    A worker that was killed could not end its runs: they are ended FAILED here, so none is left RUNNING."""
    codes = wait_for(start_workers(settings, parent_run_id))
    failed = [(k, exit_reason(k, code)) for k, code in enumerate(codes, 1) if code != 0]
    for k, reason in failed:
        end_dead_worker_runs(parent_run_id, worker_settings(settings, parent_run_id, k).run_name, reason)
    if failed:
        raise WorkersFailed(", ".join(reason for _, reason in failed))
