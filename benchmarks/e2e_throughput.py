"""End to end: `maskvlp shard` + `maskvlp pretrain` on synthetic shards, the run's own images/s (from its
TensorBoard scalars) beside the bare training step's (benchmarks/train_throughput.py) for the same model,
batch, mask and mode. The gap is what the loader, the host and the run's bookkeeping (logging, mask
pictures, checkpoints) cost.

    python benchmarks/e2e_throughput.py --device cpu --model tiny                 # a smoke run (~1 min)
    python benchmarks/e2e_throughput.py --device cuda --model B --compile \\
        --shard-samples 20000 --train-samples 250000 --cpus 16                     # the GPU run

What runs: (1) `python -m maskvlp shard` writes `--shard-samples` synthetic scenes at the model's image
size (224 px JPEG for B) into a work folder; (2) `python -m maskvlp pretrain` trains on them for
`--train-samples` samples in a subprocess of its own, with `data.loader_workers` set to the CPUs given
minus one (so every CPU but the main process's decodes: resources.loader_hint), logging every
`--log-every` steps, one checkpoint half-way and one at the end; (3) the bare step of the same
configuration is measured in this process on random device-resident data (train_throughput's
`maskvlp_row`), or read from a train_throughput JSON (`--bare-json`) measured earlier on the same GPU.

The run's images/s: the TensorBoard scalar `perf/images_per_s`, one value per logging window (steps x
batch / wall time of the window, checkpoint writes included), after dropping the first `--skip` fraction
of windows (compilation, loader start-up). Reported: the median window ("steady") and the mean over the
kept windows' total time ("sustained", checkpoints included), each as a fraction of the bare step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parent.parent

from train_throughput import MODELS, inputs, maskvlp_row, precision, timed  # noqa: E402

# model name -> the params that give train_throughput's MODELS[name] (recipe defaults otherwise)
MODEL_PARAMS = {
    name: {
        "model.vision": m["vision"],
        "model.text": m["text"],
        "model.image_size": m["image"],
        "model.patch_size": m["patch"],
        "model.embed_dim": m["embed"],
        "model.context_length": m["context"],
        "data.image_size": m["image"],
    }
    for name, m in MODELS.items()
}


def maskvlp_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "maskvlp", *args]


def sets(params: dict) -> list[str]:
    out = []
    for key, value in params.items():
        out += ["--set", f"{key}={value}"]
    return out


def run(cmd: list[str], env: dict) -> float:
    """Run a maskvlp stage; its output goes to ours. Returns the wall time."""
    start = time.perf_counter()
    print("$ " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def read_windows(tb_dir: Path) -> list[tuple[int, float]]:
    """(samples seen, images/s) of every logging window, from the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("perf/images_per_s")]


def steady(windows: list[tuple[int, float]], skip: float) -> dict:
    kept = windows[int(len(windows) * skip) :] or windows
    rates = [v for _, v in kept]
    # windows are equal in samples, so the sustained rate is the harmonic mean of the window rates
    sustained = len(rates) / sum(1 / v for v in rates)
    return {"windows": len(windows), "kept": len(kept), "median": statistics.median(rates), "sustained": sustained}


def bare_step(args, device: torch.device) -> float:
    """images/s of the bare training step (median of --bare-steps) in this process."""
    cfg = dict(MODELS[args.model])
    cfg["batch"] = args.batch
    autocast = precision(device)
    data = inputs(cfg["batch"], cfg["image"], cfg["context"], device)
    mode = "compiled" if args.compile else "eager"
    row = maskvlp_row(cfg, args.strategy, args.ratio, mode, "both", device, autocast, data)
    for _ in range(args.bare_warmup):
        row.step()
    times = [timed(row, device) for _ in range(args.bare_steps)]  # CUDA events on the GPU, as train_throughput
    return args.batch / statistics.median(times)


