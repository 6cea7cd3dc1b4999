"""Ranking bases before fine-tuning, against fine-tuning every one of them, on the flowers.

On ../shared/data/flowers, with the three real ImageNet weight files (MobileNetV2 alpha
0.5 and 0.35 at 224 px, MobileNet v1 alpha 0.25 at 128 px) and the same three
architectures with random weights as negative controls:

- ranking: `finetunekit.rank_bases("flowers/train", {label: base, ...})` with the
  library's defaults, timed from building the bases to the ranking; first the three
  pretrained bases and one random control (MobileNetV2 alpha 0.35), then all six once;
- fine-tuning: `FineTuner(name, num_classes=5, weights=..., input_shape=..., alpha=...)
  .fit(train)` of each candidate with the library's defaults (early stopping on, Keras'
  default verbosity, its bars written to a buffer), timed from building the tuner to
  the trained model, and its accuracy on the 150 images of flowers/test (measured after
  the clock stops).

The ranking of the four and the fine-tuning of the same four alternate, `--runs` times,
so that both see the same load on a shared machine; the time ratio is that of their
medians. The two other random controls are fine-tuned once, for the order of all six.

It prints both orders (by the ranking's primary score, by fine-tuned test accuracy), and
the time of the ranking against the time of fine-tuning the same candidates.

    python benchmarks/bench_selection.py            # everything (about 15 min on 2 cores)
    python benchmarks/bench_selection.py --rank-only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import finetunekit as ftk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
FLOWERS = DATA / "flowers"
W = DATA / "weights"
V2 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{}_224_no_top.h5"
REAL = {
    "v2 0.5": ("mobilenet_v2", W / V2.format("0.5"), 0.5, 224),
    "v2 0.35": ("mobilenet_v2", W / V2.format("0.35"), 0.35, 224),
    "v1 0.25": ("mobilenet", W / "derived" / "mobilenet_2_5_128_tf_no_top.h5", 0.25, 128),
}
#: label -> (base name, weights, alpha, input size)
CANDIDATES: dict[str, tuple[str, Path | None, float, int]] = {
    **{f"{label} imagenet": spec for label, spec in REAL.items()},
    **{
        f"{label} random": (name, None, alpha, size)
        for label, (name, _, alpha, size) in REAL.items()
    },
}
#: The target's set: the three pretrained bases and one random control.
FOUR = ["v2 0.5 imagenet", "v2 0.35 imagenet", "v1 0.25 imagenet", "v2 0.35 random"]


def base(label: str) -> keras.Model:
    name, weights, alpha, size = CANDIDATES[label]
    return ftk.load_base(name, weights=weights, input_shape=(size, size, 3), alpha=alpha)


def rank(labels: list[str]) -> tuple[ftk.Ranking, float]:
    keras.utils.set_random_seed(0)  # the random controls' initial weights
    started = time.perf_counter()
    ranking = ftk.rank_bases(FLOWERS / "train", {label: base(label) for label in labels}, seed=0)
    return ranking, time.perf_counter() - started


def fine_tune(label: str) -> tuple[float, float]:
    """(seconds, test accuracy) of FineTuner's defaults on flowers/train."""
    name, weights, alpha, size = CANDIDATES[label]
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    tuner = ftk.FineTuner(
        name, num_classes=5, weights=weights, input_shape=(size, size, 3), alpha=alpha, seed=0
    )
    train = ftk.data.from_directory(FLOWERS / "train", image_size=size, seed=0).train
    with contextlib.redirect_stdout(io.StringIO()):  # the default bars, off the screen
        tuner.fit(train)
    seconds = time.perf_counter() - started
    test = ftk.data.from_directory(FLOWERS / "test", image_size=size, seed=0).train
    right = total = 0
    for images, labels in test:
        predicted = np.argmax(tuner.model(images, training=False), axis=-1)
        right += int(np.sum(predicted == labels.numpy()))
        total += len(labels)
    return seconds, right / total


