"""Running the phases of a fine-tune: one runner, cached or not.

`run_phases` runs a schedule (`Recipe.phases()`) on a full model: it computes, in
ONE pass over the data, the stored features every cacheable phase needs (the
frozen layers up to each phase's cut), then runs each phase with `run_phase`:
set what trains, compile a fresh optimizer at the phase's rate, train (on stored
features above the cut, or on images), keep the best weights across phases.
The history of every epoch and a `PhaseReport` per phase come back on one
`FineTuneHistory`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from finetunekit import (
    _orders,
    caching,
    checkpoints,
    distribute,
    freezing,
    schedules,
    structure,
    tasks,
)
from finetunekit._checks import check_float
from finetunekit._nan import RaiseOnNaN
from finetunekit.data import Prepared, warn_lost_classes
from finetunekit.errors import ArgumentTypeError, ConfigError, DataError
from finetunekit.recipe import HEAD, Phase, Plan, is_finetune

__all__ = [
    "FineTuneHistory",
    "PhaseReport",
    "Settings",
    "run_phases",
    "run_phase",
    "compile_phase",
    "fresh_optimizer",
    "new_run",
]

logger = logging.getLogger("finetunekit")


@dataclass(frozen=True)
class PhaseReport:
    """How one phase ran.

    Attributes:
        phase: the phase's name.
        cached: whether it trained on stored features.
        cut: the last layer of the stored prefix (None when not cached).
        why_not_cached: why it was not cached (None when it was).
        spilled: whether the stored features spilled to disk.
        epochs_run: epochs it ran (early stopping may end it before its epochs).
        seconds: wall time of the phase, its share of the feature pass included.
    """

    phase: str
    cached: bool
    cut: str | None
    why_not_cached: str | None
    spilled: bool
    epochs_run: int
    seconds: float


class FineTuneHistory(keras.callbacks.History):
    """A `History` covering every phase of a `FineTuner.fit`.

    Attributes:
        history: metric name -> one value per epoch, all phases in order.
        epoch: the epoch indices.
        phases: the phase of every epoch (`"head"`, `"finetune"`, or `"finetune-1"`,
            `"finetune-2"`, ... when unfreezing gradually).
        unfreeze_epoch: index of the first fine-tune epoch (None when there was none).
        plan: the `Plan` that ran (the same `FineTuner.plan` gives for the same keywords).
        reports: a `PhaseReport` per phase, in order.
        best_epoch: the epoch whose weights the model ends with (None without early
            stopping).
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []
        self.phases: list[str] = []
        self.plan: Plan | None = None
        self.reports: list[PhaseReport] = []
        self.best_epoch: int | None = None

    @property
    def unfreeze_epoch(self) -> int | None:
        return next((i for i, name in enumerate(self.phases) if is_finetune(name)), None)

    def plot(self, path: str | os.PathLike[str], **options: Any) -> Path:
        """Draws loss and the main metric per epoch, each phase shaded, every unfreeze marked.

        Needs matplotlib (`pip install "finetunekit[plot]"`); `options` are those of
        `finetunekit.plot_history`.

        Returns:
            The path written (a PNG).

        Example:
            >>> tuner.fit(train).plot("history.png")
        """
        from finetunekit.evaluation import plot_history

        return plot_history(self, path, **options)

    def extend(self, phase: str, other: keras.callbacks.History) -> None:
        """Appends the epochs of one phase."""
        done = len(self.phases)
        count = len(other.epoch)
        for key, values in other.history.items():
            self.history.setdefault(key, [float("nan")] * done).extend(values)
        for values in self.history.values():
            values.extend([float("nan")] * (done + count - len(values)))
        self.epoch.extend(range(done, done + count))
        self.phases.extend([phase] * count)
        self.params = other.params
        if other.model is not None:
            self.set_model(other.model)


