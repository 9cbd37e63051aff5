"""What a trained model costs to deploy: parameters, FLOPs per image, CPU latency per image. Pure measurements."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fashion_hpo.core.constants import FLOPS, LATENCY_MS, N_PARAMS
from fashion_hpo.model.architectures import IMAGE_SHAPE

LATENCY_BATCH = 256  # images per timed forward pass: a serving batch, large enough to time reliably
LATENCY_REPEATS = 5  # timed passes after one warm-up; the median is reported


@dataclass(frozen=True)
class ModelCosts:
    """A model's size and speed: trainable parameters, FLOPs per image, CPU milliseconds per image."""

    n_params: int
    flops: int
    latency_ms: float

    def as_metrics(self) -> dict[str, float]:
        """The costs under their metric names."""
        return {N_PARAMS: float(self.n_params), FLOPS: float(self.flops), LATENCY_MS: self.latency_ms}


def count_params(model: nn.Module) -> int:
    """Trainable parameters (known before training: what `--max-params` limits)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_image(model: nn.Module) -> int:
    """FLOPs of one image's forward pass (2 per multiply-add), as torch's FlopCounterMode counts them: the
    convolutions and matrix products; normalization, activations and pooling are left out (a few percent here)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *IMAGE_SHAPE, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def cpu_latency_ms(model: nn.Module, batch: int = LATENCY_BATCH, repeats: int = LATENCY_REPEATS) -> float:
    """CPU milliseconds per image in batches of `batch`, after a warm-up: the median of `repeats` timed passes.

    Measured on a CPU copy in eval mode with this process's torch threads, so trials of one study compare fairly."""
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    images = torch.rand(batch, *IMAGE_SHAPE)
    times = []
    with torch.inference_mode():
        cpu_model(images)  # warm-up: allocations and kernel choice
        for _ in range(repeats):
            start = time.perf_counter()
            cpu_model(images)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / batch


def measure_costs(model: nn.Module) -> ModelCosts:
    """All three costs of a trained model."""
    return ModelCosts(count_params(model), flops_per_image(model), cpu_latency_ms(model))
