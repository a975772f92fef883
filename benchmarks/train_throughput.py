"""Training-step throughput: maskvlp's step at none / random / cluster and mask 0, 0.5, 0.75, eager and
compiled, beside open_clip's patch dropout at the same ratios, measured in one process.

    python benchmarks/train_throughput.py --device cpu --model tiny --steps 5     # a smoke run (CI)
    python benchmarks/train_throughput.py --device cuda --model B                  # the GPU table

One step, for every row: the uint8 batch normalised on the device, the mask (maskvlp: its masking
module, fp32, outside autocast; open_clip: patch dropout inside the forward), forward, symmetric
contrastive loss, backward, AdamW step, zero_grad. On CUDA: bf16 autocast and fused AdamW; on CPU:
fp32. Inputs are random (uint8 images, tokens with one end-of-text token per row). `B` is the ViT-B/16
image tower with a 12 x 512 text tower, batch 256 (../shared performance anchors' setup); `tiny` is
the embedded default's model, batch 64.

Every (implementation, strategy, ratio, mode) row is warmed up (compilation included) and then all
rows take one step per round, in an order reversed every other round, so that drift in clock speed
or load hits every row alike; reported is the median step (CUDA events on the GPU, perf_counter on
the CPU). MFU = training FLOPs per step (docs/records.md: kept tokens, both towers, x3 for backward,
plus the mask's own cost) / step time / peak, against the peak measured here with a large matmul
(bf16 on CUDA, fp32 on CPU) and, on an H100/H200, against the 989 TFLOP/s datasheet figure. Peak
memory: the CUDA allocator's maximum during the row's warm-up steps above what was allocated before
(activations and temporaries), plus the row's parameters, gradients and AdamW state.

Fairness notes printed with the table: open_clip's text tower builds an explicit causal mask (no
flash-attention kernel), so `--image-tower` adds rows that train the image tower alone against fixed
text features, where the two implementations differ only on the image side. Prints a table with the
ratios and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark's open_clip model builder

from maskvlp.config import CLIP_MEAN, CLIP_STD  # noqa: E402
from maskvlp.data.transforms import normalize  # noqa: E402
from maskvlp.flops import mask_flops, sample_flops  # noqa: E402
from maskvlp.loss import clip_loss  # noqa: E402
from maskvlp.masking import compute_mask, kept_tokens, strategy_config  # noqa: E402
from maskvlp.model import CLIP, VOCAB_SIZE  # noqa: E402

EOT = VOCAB_SIZE - 1
MODELS = {
    "tiny": {"vision": "tiny", "text": "tiny", "image": 64, "patch": 8, "embed": 128, "context": 32, "batch": 64},
    "B": {"vision": "B", "text": "B", "image": 224, "patch": 16, "embed": 512, "context": 77, "batch": 256},
}
CASES = (("none", 0.0), ("random", 0.5), ("random", 0.75), ("cluster", 0.5), ("cluster", 0.75))
ANCHOR_RATIO, THRESHOLD = 0.03, 0.5
DATASHEET_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


@dataclass
class Row:
    impl: str  # maskvlp | open_clip
    strategy: str
    ratio: float
    mode: str  # eager | compiled
    tower: str  # both | image
    step: Any = None  # () -> None
    flops: float = 0.0  # per step
    state_bytes: int = 0
    peak_bytes: int = 0
    times: list[float] | None = None
    error: str = ""

    @property
    def key(self) -> tuple:
        return self.impl, self.strategy, self.ratio, self.mode, self.tower


def inputs(batch: int, image: int, context: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, image, image), generator=g, dtype=torch.uint8)
    tokens = torch.randint(1, EOT, (batch, context), generator=g)
    eot = torch.randint(1, context, (batch,), generator=g)
    tokens[torch.arange(batch), eot] = EOT
    tokens[torch.arange(context)[None, :] > eot[:, None]] = 0
    return images.to(device), tokens.to(device)


COMPILE_MODES = {"eager": None, "compiled": "default", "compiled-cg": "reduce-overhead"}


def compiled(model: torch.nn.Module, mode: str):
    """The model as the row runs it: eager, torch.compile, or torch.compile with CUDA graphs (reduce-overhead:
    one graph replay per forward and per backward instead of ~a thousand kernel launches)."""
    return model if COMPILE_MODES[mode] is None else torch.compile(model, mode=COMPILE_MODES[mode])


def begin_step(mode: str) -> None:
    if mode == "compiled-cg":  # a new iteration: the graphs' output buffers of the last one may be reused
        torch.compiler.cudagraph_mark_step_begin()


def precision(device: torch.device):
    """The step's precision: bf16 autocast (and TF32 for what stays fp32) on CUDA, plain fp32 on the CPU.
    Returns a factory of the autocast context."""
    if device.type != "cuda":
        return contextlib.nullcontext
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **fused)


def state_bytes(model: torch.nn.Module) -> int:
    """Parameters + gradients + AdamW's two moments, all fp32."""
    return 4 * 4 * sum(p.numel() for p in model.parameters())


