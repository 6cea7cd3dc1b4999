"""Where the int8 export loses agreement, and what wins some back.

Fine-tunes the model of bench_model_use.py (MobileNetV2 alpha 0.35, 160 px, the real
ImageNet weights, FineTuner's defaults on flowers/train, seed 0) or, with --models four,
that one and three more (seed 1; alpha 0.5; 224 px), then measures top-1 agreement with
the Keras model of int8 LiteRT files, all calibrated on the 350 photos of flowers/train,
on flowers/test (150 photos, for reporting) and on flowers-large/train (1,989 other
photos, the set to choose on):

- converter: TensorFlow's converter alone, weights rounded to nearest
  (`export(..., gptq=False, fit_head=False)`);
- head fit: the converter's body, the output layer fitted to its int8 features of the
  calibration photos (`export(..., gptq=False, fit_head=True)`);
- GPTQ: convolution kernels rounded by GPTQ on 128 of the calibration photos
  (`export(..., fit_head=False)`);
- export: `finetunekit.export(..., quantize="int8")` with its defaults: GPTQ and the
  head fit;
- float head: the base in int8 and the head (normalisation, dense layer) in float; the
  base's pooled features are compared with the float ones (relative L2 error);
- rescaled: the model rewritten before conversion so that every channel of a ReLU6
  output that feeds a depthwise convolution fills the int8 range on the calibration
  photos (its batch normalisation scaled up by 6 / calibrated max, at most 16x, the
  depthwise kernel scaled down as much: per-channel weight quantization absorbs it);
- equalized: cross-layer equalization of the linear bottlenecks: every channel of the
  tensors joined by residual additions is scaled so that its calibrated range is the
  widest channel's (at most 16x), and the 1x1 convolutions that read it are scaled
  down as much. The float model is unchanged (to 1e-5).

    python benchmarks/bench_int8_rewrites.py                # about 3 minutes, 2 CPU cores
    python benchmarks/bench_int8_rewrites.py --models four  # about 20 minutes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_model_use as bench  # noqa: E402

import finetunekit as ftk  # noqa: E402
from finetunekit import exporting  # noqa: E402

LARGE = bench.DATA / "flowers-large" / "train"


def int8(model: keras.Model, calibration: np.ndarray, path: Path) -> Callable[..., np.ndarray]:
    """Converts `model` to int8 LiteRT as `export` does; returns a batched runner."""
    from ai_edge_litert.interpreter import Interpreter

    model.export(
        str(path),
        format="litert",
        verbose=False,
        optimizations=[tf.lite.Optimize.DEFAULT],
        representative_dataset=exporting._representative(calibration),
    )
    interpreter = Interpreter(model_path=str(path))
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        results = []
        for i in range(0, len(x), 64):
            batch = x[i : i + 64]
            interpreter.resize_tensor_input(inp, batch.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(inp, batch)
            interpreter.invoke()
            results.append(interpreter.get_tensor(out).copy())
        return np.concatenate(results)

    return run


def batched(run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """`run` over any number of images, 64 at a time."""
    return lambda images: np.concatenate(
        [run(images[i : i + 64]) for i in range(0, len(images), 64)]
    )


def graph_of_copy(model: keras.Model) -> tuple[keras.Model, Any, dict[int, Any], dict[str, Any]]:
    """A copy of `model`, its base, and the base's layers by output tensor and consumers."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    base = next(layer for layer in copy.layers if hasattr(layer, "layers"))
    producer = {id(layer.output): layer for layer in base.layers}
    consumers: dict[str, list[Any]] = {layer.name: [] for layer in base.layers}
    for layer in base.layers:
        for tensor in layer.input if isinstance(layer.input, list) else [layer.input]:
            if id(tensor) in producer:
                consumers[producer[id(tensor)].name].append(layer)
    return copy, base, producer, consumers


