"""Turning arrays and `tf.data` into batched `(raw pixels, labels)` datasets, with clear errors.

Images stay raw pixels (0-255, RGB); the base carries its own preprocessing.
Grayscale images become RGB and RGBA images lose their alpha channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from finetunekit.errors import ArgumentTypeError, DataError

__all__ = ["from_arrays", "as_dataset", "LabelInfo", "inspect_labels", "check_labels"]


def _to_rgb(images: tf.Tensor) -> tf.Tensor:
    images = tf.cast(images, tf.float32)
    channels = images.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(images)
    if channels == 4:
        return images[..., :3]
    return images


def _check_image_shape(shape: tuple[Any, ...], what: str) -> None:
    if len(shape) != 4:
        raise DataError(
            f"{what} must be a batch of images (batch, height, width, channels); received "
            f"shape {shape}. Add a channel axis to grayscale arrays, e.g. x[..., None]."
        )
    if shape[-1] not in (1, 3, 4, None):
        raise DataError(
            f"{what} must have 1 (grayscale), 3 (RGB) or 4 (RGBA) channels in the last axis; "
            f"received shape {shape}. finetunekit expects channels-last images."
        )


def from_arrays(
    x: Any,
    y: Any,
    *,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Makes a batched dataset of `(images, labels)` from numpy arrays.

    Args:
        x: images, shape `(n, height, width, channels)` with 1, 3 or 4 channels, raw pixel
            values (0-255), any numeric dtype.
        y: labels: class indices `(n,)`, one-hot or multi-hot `(n, k)`, or targets.
        batch_size: images per batch.
        shuffle: reshuffle the examples every epoch.
        seed: seed of the shuffle.

    Returns:
        A `tf.data.Dataset` of `(float32 RGB images, labels)` batches.

    Raises:
        DataError: shapes or lengths that do not fit, non-numeric data, NaN in images.
        ArgumentTypeError: `x` or `y` is not array-like.

    Example:

    >>> train = from_arrays(x_train, y_train, batch_size=32, seed=0)
    """
    x_arr = _as_array(x, "x")
    y_arr = _as_array(y, "y")
    _check_image_shape(tuple(x_arr.shape), "x")
    if len(x_arr) != len(y_arr):
        raise DataError(
            f"x and y must hold the same number of examples; received {len(x_arr)} images "
            f"and {len(y_arr)} labels."
        )
    if len(x_arr) == 0:
        raise DataError("x and y are empty; there is nothing to train on.")
    if not np.issubdtype(x_arr.dtype, np.number) or not np.issubdtype(y_arr.dtype, np.number):
        raise DataError(
            f"x and y must be numeric; received dtypes {x_arr.dtype} and {y_arr.dtype}. "
            "Encode class names as integers (e.g. with the sorted class list)."
        )
    if np.issubdtype(x_arr.dtype, np.floating) and not np.isfinite(x_arr).all():
        raise DataError("x holds NaN or infinite pixel values; clean the images first.")
    _check_batch_size(batch_size)
    dataset = tf.data.Dataset.from_tensor_slices((x_arr, y_arr))
    if shuffle:
        dataset = dataset.shuffle(len(x_arr), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(
        lambda images, labels: (_to_rgb(images), labels), num_parallel_calls=tf.data.AUTOTUNE
    )


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int; received {batch_size!r}.")


def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise ArgumentTypeError(
            f"{name} must be a numpy array (or array-like); received {type(value).__name__}."
        )
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} could not be turned into an array: {exc}") from exc


def as_dataset(
    data: Any,
    y: Any = None,
    *,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    what: str = "training data",
) -> tf.data.Dataset:
    """Accepts a `tf.data.Dataset` of `(images, labels)`, a tuple `(x, y)` or arrays `x, y`.

    An unbatched dataset is batched; images become float32 RGB.

    Raises:
        DataError: the data is not made of `(images, labels)` elements of the right shapes.
        ArgumentTypeError: the data is of a type finetunekit does not read.
    """
    if isinstance(data, tf.data.Dataset):
        if y is not None:
            raise DataError(
                f"{what}: pass labels inside the dataset as (images, labels) elements, not as y."
            )
        return _standardize_dataset(data, batch_size, what)
    if y is None and isinstance(data, (tuple, list)) and len(data) == 2:
        data, y = data
    if y is None:
        raise DataError(
            f"{what}: labels are missing. Pass a tf.data.Dataset of (images, labels), a tuple "
            "(x, y), or arrays x and y."
        )
    if isinstance(data, tf.data.Dataset):
        raise DataError(f"{what}: a dataset cannot be paired with separate labels.")
    return from_arrays(data, y, batch_size=batch_size, shuffle=shuffle, seed=seed)