def maskvlp_row(cfg: dict, strategy: str, ratio: float, mode: str, tower: str, device, autocast, data) -> Row:
    images_u8, tokens = data
    torch.manual_seed(0)
    model = CLIP(cfg["vision"], cfg["text"], cfg["image"], cfg["patch"], cfg["embed"], cfg["context"]).to(device)
    model.train()
    opt = make_optimizer(model, device)
    # the image-tower rows compile the tower itself (a compiled model's .visual is the eager submodule)
    run = compiled(model.visual if tower == "image" else model, mode)
    k = strategy_config(strategy=strategy, ratio=ratio, anchor_ratio=ANCHOR_RATIO, threshold=THRESHOLD)
    gen = torch.Generator(device=device).manual_seed(0)
    fixed_text = torch.nn.functional.normalize(torch.randn(len(tokens), cfg["embed"], device=device), dim=-1)

    def step() -> None:
        begin_step(mode)
        images = normalize(images_u8, CLIP_MEAN, CLIP_STD)
        keep = None
        if strategy != "none":
            with torch.no_grad():
                mask = compute_mask(images, k, cfg["patch"], gen)
            keep = mask.keep_idx if mask.images is None else None  # resize: the smaller images, every patch
            images = images if mask.images is None else mask.images
        with autocast():
            if tower == "image":
                feats = torch.nn.functional.normalize(run(images, keep), dim=-1)
                loss = clip_loss(feats, fixed_text, model.logit_scale.exp())
            else:
                loss = clip_loss(*run(images, tokens, keep))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = step_flops(model, cfg, strategy, ratio, tower, len(tokens))
    return Row("maskvlp", strategy, ratio, mode, tower, step, flops, state_bytes(model))


def step_flops(model: CLIP, cfg: dict, strategy: str, ratio: float, tower: str, batch: int) -> float:
    """Training FLOPs of one step (docs/records.md): kept tokens through the tower(s), plus the mask's cost."""
    grid = model.visual.num_patches
    k = strategy_config(strategy=strategy, ratio=ratio, anchor_ratio=ANCHOR_RATIO, threshold=THRESHOLD)
    kept = kept_tokens(k, grid)
    if tower == "both":
        return batch * sample_flops(model, k, kept)
    return batch * (vision_flops(model, kept) + mask_flops(model, k))


def vision_flops(model: CLIP, kept: int) -> float:
    """Training FLOPs per sample of the image tower alone (docs/records.md's formula, image terms only)."""
    vis = model.visual
    patch = 2 * vis.num_patches * vis.patch_embed.weight.numel()
    n = kept + int(vis.has_cls)
    total = 0.0
    for block in vis.transformer.blocks:
        w = block.proj.in_features
        total += 2 * n * (sum(p.numel() for p in block.parameters()) - 4 * w) + 4 * n * n * w
    return 3 * (patch + total)


