"""`add_head`: a new top on a base, with the base nested as one layer."""

from __future__ import annotations

import numbers
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
    normalize: bool = False,
) -> keras.Model:
    """Puts a new classification or regression head on a base.

    The base becomes one layer of the new model, called with `training=False`.
    Keras 3's `fit` overrides that with `training=True`, so what keeps
    BatchNormalization in inference mode is that it is frozen (see
    `finetunekit.freeze`). Head layers are named `head_*`. The output layer
    and the unit normalization compute in float32, so the model's output stays
    float32 under a mixed-precision policy, and long feature vectors do not
    overflow float16 when normalized.

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
        normalize: scale the pooled features to unit length (`UnitNormalization`) before
            the Dense layers, so the head learns from their direction, not their size.
            `FineTuner` does so by default for classification: on small data it generalised
            better (see the benchmarks page).

    Returns:
        A new Functional model `inputs -> base -> head`.

    Raises:
        ConfigError: a bad task, `num_classes`, `hidden`, `dropout` or `pooling`.
        ModelStructureError: `base` already has a head, or has more than one output.

    Examples:
        >>> model = add_head(base, num_classes=5, hidden=(128,), dropout=0.2)
    """
    structure.find_base(base)  # validates the type and the graph
    if len(base.outputs) != 1:
        raise ModelStructureError(
            f"{base.name!r} has {len(base.outputs)} outputs; add_head needs a base with one "
            "(its last feature map). Make a model of the output to fine-tune from, e.g. "
            "keras.Model(base.inputs, base.outputs[0])."
        )
    if any(layer.name.startswith(structure.HEAD_PREFIX) for layer in base.layers):
        raise ModelStructureError(
            f"{base.name!r} already has a head (layers named head_*). Pass its base "
            "(finetunekit.structure.find_base(model)) to add a new head."
        )
    inner = structure.find_base(base)
    if inner is not base:  # a model around its base: weights after the base are a head
        before = {id(layer) for layer in structure.layers_before(base, inner)}
        after = [
            layer for layer in base.layers
            if layer is not inner and id(layer) not in before and layer.weights
        ]
        vectors = len(base.outputs[0].shape) == 2  # pooled: a classifier's, not a neck's
        if after and (vectors or any(isinstance(x, keras.layers.Dense) for x in after)):
            raise ModelStructureError(
                f"{base.name!r} already has a head of its own (layers after its base "
                f"{inner.name!r}: {', '.join(x.name for x in after)}). Pass its base to add "
                "a new head: "
                "add_head(finetunekit.structure.find_base(model), num_classes)."
            )
    spec = get_task(task)
    units = output_units(task, num_classes)
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {list(POOLINGS)}; received {pooling!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a rate in [0, 1); received {dropout!r}.")
    hidden = _hidden_sizes(hidden)
    if not isinstance(normalize, bool):
        raise ConfigError(f"normalize must be True or False; received {normalize!r}.")

    # `base.inputs`, not `base.input`: a Sequential base has no input node of its own.
    inputs = keras.Input(shape=base.input_shape[1:], name="image", dtype=base.inputs[0].dtype)
    x = base(inputs, training=False)
    x = _pool(x, pooling)
    if normalize:
        # In float32 under a mixed policy: in float16 the sum of squares of 1280 pooled
        # features overflows past 65,504 (all at 8: 81,920) and the features become 0.
        x = keras.layers.UnitNormalization(name="head_normalize", dtype="float32")(x)
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


def _hidden_sizes(hidden: Any) -> tuple[int, ...]:
    """`hidden` as a tuple of positive ints; None means no hidden layer."""
    if hidden is None:
        return ()
    sizes: tuple[Any, ...] | None = None
    if not isinstance(hidden, (str, bytes)):
        try:
            sizes = tuple(hidden)
        except TypeError:  # an int or another non-iterable
            pass
    if sizes is None or not all(
        isinstance(h, numbers.Integral) and not isinstance(h, bool) and int(h) > 0 for h in sizes
    ):
        raise ConfigError(
            f"hidden must be a sequence of positive layer sizes, e.g. (128,) or (); "
            f"received {hidden!r}."
        )
    return tuple(int(h) for h in sizes)


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
    if None in tuple(x.shape[1:]):
        raise ConfigError(
            f"pooling='flatten' needs a fixed image size, but the base outputs {tuple(x.shape)}. "
            "Use pooling='avg' (or 'max'), or load the base with a fixed input_shape."
        )
    return keras.layers.Flatten(name="head_flatten")(x)
