"""Using the registered champion: portable loading, `fashion-hpo predict`, and `mlflow models serve`.

All of it runs against the model that the end-to-end `mlflow run` (tiny budget, real images) registered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import FashionMNIST

from fashion_hpo.cli.main import main
from tests.conftest import REPO, free_port, temporary_tracking, wait_until_answering

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CHAMPION = "models:/fashion-mnist-classifier@champion"


@pytest.fixture(scope="module")
def work(project_run: tuple[Path, subprocess.CompletedProcess[str]]) -> Iterator[Path]:
    """The end-to-end run's folder, with MLflow pointed at its store."""
    folder, _ = project_run
    with temporary_tracking(folder):
        yield folder


@pytest.fixture(scope="module")
def test_images(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 official test images as float32 (N, 1, 28, 28) in [0, 1], and their labels."""
    test = FashionMNIST(str(work / "data"), train=False)
    return (test.data[:1000].numpy().astype(np.float32) / 255.0)[:, None], test.targets[:1000].numpy()


def test_champion_loads_where_fashion_hpo_is_not_importable(work: Path) -> None:
    """A service with mlflow and torch only: the project's source and its installed copy are hidden."""
    script = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r}, {str(REPO / "src")!r})]
try:
    import fashion_hpo
    raise SystemExit("fashion_hpo is still importable before loading")
except ImportError:
    pass
import mlflow, numpy as np
model = mlflow.pyfunc.load_model({CHAMPION!r})
frame = model.predict(np.zeros((2, 1, 28, 28), dtype=np.float32))
import fashion_hpo
print(list(frame.columns), fashion_hpo.__file__)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    columns, module_file = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert columns == "['class_index', 'class_name', 'probabilities']"
    assert str(REPO / "src") not in module_file, "the code came from the model's artifacts, not the project"


