"""Every token-reduction strategy's training step beside random masking at the same kept-token count,
measured side by side in one process (issue 32: RESULTS.md's strategy throughput table).

    python benchmarks/bench_strategies.py                       # tiny at 64 px on the CPU, ~2 min
    python benchmarks/bench_strategies.py --device cuda --model B --steps 20

Rows at mask ratio 0.75 (16 of the tiny model's 64 patches; 49 of B/16's 196): random (FLIP), grid
(one patch per 2 x 2 window), block, resize (the image at half the side), cluster (exact mode, threshold
0.5), plus the unmasked step and random 0.75 with its captions cut to a quarter of the context by each
text strategy (truncate, random, block, frequency). The step is train_throughput.py's (normalise, mask,
forward, loss, backward, AdamW), timed the same way: warm-up, then interleaved rounds in an order
reversed every other round, the median step reported. Columns: images/s, the step's FLOPs (the one
formula, docs/records.md), images/s over random 0.75's (the same kept image tokens), and the mask's own
median ms measured alone. Writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import train_throughput as tt  # noqa: E402

from maskvlp import textmask  # noqa: E402
from maskvlp.config import CLIP_MEAN, CLIP_STD, TextMaskingConfig  # noqa: E402
from maskvlp.data.transforms import normalize  # noqa: E402
from maskvlp.flops import sample_flops  # noqa: E402
from maskvlp.masking import compute_mask, kept_tokens, strategy_config  # noqa: E402
from maskvlp.model import CLIP  # noqa: E402

RATIO = 0.75
IMAGE_ROWS = ("none", "random", "grid", "block", "resize", "cluster")
TEXT_ROWS = ("truncate", "random", "block", "frequency")


def text_row(cfg: dict, text: str, device, autocast, data) -> tt.Row:
    """random 0.75 with the captions reduced by `text` to a quarter of the context (the text tower's step)."""
    row = tt.maskvlp_row(cfg, "random", RATIO, "eager", "both", device, autocast, data)
    images_u8, tokens = data
    length = max(3, cfg["context"] // 4)
    t = TextMaskingConfig(strategy=text, length=length)
    weights = torch.ones(49408)  # frequency: every token alike here (random tokens have no frequencies)
    torch.manual_seed(0)
    model = CLIP(cfg["vision"], cfg["text"], cfg["image"], cfg["patch"], cfg["embed"], cfg["context"]).to(device)
    opt = tt.make_optimizer(model, device)
    k = strategy_config(strategy="random", ratio=RATIO)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        images = normalize(images_u8, CLIP_MEAN, CLIP_STD)
        with torch.no_grad():
            keep = compute_mask(images, k, cfg["patch"], gen).keep_idx
            short = textmask.reduce_text(tokens, t, textmask.TextContext(gen, weights))
        with autocast():
            loss = tt.clip_loss(*model(images, short, keep))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    row.strategy, row.step = f"random+text {text} {length}", step
    row.flops = len(tokens) * sample_flops(model, k, kept_tokens(k, model.visual.num_patches), text_tokens=length)
    return row


def mask_ms(cfg: dict, strategy: str, device, data, repeats: int = 5) -> float:
    """The median ms of choosing one batch's mask alone."""
    images = normalize(data[0], CLIP_MEAN, CLIP_STD)
    k = strategy_config(strategy=strategy, ratio=RATIO, anchor_ratio=tt.ANCHOR_RATIO, threshold=tt.THRESHOLD)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compute_mask(images, k, cfg["patch"], gen)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", choices=sorted(tt.MODELS), default="tiny")
    p.add_argument("--steps", type=int, default=8, help="timed rounds (default 8)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = dict(tt.MODELS[args.model])
    data = tt.inputs(cfg["batch"], cfg["image"], cfg["context"], device)
    autocast = tt.precision(device)
    rows = [
        tt.maskvlp_row(cfg, s, 0.0 if s == "none" else RATIO, "eager", "both", device, autocast, data)
        for s in IMAGE_ROWS
    ]
    rows += [text_row(cfg, text, device, autocast, data) for text in TEXT_ROWS]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ran = tt.measure(rows, args.steps, args.warmup, device)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    grid = cfg["image"] // cfg["patch"]
    kept = kept_tokens(strategy_config(strategy="random", ratio=RATIO), grid * grid)
    print(
        f"# {args.model} on {device.type} ({platform.processor() or platform.machine()}), batch {cfg['batch']}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; ratio {RATIO}: {kept} of {grid * grid} "
        f"image tokens; text rows: {max(3, cfg['context'] // 4)} of {cfg['context']} caption tokens"
    )
    print(f"# this process: {cpu / wall:.2f} CPU s per wall s over the timed rounds")
    random = next(r for r in ran if r.strategy == "random")
    base = statistics.median(random.times)
    records = []
    print(f"{'row':<28}{'img/s':>9}{'ms/step':>9}{'GFLOP/step':>12}{'vs random':>11}{'mask ms':>9}")
    for r in ran:
        t = statistics.median(r.times)
        alone = mask_ms(cfg, r.strategy, device, data) if r.strategy in IMAGE_ROWS and r.strategy != "none" else None
        record = {
            "row": r.strategy,
            "images_per_s": cfg["batch"] / t,
            "ms_per_step": 1e3 * t,
            "flops_per_step": r.flops,
            "vs_random": base / t,
            "mask_ms": alone,
        }
        records.append(record)
        mask = f"{alone:9.2f}" if alone is not None else f"{'-':>9}"
        print(f"{r.strategy:<28}{cfg['batch'] / t:9.1f}{1e3 * t:9.1f}{r.flops / 1e9:12.2f}{base / t:11.2f}{mask}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": device.type, "rows": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
