"""Frozen passes in cache-sized pieces against whole batches, on the calls users make.

`finetunekit._pieces` runs every batch through frozen layers in pieces of about
`piece_bytes()` (a share of the CPU's largest cache) of the pass's largest per-image
tensor (see its docstring). This script measures what that does to the calls a user
makes, on ../shared/data/flowers with the real ImageNet weights, alternated in one
process: the library as shipped ("shipped"), pieces of the fixed 20 MiB measured on an
AMD EPYC ("20 MiB"), and every batch whole ("whole"):

- pass:     the frozen MobileNetV2 (alpha 0.5, 224 px) over 320 images held in memory,
            batches of 32, one traced function: the pass alone;
- fit 160:  `FineTuner("mobilenet_v2", alpha=0.35, input_shape=(160, 160, 3), ...)
            .fit(train, head_epochs=5, finetune_epochs=5)`, the rest at its defaults;
- augment:  the same with `augment="default"`;
- defaults: `FineTuner("mobilenet_v2", num_classes=5, weights=..., alpha=0.35).fit(train)`
            at the base's own 224 px;
- ranking:  `rank_bases` of the three pretrained bases and one random control
            (benchmarks/bench_selection.py).

    python benchmarks/bench_pieces.py --runs 3
    python benchmarks/bench_pieces.py --runs 3 --only pass ranking
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_flowers as flowers  # noqa: E402
import bench_selection as selection  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import finetunekit as ftk  # noqa: E402
from finetunekit import _pieces  # noqa: E402

SHIPPED = _pieces.piece_bytes()
MODES = {"shipped": SHIPPED, "20 MiB": _pieces.PIECE_BYTES, "whole": 2**62}


def the_pass() -> Callable[[], None]:
    base = selection.base("v2 0.5 imagenet")
    images = np.random.default_rng(0).uniform(0, 255, (320, 224, 224, 3)).astype("float32")

    @tf.function(input_signature=[tf.TensorSpec((None, 224, 224, 3))])
    def pooled(x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(base(x, training=False), axis=[1, 2])

    pooled(images[:32])  # traced off the clock

    def run() -> None:
        piece = _pieces.piece_size(pooled)
        for start in range(0, len(images), 32):
            np.asarray(_pieces.call_in_pieces(pooled, images[start : start + 32], piece))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only these")
    args = parser.parse_args()
    train160, _ = flowers.load(160)
    train224 = ftk.data.from_directory(flowers.FLOWERS / "train", image_size=224, seed=0).train
    flowers.warm_up(train160, 160)
    calls: dict[str, Callable[[], object]] = {
        "pass": the_pass(),
        "fit 160": lambda: flowers.finetunekit_recipe(train160, 160, (5, 5)),
        "augment": lambda: flowers.finetunekit_recipe(train160, 160, (5, 5), augment="default"),
        "defaults": lambda: flowers.defaults_run(train224),
        "ranking": lambda: selection.rank(selection.FOUR),
    }
    chosen = [name for name in calls if not args.only or name in args.only]
    print(f"{os.cpu_count()} CPUs, TF {tf.__version__}; shipped: {SHIPPED / 2**20:.0f} MiB pieces")
    seconds: dict[tuple[str, str], list[float]] = {}
    for run in range(args.runs):
        for name in chosen:
            modes = list(MODES) if run % 2 == 0 else list(reversed(MODES))
            for mode in modes:
                _pieces.piece_bytes = lambda mode=mode: MODES[mode]  # type: ignore[assignment]
                started = time.perf_counter()
                calls[name]()
                took = time.perf_counter() - started
                seconds.setdefault((name, mode), []).append(took)
                print(f"run {run + 1} {name:8s} {mode:7s} {took:6.2f} s", flush=True)
    print(
        "\n| call | shipped s | 20 MiB s | whole s | 20 MiB / shipped | whole / shipped |"
        "\n|---|---|---|---|---|---|"
    )
    for name in chosen:
        shipped, fixed, whole = (statistics.median(seconds[name, mode]) for mode in MODES)
        print(
            f"| {name} | {shipped:.2f} | {fixed:.2f} | {whole:.2f} | {fixed / shipped:.2f}x "
            f"| {whole / shipped:.2f}x |"
        )


if __name__ == "__main__":
    main()
