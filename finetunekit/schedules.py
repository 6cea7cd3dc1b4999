"""Learning rates of a phase: per block (discriminative rates) and over time (warm-up, cosine).

A phase's rate can vary in two directions, both built on Keras:

- **per block** (`Phase.lr_decay`): the head trains at the phase's rate, and the k-th
  unfrozen block of the base counted from the top (k = 1 for the top block) at
  `rate * lr_decay**k` (ULMFiT's discriminative rates, timm's layer-wise decay). The
  groups are `structure`'s blocks; each gets its own optimizer in a
  `keras.optimizers.OptimizerMap` keyed on the paths of its variables, inside a
  `keras.optimizers.MultiOptimizer`, which Keras saves and reloads with the model.
- **over time** (`Phase.warmup`, `Phase.cosine`): a linear warm-up from 0, then a
  cosine decay to 0 (or a constant rate), one `keras.optimizers.schedules.CosineDecay`
  per group, counted in optimizer steps of the phase.

Example:
    >>> from finetunekit.recipe import Recipe
    >>> phase = Recipe(unfreeze=2, lr_decay=0.5, warmup=1, cosine=True).phases()[-1]
    >>> rate = rate_schedule(1e-3, phase, steps_per_epoch=10)
    >>> float(rate(0)), round(float(rate(10)), 6)
    (0.0, 0.001)
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, TypeAlias

import keras

from finetunekit import structure, tasks
from finetunekit.recipe import Phase

__all__ = ["block_rates", "rate_schedule", "phase_optimizer", "LogRate", "HEAD_OPTIMIZER"]

logger = logging.getLogger("finetunekit")

HEAD_OPTIMIZER = "head"
"""The name of the head's optimizer inside a `MultiOptimizer` (the map's default)."""

Rate: TypeAlias = float | keras.optimizers.schedules.LearningRateSchedule


def _trainable_blocks(model: keras.Model) -> list[tuple[str, list[Any]]]:
    """(block name, trainable variables) of every block of the base that trains, top first."""
    found = []
    for block in reversed(structure.blocks(model)):
        variables = [
            v
            for layer in block.weighted(train_bn=True)
            for v in structure.own_weights(layer)
            if v.trainable
        ]
        if variables:
            found.append((block.name, variables))
    return found


def block_rates(model: keras.Model, phase: Phase) -> tuple[tuple[str, float], ...]:
    """The rate of each trainable block of the base in `phase`, bottom block first.

    Reads what is trainable now (apply the phase's trainable set first, as `plan` does).

    Returns:
        `(block name, rate)` pairs; empty without `lr_decay` or when no block trains.
    """
    if phase.lr_decay is None:
        return ()
    blocks = _trainable_blocks(model)
    return tuple(
        (name, phase.learning_rate * phase.lr_decay**k)
        for k, (name, _) in reversed(list(enumerate(blocks, start=1)))
    )


def rate_schedule(rate: float, phase: Phase, steps_per_epoch: int | None) -> Rate:
    """`rate` as `phase` has it over time: a float, or a Keras schedule over its steps.

    Args:
        rate: the peak rate (of the phase, or of one block).
        phase: its `warmup` (epochs) and `cosine` say the shape.
        steps_per_epoch: optimizer steps per epoch (needed for a warm-up or a decay).

    Returns:
        `rate` itself for a constant rate, else a `CosineDecay`: linear from 0 to `rate`
        over the warm-up, then a cosine to 0 over the rest of the phase (`alpha=1`, a
        constant rate, without `cosine`).
    """
    if not phase.warmup and not phase.cosine:
        return rate
    if not steps_per_epoch:
        raise ValueError("a warm-up or a decay needs the number of steps per epoch")
    warm = round(phase.warmup * steps_per_epoch)
    total = phase.epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warm else rate,
        decay_steps=max(total - warm, 1),
        alpha=0.0 if phase.cosine else 1.0,
        warmup_target=rate if warm else None,
        warmup_steps=warm,
    )


def _copy(template: str | keras.optimizers.Optimizer, rate: Rate, name: str | None) -> Any:
    """A new optimizer of the template's kind and settings, at `rate`, called `name`."""
    if isinstance(template, str):
        template = tasks.new_optimizer(template, 1e-3)
    config = template.get_config()
    config["learning_rate"] = rate
    if name is not None:
        config["name"] = name
    return type(template).from_config(config)


def phase_optimizer(
    template: str | keras.optimizers.Optimizer,
    model: keras.Model,
    phase: Phase,
    steps_per_epoch: int | None = None,
) -> tuple[str | keras.optimizers.Optimizer, Rate]:
    """The optimizer (and the head's rate) to compile `model` with for `phase`.

    Reads what is trainable now. Without `lr_decay`, a name stays a name (compile_for
    builds it at the returned rate) and an instance is copied at that rate; with it, a
    `MultiOptimizer` of one copy of the template per trainable block, plus the head's
    (the map's default, named `HEAD_OPTIMIZER`).

    Returns:
        `(optimizer, rate)`: pass both to `compile_for`.
    """
    head_rate = rate_schedule(phase.learning_rate, phase, steps_per_epoch)
    blocks = _trainable_blocks(model) if phase.lr_decay is not None else []
    if not blocks:
        if isinstance(template, str):
            return template, head_rate
        return _copy(template, head_rate, None), head_rate
    groups = {}
    for k, (name, variables) in enumerate(blocks, start=1):
        # One full-match pattern per block: the exact paths of its variables.
        pattern = "|".join(re.escape(v.path) for v in variables)
        peak = phase.learning_rate * phase.lr_decay**k  # type: ignore[operator]
        rate = rate_schedule(peak, phase, steps_per_epoch)
        groups[pattern] = _copy(template, rate, f"{name}_k{k}")
    head = _copy(template, head_rate, HEAD_OPTIMIZER)
    optimizer = keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(head, groups))
    logger.info("%s phase: %d blocks at their own rates", phase.name, len(blocks))
    return optimizer, head_rate