def rescaled(model: keras.Model, calibration: np.ndarray, cap: float = 16.0) -> keras.Model:
    """A copy of `model` whose ReLU6 channels before a depthwise convolution fill [0, 6]."""
    copy, base, producer, consumers = graph_of_copy(model)
    pairs = []
    for relu in base.layers:
        if not isinstance(relu, keras.layers.ReLU) or len(consumers[relu.name]) != 1:
            continue
        bn = producer[id(relu.input)]
        nxt = consumers[relu.name][0]
        while isinstance(nxt, keras.layers.ZeroPadding2D) and len(consumers[nxt.name]) == 1:
            nxt = consumers[nxt.name][0]
        if isinstance(bn, keras.layers.BatchNormalization) and isinstance(
            nxt, keras.layers.DepthwiseConv2D
        ):
            pairs.append((relu, bn, nxt))
    probe = keras.Model(base.inputs, [relu.output for relu, _, _ in pairs])
    highs = [np.zeros(relu.output.shape[-1], "float32") for relu, _, _ in pairs]
    for i in range(0, len(calibration), 32):
        for j, out in enumerate(probe.predict(calibration[i : i + 32], verbose=0)):
            highs[j] = np.maximum(highs[j], out.max(axis=(0, 1, 2)))
    for (relu, bn, depthwise), high in zip(pairs, highs, strict=True):
        scale = np.clip((relu.max_value or 6.0) / np.maximum(high, 1e-6), 1.0, cap)
        bn.gamma.assign(bn.gamma.numpy() * scale)
        bn.beta.assign(bn.beta.numpy() * scale)
        depthwise.kernel.assign(depthwise.kernel.numpy() / scale[None, None, :, None])
    print(f"rescaled {len(pairs)} ReLU6 outputs before a depthwise convolution")
    return copy


def equalized(model: keras.Model, calibration: np.ndarray, cap: float = 16.0) -> keras.Model:
    """A copy of `model` with its residual bottlenecks' channels equalized (see above)."""
    copy, base, producer, consumers = graph_of_copy(model)

    def linear(layer: Any) -> bool:
        if isinstance(layer, keras.layers.Add):
            return True
        return isinstance(layer, keras.layers.BatchNormalization) and not any(
            isinstance(n, keras.layers.ReLU) for n in consumers[layer.name]
        )

    group: dict[str, str] = {}

    def root(name: str) -> str:
        while group.setdefault(name, name) != name:
            name = group[name]
        return name

    members = [layer for layer in base.layers if linear(layer)]
    for layer in members:
        root(layer.name)
        if isinstance(layer, keras.layers.Add):
            for tensor in layer.input:
                if linear(producer[id(tensor)]):
                    group[root(producer[id(tensor)].name)] = root(layer.name)
    groups: dict[str, list[Any]] = {}
    for layer in members:
        groups.setdefault(root(layer.name), []).append(layer)
    plans = []
    for tensors in groups.values():
        names = {layer.name for layer in tensors}
        readers = {
            id(n): n for layer in tensors for n in consumers[layer.name] if n.name not in names
        }
        if readers and all(
            type(n) is keras.layers.Conv2D and n.kernel.shape[:2] == (1, 1)
            for n in readers.values()
        ):
            plans.append((tensors, list(readers.values())))
    probe = keras.Model(base.inputs, [layer.output for tensors, _ in plans for layer in tensors])
    ranges: list[Any] = [None] * len(probe.outputs)
    for i in range(0, len(calibration), 32):
        for j, out in enumerate(probe.predict(calibration[i : i + 32], verbose=0)):
            r = np.abs(out).max(axis=(0, 1, 2))
            ranges[j] = r if ranges[j] is None else np.maximum(ranges[j], r)
    k = 0
    for tensors, readers in plans:
        r = np.max(np.stack(ranges[k : k + len(tensors)]), axis=0)
        k += len(tensors)
        scale = np.clip(r.max() / np.maximum(r, 1e-6), 1.0, cap)
        for bn in tensors:
            if isinstance(bn, keras.layers.BatchNormalization):
                bn.gamma.assign(bn.gamma.numpy() * scale)
                bn.beta.assign(bn.beta.numpy() * scale)
        for conv in readers:
            conv.kernel.assign(conv.kernel.numpy() / scale[None, None, :, None])
    print(f"equalized {len(plans)} bottlenecks")
    return copy


