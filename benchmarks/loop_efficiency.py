"""Benchmark 2: how close our training epoch gets to the hardware.

For a fixed MLP and a fixed CNN: samples/s of `train_epoch` (shuffled batches indexed from in-memory tensors) vs a
tight loop doing only forward/backward/step on one pre-made batch of the same size; and the achieved GFLOP/s against
a measured fp32 matmul peak of this machine. Writes the numbers to a JSON file next to this script.
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from benchmark_args import parse_args
from torch.utils.flop_counter import FlopCounterMode

from fashion_hpo.data import Split, load_data
from fashion_hpo.models import CNNConfig, MLPConfig, build_model
from fashion_hpo.search_space import TrialConfig
from fashion_hpo.training import make_optimizer, train_epoch

CONFIGS = {
    "mlp 512-256": TrialConfig(MLPConfig((512, 256), (0.2, 0.2)), "Adam", 1e-3, 128, 0.0, 0.0),
    "cnn 32-64": TrialConfig(CNNConfig((32, 64), 3, True, 0.25, 128), "Adam", 1e-3, 128, 0.0, 0.0),
}


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul GFLOP/s of this machine (best of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def step_flops(config: TrialConfig, batch: int) -> int:
    """FLOPs of one training step (forward + backward) for a batch."""
    model = build_model(config.model)
    images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops()


def tight_loop_seconds(config: TrialConfig, split: Split, steps: int) -> float:
    """Seconds for `steps` forward/backward/step calls on one pre-made batch: the loop's ceiling."""
    model, images, labels = (
        build_model(config.model),
        split.images[: config.batch_size],
        split.labels[: config.batch_size],
    )
    model.train()
    optimizer = make_optimizer(model, config)

    def loop() -> None:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

    return timed(loop)


def measure(name: str, config: TrialConfig, split: Split, peak: float) -> dict[str, float | str]:
    """One row: our epoch vs the tight loop, and GFLOP/s."""
    model = build_model(config.model)
    optimizer = make_optimizer(model, config)
    train_epoch(model, optimizer, split.head(config.batch_size * 4), config.batch_size, torch.Generator())  # warm-up
    ours = timed(lambda: train_epoch(model, optimizer, split, config.batch_size, torch.Generator().manual_seed(0)))
    steps = -(-len(split) // config.batch_size)
    tight = tight_loop_seconds(config, split, steps)
    gflops = step_flops(config, config.batch_size) * steps / ours / 1e9
    return {
        "model": name,
        "ours_samples_per_s": len(split) / ours,
        "tight_samples_per_s": len(split) / tight,
        "efficiency": tight / ours,
        "gflops": gflops,
        "peak_fraction": gflops / peak,
    }


def main() -> None:
    args = parse_args(__doc__, __file__, "2,560 samples")
    split = load_data(args.data_dir, seed=0).train.head(2560 if args.quick else 50_000)
    peak = matmul_peak()
    rows = [measure(name, config, split, peak) for name, config in CONFIGS.items()]
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s ({torch.get_num_threads()} threads); {len(split)} samples per epoch")
    print(f"{'model':<12} {'ours/s':>9} {'tight/s':>9} {'eff':>5} {'GFLOP/s':>8} {'of peak':>8}")
    for row in rows:
        print(
            f"{row['model']:<12} {row['ours_samples_per_s']:9.0f} {row['tight_samples_per_s']:9.0f} "
            f"{row['efficiency']:5.2f} {row['gflops']:8.1f} {row['peak_fraction']:8.1%}"
        )
    print("goal: efficiency >= 0.85")
    args.output.write_text(json.dumps({"peak_gflops": peak, "samples": len(split), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
