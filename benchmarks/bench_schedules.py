"""Schedules side by side, chosen on training data: two phases, gradual unfreezing, per-block
rates, warm-up/cosine and their combinations, plus a re-check of the head rate and dropout.

Every run is the call a user makes, `FineTuner("mobilenet_v2", num_classes=5, weights=...,
alpha=0.35, seed=s).fit(x, y, verbose=0, **setting)`: early stopping on its own held-out
20% of the training images, everything else at its default. MobileNetV2 alpha 0.35 with its
real ImageNet weights, at 160 px to keep the runs affordable on a shared 2-core CPU.

Selection uses training data only:
- `flowers`: 5-fold cross-validation of the 350 flowers/train photos (stratified); seed s
  trains on the four other folds (280 photos) and is scored on fold s.
- `large`: a stratified 20% of flowers-large/train held out per seed (a different split for
  each seed); seed s trains on the other 80% (about 1,590 photos) and is scored on it.
The same models are also scored on the 150 flowers/test photos, which no run trains or
chooses on (flowers-large holds none of them): reported, never used to choose.

Results are appended run by run to benchmarks/results/schedules.jsonl (a run already there is
skipped, so the script resumes); `--report` prints the table for the docs.

    python benchmarks/bench_schedules.py --data flowers --seeds 0 1 2 3 4
    python benchmarks/bench_schedules.py --data large --only two-phase gradual
    python benchmarks/bench_schedules.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import finetunekit as ftk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
WEIGHTS = DATA / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
RESULTS = ROOT / "benchmarks" / "results" / "schedules.jsonl"
SIZE = 160

#: name -> fit settings (the library's defaults for everything not named).
SETTINGS: dict[str, dict[str, Any]] = {
    "two-phase": {},
    "gradual": {"unfreeze": (1, 2, 4)},
    "decay": {"unfreeze": 4, "lr_decay": 0.5},
    "warmup-cosine": {"warmup": 0.1, "cosine": True},
    "gradual+decay": {"unfreeze": (1, 2, 4), "lr_decay": 0.5},
    "gradual+decay@1e-4": {"unfreeze": (1, 2, 4), "lr_decay": 0.5, "finetune_learning_rate": 1e-4},
    "all": {"unfreeze": (1, 2, 4), "lr_decay": 0.5, "warmup": 0.1, "cosine": True},
    # the head rate and dropout of the defaults, re-checked on training data
    "head-lr-5e-3": {"head_learning_rate": 5e-3},
    "head-lr-5e-2": {"head_learning_rate": 5e-2},
    "dropout-0.2": {"dropout": 0.2},
    "dropout-0.7": {"dropout": 0.7},
}


def images(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = keras.utils.image_dataset_from_directory(
        folder, image_size=(SIZE, SIZE), batch_size=64, shuffle=False, verbose=False
    )
    x = np.concatenate([b.numpy() for b, _ in ds]).astype("float32")
    y = np.concatenate([labels.numpy() for _, labels in ds])
    return x, y


def split(y: np.ndarray, data: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out): fold `seed` of 5 (flowers) or a 20% split by `seed`."""
    held = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        if data == "flowers":
            rows = np.random.default_rng(1234).permutation(rows)
            held.append(np.array_split(rows, 5)[seed % 5])
        else:
            rows = np.random.default_rng(seed).permutation(rows)
            held.append(rows[: round(0.2 * len(rows))])
    out = np.concatenate(held)
    return np.setdiff1d(np.arange(len(y)), out), out


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=64), -1) == y))


def done() -> set[tuple[str, str, int]]:
    if not RESULTS.exists():
        return set()
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {(r["data"], r["setting"], r["seed"]) for r in rows}


def run(data: str, settings: list[str], seeds: list[int]) -> None:
    folder = DATA / "flowers" / "train" if data == "flowers" else DATA / "flowers-large" / "train"
    x, y = images(folder)
    x_test, y_test = images(DATA / "flowers" / "test")
    finished = done()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        train, held = split(y, data, seed)
        for name in settings:
            if (data, name, seed) in finished:
                continue
            keras.utils.set_random_seed(seed)
            tuner = ftk.FineTuner(
                "mobilenet_v2", num_classes=5, weights=WEIGHTS, alpha=0.35, seed=seed
            )
            start = time.perf_counter()
            history = tuner.fit(x[train], y[train], verbose=0, **SETTINGS[name])
            seconds = time.perf_counter() - start
            assert tuner.model is not None
            row = {
                "data": data,
                "setting": name,
                "seed": seed,
                "train_images": int(len(train)),
                "selection_accuracy": accuracy(tuner.model, x[held], y[held]),
                "test_accuracy": accuracy(tuner.model, x_test, y_test),
                "seconds": seconds,
                "epochs": {p: history.phases.count(p) for p in dict.fromkeys(history.phases)},
                "size": SIZE,
                "machine": f"{platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} cores",
            }
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{data} {name:20s} seed {seed}: selection {row['selection_accuracy']:.3f} "
                f"test {row['test_accuracy']:.3f} {seconds:6.1f} s",
                flush=True,
            )
            keras.backend.clear_session()


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def report() -> None:
    """Mean ± sd per setting, and against two-phase seed by seed (the selection scores)."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    for data in ("flowers", "large"):
        mine = [r for r in rows if r["data"] == data]
        if not mine:
            continue
        what = "5-fold CV of flowers/train" if data == "flowers" else "20% of flowers-large/train"
        print(f"\n{data}: chosen on {what}; flowers/test only reported\n")
        print(
            "| setting | seeds | selection accuracy | vs two-phase (won/tied/lost) | "
            "flowers/test accuracy | fit time (median) |"
        )
        print("|---|---|---|---|---|---|")
        base = {r["seed"]: r["selection_accuracy"] for r in mine if r["setting"] == "two-phase"}
        for name in SETTINGS:
            runs = [r for r in mine if r["setting"] == name]
            if not runs:
                continue
            sel = [r["selection_accuracy"] for r in runs]
            test = [r["test_accuracy"] for r in runs]
            paired = [r["selection_accuracy"] - base[r["seed"]] for r in runs if r["seed"] in base]
            versus = "-"
            if name != "two-phase" and paired:
                won = sum(d > 1e-9 for d in paired)
                lost = sum(d < -1e-9 for d in paired)
                versus = (
                    f"{statistics.mean(paired):+.3f} ({won}/{len(paired) - won - lost}/{lost})"
                )
            print(
                f"| {name} | {len(runs)} | {statistics.mean(sel):.3f} ± {_spread(sel):.3f} | "
                f"{versus} | {statistics.mean(test):.3f} ± {_spread(test):.3f} | "
                f"{statistics.median(r['seconds'] for r in runs):.0f} s |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("flowers", "large"), default="flowers")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(range(5)))
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--report", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    if args.report:
        report()
        return
    if not WEIGHTS.exists():
        raise SystemExit(f"needs {WEIGHTS} and the flowers photos (../shared/data)")
    run(args.data, [n for n in SETTINGS if n in args.only], args.seeds)


if __name__ == "__main__":
    main()
