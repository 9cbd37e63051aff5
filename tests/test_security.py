"""Security of a shared study: the storage URL from the environment, the registered model's digests, and the
README's recipe on a real `mlflow server --app-name basic-auth` (one server for the module: it takes ~40 s to start)."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import mlflow
import optuna
import pytest
import sqlalchemy
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fashion_hpo.cli.parser import build_parser, settings_from_args
from fashion_hpo.core.settings import DEFAULT_STORAGE, STORAGE_ENV, RunSettings
from fashion_hpo.pipeline import workers
from fashion_hpo.registry.integrity import FILES_TAG, WEIGHTS_FOLDER, WEIGHTS_TAG, IntegrityError, check, digests
from fashion_hpo.storage.rdb import engine_url
from tests.conftest import REPO, TrackingServer, run_cli, subprocess_env

STUDY = "secure-study"
MODEL = "fashion-mnist-classifier"
PG_URL = "postgresql+psycopg://hpo:s3cret-in-env@db.example/optuna"


# --- The storage URL from FASHION_HPO_STORAGE -------------------------------------------------------------------


def storage_of(argv: list[str]) -> str:
    """The storage that a command line resolves to."""
    return settings_from_args(build_parser().parse_args(argv)).storage


def test_storage_comes_from_the_flag_then_the_environment_then_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert storage_of(["study"]) == DEFAULT_STORAGE
    monkeypatch.setenv(STORAGE_ENV, PG_URL)
    assert storage_of(["study"]) == PG_URL
    assert storage_of(["register"]) == PG_URL
    assert storage_of(["study", "--storage", "sqlite:///given.db"]) == "sqlite:///given.db"


def test_an_empty_storage_flag_as_mlproject_passes_it_falls_through_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STORAGE_ENV, PG_URL)
    assert storage_of(["study", "--storage", ""]) == PG_URL
    assert storage_of(["register", "--storage", ""]) == PG_URL


@pytest.mark.parametrize("command", ["study", "register"])
@pytest.mark.parametrize("url", ["not a url", "redis://localhost:6379", "sqlite:////no/such/folder/optuna.db"])
def test_a_bad_storage_url_in_the_environment_names_the_variable(
    command: str,
    url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, url)
    assert run_cli([command, "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"environment variable {STORAGE_ENV}:" in err
    assert list(tmp_path.iterdir()) == []


def test_workers_get_the_storage_url_on_their_standard_input_not_their_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STORAGE_ENV, PG_URL)
    settings = settings_from_args(build_parser().parse_args(["study", "--workers", "2"]))
    started: list[tuple[list[str], bytes]] = []

    class RecordingPopen:
        def __init__(self, argv: list[str], **kwargs: object) -> None:
            self.stdin = io.BytesIO()
            self.stdin.close = lambda: started.append((argv, self.stdin.getvalue()))  # type: ignore[method-assign]

    monkeypatch.setattr(workers.subprocess, "Popen", RecordingPopen)
    monkeypatch.setattr(workers, "worker_env", lambda parent_run_id, threads: {})
    workers.start_workers(settings, "parent")
    assert len(started) == 2
    for argv, stdin in started:
        assert "s3cret-in-env" not in " ".join(argv), "no password on a worker's command line"
        assert RunSettings.from_json(stdin.decode()).storage == PG_URL, "the worker gets the storage exactly"


# --- Digests of a saved model -----------------------------------------------------------------------------------


def saved_model(folder: Path) -> Path:
    """A folder shaped like a saved model: weights, MLmodel, shipped code, and the files digests leave out."""
    (folder / WEIGHTS_FOLDER).mkdir(parents=True)
    (folder / WEIGHTS_FOLDER / "model.pt2").write_bytes(os.urandom(4096))
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "code" / "pkg" / "__pycache__").mkdir(parents=True)
    (folder / "code" / "pkg" / "serving.py").write_text("print('hello')\n")
    (folder / "code" / "pkg" / "__pycache__" / "serving.cpython-311.pyc").write_bytes(b"cache")
    (folder / "registered_model_meta").write_text("model_name: m\nmodel_version: '1'\n")
    return folder


def shell(command: str, folder: Path) -> str:
    """What a shell command prints, run in `folder`."""
    return subprocess.run(command, shell=True, cwd=folder, capture_output=True, text=True, check=True).stdout


def test_digests_are_what_sha256sum_prints_for_the_listing(tmp_path: Path) -> None:
    folder = saved_model(tmp_path / "model")
    found = digests(folder)
    assert found[WEIGHTS_TAG] == shell("sha256sum data/* | sha256sum", folder).split()[0]
    everything = (
        "find . -type f ! -name registered_model_meta ! -path '*/__pycache__/*' -printf '%P\\n' | LC_ALL=C sort"
        " | xargs sha256sum | sha256sum"
    )
    assert found[FILES_TAG] == shell(everything, folder).split()[0]


def test_weights_code_and_metadata_changes_change_their_digest_and_download_markers_do_not(tmp_path: Path) -> None:
    folder = saved_model(tmp_path / "model")
    before = digests(folder)
    (folder / "registered_model_meta").write_text("model_name: m\nmodel_version: '2'\n")
    (folder / "code" / "pkg" / "__pycache__" / "serving.cpython-311.pyc").write_bytes(b"other cache")
    assert digests(folder) == before
    (folder / "code" / "pkg" / "serving.py").write_text("import os; os.system('evil')\n")
    after_code = digests(folder)
    assert after_code[WEIGHTS_TAG] == before[WEIGHTS_TAG] and after_code[FILES_TAG] != before[FILES_TAG]
    weights = folder / WEIGHTS_FOLDER / "model.pt2"
    damaged = bytearray(weights.read_bytes())
    damaged[100] ^= 1
    weights.write_bytes(bytes(damaged))
    assert digests(folder)[WEIGHTS_TAG] != before[WEIGHTS_TAG]


def version_with(tags: dict[str, str]) -> ModelVersion:
    """A registered version record carrying `tags`."""
    return ModelVersion(MODEL, "3", creation_timestamp=0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])


def test_check_accepts_the_recorded_files_and_names_what_changed(tmp_path: Path) -> None:
    folder = saved_model(tmp_path / "model")
    version = version_with(digests(folder))
    check(version, folder)
    (folder / "MLmodel").write_text("flavors: {python_function: {loader_module: evil}}\n")
    with pytest.raises(IntegrityError, match="code, MLmodel or requirements"):
        check(version, folder)
    (folder / WEIGHTS_FOLDER / "model.pt2").write_bytes(b"other weights")
    with pytest.raises(IntegrityError, match=f"weights .{WEIGHTS_FOLDER}/. do not match its {WEIGHTS_TAG}"):
        check(version, folder)


def test_a_version_without_digests_is_not_trusted(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="register it again"):
        check(version_with({"study_name": "s"}), saved_model(tmp_path / "model"))


# --- The recipe on a real authenticated tracking server ---------------------------------------------------------


@dataclass(frozen=True)
class AuthServer:
    """A running basic-auth tracking server, its folder (auth, tracking and artifact stores) and its accounts."""

    url: str
    folder: Path
    passwords: dict[str, str]


def server_config(folder: Path) -> Path:
    """The auth app's configuration (MLFLOW_AUTH_CONFIG_PATH): its own user database; no one may read or write
    what they were not granted. No password in it: the admin's first one comes from the environment."""
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        "admin_username = admin\n"
    )
    return config


