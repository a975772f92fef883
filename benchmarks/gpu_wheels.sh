#!/usr/bin/env bash
# The wheels benchmarks/gpu_suite.sh installs on a lent GPU machine, which has torch, timm and
# tensorboard but none of these, and no network. Run here (PyPI reachable), then hand the folder over
# with the suite (device tool: carry [".whl"]):
#   bash benchmarks/gpu_wheels.sh            # into .whl/ (git-ignored)
#   PY=3.11 bash benchmarks/gpu_wheels.sh DIR  # another Python version of the GPU machine, another folder
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
py=${PY:-3.12}
mkdir -p "$dir"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" \
  omegaconf==2.3.1 webdataset==1.0.2 braceexpand==0.1.7 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
  submitit==1.5.4
# omegaconf's parser runtime is published as an sdist only: build its (pure Python) wheel
sdist=$(mktemp -d)
trap 'rm -rf "$sdist"' EXIT
python3 -m pip download -q --no-deps --no-binary=:all: -d "$sdist" antlr4-python3-runtime==4.9.3
python3 -m pip wheel -q --no-deps "$sdist"/antlr4-python3-runtime-4.9.3.tar.gz -w "$dir"
ls "$dir"
