"""CPU training-step throughput: maskvlp's CLIP next to open_clip's CLIP of the same shape, in one run.

    python benchmarks/bench_train.py            # tiny (10 timed rounds) and S (6 rounds), ~3 min
    python benchmarks/bench_train.py --quick    # tiny only, 4 timed rounds: a smoke run

One training step, timed with time.perf_counter, is: compute the mask (maskvlp: masking.compute_mask,
whose kept indices go to the model; open_clip: patch dropout, active in train mode, inside the forward),
forward, symmetric contrastive loss (maskvlp.loss.clip_loss / open_clip.loss.ClipLoss), backward,
AdamW step (the same torch.optim.AdamW settings for both) and zero_grad. Inputs are random normalised
images (torch.randn) and random tokens with one end-of-text token (49407) per row at a random position.
fp32 throughout (what `pretrain` uses on CPU).

Per configuration, one maskvlp model (every mask) and one open_clip model per patch-dropout ratio are
built from the same seed and warmed up; then, in each timed round, every (implementation, mask) pair
takes one step, in an order reversed every other round, so that drift in machine speed and load from
other processes hit all rows alike. Reported: the median step as images/s. open_clip has no cluster
masking: its columns show "-" there. Columns: images/s of each model, maskvlp/open_clip at the same
ratio, each model's speed-up over its own ratio-0 row, and the median ms of maskvlp's compute_mask
inside the step. Printed per configuration: this process's CPU time / wall time / threads over the
timed rounds; below 90% means other processes took cores, and the configuration is rerun (--retries).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import open_clip
import torch
from open_clip.loss import ClipLoss
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from maskvlp.loss import clip_loss
from maskvlp.masking import compute_mask, strategy_config
from maskvlp.model import CLIP, TEXT_PRESETS, VISION_PRESETS, VOCAB_SIZE, count_params

EOT = VOCAB_SIZE - 1  # 49407, the largest id: both text towers pool at argmax
# name: (vision, text, image_size, patch_size, embed_dim, context_length, batch, cases (strategy, ratio))
CONFIGS = {
    "tiny": ("tiny", "tiny", 64, 8, 128, 32, 64, [("none", 0.0), ("random", 0.5), ("cluster", 0.5), ("random", 0.75)]),
    "S": ("S", "S", 64, 8, 384, 32, 32, [("none", 0.0), ("random", 0.5), ("cluster", 0.5)]),
}
ANCHOR_RATIO, THRESHOLD = 0.05, 0.5


def open_clip_model(vision: str, text: str, image: int, patch: int, embed: int, context: int, ratio: float):
    v, t = VISION_PRESETS[vision], TEXT_PRESETS[text]
    vision_cfg = CLIPVisionCfg(
        layers=v.layers,
        width=v.width,
        head_width=v.width // v.heads,
        image_size=image,
        patch_size=patch,
        patch_dropout=ratio,
    )
    text_cfg = CLIPTextCfg(context_length=context, vocab_size=VOCAB_SIZE, width=t.width, heads=t.heads, layers=t.layers)
    return open_clip.model.CLIP(embed, vision_cfg=vision_cfg, text_cfg=text_cfg)


def make_inputs(batch: int, image: int, context: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image, image, generator=g)
    tokens = torch.randint(1, EOT, (batch, context), generator=g)
    eot = torch.randint(1, context, (batch,), generator=g)
    tokens[torch.arange(batch), eot] = EOT
    tokens[torch.arange(context)[None, :] > eot[:, None]] = 0  # padding after end-of-text, as the tokenizer does
    return images, tokens


def maskvlp_step(model, opt, images, tokens, strategy: str, ratio: float, patch: int, step: int) -> float:
    """One step; returns the seconds spent computing the mask."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(step)
    with torch.no_grad():
        k = strategy_config(strategy=strategy, ratio=ratio, anchor_ratio=ANCHOR_RATIO, threshold=THRESHOLD)
        keep_idx = compute_mask(images, k, patch, gen).keep_idx
    mask_s = time.perf_counter() - start
    img_f, txt_f, scale = model(images, tokens, keep_idx)
    clip_loss(img_f, txt_f, scale).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return mask_s


