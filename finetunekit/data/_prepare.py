"""`prepare`: the data of one fit, converted and checked once."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from finetunekit import tasks
from finetunekit.data import _guards
from finetunekit.data._arrays import IMAGES, as_dataset, unpack_arrays
from finetunekit.data._labels import _label_info, inspect_labels
from finetunekit.data._split import split_by_content
from finetunekit.errors import DataError

__all__ = ["Prepared", "prepare"]

logger = logging.getLogger("finetunekit")

#: Batches whose labels are read to check them and infer the label mode.
_LABEL_BATCHES = 4


@dataclass
class Prepared:
    """The data of one fit, converted and checked once (see `prepare`).

    Attributes:
        train: batched `(float32 RGB images, labels)`, reshuffled every epoch: all
            the training images, before any content split.
        validation: the caller's validation data, batched, or None.
        holdout: the fraction of `train` held out by content for early stopping when
            there is no `validation` (0: none).
        label_mode: `"int"`, `"categorical"` or `"binary"`, as the loss must read them.
        num_classes: classes (or outputs) of the task, given or inferred from the labels.
        class_names: the class names the training data carries, if any.
        batch_size: images per batch (a dataset's own, for datasets).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    holdout: float
    label_mode: str
    num_classes: int | None
    class_names: tuple[str, ...] | None
    batch_size: int
    _split: tuple[tf.data.Dataset, tf.data.Dataset | None] | None = field(
        default=None, repr=False
    )
    #: The number of training images where it is known exactly (see `images`).
    count: int | None = None
    #: The task's name and the labels' bounds, for the messages of `errors`.
    task_name: str = ""
    label_bounds: tuple[float, float, bool] | None = None

    def errors(self) -> contextlib.AbstractContextManager[None]:
        """Wrap passes over the data in this: bad batches found there raise `DataError`."""
        return _guards.data_errors(self.task_name, self.label_bounds)

    @property
    def has_validation(self) -> bool:
        """Whether there is data to validate on (given, or to be held out)."""
        return self.validation is not None or self.holdout > 0

    @property
    def images(self) -> int | None:
        """How many training images there are, before any content split: exact for
        arrays, `from_arrays` and datasets of files; else at least this many (all
        batches but the last full); None when the dataset's length is unknown."""
        if self.count is not None:
            return self.count
        batches = int(self.train.cardinality())
        return (batches - 1) * self.batch_size + 1 if batches > 0 else None

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """The images' static (height, width, channels), when the dataset fixes it."""
        height, width, channels = tuple(self.train.element_spec[0].shape[1:4])
        if height is None or width is None:
            return None
        return int(height), int(width), int(channels or 3)

    def datasets(self) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
        """`(train, validation)` image datasets, with the content split made once.

        For phases that run the images through the model; cached phases split their
        stored features by the same rule instead, in the pass that stores them.
        """
        if self.holdout <= 0:
            return self.train, self.validation
        if self._split is None:
            kept, held = split_by_content(
                self.train, self.holdout, self.batch_size, task_name=self.task_name
            )
            if int(kept.cardinality()) == 0 or int(held.cardinality()) == 0:
                self.no_holdout()
                self._split = (self.train, None)
            else:
                logger.info(
                    "held out about %g of the training images (%d batches) for early stopping",
                    self.holdout,
                    int(held.cardinality()),
                )
                self._split = (kept, held)
        return self._split

    def no_holdout(self) -> None:
        """Gives up the content split when a side of it is empty (too few images)."""
        logger.warning(
            "validation_split=%g leaves one side empty (by content, with these few images): "
            "training on all of them without early stopping. Pass validation_data, or more "
            "images.",
            self.holdout,
        )
        self.holdout = 0.0


def prepare(
    train: Any,
    y: Any = None,
    *,
    task: str | tasks.Task = "multiclass",
    num_classes: int | None = None,
    validation_data: Any = None,
    holdout: float = 0.0,
    batch_size: int = 32,
    seed: int | None = None,
    raw_pixels: bool = True,
    one_size: bool = True,
    channels: int = 3,
) -> Prepared:
    """Converts and checks the data of a fit once: datasets, labels, classes.

    Args:
        train: a `tf.data.Dataset` of `(images, labels)`, a tuple `(x, y)`, or images
            with labels in `y`.
        y: labels, when `train` is an image array.
        task: the task the labels are checked against.
        num_classes: classes of the task; inferred from the labels (or the dataset's
            `class_names`) when None.
        validation_data: the same forms as `train`, or None.
        holdout: without `validation_data`, the fraction of training images to hold out
            by content (see `split_by_content`).
        batch_size: batch size for arrays and unbatched datasets.
        seed: seed of the shuffle of arrays.
        raw_pixels: the model is known to take raw 0-255 pixels, so images clearly
            outside that range (negative, or all within [0, 1]) are an error rather
            than a warning (see `finetunekit.data._guards`).
        one_size: the model takes one image size: images whose size the dataset leaves
            open are held to the first batch's (checked on every batch), so that the
            model is built and checked at it. False for a model of open size, which
            may take batches of several sizes.
        channels: the channels the model takes: images become RGB for 3 (grayscale
            repeated, alpha dropped), grayscale for 1; any other count must match.

    Labels are checked in full: arrays here, datasets batch by batch as they are read
    (wrap those passes in `Prepared.errors()`). The images of the first batch are
    checked against the 0-255 promise.

    Returns:
        A `Prepared`.

    Raises:
        DataError: data or labels that do not fit the task; validation labels encoded
            unlike the training labels or of other classes; an infinite dataset; images
            not of raw 0-255 pixels.
    """
    with _guards.data_errors(tasks.get_task(task).name):
        return _prepare(
            train, y, task=task, num_classes=num_classes, validation_data=validation_data,
            holdout=holdout, batch_size=batch_size, seed=seed, raw_pixels=raw_pixels,
            one_size=one_size, channels=channels,
        )


def _prepare(
    train: Any,
    y: Any,
    *,
    task: str | tasks.Task,
    num_classes: int | None,
    validation_data: Any,
    holdout: float,
    batch_size: int,
    seed: int | None,
    raw_pixels: bool,
    one_size: bool,
    channels: int,
) -> Prepared:
    spec = tasks.get_task(task)
    train_ds = as_dataset(
        train, y, batch_size=batch_size, shuffle=True, seed=seed, channels=channels
    )
    val_ds = None
    if validation_data is not None:
        val_ds = as_dataset(
            validation_data, batch_size=batch_size, shuffle=False, what="validation_data",
            channels=channels,
        )
    _guards.check_finite(train_ds, "training data")
    if val_ds is not None:
        _guards.check_finite(val_ds, "validation_data")
    names = getattr(train, "class_names", None)
    val_names = getattr(validation_data, "class_names", None)
    _guards.check_class_names(names, val_names)
    _guards.warn_shared_files(train, validation_data)
    if not names and val_names:
        # Keras' tutorial idiom loses them: train.cache().prefetch(...) beside validation
        # data of the same loader call (subset="both"), which still carries them.
        names = list(val_names)
        logger.info("class names from validation_data (the training data has none): %s",
                    ", ".join(map(str, names)))
    # Arrays are in memory: every label is checked now; datasets batch by batch below.
    info = _array_labels(train, y)
    if info is None:
        info = inspect_labels(train_ds, max_batches=_LABEL_BATCHES)
    if num_classes is None:
        # Every label, not a sample, when they are read: the largest class may be rare.
        num_classes = spec.infer_num_classes(names, lambda: inspect_labels(train_ds))
        if num_classes is not None:
            logger.info("num_classes inferred from the data: %d", num_classes)
            tasks.output_units(spec, num_classes)
    spec.check_class_names(names, num_classes)
    mode = spec.check_labels(info, num_classes)
    if val_ds is not None:
        val_info = _array_labels(validation_data, None)
        try:
            val_mode = spec.check_labels(
                val_info or inspect_labels(val_ds, max_batches=_LABEL_BATCHES), num_classes
            )
        except DataError as exc:  # said of the validation data, whose labels must fit
            raise DataError(
                f"validation_data: {exc}".replace(
                    "Set num_classes to the number of classes.",
                    "Validation labels must be classes of the training data (or set "
                    "num_classes to the number of classes).",
                )
            ) from None
        if val_mode != mode:
            raise DataError(
                f"Training labels are {mode} but validation labels are {val_mode}; encode "
                "both the same way (class indices, or one-hot rows)."
            )
    # A dataset keeps its batch size in every phase, split or not, cached or not.
    first = next(iter(train_ds.take(1)))[0]
    _guards.check_pixels(first, "training data", raw=raw_pixels)
    val_first = None if val_ds is None else next(iter(val_ds.take(1)))[0]
    if val_first is not None:
        _guards.check_pixels(val_first, "validation_data", raw=raw_pixels)
    own = train_ds.element_spec[0].shape[0] or first.shape[0]
    bounds = spec.label_bounds(mode, num_classes)
    train_ds = _guards.guard_labels(
        train_ds, bounds, "training data", _open_size(train_ds, first) if one_size else None
    )
    if val_ds is not None:
        val_ds = _guards.guard_labels(
            val_ds, bounds, "validation_data", _open_size(val_ds, val_first) if one_size else None
        )
    return Prepared(
        train=train_ds,
        validation=val_ds,
        holdout=holdout if val_ds is None else 0.0,
        label_mode=mode,
        num_classes=num_classes,
        class_names=tuple(names) if names else None,
        batch_size=int(own or batch_size),
        count=_exact_count(train, y),
        task_name=spec.name,
        label_bounds=bounds,
    )


def _open_size(dataset: tf.data.Dataset, first: Any) -> tuple[int, int] | None:
    """The first batch's (height, width) when the dataset leaves its images' size open
    (decoded in a `tf.py_function`, say): without it the base would be built at its
    default size and the size check against the model skipped."""
    shape = dataset.element_spec[0].shape
    if shape.rank != 4 or shape[1:3].is_fully_defined():
        return None
    return int(first.shape[1]), int(first.shape[2])


def _exact_count(data: Any, y: Any) -> int | None:
    """How many training images `data` holds, where that is known without reading it:
    arrays, a `from_arrays` dataset, a dataset of files (`file_paths`, as Keras' loaders
    and `from_directory` set it)."""
    paths = getattr(data, "file_paths", None)
    if isinstance(paths, (list, tuple)):
        return len(paths)
    known = getattr(data, IMAGES, None)
    if isinstance(known, int):
        return known
    if isinstance(data, tf.data.Dataset):
        return None
    x, labels, _ = unpack_arrays(data, y)
    if labels is None or isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
        return None  # a PyDataset, say
    return len(x)


def _array_labels(data: Any, y: Any) -> Any:
    """Every label of array data (`x, y` or `(x, y)`), read in full; None for datasets."""
    if isinstance(data, tf.data.Dataset):
        return None
    _, y, _ = unpack_arrays(data, y)
    return None if y is None else _label_info(np.asarray(y))
