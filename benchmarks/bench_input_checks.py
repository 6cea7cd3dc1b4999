"""What the input checks of `finetunekit.data.prepare` cost, side by side in one process.

On ../shared/data/flowers/train (350 photos, 160 px, batches of 32), the call a user's
`fit` makes: `data.prepare(train, holdout=0.2)` and then one full pass over its training
dataset (what the feature cache or an epoch reads). Beside it, labelled, the same pass
over the dataset without the per-batch label and NaN assert (`guard_labels`), and the
pixel check of one batch (`check_pixels`) on its own. Medians of several runs; the
machine is shared and noisy, so small differences are noise.

    python benchmarks/bench_input_checks.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from finetunekit import data  # noqa: E402
from finetunekit.data import _guards  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", SHARED)) / "flowers" / "train"


def _pass(dataset) -> float:
    start = time.perf_counter()
    for _ in dataset:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    train, _, _ = data.from_directory(DATA, image_size=160, seed=0)
    prepare_s, guarded_s, bare_s, pixels_s = [], [], [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        prepared = data.prepare(train, holdout=0.2)
        prepare_s.append(time.perf_counter() - start)
        for first in ((True, False) if len(prepare_s) % 2 else (False, True)):  # alternate
            if first:
                with prepared.errors():
                    guarded_s.append(_pass(prepared.train))
            else:
                bare_s.append(_pass(train))
        batch = next(iter(train.take(1)))[0].numpy()
        start = time.perf_counter()
        _guards.check_pixels(batch, "training data")
        pixels_s.append(time.perf_counter() - start)
    median = statistics.median
    print(f"flowers/train, 350 photos at 160 px, medians of {args.runs} runs")
    print(f"  prepare (labels of 4 batches, first batch, pixel check): {median(prepare_s):.3f} s")
    print(f"  one pass, with the per-batch label/NaN assert:          {median(guarded_s):.3f} s")
    print(f"  one pass, the same dataset without it (labelled):       {median(bare_s):.3f} s")
    print(f"  check_pixels on one batch of 32: {median(pixels_s) * 1e3:.1f} ms")
    print(f"  (ratio with/without assert: {median(guarded_s) / median(bare_s):.2f})")


if __name__ == "__main__":
    main()
