#!/usr/bin/env bash
# Every GPU measurement of issue 20 in one command (a lent GPU machine is held for minutes, not hours):
#   bash benchmarks/gpu_suite.sh OUT_DIR
# Parts, each under its own time limit so that one that hangs or fails leaves the others' results:
#   1. train_throughput eager: maskvlp none / random / cluster at 0, 0.5, 0.75 and open_clip at the same
#      ratios, both towers and the image tower alone (B/16, batch 256, bf16 autocast, fused AdamW)
#   2. train_throughput compiled: the rows the goals compare (0 and 0.5, the image tower alone, CUDA graphs)
#   3. bench_memory on B: peak memory per batch and the largest batch per GPU at 0 / 0.5 / 0.75
#   4. e2e_throughput: maskvlp shard (224 px JPEG) + maskvlp pretrain, compiled, random 0.5
# Needs the Python packages of pyproject.toml; on a machine without them (a lent GPU machine has torch,
# timm, tensorboard, ... but none of these), put wheels in .whl/ (git-ignored through .git/info/exclude)
# and they are installed into /tmp/site first. For Python 3.12 on x86-64, from a machine with PyPI:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl omegaconf==2.3.1 \
#     webdataset==1.0.2 braceexpand==0.1.7 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 submitit==1.5.4
#   pip download --no-deps --no-binary=:all: -d /tmp/sd antlr4-python3-runtime==4.9.3 && \
#     pip wheel --no-deps /tmp/sd/antlr4-python3-runtime-4.9.3.tar.gz -w .whl
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(nproc)}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc;
  python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"; } \
  2>&1 | tee "$out/machine.txt"
tt="python3 benchmarks/train_throughput.py --device cuda --model B"
timeout "${T_EAGER:-100}" $tt --modes eager --image-tower --steps 15 --warmup 3 \
  --json "$out/tt_eager.json" 2>&1 | tee "$out/tt_eager.txt"
# most important first: --time-budget stops compiling new rows after 200 s and times those ready
timeout "${T_COMPILED:-270}" $tt --steps 15 --warmup 4 --time-budget 200 --json "$out/tt_compiled.json" --rows \
  maskvlp:random:0.5:compiled:both open_clip:random:0.5:compiled:both maskvlp:none:0:compiled:both \
  maskvlp:cluster:0.5:compiled:both maskvlp:random:0.5:compiled:image open_clip:random:0.5:compiled:image \
  maskvlp:random:0.5:compiled-cg:both open_clip:none:0:compiled:both maskvlp:random:0.75:compiled:both \
  2>&1 | tee "$out/tt_compiled.txt"
timeout "${T_MEMORY:-50}" python3 benchmarks/bench_memory.py --device cuda --configs B \
  --json "$out/memory.json" 2>&1 | tee "$out/memory.txt"
timeout "${T_E2E:-150}" python3 benchmarks/e2e_throughput.py --device cuda --model B --compile \
  --shard-samples 12000 --train-samples 150000 --log-every 10 --bare-json "$out/tt_compiled.json" \
  --json "$out/e2e.json" 2>&1 | tee "$out/e2e.txt"
echo "gpu_suite: done"
