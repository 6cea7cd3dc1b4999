"""Reading the labels of a dataset and checking them against a task."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from finetunekit import tasks
from finetunekit.errors import DataError
from finetunekit.tasks import LabelSummary as LabelInfo

__all__ = ["LabelInfo", "inspect_labels", "check_labels"]


def inspect_labels(dataset: tf.data.Dataset, *, max_batches: int | None = None) -> LabelInfo:
    """Reads the labels of a batched dataset (all of them, or the first `max_batches`)."""
    label_ds = dataset.map(lambda _images, labels, *rest: labels)
    if max_batches is not None:
        label_ds = label_ds.take(max_batches)
    batches = [np.asarray(b) for b in label_ds.as_numpy_iterator()]
    if not batches:
        raise DataError("The dataset is empty; there is nothing to train on.")
    return _label_info(np.concatenate([b.reshape(len(b), -1) for b in batches]))


def _label_info(labels: np.ndarray) -> LabelInfo:
    labels = labels.reshape(len(labels), -1)
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
        raise DataError(f"Labels must be numeric; received dtype {labels.dtype}.")
    labels = labels.astype("float64")
    if not np.isfinite(labels).all():
        raise DataError(
            "The labels hold NaN or infinite values; fix or drop those examples (e.g. "
            "np.isfinite(y) selects the good ones)."
        )
    width = labels.shape[1]
    integral = bool(np.all(np.equal(np.mod(labels, 1), 0)))
    binary = integral and bool(np.all((labels == 0) | (labels == 1)))
    mode = "categorical" if width > 1 else ("binary" if binary and labels.max() <= 1 else "int")
    distinct = len(np.unique(labels)) if width == 1 else 0
    sums_to_one = width == 1 or bool(np.all(np.abs(labels.sum(axis=1) - 1) < 1e-3))
    return LabelInfo(
        mode, width, float(labels.max()), float(labels.min()), integral, distinct, sums_to_one
    )


def check_labels(info: LabelInfo, task: str | tasks.Task, num_classes: int | None) -> str:
    """Validates labels against the task and returns the label mode the loss must use.

    Raises:
        DataError: labels that do not fit the task or the number of classes, naming
            what was expected.
    """
    return tasks.get_task(task).check_labels(info, num_classes)
