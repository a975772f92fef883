#!/usr/bin/env bash
# Every GPU measurement of issue 20 in one command (a lent GPU machine is held for minutes, not hours):
#   bash benchmarks/gpu_suite.sh OUT_DIR
#   bash benchmarks/gpu_suite.sh OUT_DIR --dry-run   # the same commands on CPU, tiny model, a few steps
#                                                    # (~2 min; tests/test_benchmarks.py runs it in CI)
# Parts, each under its own time limit so that one that hangs or fails leaves the others' results:
#   1. train_throughput eager: maskvlp none / random / cluster at 0, 0.5, 0.75 and open_clip at the same
#      ratios, both towers and the image tower alone (B/16, batch 256, bf16 autocast, fused AdamW)
#   2. train_throughput compiled: the rows the goals compare (0 and 0.5, the image tower alone, CUDA graphs)
#   3. bench_memory on B: peak memory per batch and the largest batch per GPU at 0 / 0.5 / 0.75
#   4. e2e_throughput: maskvlp shard (224 px JPEG) + maskvlp pretrain, compiled, random 0.5
# Needs the Python packages of pyproject.toml; a lent GPU machine has torch, timm, tensorboard, ... but
# none of these, and no network: `bash benchmarks/gpu_wheels.sh` (here, with PyPI) puts their wheels in
# .whl/ (git-ignored), carried to the GPU machine with the suite; they are installed into /tmp/site first.
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [--dry-run]}
mkdir -p "$out"
cd "$(dirname "$0")/.."
# the GPU run's settings, and the dry run's: the same commands, so that a typo in a row or a flag shows
# on CPU in CI, not in the minutes a GPU is lent
if [ "${2:-}" = "--dry-run" ]; then
  # except three: batch 8 (not the tiny model's 64), memory fitted at batches 8-32 (not 256-1024: each
  # is a fresh process, and at one core the first line missed the part's limit) and an eager end-to-end
  # run (CPU inductor takes minutes; part 2's compiled row and test_train's compiled run cover
  # compiling). The dry run checks that every row and flag works, not their speed.
  dev=cpu model=tiny steps=2 warm=1 budget=1 shard=200 train=320 every=2 extra="--cpus 1 --bare-steps 2"
  mem="tiny --batches 8 16 32"
  batch="--batch 8" e2e_mode="" bare=tt_eager.json
  export CUDA_VISIBLE_DEVICES=""
else
  dev=cuda model=B steps=15 warm=3 budget=200 mem=B shard=12000 train=150000 every=10 extra="" batch=""
  e2e_mode="--compile" bare=tt_compiled.json
fi
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
tt="python3 benchmarks/train_throughput.py --device $dev --model $model $batch"
timeout "${T_EAGER:-100}" $tt --modes eager --image-tower --steps $steps --warmup $warm \
  --json "$out/tt_eager.json" 2>&1 | tee "$out/tt_eager.txt"
# most important first: --time-budget stops compiling new rows after 200 s and times those ready
timeout "${T_COMPILED:-270}" $tt --steps $steps --warmup $((warm + 1)) --time-budget $budget \
  --json "$out/tt_compiled.json" --rows \
  maskvlp:random:0.5:compiled:both open_clip:random:0.5:compiled:both maskvlp:none:0:compiled:both \
  maskvlp:cluster:0.5:compiled:both maskvlp:random:0.5:compiled:image open_clip:random:0.5:compiled:image \
  maskvlp:random:0.5:compiled-cg:both open_clip:none:0:compiled:both maskvlp:random:0.75:compiled:both \
  2>&1 | tee "$out/tt_compiled.txt"
timeout "${T_MEMORY:-50}" python3 benchmarks/bench_memory.py --device $dev --configs $mem \
  --json "$out/memory.json" 2>&1 | tee "$out/memory.txt"
timeout "${T_E2E:-150}" python3 benchmarks/e2e_throughput.py --device $dev --model $model $batch $e2e_mode \
  --shard-samples $shard --train-samples $train --log-every $every --bare-json "$out/$bare" $extra \
  --json "$out/e2e.json" 2>&1 | tee "$out/e2e.txt"
echo "gpu_suite: done"
