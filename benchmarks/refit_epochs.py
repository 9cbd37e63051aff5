"""The refit's epochs policy: validation accuracy of the baseline configurations after E and after 2E epochs.

Each configuration of `search_space.BASELINE_PARAMS` is trained on the 50,000-image train split with a cosine
schedule over E epochs, then (from the same initial weights) over 2E epochs, and scored on the validation split —
never on the test set. A gain at 2E is why the refit trains twice the best trial's epochs by default.
Prints the table and writes a JSON file next to this script.
"""

from __future__ import annotations

import json

import torch
from benchmark_args import device_label, parse_args

from fashion_hpo.data import FashionData, load_data
from fashion_hpo.models import build_model
from fashion_hpo.search_space import BASELINE_PARAMS, config_from_params
from fashion_hpo.training import fit


def val_curve(data: FashionData, kind: str, epochs: int, samples: int) -> list[float]:
    """Validation accuracy after each epoch of one schedule of `epochs` epochs."""
    config = config_from_params(BASELINE_PARAMS[kind], kind)
    torch.manual_seed(1)
    model = build_model(config.model).to(data.train.images.device)
    history = fit(model, config, data.train.head(samples), data.val, epochs, seed=1)
    return [result.val.accuracy for result in history]


def main() -> None:
    args = parse_args(__doc__, __file__, "1,000 samples, 1 vs 2 epochs", device=True)
    epochs, samples = (1, 1000) if args.quick else (10, 0)
    data = load_data(args.data_dir, seed=42, device=args.device)
    rows = {}
    for kind in BASELINE_PARAMS:
        short, long = val_curve(data, kind, epochs, samples), val_curve(data, kind, 2 * epochs, samples)
        rows[kind] = {"val": short[-1], "val_2x": long[-1], "gain": long[-1] - short[-1], "curve_2x": long}
    print(f"baseline configurations, {len(data.train.head(samples))} training images, {device_label(args.device)}")
    print(f"{'model':<6} {f'{epochs} epochs':>10} {f'{2 * epochs} epochs':>10} {'gain':>8}")
    for kind, row in rows.items():
        print(f"{kind:<6} {row['val']:10.4f} {row['val_2x']:10.4f} {row['gain']:+8.4f}")
    result = {"device": device_label(args.device), "epochs": epochs, "samples": samples, "rows": rows}
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