def account_env(url: str, user: str | None, password: str | None) -> dict[str, str]:
    """The MLflow variables of an account (none for an anonymous client)."""
    env = {"MLFLOW_TRACKING_URI": url}
    if user is not None and password is not None:
        env |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    return env


def without_accounts(env: dict[str, str]) -> dict[str, str]:
    """`env` without any MLflow credentials or run selection inherited from the test's own environment."""
    dropped = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID")
    return {k: v for k, v in env.items() if k not in dropped and not k.startswith("MLFLOW_EXPERIMENT_")}


def set_up_accounts(url: str, folder: Path, passwords: dict[str, str]) -> None:
    """The README's admin step: scripts/secure_tracking.py rotates the bootstrap password, creates the accounts and
    the study's experiment and model, and grants them."""
    env = without_accounts(subprocess_env(folder)) | account_env(url, "admin", passwords["bootstrap"])
    env |= {
        "NEW_ADMIN_PASSWORD": passwords["admin"],
        "HPO_WORKER_PASSWORD": passwords["hpo-worker"],
        "HPO_READER_PASSWORD": passwords["reader"],
    }
    command = [sys.executable, str(REPO / "scripts" / "secure_tracking.py"), "--experiment", STUDY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


class AuthTrackingServer(TrackingServer):
    """conftest's tracking server as `mlflow server --app-name basic-auth`, answering only to its own address."""

    def command(self) -> list[str]:
        """The plain server's command with the auth app and the allowed Host header."""
        return [*super().command(), "--app-name", "basic-auth", "--allowed-hosts", f"127.0.0.1:{self.port}"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """`mlflow server --app-name basic-auth` on a free loopback port, set up as the README says."""
    folder = tmp_path_factory.mktemp("auth-server")
    passwords = {name: secrets.token_urlsafe(18) for name in ("bootstrap", "admin", "hpo-worker", "reader")}
    tracking = AuthTrackingServer(folder, f"sqlite:///{folder / 'mlflow.db'}")
    with pytest.MonkeyPatch.context() as patch:  # the server's environment, which it inherits when started
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            patch.delenv(name, raising=False)
        patch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(24))
        patch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(server_config(folder)))
        patch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", passwords["bootstrap"])
        tracking.start()
    try:
        set_up_accounts(tracking.url, folder, passwords)
        yield AuthServer(tracking.url, folder, passwords)
    finally:
        tracking.stop()


