"""Frozen passes with each BatchNormalization folded into the convolution before it.

In inference mode a BatchNormalization is an affine map per channel, so after a
convolution it folds into the convolution's kernel and bias:
`(conv(x, k) + b - mean) * s + beta == conv(x, k * s) + (b - mean) * s + beta`, with
`s = gamma / sqrt(variance + epsilon)`. Keras runs the normalization as separate
element-wise ops over the whole activation tensor, and TensorFlow's graph optimizer
fuses a convolution with its bias and activation but not with Keras' normalization; on
a CPU, where such a pass is bound by memory traffic, the MobileNetV2 pass over the
flowers ran 1.3-1.9x faster folded (benchmarks/bench_folding.py, docs/benchmarks.md).
Keras has no inference-time folding (LiteRT's converter does it at export only), hence
this module.

Every pass through frozen layers (the feature cache and its augmented views, and
`rank_bases`) runs through `frozen_call`, and so do `Classifier.predict` and `evaluate`
(`classifier.inference`); training steps run as Keras runs them.
The folded kernel and bias are computed from the variables
inside the traced function, at every call, so a trace stays right when weights change
(a few small ops on the weights, nothing on the activations). Outputs differ from
Keras' by float rounding: about 1e-5 of their scale through a whole MobileNetV2.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from finetunekit import structure

__all__ = ["frozen_call", "foldable_pairs"]

_FLOAT32 = "float32"


def _foldable(conv: Any, norm: Any) -> bool:
    """Whether the pair folds exactly: plain 2D convolutions and normalization, float32."""
    # Exact types: a subclass may compute something else in its call.
    if type(conv) not in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D):
        return False
    if type(norm) is not keras.layers.BatchNormalization:
        return False
    if conv.data_format != "channels_last" or conv.activation is not keras.activations.linear:
        return False
    if isinstance(conv, keras.layers.Conv2D) and conv.groups != 1:
        return False
    if max(conv.strides) > 1 and max(conv.dilation_rate) > 1:
        return False  # Keras computes that in steps of its own, TensorFlow's op cannot
    if getattr(conv, "quantization_mode", None) or getattr(conv, "lora_enabled", False):
        return False
    policies = (getattr(layer, "dtype_policy", None) for layer in (conv, norm))
    if any(getattr(policy, "name", None) != _FLOAT32 for policy in policies):
        return False  # mixed precision: Keras' own casts are kept
    return norm.axis in (-1, 3) and len(conv.kernel.shape) == 4


def foldable_pairs(model: keras.Model) -> list[tuple[Any, Any]]:
    """The `(convolution, BatchNormalization)` pairs of `model` that `frozen_call` folds."""
    return [pair for pair in structure.feeds_batch_norm(model) if _foldable(*pair)]


def _folded_conv(conv: Any, norm: Any) -> Any:
    """The convolution followed by the normalization (inference mode), as one convolution."""
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or getattr(inputs, "dtype", None) != tf.float32:
            return _unfolded(conv, norm)(inputs, *args, **kwargs)
        scale = tf.math.rsqrt(tf.convert_to_tensor(norm.moving_variance) + norm.epsilon)
        if norm.scale:
            scale *= tf.convert_to_tensor(norm.gamma)
        shift = -tf.convert_to_tensor(norm.moving_mean) * scale
        if norm.center:
            shift += tf.convert_to_tensor(norm.beta)
        if conv.use_bias:
            shift += tf.convert_to_tensor(conv.bias) * scale
        kernel = tf.convert_to_tensor(conv.kernel)
        if depthwise:  # (h, w, channels, multiplier): output channel c * multiplier + m
            kernel *= tf.reshape(scale, kernel.shape[2:])
            out = tf.nn.depthwise_conv2d(
                inputs, kernel, strides=(1, *conv.strides, 1), padding=conv.padding.upper(),
                dilations=conv.dilation_rate,
            )
        else:
            out = tf.nn.conv2d(
                inputs, kernel * scale, strides=conv.strides, padding=conv.padding.upper(),
                dilations=conv.dilation_rate,
            )
        return tf.nn.bias_add(out, shift)

    return call


def _unfolded(conv: Any, norm: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return norm(conv(*args, **kwargs), training=False)

    return call


def _passed_through(inputs: Any, *args: Any, **kwargs: Any) -> Any:
    return inputs  # the normalization, already applied by the folded convolution


def frozen_call(model: keras.Model, inputs: Any) -> Any:
    """`model(inputs, training=False)`, each foldable BatchNormalization folded.

    Nested Functional models (the base inside a full model) are folded too; a model
    the graph runner cannot run (Sequential, subclassed) is called as it is.

    Args:
        model: any Keras model.
        inputs: its inputs.

    Returns:
        What `model(inputs, training=False)` returns, up to float rounding.
    """
    if not structure.is_graph_model(model):
        return model(inputs, training=False)
    pairs = foldable_pairs(model)
    convs = {id(conv): norm for conv, norm in pairs}
    norms = {id(norm) for _, norm in pairs}

    def replace(layer: Any) -> Any:
        if id(layer) in convs:
            return _folded_conv(layer, convs[id(layer)])
        if id(layer) in norms:
            return _passed_through
        if structure.is_graph_model(layer):

            def nested(inner: Any, *args: Any, **kwargs: Any) -> Any:
                if args or set(kwargs) - {"training"}:
                    return layer(inner, *args, **{**kwargs, "training": False})
                return frozen_call(layer, inner)

            return nested
        return None

    return structure.run_graph(model, inputs, replace)