def head_optimizer(optimizer: Any) -> Any:
    """The optimizer whose rate is the phase's: the head's inside a `MultiOptimizer`
    (itself inside the `LossScaleOptimizer` Keras wraps it in under mixed_float16)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    if isinstance(optimizer, keras.optimizers.MultiOptimizer):
        named = [o for o in optimizer.optimizers if o.name == HEAD_OPTIMIZER]
        return named[0] if named else None
    return optimizer


def current_rate(optimizer: Any) -> float:
    """The head's learning rate now (of a schedule: at the optimizer's step); NaN for a
    `MultiOptimizer` of the caller's own, whose groups have no one rate."""
    shown = head_optimizer(optimizer)
    if shown is None:
        return math.nan
    return float(keras.ops.convert_to_numpy(shown.learning_rate))


class LogRate(keras.callbacks.Callback):
    """Adds `learning_rate` (the head's rate at the start of each epoch, after the
    caller's callbacks have set it) to the logs of every epoch.

    Keras logs the rate only from its rate-changing callbacks (`LearningRateScheduler`,
    `ReduceLROnPlateau`); a schedule inside the optimizer goes unlogged. Two callbacks
    in one: this one goes before the caller's callbacks, so that a `CSVLogger` or
    `TensorBoard` among them logs the rate; `late` goes after them, so that the rate is
    read once their `on_epoch_begin` has set it, and writes it again at the end (inside
    a `MultiOptimizer` a scheduler's own entry reads the wrapper's rate, not the head's).
    """

    def __init__(self) -> None:
        super().__init__()
        self._rate: float | None = None
        self.late = _LateRate(self)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and self._rate is not None:
            logs["learning_rate"] = self._rate


class _LateRate(keras.callbacks.Callback):
    """`LogRate`'s part that runs after the caller's callbacks."""

    def __init__(self, owner: LogRate) -> None:
        super().__init__()
        self.owner = owner

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        optimizer = head_optimizer(getattr(self.model, "optimizer", None))
        if optimizer is None:
            self.owner._rate = None
        else:  # a variable (mirrored under a strategy) or, with a schedule, a tensor
            self.owner._rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.owner.on_epoch_end(epoch, logs)
