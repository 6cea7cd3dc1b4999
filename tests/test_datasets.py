"""finetunekit.datasets.shapes: deterministic, well-formed, and learnable."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from finetunekit import datasets
from finetunekit.errors import ConfigError


def test_same_seed_same_pixels_other_seed_other_pixels():
    first = datasets.shapes(5, image_size=24, seed=7)
    again = datasets.shapes(5, image_size=24, seed=7)
    other = datasets.shapes(5, image_size=24, seed=8)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.y, again.y)
    assert not np.array_equal(first.x, other.x)


def test_shapes_dtypes_and_every_class_present():
    x, y, names = datasets.shapes(6, image_size=20, seed=0)
    n = 6 * len(datasets.SHAPE_CLASSES)
    assert names == datasets.SHAPE_CLASSES and len(names) >= 12
    assert x.shape == (n, 20, 20, 3) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [6] * len(names)
    assert x.std() > 30  # colours and backgrounds vary: not a blank canvas
    assert y[:12].tolist() != sorted(y[:12].tolist())  # shuffled, not grouped by class


def test_chosen_classes_in_the_given_order():
    x, y, names = datasets.shapes(3, classes=("star", "circle"), seed=1)
    assert names == ("star", "circle")
    assert x.shape == (6, 32, 32, 3) and set(y.tolist()) == {0, 1}


def test_every_class_draws_a_figure_that_differs_from_the_background():
    # With no noise, the centre region of the figure differs from the image corners.
    x, y, names = datasets.shapes(20, image_size=32, seed=2, noise=0.0)
    for label, name in enumerate(names):
        images = x[y == label].astype("float32")
        spread = images.reshape(len(images), -1, 3).std(axis=1).mean()
        assert spread > 15, f"{name} images look blank (pixel spread {spread:.1f})"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"classes": ("circle", "hexagon")}, "unknown: \\['hexagon'\\]"),
        ({"classes": "circle"}, "sequence of names"),
        ({"classes": ("ring", "ring")}, "holds a name twice"),
        ({"n_per_class": 0}, "n_per_class must be an int >= 1"),
        ({"image_size": 8}, "image_size must be an int >= 16"),
        ({"noise": -1.0}, "noise must be a number >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        datasets.shapes(**kwargs)


def test_classes_are_learnable_by_a_tiny_cnn():
    classes = ("circle", "square", "plus")
    x, y, _ = datasets.shapes(100, image_size=24, classes=classes, seed=0)
    x_test, y_test, _ = datasets.shapes(30, image_size=24, classes=classes, seed=1)
    layers = [keras.Input((24, 24, 3)), keras.layers.Rescaling(1 / 255)]
    for width in (16, 32, 64):
        layers += [
            keras.layers.Conv2D(width, 3, padding="same"),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
        ]
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(classes), activation="softmax"),
    ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    assert accuracy > 0.55, f"test accuracy {accuracy:.2f} on 3 classes (chance 0.33)"
