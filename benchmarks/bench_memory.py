"""Largest batch per memory budget at mask ratio 0 / 0.5 / 0.75: FLIP's "bigger batch in the same memory".

    python benchmarks/bench_memory.py             # tiny (64 px / 8) and S (224 px / 16) on CPU, ~4 min
    python benchmarks/bench_memory.py --quick     # tiny only
    python benchmarks/bench_memory.py --quick --batches 8 16 32   # other batch sizes (the GPU suite's dry run)
    python benchmarks/bench_memory.py --device cuda   # on a GPU: B (ViT-B/16 + 12 x 512 text, 77 tokens),
                                                      # peak allocated memory instead of RSS, bf16 autocast

Each measurement on the CPU is a fresh process (so the peak RSS is its own; on a GPU the allocator's
peak is reset in one process): build maskvlp's CLIP and AdamW, then
one full training step at batch B (random mask at the ratio via masking.compute_mask, forward,
symmetric contrastive loss, backward, AdamW step) on random inputs, fp32 on CPU. Reported: the peak
resident set size (ru_maxrss) on CPU, or torch.cuda.max_memory_allocated on GPU. Per ratio, peak
memory is measured at three batch sizes and fitted by a line, memory = fixed + per_sample * B (the
fixed part is weights, optimizer state, and the Python/torch runtime); the largest batch that fits a
budget is (budget - fixed) / per_sample. With accum_mode=cache, that is the micro-batch: the
contrastive batch can be accum_steps times larger, for one extra forward pass.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# name: (vision, text, image_size, patch_size, embed_dim, context_length, batches measured)
CONFIGS = {
    "tiny": ("tiny", "tiny", 64, 8, 128, 32, (256, 512, 1024)),
    "S": ("S", "S", 224, 16, 384, 32, (32, 64, 128)),
    "B": ("B", "B", 224, 16, 512, 77, (128, 256, 512)),  # the GPU setup (ViT-B/16 + 12 x 512 text, 77 tokens)
}
RATIOS = (0.0, 0.5, 0.75)
BUDGETS_GIB = (4, 8, 16, 64)


def one_step(name: str, ratio: float, batch: int, device: str) -> float:
    """Peak memory in bytes of one training step (this process)."""
    import resource

    import torch

    from maskvlp.loss import clip_loss
    from maskvlp.masking import compute_mask, strategy_config
    from maskvlp.model import CLIP

    vision, text, image, patch, embed, context, _ = CONFIGS[name]
    torch.manual_seed(0)
    model = CLIP(vision, text, image, patch, embed, context).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, image, image, device=device)
    tokens = torch.randint(1, 49000, (batch, context), device=device)
    tokens[:, -1] = 49407
    k = strategy_config(strategy="random" if ratio else "none", ratio=ratio)
    mask = compute_mask(images, k, patch, torch.Generator(device=device).manual_seed(0))
    keep = None if ratio == 0 else mask.keep_idx
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        img, txt, scale = model(images, tokens, keep)
    clip_loss(img.float(), txt.float(), scale.float()).backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux


def peak_of(name: str, ratio: float, batch: int, device: str) -> float:
    """Peak memory of one step: in a fresh process on the CPU (RSS is per process), in this one on a GPU
    (the allocator's peak, reset before and the cache emptied after)."""
    if not device.startswith("cuda"):
        cmd = [sys.executable, __file__, "--device", device, "--_one", name, str(ratio), str(batch)]
        return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    peak = one_step(name, ratio, batch, "cuda")
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares line through (batch, bytes): (fixed, per_sample)."""
    n = len(points)
    mx = sum(b for b, _ in points) / n
    my = sum(m for _, m in points) / n
    slope = sum((b - mx) * (m - my) for b, m in points) / sum((b - mx) ** 2 for b, _ in points)
    return my - slope * mx, slope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny only")
    parser.add_argument(
        "--configs", nargs="+", choices=tuple(CONFIGS), default=None, help="default: tiny S on CPU, B on CUDA"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batches", nargs=3, type=int, default=None, metavar="B",
        help="the three batch sizes each line is fitted through (default: the config's, e.g. 256 512 1024 for tiny)",
    )  # fmt: skip
    parser.add_argument("--json", default="", help="also write the measurements here")
    parser.add_argument("--_one", nargs=3, metavar=("NAME", "RATIO", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        name, ratio, batch = args._one
        print(one_step(name, float(ratio), int(batch), args.device))
        return 0
    cuda = args.device.startswith("cuda")
    names = ["tiny"] if args.quick else args.configs or (["B"] if cuda else ["tiny", "S"])
    budgets = BUDGETS_GIB
    if cuda:  # the card's own memory and an 80 GiB card's
        import torch

        budgets = (80, int(torch.cuda.get_device_properties(0).total_memory / 2**30))
    out = {}
    for name in names:
        vision, text, image, patch, embed, context, batches = CONFIGS[name]
        batches = tuple(args.batches or batches)
        label = "peak RSS" if args.device == "cpu" else "peak allocated"
        print(
            f"\n## {name}: vision {vision}, text {text}, {image} px / {patch} ({(image // patch) ** 2} patches), {label}"
        )
        header = "| mask | " + " | ".join(f"B={b}" for b in batches) + " | fixed | per sample | "
        print(header + " | ".join(f"max B @ {g} GiB" for g in budgets) + " |")
        print("|---" * (3 + len(batches) + len(budgets)) + "|")
        base_per_sample = None
        for ratio in RATIOS:
            points = []
            for b in batches:
                points.append((b, peak_of(name, ratio, b, args.device)))
            fixed, per = fit(points)
            base_per_sample = base_per_sample or per
            fits = [max(0, int((g * 2**30 - fixed) / per)) for g in budgets]
            out[f"{name}/{ratio}"] = {"points": points, "fixed": fixed, "per_sample": per, "max_batch": fits}
            cells = " | ".join(f"{m / 2**30:.2f} GiB" for _, m in points)
            print(
                f"| {ratio} | {cells} | {fixed / 2**30:.2f} GiB | {per / 2**20:.2f} MiB "
                f"({base_per_sample / per:.2f}x fewer) | " + " | ".join(str(f) for f in fits) + " |"
            )
            if args.json:  # after every row: a run stopped by a time limit keeps the rows it measured
                from maskvlp.runs import write_json_atomic

                write_json_atomic(Path(args.json), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
