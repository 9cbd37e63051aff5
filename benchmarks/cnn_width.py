"""What wider and deeper CNNs of the search space cost here: seconds per training epoch, priced as trials.

The CNN baseline of `search_space.BASELINE_PARAMS` (2 blocks of 32 and 64 channels) against wider and deeper nets
of the same space (the baseline's other parameters kept), trained as `training.fit` trains (channels-last, the
baseline's optimizer and batch size) on the first batches of the train split and priced per epoch of 50,000 images,
as a 10-epoch trial and as the number of such trials a 30-minute study holds. This is the arithmetic behind which
CNNs a search on this machine can afford; their accuracy is not measured here.
Prints the table and writes a JSON file next to this script.
"""

from __future__ import annotations

import dataclasses
import json

import torch
from benchmark_args import device_label, epoch_seconds, parse_args

from fashion_hpo.data.splits import Split, load_data
from fashion_hpo.model.architectures import CNNConfig, build_model
from fashion_hpo.search.space import BASELINE_PARAMS, config_from_params
from fashion_hpo.training.costs import count_params, flops_per_image

WIDTHS = {"32-64 (baseline)": (32, 64), "64-128": (64, 128), "32-64-128": (32, 64, 128), "128-128": (128, 128)}
TRIAL_EPOCHS, STUDY_S = 10, 1800


def priced(channels: tuple[int, ...], train: Split) -> dict[str, float]:
    """Parameters, FLOPs per image and seconds per 50,000-image training epoch of the baseline at `channels`."""
    baseline = config_from_params(BASELINE_PARAMS["cnn"], "cnn")
    assert isinstance(baseline.model, CNNConfig)
    config = dataclasses.replace(baseline, model=dataclasses.replace(baseline.model, channels=channels))
    torch.manual_seed(0)
    model = build_model(config.model)
    epoch_s = epoch_seconds(model, config, train)
    return {
        "n_params": count_params(model),
        "flops": flops_per_image(model),
        "epoch_s": epoch_s,
        "trial_min": epoch_s * TRIAL_EPOCHS / 60,
        "trials_in_30_min": STUDY_S / (epoch_s * TRIAL_EPOCHS),
    }


def main() -> None:
    args = parse_args(__doc__, __file__, "512 samples per net")
    samples = 512 if args.quick else 10_240
    train = load_data(args.data_dir, seed=42).train.head(samples)
    rows = {name: priced(channels, train) for name, channels in WIDTHS.items()}
    baseline_s = rows["32-64 (baseline)"]["epoch_s"]
    for row in rows.values():
        row["vs_baseline"] = row["epoch_s"] / baseline_s
    print(f"cnn widths, timed on {samples:,} training images, priced per 50,000, {device_label(torch.device('cpu'))}")
    header = f"{'params':>9} {'MFLOPs':>8} {'s/epoch':>8} {'x base':>7} {'trial min':>10} {'per 30 min':>11}"
    print(f"{'channels':<18} {header}")
    for name, row in rows.items():
        print(
            f"{name:<18} {row['n_params']:>9,} {row['flops'] / 1e6:8.1f} {row['epoch_s']:8.1f} "
            f"{row['vs_baseline']:7.2f} {row['trial_min']:10.1f} {row['trials_in_30_min']:11.1f}"
        )
    result = {"device": device_label(torch.device("cpu")), "samples": samples, "rows": rows}
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
