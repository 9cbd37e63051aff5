"""What measuring a trial's costs adds to it: `costs.measure_costs` against the trial's training, per model kind.

Every trained trial measures its model's parameters, FLOPs per image and CPU latency (6 forward passes of 256
images, one of them a warm-up) before it returns. For the baselines of `search_space.BASELINE_PARAMS`: the seconds
of that measurement (median of 3), next to a 10-epoch trial's training time (epochs of 50,000 images, timed on the
first training batches) and its share of the trial. Prints the table and writes a JSON file next to this script.
"""

from __future__ import annotations

import json
import statistics
from functools import partial

import torch
from benchmark_args import device_label, epoch_seconds, parse_args, timed

from fashion_hpo.data.splits import load_data
from fashion_hpo.model.architectures import build_model
from fashion_hpo.search.space import BASELINE_PARAMS, config_from_params
from fashion_hpo.training.costs import measure_costs

TRIAL_EPOCHS = 10


def main() -> None:
    args = parse_args(__doc__, __file__, "512 samples, 1 measurement")
    samples, repeats = (512, 1) if args.quick else (10_240, 3)
    train = load_data(args.data_dir, seed=42).train.head(samples)
    rows = {}
    for kind, params in BASELINE_PARAMS.items():
        config = config_from_params(params, kind)
        torch.manual_seed(0)
        model = build_model(config.model)
        trial_s = TRIAL_EPOCHS * epoch_seconds(model, config, train)
        costs_s = statistics.median(timed(partial(measure_costs, model)) for _ in range(repeats))
        rows[kind] = {"costs_s": costs_s, "trial_s": trial_s, "share": costs_s / (trial_s + costs_s)}
    print(f"cost measurement per trial, {device_label(torch.device('cpu'))}")
    print(f"{'model':<6} {'costs s':>8} {'10-epoch trial s':>17} {'share':>7}")
    for kind, row in rows.items():
        print(f"{kind:<6} {row['costs_s']:8.2f} {row['trial_s']:17.0f} {row['share']:7.2%}")
    result = {"device": device_label(torch.device("cpu")), "samples": samples, "rows": rows}
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
