#!/usr/bin/env bash
# Benchmarks 1-3 (pipeline ratio, loop efficiency, tracking overhead) on a CUDA machine, in a few minutes.
#
#   benchmarks/gpu.sh [--quick] [--data-dir DIR] [--output-dir DIR]
#
# Prints each benchmark's table (ratios, epoch times, samples/s) and writes their JSON files into --output-dir
# (default benchmarks/gpu/). Without a CUDA device it says so and falls back to the CPU: the --quick runs, with
# their JSON files in a temporary folder unless --output-dir is given, so CPU figures never land in benchmarks/gpu/.
# Run it with the project's environment active (`. .venv/bin/activate`), or set PYTHON.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
quick=() data_dir=data output_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=(--quick); shift ;;
        --data-dir) data_dir="$2"; shift 2 ;;
        --output-dir) output_dir="$2"; shift 2 ;;
        -h|--help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $1 (use --quick, --data-dir DIR, --output-dir DIR)" >&2; exit 2 ;;
    esac
done

if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    device=cuda
    output_dir="${output_dir:-$here/gpu}"
else
    device=cpu
    quick=(--quick)
    output_dir="${output_dir:-$(mktemp -d)}"
    echo "gpu.sh: no CUDA device here; falling back to the CPU with the --quick runs (JSON files in $output_dir)"
fi
mkdir -p "$output_dir"

for benchmark in pipeline_ratio loop_efficiency tracking_overhead; do
    echo
    echo "== $benchmark ($device) =="
    "$python" "$here/$benchmark.py" --device "$device" "${quick[@]}" --data-dir "$data_dir" \
        --output "$output_dir/$benchmark.json"
done
