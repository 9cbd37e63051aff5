"""The flags every benchmark script takes, and the device helpers of the ones that train."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fashion_hpo.core.settings import DEVICES
from fashion_hpo.core.validation import resolve_device
from fashion_hpo.data.splits import Split
from fashion_hpo.model.architectures import TrialConfig
from fashion_hpo.training.loop import make_optimizer, train_epoch

EPOCH_SAMPLES = 50_000  # a trial's training split


def parse_args(
    doc: str,
    script: str,
    quick_help: str,
    device: bool = False,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """--quick (a run of under a minute, which the tests execute), --data-dir, --output (JSON beside the script),
    with `device`, --device (resolved to a torch.device), and whatever flags `extra` adds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if extra is not None:
        extra(parser)
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


def write_report(args: argparse.Namespace, **fields: object) -> None:
    """Write the script's JSON report to --output: the device it ran on, then `fields`."""
    args.output.write_text(json.dumps({"device": device_label(args.device), **fields}, indent=2))


def epoch_seconds(model: nn.Module, config: TrialConfig, train: Split) -> float:
    """Seconds of a training epoch of 50,000 images, as `training.fit` trains `model` (channels-last, `config`'s
    optimizer and batch size), timed on `train` after a warm-up of two batches."""
    model = model.to(train.images.device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    train_epoch(model, optimizer, train.head(2 * config.batch_size), config.batch_size, generator)
    seconds = timed(lambda: train_epoch(model, optimizer, train, config.batch_size, generator), train.images.device)
    return seconds * EPOCH_SAMPLES / len(train)
