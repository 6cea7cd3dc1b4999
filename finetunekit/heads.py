"""`add_head`: a new top on a base, with the base nested in inference mode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from finetunekit import structure
from finetunekit.errors import ConfigError, ModelStructureError
from finetunekit.tasks import get_task, output_units

__all__ = ["add_head", "POOLINGS"]

POOLINGS = ("avg", "max", "flatten", None)


def add_head(
    base: keras.Model,
    num_classes: int | None = None,
    *,
    task: str = "multiclass",
    hidden: Sequence[int] = (),
    dropout: float = 0.2,
    pooling: str | None = "avg",
) -> keras.Model:
    """Puts a new classification or regression head on a base.

    The base becomes one layer of the new model, called with `training=False`
    so its BatchNormalization layers stay in inference mode even after they are
    unfrozen. Head layers are named `head_*`. The output layer computes in
    float32, so the model's output stays float32 under a mixed-precision policy.

    Args:
        base: the base, e.g. from `load_base`.
        num_classes: classes (multiclass), labels (multilabel) or outputs (regression);
            binary needs none.
        task: `"multiclass"` (softmax), `"binary"` (one sigmoid unit), `"multilabel"`
            (sigmoid per label) or `"regression"` (linear).
        hidden: sizes of ReLU Dense layers between pooling and the output.
        dropout: dropout rate after each hidden layer, or before the output when there is
            none; 0 for no dropout.
        pooling: `"avg"`, `"max"`, `"flatten"`, or `None` when the base already outputs
            vectors.

    Returns:
        A new Functional model `inputs -> base -> head`.

    Raises:
        ConfigError: a bad task, `num_classes`, `hidden`, `dropout` or `pooling`.
        ModelStructureError: `base` already has a head.

    Example:

    >>> model = add_head(base, num_classes=5, hidden=(128,), dropout=0.2)
    """
    structure.find_base(base)  # validates the type and the graph
    if any(layer.name.startswith(structure.HEAD_PREFIX) for layer in base.layers):
        raise ModelStructureError(
            f"{base.name!r} already has a head (layers named head_*). Pass its base "
            "(finetunekit.structure.find_base(model)) to add a new head."
        )
    spec = get_task(task)
    units = output_units(task, num_classes)
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {list(POOLINGS)}; received {pooling!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a rate in [0, 1); received {dropout!r}.")
    if isinstance(hidden, (int, str)) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise ConfigError(
            f"hidden must be a sequence of positive layer sizes, e.g. (128,) or (); "
            f"received {hidden!r}."
        )

    inputs = keras.Input(shape=base.input_shape[1:], name="image", dtype=base.input.dtype)
    x = base(inputs, training=False)
    x = _pool(x, pooling)
    for i, size in enumerate(hidden, start=1):
        x = keras.layers.Dense(size, activation="relu", name=f"head_dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
    if dropout and not hidden:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        units, activation=spec.activation, dtype="float32", name="head_output"
    )(x)
    return keras.Model(inputs, outputs, name=f"{base.name}_{spec.name}")


def _pool(x: Any, pooling: str | None) -> Any:
    rank = len(x.shape)
    if rank == 2:
        return x
    if pooling is None:
        raise ConfigError(
            f"The base outputs feature maps of shape {tuple(x.shape)}; pass pooling='avg' "
            "(or 'max', 'flatten') so the head gets vectors."
        )
    if rank != 4:
        raise ModelStructureError(
            f"add_head needs a base that outputs feature maps (batch, h, w, c) or vectors; "
            f"it outputs {tuple(x.shape)}."
        )
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="head_pool")(x)
    return keras.layers.Flatten(name="head_flatten")(x)
