"""Augmentation presets: random flips, rotations and zooms as Keras layers."""

from __future__ import annotations

import keras

from finetunekit.errors import ConfigError

#: Preset name -> what `augmentation(preset)` applies, as fractions (rotation of a full
#: turn, zoom of the image size).
AUGMENTATION_PRESETS: dict[str, dict[str, float]] = {
    "light": {"rotation": 0.0, "zoom": 0.0},
    "default": {"rotation": 0.05, "zoom": 0.1},
    "strong": {"rotation": 0.1, "zoom": 0.2},
}


def augmentation(preset: str = "default", seed: int | None = None) -> keras.Sequential:
    """Random flips, rotations and zooms as Keras layers, for training batches only.

    Keras' random layers only act with `training=True`, so the same model or pipeline
    passes validation and test images through unchanged. They work on raw pixels: values
    stay in the input range (0-255). `FineTuner(augment="default")` applies this preset
    to training batches in the `tf.data` pipeline.

    Args:
        preset: `"light"` (horizontal flips), `"default"` (flips, rotations up to 18
            degrees, zoom up to 10 %) or `"strong"` (flips, 36 degrees, 20 %); see
            `AUGMENTATION_PRESETS`.
        seed: seed of the random transforms.

    Returns:
        A `keras.Sequential` named `augmentation`.

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
    layers: list[keras.layers.Layer] = [
        keras.layers.RandomFlip("horizontal", seed=seed, name="augment_flip")
    ]
    if amounts["rotation"]:
        layers.append(
            keras.layers.RandomRotation(amounts["rotation"], seed=seed, name="augment_rotation")
        )
    if amounts["zoom"]:
        layers.append(keras.layers.RandomZoom(amounts["zoom"], seed=seed, name="augment_zoom"))
    return keras.Sequential(layers, name="augmentation")




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
