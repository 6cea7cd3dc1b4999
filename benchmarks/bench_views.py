"""Choosing `augment_views` (and whether to augment at all) by cross-validation.

On the TRAINING photos only (../shared/data/flowers/train, 350 images): k folds,
stratified by class with a fixed shuffle. For every fold and every variant, the
user's call `FineTuner(...).fit(x, y, head_epochs=5, finetune_epochs=5)` (its own
20% content split for early stopping, everything at its default) trains on the
other folds and is scored on the fold. Variants: no augmentation; `augment="default"`
uncached (fresh augmentation every epoch); `augment="default"` with
`augment_views=K` for each K. With `--defaults`, also `fit(x, y)` alone at 224 px,
with and without `augment="default"`. The test photos are never read here.

With `--score-on large`, every fit trains on all 350 training photos and is scored
on the 1,989 photos of ../shared/data/flowers-large/train (none of them in
flowers/), once per seed (`--seeds`): a larger held-out set than a fold, so smaller
differences show. `--epochs H F` sets the two phases' epochs.

    python benchmarks/bench_views.py                       # 3 folds, K in 1 2 4 8 16
    python benchmarks/bench_views.py --defaults --json benchmarks/results/views_cv.json
    python benchmarks/bench_views.py --score-on large --seeds 3 --views 2 4 --epochs 10 10
    python benchmarks/bench_views.py --data large --views 2 4   # 3-fold CV on flowers-large

With `--data large`, the folds are drawn from the 1,989 photos of
../shared/data/flowers-large/train instead (each fit trains on about 1,326 of them):
the view counts at the size of the benchmark's larger run, still on training photos.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import finetunekit as ftk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
WEIGHTS = DATA / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def arrays(size: int, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    ds = keras.utils.image_dataset_from_directory(
        folder or DATA / "flowers" / "train", image_size=(size, size), batch_size=64,
        shuffle=False, verbose=False,
    )
    x = np.concatenate([b.numpy() for b, _ in ds])
    y = np.concatenate([b.numpy() for _, b in ds])
    return x, y


def folds(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold number of every example, stratified by class."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for label in np.unique(y):
        index = rng.permutation(np.flatnonzero(y == label))
        fold[index] = np.arange(len(index)) % k
    return fold


def one_fit(
    x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, size: int,
    constructor: dict[str, Any], fit: dict[str, Any], seed: int = 0,
) -> tuple[float, float, float]:
    """(wall s, head phase s, accuracy on the fold) of one user's call."""
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes=5, weights=WEIGHTS, input_shape=(size, size, 3),
        alpha=0.35, seed=seed, **constructor,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        history = tuner.fit(x, y, **fit)
    wall = time.perf_counter() - start
    assert tuner.model is not None
    pred = np.argmax(tuner.model.predict(xv, verbose=0, batch_size=64), axis=-1)
    result = (wall, history.reports[0].seconds, float(np.mean(pred == yv)))
    keras.backend.clear_session()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--views", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    parser.add_argument("--defaults", action="store_true", help="also fit(x, y) at 224 px")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--score-on", choices=("folds", "large"), default="folds")
    parser.add_argument(
        "--data", choices=("small", "large"), default="small",
        help="the photos the folds are drawn from: flowers/train or flowers-large/train",
    )
    parser.add_argument("--seeds", type=int, default=1, help="with --score-on large")
    parser.add_argument("--epochs", type=int, nargs=2, default=[5, 5], metavar=("H", "F"))
    args = parser.parse_args()
    epochs = dict(head_epochs=args.epochs[0], finetune_epochs=args.epochs[1])
    variants: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
        "no augmentation": (args.size, {}, epochs),
        "augment, uncached": (args.size, {"augment": "default", "cache": False}, epochs),
    }
    for k in args.views:
        variants[f"augment, views={k}"] = (
            args.size, {"augment": "default"}, {**epochs, "augment_views": k}
        )
    if args.defaults:
        variants["defaults @224"] = (224, {}, {})
        variants["defaults @224, augment"] = (224, {"augment": "default"}, {})
    source = DATA / "flowers-large" / "train" if args.data == "large" else None
    if source is not None and args.score_on == "large":
        parser.error("--data large is scored by its own folds; leave out --score-on large")
    data = {size: arrays(size, source) for size in {v[0] for v in variants.values()}}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    if args.score_on == "large":
        scored = {size: arrays(size, DATA / "flowers-large" / "train") for size in data}
        print(
            f"trained on flowers/train ({len(data[args.size][1])} images), scored on "
            f"flowers-large/train ({len(scored[args.size][1])}), {args.seeds} seeds, "
            f"epochs {args.epochs}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
            f"Keras {keras.__version__}"
        )
        rounds = [(seed, None) for seed in range(args.seeds)]
    else:
        fold = folds(data[args.size][1], args.folds)
        print(
            f"{'flowers-large/train' if source else 'flowers/train'}, {len(fold)} images, "
            f"{args.folds}-fold CV, {os.cpu_count()} CPUs, "
            f"epochs {args.epochs}, TF {tf.__version__}, Keras {keras.__version__}"
        )
        rounds = [(0, f) for f in range(args.folds)]
    for r, (seed, f) in enumerate(rounds):
        names = list(variants)
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:  # rotated order per round
            size, constructor, fit = variants[name]
            x, y = data[size]
            if f is None:
                result = one_fit(x, y, *scored[size], size, constructor, fit, seed=seed)
            else:
                result = one_fit(x[fold != f], y[fold != f], x[fold == f], y[fold == f],
                                 size, constructor, fit)
            results[name].append(result)
            print(f"  {'seed' if f is None else 'fold'} {r} {name:26s} {result[0]:6.1f} s  "
                  f"head {result[1]:5.1f} s  acc {result[2]:.3f}", flush=True)
    print("\n| variant | wall s (median) | head phase s | accuracy (mean ± sd over rounds) |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        a = np.array(runs)
        print(f"| {name} | {np.median(a[:, 0]):.1f} | {np.median(a[:, 1]):.1f} | "
              f"{a[:, 2].mean():.3f} ± {a[:, 2].std():.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"folds": args.folds, "size": args.size, "score_on": args.score_on, "data": args.data,
             "seeds": args.seeds, "epochs": args.epochs, "results": results,
             "hardware": f"{os.cpu_count()}-core CPU, no GPU"}, indent=1))


if __name__ == "__main__":
    main()
