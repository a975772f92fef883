"""The linear probe before and after issue 28, side by side in one run, on the same features.

    python benchmarks/bench_probe.py                        # the default rows (synthetic features)
    python benchmarks/bench_probe.py --rows 600x128x32 2000x128x113 --threads 1 2
    python benchmarks/bench_probe.py --run runs/default      # a trained run's own probe features
    python benchmarks/bench_probe.py --features feats.pt    # saved features: {name: (tx, ty, vx, vy)}

`old`: the probe as it was (scikit-learn LogisticRegression, lbfgs, max_iter 1000, on the raw features;
C over 1e-6 .. 1e6 a decade apart, refined a quarter decade around the best on a held-out 20% of
train, refit on all of train), kept here verbatim. `new`: maskvlp.linearprobe.linear_probe (torch float64
L-BFGS, centred features, warm starts, converged fits only, one thread). Rows are train samples x dims x classes of
unit-norm features with a decaying spectrum (as a contrastive model's); the defaults are the sizes of
the default run's probes (val: ~600 labelled single-object train scenes, objects: 640, 128 dims, 32
classes), of the real preset's (OpenClipart val: 2,000 train x 113 categories; Fashion-MNIST: 2,000 x
10) and a larger model's (512 dims). Per row and thread count (scikit-learn's BLAS and OpenMP threads
through threadpoolctl, torch's through set_num_threads): seconds, ConvergenceWarnings, chosen C,
held-out and test top-1 of both, and old / new time. Determinism: each side is run twice per thread
count (unless --no-repeat) and a rerun that differs is flagged; the last lines compare thread counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch

from maskvlp.linearprobe import linear_probe

OLD_GRID = tuple(10.0**e for e in range(-6, 7))
DEFAULT_ROWS = ("600x128x32", "640x128x32", "2000x128x10", "2000x128x113", "2000x512x113")


def old_linear_probe(train_x, train_y, test_x, test_y, seed: int = 0) -> dict[str, float]:
    """The probe before issue 28 (maskvlp.evaluate.linear_probe at commit 2679b6f), verbatim."""
    from sklearn.linear_model import LogisticRegression

    x, y = train_x.numpy(), train_y.numpy()
    order = np.random.default_rng(seed).permutation(len(y))
    cut = max(1, int(0.8 * len(y)))
    fit_idx, hold_idx = order[:cut], order[cut:]
    if not len(hold_idx):
        fit_idx, hold_idx = order, order

    def heldout(c: float) -> float:
        clf = LogisticRegression(C=c, max_iter=1000).fit(x[fit_idx], y[fit_idx])
        return float(clf.score(x[hold_idx], y[hold_idx]))

    scores = {c: heldout(c) for c in OLD_GRID}
    coarse = max(scores, key=lambda c: (scores[c], -c))
    for step in (-0.5, -0.25, 0.25, 0.5):
        c = coarse * 10.0**step
        scores[c] = heldout(c)
    best = max(scores, key=lambda c: (scores[c], -c))
    clf = LogisticRegression(C=best, max_iter=1000).fit(x, y)
    return {"top1": float(clf.score(test_x.numpy(), test_y.numpy())), "C": best, "heldout_top1": scores[best]}


def features(n: int, dims: int, classes: int, seed: int, noise: float = 1.5):
    """Unit-norm features: class centres plus noise through a mixing matrix whose rows decay over two
    decades, plus an offset (contrastive features are anisotropic and not centred)."""
    rng, fixed = np.random.default_rng(seed), np.random.default_rng(1000 + dims + classes)
    centres = fixed.normal(size=(classes, dims))
    mix = fixed.normal(size=(dims, dims)) * np.logspace(0, -2, dims)[:, None]
    y = rng.integers(classes, size=n)
    x = (centres[y] + noise * rng.normal(size=(n, dims))) @ mix + 0.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def run_features(run_dir: str, save: str | None = None) -> dict[str, tuple]:
    """The train / test features each probe of the evaluate stage fits on, for a trained run (params.yaml's
    eval settings and sets), as the stage encodes them."""
    from maskvlp.evalsets import resolve
    from maskvlp.evaltasks import encode_images, labels_for, limit_samples
    from maskvlp.evaluate import load_run
    from maskvlp.params import load_config

    cfg = load_config("params.yaml")
    model, run_cfg = load_run(run_dir)
    size, batch, device = run_cfg.model.image_size, cfg.eval.batch_size, torch.device("cpu")
    sets = {}
    for spec in cfg.eval.datasets:
        es = resolve(cfg, spec)
        if es.train_batches is None or not es.classes:
            continue
        test = encode_images(model, es.batches(size, batch), run_cfg, device)
        train_batches = limit_samples(es.train_batches(size, batch), cfg.eval.linear_probe_samples)
        train = encode_images(model, train_batches, run_cfg, device)
        ty, vy = labels_for(train.metas, es.classes), labels_for(test.metas, es.classes)
        sets[es.name] = (train.features[ty >= 0], ty[ty >= 0], test.features[vy >= 0], vy[vy >= 0])
    if save:
        torch.save(sets, save)
    return sets


def run(side: str, data, threads: int) -> dict:
    from threadpoolctl import threadpool_limits

    tx, ty, vx, vy = data
    torch.set_num_threads(threads)
    with threadpool_limits(threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        res = old_linear_probe(tx, ty, vx, vy) if side == "old" else linear_probe(tx, ty, vx, vy)
        seconds = time.perf_counter() - start
    out = {
        "s": seconds,
        "warnings": sum("Convergence" in type(w.message).__name__ for w in caught),
        "C": res["C"],
        "heldout": res["heldout_top1"],
        "top1": res["top1"],
    }
    if side == "new":
        out["converged"] = res["converged"]
        out["unconverged"] = len(res["unconverged"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="NxDxK: train samples x dims x classes")
    parser.add_argument("--test", type=int, default=500, help="test samples per synthetic row")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--features", help="a torch file {name: (train_x, train_y, test_x, test_y)} instead of --rows")
    parser.add_argument("--run", help="a trained run folder: its evaluation sets' probe features instead of --rows")
    parser.add_argument("--save-features", help="with --run: save the features here (for --features)")
    parser.add_argument("--no-repeat", action="store_true", help="run each side once (no rerun check)")
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}")
    if args.run:
        sets = run_features(args.run, args.save_features)
    elif args.features:
        sets = {k: tuple(v) for k, v in torch.load(args.features, weights_only=True).items()}
    else:
        sets = {}
        for row in args.rows:
            n, d, k = (int(p) for p in row.split("x"))
            sets[row] = (*features(n, d, k, 0), *features(args.test, d, k, 1))
    rows = []
    head = (
        f"{'row':>14s} {'thr':>3s} | {'old s':>7s} {'warn':>4s} {'C':>9s} {'held':>5s} {'top1':>5s} | "
        f"{'new s':>6s} {'conv':>4s} {'C':>9s} {'held':>5s} {'top1':>5s} | {'old/new':>7s}"
    )
    print(head + "\n" + "-" * len(head), flush=True)
    for name, data in sets.items():
        for threads in args.threads:
            old, new = run("old", data, threads), run("new", data, threads)
            again = {} if args.no_repeat else {side: run(side, data, threads) for side in ("old", "new")}
            for side, res in (("old", old), ("new", new)):
                res["repeats"] = side not in again or all(again[side][k] == res[k] for k in ("C", "heldout", "top1"))
            rows.append({"row": name, "threads": threads, "old": old, "new": new, "ratio": old["s"] / new["s"]})
            print(
                f"{name:>14s} {threads:3d} | {old['s']:7.2f} {old['warnings']:4d} {old['C']:9.3g} {old['heldout']:5.3f} "
                f"{old['top1']:5.3f} | {new['s']:6.2f} {int(new['converged']):4d} {new['C']:9.3g} "
                f"{new['heldout']:5.3f} {new['top1']:5.3f} | {old['s'] / new['s']:6.1f}x"
                + ("" if old["repeats"] else "  old: a rerun differs")
                + ("" if new["repeats"] else "  new: a rerun differs"),
                flush=True,
            )
    for side in ("old", "new"):
        for name in sets:
            got = {(r[side]["C"], r[side]["top1"]) for r in rows if r["row"] == name}
            if len(got) > 1:
                print(f"{side} {name}: C / top1 differ between thread counts: {sorted(got)}")
    same = all(
        len({(r[side]["C"], r[side]["top1"]) for r in rows if r["row"] == name}) == 1
        for side in ("new",)
        for name in sets
    )
    print(f"new: same C / top1 across threads and reruns: {same and all(r['new']['repeats'] for r in rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