@dataclass
class Settings:
    """What every phase of one fit shares (the tuner's settings).

    Attributes:
        task: the task (loss, metrics, label checks).
        label_mode: how the loss reads the labels.
        optimizer: an optimizer name or an instance used as a template: every phase
            gets a new optimizer with its settings at the phase's rate.
        metrics: metrics instead of the task's defaults.
        cache: `"auto"`, True or False (see `FineTuner`).
        cache_budget: bytes of stored features kept in memory.
        seed: seed of the shuffles.
        strategy: a `tf.distribute.Strategy`, or None.
        augment: random transforms applied to training images, or None.
        augment_views: with `augment` and caching, the augmented views of each training
            image stored (see `caching.FeatureCache`); each epoch draws one per image.
        callbacks: the caller's Keras callbacks; they see the full model in every phase.
        verbose: as in `keras.Model.fit`.
    """

    task: tasks.Task
    label_mode: str = "int"
    optimizer: str | keras.optimizers.Optimizer = "adam"
    metrics: list[Any] | None = None
    cache: bool | str = "auto"
    cache_budget: int = caching.DEFAULT_BUDGET
    seed: int | None = None
    strategy: tf.distribute.Strategy | None = None
    augment: keras.layers.Layer | None = None
    augment_views: int = 1
    callbacks: Sequence[keras.callbacks.Callback] = ()
    verbose: Any = "auto"

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @property
    def printing(self) -> bool:
        return self.verbose not in (0, False)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    def batch_size(self, size: int) -> int:
        """`size` rounded up to a multiple of the replicas in sync (as is, without them)."""
        return -(-size // self.replicas) * self.replicas

    def for_replicas(self, dataset: tf.data.Dataset | None) -> tf.data.Dataset | None:
        """Batches that every replica gets an equal, non-empty share of.

        Keras builds a distributed model from the mean of the first batch's per-replica
        parts, which fails when they differ in size (a batch of 5 on 2 replicas), and a
        replica handed an empty part fails in BatchNormalization. So batches are made
        a multiple of the replicas, and the last one is cut down to one: with data
        reshuffled every epoch, a different handful of fewer than `replicas` examples
        sits out each epoch (the usual `drop_remainder` of distributed training).
        """
        if dataset is None or self.replicas == 1:
            return dataset
        size = dataset.element_spec[0].shape[0]
        if size is None:
            size = int(next(iter(dataset.take(1)))[0].shape[0])
        size = self.batch_size(size)
        # Counted once (labels only), so the result carries its length: with an unknown
        # length Keras makes one more, empty call per epoch, which still counts as an
        # optimizer step and shifts Adam's bias correction.
        sizes = dataset.map(lambda *batch: tf.shape(batch[1], tf.int64)[0])
        total = int(sizes.reduce(np.int64(0), lambda n, k: n + k))
        batches = total // size + (1 if total % size >= self.replicas else 0)
        trimmed = trim_for_replicas(dataset.unbatch().batch(size), self.replicas)
        return trimmed.apply(tf.data.experimental.assert_cardinality(batches))


def trim_for_replicas(dataset: tf.data.Dataset, replicas: int) -> tf.data.Dataset:
    """Each batch cut down to a multiple of `replicas`; batches left empty are dropped."""

    def trim(*batch: tf.Tensor) -> tuple[tf.Tensor, ...]:
        keep = tf.shape(batch[0])[0] // replicas * replicas
        return tuple(tf.nest.map_structure(lambda t: t[:keep], batch))

    return dataset.map(trim).filter(lambda *batch: tf.shape(batch[0])[0] > 0)


def _refuse_rate_setters(
    model: keras.Model, callbacks: Sequence[keras.callbacks.Callback]
) -> None:
    """Refuses a callback that sets the rate of an optimizer whose rate is a schedule.

    Keras cannot set the rate of an optimizer built on a `LearningRateSchedule` (warm-up
    or cosine) and raises a TypeError: at once for a `LearningRateScheduler`, after some
    epochs for a `ReduceLROnPlateau`. Said here, before the phase trains.
    """
    setters = [
        type(c).__name__
        for c in callbacks
        if isinstance(c, (keras.callbacks.LearningRateScheduler, keras.callbacks.ReduceLROnPlateau))
    ]
    if setters and structure.rate_is_scheduled(model.optimizer):
        raise ConfigError(
            f"{setters[0]} sets the learning rate, but this phase's rate is a schedule "
            "(warmup or cosine, or one of your optimizer's own), which Keras does not let a "
            f"callback set. Drop warmup and cosine (or the schedule), or the {setters[0]}."
        )


def check_callbacks(callbacks: Any) -> list[keras.callbacks.Callback]:
    """The callbacks as a list, each one a `keras.callbacks.Callback`."""
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback):
        callbacks = [callbacks]
    items = list(callbacks) if isinstance(callbacks, (list, tuple)) else None
    bad = [c for c in items or [] if not isinstance(c, keras.callbacks.Callback)]
    if items is None or bad:
        what = type(bad[0] if bad else callbacks).__name__
        raise ArgumentTypeError(
            f"callbacks must be a list of keras.callbacks.Callback; received {what}. Pass "
            "e.g. callbacks=[keras.callbacks.CSVLogger('log.csv')]."
        )
    return items