@contextmanager
def signed_in(server: AuthServer, user: str | None) -> Iterator[MlflowClient]:
    """This process as `user` of the server (None: anonymous), for clients and in-process commands."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(name, raising=False)
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        for name, value in account_env(server.url, user, server.passwords.get(user or "")).items():
            patch.setenv(name, value)
        patch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        mlflow.set_tracking_uri(server.url)
        try:
            yield MlflowClient(server.url)
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)


@dataclass(frozen=True)
class WorkerStudy:
    """The worker account's study: its folder (Optuna's database) and its console output."""

    folder: Path
    storage: str
    output: str


@pytest.fixture(scope="module")
def worker_study(server: AuthServer, real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerStudy:
    """The README's worker command as `hpo-worker`: a tiny 2-trial study that registers its best model; the
    account and the storage URL come from the environment only."""
    folder = tmp_path_factory.mktemp("worker")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    env = without_accounts(subprocess_env(folder)) | account_env(
        server.url, "hpo-worker", server.passwords["hpo-worker"]
    )
    env[STORAGE_ENV] = storage
    command = [sys.executable, "-m", "fashion_hpo", "study", "--study-name", STUDY, "--n-trials", "2"]
    command += ["--epochs", "1", "--max-train-samples", "300", "--refit-epochs", "1", "--timeout", "0"]
    command += ["--data-dir", str(real_data_dir), "--no-progress-bar"]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return WorkerStudy(folder, storage, output)


def champion(server: AuthServer) -> ModelVersion:
    """The champion version, read as the admin."""
    with signed_in(server, "admin") as client:
        return client.get_model_version_by_alias(MODEL, "champion")


@pytest.mark.slow
def test_without_an_account_the_server_answers_401(server: AuthServer) -> None:
    """MLflow's behaviour, kept because docs/scaling.md's recipe depends on it: with the auth config it writes, a
    caller without an account reads nothing."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    assert refused.value.code == 401


