"""Shared fixtures: tiny synthetic FashionMNIST-shaped data and a throw-away MLflow tracking store."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from uuid import uuid4

import mlflow
import pytest
import sqlalchemy
import torch

from fashion_hpo.data.splits import FashionData, Split
from fashion_hpo.storage.rdb import engine_url

REPO = Path(__file__).resolve().parents[1]
# Set by `mlflow run` or a user's shell: a process that inherited them would log into that run or experiment.
RUN_SCOPE_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
# A trial's parameters in the MLP space, for tests that enqueue a known configuration.
MLP_PARAMS = {
    "n_layers": 2,
    "n_units_l0": 512,
    "n_units_l1": 64,
    "dropout_l0": 0.2,
    "dropout_l1": 0.1,
    "optimizer": "Adam",
    "lr": 1e-3,
    "batch_size": 128,
    "use_weight_decay": False,
}

# The interrupt tests send SIGINT as a terminal's Ctrl-C would. A shell starts background jobs with SIGINT ignored,
# which their children inherit across exec; a Python handler here is reset to the default in every child instead.
signal.signal(signal.SIGINT, signal.default_int_handler)


# Fixtures that give a test a real store or service: such a test is in the integration tier, not the unit tier.
INTEGRATION_FIXTURES = {
    "tracking_uri",
    "tracking_store",
    "real_data_dir",
    "postgres_url",
    "new_database",
    "project_run",
}


# The time limit of a slow test that names none (pyproject.toml's `timeout` is the inner loop's); the e2e fixture,
# which the first test using it pays for, runs `mlflow run .` with a limit of its own (900 s).
SLOW_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use a real store `integration` (the unit tier is what is left of the inner loop), and give
    slow tests their longer time limit."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def synthetic_split(n: int, seed: int) -> Split:
    """Learnable fake images: each class lights up its own band of rows, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.rand(n, 1, 28, 28, generator=generator) * 0.3
    for cls in range(10):
        rows = slice(2 + 2 * cls, 4 + 2 * cls)
        images[labels == cls, :, rows, :] += 0.7
    return Split(images.clamp(0, 1), labels)


@pytest.fixture(autouse=True)
def own_signal_handlers() -> Iterator[None]:
    """The test session's SIGINT / SIGTERM handlers, back after each test: the CLI run in-process installs its own."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session")
def tiny_data() -> FashionData:
    """300 train, 100 validation and 100 test synthetic images."""
    return FashionData(train=synthetic_split(300, 0), val=synthetic_split(100, 1), test=synthetic_split(100, 2))


@contextmanager
def temporary_tracking(folder: Path) -> Iterator[str]:
    """Point MLflow at a fresh SQLite store in `folder` (artifacts in folder/mlruns) for the duration."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(folder)  # the default artifact root ./mlruns lands in the temporary folder
        for name in RUN_SCOPE_VARIABLES:
            patch.delenv(name, raising=False)
        # MLflow remembers the experiment chosen by an earlier test in this process; forget it.
        patch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)


