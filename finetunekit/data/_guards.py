"""Refusing data that would train (or predict) silently wrong: checks `prepare` adds.

What is checked, and why an error or a warning:

- **Pixels** (on the first batch: costs nothing measurable). finetunekit promises raw
  0-255 pixels; the model preprocesses them itself. NaN or infinite pixels are always
  an error (nothing valid looks like that). Negative pixels or every pixel within
  [0, 1] mean `preprocess_input` or `/ 255` was applied already: the model would
  preprocess twice and learn from near-constant images, so for a model known to take
  raw pixels (a registry base, a file saved by finetunekit) it is an error naming the
  fix. For a model of the user's own, whose preprocessing finetunekit cannot see, it is
  a warning. All-black images (every value 0) pass. Values above 510 (16-bit images)
  are an error for a model known to take raw pixels; above 255 otherwise, a warning
  (a bicubic resize or noise overshoots a little).
- **Labels, in full**: NaN, infinite or out-of-range labels (and NaN, infinite or
  negative sample weights) anywhere in the data stop the fit with a `DataError`,
  by a cheap assert on each batch as it is read (in the cache's one pass, the content
  split's pass, or every epoch when uncached), turned into a finetunekit error by
  `data_errors`; images holding NaN anywhere likewise.
- **Infinite datasets** (`.repeat()`): refused. The content split, the label check and
  the feature cache each pass over the data once; an endless dataset would hang them.
  finetunekit takes one pass per epoch, so `steps_per_epoch` is not offered.
- **Validation data of other classes**: both datasets carry `class_names`; different
  names mean shifted labels and a meaningless `val_loss`, so it is an error.
- **Validation data reading some of the training files** (both carry `file_paths`): a
  warning, as the validation loss then scores images the model trained on.
- **A class missing from one side of the content split** (a class of one image):
  a warning, since training is still right, but the validation loss does not cover it
  (or, held out, the model never sees it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from finetunekit import tasks
from finetunekit._orders import attach, orders_of
from finetunekit.errors import DataError

logger = logging.getLogger("finetunekit")

#: Marks the assertions of `guard_labels` in TensorFlow's error messages.
_MARK = "finetunekit-bad-batch"
_RAW_FIX = (
    "Pass raw 0-255 pixels (e.g. the images as loaded, or x * 255 if you divided by 255): "
    "the model applies its own preprocessing, so preprocess_input or / 255 by hand means "
    "preprocessing twice."
)


def check_pixels(images: Any, what: str, *, raw: bool = True) -> None:
    """Checks a sample of images against the 0-255 promise (see the module's notes).

    Args:
        images: an array (or tensor) of images, e.g. the first batch.
        what: how the message names the data, e.g. `"training data"`.
        raw: the model is known to take raw 0-255 pixels: a clearly wrong range is an
            error; else a warning.

    Raises:
        DataError: NaN or infinite pixels; with `raw`, negative pixels, all of them
            within [0, 1], or pixels above 510.
    """
    sample = np.asarray(images)  # no copy: a batch of 32 at 224 px is checked in ms
    if sample.size == 0:
        return
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
        raise DataError(
            f"{what}: the images hold NaN or infinite pixel values. Clean or drop those "
            "images first (e.g. ds.filter(lambda x, y: tf.reduce_all(tf.math.is_finite(x))))."
        )
    low, high = float(sample.min()), float(sample.max())
    problem = None
    if low < 0:
        problem = (
            f"{what}: pixel values go down to {low:.3g} (negative, in a sample of "
            f"{len(sample)} images), as after preprocess_input."
        )
    elif 0 < high <= 1:
        problem = (
            f"{what}: every pixel value is within [0, 1] (largest {high:.3g} in a sample of "
            f"{len(sample)} images), as after dividing by 255."
        )
    if problem is not None:
        if raw:
            raise DataError(f"{problem} {_RAW_FIX}")
        logger.warning("%s If this model takes raw pixels: %s", problem, _RAW_FIX)
    elif high > 256:
        problem = (
            f"{what}: pixel values go up to {high:g}, beyond 255 (16-bit images?); the "
            "model takes 8-bit 0-255 pixels."
        )
        fix = "Scale them first, e.g. x / 257 for 16-bit images (0-65535)."
        # On the flowers, uint16 images trained to 0.39 test accuracy, not 0.78. Up to
        # twice 255 may be a resize's overshoot (bicubic) or noise: a warning only.
        if raw and high > 2 * 255:
            raise DataError(f"{problem} {fix}")
        logger.warning("%s If this model takes 0-255 pixels: %s", problem, fix)


def warn_shared_files(train: Any, validation: Any) -> None:
    """Warns when the training and validation datasets read some of the same files.

    Both carry `file_paths` when they come from Keras' loader or `from_directory`; two
    `validation_split` subsets drawn with different seeds share most of their files,
    and the validation loss early stopping watches then scores images the model trained
    on. A warning: training is right, only the estimate is optimistic.
    """
    train_files = getattr(train, "file_paths", None)
    validation_files = getattr(validation, "file_paths", None)
    if not train_files or not validation_files:
        return
    shared = {os.path.normpath(p) for p in train_files} & {
        os.path.normpath(p) for p in validation_files
    }
    if shared:
        logger.warning(
            "validation_data shares %d of its %d files with the training data: its loss, "
            "which early stopping watches, scores images the model trains on. Split once "
            "(Keras' loader with validation_split=..., subset='both' and one seed), or keep "
            "the validation images in folders of their own.",
            len(shared), len(validation_files),
        )


def check_finite(dataset: tf.data.Dataset, what: str) -> None:
    """Refuses an endless dataset (`.repeat()`), which every pass over the data would hang on.

    Raises:
        DataError: the dataset's cardinality is infinite.
    """
    cardinality = int(dataset.cardinality())
    unknown = cardinality == int(tf.data.UNKNOWN_CARDINALITY)
    if cardinality == int(tf.data.INFINITE_CARDINALITY) or (unknown and _repeats_forever(dataset)):
        raise DataError(
            f"{what} is infinite (it repeats): finetunekit passes over the data once per "
            "epoch (and once more to cache features or split it). Remove .repeat() (or use "
            "ds.take(n) for a fixed number of batches)."
        )
    if unknown:
        logger.warning(
            "%s: TensorFlow cannot tell how many batches it holds (it is filtered, "
            "interleaved or read from a generator): if it never ends, neither will this "
            "pass over it. Give it an end with ds.take(n), or state its length with "
            "ds.apply(tf.data.experimental.assert_cardinality(n)).", what,
        )


def _repeats_forever(dataset: tf.data.Dataset) -> bool:
    """Whether a dataset of unknown length repeats without end: `.repeat()` without a
    count followed only by transformations of one dataset that cannot end it (`filter`,
    `map`, `batch`...), as in `.repeat().filter(...)`, whose length TensorFlow leaves
    unknown. Read from the dataset's graph (tf.data has no public view of it), from the
    output back along each transformation's one input dataset: a `take` ends it, and a
    dataset made of several (`zip`, `sample_from_datasets`) or by a resampling is not
    judged. No answer is no refusal."""
    try:
        from tensorflow.core.framework import graph_pb2

        graph = graph_pb2.GraphDef()
        graph.ParseFromString(dataset._as_serialized_graph().numpy())
    except Exception:  # noqa: BLE001 - a view of a private graph
        return False
    nodes = {node.name: node for node in graph.node}
    node = next((n for n in graph.node if n.op == "_Retval"), None)
    seen = 0
    while node is not None and seen < 1000:
        seen += 1
        if node.op in ("TakeDataset", "TakeWhileDataset"):
            return False
        if node.op == "RepeatDataset":
            count = nodes.get(node.input[1].split(":")[0]) if len(node.input) > 1 else None
            if count is not None and count.op == "Const":
                if int(tf.make_ndarray(count.attr["value"].tensor)) == -1:
                    return True
        inputs = [nodes.get(i.split(":")[0]) for i in node.input if not i.startswith("^")]
        datasets = [n for n in inputs if n is not None and n.op.endswith(("Dataset", "DatasetV2",
                                                                           "DatasetV3"))]
        if len(datasets) != 1:  # a source, or several datasets joined: not judged
            return False
        node = datasets[0]
    return False


def check_class_names(
    train: Sequence[str] | None, validation: Sequence[str] | None
) -> None:
    """Refuses validation data whose class names differ from the training data's.

    Raises:
        DataError: both carry `class_names` and they differ, naming both.
    """
    if not train or not validation or list(train) == list(validation):
        return
    missing = sorted(set(train) - set(validation))
    extra = sorted(set(validation) - set(train))
    detail = (
        f"missing from validation: {missing}" if missing else ""
    ) + (f"{'; ' if missing else ''}only in validation: {extra}" if extra else "")
    raise DataError(
        f"The validation data has other classes than the training data (training "
        f"{list(train)}, validation {list(validation)}"
        + (f"; {detail}" if detail else "; same names, another order")
        + "), so label i means another class in each and val_loss is meaningless. Load both "
        "from folders with the same class subfolders (an empty class folder is an error), "
        "or pass class_names=... to Keras' loader for both."
    )


def guard_labels(
    dataset: tf.data.Dataset,
    bounds: tuple[float, float, bool],
    what: str,
    size: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """`dataset` with every batch's labels (and finiteness of its images) asserted.

    A cheap check on each batch as it is read, so a bad label at index 150 is caught in
    the first pass that reaches it (the cache fill, the content split, or the epoch),
    not only in the first batches `prepare` reads. Run the pass inside `data_errors`
    to get a `DataError` instead of TensorFlow's `InvalidArgumentError`.

    `size`: for images whose (height, width) the dataset leaves open (a decoder in a
    `tf.py_function`), the first batch's: every batch is asserted to have it, and the
    images get it as their static shape, so the model is built and checked at that size.
    """
    low, high, whole = bounds

    def check(images: tf.Tensor, labels: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        values = tf.cast(labels, tf.float64)
        ok = tf.reduce_all(tf.math.is_finite(values))
        if math.isfinite(low):
            ok = tf.logical_and(ok, tf.reduce_all(values >= low))
        if math.isfinite(high):
            ok = tf.logical_and(ok, tf.reduce_all(values <= high))
        if whole:
            ok = tf.logical_and(ok, tf.reduce_all(tf.equal(values, tf.floor(values))))
        # One sum is finite iff every pixel is (0-255 values cannot overflow float32).
        finite = tf.math.is_finite(tf.reduce_sum(tf.cast(images, tf.float32)))
        asserts = [
            tf.debugging.Assert(
                ok, [f"{_MARK}:labels:{what}:", tf.reduce_min(values), tf.reduce_max(values)]
            ),
            tf.debugging.Assert(finite, [f"{_MARK}:images:{what}:"]),
        ]
        if rest:  # sample weights: NaN ones made the loss NaN, reported as divergence
            weights = tf.cast(rest[0], tf.float64)
            usable = tf.logical_and(
                tf.reduce_all(tf.math.is_finite(weights)), tf.reduce_all(weights >= 0)
            )
            asserts.append(tf.debugging.Assert(usable, [f"{_MARK}:weights:{what}:"]))
        if size is not None:
            actual = tf.shape(images)[1:3]
            same = tf.reduce_all(tf.equal(actual, size))
            asserts.append(tf.debugging.Assert(same, [f"{_MARK}:size:{what}:", actual]))
        with tf.control_dependencies(asserts):  # the labels wait for both checks
            if size is not None:  # after the assert, which names the batch's size
                images = tf.ensure_shape(images, [None, *size, images.shape[-1]])
            return (images, tf.identity(labels), *rest)

    guarded = dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    orders = orders_of(dataset)  # the epoch-keyed shuffle stays visible to the fit
    return guarded if orders is None else attach(guarded, orders)


@contextlib.contextmanager
def data_errors(
    task_name: str = "", bounds: tuple[float, float, bool] | None = None
) -> Iterator[None]:
    """Turns TensorFlow's errors about bad batches into `DataError`s that name the fix.

    Covers the assertions of `guard_labels` and batching images of different sizes.
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as exc:
        raise _translated(exc, task_name, bounds) from None
    except tf.errors.FailedPreconditionError as exc:
        if "was expected to contain" not in str(exc):
            raise
        # The content split's sides are counted on one pass and asserted on the next.
        raise DataError(
            "The training data gave other images on another pass (random augmentation "
            "mapped into the dataset, or .take() of a dataset that reshuffles), so the "
            "held-out split, decided by each image's content, changed between passes. "
            "Pass validation_data=... (or validation_split=0), and augment with "
            "FineTuner(augment=...) rather than inside the dataset."
        ) from None


def _translated(
    exc: tf.errors.InvalidArgumentError, task_name: str, bounds: tuple[float, float, bool] | None
) -> Exception:
    message = getattr(exc, "message", str(exc))
    # e.g. "assertion failed: [finetunekit-bad-batch:labels:training data:] [0] [7]"
    found = re.search(
        _MARK + r":(labels|images|weights|size):([^:]*):\](?: \[([^\]]*)\] \[([^\]]*)\])?",
        message,
    )
    if found:
        kind, what = found.group(1), found.group(2)
        if kind == "size":
            sized = re.search(r":size:[^:]*:\] \[([^\]]*)\]", message)
            pixels = "x".join(sized.group(1).split()) if sized else "another size"
            return DataError(
                f"{what}: a batch holds images of {pixels} pixels, another size than the "
                "first batch's (read as the data came, since the dataset does not say its "
                "image size). Resize every image to one size when loading, e.g. "
                "ds.map(lambda x, y: (tf.image.resize(x, (224, 224)), y)), or load folders "
                "with finetunekit.data.from_directory(..., image_size=224)."
            )
        if kind == "weights":
            return DataError(
                f"{what}: a batch holds sample weights that are NaN, infinite or negative "
                "(found while reading the data). Fix or drop those weights: each must be a "
                "finite number >= 0."
            )
        if kind == "images":
            return DataError(
                f"{what}: an image holds NaN or infinite pixel values (found while training, "
                "past the first batch checked up front). Clean or drop those images, e.g. "
                "ds.filter(lambda x, y: tf.reduce_all(tf.math.is_finite(x)))."
            )
        low, high = found.group(3), found.group(4)
        expected = _expected(task_name, bounds)
        return DataError(
            f"{what}: a batch holds labels from {low} to {high}, outside what "
            f"task={task_name!r} takes ({expected}), or NaN (found while reading the data, "
            "past the first batches checked up front). Fix or drop those labels"
            + (", or set num_classes to the number of classes." if bounds and bounds[2] else ".")
        )
    if "Cannot batch tensors with different shapes" in message:
        shapes = re.search(r"First element had shape (\[[^\]]*\]) and element \d+ had shape "
                           r"(\[[^\]]*\])", message)
        seen = f" ({shapes.group(1)} and {shapes.group(2)})" if shapes else ""
        if shapes and _channels_differ(shapes.group(1), shapes.group(2)):
            return _mixed_channels(seen)
        return DataError(
            f"The images have different sizes{seen} and cannot be batched. Resize them to "
            "one size first, e.g. ds.map(lambda x, y: (tf.image.resize(x, (224, 224)), y)), "
            "or load folders with finetunekit.data.from_directory(..., image_size=224)."
        )
    if "Cannot add tensor to the batch: number of elements does not match" in message:
        shapes = re.search(r"Shapes are: \[tensor\]: (\[[^\]]*\]), \[batch\]: (\[[^\]]*\])",
                           message)
        return _mixed_channels(f" ({shapes.group(1)} and {shapes.group(2)})" if shapes else "")
    if "does not support 4 channels" in message:  # Keras' loader, color_mode="rgba"
        return DataError(
            "The images could not be decoded with 4 channels (JPEG has no alpha): "
            "load them as RGB, e.g. keras.utils.image_dataset_from_directory(..., "
            "color_mode='rgb'), or with finetunekit.data.from_directory(...)."
        )
    if is_decode_failure(message):
        said = re.sub(r"\{\{[^}]*\}\}", "", message).split("[[")[0].strip().rstrip(".")
        return DataError(
            f"An image file could not be decoded (not an image, or truncated): {said[:160]}. "
            "Remove or re-save it; finetunekit.data.from_directory(..., on_bad_image='skip') "
            "leaves such files out."
        )
    if "finetunekit-bad-channels" in message:
        found = re.search(r"finetunekit-bad-channels: images of\] \[(\d+)\]", message)
        count = found.group(1) if found else "another number of"
        return DataError(
            f"A batch holds images of {count} channels; finetunekit reads 1 (grayscale), "
            "3 (RGB) or 4 (RGBA). Decode the images to RGB, e.g. "
            "tf.io.decode_image(data, channels=3, expand_animations=False)."
        )
    return exc


#: What TensorFlow's image decoders say of a file they cannot read.
_DECODE_FAILURES = (
    "Unknown image file format",
    "Invalid JPEG data",
    "jpeg::Uncompress failed",
    "Invalid PNG data",
    "Invalid GIF data",
    "Invalid BMP",
    "Input size should be at least",
)


def is_decode_failure(exc_or_message: Any) -> bool:
    """Whether a TensorFlow error (or its message) says an image file could not be decoded."""
    message = getattr(exc_or_message, "message", str(exc_or_message))
    return any(marker in message for marker in _DECODE_FAILURES)


def _channels_differ(first: str, other: str) -> bool:
    """Whether two shapes as TensorFlow prints them (`[32,32,1]`) differ in the last axis alone."""
    a, b = (part.strip("[]").split(",") for part in (first, other))
    return len(a) == len(b) > 1 and a[:-1] == b[:-1] and a[-1] != b[-1]


def _mixed_channels(seen: str) -> DataError:
    return DataError(
        f"The images differ in size or channels{seen} and cannot be batched: grayscale "
        "and RGB files decoded with their own channels, say. Decode every file to RGB, "
        "e.g. tf.io.decode_image(data, channels=3, expand_animations=False), and resize "
        "to one size, or load folders with finetunekit.data.from_directory(...)."
    )


def _expected(task_name: str, bounds: tuple[float, float, bool] | None) -> str:
    if bounds is None:
        return "finite values"
    low, high, whole = bounds
    if whole and math.isfinite(high):
        return f"class indices 0..{int(high)}"
    if math.isfinite(low) and math.isfinite(high):
        return f"values from {low:g} to {high:g}"
    return "finite values"


def warn_lost_classes(labels: np.ndarray, held: np.ndarray, task_name: str) -> None:
    """Warns when the content split leaves a class on one side only (e.g. a class of one image).

    Args:
        labels: every training label (indices, or one-hot rows).
        held: one bool per example: held out for validation.
        task_name: the task (only classification tasks are checked).
    """
    if not task_name or not tasks.get_task(task_name).one_class_per_image:
        return
    if len(labels) == 0 or not held.any():
        return
    labels = np.asarray(labels)
    classes = labels.reshape(len(labels), -1)
    index = classes.argmax(axis=1) if classes.shape[1] > 1 else classes[:, 0].astype("int64")
    kept_classes, held_classes = set(index[~held].tolist()), set(index[held].tolist())
    only_held = sorted(held_classes - kept_classes)
    only_kept = sorted(kept_classes - held_classes)
    if only_held:
        logger.warning(
            "the content split holds out every image of class %s: the model never trains "
            "on it. Add images of it, or pass validation_data.", only_held,
        )
    if only_kept:
        logger.warning(
            "the content split leaves class %s out of the validation images (too few "
            "images of it): early stopping does not watch it. Add images of it, or pass "
            "validation_data.", only_kept,
        )
