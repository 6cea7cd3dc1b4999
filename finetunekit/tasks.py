"""Task kinds and `compile_for`: output activation, loss, metrics, and the recompile check."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np

from finetunekit import structure
from finetunekit._checks import check_float, check_int
from finetunekit.errors import (
    ArgumentTypeError,
    ConfigError,
    DataError,
    ModelStructureError,
    StepOrderError,
)

__all__ = [
    "TASKS",
    "Task",
    "LabelSummary",
    "get_task",
    "compile_for",
    "check_compiled",
    "output_units",
    "LabelMode",
]

logger = logging.getLogger("finetunekit")

TaskName = Literal["multiclass", "binary", "multilabel", "regression"]
LabelMode = Literal["int", "categorical", "binary"]


@dataclass(frozen=True)
class LabelSummary:
    """What the labels of some data look like (see `finetunekit.data.inspect_labels`).

    Attributes:
        label_mode: `"int"` (indices), `"categorical"` (one row per example with k > 1
            columns) or `"binary"` (0/1 values).
        width: columns of the labels (1 for indices).
        max_label: the largest value seen.
        min_label: the smallest value seen.
        integral: whether every value seen is a whole number.
        distinct: how many different values one-column labels take (0: not counted).
        rows_sum_to_one: every row of several columns sums to 1 (one-hot or soft
            labels); False for multi-hot or empty rows.
    """

    label_mode: str
    width: int
    max_label: float
    min_label: float
    integral: bool
    distinct: int = 0
    rows_sum_to_one: bool = True


class Task:
    """Everything that varies by task kind: output, loss, metrics, labels, defaults.

    One object per kind in `TASKS`; the rest of finetunekit asks the task instead of
    branching on its name.

    Attributes:
        name: `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`.
        activation: the output activation `add_head` uses.
        label_modes: label encodings the task accepts.
        default_label_mode: the label mode assumed before any label is seen.
        needs_num_classes: whether the head needs `num_classes` (else it has a default).
        normalize_features: whether `FineTuner` puts unit-length features in the head by
            default (a classifier learns from their direction; a regression may need
            their size).
    """

    name: str = ""
    activation: str = "linear"
    label_modes: tuple[str, ...] = ("int", "binary", "categorical")
    default_label_mode: str = "int"
    needs_num_classes: bool = False
    normalize_features: bool = True
    #: Whether a linear output layer means logits (classifiers) or values (regression).
    logits_when_linear: bool = True
    #: Whether each image is of exactly one class (multiclass, binary).
    one_class_per_image: bool = False
    #: Whether each image has a set of labels (multilabel).
    label_sets: bool = False
    #: The outputs are values to read as they are (regression), not scores of classes.
    values: bool = False

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    def label_mode_for(self, label_mode: str) -> str:
        """`label_mode` as the task's loss reads it; ConfigError when the task has no such mode."""
        if label_mode not in self.label_modes:
            raise ConfigError(
                f"label_mode for task={self.name!r} must be one of {list(self.label_modes)}; "
                f"received {label_mode!r}."
            )
        return label_mode

    def output_units(self, num_classes: int | None) -> int:
        """Output units for `num_classes` (already checked to be a positive int or None)."""
        return num_classes or 1

    def infer_num_classes(
        self, class_names: Sequence[str] | None, labels: Callable[[], LabelSummary]
    ) -> int | None:
        """The `num_classes` the data implies when the user gave none (None: not needed).

        `labels` reads every label, so it is called only when the class names do not say.
        """
        return labels().width

    def check_class_names(self, class_names: Sequence[str] | None, num_classes: int | None) -> None:
        """Raises DataError when the data's classes cannot be the model's outputs.

        Checked before training: a mismatch found only when the model is saved with
        its class names would cost the whole fit.
        """

    def check_labels(self, info: LabelSummary, num_classes: int | None) -> str:
        """Validates labels and returns the label mode the loss must use.

        Raises:
            DataError: labels that do not fit, naming what was expected.
        """
        return "int"

    def loss_and_metrics(
        self, label_mode: str, from_logits: bool
    ) -> tuple[keras.losses.Loss, list[Any]]:
        return keras.losses.MeanSquaredError(), [keras.metrics.MeanAbsoluteError(name="mae")]

    def label_bounds(
        self, label_mode: str, num_classes: int | None
    ) -> tuple[float, float, bool]:
        """`(lowest, highest, whole numbers only)` a label may be, checked on every batch."""
        return 0.0, 1.0, False

    def check_output(self, units: int | None, activation: str | None) -> None:
        """Raises ConfigError when a model's output layer does not fit the task."""

    # -- reading a trained model's outputs (numpy): Classifier, evaluate, export ---------
    # The defaults are those of one probability per class (multiclass).

    def name_count(self, units: int) -> int:
        """How many class names a model with `units` outputs has."""
        return units

    def names_needed(self, units: int) -> str:
        """The end of the sentence "class_names has k names but the model ..."."""
        return f"has {units} outputs; pass one name per output, in label order."

    def default_names(self, units: int) -> tuple[str, ...]:
        """The names of the outputs when none are given."""
        return tuple(str(i) for i in range(units))

    def class_scores(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs `(batch, units)` as one score column per class name."""
        return outputs

    def ranked(
        self, row: np.ndarray, names: Sequence[str], top: int
    ) -> tuple[tuple[str, float], ...]:
        """One image's `top` best `(name, score)` pairs, best first."""
        scores = self.class_scores(row[None])[0]
        order = np.argsort(-scores, kind="stable")[:top]
        return tuple((names[i], float(scores[i])) for i in order)

    def present(self, row: np.ndarray, names: Sequence[str], threshold: float) -> tuple[str, ...]:
        """The classes one image is predicted to have: its most probable class (one class
        per image), every label at or above `threshold` (multilabel), none (regression)."""
        return (names[int(np.argmax(self.class_scores(row[None])[0]))],)

    def targets(self, labels: np.ndarray, classes: int, units: int) -> np.ndarray:
        """Labels as `evaluate` compares them: class indices (as floats), or rows.

        Raises:
            DataError: labels that are not class indices (or one-hot rows) of the model.
        """
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] > 1:
            if labels.shape[1] != classes:  # argmax of narrower rows scored silently
                raise DataError(
                    f"The labels are one-hot rows of {labels.shape[1]} columns but this "
                    f"model has {classes} classes: give rows of {classes} columns, or class "
                    "indices."
                )
            labels = np.argmax(labels, axis=1)
        flat = labels.reshape(len(labels)).astype("float64")
        if (
            not np.all(np.mod(flat, 1) == 0)
            or flat.min(initial=0) < 0
            or flat.max(initial=0) >= classes
        ):
            raise DataError(
                f"Labels must be class indices 0..{classes - 1} (or one-hot rows) for this "
                f"{classes}-class model; received values from {flat.min():g} to {flat.max():g}."
            )
        return flat

    def losses(self, outputs: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Each example's loss, as the task's Keras loss computes it."""
        p = np.clip(outputs[np.arange(len(outputs)), truth.astype(int)], _EPS, 1.0)
        return -np.log(p)

    def report_fields(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
        """What `evaluate`'s Report holds besides the loss: accuracy, per-class precision,
        recall, F1 and support, the confusion matrix, MAE and RMSE (None where the task
        has none)."""
        true_class = truth.astype(int)
        predicted_class = np.argmax(self.class_scores(outputs), axis=1)
        k = self.name_count(outputs.shape[1])
        confusion = np.zeros((k, k), dtype=int)
        np.add.at(confusion, (true_class, predicted_class), 1)
        return _class_fields(
            float(np.trace(confusion) / len(truth)),
            np.diag(confusion), confusion.sum(0), confusion.sum(1), confusion,
        )

    def described(
        self, row: np.ndarray, truth: Any, names: Sequence[str]
    ) -> tuple[str, str, float | None]:
        """One example as `(true, predicted, probability of the true class or None)`."""
        scores = self.class_scores(row[None])[0]
        label = int(truth)
        return names[label], names[int(np.argmax(scores))], float(scores[label])

    def agreement(self, expected: np.ndarray, got: np.ndarray) -> float | None:
        """Share of images whose top class two versions of a model agree on (one sigmoid:
        the side of 0.5); None where there are no classes."""
        if expected.shape[1] == 1:
            return float(np.mean((expected[:, 0] >= 0.5) == (got[:, 0] >= 0.5)))
        return float(np.mean(np.argmax(expected, axis=1) == np.argmax(got, axis=1)))


_EPS = 1e-7

#: Output activations whose values are neither probabilities nor logits. A name not
#: known (a function of one's own) is given the benefit of the doubt.
_NEITHER = frozenset(
    {
        "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "mish",
        "hard_silu", "hard_swish", "tanh", "hard_tanh", "softplus", "softsign",
        "exponential", "log_softmax", "log_sigmoid",
    }
)


def _class_fields(
    accuracy: float,
    hits: np.ndarray,
    predicted: np.ndarray,
    actual: np.ndarray,
    confusion: np.ndarray | None,
) -> dict[str, Any]:
    """Report fields of classes: precision, recall and F1 from true positives and
    predicted / actual counts (0 where there are none), the support (actual counts)."""
    support = actual
    hits, predicted, actual = (np.asarray(a, dtype="float64") for a in (hits, predicted, actual))
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return dict(
        accuracy=accuracy, precision=precision, recall=recall, f1=f1, support=support,
        confusion=confusion, mae=None, rmse=None,
        predicted_counts=np.asarray(predicted, dtype=int),
    )


def _label_rows(labels: np.ndarray, units: int) -> np.ndarray:
    """Multi-hot rows or regression targets, one row of `units` values per example."""
    rows = np.asarray(labels).reshape(len(labels), -1).astype("float64")
    if rows.shape[1] != units:
        raise DataError(
            f"The labels have {rows.shape[1]} columns but the model has {units} outputs."
        )
    return rows


class _Multiclass(Task):
    name = "multiclass"
    activation = "softmax"
    label_modes = ("int", "categorical")
    needs_num_classes = True
    one_class_per_image = True

    def label_bounds(
        self, label_mode: str, num_classes: int | None
    ) -> tuple[float, float, bool]:
        if label_mode != "int":
            return super().label_bounds(label_mode, num_classes)
        return 0.0, math.inf if num_classes is None else float(num_classes - 1), True

    def infer_num_classes(
        self, class_names: Sequence[str] | None, labels: Callable[[], LabelSummary]
    ) -> int | None:
        if class_names:
            return len(class_names)
        info = labels()
        if info.label_mode == "categorical":
            return info.width
        inferred = max(int(info.max_label) + 1, 2)
        if info.distinct and inferred > 2 * info.distinct:
            # Labels that are ids, not indices (0, 1, 500): a 501-way head learning three
            # classes, or with 10**6 an output layer too big for memory.
            raise DataError(
                f"The labels go up to {int(info.max_label)}, so the model would have "
                f"{inferred} classes, but only {info.distinct} different labels occur: labels "
                "must be class indices 0..n-1. Re-encode them (e.g. y = np.unique(y, "
                "return_inverse=True)[1]), or pass num_classes if classes are missing from "
                "this data on purpose."
            )
        return inferred

    def label_mode_for(self, label_mode: str) -> str:
        if label_mode == "binary":
            label_mode = "categorical"  # image_dataset_from_directory's name for 0/1 vectors
        return super().label_mode_for(label_mode)

    def output_units(self, num_classes: int | None) -> int:
        if num_classes is None or num_classes < 2:
            raise ConfigError(
                f"task='multiclass' needs num_classes >= 2; received {num_classes!r}. For two "
                "classes with one sigmoid output use task='binary'."
            )
        return num_classes

    def check_class_names(self, class_names: Sequence[str] | None, num_classes: int | None) -> None:
        if class_names and num_classes is not None and len(class_names) != num_classes:
            raise DataError(
                f"The data has {len(class_names)} classes ({_shown(class_names)}) but the model "
                f"has num_classes={num_classes}. Pass num_classes={len(class_names)} (or None, "
                f"to take it from the data), or data of the {num_classes} classes the model "
                "was made for."
            )

    def check_labels(self, info: LabelSummary, num_classes: int | None) -> str:
        if info.width > 1:
            if num_classes is not None and info.width != num_classes:
                raise DataError(
                    f"Labels are one-hot with {info.width} columns but the model has "
                    f"{num_classes} classes. Expected integer class indices (shape (n,)) or "
                    f"one-hot rows with {num_classes} columns."
                )
            if not info.rows_sum_to_one:
                # Softmax cross-entropy against multi-hot rows trains without a word, and
                # learns one class per image where the data says several.
                raise DataError(
                    "Rows of the labels do not sum to 1 (several classes, or none, marked "
                    "for an image), but task='multiclass' takes one class per image. For "
                    "several labels per image use task='multilabel'; else make each row "
                    "one-hot."
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

    def loss_and_metrics(
        self, label_mode: str, from_logits: bool
    ) -> tuple[keras.losses.Loss, list[Any]]:
        if label_mode == "int":
            return (
                keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
        return (
            keras.losses.CategoricalCrossentropy(from_logits=from_logits),
            [keras.metrics.CategoricalAccuracy(name="accuracy")],
        )

    def check_output(self, units: int | None, activation: str | None) -> None:
        if units is not None and units < 2:
            raise ConfigError(
                f"task='multiclass' needs an output with one unit per class; the model has "
                f"{units}. Use task='binary' for one sigmoid unit, or add_head(num_classes=...)."
            )
        if activation == "sigmoid":
            raise ConfigError(
                "task='multiclass' needs a softmax output, the model ends in sigmoid. Use "
                "task='multilabel' or rebuild the head with add_head(task='multiclass')."
            )
        if activation in _NEITHER:
            raise ConfigError(
                f"task='multiclass' needs a softmax output (probabilities) or a linear one "
                f"(logits); the model ends in {activation}, whose outputs are neither. "
                "Rebuild the head with add_head(task='multiclass')."
            )


class _ZeroOne(Task):
    """Shared by the tasks whose labels are 0/1 values (binary, multilabel)."""

    activation = "sigmoid"
    default_label_mode = "binary"

    def check_labels(self, info: LabelSummary, num_classes: int | None) -> str:
        if info.min_label < 0 or info.max_label > 1:
            raise DataError(
                f"task={self.name!r} expects labels of 0 and 1; received values from "
                f"{info.min_label:g} to {info.max_label:g}."
            )
        return "binary"

    def loss_and_metrics(
        self, label_mode: str, from_logits: bool
    ) -> tuple[keras.losses.Loss, list[Any]]:
        threshold = 0.0 if from_logits else 0.5
        metrics: list[Any] = [keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold)]
        metrics.append(
            keras.metrics.AUC(
                name="auc", multi_label=self.name == "multilabel", from_logits=from_logits
            )
        )
        return keras.losses.BinaryCrossentropy(from_logits=from_logits), metrics

    def check_output(self, units: int | None, activation: str | None) -> None:
        if units is not None and activation == "softmax":
            raise ConfigError(
                f"task={self.name!r} needs a sigmoid output, the model ends in softmax. Rebuild "
                f"the head with add_head(task={self.name!r})."
            )
        if activation in _NEITHER:
            raise ConfigError(
                f"task={self.name!r} needs a sigmoid output (probabilities of 1) or a linear "
                f"one (logits); the model ends in {activation}, whose outputs are neither. "
                f"Rebuild the head with add_head(task={self.name!r})."
            )


class _Binary(_ZeroOne):
    name = "binary"
    label_modes = ("int", "binary")
    one_class_per_image = True

    def output_units(self, num_classes: int | None) -> int:
        if num_classes not in (None, 1, 2):
            raise ConfigError(
                f"task='binary' has one sigmoid output (num_classes None, 1 or 2); received "
                f"{num_classes!r}. For more classes use task='multiclass'."
            )
        return 1

    def infer_num_classes(
        self, class_names: Sequence[str] | None, labels: Callable[[], LabelSummary]
    ) -> int | None:
        return None  # one sigmoid output, whatever the labels

    def check_class_names(self, class_names: Sequence[str] | None, num_classes: int | None) -> None:
        if class_names and len(class_names) != 2:
            raise DataError(
                f"task='binary' takes two classes, but the data has {len(class_names)} "
                f"({_shown(class_names)}). Use task='multiclass' with "
                f"num_classes={len(class_names)}, or data of two classes."
            )

    def check_labels(self, info: LabelSummary, num_classes: int | None) -> str:
        mode = super().check_labels(info, num_classes)
        if info.width != 1:
            raise DataError(
                f"task='binary' expects one 0/1 label per example; received {info.width} "
                "columns. Use task='multilabel' (multi-hot) or task='multiclass' (one-hot)."
            )
        return mode

    def name_count(self, units: int) -> int:
        return 2

    def names_needed(self, units: int) -> str:
        return (
            "is binary (one sigmoid output), which needs 2: the negative class, then the "
            "positive one."
        )

    def default_names(self, units: int) -> tuple[str, ...]:
        return ("0", "1")

    def class_scores(self, outputs: np.ndarray) -> np.ndarray:
        return np.concatenate([1.0 - outputs, outputs], axis=1)  # (1 - p, p)

    def losses(self, outputs: np.ndarray, truth: np.ndarray) -> np.ndarray:
        p = np.clip(outputs[:, 0], _EPS, 1 - _EPS)
        return -(truth * np.log(p) + (1 - truth) * np.log(1 - p))


    def check_output(self, units: int | None, activation: str | None) -> None:
        if units is not None and units != 1:
            raise ConfigError(
                f"task='binary' needs one sigmoid output unit; the model has {units}. Use "
                "task='multiclass' for one unit per class."
            )
        super().check_output(units, activation)


class _Multilabel(_ZeroOne):
    name = "multilabel"
    label_sets = True
    # "int" too: multi-hot rows of integers, and compile_for's default must work for every task.
    label_modes = ("int", "binary", "categorical")
    needs_num_classes = True

    def infer_num_classes(
        self, class_names: Sequence[str] | None, labels: Callable[[], LabelSummary]
    ) -> int | None:
        return len(class_names) if class_names else labels().width

    def output_units(self, num_classes: int | None) -> int:
        if num_classes is None:
            raise ConfigError("task='multilabel' needs num_classes (the number of labels).")
        return num_classes


    def present(self, row: np.ndarray, names: Sequence[str], threshold: float) -> tuple[str, ...]:
        return tuple(n for n, p in zip(names, row, strict=True) if p >= threshold)

    def targets(self, labels: np.ndarray, classes: int, units: int) -> np.ndarray:
        return _label_rows(labels, units)

    def losses(self, outputs: np.ndarray, truth: np.ndarray) -> np.ndarray:
        p = np.clip(outputs, _EPS, 1 - _EPS)
        return -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p), axis=1)

    def report_fields(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
        predicted = outputs >= 0.5
        present = truth >= 0.5
        return _class_fields(
            float(np.mean(predicted == present)),
            (predicted & present).sum(0), predicted.sum(0), present.sum(0), None,
        )

    def described(
        self, row: np.ndarray, truth: Any, names: Sequence[str]
    ) -> tuple[str, str, float | None]:
        def present(values: Any) -> str:
            return "+".join(n for n, v in zip(names, values, strict=True) if v >= 0.5) or "(none)"

        return present(truth), present(row), None

    def check_labels(self, info: LabelSummary, num_classes: int | None) -> str:
        mode = super().check_labels(info, num_classes)
        if num_classes is not None and info.width != num_classes:
            raise DataError(
                f"task='multilabel' expects multi-hot rows with {num_classes} columns; "
                f"received {info.width}."
            )
        return mode


class _Regression(Task):
    name = "regression"
    values = True
    normalize_features = False
    logits_when_linear = False

    def label_mode_for(self, label_mode: str) -> str:
        return label_mode  # targets are read as they are

    def check_output(self, units: int | None, activation: str | None) -> None:
        # Any other activation may suit bounded targets (sigmoid for values in [0, 1]);
        # softmax outputs always sum to 1, so they cannot follow independent values.
        if activation == "softmax":
            raise ConfigError(
                f"task='regression' needs an output that can take the targets' values; the "
                f"model ends in softmax, whose {units or 'several'} output(s) always sum to 1"
                f"{' (one unit is always 1.0)' if units == 1 else ''}. Rebuild the head with "
                "add_head(task='regression') (a linear output); for targets that are "
                "proportions summing to 1, compile it for task='multiclass'."
            )

    def label_bounds(
        self, label_mode: str, num_classes: int | None
    ) -> tuple[float, float, bool]:
        return -math.inf, math.inf, False

    def check_labels(self, info: LabelSummary, num_classes: int | None) -> str:
        outputs = num_classes or 1
        if info.width != outputs:
            # Else the loss broadcasts (1 output against 3 targets trains silently) or
            # fails deep in TensorFlow (3 outputs against 1 target).
            raise DataError(
                f"The targets hold {info.width} value(s) per image but the model has "
                f"{outputs} output(s) (num_classes={num_classes!r}, for task='regression' the "
                f"number of values to predict). Pass num_classes={info.width}, or targets of "
                f"{outputs} value(s) per image."
            )
        return "int"

    def default_names(self, units: int) -> tuple[str, ...]:
        return tuple(f"output_{i}" for i in range(units))

    def ranked(
        self, row: np.ndarray, names: Sequence[str], top: int
    ) -> tuple[tuple[str, float], ...]:
        return tuple((n, float(v)) for n, v in zip(names, row, strict=True))  # every value

    def present(self, row: np.ndarray, names: Sequence[str], threshold: float) -> tuple[str, ...]:
        return ()

    def targets(self, labels: np.ndarray, classes: int, units: int) -> np.ndarray:
        return _label_rows(labels, units)

    def losses(self, outputs: np.ndarray, truth: np.ndarray) -> np.ndarray:
        return np.mean((outputs - truth) ** 2, axis=1)  # as Keras' MSE: a mean over the outputs

    def report_fields(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
        error = outputs - truth
        return dict(
            accuracy=None,
            precision=None,
            recall=None,
            f1=None,
            support=None,
            confusion=None,
            mae=np.mean(np.abs(error), axis=0),
            rmse=np.sqrt(np.mean(error**2, axis=0)),
        )

    def described(
        self, row: np.ndarray, truth: Any, names: Sequence[str]
    ) -> tuple[str, str, float | None]:
        def values(v: Any) -> str:
            return ", ".join(f"{x:.3g}" for x in np.atleast_1d(v))

        return values(truth), values(row), None

    def agreement(self, expected: np.ndarray, got: np.ndarray) -> float | None:
        return None



TASKS: dict[str, Task] = {
    task.name: task for task in (_Multiclass(), _Binary(), _Multilabel(), _Regression())
}

_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "nadam": keras.optimizers.Nadam,
}

# The trainable variables each model was compiled with, to catch a stale compile.
_COMPILED_WITH: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()


def get_task(task: str | Task) -> Task:
    """Returns the Task for a name (or the Task itself), or raises ConfigError."""
    if isinstance(task, Task):
        return task
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(f"task must be one of {sorted(TASKS)}; received {task!r}.")
    return TASKS[task]


def task_of_output(activation: str | None, units: int) -> str:
    """The task an output layer implies: softmax, sigmoid (one unit or more), else values."""
    if activation == "softmax":
        return "multiclass"
    if activation == "sigmoid":
        return "binary" if units == 1 else "multilabel"
    return "regression"


def output_units(task: str | Task, num_classes: int | None) -> int:
    """Number of output units for a task, validating `num_classes`.

    Raises:
        ConfigError: `num_classes` does not fit the task.
    """
    spec = get_task(task)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, minimum=1, expected="a positive int")
    return spec.output_units(num_classes)


def _trainable_signature(model: keras.Model) -> tuple[int, ...]:
    return tuple(id(v) for v in model.trainable_variables)


def check_per_image_output(model: keras.Model, output_shape: Any) -> None:
    """Refuses an output of more than one row per image, such as a base without its head.

    Every task of finetunekit predicts per image, (batch, units); a feature map (batch,
    height, width, channels) would otherwise be compiled, and `fit` would fail deep in
    TensorFlow on the loss, or a Classifier would take its channels for classes.

    Raises:
        ModelStructureError: the model has several outputs, or the output has more than
            two dimensions.
    """
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) > 1 or isinstance(output_shape, (list, dict)):
        raise ModelStructureError(
            f"{model.name!r} has {max(len(outputs), 2)} outputs; finetunekit compiles and "
            "trains a model of one output, one prediction per image. Compile a model of "
            "several outputs with Keras' model.compile(loss=[...]), or give each output a "
            "model of its own."
        )
    if isinstance(output_shape, tuple) and len(output_shape) > 2:
        raise ModelStructureError(
            f"{model.name!r} outputs shape {output_shape}, a feature map rather than one "
            "prediction per image (batch, units): a base without its head? Add one first, "
            "e.g. model = finetunekit.add_head(base, num_classes)."
        )


def new_optimizer(optimizer: str | keras.optimizers.Optimizer, learning_rate: Any) -> Any:
    """The optimizer a name stands for, at `learning_rate` (an instance is returned as is)."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    if not isinstance(optimizer, str) or optimizer.lower() not in _OPTIMIZERS:
        raise ConfigError(
            f"optimizer must be one of {sorted(_OPTIMIZERS)} or a keras.optimizers.Optimizer; "
            f"received {optimizer!r}."
        )
    return _OPTIMIZERS[optimizer.lower()](learning_rate=learning_rate)


def compile_for(
    model: keras.Model,
    task: str | Task = "multiclass",
    *,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    label_mode: str = "int",
    metrics: list[Any] | None = None,
) -> keras.Model:
    """Compiles a model with the loss and metrics of a task, with a fresh optimizer.

    Call it again after every change of what is trainable (`freeze`, `unfreeze_last`):
    Keras captures the trainable variables when it compiles the training step.
    A model whose last layer has a linear activation is treated as producing logits.

    Args:
        model: the full model (e.g. from `add_head`).
        task: `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`.
        learning_rate: learning rate of the new optimizer; lower (1e-5..1e-4) when
            fine-tuning unfrozen base layers. A `keras.optimizers.schedules`
            schedule (e.g. `CosineDecay` with a warm-up) varies it over the steps.
        optimizer: `"adam"`, `"adamw"`, `"sgd"`, `"rmsprop"`, `"nadam"`, or an optimizer
            instance (used as is; `learning_rate` is then ignored). An instance already
            built for other variables (e.g. reused after unfreezing) is refused.
        label_mode: `"int"` (class indices) or `"categorical"` (one-hot) for multiclass;
            `"int"`/`"binary"` (0/1) for binary; `"binary"` (multi-hot) for multilabel.
        metrics: metrics to use instead of the task's defaults (`accuracy`, `auc`, `mae`).

    Returns:
        The same model, compiled.

    Raises:
        ConfigError: unknown task, optimizer or label mode, a non-positive learning rate,
            an optimizer instance built for other variables, or an output layer that does
            not fit the task.
        ArgumentTypeError: `model` is not a keras.Model.
        ModelStructureError: the model has no output yet (an unbuilt Sequential), or its
            output is not one prediction per image (a base without its head).

    Examples:
        >>> compile_for(model, task="multiclass", learning_rate=1e-3)
    """
    if not isinstance(model, keras.Model):
        raise ArgumentTypeError(
            f"compile_for expected a keras.Model; received {type(model).__name__}."
        )
    spec = get_task(task)
    label_mode = spec.label_mode_for(label_mode)
    schedule = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    if not schedule:
        check_float(
            "learning_rate",
            learning_rate,
            low=0,
            expected="a positive finite number, e.g. 1e-3, or a keras.optimizers.schedules "
            "schedule",
        )
    try:
        output_shape = model.output_shape
    except (AttributeError, ValueError):  # e.g. keras.Sequential() with no layers yet
        raise ModelStructureError(
            f"{model.name!r} has no output yet (a Sequential model not built?). Compile a "
            "model with layers and an input, e.g. add_head(base, num_classes)."
        ) from None
    check_per_image_output(model, output_shape)
    units = output_shape[-1] if isinstance(output_shape, tuple) else None
    activation = structure.output_activation(model)
    spec.check_output(units, activation)
    loss, default_metrics = spec.loss_and_metrics(
        label_mode, from_logits=activation == "linear" and spec.logits_when_linear
    )
    _check_optimizer_fits(optimizer, model)
    if isinstance(metrics, str):  # one name alone ("acc") is one metric; Keras wants a list
        metrics = [metrics]
    model.compile(
        optimizer=new_optimizer(optimizer, learning_rate if schedule else float(learning_rate)),
        loss=loss,
        metrics=default_metrics if metrics is None else metrics,
    )
    _COMPILED_WITH[model] = _trainable_signature(model)
    _guard_fit(model)
    logger.info(
        "compiled %s for %s (label_mode=%s, learning_rate=%s, %d trainable weights)",
        model.name,
        spec.name,
        label_mode,
        (
            f"{type(optimizer).__name__}'s own"
            if isinstance(optimizer, keras.optimizers.Optimizer)
            else type(learning_rate).__name__ if schedule else f"{learning_rate:g}"
        ),
        len(model.trainable_variables),
    )
    return model


def _check_optimizer_fits(optimizer: Any, model: keras.Model) -> None:
    """Refuses an optimizer instance built for other variables than those that train now.

    Keras ties an optimizer to the variables it was built for (on its first step), and
    fails with "Unknown variable" inside `fit` when it meets others: typically the same
    instance passed again after `unfreeze_last`. Said here, before any training.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer) or not optimizer.built:
        return
    known = structure.optimizer_variables(optimizer)
    if known is None:  # pragma: no cover - another Keras: leave the check to Keras
        return
    known_ids = {id(v) for v in known}
    unknown = [v for v in model.trainable_variables if id(v) not in known_ids]
    if unknown:
        raise ConfigError(
            f"This {type(optimizer).__name__} instance was already built for other "
            f"variables, and Keras ties an optimizer to the variables it first trained: "
            f"{len(unknown)} of the model's trainable weights are unknown to it (e.g. "
            f"{unknown[0].path!r}). Pass a new optimizer instance, or a name such as 'adam'."
        )


def _guard_fit(model: keras.Model) -> None:
    """Makes `model.fit` refuse to train a trainable set it was not compiled for.

    Keras builds the training step once per compile, with the trainable variables of that
    moment: after a `freeze`/`unfreeze_last` without recompiling, `fit` would silently keep
    training the old set. The check runs where Keras builds or reuses that step.
    """
    optimizer = model.optimizer
    build_step = type(model).make_train_function

    def make_train_function(force: bool = False) -> Any:
        # A model recompiled by hand (model.compile) has a new optimizer: trust it.
        if model.optimizer is optimizer and is_stale(model):
            raise StepOrderError(
                f"What is trainable in {model.name!r} changed since compile_for compiled it; "
                "Keras would keep training the old set of weights. Call "
                "finetunekit.compile_for(model, ...) again before fit()."
            )
        return build_step(model, force)

    model.make_train_function = make_train_function


def is_stale(model: keras.Model) -> bool:
    """Whether the trainable variables changed since `compile_for` compiled the model."""
    compiled = _COMPILED_WITH.get(model)
    return compiled is None or compiled != _trainable_signature(model)


def check_compiled(model: keras.Model) -> None:
    """Raises if the model must be (re)compiled before training.

    Raises:
        StepOrderError: the model was never compiled, or what is trainable changed since.
    """
    if not getattr(model, "compiled", False) or model not in _COMPILED_WITH:
        raise StepOrderError(
            f"{model.name!r} is not compiled; call finetunekit.compile_for(model, ...) first."
        )
    if is_stale(model):
        raise StepOrderError(
            f"What is trainable in {model.name!r} changed since it was compiled; Keras would "
            "keep training the old set. Call finetunekit.compile_for(model, ...) again."
        )


def _shown(names: Sequence[str], most: int = 8) -> str:
    """Class names for a message: the first `most`, then how many more."""
    listed = ", ".join(repr(str(name)) for name in list(names)[:most])
    return listed + (f", and {len(names) - most} more" if len(names) > most else "")
