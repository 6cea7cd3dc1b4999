"""Predicting and evaluating with and without tf.data's autotuning, alternated in one process.

`Classifier.predict` and `finetunekit.evaluate` read their batches without tf.data's
autotuning (`caching.untuned`): deleting an iterator of an autotuned pipeline waits for
the tuner's next wake-up. This script switches that off again (the batches read as
built, autotuned) and on, alternately, on the 150 photos of flowers/test read from
their files, with MobileNetV2 alpha 0.35 at 160 px (real ImageNet weights, an untrained
head: the reading is timed, not the answers). Prints the median of --runs calls of each.

    python benchmarks/bench_read_autotune.py --runs 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import finetunekit as ftk  # noqa: E402
from finetunekit import caching, evaluation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
WEIGHTS = DATA / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
TEST = str(DATA / "flowers" / "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes=5, weights=WEIGHTS, input_shape=(160, 160, 3), alpha=0.35,
        seed=0,
    )
    tuner.load_base()
    tuner.add_head()
    tuner.class_names = tuple(sorted(p.name for p in Path(TEST).iterdir() if p.is_dir()))
    with tempfile.TemporaryDirectory() as workdir:
        classifier = ftk.load(tuner.save(Path(workdir) / "flowers.keras"))
    off = (caching.untuned, evaluation.untuned)
    calls: dict[str, Callable[[], object]] = {
        "predict": lambda: classifier.predict(TEST),
        "evaluate": lambda: ftk.evaluate(classifier, TEST),
    }
    for call in calls.values():
        call()  # traces and first reads, outside the timing
    times: dict[str, list[float]] = {}
    for run in range(args.runs):
        for autotune in (True, False) if run % 2 == 0 else (False, True):
            caching.untuned, evaluation.untuned = (
                (lambda ds: ds, lambda ds: ds) if autotune else off
            )
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                key = f"{name}, autotuning {'on' if autotune else 'off (as shipped)'}"
                times.setdefault(key, []).append(time.perf_counter() - start)
    caching.untuned, evaluation.untuned = off
    print(f"150 files of flowers/test, 160 px, {os.cpu_count()} CPUs, {args.runs} runs each")
    for key, runs in sorted(times.items()):
        print(f"{key:38s} median {statistics.median(runs):.2f} s  "
              f"runs {', '.join(f'{t:.2f}' for t in runs)}")


if __name__ == "__main__":
    main()
