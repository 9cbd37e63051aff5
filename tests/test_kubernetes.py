"""The cluster launcher (deploy/kubernetes/), checked offline: every manifest against the Kubernetes JSON schemas
that kubernetes-validate ships (kubectl's own validation needs a cluster's API server), the workers' and the
register Job's command lines parsed by the CLI's own parser, and every credential from a Secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME

from fashion_hpo.cli.parser import build_parser, parse_args, settings_from_args
from fashion_hpo.core.settings import STORAGE_ENV
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
# The oldest Kubernetes whose schemas kubernetes-validate ships, and the newest.
VERSIONS = ("1.25", kubernetes_validate.latest_version())
# What the code reads: Optuna's storage (fashion-hpo) and the tracking server's address and account (MLflow).
TRACKING_ENV = {STORAGE_ENV, MLFLOW_TRACKING_URI.name, MLFLOW_TRACKING_USERNAME.name, MLFLOW_TRACKING_PASSWORD.name}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


def manifest_files() -> list[Path]:
    """The manifests that kustomization.yaml applies."""
    return [MANIFESTS / name for name in yaml.safe_load(KUSTOMIZATION.read_text())["resources"]]


def documents() -> list[dict[str, Any]]:
    """Every object of every manifest."""
    return [doc for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def named(kind: str, name: str) -> dict[str, Any]:
    """The object of that kind and name."""
    return next(doc for doc in documents() if doc["kind"] == kind and doc["metadata"]["name"] == name)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Job or a StatefulSet."""
    return doc["spec"]["template"]["spec"]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The init containers, then the containers, of a workload."""
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """One container of a workload, by name."""
    return next(c for c in containers(doc) if c["name"] == name)


def workloads() -> list[dict[str, Any]]:
    """The objects that run pods."""
    return [doc for doc in documents() if doc["kind"] in ("Job", "StatefulSet", "Deployment")]


def cli_args(doc: dict[str, Any], name: str) -> list[str]:
    """A `fashion-hpo` container's arguments (its command must be the console script)."""
    spec = container(doc, name)
    assert spec["command"] == ["fashion-hpo"], f"{name}: runs {spec['command']}, not fashion-hpo"
    return list(spec["args"])


def plain_env(doc: dict[str, Any], name: str) -> dict[str, str]:
    """A container's environment variables that have a literal value."""
    return {e["name"]: e["value"] for e in container(doc, name).get("env", []) if "value" in e}