@pytest.mark.slow
@pytest.mark.parametrize(("user", "says"), [(None, "requires a login"), ("hpo-worker", "rejected user 'hpo-worker'")])
@pytest.mark.parametrize("command", ["study", "register", "predict", "verify"])
def test_a_refused_login_is_one_line_naming_the_username_variable_before_anything_runs(
    server: AuthServer,
    user: str | None,
    says: str,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, f"sqlite:///{tmp_path / 'optuna.db'}")
    args = {"study": ["--data-dir", str(tmp_path)], "register": ["--data-dir", str(tmp_path)]}
    args["predict"] = ["--test-samples", "5", "--data-dir", str(tmp_path)]
    wrong = AuthServer(server.url, server.folder, {"hpo-worker": "not-the-password"})
    with signed_in(wrong, user):
        code = run_cli([command, *args.get(command, [])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "environment variable MLFLOW_TRACKING_USERNAME:" in err and "HTTP 401" in err and says in err
    assert not (tmp_path / "optuna.db").exists(), "no study was created"


@pytest.mark.slow
def test_the_worker_account_runs_a_study_and_registers_it_with_digests(
    server: AuthServer, worker_study: WorkerStudy
) -> None:
    assert f"Registered: models:/{MODEL}/1" in worker_study.output
    version = champion(server)
    assert version.version == "1" and len(version.tags[WEIGHTS_TAG]) == len(version.tags[FILES_TAG]) == 64
    with signed_in(server, "admin") as client:
        experiment = client.get_experiment_by_name(STUDY)
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}, "the study's run and 2 trials"


@pytest.mark.slow
def test_the_reader_compares_runs_but_cannot_register_or_move_the_alias(
    server: AuthServer, worker_study: WorkerStudy
) -> None:
    version = champion(server)
    with signed_in(server, "reader") as client:
        experiment = client.get_experiment_by_name(STUDY)
        assert experiment is not None
        assert len(client.search_runs([experiment.experiment_id])) == 3
        for refused in (
            lambda: client.set_registered_model_alias(MODEL, "champion", version.version),
            lambda: client.delete_registered_model_alias(MODEL, "champion"),
            lambda: client.create_model_version(MODEL, version.source, run_id=version.run_id),
        ):
            with pytest.raises(MlflowException) as denied:
                refused()
            assert denied.value.error_code == "PERMISSION_DENIED"
    assert champion(server).version == version.version


@pytest.mark.slow
def test_register_as_the_reader_is_one_line_naming_the_account(
    server: AuthServer,
    worker_study: WorkerStudy,
    real_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(STORAGE_ENV, worker_study.storage)
    with signed_in(server, "reader"):
        code = run_cli(["register", "--study-name", STUDY, "--data-dir", str(real_data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "MLFLOW_TRACKING_USERNAME" in err and "user 'reader'" in err and "HTTP 403" in err


def files_under(*folders: Path) -> list[Path]:
    """Every file in the folders."""
    return [path for folder in folders for path in folder.rglob("*") if path.is_file()]


@pytest.mark.slow
def test_passwords_from_the_environment_are_nowhere_in_the_stores_or_the_output(
    server: AuthServer, worker_study: WorkerStudy
) -> None:
    stored = files_under(server.folder, worker_study.folder)
    assert server.folder / "mlflow.db" in stored and any(p.name == "MLmodel" for p in stored)
    for name, password in server.passwords.items():
        assert password not in worker_study.output, name
        for path in stored:
            assert password.encode() not in path.read_bytes(), (name, path)


def weights_of(server: AuthServer, version: ModelVersion) -> Path:
    """The weights file of a registered version in the server's artifact store."""
    model_id = version.source.removeprefix("models:/")
    (weights,) = [p for p in files_under(server.folder) if model_id in p.parts and p.suffix == ".pt2"]
    return weights


@pytest.mark.slow
def test_verify_keeps_a_checked_copy_that_predict_loads(
    server: AuthServer,
    worker_study: WorkerStudy,
    real_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = tmp_path / "champion"
    with signed_in(server, "reader"):
        assert run_cli(["verify", "--keep", str(copy)]) == 0
        assert "matches its recorded SHA-256 digests" in capsys.readouterr().out
    assert (copy / "MLmodel").is_file() and digests(copy) == {tag: champion(server).tags[tag] for tag in digests(copy)}
    predict = ["predict", "--model-uri", str(copy), "--test-samples", "20", "--data-dir", str(real_data_dir)]
    assert run_cli(predict) == 0
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_tampered_weights_are_refused_by_predict_and_verify(
    server: AuthServer,
    worker_study: WorkerStudy,
    real_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights = weights_of(server, champion(server))
    original = weights.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    weights.write_bytes(bytes(tampered))
    try:
        with signed_in(server, "reader"):
            verify = run_cli(["verify"])
            verify_err = capsys.readouterr().err
            predict = run_cli(["predict", "--test-samples", "20", "--data-dir", str(real_data_dir)])
            predict_err = capsys.readouterr().err
    finally:
        weights.write_bytes(original)
    for code, err in ((verify, verify_err), (predict, predict_err)):
        assert code == 2 and err.count("\n") == 1, err
        assert f"weights ({WEIGHTS_FOLDER}/) do not match its {WEIGHTS_TAG}" in err


# --- PostgreSQL roles of the recipe -----------------------------------------------------------------------------


@contextmanager
def hpo_role(admin_url: str) -> Iterator[str]:
    """The README's database step, done by the admin role: a database for Optuna with its tables, and a role `hpo`
    that may connect and read/write those tables but owns nothing and creates nothing; yields that role's URL."""
    suffix = uuid4().hex[:10]
    database, role, password = f"optuna_{suffix}", f"hpo_{suffix}", secrets.token_urlsafe(18)
    admin = sqlalchemy.create_engine(engine_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
        conn.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
    database_url = sqlalchemy.engine.make_url(engine_url(admin_url)).set(database=database)
    owner_url = database_url.render_as_string(hide_password=False)
    owner = sqlalchemy.create_engine(owner_url)
    try:
        optuna.storages.RDBStorage(owner_url).engine.dispose()  # the admin creates Optuna's tables (hpo cannot)
        with owner.begin() as conn:
            for statement in (
                f"REVOKE ALL ON DATABASE {database} FROM PUBLIC",
                f"GRANT CONNECT ON DATABASE {database} TO {role}",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
            ):
                conn.execute(sqlalchemy.text(statement))
        yield database_url.set(username=role, password=password).render_as_string(hide_password=False)
    finally:
        owner.dispose()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            conn.execute(sqlalchemy.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


@pytest.mark.slow
def test_a_role_with_table_rights_only_runs_the_study_and_its_password_stays_out_of_the_store(
    server: AuthServer,
    postgres_url: str,
    real_data_dir: Path,
    tmp_path: Path,
) -> None:
    with hpo_role(postgres_url) as url:
        password = sqlalchemy.engine.make_url(url).password
        assert password
        engine = sqlalchemy.create_engine(engine_url(url))
        with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"), engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE intruder (x int)"))
        engine.dispose()
        env = without_accounts(subprocess_env(tmp_path)) | account_env(
            server.url, "hpo-worker", server.passwords["hpo-worker"]
        )
        env[STORAGE_ENV] = url.replace("postgresql+psycopg://", "postgresql://")
        command = [sys.executable, "-m", "fashion_hpo", "study", "--study-name", f"{STUDY}-pg", "--n-trials", "1"]
        command += ["--epochs", "1", "--max-train-samples", "300", "--timeout", "0", "--no-register"]
        command += ["--data-dir", str(real_data_dir), "--no-progress-bar", "--no-baseline-trial"]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Number of complete trials: 1" in output and password not in output
    for path in files_under(server.folder, tmp_path):
        assert password.encode() not in path.read_bytes(), path