def warm_up() -> None:
    """Pays the process's first-use costs (allocator, tf.data, JPEG decoding) off the clock."""
    model = base("v2 0.35 random")
    train = ftk.data.from_directory(FLOWERS / "train", image_size=224, seed=0).train
    for images, _ in train:
        model(images, training=False)
    del model


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Agreement of two orders of the same names: 1 the same, -1 reversed."""
    pos = {name: i for i, name in enumerate(b)}
    pairs = [(x, y) for i, x in enumerate(a) for y in a[i + 1 :]]
    return sum(1 if pos[x] < pos[y] else -1 for x, y in pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed rankings of the four")
    parser.add_argument("--rank-only", action="store_true", help="skip the fine-tuning")
    args = parser.parse_args()
    missing = [p for p in [FLOWERS / "train", *(s[1] for s in REAL.values())] if not p.exists()]
    if missing:
        raise SystemExit(f"needs {missing} (../shared/data)")
    print(
        f"flowers: 350 train / 150 test images, {os.cpu_count()} CPUs, TF {tf.__version__}, "
        f"Keras {keras.__version__}"
    )
    warm_up()
    four_seconds, four_tune_seconds = [], []
    tuned: dict[str, tuple[float, float]] = {}
    for run in range(args.runs):
        ranking4, seconds = rank(FOUR)
        four_seconds.append(seconds)
        print(f"ranking of the four, run {run + 1}: {seconds:.1f} s", flush=True)
        if args.rank_only:
            continue
        for label in FOUR:
            tuned[label] = fine_tune(label)
        four_tune_seconds.append(sum(tuned[label][0] for label in FOUR))
        print(
            f"fine-tuning of the four, run {run + 1}: {four_tune_seconds[-1]:.1f} s "
            f"(ratio {seconds / four_tune_seconds[-1]:.2f})",
            flush=True,
        )
    ranking6, six_seconds = rank(list(CANDIDATES))
    print(f"\nranking of all six: {six_seconds:.1f} s\n{ranking6}\n", flush=True)
    print(f"ranking of the four (last run):\n{ranking4}\n", flush=True)
    order = ranking6.names
    pretrained_first = all(n.endswith("imagenet") for n in order[:3])
    print(f"every pretrained base above every random one: {pretrained_first}")
    if args.rank_only:
        return
    for label in CANDIDATES:
        if label not in tuned:
            tuned[label] = fine_tune(label)
    for label in CANDIDATES:
        print(f"fine-tuned {label}: {tuned[label][0]:.1f} s, test accuracy {tuned[label][1]:.3f}",
              flush=True)  # fmt: skip
    by_accuracy = sorted(tuned, key=lambda label: -tuned[label][1])
    print("\n| base | knn | logme | linear | rank s | fine-tune s | test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for row in ranking6:
        seconds, accuracy = tuned[row.name]
        s = row.scores
        print(
            f"| {row.name} | {s['knn']} | {s['logme']} | {s['linear']} | {row.seconds:.1f} "
            f"| {seconds:.1f} | {accuracy:.3f} |"
        )
    print(f"\norder by the ranking (knn):    {order}")
    print(f"order by fine-tuned accuracy:  {by_accuracy}")
    for metric in ("knn", "logme", "linear"):
        by_metric = sorted(
            order, key=lambda n: -next(r for r in ranking6 if r.name == n).scores[metric].value
        )
        print(f"Kendall tau, {metric} vs test accuracy: {kendall_tau(by_metric, by_accuracy):+.2f}")
    four_tune = statistics.median(four_tune_seconds)
    six_tune = sum(tuned[label][0] for label in CANDIDATES)  # the four: their last run
    four_rank = statistics.median(four_seconds)
    print(
        f"time, the four: ranking {four_rank:.1f} s vs fine-tuning {four_tune:.1f} s (medians "
        f"of {args.runs}, alternated): {four_rank / four_tune:.2f}; runs: "
        f"{', '.join(f'{r:.1f}' for r in four_seconds)} s vs "
        f"{', '.join(f'{t:.1f}' for t in four_tune_seconds)} s"
    )
    print(
        f"time, all six: ranking {six_seconds:.1f} s vs fine-tuning {six_tune:.1f} s: "
        f"{six_seconds / six_tune:.2f}"
    )
    four_order = [n for n in by_accuracy if n in FOUR]
    print(f"the four: ranking order {ranking4.names}, fine-tuned order {four_order}")


if __name__ == "__main__":
    main()