def fresh_optimizer(optimizer: Any, learning_rate: float | None = None) -> Any:
    """A new optimizer with the settings of `optimizer` (a name is returned as is).

    Keras ties an optimizer to the variables it first trains; reusing one for another set
    (after unfreezing, or for the trainer on stored features) fails with "Unknown
    variable". `learning_rate`, when given, replaces the optimizer's own.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    config = optimizer.get_config()
    if learning_rate is not None and "learning_rate" in config:
        config["learning_rate"] = learning_rate
    return type(optimizer).from_config(config)


def from_template(optimizer: Any, learning_rate: Any = None) -> tuple[Any, Any]:
    """A fresh optimizer from `optimizer` (a name, or an instance used as a template) at
    `learning_rate`, and the rate to give `compile_for` with it.

    None keeps an instance's own rate (1e-3 for a name); a `MultiOptimizer` keeps the
    rates of its groups.

    Raises:
        ConfigError: a rate for a `MultiOptimizer`, or one that is neither a positive
            number nor a `LearningRateSchedule`.
    """
    multi = isinstance(optimizer, keras.optimizers.MultiOptimizer)
    if multi and learning_rate is not None:
        raise ConfigError(
            "learning_rate does not apply to a MultiOptimizer, whose groups have rates "
            "of their own: leave learning_rate out (or set the rates in its groups)."
        )
    schedule = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    if learning_rate is not None and not schedule:
        check_float("learning_rate", learning_rate, low=0, expected="a positive number")
    fresh = fresh_optimizer(optimizer, learning_rate)
    if learning_rate is not None:
        return fresh, learning_rate
    # An instance's own rate, which compile_for logs (it builds a name at 1e-3).
    own = schedules.current_rate(fresh) if isinstance(fresh, keras.optimizers.Optimizer) else 0
    return fresh, own if math.isfinite(own) and own > 0 else 1e-3


def build_optimizer(model: keras.Model, settings: Settings) -> None:
    """Creates the optimizer's variables for what trains now, before `fit` traces.

    Without a distribution strategy, Keras (TensorFlow backend) leaves this to the first
    trace of the training step. The optimizer then creates variables inside the trace,
    and TensorFlow traces the whole step a second time, which costs as much as the first
    trace (about 0.5 s for the last blocks of a MobileNetV2). Keras builds the optimizer
    for the same variables either way, so training is unchanged.
    """
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        with settings.scope():
            optimizer.build(model.trainable_variables)


def compile_phase(
    model: keras.Model, phase: Phase, settings: Settings, steps_per_epoch: int | None = None
) -> None:
    """Sets what trains in `phase` and compiles a fresh optimizer at its rates.

    The rates per block and over time come from `schedules.phase_optimizer`;
    `steps_per_epoch` is needed when the phase warms up or decays.
    """
    freezing.set_trainable(model, phase.unfreeze, unit=phase.unit, train_bn=phase.train_bn)
    with settings.scope():
        optimizer, rate = schedules.phase_optimizer(
            settings.optimizer, model, phase, steps_per_epoch
        )
        tasks.compile_for(
            model,
            settings.task,
            learning_rate=rate,
            optimizer=optimizer,
            label_mode=settings.label_mode,
            metrics=settings.metrics,
        )


class BestWeights(keras.callbacks.Callback):
    """Keeps the model's weights of the epoch with the lowest `val_loss`, across phases.

    Attached to every phase of one fit, so the result is the best epoch of any phase:
    if fine-tuning only makes things worse, the head phase's best weights win. Keras'
    own `restore_best_weights` restores only when it stops early, and within one
    `fit()` call. Copying every weight at every improvement costs more than a cached
    epoch, so the first improvement of a phase copies all of them and later ones only
    what the phase can change (its trainable weights, the statistics of trainable
    layers, the state of frozen layers other than BatchNormalization): the rest has
    not moved since. Restoring at the end of a phase assigns only
    those too (assigning all 262 weights of MobileNetV2 took 0.1 s, more than the
    cached phase's epochs): the rest equals the copy, as the phase began with the
    weights of the copy or made it.
    """

    def __init__(self, target: keras.Model) -> None:
        super().__init__()
        self.target = target
        self.best = float("inf")
        self.best_epoch: int | None = None
        self._values: dict[int, Any] = {}
        self._copied_all = False  # in this phase
        self._changing: list[Any] | None = None  # None: unknown, restore assigns all

    def begin_phase(self) -> None:
        """Call once the phase's trainable set is applied, before its first epoch."""
        self._copied_all = False  # the next improvement copies everything
        # Trainable weights, the statistics of trainable layers, and any state of a frozen
        # layer other than BatchNormalization (frozen, it runs in inference mode): a layer
        # such as SpectralNormalization writes its weights in training whatever its flag.
        self._changing = self.target.trainable_variables + [
            v
            for layer in structure.leaf_layers(self.target)
            if layer.trainable or not structure.is_batch_norm(layer)
            for v in layer.non_trainable_weights
        ]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is None or not loss < self.best:
            return
        self.best, self.best_epoch = float(loss), epoch
        if self._copied_all and self._changing is not None:
            variables = self._changing
        else:
            variables = list(self.target.weights)
            self._copied_all = True
        for variable in variables:
            self._values[id(variable)] = variable.numpy()

    def restore(self, everything: bool = False) -> None:
        """Puts the best weights back: those the phase could change, or `everything`."""
        if not self._values:
            return
        changing = None if everything else self._changing
        for variable in self.target.weights if changing is None else changing:
            value = self._values.get(id(variable))
            if value is not None:
                variable.assign(value)


@dataclass
class _Stored:
    """Where a cached phase finds its inputs: a split, the caches, which output."""

    split: caching.Split
    train: caching.FeatureCache
    validation: caching.FeatureCache | None
    output: int
    slots: caching.Slots | None = None  # a shard's cache in a multi-worker fit


@dataclass
class _Run:
    """The state one fit carries from phase to phase."""

    epochs_done: int = 0
    best: BestWeights | None = None
    stored: dict[int, _Stored] = field(default_factory=dict)
    why_not: dict[int, str] = field(default_factory=dict)
    fill_seconds: float = 0.0
    #: Records every epoch; with a checkpoint folder, writes and resumes (checkpoints.py).
    tracker: checkpoints.Tracker | None = None


def new_run(model: keras.Model, phase: Phase) -> _Run:
    """The state of a run of one phase on its own (`FineTuner.train`)."""
    return _Run(best=BestWeights(model) if phase.early_stopping else None)


def _why_not_cached(
    model: keras.Model, settings: Settings, data: Prepared
) -> tuple[caching.Split | None, str]:
    """The split to train on stored features now, or None and why not."""
    if settings.cache is False:
        return None, "cache=False"
    if len(data.train.element_spec) > 2 or (
        data.validation is not None and len(data.validation.element_spec) > 2
    ):
        return None, "the data carries sample weights, which are not stored"
    split = caching.split_frozen_prefix(model)
    if split is None and isinstance(structure.find_base(model), keras.Sequential):
        return None, "the base is a keras.Sequential (only Functional bases are cut)"
    if split is None:
        return None, "the first block of the base trains: no frozen prefix"
    if settings.cache == "auto" and (names := caching.random_layers_before(split)):
        return None, f"random layers precede the cut ({', '.join(names[:3])})"
    return split, ""


def _fill(
    stack: contextlib.ExitStack,
    model: keras.Model,
    phases: Sequence[Phase | None],
    data: Prepared,
    settings: Settings,
    run: _Run,
) -> None:
    """One pass over the data stores the features of every phase that can be cached.

    Each phase's split is found with its trainable set applied in a trial; the splits
    share the model's layers, so each trainer trains the right weights once its phase
    sets them. All cuts lie in the same frozen base, so one multi-output prefix gives
    every phase its inputs. A phase given as None trains what is trainable now.
    """
    splits: dict[int, caching.Split] = {}
    with freezing.restoring(model), settings.scope():
        for i, phase in enumerate(phases):
            if phase is not None:
                freezing.set_trainable(
                    model, phase.unfreeze, unit=phase.unit, train_bn=phase.train_bn
                )
            split, why = _why_not_cached(model, settings, data)
            if split is None:
                run.why_not[i] = why
            else:
                splits[i] = split
    if not splits:
        return
    start = time.perf_counter()
    unique: dict[int, int] = {}  # id(prefix output) -> output index
    order: list[caching.Split] = []
    for split in splits.values():
        if id(split.prefix.output) not in unique:
            unique[id(split.prefix.output)] = len(order)
            order.append(split)
    prefix = caching.joint_prefix(*order)
    budget = settings.cache_budget
    holdout = data.holdout if data.validation is None else 0.0
    placement = distribute.placement(settings.strategy)  # None on one worker
    with distribute.together(settings.strategy, "the frozen layers' pass"):
        train = stack.enter_context(
            caching.FeatureCache(
                prefix,
                data.train,
                budget=budget,
                holdout=holdout,
                augment=settings.augment,
                views=settings.augment_views,
                shard=None if placement is None else placement[:2],
            )
        )
    distribute.check_same_data(settings.strategy, train.digest, "training images")
    slots = None
    if placement is not None:
        slots = _slots(train, placement, settings)
    validation = None
    if data.validation is not None:
        with distribute.together(settings.strategy, "the frozen layers' pass"):
            validation = stack.enter_context(
                caching.FeatureCache(prefix, data.validation, budget=budget)
            )
        distribute.check_same_data(settings.strategy, validation.digest, "validation images")
    elif holdout and (train.count("held_out") == 0 or (slots is None and not train.count())):
        data.no_holdout()
    elif holdout and slots is None:  # a shard holds only some of the classes' images
        warn_lost_classes(train.labels, train.held_out_mask(), settings.task.name)
    for i, split in splits.items():
        output = unique[id(split.prefix.output)]
        run.stored[i] = _Stored(split, train, validation, output, slots)
    run.fill_seconds = time.perf_counter() - start


def _slots(
    train: caching.FeatureCache, placement: tuple[int, int, int], settings: Settings
) -> caching.Slots:
    """Where this worker's shard goes in the global batches, from every shard's size."""
    position, workers, local = placement
    counts = distribute.gather_counts(settings.strategy, train.count("train"))
    if min(counts) == 0:  # raised on every worker alike: each has the same counts
        raise DataError(
            f"Across {workers} workers, a worker's shard of the training images is empty "
            f"(shards of {counts} images): there are too few images for this many workers. "
            "Train on fewer workers, or on more images."
        )
    size = settings.batch_size(train.batch_size) // workers
    steps = max(-(-count // size) for count in counts)
    logger.info(
        "worker %d of %d: the frozen layers ran on its shard of %d training images "
        "(shards %s); %d batches of %d per epoch on each worker, shorter shards padded",
        position, workers, counts[position], counts, steps, size,
    )
    return caching.Slots(position, workers, local, steps)


def run_phases(
    model: keras.Model,
    phases: Sequence[Phase],
    data: Prepared,
    settings: Settings,
    *,
    plan: Plan | None = None,
    tracker: checkpoints.Tracker | None = None,
) -> FineTuneHistory:
    """Runs a schedule of phases on a full model; the model ends with the best weights.

    Args:
        model: the full model (base nested, with its head).
        phases: e.g. `recipe.phases(validation=data.has_validation)`.
        data: the prepared data.
        settings: what the phases share.
        plan: the plan of `phases` on `model`, kept on the history.
        tracker: records every epoch; with a checkpoint folder, checkpoints them and
            resumes the run stored there (see `finetunekit.checkpoints`).

    Returns:
        A `FineTuneHistory` of every epoch, with a `PhaseReport` per phase.

    Raises:
        KeyboardInterrupt: re-raised after the model got the best weights so far (and
            the history the epochs that ran), stored features were dropped and the log
            said how to resume.
    """
    history = FineTuneHistory()
    history.plan = plan
    tracker = tracker or checkpoints.Tracker(None)
    run = _Run(tracker=tracker)
    if tracker.restore_model(model, history, run):  # a finished run: its result
        history.set_model(model)
        return history
    with contextlib.ExitStack() as stack:
        stack.enter_context(caching.quiet_retracing())
        stack.push(functools.partial(_on_interrupt, tracker, model, run))
        _fill(stack, model, phases, data, settings, run)
        if data.holdout > 0 and not run.stored:
            data.datasets()  # the content split of uncached phases; gives up when a side is empty
        if not data.has_validation:
            phases = [dataclasses.replace(p, early_stopping=False) for p in phases]
        if any(p.early_stopping for p in phases):
            run.best = BestWeights(model)
            tracker.restore_best(run.best)
        # Each phase is one Keras fit, and a CSVLogger opens its file anew at every fit:
        # the rows of the phases before (or of the run a resume continues) were lost.
        loggers = [c for c in settings.callbacks if isinstance(c, keras.callbacks.CSVLogger)]
        stack.callback(_set_append, loggers, [c.append for c in loggers])
        for i, phase in enumerate(phases):
            if tracker.skips(i):
                continue
            if run.epochs_done:
                _set_append(loggers, [True] * len(loggers))
            compile_phase(model, phase, settings, _steps_per_epoch(phase, run, i, data, settings))
            report, phase_history = run_phase(model, phase, data, settings, run=run, index=i)
            history.extend(phase.name, phase_history)
            history.reports.append(report)
            tracker.flush_phase()
            tracker.save(model, run, phase=i + 1, in_phase=0, optimizer=False)
        tracker.save(model, run, phase=len(phases), in_phase=0, finished=True, optimizer=False)
    history.set_model(model)
    history.best_epoch = run.best.best_epoch if run.best is not None else None
    if plan is not None and not data.has_validation:
        history.plan = Plan(
            dataclasses.replace(
                row, early_stopping=False, spec=dataclasses.replace(row.spec, early_stopping=False)
            )
            for row in plan
        )
    if settings.printing:
        caching.say(_summary(history))
    return history


def _set_append(loggers: list[keras.callbacks.CSVLogger], values: list[bool]) -> None:
    for logger_, value in zip(loggers, values, strict=True):
        logger_.append = value


def _on_interrupt(
    tracker: checkpoints.Tracker, model: keras.Model, run: _Run, kind: Any, *_: Any
) -> bool:
    """On a Ctrl-C (the stored features are dropped by then): best weights back, a hint."""
    if kind is not None and issubclass(kind, KeyboardInterrupt):
        tracker.interrupted(model, run)
    return False  # the exception goes on


def _steps_per_epoch(
    phase: Phase, run: _Run, index: int, data: Prepared, settings: Settings
) -> int | None:
    """Optimizer steps in one epoch of a phase (only counted when its rate varies)."""
    if not phase.warmup and not phase.cosine:
        return None
    stored = run.stored.get(index)
    if stored is not None and stored.slots is not None:
        return stored.slots.steps
    if stored is not None:
        part: caching.Part = "train" if data.holdout > 0 else "all"
        n, size = stored.train.count(part), settings.batch_size(stored.train.batch_size)
        replicas = settings.replicas  # as FeatureCache.dataset cuts batches for replicas
        steps = n // size + (1 if n % size >= replicas else 0) if replicas > 1 else -(-n // size)
        return max(steps, 1)
    images, _ = data.datasets()
    count = int(images.cardinality())
    if count < 0:  # unknown length: counted once, on the labels
        count = int(images.map(lambda *batch: 0).reduce(0, lambda n, _: n + 1))
    return max(count, 1)


def run_phase(
    model: keras.Model,
    phase: Phase,
    data: Prepared,
    settings: Settings,
    *,
    run: _Run | None = None,
    index: int = 0,
) -> tuple[PhaseReport, keras.callbacks.History]:
    """Trains one phase of `model` as it is compiled now, on stored features or images.

    The model must be compiled for the phase (see `compile_phase`; `FineTuner.train`
    compiles by itself). Without features stored ahead by `run_phases`, a cacheable
    phase stores its own in one pass.

    Returns:
        The phase's `PhaseReport` and its Keras `History`.
    """
    tasks.check_compiled(model)
    run = run if run is not None else _Run()
    start = time.perf_counter()
    log_rate = schedules.LogRate()  # around the caller's callbacks: see its docstring
    callbacks = [
        log_rate,
        *settings.callbacks,
        log_rate.late,
        RaiseOnNaN(phase.name, phase.learning_rate),
    ]
    validating = data.has_validation
    stopper = None
    if phase.early_stopping and validating:
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=phase.patience)
        callbacks.append(stopper)
    if run.best is not None and validating:
        run.best.begin_phase()
        callbacks.append(run.best)
    # A resumed phase: epochs of it already run, and whether it had ended (early stop).
    done, ended = run.tracker.resumes(index) if run.tracker is not None else (0, False)
    fit_args = dict(
        epochs=run.epochs_done if ended else run.epochs_done - done + phase.epochs,
        initial_epoch=run.epochs_done,
        callbacks=callbacks,
        verbose=settings.verbose,
    )
    build_optimizer(model, settings)
    _refuse_rate_setters(model, settings.callbacks)
    if run.tracker is not None:  # last: it records the state of the callbacks before it
        callbacks.append(run.tracker.phase_callback(model, index, phase, run, stopper))
    with contextlib.ExitStack() as stack:
        stack.enter_context(caching.quiet_retracing())
        stored = run.stored.get(index)
        why = run.why_not.get(index)
        if stored is None and why is None:  # a phase on its own (FineTuner.train)
            _fill(stack, model, [None], data, settings, run)
            stored, why = run.stored.get(0), run.why_not.get(0)
            run.fill_seconds = 0.0  # timed with this phase already
        if settings.printing:
            caching.say(_banner(phase, model, stored, why))
        if stored is not None:
            history = _fit_stored(model, stored, data, settings, fit_args)
        else:
            history = _fit_images(model, data, settings, fit_args)
    run.epochs_done += len(history.epoch)
    if run.best is not None:
        run.best.restore()
    report = PhaseReport(
        phase=phase.name,
        cached=stored is not None,
        cut=stored.split.cut if stored is not None else None,
        why_not_cached=None if stored is not None else why,
        spilled=stored.train.spilled if stored is not None else False,
        epochs_run=done + len(history.epoch),
        seconds=time.perf_counter() - start + (run.fill_seconds if index == 0 else 0.0),
    )
    logger.info(
        "%s phase: %s, %d epochs in %.1f s",
        phase.name,
        f"frozen layers up to {report.cut!r} ran once"
        if report.cached
        else f"not cached ({report.why_not_cached})",
        report.epochs_run,
        report.seconds,
    )
    return report, history


def _fit_images(
    model: keras.Model, data: Prepared, settings: Settings, fit_args: dict[str, Any]
) -> keras.callbacks.History:
    images, held = data.datasets()
    train, validation = settings.for_replicas(images), settings.for_replicas(held)
    assert train is not None
    if distribute.is_multi_worker(settings.strategy):
        # Keras gives each worker its share of every batch, so all must read the same
        # batches in the same order: compared on the first one (before augmentation,
        # which draws differently on each worker). Shared by batches, never by files.
        distribute.check_same_data(settings.strategy, _batch_digest(train), "batches")
        distribute.prepare_model(model)
        train, validation = distribute.by_batches(train), distribute.by_batches(validation)
        assert train is not None
    if settings.augment is not None:
        augment = settings.augment
        train = train.map(
            lambda x, y, *rest: (augment(x, training=True), y, *rest),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    with _orders.following(data.train) as follow:
        fit_args = {**fit_args, "callbacks": [*fit_args["callbacks"], follow]}
        if settings.printing:  # the same bar as on stored features
            fit_args = {**fit_args, "callbacks": [*fit_args["callbacks"], caching.ProgressBar()]}
        with settings.scope():
            return model.fit(
                caching.untuned(train.prefetch(tf.data.AUTOTUNE)),
                validation_data=None if validation is None else caching.untuned(validation),
                shuffle=False,  # datasets are reshuffled by tf.data itself
                **fit_args,
            )


def _batch_digest(dataset: tf.data.Dataset) -> int:
    """A digest of the first batch's pixels and labels."""
    images, labels, *_ = next(iter(dataset))
    digest = hashlib.sha256(np.asarray(images).tobytes() + np.asarray(labels).tobytes())
    return int.from_bytes(digest.digest()[:8], "little")


def _fit_stored(
    model: keras.Model,
    stored: _Stored,
    data: Prepared,
    settings: Settings,
    fit_args: dict[str, Any],
) -> keras.callbacks.History:
    trainer = stored.split.trainer
    with settings.scope():
        # The full model's optimizer itself: callbacks that change its rate reach the
        # trainer, and the saved model's optimizer state is the one that trained.
        tasks.compile_for(
            trainer,
            settings.task,
            optimizer=model.optimizer,
            label_mode=settings.label_mode,
            metrics=settings.metrics,
        )
    part: caching.Part = "train" if data.holdout > 0 else "all"
    batching: dict[str, Any] = dict(
        output=stored.output,
        batch_size=settings.batch_size(stored.train.batch_size),
        replicas=settings.replicas,
    )
    train = stored.train.dataset(
        shuffle=True, seed=settings.seed, part=part, slots=stored.slots, **batching
    )
    if stored.validation is not None:
        validation = stored.validation.dataset(shuffle=False, part="all", **batching)
    elif data.holdout > 0:
        validation = stored.train.dataset(shuffle=False, part="held_out", **batching)
    else:
        validation = None
    with _orders.following(train) as follow:
        fit_args = {**fit_args, "callbacks": [*fit_args["callbacks"], follow]}
        if distribute.is_multi_worker(settings.strategy):  # after FollowEpochs read the orders
            train, validation = distribute.by_batches(train), distribute.by_batches(validation)
        with settings.scope():
            return caching.fit_on_features(
                trainer,
                train,
                validation=validation,
                model=model,
                # Keras' loop of several steps per call fails under a distribution strategy
                # here (a placeholder inside its while loop is never fed): one step per
                # call. So does a callback of the caller's that acts on each batch (a
                # per-batch learning rate): Keras calls batch hooks once per call, every
                # 16 steps.
                steps_per_execution=caching.STEPS_PER_CALL
                if settings.strategy is None and not _acts_on_batches(settings.callbacks)
                else 1,
                **fit_args,
            )


#: The hooks Keras calls once per call of its step function, not once per batch.
_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


def _acts_on_batches(callbacks: Sequence[keras.callbacks.Callback]) -> bool:
    """Whether a callback acts on a training-batch hook (Keras' own Callback does not), by
    a method of its class or one set on it (`LambdaCallback(on_train_batch_end=...)`)."""
    return any(
        caching.overrides(callback, hook)
        for callback in callbacks
        if not _saves_per_epoch(callback)
        for hook in _BATCH_HOOKS
    )


def _saves_per_epoch(callback: keras.callbacks.Callback) -> bool:
    """A ModelCheckpoint or BackupAndRestore saving per epoch: its batch hook returns at once.

    Counted as acting on batches, the common `ModelCheckpoint(path)` made every cached
    phase run one step per call instead of `caching.STEPS_PER_CALL`.
    """
    savers = (keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore)
    if not isinstance(callback, savers):
        return False
    frequency = getattr(callback, "save_freq", None)
    return frequency == "epoch" or frequency is False  # BackupAndRestore takes False


def _banner(phase: Phase, model: keras.Model, stored: _Stored | None, why: str | None) -> str:
    if phase.name != HEAD and not is_finetune(phase.name):  # FineTuner.train: the model as is
        trains = "what is trainable now"
    elif not phase.trains_base:
        trains = "the head"
    else:
        trains = f"the head and the last {phase.unfreeze} {phase.unit}s of the base"
    views = stored.train.views if stored is not None else 1
    per_view = f" per augmented view ({views} views)" if views > 1 else ""
    how = (
        f"frozen layers up to {stored.split.cut!r} run once{per_view}, cached"
        if stored is not None
        else f"not cached: {why}"
    )
    stop = f", early stopping (patience {phase.patience})" if phase.early_stopping else ""
    rate = f"lr {phase.learning_rate:g}"
    if phase.lr_decay is not None and phase.trains_base:
        rate += f" (block k from the top x{phase.lr_decay:g}^k)"
    shape = [f"warm-up {phase.warmup:g} epochs"] if phase.warmup else []
    shape += ["cosine decay"] if phase.cosine else []
    if shape:
        rate += f" ({', '.join(shape)})"
    return (
        f"{phase.name} phase: trains {trains} at {rate}, up to {phase.epochs} epochs{stop}; {how}"
    )


def _summary(history: FineTuneHistory) -> str:
    parts = [f"{r.phase} {r.epochs_run} epochs ({r.seconds:.1f} s)" for r in history.reports]
    line = "fit done: " + ", ".join(parts)
    best = history.best_epoch
    if best is not None and best < len(history.phases):
        metrics = ", ".join(
            f"{k} {history.history[k][best]:.4g}" for k in history.history if k.startswith("val_")
        )
        line += f"; weights of epoch {best + 1} ({history.phases[best]} phase) kept: {metrics}"
    return line
