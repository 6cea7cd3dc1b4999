"""Augmentation presets: random flips, rotations and zooms as Keras layers."""

from __future__ import annotations

import math
from typing import Any

import keras

from finetunekit.errors import ConfigError

#: Preset name -> what `augmentation(preset)` applies, as fractions (rotation of a full
#: turn, zoom of the image size).
AUGMENTATION_PRESETS: dict[str, dict[str, float]] = {
    "light": {"rotation": 0.0, "zoom": 0.0},
    "default": {"rotation": 0.05, "zoom": 0.1},
    "strong": {"rotation": 0.1, "zoom": 0.2},
}


def flip_rotate_zoom_transform(
    flips: Any, angle: Any, scale: Any, height: Any, width: Any
) -> Any:
    """Keras' affine transforms (`keras.ops.image.affine_transform`) of flip, rotation, zoom.

    Output pixel (x, y) reads input pixel M (x, y, 1), M = flip . rotation . zoom, each
    about the centre: the maps of `RandomFlip`, `RandomRotation` and `RandomZoom` in the
    order a `keras.Sequential` of them applies them.

    Args:
        flips: per image, -1 (flipped left to right) or 1.
        angle: per image, the rotation in radians (counter-clockwise as Keras draws it).
        scale: per image, the zoom (above 1: zoomed out).
        height, width: the images' size in pixels.

    Returns:
        The transforms, shape `(images, 8)`.
    """
    ops = keras.ops
    cx, cy = (ops.cast(width, "float32") - 1) / 2, (ops.cast(height, "float32") - 1) / 2
    cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
    a0, a1 = flips * cos, -flips * sin
    b0, b1 = sin, cos
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


@keras.saving.register_keras_serializable(package="finetunekit")
class FlipRotateZoom(keras.layers.Layer):
    """A random horizontal flip, rotation and zoom per image, applied as ONE resampling.

    Draws what `keras.layers.RandomFlip("horizontal")`, `RandomRotation(rotation)` and
    `RandomZoom(zoom)` draw, one after the other (a flip with probability 1/2, an angle
    uniform in +-`rotation` of a full turn, a scale uniform in 1 +- `zoom`, the same for
    both axes, about the image's centre), and composes the three into one affine
    transform. Keras has no such layer: chained, its layers resample every image twice
    (rotation, then zoom), and on a CPU the preset of three took 1.72 s per 1,120
    images of 160 px against 0.79 s for one composed transform (2-core AMD EPYC,
    benchmarks/bench_augment_layer.py).
    One resampling also blurs less than two; edges are filled by reflection, as
    Keras' layers fill them.

    Acts with `training=True` (the default when called on its own, as for Keras'
    random layers; `False` inside `predict` and `evaluate`); otherwise returns the images
    as they are.

    Args:
        rotation: the largest rotation, as a fraction of a full turn (0.05: 18 degrees).
        zoom: the largest change of scale, as a fraction of the image size.
        flip: whether to flip half the images left to right.
        seed: seed of the draws.

    Raises:
        ConfigError: `rotation` outside [0, 1] or `zoom` outside [0, 1), or not numbers.

    Example:
        >>> augment = FlipRotateZoom(rotation=0.02, zoom=0.05, seed=0)
        >>> tuner = finetunekit.FineTuner("mobilenet_v2", num_classes=5, augment=augment)
    """

    def __init__(
        self,
        rotation: float = 0.05,
        zoom: float = 0.1,
        flip: bool = True,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (rotation, zoom)
        )
        if not (numbers and 0 <= rotation <= 1 and 0 <= zoom < 1):
            raise ConfigError(
                "rotation must be a number in [0, 1] (a fraction of a full turn, drawn in "
                "+-rotation) and zoom one in [0, 1) (drawn in 1 +- zoom); received "
                f"rotation={rotation!r}, zoom={zoom!r}."
            )
        self.rotation, self.zoom, self.flip, self.seed = float(rotation), float(zoom), flip, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool = True) -> Any:
        ops = keras.ops
        if not training:
            return images
        if not keras.backend.is_float_dtype(images.dtype):
            images = ops.cast(images, self.compute_dtype)
        single = len(images.shape) == 3
        batch = images[None] if single else images
        shape = ops.shape(batch)
        n = shape[0]
        if self.flip:
            flips = ops.where(keras.random.uniform((n,), seed=self.seed_generator) < 0.5, -1.0, 1.0)
        else:
            flips = ops.ones((n,))
        if not self.rotation and not self.zoom:  # a flip alone moves pixels, no resampling
            flipped = ops.flip(batch, axis=2)
            out = ops.where(ops.reshape(flips < 0, (-1, 1, 1, 1)), flipped, batch)
            return out[0] if single else out
        turn = 2 * math.pi * self.rotation
        angle = keras.random.uniform((n,), -turn, turn, seed=self.seed_generator)
        scale = keras.random.uniform((n,), 1 - self.zoom, 1 + self.zoom, seed=self.seed_generator)
        transform = flip_rotate_zoom_transform(flips, angle, scale, shape[1], shape[2])
        out = ops.image.affine_transform(
            batch, transform, interpolation="bilinear", fill_mode="reflect"
        )
        return out[0] if single else out

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rotation": self.rotation,
            "zoom": self.zoom,
            "flip": self.flip,
            "seed": self.seed,
        }


def augmentation(preset: str = "default", seed: int | None = None) -> keras.Sequential:
    """Random flips, rotations and zooms as a Keras layer, for training batches only.

    Like Keras' random layers, it only acts with `training=True`, so the same model or
    pipeline passes validation and test images through unchanged. It works on raw pixels:
    values stay in the input range (0-255). `FineTuner(augment="default")` applies this
    preset to training batches in the `tf.data` pipeline. The three transforms are drawn
    as `keras.layers.RandomFlip`, `RandomRotation` and `RandomZoom` draw them, and applied
    as one resampling (see `FlipRotateZoom`), about twice as fast on a CPU.

    Args:
        preset: `"light"` (horizontal flips), `"default"` (flips, rotations up to 18
            degrees, zoom up to 10 %) or `"strong"` (flips, 36 degrees, 20 %); see
            `AUGMENTATION_PRESETS`.
        seed: seed of the random transforms.

    Returns:
        A `keras.Sequential` named `augmentation`, holding one `FlipRotateZoom` layer.

    Raises:
        ConfigError: unknown preset.

    Examples:
        >>> augment = augmentation("default", seed=0)
        >>> train = train.map(lambda x, y: (augment(x, training=True), y))
    """
    if preset not in AUGMENTATION_PRESETS:
        raise ConfigError(
            f"Unknown augmentation preset {preset!r}; choose one of {sorted(AUGMENTATION_PRESETS)}."
        )
    amounts = AUGMENTATION_PRESETS[preset]
    layer = FlipRotateZoom(amounts["rotation"], amounts["zoom"], seed=seed, name="augment")
    return keras.Sequential([layer], name="augmentation")


def augmentation_layer(augment: str | keras.layers.Layer | None) -> keras.layers.Layer | None:
    """`augment` as a layer: a preset name made into `augmentation(name)`, a layer as is.

    Raises:
        ConfigError: neither None, a preset name nor a Keras layer.
    """
    if augment is None or isinstance(augment, keras.layers.Layer):
        return augment
    if isinstance(augment, str) and augment in AUGMENTATION_PRESETS:
        return augmentation(augment)
    raise ConfigError(
        f"augment must be None, a preset name {sorted(AUGMENTATION_PRESETS)} or a "
        f"keras.layers.Layer; received {augment!r}."
    )