def open_clip_row(cfg: dict, ratio: float, mode: str, tower: str, device, autocast, data, flops: float) -> Row:
    from bench_train import open_clip_model
    from open_clip.loss import ClipLoss

    images_u8, tokens = data
    torch.manual_seed(0)
    model = open_clip_model(cfg["vision"], cfg["text"], cfg["image"], cfg["patch"], cfg["embed"], cfg["context"], ratio)
    model = model.to(device).train()
    opt = make_optimizer(model, device)
    run = compiled(model.visual if tower == "image" else model, mode)  # encode_image is model.visual + normalize
    loss_fn = ClipLoss()
    fixed_text = torch.nn.functional.normalize(torch.randn(len(tokens), cfg["embed"], device=device), dim=-1)

    def step() -> None:
        begin_step(mode)
        images = normalize(images_u8, CLIP_MEAN, CLIP_STD)
        with autocast():
            if tower == "image":
                feats = torch.nn.functional.normalize(run(images), dim=-1)
                loss = loss_fn(feats, fixed_text, model.logit_scale.exp())
            else:
                loss = loss_fn(*run(images, tokens)[:3])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Row("open_clip", "random" if ratio else "none", ratio, mode, tower, step, flops, state_bytes(model))


def measured_peak(device: torch.device) -> float:
    """FLOP/s of a large matmul: bf16 8192^3 on CUDA, fp32 1024^3 on CPU (best of a few)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        start = _now(device)
        for _ in range(4):
            a @ b
        best = min(best, (_now(device) - start) / 4)
    return 2 * n**3 / best


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed(row: Row, device: torch.device) -> float:
    if device.type != "cuda":
        start = time.perf_counter()
        row.step()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    row.step()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


def row_keys(args) -> list[tuple]:
    """(impl, strategy, ratio, mode, tower) of every row: `--rows` as given (in that order), else the grid
    of --modes x towers x CASES within --ratios, open_clip beside each non-cluster row."""
    if args.rows:
        keys = []
        for spec in args.rows:
            impl, strategy, ratio, mode, tower = spec.split(":")
            if impl not in ("maskvlp", "open_clip") or mode not in COMPILE_MODES or tower not in ("both", "image"):
                raise SystemExit(
                    f"--rows {spec}: expected impl:strategy:ratio:mode:tower, e.g. maskvlp:random:0.5:compiled:both"
                )
            if (strategy, float(ratio)) not in CASES or (impl == "open_clip" and strategy == "cluster"):
                raise SystemExit(f"--rows {spec}: no such case (cases: {CASES}; open_clip has no cluster masking)")
            keys.append((impl, strategy, float(ratio), mode, tower))
        return keys
    keys = []
    for mode in args.modes:
        for tower in ["both", "image"] if args.image_tower else ["both"]:
            for strategy, ratio in CASES:
                if ratio not in args.ratios and strategy != "none":
                    continue
                keys.append(("maskvlp", strategy, ratio, mode, tower))
                if strategy != "cluster":
                    keys.append(("open_clip", strategy, ratio, mode, tower))
    return keys


def build_rows(args, cfg: dict, device, autocast, data) -> list[Row]:
    try:
        import open_clip  # noqa: F401

        with_open_clip = not args.no_open_clip
    except ImportError:
        with_open_clip = False
    rows: list[Row] = []
    for impl, strategy, ratio, mode, tower in row_keys(args):
        if impl == "maskvlp":
            rows.append(maskvlp_row(cfg, strategy, ratio, mode, tower, device, autocast, data))
        elif with_open_clip:  # the same FLOPs as maskvlp's row: the same kept tokens through the same shapes
            with torch.device("meta"):
                shape = CLIP(cfg["vision"], cfg["text"], cfg["image"], cfg["patch"], cfg["embed"], cfg["context"])
            flops = step_flops(shape, cfg, strategy, ratio, tower, cfg["batch"])
            rows.append(open_clip_row(cfg, ratio, mode, tower, device, autocast, data, flops))
    return rows


def measure(rows: list[Row], steps: int, warmup: int, device: torch.device, budget_s: float = 0) -> list[Row]:
    """Warm every row up (a row that fails, e.g. a compilation error or out of memory, is reported and
    left out; with `budget_s`, rows not yet warmed up when that many seconds have passed are left out too),
    then time the rest in interleaved rounds. Returns the rows that ran."""
    ok = []
    began = time.perf_counter()
    for row in rows:
        start = time.perf_counter()
        if budget_s and start - began > budget_s:
            row.error = f"skipped: the warm-up budget (--time-budget {budget_s:g} s) was spent"
            print(f"# {row.error}: {' '.join(map(str, row.key))}", flush=True)
            continue
        try:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(warmup):
                row.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                row.peak_bytes = torch.cuda.max_memory_allocated(device) - before + row.state_bytes
        except Exception as exc:  # noqa: BLE001 (one row's failure must not lose the table)
            row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            print(f"# warm-up FAILED {' '.join(map(str, row.key))}: {row.error}", flush=True)
            row.step = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        print(f"# warmed up {' '.join(map(str, row.key))} in {time.perf_counter() - start:.1f} s", flush=True)
        row.times = []
        ok.append(row)
    for i in range(steps):
        for row in ok if i % 2 == 0 else ok[::-1]:
            row.times.append(timed(row, device))
    return ok


def table(rows: list[Row], batch: int, peak: float, datasheet: float | None) -> tuple[str, list[dict]]:
    out, records = [], []
    head = f"{'impl':<10}{'mask':<14}{'mode':<13}{'tower':<7}{'img/s':>10}{'ms/step':>9}{'MFU':>7}"
    head += f"{'MFU ds':>8}{'peak GiB':>10}{'vs oc':>8}{'vs r=0':>8}{'vs rand':>9}"
    out.append(head)
    by_key = {r.key: r for r in rows}
    for r in rows:
        t = statistics.median(r.times)
        ips = batch / t

        def ratio_to(key: tuple, r: Row = r, t: float = t) -> float | None:
            other = by_key.get(key)
            return None if other is None or other is r else statistics.median(other.times) / t

        vs_oc = (
            ratio_to(("open_clip", "random" if r.ratio else "none", r.ratio, r.mode, r.tower))
            if r.impl == "maskvlp"
            else None
        )
        vs_base = ratio_to((r.impl, "none", 0.0, r.mode, r.tower))
        vs_rand = ratio_to((r.impl, "random", r.ratio, r.mode, r.tower)) if r.strategy == "cluster" else None
        mfu = r.flops / t / peak
        mfu_ds = r.flops / t / (datasheet * 1e12) if datasheet else None
        record = {
            "impl": r.impl,
            "strategy": r.strategy,
            "ratio": r.ratio,
            "mode": r.mode,
            "tower": r.tower,
            "images_per_s": ips,
            "ms_per_step": 1e3 * t,
            "step_ms_all": [1e3 * x for x in r.times],
            "flops_per_step": r.flops,
            "mfu_measured_peak": mfu,
            "mfu_datasheet": mfu_ds,
            "peak_memory_bytes": r.peak_bytes or None,
            "vs_open_clip": vs_oc,
            "vs_unmasked": vs_base,
            "cluster_vs_random": vs_rand,
        }
        records.append(record)

        def fmt(v: float | None, spec: str) -> str:
            return format(v, spec) if v is not None else "-"

        out.append(
            f"{r.impl:<10}{f'{r.strategy} {r.ratio:g}':<14}{r.mode:<13}{r.tower:<7}{ips:>10.1f}{1e3 * t:>9.2f}"
            f"{mfu:>7.1%}{fmt(mfu_ds, '.1%'):>8}{fmt(r.peak_bytes / 2**30 if r.peak_bytes else None, '.2f'):>10}"
            f"{fmt(vs_oc, '.2f'):>8}{fmt(vs_base, '.2f'):>8}{fmt(vs_rand, '.3f'):>9}"
        )
    return "\n".join(out), records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=tuple(MODELS), default=None, help="default: B on CUDA, tiny on CPU")
    p.add_argument("--batch", type=int, default=None, help="per step (default: the model's: B 256, tiny 64)")
    p.add_argument("--steps", type=int, default=None, help="timed rounds (default: 20 on CUDA, 5 on CPU)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per row first (default: 5 compiled, 2 eager)"
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=tuple(COMPILE_MODES),
        default=None,
        help="default: eager compiled on CUDA, eager on CPU (compiled-cg: torch.compile with CUDA graphs)",
    )
    p.add_argument(
        "--ratios", nargs="+", type=float, default=[0.5, 0.75], help="mask ratios beside 0 (default: 0.5 0.75)"
    )
    p.add_argument("--image-tower", action="store_true", help="also rows training the image tower alone")
    p.add_argument("--no-open-clip", action="store_true", help="maskvlp rows only")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        metavar="IMPL:STRATEGY:RATIO:MODE:TOWER",
        help="exactly these rows, warmed up in this order (e.g. maskvlp:random:0.5:compiled:both "
        "open_clip:random:0.5:compiled:image); overrides --modes/--ratios/--image-tower",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=0,
        metavar="S",
        help="stop warming up (compiling) new rows after S seconds and time those ready (0 = no limit)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = torch's default)")
    p.add_argument("--json", default=None, metavar="FILE", help="write every number here")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or ("B" if device.type == "cuda" else "tiny")
    args.modes = args.modes or (["eager", "compiled"] if device.type == "cuda" else ["eager"])
    if args.rows:
        args.modes = sorted({spec.split(":")[3] for spec in args.rows if spec.count(":") == 4}) or args.modes
    steps = args.steps or (20 if device.type == "cuda" else 5)
    warmup = args.warmup or (5 if set(args.modes) - {"eager"} else 2)
    cfg = dict(MODELS[args.model])
    cfg["batch"] = args.batch or cfg["batch"]
    autocast = precision(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    datasheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in name), None) if device.type == "cuda" else None
    try:
        import open_clip

        oc_version = open_clip.__version__
    except ImportError:
        oc_version = None
    print(
        f"# {args.model} on {device.type} ({name}), batch {cfg['batch']}, torch {torch.__version__}, open_clip {oc_version}"
    )
    print(
        f"# {'bf16 autocast, fused AdamW' if device.type == 'cuda' else f'fp32, {torch.get_num_threads()} threads'}; "
        f"{warmup} warm-up steps per row, median of {steps} interleaved rounds"
    )
    data = inputs(cfg["batch"], cfg["image"], cfg["context"], device)
    peak = measured_peak(device)
    print(f"# measured peak: {peak / 1e9:,.0f} GFLOP/s" + (f"; datasheet {datasheet:.0f} TFLOP/s" if datasheet else ""))
    rows = build_rows(args, cfg, device, autocast, data)
    ran = measure(rows, steps, warmup, device, args.time_budget)
    text, records = table(ran, cfg["batch"], peak, datasheet)
    print(text)
    failed = [{"key": list(r.key), "error": r.error} for r in rows if r.error]
    for f in failed:
        print(f"# FAILED {' '.join(map(str, f['key']))}: {f['error']}")
    print("# vs oc: maskvlp / open_clip at the same ratio, mode and tower; vs r=0: over the same implementation's")
    print("# unmasked row; vs rand: cluster / random at the same ratio. open_clip's text tower uses an explicit")
    print("# causal mask (no flash kernel): see the --image-tower rows for the image side alone.")
    if args.json:
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "device": name,
            "torch": torch.__version__,
            "open_clip": oc_version,
            "model": args.model,
            "config": cfg,
            "steps": steps,
            "warmup": warmup,
            "measured_peak_flops": peak,
            "datasheet_tflops": datasheet,
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": records, "failed": failed}, indent=1) + "\n")
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
