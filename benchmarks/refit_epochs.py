"""The refit's epochs policy: validation accuracy of the baseline configurations after schedules of E, 2E, ... epochs.

Each configuration of `search_space.BASELINE_PARAMS` is trained on the 50,000-image train split with a cosine
schedule over each length (E = a trial's 10 epochs, times each of `--factors`; default E and 2E), from the same
initial weights and batch order, and scored on the validation split after every epoch — never on the test set.
A gain at 2E is why the refit trains twice the best trial's epochs by default; `--model cnn --factors 2,3` asks
whether a longer refit would pay. Prints the table and writes a JSON file next to this script.
--quick: E = 1 epoch on 1,000 training images, scored on the first 1,000 validation images.
"""

from __future__ import annotations

import argparse

import torch
from benchmark_args import device_label, parse_args, write_report

from fashion_hpo.data.splits import FashionData, load_data
from fashion_hpo.model.architectures import build_model
from fashion_hpo.search.space import BASELINE_PARAMS, config_from_params
from fashion_hpo.training.loop import fit


def val_curve(data: FashionData, kind: str, epochs: int, samples: int, val_samples: int) -> list[float]:
    """Validation accuracy (on the first `val_samples` images; 0 = all) after each epoch of one schedule of
    `epochs` epochs."""
    config = config_from_params(BASELINE_PARAMS[kind], kind)
    torch.manual_seed(1)
    model = build_model(config.model).to(data.train.images.device)
    history = fit(model, config, data.train.head(samples), data.val.head(val_samples), epochs, seed=1)
    return [result.val.accuracy for result in history]


def factors(text: str) -> list[int]:
    """Comma-separated whole multiples of E, e.g. `1,2`."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"each factor must be at least 1, got {text!r}")
    return values


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--model and --factors."""
    parser.add_argument(
        "--model", choices=tuple(BASELINE_PARAMS), help="train this baseline only (default: each of them)"
    )
    parser.add_argument(
        "--factors", type=factors, default=[1, 2], help="schedule lengths as multiples of E (default: 1,2)"
    )


def main() -> None:
    args = parse_args(
        __doc__, __file__, "1,000 samples, 1 vs 2 epochs, 1,000 validation images", device=True, extra=add_flags
    )
    epochs, samples, val_samples = (1, 1000, 1000) if args.quick else (10, 0, 0)
    lengths = [factor * epochs for factor in args.factors]
    data = load_data(args.data_dir, seed=42, device=args.device)
    rows = {}
    for kind in [args.model] if args.model else BASELINE_PARAMS:
        curves = {str(length): val_curve(data, kind, length, samples, val_samples) for length in lengths}
        rows[kind] = {"val": {length: curve[-1] for length, curve in curves.items()}, "curves": curves}
    images = f"{len(data.train.head(samples))} training images, {len(data.val.head(val_samples))} validation images"
    print(f"baseline configurations, {images}, {device_label(args.device)}")
    print(f"{'model':<6}" + "".join(f"{f'{length} epochs':>11}" for length in lengths) + f"{'best epoch':>16}")
    for kind, row in rows.items():
        longest = row["curves"][str(lengths[-1])]
        best = max(range(len(longest)), key=longest.__getitem__)
        values = "".join(f"{value:11.4f}" for value in row["val"].values())
        print(f"{kind:<6}{values}{f'{best + 1}: {longest[best]:.4f}':>16}")
    write_report(args, epochs=epochs, samples=samples, val_samples=val_samples, rows=rows)


if __name__ == "__main__":
    main()
