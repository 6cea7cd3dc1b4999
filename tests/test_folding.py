"""Frozen passes fold each BatchNormalization into the convolution before it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetunekit as ftk
from finetunekit import _folding, caching, structure

RNG = np.random.default_rng(0)


def _randomize_statistics(model: keras.Model, seed: int = 0) -> None:
    """Moving statistics, scales and offsets far from Keras' initial 0 and 1."""
    rng = np.random.default_rng(seed)
    for layer in structure.leaf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, n))


def _close(got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def _images(size, n=4):
    return tf.constant(RNG.uniform(0, 255, (n, size, size, 3)).astype("float32"))


@pytest.mark.parametrize(
    "name, folded", [("mobilenet_v2", 52), ("efficientnet_b0", 49), ("resnet50_v2", 32)]
)
def test_a_base_and_its_full_model_give_what_keras_gives(name, folded):
    base = ftk.load_base(name, weights=None, input_shape=(32, 32, 3))
    _randomize_statistics(base)
    assert len(_folding.foldable_pairs(base)) == folded  # resnet50_v2: some follow an Add
    model = ftk.add_head(base, 3)
    x = _images(32)
    traced = tf.function(lambda x: (_folding.frozen_call(base, x), _folding.frozen_call(model, x)))
    features, outputs = traced(x)
    _close(features, base(x, training=False), rtol=1e-5)
    _close(outputs, model(x, training=False), rtol=1e-5)


def test_folded_normalizations_are_not_run(monkeypatch):
    base = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3))
    calls = []
    real = keras.layers.BatchNormalization.call
    monkeypatch.setattr(
        keras.layers.BatchNormalization,
        "call",
        lambda self, *args, **kwargs: calls.append(self.name) or real(self, *args, **kwargs),
    )
    x = _images(32, n=2)
    base(x, training=False)
    assert len(calls) == 52
    calls.clear()
    _folding.frozen_call(base, x)
    assert calls == []


def _conv_bn(conv, norm=None, size=8, channels=4):
    inputs = keras.Input((size, size, channels))
    out = (norm or keras.layers.BatchNormalization())(conv(inputs))
    return keras.Model(inputs, out)


@pytest.mark.parametrize(
    "model",
    [
        _conv_bn(keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")),
        _conv_bn(keras.layers.Conv2D(6, 3, strides=2, use_bias=True)),
        _conv_bn(
            keras.layers.Conv2D(6, 3, dilation_rate=2, use_bias=False),
            keras.layers.BatchNormalization(center=False, scale=False),
        ),
    ],
    ids=["depthwise x2", "strided with bias", "dilated, no scale or offset"],
)
def test_each_kind_of_convolution_folds_exactly(model):
    _randomize_statistics(model, seed=1)
    assert len(_folding.foldable_pairs(model)) == 1
    x = tf.constant(RNG.normal(size=(3, 8, 8, 4)).astype("float32"))
    _close(tf.function(lambda x: _folding.frozen_call(model, x))(x), model(x, training=False))


class _OwnNormalization(keras.layers.BatchNormalization):
    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=training, mask=mask) * 2.0


def _two_readers():
    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(4, 1)(inputs)
    return keras.Model(inputs, keras.layers.Add()([keras.layers.BatchNormalization()(conv), conv]))


def _conv_is_an_output():
    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(4, 1)(inputs)
    return keras.Model(inputs, [conv, keras.layers.BatchNormalization()(conv)])


