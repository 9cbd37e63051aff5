"""Benchmark 1: the seed notebook's data pipeline vs ours, on the same trials, alternating in one process.

Seed: torchvision FashionMNIST with `ToTensor` per sample through a DataLoader (batch 128), as the notebook did.
Ours: the splits held as tensors and batched by indexing (`fashion_hpo.training.fit`).
Two sets of trials: MLPs of the default space (up to 1,024 units, where the matrix products bound the ratio), and of
the seed notebook's own space (1-3 layers of 4-128 units, where the per-sample loader dominates).
Prints trial-seconds for each and their ratio; writes the numbers to a JSON file next to this script.
"""

from __future__ import annotations

import json
from functools import partial

import optuna
import torch
import torch.nn.functional as F
from benchmark_args import device_label, parse_args, timed
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from fashion_hpo.data.files import ensure_raw_files
from fashion_hpo.data.splits import FashionData, load_data
from fashion_hpo.model.architectures import TrialConfig, build_model
from fashion_hpo.search.space import suggest_config
from fashion_hpo.training.loop import evaluate, fit, make_optimizer

CONFIGS = [  # the same trials both ways: small, medium and large MLPs from the default search space
    {"n_layers": 1, "n_units_l0": 128, "dropout_l0": 0.2, "optimizer": "Adam", "lr": 1e-3, "batch_size": 128},
    {
        "n_layers": 2,
        "n_units_l0": 512,
        "n_units_l1": 256,
        "dropout_l0": 0.2,
        "dropout_l1": 0.2,
        "optimizer": "RMSprop",
        "lr": 5e-4,
        "batch_size": 128,
    },
    {
        "n_layers": 3,
        "n_units_l0": 256,
        "n_units_l1": 128,
        "n_units_l2": 100,
        "dropout_l0": 0.1,
        "dropout_l1": 0.1,
        "dropout_l2": 0.1,
        "optimizer": "SGD",
        "lr": 0.05,
        "momentum": 0.9,
        "batch_size": 128,
    },
]

# The same trials with the widths of the seed notebook's space (1-3 layers of 4-128 units).
SEED_SPACE_WIDTHS = [
    {"n_units_l0": 32},
    {"n_units_l0": 128, "n_units_l1": 64},
    {"n_units_l0": 100, "n_units_l1": 50, "n_units_l2": 16},
]
SEED_SPACE_CONFIGS = [{**config, **widths} for config, widths in zip(CONFIGS, SEED_SPACE_WIDTHS, strict=True)]


def seed_trial(config: TrialConfig, train: Subset, val: Subset, epochs: int, seed: int, device: torch.device) -> float:
    """One trial the seed notebook's way: per-sample ToTensor through DataLoaders, each batch copied to the device;
    returns validation accuracy."""
    torch.manual_seed(seed)
    model = build_model(config.model).to(device)
    optimizer = make_optimizer(model, config)
    train_loader = DataLoader(train, batch_size=128, shuffle=True)
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(val, batch_size=128):
            correct += (model(images.to(device)).argmax(1) == labels.to(device)).sum().item()
    return correct / len(val)


def our_trial(config: TrialConfig, data: FashionData, samples: int, epochs: int, seed: int) -> None:
    """The same trial our way: batches indexed from the splits' tensors, which live on the device."""
    torch.manual_seed(seed)
    model = build_model(config.model).to(data.train.images.device)
    fit(model, config, data.train.head(samples), None, epochs, seed=seed)
    evaluate(model, data.val.head(2000))


def compare(
    configs: list[dict],
    seed_data: tuple[Subset, Subset],
    data: FashionData,
    samples: int,
    epochs: int,
    device: torch.device,
) -> dict:
    """Each config trained the seed's way and ours; trial-seconds per config and in all, and their ratio."""
    rows = []
    for i, params in enumerate(configs):
        config = suggest_config(optuna.trial.FixedTrial({**params, "use_weight_decay": False}), "mlp")
        seed_seconds = timed(partial(seed_trial, config, *seed_data, epochs, i, device), device)
        ours_seconds = timed(partial(our_trial, config, data, samples, epochs, i), device)
        rows.append({"config": i, "seed_s": seed_seconds, "ours_s": ours_seconds, "ratio": seed_seconds / ours_seconds})
    total = {k: sum(r[k] for r in rows) for k in ("seed_s", "ours_s")}
    return {"trials": rows, "ratio": total["seed_s"] / total["ours_s"], **total}


def print_rows(label: str, result: dict) -> None:
    """One line per trial, then the total."""
    print(f"{label}\n{'trial':>5} {'seed s':>8} {'ours s':>8} {'ratio':>6}")
    for row in result["trials"]:
        print(f"{row['config']:>5} {row['seed_s']:8.2f} {row['ours_s']:8.2f} {row['ratio']:6.1f}")
    print(f"{'all':>5} {result['seed_s']:8.2f} {result['ours_s']:8.2f} {result['ratio']:6.1f}  (goal >= 10)")


def main() -> None:
    args = parse_args(__doc__, __file__, "2,000 samples, 1 epoch", device=True)
    samples, epochs = (2000, 1) if args.quick else (20000, 2)
    ensure_raw_files(args.data_dir)
    data = load_data(args.data_dir, seed=0, device=args.device)
    raw = FashionMNIST(str(args.data_dir), train=True, transform=transforms.ToTensor())
    order = torch.randperm(len(raw), generator=torch.Generator().manual_seed(0))
    seed_data = Subset(raw, order[:samples].tolist()), Subset(raw, order[50000:52000].tolist())
    default_space = compare(CONFIGS, seed_data, data, samples, epochs, args.device)
    seed_space = compare(SEED_SPACE_CONFIGS, seed_data, data, samples, epochs, args.device)
    result = {
        "samples": samples,
        "epochs": epochs,
        "device": device_label(args.device),
        "threads": torch.get_num_threads(),
        **default_space,
        "seed_space": seed_space,
    }
    size = f"{samples} samples x {epochs} epochs, {result['device']}"
    print_rows(f"default space ({size})", default_space)
    print_rows("the seed notebook's space (1-3 layers of 4-128 units)", seed_space)
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
