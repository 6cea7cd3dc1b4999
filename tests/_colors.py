"""Tiny models with known answers, and folders of pure-colour images, for the model tests.

`colour_model` predicts the brightest channel of an image (red, green, blue) with a
softmax over `0.1 * mean RGB`, so every answer below can be computed by hand.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

COLOURS = ("blue", "green", "red")  # sorted, as from_directory orders class folders
CHANNEL = {"red": 0, "green": 1, "blue": 2}


def colour_model(task: str = "multiclass", size: int = 32) -> keras.Model:
    """Functional model on raw pixels; the output depends on the mean of each channel."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    kernel = np.zeros((3, 3), "float32")
    for i, name in enumerate(COLOURS):  # output i reads the channel of COLOURS[i]
        kernel[CHANNEL[name], i] = 0.1
    if task == "multiclass":
        layer = keras.layers.Dense(3, activation="softmax", name="head_output")
        weights = [kernel, np.zeros(3, "float32")]
    elif task == "multilabel":
        layer = keras.layers.Dense(3, activation="sigmoid", name="head_output")
        weights = [kernel, np.full(3, -12.7, "float32")]
    elif task == "binary":  # positive = red
        layer = keras.layers.Dense(1, activation="sigmoid", name="head_output")
        weights = [np.array([[0.1], [-0.1], [-0.1]], "float32"), np.zeros(1, "float32")]
    else:  # regression: the share of red
        layer = keras.layers.Dense(1, name="head_output")
        weights = [np.array([[1 / 255], [0], [0]], "float32"), np.zeros(1, "float32")]
    outputs = layer(x)
    model = keras.Model(inputs, outputs, name=f"colours_{task}")
    layer.set_weights(weights)
    return model


def conv_model(size: int = 32, classes: int = 3) -> keras.Model:
    """A small convolutional classifier (random weights) for export size checks."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head_output")(x)
    return keras.Model(inputs, outputs, name="conv")


def pixels(colour: str, height: int = 32, width: int = 32) -> np.ndarray:
    image = np.zeros((height, width, 3), "uint8")
    image[..., CHANNEL[colour]] = 255
    return image


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        encoded = tf.io.encode_png(image)
    else:
        encoded = tf.io.encode_jpeg(image, quality=100)
    path.write_bytes(encoded.numpy())
    return path


def colour_folder(root: Path, counts: dict[str, list[str]]) -> Path:
    """root/<folder>/<i>.png for every colour listed under each class folder."""
    for folder, colours in counts.items():
        for i, colour in enumerate(colours):
            write_image(root / folder / f"{i}_{colour}.png", pixels(colour, 24 + 8 * i, 40))
    return root
