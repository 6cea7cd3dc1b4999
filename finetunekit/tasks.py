"""Task kinds and `compile_for`: output activation, loss, metrics, and the recompile check."""

from __future__ import annotations

import logging
import math
import numbers
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import keras

from finetunekit.errors import ArgumentTypeError, ConfigError, StepOrderError

__all__ = ["TASKS", "Task", "compile_for", "check_compiled", "output_units", "LabelMode"]

logger = logging.getLogger("finetunekit")

TaskName = Literal["multiclass", "binary", "multilabel", "regression"]
LabelMode = Literal["int", "categorical", "binary"]


@dataclass(frozen=True)
class Task:
    """What a task kind means for the head and the loss.

    Attributes:
        name: `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`.
        activation: the output activation `add_head` uses.
        label_modes: label encodings the task accepts.
    """

    name: str
    activation: str
    label_modes: tuple[str, ...]


TASKS: dict[str, Task] = {
    "multiclass": Task("multiclass", "softmax", ("int", "categorical")),
    "binary": Task("binary", "sigmoid", ("int", "binary")),
    # "int" too: multi-hot rows of integers, and compile_for's default must work for every task.
    "multilabel": Task("multilabel", "sigmoid", ("int", "binary", "categorical")),
    "regression": Task("regression", "linear", ("int", "binary", "categorical")),
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


def get_task(task: str) -> Task:
    """Returns the Task for a name, or raises ConfigError listing the valid names."""
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(f"task must be one of {sorted(TASKS)}; received {task!r}.")
    return TASKS[task]


def output_units(task: str, num_classes: int | None) -> int:
    """Number of output units for a task, validating `num_classes`.

    Raises:
        ConfigError: `num_classes` does not fit the task.
    """
    spec = get_task(task)
    if num_classes is not None and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 1
    ):
        raise ConfigError(f"num_classes must be a positive int; received {num_classes!r}.")
    if num_classes is not None:
        num_classes = int(num_classes)  # numpy integers (e.g. labels.max() + 1) are welcome
    if spec.name == "multiclass":
        if num_classes is None or num_classes < 2:
            raise ConfigError(
                f"task='multiclass' needs num_classes >= 2; received {num_classes!r}. For two "
                "classes with one sigmoid output use task='binary'."
            )
        return num_classes
    if spec.name == "binary":
        if num_classes not in (None, 1, 2):
            raise ConfigError(
                f"task='binary' has one sigmoid output (num_classes None, 1 or 2); received "
                f"{num_classes!r}. For more classes use task='multiclass'."
            )
        return 1
    if spec.name == "multilabel" and num_classes is None:
        raise ConfigError("task='multilabel' needs num_classes (the number of labels).")
    return num_classes or 1


def _trainable_signature(model: keras.Model) -> tuple[int, ...]:
    return tuple(id(v) for v in model.trainable_variables)


def _output_activation(model: keras.Model) -> str | None:
    last = model.layers[-1] if model.layers else None
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


def _loss_and_metrics(
    task: Task, label_mode: str, from_logits: bool
) -> tuple[keras.losses.Loss, list[Any]]:
    if task.name == "multiclass":
        if label_mode == "int":
            return (
                keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
        return (
            keras.losses.CategoricalCrossentropy(from_logits=from_logits),
            [keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    if task.name in ("binary", "multilabel"):
        threshold = 0.0 if from_logits else 0.5
        metrics: list[Any] = [keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold)]
        if not from_logits:
            metrics.append(keras.metrics.AUC(name="auc", multi_label=task.name == "multilabel"))
        return keras.losses.BinaryCrossentropy(from_logits=from_logits), metrics
    return keras.losses.MeanSquaredError(), [keras.metrics.MeanAbsoluteError(name="mae")]


def _optimizer(optimizer: str | keras.optimizers.Optimizer, learning_rate: float) -> Any:
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
    task: str = "multiclass",
    *,
    learning_rate: float = 1e-3,
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
            fine-tuning unfrozen base layers.
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

    Examples:
        >>> compile_for(model, task="multiclass", learning_rate=1e-3)
    """
    if not isinstance(model, keras.Model):
        raise ArgumentTypeError(
            f"compile_for expected a keras.Model; received {type(model).__name__}."
        )
    spec = get_task(task)
    if label_mode == "binary" and spec.name == "multiclass":
        label_mode = "categorical"  # image_dataset_from_directory's name for 0/1 vectors
    if label_mode not in spec.label_modes and spec.name != "regression":
        raise ConfigError(
            f"label_mode for task={task!r} must be one of {list(spec.label_modes)}; "
            f"received {label_mode!r}."
        )
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, numbers.Real)
        or not 0 < learning_rate < math.inf
    ):
        raise ConfigError(
            f"learning_rate must be a positive finite number, e.g. 1e-3; received "
            f"{learning_rate!r}."
        )
    units = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    activation = _output_activation(model)
    _check_output(spec, units, activation)
    loss, default_metrics = _loss_and_metrics(
        spec, label_mode, from_logits=activation == "linear" and spec.name != "regression"
    )
    _check_optimizer_fits(optimizer, model)
    model.compile(
        optimizer=_optimizer(optimizer, float(learning_rate)),
        loss=loss,
        metrics=default_metrics if metrics is None else metrics,
    )
    _COMPILED_WITH[model] = _trainable_signature(model)
    _guard_fit(model)
    logger.info(
        "compiled %s for %s (label_mode=%s, learning_rate=%g, %d trainable weights)",
        model.name,
        task,
        label_mode,
        learning_rate,
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
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    known = getattr(inner, "_trainable_variables", None)
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


def _check_output(spec: Task, units: int | None, activation: str | None) -> None:
    if units is None:
        return
    if spec.name == "multiclass" and units < 2:
        raise ConfigError(
            f"task='multiclass' needs an output with one unit per class; the model has {units}. "
            "Use task='binary' for one sigmoid unit, or add_head(num_classes=...)."
        )
    if spec.name == "binary" and units != 1:
        raise ConfigError(
            f"task='binary' needs one sigmoid output unit; the model has {units}. Use "
            "task='multiclass' for one unit per class."
        )
    if spec.name in ("binary", "multilabel") and activation == "softmax":
        raise ConfigError(
            f"task={spec.name!r} needs a sigmoid output, the model ends in softmax. Rebuild the "
            f"head with add_head(task={spec.name!r})."
        )
    if spec.name == "multiclass" and activation == "sigmoid":
        raise ConfigError(
            "task='multiclass' needs a softmax output, the model ends in sigmoid. Use "
            "task='multilabel' or rebuild the head with add_head(task='multiclass')."
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