def open_clip_step(model, opt, loss_fn, images, tokens) -> None:
    img_f, txt_f, scale = model(images, tokens)
    loss_fn(img_f, txt_f, scale).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_config(name: str, steps: int, warmup: int) -> dict:
    """Median seconds per step of every (implementation, mask) pair of a configuration. All pairs take
    turns within each round (order reversed every other round), so drift in machine speed hits all alike.
    One maskvlp model serves every mask; open_clip needs a model per patch-dropout ratio."""
    vision, text, image, patch, embed, context, batch, cases = CONFIGS[name]
    images, tokens = make_inputs(batch, image, context)
    torch.manual_seed(0)
    ours = CLIP(vision, text, image, patch, embed, context).train()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-4, weight_decay=0.1)
    counter, loss_fn = itertools.count(), ClipLoss()
    steppers, params = {}, {"maskvlp": count_params(ours)}
    for strategy, ratio in cases:
        steppers["maskvlp", strategy, ratio] = lambda s=strategy, r=ratio: maskvlp_step(
            ours, opt, images, tokens, s, r, patch, next(counter)
        )
        if ("open_clip", ratio) not in steppers:
            torch.manual_seed(0)
            theirs = open_clip_model(vision, text, image, patch, embed, context, ratio).train()
            their_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.1)
            steppers["open_clip", ratio] = lambda m=theirs, o=their_opt: open_clip_step(m, o, loss_fn, images, tokens)
            params["open_clip"] = count_params(theirs)
    for fn in steppers.values():
        for _ in range(warmup):
            fn()
    times: dict[tuple, list[float]] = {k: [] for k in steppers}
    mask_times: dict[tuple, list[float]] = {k: [] for k in steppers if k[0] == "maskvlp"}
    order = list(steppers.items())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(steps):
        for key, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            mask_s = fn()
            times[key].append(time.perf_counter() - start)
            if mask_s is not None:
                mask_times[key].append(mask_s)
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / torch.get_num_threads()
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    mask_ms = {k: 1e3 * statistics.median(v) for k, v in mask_times.items()}
    return {"ips": ips, "mask_ms": mask_ms, "params": params, "cpu": cpu_share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configuration only, 4 timed rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds for tiny (median reported)")
    parser.add_argument("--mid-steps", type=int, default=6, help="timed rounds for S (a step takes 2-3 s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per (implementation, mask) first")
    parser.add_argument("--retries", type=int, default=1, help="reruns of a configuration whose own CPU share < 90%%")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the container has 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["tiny"] if args.quick else list(CONFIGS)

    print(f"# CPU training step: maskvlp CLIP vs open_clip CLIP {open_clip.__version__}, fp32, AdamW")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible")
    steps = {"tiny": 4 if args.quick else args.steps, "S": args.mid_steps}
    rounds = ", ".join(f"{n}: {steps[n]}" for n in names)
    print(f"# warm-up {args.warmup} steps per (implementation, mask), then the median of timed rounds ({rounds})")
    print(f"# cluster: anchor ratio {ANCHOR_RATIO}, threshold {THRESHOLD}; open_clip: patch dropout (random only)")
    print(f"# 1-min load average before: {os.getloadavg()[0]:.2f}")
    for name in names:
        vision, text, image, patch, embed, context, batch, cases = CONFIGS[name]
        print(f"\n## {name}: vision {vision}, text {text}, image {image}, patch {patch}, embed {embed}, ", end="")
        print(f"context {context}, batch {batch}")
        for attempt in range(args.retries + 1):
            res = run_config(name, steps[name], args.warmup)
            if res["cpu"] >= 0.9:
                break
            print(f"# own CPU {res['cpu']:.0%}: other processes took cores; ", end="")
            print("rerunning" if attempt < args.retries else "keeping it", flush=True)
        p, ips = res["params"], res["ips"]
        diff = abs(p["maskvlp"] - p["open_clip"]) / p["open_clip"]
        print(f"parameters: maskvlp {p['maskvlp']:,}, open_clip {p['open_clip']:,} ({diff:.3%} apart)")
        print(f"own CPU share over the timed steps: {res['cpu']:.0%}")
        print(f"{'mask':<16}{'maskvlp img/s':>15}{'open_clip img/s':>17}{'mvlp/oc':>9}", end="")
        print(f"{'mvlp vs r=0':>13}{'oc vs r=0':>11}{'mask ms':>9}")
        base, oc_base = ips["maskvlp", *cases[0]], ips["open_clip", cases[0][1]]
        for strategy, ratio in cases:
            ours = ips["maskvlp", strategy, ratio]
            oc = None if strategy == "cluster" else ips["open_clip", ratio]
            print(
                f"{f'{strategy} {ratio:g}':<16}{ours:>15.1f}"
                + (f"{oc:>17.1f}{ours / oc:>8.2f}x" if oc else f"{'-':>17}{'-':>9}")
                + f"{ours / base:>12.2f}x"
                + (f"{oc / oc_base:>10.2f}x" if oc else f"{'-':>11}")
                + f"{res['mask_ms']['maskvlp', strategy, ratio]:>9.2f}",
                flush=True,
            )
    print(f"\n# 1-min load average after: {os.getloadavg()[0]:.2f} (this process alone adds about {args.threads})")


if __name__ == "__main__":
    main()
