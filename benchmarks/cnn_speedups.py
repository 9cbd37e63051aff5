"""CNN speed-ups tried: channels-last memory format, `torch.compile`, and the evaluation batch size.

For the fixed CNN of benchmark 2: seconds per training epoch as we train (contiguous NCHW), in channels-last (model
and images), and compiled with `torch.compile` (its first epoch includes compilation). Each variant is priced as a
10-epoch trial on 50,000 images with a validation pass per epoch, so compilation counts against what it saves.
Then validation seconds per batch size. Prints the table and writes a JSON file next to this script.
--quick: 1,024 training and validation images, 2 epochs per variant (the first, then one steady) instead of 3.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import torch
from benchmark_args import device_label, parse_args, timed
from torch import nn

from fashion_hpo.core.process import keep_freed_memory
from fashion_hpo.data.splits import Split, load_data
from fashion_hpo.model.architectures import CNNConfig, TrialConfig, build_model
from fashion_hpo.training.loop import evaluate, make_optimizer, train_epoch

CONFIG = TrialConfig(CNNConfig((32, 64), 3, True, 0.25, 128), "Adam", 1e-3, 128, 0.0, 0.0)
TRIAL_EPOCHS, TRIAL_SAMPLES = 10, 50_000
EVAL_BATCH_SIZES = (512, 4096, 10_000)


def channels_last(split: Split) -> Split:
    """The same images stored channels-last (NHWC strides)."""
    return Split(split.images.contiguous(memory_format=torch.channels_last), split.labels)


VARIANTS: dict[str, tuple[Callable[[nn.Module], nn.Module], Callable[[Split], Split]]] = {
    "ours (NCHW)": (lambda model: model, lambda split: split),
    "channels-last": (lambda model: model.to(memory_format=torch.channels_last), channels_last),
    "torch.compile": (torch.compile, lambda split: split),
}


def epoch_times(variant: str, train: Split, val: Split, epochs: int) -> dict[str, float]:
    """First and steady seconds of a training epoch and of a validation pass, for one variant."""
    prepare_model, prepare_split = VARIANTS[variant]
    torch.manual_seed(0)
    model = prepare_model(build_model(CONFIG.model).to(train.images.device))
    optimizer = make_optimizer(model, CONFIG)
    train, val = prepare_split(train), prepare_split(val)
    generator = torch.Generator().manual_seed(0)
    device = train.images.device
    one_epoch = partial(train_epoch, model, optimizer, train, CONFIG.batch_size, generator)
    seconds = [timed(one_epoch, device) for _ in range(epochs)]
    validations = [timed(partial(evaluate, model, val), device) for _ in range(2)]  # the first compiles, if any
    return {
        "first_s": seconds[0],
        "epoch_s": min(seconds[1:]),
        "first_val_s": validations[0],
        "val_s": validations[1],
    }


def priced(row: dict[str, float], samples: int) -> dict[str, float]:
    """The row, plus what a 10-epoch trial on 50,000 images would take with it (one-time cost included)."""
    scale = TRIAL_SAMPLES / samples
    one_time = max(row["first_s"] - row["epoch_s"], 0.0) + max(row["first_val_s"] - row["val_s"], 0.0)
    trial = one_time + TRIAL_EPOCHS * (row["epoch_s"] * scale + row["val_s"])
    return {**row, "one_time_s": one_time, "trial_s": trial}


def eval_seconds(val: Split, batch_sizes: tuple[int, ...]) -> dict[str, float]:
    """Seconds of one validation pass of a trained-shape model per evaluation batch size."""
    import fashion_hpo.training.loop as training

    model = build_model(CONFIG.model).to(val.images.device)
    default, result = training.EVAL_BATCH_SIZE, {}
    try:
        for size in batch_sizes:
            training.EVAL_BATCH_SIZE = size
            evaluate(model, val)  # warm-up
            result[str(size)] = timed(lambda: evaluate(model, val), val.images.device)
    finally:
        training.EVAL_BATCH_SIZE = default
    return result


def main() -> None:
    args = parse_args(__doc__, __file__, "1,024 samples, 2 epochs per variant", device=True)
    keep_freed_memory()  # as `fashion-hpo study` does: without it, conv activations are re-mapped every batch
    samples, epochs = (1024, 2) if args.quick else (10_000, 3)
    data = load_data(args.data_dir, seed=0, device=args.device)
    train, val = data.train.head(samples), data.val.head(samples)
    rows = {}
    for variant in VARIANTS:
        try:
            rows[variant] = priced(epoch_times(variant, train, val, epochs), samples)
        except Exception as err:  # torch.compile needs a working C++ toolchain on the CPU
            rows[variant] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    base = rows["ours (NCHW)"]["trial_s"]
    print(f"cnn 32-64, batch {CONFIG.batch_size}, {samples} samples per measured epoch, {device_label(args.device)}")
    header = ("1st epoch", "epoch s", "val s", "one-time", "trial s", "vs ours")
    print(f"{'variant':<14} " + " ".join(f"{name:>9}" for name in header))
    for variant, row in rows.items():
        if "error" in row:
            print(f"{variant:<14} unavailable: {row['error']}")
            continue
        row["vs_ours"] = base / row["trial_s"]
        print(
            f"{variant:<14} {row['first_s']:9.2f} {row['epoch_s']:9.2f} {row['val_s']:9.2f} {row['one_time_s']:9.1f} "
            f"{row['trial_s']:9.1f} {row['vs_ours']:8.2f}x"
        )
    evals = eval_seconds(val, EVAL_BATCH_SIZES)
    print("validation pass by eval batch size: " + ", ".join(f"{k}: {v:.2f} s" for k, v in evals.items()))
    result = {"device": device_label(args.device), "samples": samples, "rows": rows, "eval_batch_s": evals}
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