def bare_from_json(path: str, args) -> float | None:
    """The matching row of a train_throughput JSON; None (and a note) when the file or the row is missing."""
    mode = "compiled" if args.compile else "eager"
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"# --bare-json {path}: unreadable ({exc}); measuring the bare step here")
        return None
    for r in rows:
        key = (r["impl"], r["strategy"], r["ratio"], r["mode"], r["tower"])
        if key == ("maskvlp", args.strategy, args.ratio, mode, "both"):
            return r["images_per_s"]
    print(f"# --bare-json {path}: no maskvlp row for {args.strategy} {args.ratio} {mode}; measuring it here")
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=tuple(MODELS), default=None, help="default: B on CUDA, tiny on CPU")
    p.add_argument("--batch", type=int, default=None, help="per step (default: the model's: B 256, tiny 64)")
    p.add_argument("--strategy", choices=("none", "random", "cluster"), default="random")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--compile", action="store_true", help="train.compile=true and a compiled bare step")
    p.add_argument("--shard-samples", type=int, default=1000, help="synthetic scenes sharded (the run loops over them)")
    p.add_argument("--train-samples", type=int, default=3200, help="samples the run trains on")
    p.add_argument("--log-every", type=int, default=5, help="train.log_every_steps (one images/s value each)")
    p.add_argument("--skip", type=float, default=0.3, help="fraction of the first logging windows left out")
    p.add_argument("--cpus", type=int, default=0, help="CPUs for the run (launcher.threads; 0 = the affinity mask)")
    p.add_argument("--bare-steps", type=int, default=10)
    p.add_argument("--bare-warmup", type=int, default=3)
    p.add_argument("--bare-json", default="", metavar="FILE", help="take the bare step from train_throughput's JSON")
    p.add_argument("--workdir", default="", help="shards and run here (default: a temporary folder, removed)")
    p.add_argument("--json", default="", metavar="FILE", help="write every number here")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu")
    args.model = args.model or ("B" if device.type == "cuda" else "tiny")
    args.batch = args.batch or MODELS[args.model]["batch"]
    cpus = args.cpus or len(os.sched_getaffinity(0))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="maskvlp-e2e-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the run trains where the bare step is measured
    common = {
        **MODEL_PARAMS[args.model],
        "data.out_dir": work / "shards",
        "data.synthetic.num_samples": args.shard_samples,  # pretrain checks the shards' params
        "train.runs_dir": work / "runs",
    }
    try:
        shard_s = run(maskvlp_cmd("shard", "--quiet", *sets(common)), env)
        train = {
            **common,
            "train.run_name": "e2e",
            "train.batch_size": args.batch,
            "train.samples": args.train_samples,
            "train.warmup_samples": min(args.train_samples // 10, 10 * args.batch),
            "train.checkpoint_every_samples": args.train_samples // 2,
            "train.log_every_steps": args.log_every,
            "train.compile": str(args.compile).lower(),
            "masking.strategy": args.strategy,
            "masking.ratio": args.ratio,
            "data.loader_workers": max(1, cpus - 1),  # every CPU but the main process's decodes
            "launcher.threads": cpus if device.type == "cpu" else 0,
        }
        train_s = run(maskvlp_cmd("pretrain", "--quiet", *sets(train)), env)
        windows = read_windows(work / "runs" / "e2e" / "tb")
        info = json.loads((work / "runs" / "e2e" / "run.json").read_text())
        result = steady(windows, args.skip)
        bare = bare_from_json(args.bare_json, args) if args.bare_json else None
        bare_source = args.bare_json if bare else "measured here"
        bare = bare or bare_step(args, device)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    mode = "compiled" if args.compile else "eager"
    print(
        f"# end to end: {args.model} on {device.type}, batch {args.batch}, {args.strategy} {args.ratio:g}, {mode}; "
        f"{args.shard_samples} scenes at {MODELS[args.model]['image']} px sharded in {shard_s:.1f} s; "
        f"{args.train_samples} samples trained in {train_s:.1f} s (process)"
    )
    print(f"# loader: {info['cpu_share']['loader_workers']} workers on {info['cpu_share']['cpus']} CPUs")
    print(f"{'what':<34}{'img/s':>10}{'of bare':>9}")
    print(f"{'bare step (random data on device)':<34}{bare:>10.1f}{1:>9.2f}  ({bare_source})")
    print(f"{'run, median window':<34}{result['median']:>10.1f}{result['median'] / bare:>9.2f}")
    print(f"{'run, sustained (ckpt included)':<34}{result['sustained']:>10.1f}{result['sustained'] / bare:>9.2f}")
    print(f"# {result['kept']} of {result['windows']} logging windows of {args.log_every} steps kept")
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "args": vars(args),
            "shard_s": shard_s,
            "train_process_s": train_s,
            "cpu_share": info["cpu_share"],
            "bare_images_per_s": bare,
            "bare_source": bare_source,  # a train_throughput JSON, or "measured here"
            "run": result,
            "run_windows": windows,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
