"""Cost of computing masks, side by side with a ViT-B/16 training step, in one run.

    python benchmarks/bench_masking.py                 # CPU, batch 256 at 224 px, 16 px patches
    python benchmarks/bench_masking.py --device cuda   # on a GPU machine

Prints milliseconds per batch for each strategy, the naive L x L similarity for comparison with
the A x L one that maskvlp computes, and the mask cost as a share of a ViT-B/16 forward+backward
(torchvision's vit_b_16, random weights, measured on a smaller batch and scaled per image on CPU).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from maskvlp.masking import compute_mask, num_anchors, standardised_patches, strategy_config


def timed(fn, device: str, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def vit_step_ms_per_image(device: str, batch: int, repeats: int) -> float:
    from torchvision.models import vit_b_16

    model = vit_b_16().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 224, 224, device=device)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(x).float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, device, repeats) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--anchor-ratio", type=float, default=0.05)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--vit-batch", type=int, default=0, help="batch for the ViT step (default: 8 on CPU, --batch on GPU)"
    )
    parser.add_argument("--quick", action="store_true", help="batch 64, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 64, 2
    dev = args.device
    images = torch.randn(args.batch, 3, 224, 224, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    patch, num_patches = 16, 196

    rows = {}
    for name, strategy, mode in [
        ("none", "none", "exact"),
        ("random (FLIP)", "random", "exact"),
        ("cluster, exact", "cluster", "exact"),
        ("cluster, official", "cluster", "official"),
    ]:
        rows[name] = timed(
            lambda s=strategy, m=mode: compute_mask(
                images,
                strategy_config(
                    strategy=s, ratio=args.ratio, anchor_ratio=args.anchor_ratio, threshold=args.threshold, mode=m
                ),
                patch,
                gen,
            ),
            dev,
            args.repeats,
        )
    unit = standardised_patches(images, patch)
    a = num_anchors(num_patches, args.anchor_ratio)
    rows[f"  similarity A x L (A={a})"] = timed(lambda: unit[:, :a] @ unit.transpose(1, 2), dev, args.repeats)
    rows["  similarity L x L (naive)"] = timed(lambda: unit @ unit.transpose(1, 2), dev, args.repeats)

    vit_batch = args.vit_batch or (8 if dev == "cpu" else args.batch)
    step_ms = vit_step_ms_per_image(dev, vit_batch, max(2, args.repeats // 2)) * args.batch

    print(
        f"# masking cost, batch {args.batch} x 224 px, 16 px patches, ratio {args.ratio}, anchor ratio "
        f"{args.anchor_ratio}, threshold {args.threshold}"
    )
    print(
        f"# device {dev} ({torch.cuda.get_device_name() if dev == 'cuda' else platform.processor() or 'cpu'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'what':34s} {'ms/batch':>10s} {'share of ViT-B/16 step':>24s}")
    for name, ms in rows.items():
        print(f"{name:34s} {ms:10.2f} {ms / step_ms:23.2%}")
    print(f"{'ViT-B/16 fwd+bwd+AdamW (full)':34s} {step_ms:10.1f} {'(measured at batch ' + str(vit_batch) + ')':>24s}")
    print(
        f"cluster / random mask cost: {rows['cluster, exact'] / rows['random (FLIP)']:.1f}x; "
        f"L x L / A x L similarity: {rows['  similarity L x L (naive)'] / rows[f'  similarity A x L (A={a})']:.1f}x"
    )


if __name__ == "__main__":
    main()
