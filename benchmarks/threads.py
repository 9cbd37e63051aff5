"""Torch threads on a busy machine: one MLP epoch (the baseline trial's configuration, 50,000 images) with 1 and 2
threads, and 2 threads with OpenMP told not to spin (OMP_WAIT_POLICY=PASSIVE), back to back in fresh processes,
with the load average before each. Run it while the machine is busy to see what `--threads 0` should pick there.

    python benchmarks/threads.py            # 3 rounds of the three variants (a few minutes on a busy 2-core box)
    python benchmarks/threads.py --quick    # one round on 1,000 images
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmark_args import parse_args

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "1 thread": ("1", {}),
    "2 threads": ("2", {}),
    "2 threads, passive wait": ("2", {"OMP_WAIT_POLICY": "PASSIVE"}),
}
EPOCH = """
import sys, torch
from benchmark_args import epoch_seconds
from fashion_hpo.data.splits import load_data
from fashion_hpo.model.architectures import build_model
from fashion_hpo.search.space import BASELINE_PARAMS, config_from_params
torch.set_num_threads(int(sys.argv[1]))
train = load_data(sys.argv[2], seed=0).train.head(int(sys.argv[3]))
config = config_from_params(BASELINE_PARAMS["mlp"], "mlp")
torch.manual_seed(0)
print(epoch_seconds(build_model(config.model), config, train))
"""


def one_epoch(threads: str, env: dict[str, str], data_dir: Path, samples: int) -> float:
    """Seconds of one epoch in a fresh process with these threads and environment."""
    command = [sys.executable, "-c", EPOCH, threads, str(data_dir), str(samples)]
    environment = {**os.environ, **env, "PYTHONPATH": str(HERE)}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=True, timeout=900)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    """Time the variants round-robin and write the medians and ratios."""
    args = parse_args(__doc__, __file__, "one round on 1,000 images")
    rounds, samples = (1, 1_000) if args.quick else (3, 50_000)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    loads: list[float] = []
    for _ in range(rounds):
        for name, (threads, env) in VARIANTS.items():
            loads.append(os.getloadavg()[0])
            seconds[name].append(one_epoch(threads, env, args.data_dir, samples))
            print(f"{name}: {seconds[name][-1]:.1f} s (load {loads[-1]:.1f})", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "command": "python benchmarks/threads.py" + (" --quick" if args.quick else ""),
        "cores": os.cpu_count(),
        "epoch_images": samples,
        "load_average_1min": {"min": min(loads), "max": max(loads)},
        "epoch_seconds": seconds,
        "median_seconds": medians,
        "ratio_2_threads_to_1": medians["2 threads"] / medians["1 thread"],
        "ratio_2_passive_to_1": medians["2 threads, passive wait"] / medians["1 thread"],
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_seconds", "ratio_2_threads_to_1", "ratio_2_passive_to_1")}))


if __name__ == "__main__":
    main()
