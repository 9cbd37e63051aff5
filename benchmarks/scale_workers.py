"""Many workers on one study: `fashion-hpo study --workers N` on PostgreSQL, tracked by `mlflow server` on loopback,
straight on the database and through `fashion-hpo storage-proxy`: trials per minute, peak connections to the study's
database (pg_stat_activity; the proxy's own when it is used), tracking requests per second."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import optuna
import sqlalchemy

from fashion_hpo.storage.rdb import engine_url

# What a worker takes of the machine's memory: 0.55 GB anonymous (torch's CUDA wheel alone 0.28 GB, the uint8 images
# 0.05 GB) plus its share of the page cache that torch's libraries need to stay resident. Measured: 26 workers alive
# of 32 (with the parents, mlflow server and PostgreSQL) filled this 23 GB machine, which then thrashed. A count that
# would not fit in the memory available is skipped and the reason recorded, not run.
WORKER_GB = 0.75
REQUEST = re.compile(r'"(GET|POST|PATCH|DELETE|PUT) /')
TINY_FLAGS = ["--epochs", "1", "--max-train-samples", "64", "--pruner", "none", "--sampler", "random"]


def new_database(admin_url: str) -> str:
    """A new, empty PostgreSQL database next to `admin_url`'s (a role that may create databases); its URL."""
    name = f"fashion_hpo_scale_{uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(engine_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return sqlalchemy.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 120.0) -> None:
    """Wait until something listens on `port` on loopback."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@contextmanager
def service(command: list[str], port: int, log: Path) -> Iterator[Path]:
    """A server started in its own process group, its output in `log`; the whole group killed on leaving."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port)
        yield log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def tracking_server(folder: Path) -> tuple[list[str], int]:
    """The command of an `mlflow server` on loopback with a SQLite store in `folder`, with access logs; its port."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--default-artifact-root", str(folder / "a")]
    return [*command, "--uvicorn-opts", "--access-log"], port


class ConnectionPeak(threading.Thread):
    """Polls pg_stat_activity for the connections to one database, keeping the highest count seen."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.database = sqlalchemy.engine.make_url(url).database
        self.engine = sqlalchemy.create_engine(engine_url(url), poolclass=sqlalchemy.pool.NullPool)
        self.peak, self.stopped = 0, threading.Event()

    def run(self) -> None:
        """Poll every 0.2 s until stopped (this poll's own connection not counted)."""
        query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()")
        with self.engine.connect() as conn:
            while not self.stopped.wait(0.2):
                self.peak = max(self.peak, int(conn.execute(query, {"d": self.database}).scalar_one()))
                conn.commit()


def trial_window(storage: str, study_name: str) -> tuple[int, float]:
    """The study's finished trials and the seconds from the first one's start to the last one's end."""
    trials = [t for t in optuna.load_study(study_name=study_name, storage=storage).trials if t.state.is_finished()]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return len(trials), (max(ends) - min(starts)).total_seconds() if trials else 0.0


def run_workers(
    url: str, storage: str, data_dir: Path, workers: int, n_trials: int, tracking_uri: str, log: Path
) -> dict[str, object]:
    """One `fashion-hpo study --workers N` invocation of `n_trials`; its throughput, connections and requests."""
    name = f"w{workers}-{uuid4().hex[:6]}"
    command = [sys.executable, "-m", "fashion_hpo", "study", "--workers", str(workers), "--storage", storage]
    command += ["--study-name", name, "--n-trials", str(n_trials), "--timeout", "0", "--no-register"]
    command += [*TINY_FLAGS, "--no-progress-bar", "--no-baseline-trial", "--data-dir", str(data_dir)]
    peak = ConnectionPeak(url)
    requests_before = len(REQUEST.findall(log.read_text()))
    peak.start()
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # none of this process's runs
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    peak.stopped.set()
    peak.join()
    if done.returncode != 0:
        raise RuntimeError(f"workers failed ({done.returncode}): {done.stderr[-2000:]}")
    finished, window = trial_window(engine_url(url), name)
    requests = len(REQUEST.findall(log.read_text())) - requests_before
    row = {"workers": workers, "storage": storage.split(":")[0], "trials": finished, "wall_s": wall}
    row |= {"trial_window_s": window, "trials_per_minute": 60 * finished / window if window else 0.0}
    row |= {"peak_db_connections": peak.peak, "tracking_requests": requests, "requests_per_s": requests / wall}
    print(
        f"  {workers:>2} workers via {row['storage']}: {finished} trials, {row['trials_per_minute']:.0f}/min, "
        f"peak {peak.peak} db connections, {requests / wall:.1f} tracking requests/s"
    )
    return row


def available_gb() -> float:
    """The memory available for new processes now (MemAvailable of /proc/meminfo), in GB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("inf")


def worker_sweep(
    admin_url: str, data_dir: Path, counts: list[int], n_trials: int, tmp: Path
) -> list[dict[str, object]]:
    """Each worker count straight on the database and through a storage proxy, each run on its own new database,
    with one tracking server for all."""
    folder = tmp / f"scale-mlflow-{uuid4().hex[:6]}"
    folder.mkdir()
    command, port = tracking_server(folder)
    rows: list[dict[str, object]] = []
    with service(command, port, folder / "server.log") as log:
        for workers in counts:
            if workers * WORKER_GB > available_gb():
                skipped = f"needs about {workers * WORKER_GB:.0f} GB, {available_gb():.0f} GB available"
                print(f"  {workers:>2} workers: skipped ({skipped})")
                rows.append({"workers": workers, "skipped": skipped})
                continue
            for via in ("database", "proxy"):
                url = new_database(admin_url)
                try:
                    run = proxied_run if via == "proxy" else run_workers
                    row = run(url, url, data_dir, workers, n_trials, f"http://127.0.0.1:{port}", log)
                finally:
                    drop_database(admin_url, url)
                rows.append({**row, "via": via})
    return rows


def proxied_run(
    url: str, _: str, data_dir: Path, workers: int, n_trials: int, tracking: str, log: Path
) -> dict[str, object]:
    """run_workers through a `fashion-hpo storage-proxy` started for it in front of `url` (its connections counted)."""
    port = free_port()
    command = [sys.executable, "-m", "fashion_hpo", "storage-proxy", "--storage", url, "--port", str(port)]
    with service(command, port, log.with_name(f"proxy-{port}.log")):
        return run_workers(url, f"grpc://127.0.0.1:{port}", data_dir, workers, n_trials, tracking, log)


def drop_database(admin_url: str, url: str) -> None:
    """Drop a database new_database created."""
    admin = sqlalchemy.create_engine(engine_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE {sqlalchemy.engine.make_url(url).database} WITH (FORCE)"))
    admin.dispose()
