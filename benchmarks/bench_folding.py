"""Frozen passes with BatchNormalization folded into the convolutions, against Keras' call.

`finetunekit._folding` runs every pass through frozen layers with each BatchNormalization
folded into the convolution before it (see its docstring). This script measures what
that does, on ../shared/data/flowers with the real ImageNet weights, folding on (the
library as shipped) and off (`frozen_call` replaced by the plain Keras call, as before),
alternated in one process:

- pass:     the frozen MobileNetV2 (alpha 0.35, 160 px) over the 350 training photos held
            in memory, batches of 32 in the library's pieces, one traced function (traced
            off the clock), and how far its outputs are from Keras';
- trace:    tracing that function and its first call;
- fit 160:  `FineTuner("mobilenet_v2", alpha=0.35, input_shape=(160, 160, 3), ...)
            .fit(train, head_epochs=5, finetune_epochs=5)`, the rest at its defaults;
- augment:  the same with `augment="default"` (4 stored views);
- defaults: `FineTuner("mobilenet_v2", num_classes=5, weights=..., alpha=0.35).fit(train)`
            at the base's own 224 px;
- ranking:  `rank_bases` of the three pretrained bases and one random control
            (benchmarks/bench_selection.py).

The fits also report their accuracy on flowers/test, folded and not.

    python benchmarks/bench_folding.py --runs 3
    python benchmarks/bench_folding.py --runs 3 --only pass trace "fit 160"
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_flowers as flowers  # noqa: E402
import bench_selection as selection  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import finetunekit as ftk  # noqa: E402
from finetunekit import _folding, _pieces  # noqa: E402

SHIPPED = _folding.frozen_call


def keras_call(model: keras.Model, inputs: Any) -> Any:
    return model(inputs, training=False)


def _pooled(base: keras.Model, size: int) -> Any:
    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3))], autograph=False)
    def pooled(x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(_folding.frozen_call(base, x), axis=[1, 2])

    return pooled


def the_pass(train: tf.data.Dataset, size: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(the pass over the images, tracing it and its first call)."""
    base = ftk.load_base("mobilenet_v2", weights=flowers.WEIGHTS, input_shape=(size, size, 3),
                         alpha=0.35)
    images = np.concatenate([np.asarray(x) for x, _ in train])
    traced: dict[Any, Any] = {}

    def run() -> np.ndarray:
        key = _folding.frozen_call
        if key not in traced:
            traced[key] = _pooled(base, size)
            traced[key](images[:32])  # off the clock
        pooled = traced[key]
        piece = _pieces.piece_size(pooled)
        return np.concatenate([
            np.asarray(_pieces.call_in_pieces(pooled, images[start : start + 32], piece))
            for start in range(0, len(images), 32)
        ])

    def trace() -> None:
        _pooled(base, size)(images[:32])

    return run, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only these")
    args = parser.parse_args()
    train160, test160 = flowers.load(160)
    train224, test224 = flowers.load(224)
    flowers.warm_up(train160, 160)
    run_pass, trace = the_pass(train160, 160)
    calls: dict[str, tuple[Callable[[], Any], tf.data.Dataset | None]] = {
        "pass": (run_pass, None),
        "trace": (trace, None),
        "fit 160": (lambda: flowers.finetunekit_recipe(train160, 160, (5, 5)), test160),
        "augment": (
            lambda: flowers.finetunekit_recipe(train160, 160, (5, 5), augment="default"),
            test160,
        ),
        "defaults": (lambda: flowers.defaults_run(train224), test224),
        "ranking": (lambda: selection.rank(selection.FOUR), None),
    }
    chosen = [name for name in calls if not args.only or name in args.only]
    print(f"{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}")
    seconds: dict[tuple[str, str], list[float]] = {}
    accuracy: dict[tuple[str, str], list[float]] = {}
    outputs: dict[str, np.ndarray] = {}
    for run in range(args.runs):
        for name in chosen:
            modes = ["folded", "keras"] if run % 2 == 0 else ["keras", "folded"]
            for mode in modes:
                _folding.frozen_call = SHIPPED if mode == "folded" else keras_call
                keras.utils.set_random_seed(0)
                started = time.perf_counter()
                result = calls[name][0]()
                took = time.perf_counter() - started
                seconds.setdefault((name, mode), []).append(took)
                line = f"run {run + 1} {name:8s} {mode:6s} {took:6.2f} s"
                test = calls[name][1]
                if test is not None:
                    acc = flowers.accuracy(result[0], test, None)
                    accuracy.setdefault((name, mode), []).append(acc)
                    line += f"  test accuracy {acc:.3f}"
                if name == "pass":
                    outputs[mode] = result
                print(line, flush=True)
                keras.backend.clear_session()
    _folding.frozen_call = SHIPPED
    print("\n| call | folded s | Keras' call s | Keras / folded | test accuracy folded / Keras |")
    print("|---|---:|---:|---:|---|")
    for name in chosen:
        on = statistics.median(seconds[name, "folded"])
        off = statistics.median(seconds[name, "keras"])
        acc = ""
        if (name, "folded") in accuracy:
            acc = (f"{statistics.median(accuracy[name, 'folded']):.3f} / "
                   f"{statistics.median(accuracy[name, 'keras']):.3f}")
        print(f"| {name} | {on:.2f} | {off:.2f} | {off / on:.2f}x | {acc} |")
    if "folded" in outputs:
        diff = np.abs(outputs["folded"] - outputs["keras"]).max()
        scale = np.abs(outputs["keras"]).max()
        print(f"\npooled features, folded against Keras: max |diff| {diff:.2e} "
              f"({diff / scale:.1e} of the largest feature)")


if __name__ == "__main__":
    main()
