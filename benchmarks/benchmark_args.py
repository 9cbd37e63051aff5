"""The flags every benchmark script takes, and the device helpers of the ones that train."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fashion_hpo.settings import DEVICES, resolve_device


def parse_args(doc: str, script: str, quick_help: str, device: bool = False) -> argparse.Namespace:
    """--quick (a run of under a minute, which the tests execute), --data-dir, --output (JSON beside the script),
    and with `device`, --device (resolved to a torch.device)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a run of under a minute ({quick_help})")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="FashionMNIST folder (default: data)")
    parser.add_argument(
        "--output", type=Path, default=Path(script).with_suffix(".json"), help="JSON result file (default: beside it)"
    )
    if device:
        parser.add_argument("--device", choices=DEVICES, default="cpu", help="where to train (default: cpu)")
    args = parser.parse_args()
    if device:
        args.device = resolve_device(args.device)
    return args


def synchronize(device: torch.device | None) -> None:
    """Wait for queued GPU work, so that a timer measures it (nothing to wait for on the CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], object], device: torch.device | None = None) -> float:
    """Wall seconds of `work()`, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def device_label(device: torch.device) -> str:
    """The device as a line of the report: its kind, and the GPU's name or the CPU threads."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
