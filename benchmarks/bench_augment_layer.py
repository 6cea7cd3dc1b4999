"""The augmentation preset alone: one composed transform against Keras' three layers.

`finetunekit.data.augmentation("default")` is one `FlipRotateZoom` layer, which draws a
flip, a rotation and a zoom per image and resamples once; before, it was Keras'
`RandomFlip`, `RandomRotation` and `RandomZoom` at the same amounts, which resample
twice. This script times both, traced, on the same batches of random 0-255 pixels,
alternated in one process (the machine is shared: compare within a round), and prints
the median of the rounds. The fit-level effect is measured by bench_flowers.py's labelled
variant "finetunekit augment, Keras' layers".

    python benchmarks/bench_augment_layer.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import finetunekit as ftk  # noqa: E402


def keras_layers() -> keras.Sequential:
    """Keras' three random layers at the "default" preset's amounts."""
    amounts = ftk.data.AUGMENTATION_PRESETS["default"]
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=0),
            keras.layers.RandomRotation(amounts["rotation"], seed=0),
            keras.layers.RandomZoom(amounts["zoom"], seed=0),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=35, help="batches per timing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    shape = (args.batch_size, args.size, args.size, 3)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, shape).astype("float32"))
    composed, chained = ftk.data.augmentation("default", seed=0), keras_layers()
    runs = {
        "composed (finetunekit)": tf.function(lambda x: composed(x, training=True)),
        "Keras' three layers": tf.function(lambda x: chained(x, training=True)),
    }
    for run in runs.values():
        run(images)  # traced before any clock starts
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            start = time.perf_counter()
            for _ in range(args.batches):
                runs[name](images).numpy()
            seconds[name].append(time.perf_counter() - start)
    count = args.batches * args.batch_size
    print(f"{count} images of {args.size} px per timing, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}")
    for name, values in seconds.items():
        print(f"  {name:<24} median {statistics.median(values):.2f} s  "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(seconds["Keras' three layers"]) / statistics.median(
        seconds["composed (finetunekit)"]
    )
    print(f"Keras' layers / composed: {ratio:.2f}x on the medians")


if __name__ == "__main__":
    main()