def _standardize_dataset(dataset: tf.data.Dataset, batch_size: int, what: str) -> tf.data.Dataset:
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise DataError(
            f"{what}: dataset elements must be (images, labels) tuples; received elements of "
            f"{spec}. Map them, e.g. ds.map(lambda d: (d['image'], d['label']))."
        )
    image_spec = spec[0]
    if not isinstance(image_spec, tf.TensorSpec):
        raise DataError(f"{what}: images must be tensors; received {image_spec}.")
    if image_spec.shape.rank == 3:
        _check_batch_size(batch_size)
        dataset = dataset.batch(batch_size)
        image_spec = dataset.element_spec[0]
    _check_image_shape(tuple(image_spec.shape), f"{what}: images")
    if image_spec.shape[-1] in (3, None) and image_spec.dtype == tf.float32:
        return dataset
    return dataset.map(
        lambda images, *rest: (_to_rgb(images), *rest), num_parallel_calls=tf.data.AUTOTUNE
    )


@dataclass(frozen=True)
class LabelInfo:
    """What the labels of a dataset look like.

    Attributes:
        label_mode: `"int"` (indices), `"categorical"` (one row per example with k > 1
            columns) or `"binary"` (0/1 values).
        width: columns of the labels (1 for indices).
        max_label: the largest value seen.
        min_label: the smallest value seen.
        integral: whether every value seen is a whole number.
    """

    label_mode: str
    width: int
    max_label: float
    min_label: float
    integral: bool


def inspect_labels(dataset: tf.data.Dataset, *, max_batches: int | None = None) -> LabelInfo:
    """Reads the labels of a batched dataset (all of them, or the first `max_batches`)."""
    label_ds = dataset.map(lambda _images, labels, *rest: labels)
    if max_batches is not None:
        label_ds = label_ds.take(max_batches)
    batches = [np.asarray(b) for b in label_ds.as_numpy_iterator()]
    if not batches:
        raise DataError("The dataset is empty; there is nothing to train on.")
    labels = np.concatenate([b.reshape(len(b), -1) for b in batches])
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
        raise DataError(f"Labels must be numeric; received dtype {labels.dtype}.")
    labels = labels.astype("float64")
    width = labels.shape[1]
    integral = bool(np.all(np.equal(np.mod(labels, 1), 0)))
    binary = integral and bool(np.all((labels == 0) | (labels == 1)))
    mode = "categorical" if width > 1 else ("binary" if binary and labels.max() <= 1 else "int")
    return LabelInfo(mode, width, float(labels.max()), float(labels.min()), integral)


def check_labels(info: LabelInfo, task: str, num_classes: int | None) -> str:
    """Validates labels against the task and returns the label mode the loss must use.

    Raises:
        DataError: labels that do not fit the task or the number of classes, naming
            what was expected.
    """
    if task == "regression":
        return "int"
    if task == "multiclass":
        if info.width > 1:
            if num_classes is not None and info.width != num_classes:
                raise DataError(
                    f"Labels are one-hot with {info.width} columns but the model has "
                    f"{num_classes} classes. Expected integer class indices (shape (n,)) or "
                    f"one-hot rows with {num_classes} columns."
                )
            return "categorical"
        if not info.integral or info.min_label < 0:
            raise DataError(
                "task='multiclass' expects integer class indices 0..num_classes-1 (or one-hot "
                f"rows); received labels from {info.min_label:g} to {info.max_label:g}"
                + ("" if info.integral else " with fractions")
                + ". Encode classes as integers."
            )
        if num_classes is not None and info.max_label >= num_classes:
            raise DataError(
                f"Label {info.max_label:g} is out of range for {num_classes} classes (expected "
                f"0..{num_classes - 1}). Set num_classes to the number of classes."
            )
        return "int"
    if info.min_label < 0 or info.max_label > 1:
        raise DataError(
            f"task={task!r} expects labels of 0 and 1; received values from "
            f"{info.min_label:g} to {info.max_label:g}."
        )
    if task == "binary" and info.width != 1:
        raise DataError(
            f"task='binary' expects one 0/1 label per example; received {info.width} columns. "
            "Use task='multilabel' (multi-hot) or task='multiclass' (one-hot)."
        )
    if task == "multilabel" and num_classes is not None and info.width != num_classes:
        raise DataError(
            f"task='multilabel' expects multi-hot rows with {num_classes} columns; received "
            f"{info.width}."
        )
    return "binary"