@pytest.mark.parametrize(
    "build",
    [
        _two_readers,
        _conv_is_an_output,
        lambda: _conv_bn(keras.layers.Conv2D(4, 3, activation="relu")),
        lambda: _conv_bn(keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(axis=1)),
        lambda: _conv_bn(keras.layers.Conv2D(4, 3), _OwnNormalization()),
        lambda: _conv_bn(keras.layers.Conv2D(4, 3, groups=2)),
        lambda: _conv_bn(keras.layers.Conv2D(4, 3, dtype="mixed_float16")),
        lambda: _conv_bn(keras.layers.SeparableConv2D(4, 3)),
        lambda: _conv_bn(keras.layers.DepthwiseConv2D(3, strides=2, dilation_rate=2), size=12),
    ],
    ids=[
        "conv read twice", "conv is an output", "conv with activation", "axis 1",
        "subclassed normalization", "grouped", "mixed precision", "separable",
        "depthwise strided and dilated",  # Keras computes it in steps of its own
    ],
)
def test_pairs_that_do_not_fold_exactly_run_as_keras_runs_them(build):
    model = build()
    _randomize_statistics(model, seed=2)
    assert _folding.foldable_pairs(model) == []
    size = model.inputs[0].shape[1]
    x = tf.constant(RNG.normal(size=(2, size, size, 4)).astype("float32"))
    got = keras.tree.flatten(_folding.frozen_call(model, x))
    want = keras.tree.flatten(model(x, training=False))
    for a, b in zip(got, want, strict=True):
        _close(a, b, rtol=1e-6)


def test_a_sequential_model_is_called_as_it_is():
    model = keras.Sequential(
        [keras.Input((8, 8, 4)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    _randomize_statistics(model)
    x = tf.constant(RNG.normal(size=(2, 8, 8, 4)).astype("float32"))
    _close(_folding.frozen_call(model, x), model(x, training=False), rtol=1e-6)


class _OwnCall(keras.Model):
    """A Functional model built by a subclass whose `call` does more than the graph."""

    def __init__(self):
        inputs = keras.Input((8, 8, 4))
        norm = keras.layers.BatchNormalization()
        super().__init__(inputs, norm(keras.layers.Conv2D(4, 3)(inputs)))

    def call(self, inputs, training=None):
        return super().call(inputs * 0.5, training=training) + 1.0


def test_a_model_with_a_call_of_its_own_is_called_as_it_is():
    model = _OwnCall()
    _randomize_statistics(model)
    assert not structure.is_graph_model(model)
    x = tf.constant(RNG.normal(size=(2, 8, 8, 4)).astype("float32"))
    _close(_folding.frozen_call(model, x), model(x, training=False), rtol=1e-6)
    # Nested in a full model, it is called as it is there too.
    inputs = keras.Input((8, 8, 4))
    outer = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(model(inputs)))
    _close(_folding.frozen_call(outer, x), outer(x, training=False), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize` method")
def test_predict_follows_the_model_when_its_layers_are_quantized():
    from finetunekit import classifier

    base = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3))
    _randomize_statistics(base)
    model = ftk.add_head(base, 3)
    x = RNG.uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    before = classifier.inference(model)(x)
    _close(before, model.predict(x, verbose=0), rtol=1e-5)
    model.quantize("int8")  # the head's Dense: Keras traces its predict again
    after = classifier.inference(model)(x)
    _close(after, model.predict(x, verbose=0), rtol=1e-5)
    assert not np.allclose(before, after)


def test_a_trace_reads_the_weights_at_every_call():
    model = _conv_bn(keras.layers.Conv2D(4, 3))
    _randomize_statistics(model)
    traced = tf.function(lambda x: _folding.frozen_call(model, x))
    x = tf.constant(RNG.normal(size=(2, 8, 8, 4)).astype("float32"))
    first = traced(x).numpy()
    norm = model.layers[-1]
    norm.moving_mean.assign(norm.moving_mean.numpy() + 1.0)
    model.layers[1].kernel.assign(model.layers[1].kernel.numpy() * 2.0)
    second = traced(x).numpy()
    assert not np.allclose(first, second)
    _close(second, model(x, training=False))


def test_the_feature_cache_stores_what_the_keras_prefix_computes():
    base = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3))
    _randomize_statistics(base)
    ftk.freeze(base)
    model = ftk.add_head(base, 3)
    ftk.unfreeze_last(model, 1, unit="block")
    split = caching.split_frozen_prefix(model)
    assert split is not None
    x = RNG.uniform(0, 255, (10, 32, 32, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, np.arange(10) % 3)).batch(4)
    with caching.FeatureCache(split.prefix, data) as cache:
        stored = cache.features[0]
    _close(stored, split.prefix(x, training=False), rtol=1e-5)
