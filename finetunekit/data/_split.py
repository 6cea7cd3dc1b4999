"""The content split: held-out images chosen by their pixels, not their position."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from finetunekit.data._guards import warn_lost_classes
from finetunekit.errors import DataError


def split_by_content(
    dataset: tf.data.Dataset, fraction: float, batch_size: int = 32, *, task_name: str = ""
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Splits a batched `(images, labels)` dataset into training and held-out parts.

    Each image is assigned by a fingerprint of its pixels, not by its position, so the
    split is the same in every epoch even when the dataset reshuffles (a `take`/`skip`
    split would then leak held-out images into training), and duplicates land together.

    Args:
        dataset: batched `(images, labels)`.
        fraction: share of the images to hold out, in (0, 1).
        batch_size: batch size of both results (constant, so every epoch has as many
            batches as the first).
        task_name: the task, to warn when a class lands on one side only (classification
            tasks; "" for none).

    Returns:
        `(train, held_out)` batched datasets of known length (0 batches when a side
        is empty).

    Raises:
        DataError: `fraction` is not in (0, 1).

    Examples:
        >>> train, val = split_by_content(dataset, 0.2)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be in (0, 1); received {fraction!r}.")
    flagged = dataset.map(lambda images, *rest: (images, *rest, held_out(images, fraction)))
    # One pass counts both sides (the same test the filters use), so both results carry
    # their length: Keras then neither guesses the epoch length nor warns that the
    # filtered data "ran out", and callers see an empty side as 0 batches. The same pass
    # reads every label, to warn of a class left on one side only.
    labels, flags = [], []
    for batch_labels, batch_flags in flagged.map(lambda *item: (item[1], item[-1])):
        labels.append(batch_labels.numpy())
        flags.append(batch_flags.numpy())
    held = np.concatenate(flags) if flags else np.zeros(0, bool)
    n_held, n_kept = int(held.sum()), int((~held).sum())
    if task_name and n_held and n_kept:
        warn_lost_classes(np.concatenate(labels), held, task_name)
    items = flagged.unbatch()
    train = items.filter(lambda *item: tf.logical_not(item[-1])).map(_drop_flag)
    validation = items.filter(lambda *item: item[-1]).map(_drop_flag)
    train, validation = train.batch(batch_size), validation.batch(batch_size)
    return (
        train.apply(tf.data.experimental.assert_cardinality(-(-n_kept // batch_size))),
        validation.apply(tf.data.experimental.assert_cardinality(-(-n_held // batch_size))),
    )


def _drop_flag(*item: tf.Tensor) -> tuple[tf.Tensor, ...]:
    return tuple(item[:-1])


def held_out(images: tf.Tensor, fraction: float) -> tf.Tensor:
    """Which images of a batch the content split holds out: one bool per image.

    A fingerprint of each image's pixels (their sum, in float64, spread by the golden
    ratio into 1000 buckets) decides, so an image lands on the same side in every epoch,
    every phase and every pass, whatever the order, and duplicates land together.
    `split_by_content` and the feature cache use this one function.
    """
    threshold = int(round(fraction * 1000))
    axes = list(range(1, len(images.shape)))
    total = tf.reduce_sum(tf.cast(images, tf.float64), axis=axes)
    bucket = tf.math.floormod(tf.cast(tf.floor(total * 0.6180339887498949), tf.int64), 1000)
    return bucket < threshold
