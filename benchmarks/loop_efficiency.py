"""Benchmark 2: how close our training epoch gets to the hardware.

For a fixed MLP and a fixed CNN: samples/s of `train_epoch` (shuffled batches indexed from in-memory tensors) vs a
tight loop doing only forward/backward/step on one pre-made batch of the same size; and the achieved GFLOP/s against
a measured fp32 matmul peak of this machine. Writes the numbers to a JSON file next to this script.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from benchmark_args import device_label, parse_args, timed
from torch.utils.flop_counter import FlopCounterMode

from fashion_hpo.data.splits import Split, load_data, scaled
from fashion_hpo.model.architectures import CNNConfig, MLPConfig, TrialConfig, build_model
from fashion_hpo.training.loop import make_optimizer, train_epoch

CONFIGS = {
    "mlp 512-256": TrialConfig(MLPConfig((512, 256), (0.2, 0.2)), "Adam", 1e-3, 128, 0.0, 0.0),
    "cnn 32-64": TrialConfig(CNNConfig((32, 64), 3, True, 0.25, 128), "Adam", 1e-3, 128, 0.0, 0.0),
}


def matmul_peak(device: torch.device, repeats: int = 10) -> float:
    """Measured fp32 matmul GFLOP/s of this machine (best of `repeats`)."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


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
        build_model(config.model).to(split.images.device),
        scaled(split.images[: config.batch_size]),
        split.labels[: config.batch_size],
    )
    model.train()
    optimizer = make_optimizer(model, config)

    def loop(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

    loop(4)  # warm-up, as our epoch gets (on a GPU: kernel selection, the caching allocator)
    return timed(lambda: loop(steps), split.images.device)


def measure(name: str, config: TrialConfig, split: Split, peak: float) -> dict[str, float | str]:
    """One row: our epoch vs the tight loop, and GFLOP/s."""
    device = split.images.device
    model = build_model(config.model).to(device)
    optimizer = make_optimizer(model, config)
    train_epoch(model, optimizer, split.head(config.batch_size * 4), config.batch_size, torch.Generator())  # warm-up
    generator = torch.Generator().manual_seed(0)
    ours = timed(lambda: train_epoch(model, optimizer, split, config.batch_size, generator), device)
    steps = -(-len(split) // config.batch_size)
    tight = tight_loop_seconds(config, split, steps)
    gflops = step_flops(config, config.batch_size) * steps / ours / 1e9
    return {
        "model": name,
        "epoch_s": ours,
        "ours_samples_per_s": len(split) / ours,
        "tight_samples_per_s": len(split) / tight,
        "efficiency": tight / ours,
        "gflops": gflops,
        "peak_fraction": gflops / peak,
    }


def main() -> None:
    args = parse_args(__doc__, __file__, "2,560 samples", device=True)
    split = load_data(args.data_dir, seed=0, device=args.device).train.head(2560 if args.quick else 50_000)
    peak = matmul_peak(args.device)
    rows = [measure(name, config, split, peak) for name, config in CONFIGS.items()]
    device = device_label(args.device)
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s on {device}; {len(split)} samples per epoch")
    print(f"{'model':<12} {'epoch s':>8} {'ours/s':>9} {'tight/s':>9} {'eff':>5} {'GFLOP/s':>8} {'of peak':>8}")
    for row in rows:
        print(
            f"{row['model']:<12} {row['epoch_s']:8.2f} {row['ours_samples_per_s']:9.0f} "
            f"{row['tight_samples_per_s']:9.0f} {row['efficiency']:5.2f} {row['gflops']:8.1f} "
            f"{row['peak_fraction']:8.1%}"
        )
    print("goal: efficiency >= 0.85")
    result = {"device": device, "peak_gflops": peak, "samples": len(split), "rows": rows}
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