def test_kustomization_applies_every_manifest() -> None:
    listed = {path.name for path in manifest_files()}
    present = {path.name for path in MANIFESTS.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert listed == present, "kustomization.yaml's resources must list every manifest of deploy/kubernetes/"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_matches_the_kubernetes_schema(version: str) -> None:
    for doc in documents():
        # strict: a misspelt or misplaced field is an error, not silently dropped by the API server.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_a_misplaced_field() -> None:
    """The check above can fail: a Job whose restartPolicy sits on the Job's spec instead of the pod's."""
    job = named("Job", "fashion-hpo-workers")
    broken = {**job, "spec": {**job["spec"], "restartPolicy": "OnFailure"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_workers_command_is_a_valid_search_without_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = named("Job", "fashion-hpo-workers")
    args = parse_args(build_parser(), cli_args(workers, "worker"))
    assert args.command == "study"
    assert args.register is False, "the workers search only (--no-register); the register Job registers once"
    assert args.timeout == 0, "a worker pod must run until the study has its trials, not stop after --timeout"
    assert args.workers == 1, "one worker per pod: the Job's parallelism sets their number"
    limits = container(workers, "worker")["resources"]["limits"]
    assert args.threads == int(limits["cpu"]), "--threads must be the CPU limit (torch counts the node's cores)"
    mounts = {m["mountPath"] for m in container(workers, "worker")["volumeMounts"]}
    assert str(args.data_dir) in mounts, "--data-dir must be the pod's scratch volume"
    spec = workers["spec"]
    assert spec["parallelism"] == spec["completions"] > 1, "each pod runs to the study's end: one completion each"
    assert pod_spec(workers)["restartPolicy"] == "OnFailure" and spec["backoffLimit"] > 0
    for variable, value in plain_env(workers, "worker").items():
        monkeypatch.setenv(variable, value)
    assert settings_from_args(args).storage.startswith("postgresql://"), "the storage comes from the environment"


def test_register_job_registers_the_workers_study() -> None:
    workers = parse_args(build_parser(), cli_args(named("Job", "fashion-hpo-workers"), "worker"))
    register_job = named("Job", "fashion-hpo-register")
    register = parse_args(build_parser(), cli_args(register_job, "register"))
    assert register.command == "register"
    limits = container(register_job, "register")["resources"]["limits"]
    assert register.threads == int(limits["cpu"]), "the refit's --threads must be the CPU limit"
    for setting in ("study_name", "registered_model_name", "seed", "model"):
        assert getattr(register, setting) == getattr(workers, setting), f"register's {setting} is the workers'"
    wait = container(register_job, "wait-for-workers")["args"]
    assert wait[:3] == ["wait", "--for=condition=complete", "job/fashion-hpo-workers"]


def test_setup_job_creates_the_workers_experiment_and_model() -> None:
    workers = parse_args(build_parser(), cli_args(named("Job", "fashion-hpo-workers"), "worker"))
    setup = container(named("Job", "fashion-hpo-setup"), "tracking-accounts")["args"]
    options = dict(zip(setup[::2], setup[1::2], strict=True))
    assert options["--experiment"] == workers.study_name
    assert options["--registered-model-name"] == workers.registered_model_name
    wait = container(named("Job", "fashion-hpo-workers"), "wait-for-setup")["args"]
    assert wait[:3] == ["wait", "--for=condition=complete", "job/fashion-hpo-setup"]


@pytest.mark.parametrize(("job", "name"), [("fashion-hpo-workers", "worker"), ("fashion-hpo-register", "register")])
def test_jobs_reach_the_stores_through_the_variables_the_code_reads(job: str, name: str) -> None:
    env = {e["name"]: e for e in container(named("Job", job), name)["env"]}
    assert set(env) >= TRACKING_ENV, f"{job}: set {sorted(TRACKING_ENV - set(env))}"
    assert "secretKeyRef" in env[MLFLOW_TRACKING_PASSWORD.name]["valueFrom"]
    # libpq reads the database password from PGPASSWORD, so the storage URL carries none.
    assert "secretKeyRef" in env["PGPASSWORD"]["valueFrom"]
    assert env[MLFLOW_TRACKING_URI.name]["value"] == "http://mlflow:5000"


def test_no_password_in_the_manifests() -> None:
    assert not any(doc["kind"] == "Secret" for doc in documents()), "Secrets are created by hand, never committed"
    for path in [*manifest_files(), KUSTOMIZATION]:
        assert not URL_WITH_PASSWORD.search(path.read_text()), f"{path.name}: a URL with a password"
    for doc in workloads():
        for spec in containers(doc):
            assert "envFrom" not in spec or all("secretRef" in source for source in spec["envFrom"])
            for variable in spec.get("env", []):
                if SECRET_NAME.search(variable["name"]):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), f"{spec['name']}: {variable['name']}"


def test_every_secret_key_is_created_by_the_docs() -> None:
    """Each (Secret, key) that a container reads appears in docs/kubernetes.md's `kubectl create secret` step."""
    text = (REPO / "docs" / "kubernetes.md").read_text()
    created = {
        (secret, key)
        for secret, literals in re.findall(r"create secret generic (\S+)((?:[^\n]*\\\n)*[^\n]*)", text)
        for key in re.findall(r"--from-literal=([\w-]+)=", literals)
    }
    for doc in workloads():
        for spec in containers(doc):
            for variable in spec.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (ref["name"], ref["key"]) in created, f"docs/kubernetes.md must create {ref}"


def test_services_are_probed_and_waited_for() -> None:
    postgres = container(named("StatefulSet", "postgres"), "postgres")
    mlflow = container(named("StatefulSet", "mlflow"), "mlflow")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert postgres[probe]["exec"]["command"][0] == "pg_isready"
        assert mlflow[probe]["httpGet"]["path"] == "/health"
    for job in ("fashion-hpo-setup", "fashion-hpo-workers", "fashion-hpo-register"):
        waits = {c["name"] for c in pod_spec(named("Job", job))["initContainers"]}
        assert {"wait-for-database", "wait-for-tracking-server"} <= waits, job


def test_every_container_has_requests_and_a_memory_limit() -> None:
    for doc in workloads():
        for spec in containers(doc):
            resources = spec["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), spec["name"]
            assert "memory" in resources["limits"], spec["name"]


def test_database_roles_are_those_the_init_script_creates() -> None:
    script = named("ConfigMap", "fashion-hpo-postgres-init")["data"]["10-roles.sh"]
    roles = set(re.findall(r"CREATE ROLE (\w+)", script))
    databases = set(re.findall(r"CREATE DATABASE (\w+)", script))
    used = re.findall(r"postgresql(?:\+psycopg)?://(\w+)@postgres:5432/(\w+)", "\n".join(map(str, documents())))
    assert used and all(role in roles and db in databases for role, db in used), used


def test_image_build_copies_what_the_manifests_run() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    sources = [word for line in dockerfile.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]]
    for source in sources:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
        assert f"!{source}" in ignore, f"Dockerfile.dockerignore must let {source} into the build context"
    script = container(named("Job", "fashion-hpo-setup"), "tracking-accounts")["command"][-1]
    assert script == "/opt/fashion-hpo/scripts/secure_tracking.py" and "WORKDIR /opt/fashion-hpo" in dockerfile
    assert "scripts/secure_tracking.py" in sources
