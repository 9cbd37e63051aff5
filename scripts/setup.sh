#!/usr/bin/env bash
# Set-up from a fresh clone: FashionMNIST from Debian's package, a virtual environment in .venv, the project.
# Safe to rerun; each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision resolve to the releases pip finds in the local cache where there is one.
.venv/bin/python -m pip install -q -e ".[dev,postgres,server,race]"
