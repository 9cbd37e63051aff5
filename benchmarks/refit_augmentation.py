"""Light augmentation in the refit at equal time: the baseline CNN trained plain, with flips, and with flips and shifts.

The issue's candidate for a better refit: random left-right flips, and flips with shifts of up to 2 pixels, drawn
per image and batch (cheap tensor ops, so an epoch costs the same). Each variant trains the CNN baseline of
`search_space.BASELINE_PARAMS` from the same initial weights, batch order and cosine schedule as `training.fit`, for
the refit's length (2 x 10 epochs), on the 50,000-image train split, and is scored on the validation split after
each epoch — never on the test set. Augmentation is kept out of the project unless it wins here.
Prints the table and writes a JSON file next to this script. --quick: 1 epoch on 1,000 training images, scored on the
first 1,000 validation images.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from benchmark_args import device_label, parse_args, write_report
from torch import nn

from fashion_hpo.data.splits import FashionData, Split, batches, load_data
from fashion_hpo.model.architectures import build_model
from fashion_hpo.search.space import BASELINE_PARAMS, config_from_params
from fashion_hpo.training.loop import evaluate, make_optimizer

VARIANTS = {"plain": None, "flip": 0, "flip + shift 2 px": 2}  # name: largest shift in pixels (None: no flips)


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2 and shifted by up to `max_shift` pixels each way."""
    n, side = len(images), images.shape[-1]
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    # Zero-pad (the background is black), then crop a side x side window at a random offset per image.
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(images.device)
    span = torch.arange(side, device=images.device)
    rows, cols = offsets[0, :, None] + span, offsets[1, :, None] + span
    index = torch.arange(n, device=images.device)[:, None, None]
    return padded[index, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Split,
    batch_size: int,
    generator: torch.Generator,
    max_shift: int | None,
) -> None:
    """One shuffled pass, each batch augmented when `max_shift` is not None."""
    model.train()
    for images, labels in batches(train, batch_size, generator):
        if max_shift is not None:
            images = augment(images, generator, max_shift)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()


def val_curve(data: FashionData, epochs: int, samples: int, val: Split, max_shift: int | None) -> dict[str, object]:
    """Validation accuracy on `val` after each epoch of one variant, and its seconds per epoch."""
    config = config_from_params(BASELINE_PARAMS["cnn"], "cnn")
    torch.manual_seed(1)
    model = build_model(config.model).to(data.train.images.device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(1)
    train, curve, start = data.train.head(samples), [], time.perf_counter()
    for _ in range(epochs):
        train_epoch(model, optimizer, train, config.batch_size, generator, max_shift)
        schedule.step()
        curve.append(evaluate(model, val).accuracy)
    return {"val": curve[-1], "curve": curve, "epoch_s": (time.perf_counter() - start) / epochs}


def main() -> None:
    args = parse_args(__doc__, __file__, "1,000 samples, 1 epoch, 1,000 validation images", device=True)
    epochs, samples, val_samples = (1, 1000, 1000) if args.quick else (20, 0, 0)
    data = load_data(args.data_dir, seed=42, device=args.device)
    val = data.val.head(val_samples)
    rows = {name: val_curve(data, epochs, samples, val, shift) for name, shift in VARIANTS.items()}
    for row in rows.values():
        row["gain"] = row["val"] - rows["plain"]["val"]
    images = f"{len(data.train.head(samples))} training images, {len(val)} validation images"
    print(f"baseline CNN, {epochs} epochs, {images}, {device_label(args.device)}")
    print(f"{'variant':<18} {'val':>8} {'gain':>8} {'s/epoch':>8}")
    for name, row in rows.items():
        print(f"{name:<18} {row['val']:8.4f} {row['gain']:+8.4f} {row['epoch_s']:8.1f}")
    write_report(args, epochs=epochs, samples=samples, val_samples=val_samples, rows=rows)


if __name__ == "__main__":
    main()
