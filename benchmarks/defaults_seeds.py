"""`FineTuner(...).fit(train)` with nothing but the data, over several seeds.

On ../shared/data/flowers with the real MobileNetV2-alpha0.35 ImageNet weights at the base's
own 224 px, this runs the library's defaults and, for comparison, the previous defaults (a
plain head at 3e-3, up to 30 head epochs, patience 5), each with the same seeds. The seed
sets the shuffles, the held-out split and the initial head weights. It prints the test
accuracy of every run and the mean per setting.

    python benchmarks/defaults_seeds.py                  # seeds 0-9, both settings
    python benchmarks/defaults_seeds.py --seeds 0 1 2 --only current
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from bench_flowers import FLOWERS, WEIGHTS, accuracy, load  # noqa: E402  (this folder)

import finetunekit as ftk  # noqa: E402

#: name -> (add_head arguments, fit arguments); "current" is the library's defaults.
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "current": ({}, {}),
    "previous": (
        {"normalize": False},
        {"head_learning_rate": 3e-3, "head_epochs": 30, "patience": 5},
    ),
}


def run(setting: str, seed: int) -> tuple[float, int]:
    """Test accuracy and number of epochs of one `fit` with these defaults and seed."""
    head_args, fit_args = SETTINGS[setting]
    keras.utils.set_random_seed(seed)
    train, test = load(224, seed=seed)
    tuner = ftk.FineTuner("mobilenet_v2", num_classes=5, weights=WEIGHTS, alpha=0.35, seed=seed)
    tuner.load_base().freeze().add_head(**head_args)
    history = tuner.fit(train, verbose=0, **fit_args)
    assert tuner.model is not None
    return accuracy(tuner.model, test, None), len(history.epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args()
    if not WEIGHTS.exists() or not (FLOWERS / "train").is_dir():
        raise SystemExit(f"needs {WEIGHTS} and {FLOWERS} (../shared/data)")
    accuracies: dict[str, list[float]] = {name: [] for name in args.only}
    for seed in args.seeds:
        for name in args.only:
            start = time.perf_counter()
            acc, epochs = run(name, seed)
            accuracies[name].append(acc)
            wall = time.perf_counter() - start
            print(f"  {name:10s} seed {seed}: acc {acc:.3f} ({epochs} epochs, {wall:.1f} s)")
            keras.backend.clear_session()
    print()
    print("| setting | mean test accuracy | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
    print("|---|---:|" + "---:|" * len(args.seeds))
    for name, values in accuracies.items():
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {statistics.mean(values):.3f} | {cells} |")


if __name__ == "__main__":
    main()