def train(workdir: Path, name: str, seed: int, alpha: float, size: int) -> Path:
    keras.utils.set_random_seed(seed)
    data, _, class_names = ftk.data.from_directory(
        bench.FLOWERS / "train", image_size=size, seed=seed
    )
    weights = bench.DATA / "weights" / (
        f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"
    )
    tuner = ftk.FineTuner(
        "mobilenet_v2",
        num_classes=len(class_names),
        weights=str(weights),
        input_shape=(size, size, 3),
        alpha=alpha,
        seed=seed,
    )
    tuner.fit(data, verbose=0)
    return ftk.save_model(tuner.model, workdir / f"{name}.keras", class_names=class_names)


MODELS = {
    "alpha 0.35, 160 px, seed 0": (0, 0.35, 160),
    "alpha 0.35, 160 px, seed 1": (1, 0.35, 160),
    "alpha 0.5, 160 px, seed 0": (0, 0.5, 160),
    "alpha 0.35, 224 px, seed 0": (0, 0.35, 224),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=("bench", "four"), default="bench")
    args = parser.parse_args()
    chosen = list(MODELS.items())[: 1 if args.models == "bench" else 4]
    print(f"on {bench.cpu()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    rows = []
    for label, (seed, alpha, size) in chosen:
        with tempfile.TemporaryDirectory() as tmp:
            rows += measure(Path(tmp), label, seed, alpha, size)
    print("| model | images | converter | head fit | GPTQ | export (GPTQ + head fit) "
          "| float head | feature error | rescaled | equalized |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


def measure(work: Path, label: str, seed: int, alpha: float, size: int) -> list[str]:
    path = train(work, "model", seed, alpha, size)
    classifier = ftk.load(path)
    model = classifier.model
    calibration = exporting._images(bench.FLOWERS / "train", classifier, 10**6, "cal")
    pool = model.get_layer("head_pool")
    body = keras.Model(model.inputs, pool.output)
    head_input = keras.Input(pool.output.shape[1:])
    x = head_input
    for layer in model.layers[model.layers.index(pool) + 1 :]:
        x = layer(x)
    head = keras.Model(head_input, x)
    variants = {
        "converter": dict(gptq=False, fit_head=False),
        "head fit": dict(gptq=False, fit_head=True),
        "GPTQ": dict(fit_head=False),
        "export": {},
    }
    runs: dict[str, Callable[..., np.ndarray]] = {}
    for name, options in variants.items():
        exported = ftk.export(
            path,
            work / f"{len(runs)}.tflite",
            quantize="int8",
            representative_data=bench.FLOWERS / "train",
            **options,  # type: ignore[arg-type]
        )
        runs[name] = batched(exporting._litert_runner(exported.path)[1])
    base_only = int8(body, calibration, work / "body.tflite")
    rewrites = {
        "rescaled": rescaled(model, calibration),
        "equalized": equalized(model, calibration),
    }
    for name, rewritten in rewrites.items():
        runs[name] = int8(rewritten, calibration, work / f"{name}.tflite")
    rows = []
    for name, folder in [("flowers/test", bench.FLOWERS / "test"), ("flowers-large", LARGE)]:
        images = exporting._images(folder, classifier, 10**6, name)
        expected = model.predict(images, verbose=0)
        for rewritten in rewrites.values():
            drift = np.abs(rewritten.predict(images, verbose=0) - expected).max()
            assert drift < 0.1, f"a rewrite changed the float model by {drift}"
        top = expected.argmax(1)
        features = body.predict(images, verbose=0)
        got = base_only(images)
        error = np.linalg.norm(got - features) / np.linalg.norm(features)
        agree = {k: np.mean(run(images).argmax(1) == top) for k, run in runs.items()}
        floating = np.mean(head.predict(got, verbose=0).argmax(1) == top)
        rows.append(
            f"| {label} | {name} ({len(images)}) | {agree['converter']:.1%} "
            f"| {agree['head fit']:.1%} | {agree['GPTQ']:.1%} | {agree['export']:.1%} "
            f"| {floating:.1%} | {error:.3f} | {agree['rescaled']:.1%} "
            f"| {agree['equalized']:.1%} |"
        )
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