@pytest.fixture
def tracking_uri(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite MLflow store for one test."""
    with temporary_tracking(tmp_path) as uri:
        yield uri


N_TRIALS = 3


@pytest.fixture(scope="session")
def project_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Runs the MLproject's main entry point (tiny budget, real data) in a temporary folder holding every store
    it writes; its registered model also serves the model-use tests."""
    work = tmp_path_factory.mktemp("e2e")
    # As in an activated virtual environment: the entry point's `python` is this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    for name in RUN_SCOPE_VARIABLES:
        env.pop(name, None)
    params = {
        "n_trials": N_TRIALS,
        "epochs": 1,
        "max_train_samples": 3000,
        "seed": 3,
        "data_dir": work / "data",
        "storage": f"sqlite:///{work / 'optuna.db'}",
    }
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow_cli, "run", str(REPO), "--env-manager", "local", "--experiment-name", "e2e"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, result


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the real FashionMNIST raw files (from Debian's package)."""
    from fashion_hpo.data.files import ensure_raw_files

    folder = tmp_path_factory.mktemp("fashion-data")
    ensure_raw_files(folder, download=False)
    return folder


@pytest.fixture
def tiny_cli(
    tiny_data: FashionData, tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[list[str]], int]:
    """`fashion-hpo` in this process on the tiny synthetic data, with a fresh tracking store and an Optuna storage
    and data folder in `tmp_path` (appended to the command line); returns its exit code."""
    from fashion_hpo.pipeline import study as pipeline

    monkeypatch.setattr(pipeline, "load_data", lambda *args, **kwargs: tiny_data)
    return lambda args: run_cli([*args, "--storage", f"sqlite:///{tmp_path}/o.db", "--data-dir", str(tmp_path)])


def run_cli(args: list[str]) -> int:
    """The exit code of `fashion-hpo` run in this process."""
    from fashion_hpo.cli.main import main

    try:
        return main(args)
    except SystemExit as exit_:
        return int(exit_.code)


def subprocess_env(work: Path) -> dict[str, str]:
    """The environment of a CLI process that tracks into `work`: this interpreter's scripts first on PATH."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    for name in RUN_SCOPE_VARIABLES:
        env.pop(name, None)
    return env


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll `url` until the server answers 200; fail with the server's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no answer from {url}: {log.read_text()[-3000:]}")


POSTGRES_URL_VARIABLE = "FASHION_HPO_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a PostgreSQL role that may create databases (`scripts/postgres.sh` prints one; CI exports it)."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: export {POSTGRES_URL_VARIABLE} (scripts/postgres.sh)")
        pytest.skip(f"no PostgreSQL: export {POSTGRES_URL_VARIABLE}=$(sudo scripts/postgres.sh)")
    return url


@contextmanager
def postgres_databases(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Creates empty PostgreSQL databases on demand (one per store) and drops them when the block ends."""
    # pool_pre_ping: a test may restart PostgreSQL, which kills the pooled connection that drops the databases.
    admin = sqlalchemy.create_engine(engine_url(postgres_url), isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    created: list[str] = []

    def create() -> str:
        name = f"fashion_hpo_test_{uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        created.append(name)
        return sqlalchemy.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)

    try:
        yield create
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def new_database(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Creates empty PostgreSQL databases on demand (one per store) and drops them after the test."""
    with postgres_databases(postgres_url) as create:
        yield create


class TrackingServer:
    """`mlflow server` on a free loopback port, in its own process group; it can be stopped and started again on
    the same port and stores, as an outage or a restart of a real server would."""

    def __init__(self, folder: Path, backend_store_uri: str) -> None:
        self.folder, self.backend_store_uri = folder, backend_store_uri
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """`mlflow server` on this port and stores."""
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", "1", "--backend-store-uri", self.backend_store_uri]
        return [*command, "--artifacts-destination", str(self.folder / "server-artifacts")]

    def start(self) -> None:
        """Start the server and wait until it answers."""
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until_answering(f"{self.url}/health", self.process, self.log)

    def stop(self) -> None:
        """SIGTERM to the whole group (uvicorn and huey children included; in-flight requests finish), SIGKILL to
        what lingers, then wait until the port refuses connections."""
        if self.process is None:
            return
        process, self.process = self.process, None
        signal_group(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while port_answers(self.port):
            assert time.monotonic() < deadline, f"port {self.port} still answers after the server stopped"
            time.sleep(0.2)


def signal_group(pgid: int, signum: signal.Signals) -> None:
    """Send `signum` to a process group, which may already be gone."""
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def port_answers(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback `port`."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def tracking_server(folder: Path, backend_store_uri: str) -> Iterator[TrackingServer]:
    """A started TrackingServer, stopped (by process group) when the block ends."""
    server = TrackingServer(folder, backend_store_uri)
    try:
        server.start()
        yield server
    finally:
        server.stop()