def test_predict_test_samples_reports_accuracy(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--test-samples", "2000", "--data-dir", str(work / "data")]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert "on 2000 test images" in out and accuracy > 0.6


def confident_examples(test_images: tuple[np.ndarray, np.ndarray]) -> list[int]:
    """Indices of test images the champion classifies right with probability above 0.9."""
    import mlflow

    images, labels = test_images
    frame = mlflow.pyfunc.load_model(CHAMPION).predict(images[:200])
    return [
        i for i, row in enumerate(frame.itertuples()) if row.class_index == labels[i] and max(row.probabilities) > 0.9
    ]


def test_predict_classifies_files_and_reports_bad_ones(
    work: Path, test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = test_images
    first, second = confident_examples(test_images)[:2]
    as_in_dataset = tmp_path / "dataset.png"
    Image.fromarray((images[first, 0] * 255).astype(np.uint8)).save(as_in_dataset)
    photo_like = tmp_path / "photo.jpg"  # dark garment on white, colour, larger: as a phone photo would be
    inverted = Image.fromarray(((1 - images[second, 0]) * 255).astype(np.uint8)).resize((112, 112))
    inverted.convert("RGB").save(photo_like, quality=95)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")

    args = ["predict", str(as_in_dataset), str(not_an_image), str(photo_like)]
    assert main(args) == 1, "one file failed"
    out, err = capsys.readouterr()
    lines = [line.split("\t") for line in out.strip().splitlines()]
    from fashion_hpo.model.architectures import CLASS_NAMES

    assert [(Path(f).name, c) for f, c, _ in lines] == [
        ("dataset.png", CLASS_NAMES[labels[first]]),
        ("photo.jpg", CLASS_NAMES[labels[second]]),
    ]
    assert all(0.0 <= float(p) <= 1.0 for _, _, p in lines)
    assert err.count("\n") == 1 and "notes.png: error: cannot read image" in err

    assert main(["predict", "--json", str(as_in_dataset)]) == 0
    record = json.loads(capsys.readouterr().out)["predictions"][0]
    assert record["class_name"] == CLASS_NAMES[labels[first]] and record["class_index"] == labels[first]


def test_a_garment_on_a_wide_canvas_gets_the_class_and_confidence_of_the_square_photo(
    work: Path, test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = test_images
    index = confident_examples(test_images)[0]
    dark = Image.fromarray(((1 - images[index, 0]) * 255).astype(np.uint8)).resize((400, 400))
    square, wide = tmp_path / "square.png", tmp_path / "wide.png"
    dark.save(square)
    canvas = Image.new("L", (800, 400), 255)
    canvas.paste(dark, (200, 0))
    canvas.save(wide)
    assert main(["predict", "--json", str(square), str(wide)]) == 0
    first, second = json.loads(capsys.readouterr().out)["predictions"]
    assert first["class_index"] == second["class_index"] == labels[index]
    assert abs(first["probability"] - second["probability"]) < 0.05 and not second["uncertain"]


def test_unknown_model_uri_is_one_line_exit_2(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["predict", "--model-uri", "models:/fashion-mnist-classifier@nosuchalias", "--test-samples", "5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--model-uri" in err and "nosuchalias" in err


def post(url: str, payload: bytes) -> tuple[int, dict]:
    """POST a JSON body; returns the status and the decoded answer, also for 4xx."""
    request = urllib.request.Request(url, payload, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(work: Path) -> Iterator[str]:
    """`mlflow models serve` for the champion on a free loopback port."""
    port = free_port()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    command = ["mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(work / "serve.log", "w")  # noqa: SIM115 - closed below, after the server stops
    process = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/ping", process, work / "serve.log")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_served_model_classifies_real_images(server: str, test_images: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = test_images
    status, answer = post(f"{server}/invocations", json.dumps({"inputs": images[:300].tolist()}).encode())
    assert status == 200, answer
    predictions = answer["predictions"]
    assert set(predictions[0]) == {"class_index", "class_name", "probabilities"}
    accuracy = np.mean([p["class_index"] == label for p, label in zip(predictions, labels[:300], strict=True)])
    assert accuracy > 0.6


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps({"inputs": np.zeros((2, 1, 14, 14)).tolist()}),  # wrong shape
        json.dumps({"inputs": [[[["white"] * 28] * 28]]}),  # strings
        json.dumps({"inputs": np.full((1, 1, 28, 28), np.nan).tolist()}),  # NaN
        json.dumps({"inputs": np.full((1, 1, 28, 28), 255).tolist()}),  # 0-255 pixels
        json.dumps({"inputs": []}),  # empty
        json.dumps({"inputs": np.zeros((4097, 1, 28, 28), dtype=np.int8).tolist()}),  # oversized batch
        '{"inputs": [1, 2',  # not JSON
        json.dumps({"images": [1]}),  # unknown key
    ],
    ids=["shape", "strings", "nan", "range", "empty", "oversized", "not-json", "unknown-key"],
)
def test_bad_payload_gets_a_4xx_and_the_server_keeps_answering(
    server: str, payload: str, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    status, answer = post(f"{server}/invocations", payload.encode())
    assert 400 <= status < 500, (status, answer)
    assert answer.get("message"), answer
    status, _ = post(f"{server}/invocations", json.dumps({"inputs": test_images[0][:2].tolist()}).encode())
    assert status == 200


def test_registering_the_same_best_trial_again_adds_no_version(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    before = MlflowClient().search_model_versions("name = 'fashion-mnist-classifier'")
    args = ["register", "--storage", f"sqlite:///{work / 'optuna.db'}", "--data-dir", str(work / "data")]
    assert main(args) == 0
    assert "already registered as version" in capsys.readouterr().out
    after = MlflowClient().search_model_versions("name = 'fashion-mnist-classifier'")
    assert len(after) == len(before)
    register = "run_name = 'register-fashion-mnist-mlp'"
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=register, output_format="list")
    assert runs and {run.data.params["seed"] for run in runs} == {"3"}, "the study's seed, not the default 42"


def test_mlproject_predict_and_register_entry_points(work: Path) -> None:
    """`mlflow run . -e predict` and `-e register` against the end-to-end run's stores."""
    predict = run_entry_point(work, "predict", "test_samples=500")
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert "on 500 test images" in predict.stdout
    register = run_entry_point(work, "register", f"storage=sqlite:///{work / 'optuna.db'}")
    assert register.returncode == 0, register.stderr[-2000:]
    assert "already registered as version" in register.stdout


def run_entry_point(work: Path, entry: str, *params: str) -> subprocess.CompletedProcess[str]:
    """`mlflow run` of one of the project's entry points against the end-to-end run's folder."""
    from tests.conftest import subprocess_env

    command = ["mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "entry-points", "-e", entry]
    for param in (*params, f"data_dir={work / 'data'}"):
        command += ["-P", param]
    return subprocess.run(command, cwd=work, env=subprocess_env(work), capture_output=True, text=True, timeout=300)


def test_evaluate_and_a_pixel_table_match_predict_test_samples(
    work: Path, test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow's standard tooling on the champion: mlflow.models.evaluate as a classifier, pyfunc on a table of 784
    pixel columns and `mlflow models predict` on a CSV of it all score the 1,000 images `predict` scores."""
    import mlflow
    import pandas as pd

    from tests.conftest import subprocess_env

    images, labels = test_images
    assert main(["predict", "--test-samples", "1000", "--data-dir", str(work / "data")]) == 0
    reported = float(capsys.readouterr().out.split("accuracy ")[1].split()[0])

    table = pd.DataFrame(images.reshape(len(images), -1), columns=[f"pixel{i}" for i in range(784)])
    frame = mlflow.pyfunc.load_model(CHAMPION).predict(table)
    table_accuracy = float(np.mean(frame["class_index"].to_numpy() == labels))

    with mlflow.start_run(run_name="evaluate-champion"):
        result = mlflow.models.evaluate(
            CHAMPION,
            table.assign(label=labels),
            targets="label",
            model_type="classifier",
            model_config={"output": "class_index"},
        )
    evaluated = result.metrics["accuracy_score"]

    csv, scored = tmp_path / "pixels.csv", tmp_path / "scored.json"
    table.astype(np.float64).to_csv(csv, index=False)
    command = ["mlflow", "models", "predict", "-m", CHAMPION, "-i", str(csv), "-t", "csv", "-o", str(scored)]
    batch = subprocess.run(
        [*command, "--env-manager", "local"],
        cwd=work,
        env=subprocess_env(work),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert batch.returncode == 0, batch.stderr[-3000:]
    predictions = json.loads(scored.read_text())["predictions"]
    batch_accuracy = float(np.mean([p["class_index"] for p in predictions] == labels))

    print(f"predict {reported:.4f}, table {table_accuracy:.4f}, evaluate {evaluated:.4f}, CLI {batch_accuracy:.4f}")
    assert result.metrics["example_count"] == len(labels) == 1000
    assert reported == round(table_accuracy, 4) == round(evaluated, 4) == round(batch_accuracy, 4) > 0.6
