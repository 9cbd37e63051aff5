"""Benchmark: loading the registered model, against the cost of `import mlflow, torch` that any user of it pays.

Logs and registers the CNN baseline (untrained: load time does not depend on the weights' values) to a temporary
tracking store, then times, each in fresh Python processes that cannot import fashion_hpo (the project is hidden,
as on a serving machine with only mlflow and torch): the imports, `mlflow.pyfunc.load_model` of the registered
model (architecture + state dict, rebuilt by the shipped code), `mlflow.pytorch.load_model` of the same folder (the
torch.export program it also holds, for MLflow's standard tooling), the raw loaders of the candidates (torch.export,
TorchScript, state dict), and the wall time of `fashion-hpo predict` for one image. Medians of
--repeats runs. Goals: load <= 0.5x and predict <= 1.5x the import time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAME = "fashion-mnist-classifier"
# Runs first in every timed process: hide the project (its source folder and its editable install) so that the model
# loads the way it would where only mlflow and torch are installed.
HIDE_PROJECT = f"""
import sys, time
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r}, {str(REPO / "src")!r})]
"""
TIMED = (
    HIDE_PROJECT
    + """
start = time.perf_counter()
import mlflow, torch
imported = time.perf_counter()
{load}
print(imported - start, time.perf_counter() - imported)
"""
)
LOADERS = {
    "pyfunc, state dict rebuilt": "mlflow.pyfunc.load_model({now!r})",
    "mlflow.pytorch.load_model (torch.export)": "mlflow.pytorch.load_model({now!r})",
    "torch.export.load": "torch.export.load({now!r} + '/data/model.pt2').module()",
    "torch.jit.load (TorchScript)": "torch.jit.load({script!r})",
    "torch.load state dict (weights_only)": "torch.load({now!r} + '/data/state_dict.pt', weights_only=True)",
}


def parse_args() -> argparse.Namespace:
    """--quick, --repeats, --output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one process per measurement instead of --repeats")
    parser.add_argument("--repeats", type=int, default=5, help="processes per measurement (default: 5)")
    parser.add_argument("--data-dir", type=Path, help="unused; every benchmark takes it")
    parser.add_argument(
        "--output", type=Path, default=HERE / "champion_load.json", help="JSON result (default: beside it)"
    )
    return parser.parse_args()


def register_baseline(folder: Path) -> str:
    """Log and register the CNN baseline as the pipeline does; returns the local path of the logged model."""
    import mlflow
    import numpy as np
    import torch

    from fashion_hpo.model.architectures import build_model
    from fashion_hpo.registry.versions import ModelCard, log_model, promote, register
    from fashion_hpo.search.space import BASELINE_PARAMS, config_from_params

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    architecture = config_from_params(BASELINE_PARAMS["cnn"], "cnn").model
    card = ModelCard("benchmark", 0, "cnn", 0.0, 0.0)
    with mlflow.start_run() as run:
        info = log_model(build_model(architecture), architecture, np.zeros((4, 1, 28, 28), np.float32), card)
        promote(register(info.model_uri, NAME, card, run.info.run_id), 0.0, "if-better")
    path = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(folder / "now")))
    torch.jit.save(torch.jit.script(build_model(architecture).eval()), folder / "model.torchscript")
    return str(path)


def timed_process(code: str) -> tuple[float, float]:
    """Seconds of `import mlflow, torch` and of the code after it, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imports, load = result.stdout.split()[-2:]
    return float(imports), float(load)


def predict_wall(folder: Path, image: Path) -> float:
    """Wall seconds of `fashion-hpo predict IMAGE` with the registered champion, process start to exit."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    command = [sys.executable, "-m", "fashion_hpo", "predict", str(image)]
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def import_wall() -> float:
    """Wall seconds of a process that runs `import mlflow, torch`, start to exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", HIDE_PROJECT + "import mlflow, torch"], check=True)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        now = register_baseline(folder)
        paths = {"now": now, "script": str(folder / "model.torchscript")}
        from PIL import Image

        image = folder / "one.png"
        Image.new("L", (28, 28), 0).save(image)
        rows, import_s = {}, []
        for label, load in LOADERS.items():
            runs = [timed_process(TIMED.format(load=load.format(**paths))) for _ in range(repeats)]
            import_s += [imports for imports, _ in runs]
            rows[label] = statistics.median(seconds for _, seconds in runs)
        imports = statistics.median(import_s)
        process_import = statistics.median(import_wall() for _ in range(repeats))
        predict = statistics.median(predict_wall(folder, image) for _ in range(repeats))
    result = {
        "repeats": repeats,
        "import_s": imports,
        "load_s": rows,
        "load_ratio": rows["pyfunc, state dict rebuilt"] / imports,
        "load_ratio_export": rows["mlflow.pytorch.load_model (torch.export)"] / imports,
        "import_process_s": process_import,
        "predict_s": predict,
        "predict_ratio": predict / process_import,
    }
    print(f"import mlflow, torch: {imports:.2f} s (median of {len(import_s)} processes)")
    for label, seconds in rows.items():
        print(f"  {label:<42} {seconds:6.2f} s after the imports = {seconds / imports:.2f}x the imports")
    export = result["load_ratio_export"]
    ratios = f"{result['load_ratio']:.2f}x the imports (goal <= 0.5x; the exported program {export:.2f}x)"
    print(f"pyfunc load: {ratios}")
    print(
        f"fashion-hpo predict one.png: {predict:.2f} s vs a process importing mlflow, torch {process_import:.2f} s "
        f"= {result['predict_ratio']:.2f}x (goal <= 1.5x)"
    )
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
