"""Where the int8 export loses agreement, and two rewrites that were measured and not kept.

Fine-tunes the model of bench_model_use.py (MobileNetV2 alpha 0.35, 160 px, the real
ImageNet weights, FineTuner's defaults on flowers/train, seed 0), then measures top-1
agreement with the Keras model of three int8 LiteRT exports, all calibrated on the 350
photos of flowers/train with TensorFlow's converter, on flowers/test (150 photos, for
reporting) and on flowers-large/train (1,989 other photos, the set to choose on):

- the whole model in int8, as `finetunekit.export(..., quantize="int8")` writes it;
- the base in int8 and the head (normalisation, dense layer) in float: the base's
  pooled features are compared with the float ones (relative L2 error);
- the model rewritten before conversion so that every channel of a ReLU6 output that
  feeds a depthwise convolution fills the int8 range on the calibration images (its
  batch normalisation scaled up by 6 / calibrated max, at most 16x, the depthwise kernel
  scaled down by the same factor; per-channel weight quantization absorbs the second).

    python benchmarks/bench_int8_rewrites.py        # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

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


def rescaled(model: keras.Model, calibration: np.ndarray, cap: float = 16.0) -> keras.Model:
    """A copy of `model` whose ReLU6 channels before a depthwise convolution fill [0, 6]."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    base = next(layer for layer in copy.layers if hasattr(layer, "layers"))
    producer = {id(layer.output): layer for layer in base.layers}
    consumers: dict[str, list[Any]] = {layer.name: [] for layer in base.layers}
    for layer in base.layers:
        for tensor in layer.input if isinstance(layer.input, list) else [layer.input]:
            if id(tensor) in producer:
                consumers[producer[id(tensor)].name].append(layer)
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path, _ = bench.train(work)
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
        rewritten = rescaled(model, calibration)
        whole = int8(model, calibration, work / "whole.tflite")
        base_only = int8(body, calibration, work / "body.tflite")
        rescaled_run = int8(rewritten, calibration, work / "rescaled.tflite")
        print(f"on {bench.cpu()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")
        print("| images | n | whole int8 | base int8, head float | feature error | rescaled |")
        print("|---|---|---|---|---|---|")
        for name, folder in [("flowers/test", bench.FLOWERS / "test"), ("flowers-large", LARGE)]:
            images = exporting._images(folder, classifier, 10**6, name)
            expected = model.predict(images, verbose=0).argmax(1)
            features = body.predict(images, verbose=0)
            got = base_only(images)
            error = np.linalg.norm(got - features) / np.linalg.norm(features)
            float_rescaled = rewritten.predict(images, verbose=0).argmax(1)
            assert np.mean(float_rescaled == expected) > 0.99, "the rewrite changed the model"
            cells = [
                np.mean(whole(images).argmax(1) == expected),
                np.mean(head.predict(got, verbose=0).argmax(1) == expected),
            ]
            print(
                f"| {name} | {len(images)} | {cells[0]:.1%} | {cells[1]:.1%} | {error:.3f} "
                f"| {np.mean(rescaled_run(images).argmax(1) == expected):.1%} |"
            )


if __name__ == "__main__":
    main()
