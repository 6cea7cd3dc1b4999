"""GPTQ rounding of convolution kernels for int8 exports (finetunekit._gptq)."""

from __future__ import annotations

import importlib

import keras
import numpy as np
import pytest

import finetunekit as ftk
from finetunekit import _gptq

export_module = importlib.import_module("finetunekit.exporting")


def _model(size: int = 24) -> keras.Model:
    """Conv2D, DepthwiseConv2D and BatchNormalization (folded by the converter), softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(24, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))


def _images(count: int = 120, size: int = 24) -> np.ndarray:
    """Smooth random images: neighbouring pixels correlated, as in photos."""
    rng = np.random.default_rng(3)
    coarse = rng.uniform(0, 255, size=(count, size // 4, size // 4, 3))
    fine = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    return np.clip(fine + rng.normal(0, 20, fine.shape), 0, 255).astype("float32")


def _give_bn_statistics(model: keras.Model) -> None:
    """Trained-looking statistics, and kernels with an outlier per output channel.

    Folded BatchNormalization gives real kernels such outliers: the channel's int8
    step, set by its largest weight, is then coarse for the others.
    """
    rng = np.random.default_rng(5)
    for name in ("conv", "depthwise", "pointwise"):
        kernel = model.get_layer(name).kernel
        value = rng.normal(0, 0.1, kernel.shape)
        flat = value.reshape(-1, value.shape[-1])
        flat[rng.integers(0, len(flat), flat.shape[1]), np.arange(flat.shape[1])] = 1.0
        kernel.assign(flat.reshape(kernel.shape))
    bn = model.get_layer("conv_bn")
    rng = np.random.default_rng(4)
    bn.set_weights([
        rng.uniform(0.5, 2.0, 16) * rng.choice([-1, 1], 16),  # gamma, some negative
        rng.normal(0, 0.5, 16),
        rng.normal(0, 0.2, 16),
        rng.uniform(0.5, 2.0, 16),
    ])


def test_gptq_rows_lie_on_the_int8_grid_and_move_the_output_less():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(12, 12))
    x = rng.normal(size=(500, 12)) @ mix  # correlated inputs
    w = rng.normal(size=(6, 12))
    h = x.T @ x
    q = _gptq.gptq(w, h)
    # The grid of the original weights, which is the grid the converter finds in q.
    scale = np.max(np.abs(w), axis=1, keepdims=True) / 127
    steps = q / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
    np.testing.assert_allclose(np.abs(q).max(axis=1, keepdims=True), scale * 127, rtol=1e-12)
    nearest = np.round(w / (np.abs(w).max(axis=1, keepdims=True) / 127)) * (
        np.abs(w).max(axis=1, keepdims=True) / 127
    )
    gptq_error = np.linalg.norm(x @ (q - w).T)
    nearest_error = np.linalg.norm(x @ (nearest - w).T)
    assert gptq_error < 0.8 * nearest_error


def test_the_weight_that_sets_the_scale_stays_at_127_steps():
    # The first weight rounds down by a quarter step; the second input follows the
    # first closely, so the spread error would lower the largest weight by 2.5 steps,
    # to 125: the converter would then choose a finer scale and round the row again.
    # It is pinned at 127 steps instead, and its own error spreads like any other.
    h = np.array([[100.0, -9.9], [-9.9, 1.0]])
    w = np.array([[0.498, 1.0]])
    np.testing.assert_allclose(_gptq.gptq(w, h, damping=0.0) * 127, [[63, 127]])
    # With the correlation the other way the largest weight is pushed up, clipped at
    # 127 steps: the same grid.
    np.testing.assert_allclose(
        _gptq.gptq(w, h * [[1, -1], [-1, 1]], damping=0.0) * 127, [[63, 127]]
    )
    # A third input that follows the second: the pinned weight's error is carried on,
    # and the row's output moves less than with rounding to nearest.
    z = np.random.default_rng(0).normal(size=(1000, 3))
    second = -0.99 * z[:, 0] + 0.14 * z[:, 1]
    x = np.stack([10 * z[:, 0], second, 0.8 * second + 0.5 * z[:, 2]], axis=1)
    w = np.array([[0.498, 1.0, 0.3]])
    q = _gptq.gptq(w, x.T @ x, damping=0.0)
    np.testing.assert_allclose(q * 127, [[63, 127, 36]], atol=1e-9)  # nearest: 63, 127, 38
    nearest = np.round(w * 127) / 127
    assert np.linalg.norm(x @ (q - w).T) < 0.7 * np.linalg.norm(x @ (nearest - w).T)


def test_the_int8_file_holds_the_gptq_kernels_exactly(tmp_path):
    model = _model()
    _give_bn_statistics(model)
    images = _images()
    before = [w.copy() for w in model.get_weights()]
    report = ftk.export(model, tmp_path / "m.tflite", quantize="int8", representative_data=images)
    assert report.kernels_rounded == 3 and "3 convolution kernels rounded by GPTQ" in str(report)
    assert "which the int8 weights were fitted to" in str(report)  # checked on calibration
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)  # the Keras model keeps its weights
    pairs = _gptq.rounded_kernels(model, images)
    chosen = {variable.path.split("/")[0]: value for variable, value in pairs}
    assert set(chosen) == {"conv", "depthwise", "pointwise"}
    gamma, _, _, var = model.get_layer("conv_bn").get_weights()
    fold = gamma / np.sqrt(var + model.get_layer("conv_bn").epsilon)
    expected = {
        # (out, kh, kw, in), BatchNormalization folded into each output channel.
        (16, 3, 3, 3): np.transpose(chosen["conv"] * fold, (3, 0, 1, 2)),
        (1, 3, 3, 16): np.transpose(chosen["depthwise"], (3, 0, 1, 2)),
        (24, 1, 1, 16): np.transpose(chosen["pointwise"], (3, 0, 1, 2)),
    }
    _, interpreter_class = export_module._interpreter_class()
    interpreter = interpreter_class(model_path=str(report.path))
    interpreter.allocate_tensors()
    found = 0
    for detail in interpreter.get_tensor_details():
        shape = tuple(detail["shape"])
        if detail["dtype"] != np.int8 or shape not in expected:
            continue
        steps = interpreter.get_tensor(detail["index"]).astype("float64")
        scales = detail["quantization_parameters"]["scales"]
        axis = detail["quantization_parameters"]["quantized_dimension"]
        view = [1, 1, 1, 1]
        view[axis] = -1
        got = steps * scales.reshape(view)
        want = expected[shape]
        # The converter rounded nothing further: its int8 steps times its scales are our
        # kernels, to float32 precision.
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
        found += 1
    assert found == 3


def test_gptq_brings_the_int8_file_closer_to_keras(tmp_path):
    model = _model()
    _give_bn_statistics(model)
    # The last feature map, not the softmax: the softmax's own 8-bit steps and the
    # pooling would hide the kernels' rounding.
    features = keras.Model(model.inputs, model.get_layer("pointwise").output)
    images = _images()
    options = dict(quantize="int8", representative_data=images)
    rounded = ftk.export(features, tmp_path / "g.tflite", **options)
    nearest = ftk.export(features, tmp_path / "n.tflite", gptq=False, **options)
    assert rounded.kernels_rounded == 3 and nearest.kernels_rounded == 0
    assert "GPTQ" not in str(nearest)
    assert rounded.size_bytes == nearest.size_bytes
    expected = features.predict(images, verbose=0)

    def error(report):
        run = export_module._litert_runner(report.path)[1]
        got = np.concatenate([run(images[i : i + 40]) for i in range(0, len(images), 40)])
        got = got.reshape(expected.shape)
        return np.linalg.norm(got - expected) / np.linalg.norm(expected)

    assert error(rounded) < error(nearest)  # 0.016 against 0.018, activations in int8 too
    # With the activations left in float, what GPTQ minimises shows plainly.
    pairs = _gptq.rounded_kernels(features, images)
    to_nearest = []
    for variable, _ in pairs:
        value = variable.numpy()
        # Per output channel: the last axis, a depthwise kernel's channel axis.
        flat = value.reshape(-1, value.shape[2] if value.shape[-1] == 1 else value.shape[-1])
        step = np.abs(flat).max(axis=0) / 127
        to_nearest.append((variable, (np.round(flat / step) * step).reshape(value.shape)))

    def float_error(swapped):
        with export_module._weights_swapped(swapped):
            got = features.predict(images, verbose=0)
        return np.linalg.norm(got - expected) / np.linalg.norm(expected)

    assert float_error(pairs) < 0.7 * float_error(to_nearest)
    np.testing.assert_array_equal(features.predict(images, verbose=0), expected)


def test_which_layers_are_rounded_and_the_hooks_go_away():
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((16, 16, 8))
    y = keras.layers.Conv2D(8, 3, padding="same", name="inner_conv")(inner_in)
    inner = keras.Model(inner_in, y, name="inner")
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2, name="dilated")(inputs)
    x = inner(x)
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2, name="grouped")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="multiplied")(x)
    x = keras.layers.SeparableConv2D(4, 3, name="separable")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    images = _images(20, 16)
    pairs = _gptq.rounded_kernels(model, images)
    names = sorted(variable.path.split("/")[-2] for variable, _ in pairs)
    assert names == ["dilated", "inner_conv"]  # nested models opened; others left alone
    for layer in [model.get_layer("dilated"), inner.get_layer("inner_conv")]:
        assert "call" not in vars(layer)
    for variable, value in pairs:
        assert value.shape == tuple(variable.shape) and value.dtype == np.float32
        assert not np.array_equal(value, variable.numpy())


def test_a_model_without_convolutions_gets_no_kernels():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert _gptq.rounded_kernels(model, np.zeros((8, 4), "float32")) == []


def test_the_dilated_hessian_sees_what_the_convolution_sees():
    keras.utils.set_random_seed(1)
    layer = keras.layers.Conv2D(5, 3, strides=2, dilation_rate=1, padding="same", use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype("float32")
    out = layer(x).numpy()
    patches = _gptq._patches(layer, x).numpy()
    kernel = layer.kernel.numpy().reshape(-1, 5)
    np.testing.assert_allclose(patches @ kernel, out.reshape(-1, 5), atol=1e-5)
    dilated = keras.layers.Conv2D(5, 3, dilation_rate=2, padding="valid", use_bias=False)
    out = dilated(x).numpy()
    patches = _gptq._patches(dilated, x).numpy()
    np.testing.assert_allclose(
        patches @ dilated.kernel.numpy().reshape(-1, 5), out.reshape(-1, 5), atol=1e-5
    )


@pytest.mark.parametrize("count", [99, 100])
def test_gptq_needs_a_hundred_calibration_images(tmp_path, count):
    report = ftk.export(
        _model(), tmp_path / "m.tflite", quantize="int8", representative_data=_images(count)
    )
    assert report.kernels_rounded == (3 if count >= 100 else 0)
