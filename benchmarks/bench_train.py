"""CPU training-step throughput: maskvlp's CLIP next to open_clip's CLIP of the same shape, in one run.

    python benchmarks/bench_train.py            # tiny and S configurations, 10 timed steps each
    python benchmarks/bench_train.py --quick    # tiny only, 4 timed steps: a smoke run

One training step, timed with time.perf_counter, is: compute the mask (maskvlp: masking.compute_mask,
whose kept indices go to the model; open_clip: patch dropout, active in train mode, inside the forward),
forward, symmetric contrastive loss (maskvlp.loss.clip_loss / open_clip.loss.ClipLoss), backward,
AdamW step (the same torch.optim.AdamW settings for both) and zero_grad. Inputs are random normalised
images (torch.randn) and random tokens with one end-of-text token (49407) per row at a random position.
Each case builds both models from the same seed, warms each up, then alternates their timed steps
(so that load from other processes hits both alike) and reports the median as images/s. fp32 throughout
(what `pretrain` uses on CPU). open_clip has no cluster masking: its column shows "-" there.
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
from maskvlp.masking import compute_mask
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


def maskvlp_step(model, opt, images, tokens, strategy: str, ratio: float, patch: int, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    with torch.no_grad():
        keep_idx = compute_mask(strategy, images, patch, ratio, ANCHOR_RATIO, THRESHOLD, gen).keep_idx
    img_f, txt_f, scale = model(images, tokens, keep_idx)
    clip_loss(img_f, txt_f, scale).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def open_clip_step(model, opt, loss_fn, images, tokens) -> None:
    img_f, txt_f, scale = model(images, tokens)
    loss_fn(img_f, txt_f, scale).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_case(name: str, strategy: str, ratio: float, steps: int, warmup: int) -> dict:
    vision, text, image, patch, embed, context, batch, _ = CONFIGS[name]
    torch.manual_seed(0)
    ours = CLIP(vision, text, image, patch, embed, context).train()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-4, weight_decay=0.1)
    images, tokens = make_inputs(batch, image, context)
    counter = itertools.count()
    active = {"maskvlp": lambda: maskvlp_step(ours, opt, images, tokens, strategy, ratio, patch, next(counter))}
    params = {"maskvlp": count_params(ours)}
    if strategy != "cluster":
        torch.manual_seed(0)
        theirs = open_clip_model(vision, text, image, patch, embed, context, ratio).train()
        their_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.1)
        loss_fn = ClipLoss()
        active["open_clip"] = lambda: open_clip_step(theirs, their_opt, loss_fn, images, tokens)
        params["open_clip"] = count_params(theirs)
    for fn in active.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in active}
    for _ in range(steps):
        for key, fn in active.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    return {"config": name, "strategy": strategy, "ratio": ratio, "batch": batch, "ips": ips, "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configuration only, 4 timed steps")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the container has 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = 4 if args.quick else args.steps
    names = ["tiny"] if args.quick else list(CONFIGS)

    print(f"# CPU training step: maskvlp CLIP vs open_clip CLIP {open_clip.__version__}, fp32, AdamW")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible")
    print(f"# warm-up {args.warmup} steps per model, median of {steps}; cluster: anchor ratio {ANCHOR_RATIO}, ")
    print(f"#   threshold {THRESHOLD}; open_clip masks with patch dropout (random only)")
    rows = []
    for name in names:
        vision, text, image, patch, embed, context, batch, cases = CONFIGS[name]
        print(f"\n## {name}: vision {vision}, text {text}, image {image}, patch {patch}, embed {embed}, ", end="")
        print(f"context {context}, batch {batch}")
        for strategy, ratio in cases:
            row = run_case(name, strategy, ratio, steps, args.warmup)
            rows.append(row)
            if len(rows) == 1 or rows[-2]["config"] != name:
                p = row["params"]
                diff = abs(p["maskvlp"] - p["open_clip"]) / p["open_clip"]
                print(f"parameters: maskvlp {p['maskvlp']:,}, open_clip {p['open_clip']:,} ({diff:.3%} apart)")
                print(f"{'mask':<16}{'maskvlp img/s':>15}{'open_clip img/s':>17}{'mvlp/oc':>9}", end="")
                print(f"{'mvlp vs r=0':>13}{'oc vs r=0':>11}")
                base = row["ips"]
            ips = row["ips"]
            oc = ips.get("open_clip")
            print(
                f"{f'{strategy} {ratio:g}':<16}{ips['maskvlp']:>15.1f}"
                + (f"{oc:>17.1f}{ips['maskvlp'] / oc:>8.2f}x" if oc else f"{'-':>17}{'-':>9}")
                + f"{ips['maskvlp'] / base['maskvlp']:>12.2f}x"
                + (f"{oc / base['open_clip']:>10.2f}x" if oc else f"{'-':>11}"),
                flush=True,
            )


if __name__ == "__main__":
    main()
