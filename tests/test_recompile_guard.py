"""A model compiled by compile_for refuses to fit a trainable set it was not compiled for."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import finetunekit as ftk
from finetunekit.errors import StepOrderError


@pytest.fixture
def compiled_model():
    base = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    ftk.freeze(base)
    model = ftk.add_head(base, 3)
    ftk.compile_for(model)
    return model


DATA = (
    np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32"),
    np.array([0, 1, 2, 0, 1, 2, 0, 1]),
)


def test_fit_after_unfreeze_without_recompile_is_refused(compiled_model) -> None:
    compiled_model.fit(*DATA, verbose=0)
    ftk.unfreeze_last(compiled_model, 2, unit="block")
    with pytest.raises(StepOrderError, match="compile_for") as info:
        compiled_model.fit(*DATA, verbose=0)
    assert isinstance(info.value, RuntimeError)


def test_recompiling_lets_fit_train_the_new_set() -> None:
    # A small base with plain ReLU: a random-init MobileNetV2 saturates its ReLU6 and
    # would give zero gradients, which says nothing about what is trainable.
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, name="top_conv")(x)
    x = keras.layers.ReLU(name="top_relu")(x)
    base = keras.Model(inputs, x, name="small")
    ftk.freeze(base)
    model = ftk.add_head(base, 3)
    ftk.compile_for(model)
    model.fit(*DATA, verbose=0)
    kernel = base.get_layer("top_conv").kernel.numpy().copy()
    ftk.unfreeze_last(model, 1)
    ftk.compile_for(model, learning_rate=1e-2)
    model.fit(*DATA, verbose=0)
    assert not np.allclose(kernel, base.get_layer("top_conv").kernel.numpy())


def test_a_hand_written_compile_is_trusted(compiled_model) -> None:
    ftk.unfreeze_last(compiled_model, 1)
    compiled_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = compiled_model.fit(*DATA, verbose=0)
    assert np.isfinite(history.history["loss"][0])
