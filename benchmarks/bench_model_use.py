"""After training, on the real flowers: the figures of docs/using-the-model.md and its targets.

Fine-tunes MobileNetV2 alpha 0.35 (the real ImageNet weights in ../shared/data/weights) on
flowers/train with FineTuner's defaults at 160 px, saves it with its class names, and
measures, in one process:

- evaluate on flowers/test: accuracy, per-class table, confusion matrix, top losses;
- export to LiteRT float32, float16, dynamic (int8 weights) and int8 calibrated on
  flowers/train: file sizes, and the agreement of each with the Keras model on
  flowers/test (top-1, max |diff|), run with the LiteRT interpreter;
- `Classifier.predict` on the folder of 150 test images against `model.predict` on the
  same images loaded by hand (`keras.utils.load_img` + `img_to_array`, then one
  `model.predict` on the stacked array): the median of --runs runs of each, alternated.

It writes docs/images/{history,confusion,top_losses}.png and benchmarks/results/model_use.json.

    python benchmarks/bench_model_use.py            # about 5 minutes on 2 CPU cores
    python benchmarks/bench_model_use.py --runs 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
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
FLOWERS = DATA / "flowers"
IMAGES = ROOT / "docs" / "images"
RESULTS = ROOT / "benchmarks" / "results" / "model_use.json"
SIZE = 160


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{os.cpu_count()}-core {names[0] if names else platform.processor()} CPU, no GPU"


def train(workdir: Path) -> tuple[Path, Any]:
    keras.utils.set_random_seed(0)
    data, _, class_names = ftk.data.from_directory(FLOWERS / "train", image_size=SIZE, seed=0)
    tuner = ftk.FineTuner(
        "mobilenet_v2",
        num_classes=len(class_names),
        weights=str(WEIGHTS),
        input_shape=(SIZE, SIZE, 3),
        alpha=0.35,
        seed=0,
    )
    history = tuner.fit(data, verbose=0)
    path = ftk.save_model(
        tuner.model,
        workdir / "flowers.keras",
        class_names=class_names,
        base="mobilenet_v2",
        recipe={"defaults": True, "image_size": SIZE, "alpha": 0.35},
    )
    return path, history


def by_hand(model: keras.Model, files: list[str]) -> np.ndarray:
    images = [
        keras.utils.img_to_array(keras.utils.load_img(f, target_size=(SIZE, SIZE))) for f in files
    ]
    return model.predict(np.stack(images), verbose=0)


def time_predict(path: Path, runs: int) -> dict[str, Any]:
    classifier = ftk.load(path)
    folder = FLOWERS / "test"
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    ours_out = classifier.predict(folder).outputs  # warm both paths up once
    hand_out = by_hand(classifier.model, files)
    ours, hand = [], []
    for run in range(runs):
        order = ("ours", "hand") if run % 2 == 0 else ("hand", "ours")
        for name in order:
            start = time.perf_counter()
            if name == "ours":
                classifier.predict(folder)
            else:
                by_hand(classifier.model, files)
            (ours if name == "ours" else hand).append(time.perf_counter() - start)
    return {
        "images": len(files),
        "runs": runs,
        "predict_folder_s": statistics.median(ours),
        "by_hand_s": statistics.median(hand),
        "speedup": statistics.median(hand) / statistics.median(ours),
        "top1_same_as_by_hand": float(np.mean(ours_out.argmax(1) == hand_out.argmax(1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each predict path")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"hardware": cpu(), "image_size": SIZE}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        start = time.perf_counter()
        saved, history = train(workdir)
        results["train_s"] = time.perf_counter() - start
        results["epochs"] = {
            p: list(history.phases).count(p) for p in dict.fromkeys(history.phases)
        }
        # history.png is drawn by docs/make_figures.py, from the same kind of run.
        report = ftk.evaluate(saved, FLOWERS / "test")
        print(report)
        report.plot_confusion(IMAGES / "confusion.png")
        report.plot_top_losses(IMAGES / "top_losses.png", k=9)
        results["test"] = {
            "accuracy": report.accuracy,
            "macro_f1": report.macro_f1,
            "table": str(report),
        }
        test = FLOWERS / "test"
        exports = {
            "litert_float32": ftk.export(saved, workdir / "f32.tflite", parity_data=test),
            "litert_float16": ftk.export(
                saved, workdir / "f16.tflite", quantize="float16", parity_data=test
            ),
            "litert_dynamic": ftk.export(
                saved, workdir / "dyn.tflite", quantize="dynamic", parity_data=test
            ),
            "litert_int8": ftk.export(
                saved,
                workdir / "int8.tflite",
                quantize="int8",
                representative_data=FLOWERS / "train",
                parity_data=test,
            ),
        }
        float32, int8 = exports["litert_float32"], exports["litert_int8"]
        for name, exported in exports.items():
            print(exported)
            results[name] = {
                "size_bytes": exported.size_bytes,
                "size_ratio": exported.size_bytes / float32.size_bytes,
                "images": exported.images,
                "top1_agreement": exported.top1_agreement,
                "max_abs_diff": exported.max_abs_diff,
                "runtime": exported.runtime,
            }
        results["int8_size_ratio"] = int8.size_bytes / float32.size_bytes
        results["keras_size_bytes"] = saved.stat().st_size
        results["predict"] = time_predict(saved, args.runs)
    print(json.dumps({k: v for k, v in results.items() if k != "test"}, indent=2))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
