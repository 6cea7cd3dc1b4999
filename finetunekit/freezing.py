"""`freeze`, `unfreeze_last`, the BatchNormalization policy and a trainable report.

Both functions act on the base: a bare base, or the base nested in a full model
(the head is never touched). BatchNormalization layers stay frozen unless
`train_bn=True`. A frozen BatchNormalization layer runs in inference mode (its
moving statistics never drift on small batches). With `train_bn=True` it trains
as Keras 3 trains it: batch statistics, moving statistics updated, because
`fit` passes `training=True` down to every layer, overriding the `training=False`
the base was called with in `add_head`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import keras

from finetunekit import structure
from finetunekit._checks import check_bool, check_choice, check_int
from finetunekit.errors import ConfigError

__all__ = [
    "freeze",
    "unfreeze_last",
    "set_trainable",
    "restoring",
    "trainable_report",
    "TrainableReport",
]

logger = logging.getLogger("finetunekit")

Unit = Literal["layer", "block"]


def freeze(model: keras.Model, *, train_bn: bool = False) -> keras.Model:
    """Freezes the whole base of a model.

    Args:
        model: a bare base, or a full model with the base nested in it (its head stays
            trainable).
        train_bn: keep the BatchNormalization layers trainable (they then train on batch
            statistics and update their moving statistics; see the module docstring).

    Returns:
        `model`, modified in place.

    Raises:
        ArgumentTypeError: `model` is not a keras.Model.
        ModelStructureError: the model's graph cannot be read.
        ConfigError: `train_bn` is not True or False.

    Examples:
        >>> base = load_base("mobilenet_v2", weights=None, input_shape=(96, 96, 3))
        >>> freeze(base).trainable_weights
        []
    """
    check_bool("train_bn", train_bn)  # "no" would count as true: every BN trainable
    base = structure.find_base(model)
    chosen = {id(layer) for layer in structure.leaf_layers(base) if structure.is_batch_norm(layer)}
    _apply(base, chosen if train_bn else set())
    _warn_if_compiled(model)
    return model


def unfreeze_last(
    model: keras.Model, n: int, *, unit: Unit = "layer", train_bn: bool = False
) -> keras.Model:
    """Makes exactly the last `n` layers or blocks of the base trainable.

    Everything earlier in the base is frozen; the head is never touched. With
    `unit="layer"` only layers that hold weights count (BatchNormalization
    counts only with `train_bn=True`), so `n=4` means four layers that will
    really train. With `unit="block"` the base is cut where the graph allows
    (see `finetunekit.structure`), so a residual block is never split.

    Args:
        model: a bare base, or a full model with the base nested in it.
        n: how many layers or blocks, counted from the end of the base; at least 1.
        unit: `"layer"` or `"block"`.
        train_bn: also train the BatchNormalization layers inside the unfrozen part.

    Returns:
        `model`, modified in place. Recompile (`compile_for`) before the next `fit`.

    Raises:
        ConfigError: `n` is not a positive int, is larger than what the base has, or
            `unit` is unknown, or `train_bn` is not True or False.

    Examples:
        >>> unfreeze_last(model, 2, unit="block")
    """
    check_choice("unit", unit, ("layer", "block"))
    n = check_int("n", n, minimum=1, expected=f"a positive int (how many {unit}s)")
    check_bool("train_bn", train_bn)
    base = structure.find_base(model)
    if unit == "layer":
        candidates = [
            layer
            for layer in structure.leaf_layers(base)
            if structure.trainable_capable(layer)
            and (train_bn or not structure.is_batch_norm(layer))
        ]
        what = "layers with weights" + ("" if train_bn else " (BatchNormalization not counted)")
        if n > len(candidates):
            raise ConfigError(
                f"n={n} but the base {base.name!r} has only {len(candidates)} {what}. Use "
                f"n <= {len(candidates)}, or freeze(model) then train the whole base."
            )
        chosen = candidates[-n:]
    else:
        blocks = structure.blocks(base)
        if n > len(blocks):
            raise ConfigError(
                f"n={n} but the base {base.name!r} has only {len(blocks)} blocks; use "
                f"n <= {len(blocks)} (see finetunekit.structure.blocks(model))."
            )
        chosen = [layer for block in blocks[-n:] for layer in block.weighted(train_bn=train_bn)]
    _apply(base, {id(layer) for layer in chosen})
    _warn_if_compiled(model)
    return model


def set_trainable(
    model: keras.Model, n: int, *, unit: Unit = "block", train_bn: bool = False
) -> keras.Model:
    """Freezes the base, then unfreezes its last `n` blocks or layers (none when `n` is 0).

    The trainable set of one phase of a fine-tune, in one call.

    Returns:
        `model`, modified in place.
    """
    freeze(model)
    if n:
        unfreeze_last(model, n, unit=unit, train_bn=train_bn)
    return model


@contextlib.contextmanager
def restoring(model: keras.Model) -> Iterator[keras.Model]:
    """Restores every trainable flag of the model's base on exit, whatever happened inside.

    Example:
        >>> with restoring(model):
        ...     unfreeze_last(model, 2, unit="block")  # try it; flags come back after
    """
    base = structure.find_base(model)
    saved = [(layer, layer.trainable) for layer in structure.leaf_layers(base)]
    saved_base = base.trainable
    try:
        yield model
    finally:
        base.trainable = saved_base
        for layer, flag in saved:
            layer.trainable = flag


def _apply(base: keras.Model, trainable_ids: set[int]) -> None:
    """Makes exactly the leaf layers in `trainable_ids` trainable within `base`."""
    if not trainable_ids:
        base.trainable = False
        return
    base.trainable = True  # propagates to every sublayer; then switch off the rest
    for layer in structure.leaf_layers(base):
        layer.trainable = id(layer) in trainable_ids


def _warn_if_compiled(model: keras.Model) -> None:
    # Info, not a warning: the correct recipe recompiles right after, and a model compiled
    # by compile_for refuses to fit a stale trainable set anyway (tasks._guard_fit).
    if getattr(model, "compiled", False):
        logger.info(
            "%s was compiled before this trainable change; call compile_for(...) again before "
            "the next fit.",
            model.name,
        )


def trainable_layers(model: keras.Model) -> list[Any]:
    """The leaf layers of `model` (base and head) that are trainable now."""
    return [layer for layer in structure.leaf_layers(model) if layer.trainable]


@dataclass(frozen=True)
class TrainableReport:
    """What trains in a model.

    Attributes:
        trainable_params: parameters that receive gradients.
        frozen_params: all other parameters (frozen weights and statistics).
        base_trainable_layers: names of the base's leaf layers with trainable weights.
        trainable_blocks: names of the base's blocks that hold any trainable weight.
        batchnorm: `"frozen (inference mode)"` or `"training scale/offset"`.
    """

    trainable_params: int
    frozen_params: int
    base_trainable_layers: tuple[str, ...]
    trainable_blocks: tuple[str, ...]
    batchnorm: str


def _count(variables: list[Any]) -> int:
    # From the shapes: `v.numpy().size` copied every weight's values (0.05 s a report on
    # MobileNetV2) only to count them.
    return sum(math.prod(v.shape) for v in variables)


def trainable_report(model: keras.Model) -> TrainableReport:
    """Summarises what trains in `model` (parameters, base layers and blocks, BN mode)."""
    base = structure.find_base(model)
    trainable_ids = {id(v) for v in model.trainable_variables}
    layers = [
        layer
        for layer in structure.leaf_layers(base)
        if any(id(v) in trainable_ids for v in structure.own_weights(layer))
    ]
    layer_ids = {id(layer) for layer in layers}
    blocks = tuple(
        block.name
        for block in structure.blocks(base)
        if any(id(layer) in layer_ids for layer in block.weighted(train_bn=True))
    )
    bn_training = any(structure.is_batch_norm(layer) for layer in layers)
    trainable = _count(model.trainable_variables)
    return TrainableReport(
        trainable_params=trainable,
        frozen_params=_count(model.weights) - trainable,
        base_trainable_layers=tuple(layer.name for layer in layers),
        trainable_blocks=blocks,
        batchnorm="training scale/offset" if bn_training else "frozen (inference mode)",
    )
