"""`FineTuner`: the six steps as chaining methods, and `fit` that runs them all."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from finetunekit import bases, caching, data, freezing, heads, structure, tasks
from finetunekit._defaults import DEFAULTS, Defaults
from finetunekit.errors import ArgumentTypeError, ConfigError, DataError, StepOrderError

__all__ = ["FineTuner", "FineTuneHistory", "PhasePlan", "Plan", "DEFAULTS", "Defaults"]

logger = logging.getLogger("finetunekit")

HEAD, FINETUNE = "head", "finetune"
_STEPS_PER_CALL = 16


@dataclass
class _Cached:
    """Stored features for one phase: the split, its caches and which prefix output."""

    split: caching.Split
    train: caching.FeatureCache
    val: caching.FeatureCache | None
    output: int


@contextlib.contextmanager
def _trial_trainable(base: keras.Model) -> Iterator[None]:
    """Restores every trainable flag of `base` on exit, whatever happened inside."""
    saved = [(layer, layer.trainable) for layer in structure.leaf_layers(base)]
    saved_base = base.trainable
    try:
        yield
    finally:
        base.trainable = saved_base
        for layer, flag in saved:
            layer.trainable = flag


class FineTuneHistory(keras.callbacks.History):
    """A `History` covering every phase of a `FineTuner.fit`.

    Attributes:
        history: metric name -> one value per epoch, all phases in order.
        epoch: the epoch indices.
        phases: the phase of every epoch (`"head"` or `"finetune"`).
        unfreeze_epoch: index of the first fine-tune epoch (None when there was none).
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []
        self.phases: list[str] = []

    @property
    def unfreeze_epoch(self) -> int | None:
        return self.phases.index(FINETUNE) if FINETUNE in self.phases else None

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
        self.set_model(other.model)


@dataclass(frozen=True)
class PhasePlan:
    """What trains in one phase of `FineTuner.fit`.

    Attributes:
        phase: `"head"` or `"finetune"`.
        epochs: the most epochs the phase runs (early stopping may end it sooner).
        learning_rate: learning rate of the phase's optimizer.
        trainable_params: parameters that train.
        frozen_params: parameters that do not.
        trainable_blocks: blocks of the base that train (empty in the head phase).
        batchnorm: BatchNormalization mode in the base.
        early_stopping: whether early stopping (best weights restored) watches the phase.
    """

    phase: str
    epochs: int
    learning_rate: float
    trainable_params: int
    frozen_params: int
    trainable_blocks: tuple[str, ...]
    batchnorm: str
    early_stopping: bool


class Plan(tuple[PhasePlan, ...]):
    """The phases of a `FineTuner.fit`; `str(plan)` is a readable table."""

    def __str__(self) -> str:
        rows = [("phase", "epochs", "lr", "trainable", "frozen", "blocks trained", "BN")]
        for p in self:
            blocks = ", ".join(p.trainable_blocks) or "- (head only)"
            rows.append(
                (
                    p.phase,
                    str(p.epochs),
                    f"{p.learning_rate:g}",
                    f"{p.trainable_params:,}",
                    f"{p.frozen_params:,}",
                    blocks,
                    p.batchnorm,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
        )


def _check_epochs(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0; received {value!r}.")
    return value


class FineTuner:
    """The six steps of fine-tuning on one model, chained.

    Step by step, each method returns the tuner:

    ```python
    tuner = FineTuner("mobilenet_v2", num_classes=5, input_shape=(160, 160, 3))
    tuner.load_base().freeze().add_head().compile(learning_rate=1e-3)
    tuner.train(train, epochs=5, validation_data=val)
    tuner.unfreeze(2).train(train, epochs=5, validation_data=val)  # recompiled at 1e-5
    ```

    or in one call: `history = tuner.fit(train, validation_data=val)`.

    The tuner recompiles by itself after every trainable change, matches the
    loss to the labels (indices or one-hot), builds under `strategy.scope()`
    when a `tf.distribute` strategy is given, and uses early stopping with the
    best weights restored when there is validation data.

    Args:
        base: a base name (see `list_bases`), a keras.Model, or a saved `.keras` path.
        num_classes: classes of the task; inferred from the training labels when None.
        task: `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`.
        weights: `"imagenet"`, None, or a weights path (see `load_base`).
        input_shape: `(height, width, 3)`; the base's native size when None.
        strategy: a `tf.distribute.Strategy` to build, compile and train under.
        augment: `"default"` for `finetunekit.data.augmentation()`, a Keras layer of random
            transforms, or None. Applied to training batches only, never to validation data
            or at inference.
        cache: run the frozen prefix of each phase once and train the rest on its stored
            outputs. `"auto"` does so unless augmentation or a random layer precedes the cut,
            a strategy is set, or you pass callbacks (they would see the model that trains on
            the stored features); the log says why. True forces it, False never caches.
        cache_budget: bytes of stored features kept in memory; beyond, they spill to a
            temporary file that is removed after the phase.
        seed: seed of the shuffles and of the validation split.
        **base_kwargs: passed to the Keras constructor, e.g. `alpha=0.35`.

    Attributes:
        base: the base model (after `load_base`).
        model: the full model (after `add_head`); after `fit`, the trained model.
        history: the Keras `History` of the last `train`, or the `FineTuneHistory` of the
            last `fit`.
        last_phase: how the last phase ran (`cached`, the `cut`, `why_not` cached).

    Raises:
        ConfigError: bad `task` or `num_classes`.
        ArgumentTypeError: `strategy` is not a `tf.distribute.Strategy`.
    """

    def __init__(
        self,
        base: str | keras.Model | os.PathLike[str] = "mobilenet_v2",
        num_classes: int | None = None,
        *,
        task: str = "multiclass",
        weights: str | os.PathLike[str] | None = "imagenet",
        input_shape: tuple[int, int, int] | None = None,
        strategy: tf.distribute.Strategy | None = None,
        augment: str | keras.layers.Layer | None = None,
        cache: bool | str = "auto",
        cache_budget: int = caching.DEFAULT_BUDGET,
        seed: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        tasks.get_task(task)
        if cache not in ("auto", True, False):
            raise ConfigError(f"cache must be 'auto', True or False; received {cache!r}.")
        if cache is True and augment is not None:
            raise ConfigError(
                "cache=True cannot be combined with augment: the frozen layers would see each "
                "image once, unaugmented. Use cache='auto' (turns caching off) or augment=None."
            )
        if isinstance(cache_budget, bool) or not isinstance(cache_budget, int) or cache_budget < 0:
            raise ConfigError(
                f"cache_budget must be a number of bytes >= 0; received {cache_budget!r}."
            )
        if num_classes is not None:
            tasks.output_units(task, num_classes)
        if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
            raise ArgumentTypeError(
                f"strategy must be a tf.distribute.Strategy (e.g. MirroredStrategy()); "
                f"received {type(strategy).__name__}."
            )
        self._base_arg = base
        self.num_classes = num_classes
        self.task = task
        self.weights = weights
        self.input_shape = input_shape
        self.strategy = strategy
        self.base_kwargs = base_kwargs
        self.base: keras.Model | None = None
        self.model: keras.Model | None = None
        self.augment = _augmentation(augment)
        self.cache = cache
        self.cache_budget = cache_budget
        self.seed = seed
        self._compile_args: dict[str, Any] = {}
        self._label_mode: str | None = None
        self._epochs_done = 0
        #: How the last phase ran: cached or not, where the cut was, and why.
        self.last_phase: dict[str, Any] = {}
        #: The History of the last `train` (or the `FineTuneHistory` of the last `fit`).
        self.history: keras.callbacks.History | None = None

    # -- the six steps -------------------------------------------------------------------

    def load_base(self) -> FineTuner:
        """Step 1: loads the base (see `finetunekit.load_base`)."""
        with self._scope():
            self.base = bases.load_base(
                self._base_arg,
                weights=self.weights,
                input_shape=self.input_shape,
                **self.base_kwargs,
            )
        return self

    def freeze(self, *, train_bn: bool = False) -> FineTuner:
        """Step 2: freezes the whole base (see `finetunekit.freeze`)."""
        freezing.freeze(self._need_base(), train_bn=train_bn)
        self._recompile_if_needed()
        return self

    def add_head(
        self,
        *,
        hidden: Sequence[int] = (),
        dropout: float = DEFAULTS.dropout,
        pooling: str | None = "avg",
        normalize: bool | None = None,
    ) -> FineTuner:
        """Step 3: puts a head on the base (see `finetunekit.add_head`).

        `normalize=None` means True for classification and False for regression (unit
        length would drop the size of the features, which a regression may need).
        """
        base = self._need_base()
        if self.num_classes is None and self.task in ("multiclass", "multilabel"):
            raise StepOrderError(
                "num_classes is unknown: pass FineTuner(..., num_classes=N), or call fit(), "
                "which infers it from the labels."
            )
        with self._scope():
            self.model = heads.add_head(
                base,
                self.num_classes,
                task=self.task,
                hidden=hidden,
                dropout=dropout,
                pooling=pooling,
                normalize=self._normalize_default() if normalize is None else normalize,
            )
        self._compile_args = {}
        return self

    def compile(
        self,
        learning_rate: float = 1e-3,
        *,
        optimizer: str | keras.optimizers.Optimizer = "adam",
        label_mode: str | None = None,
        metrics: list[Any] | None = None,
    ) -> FineTuner:
        """Step 4: compiles for the task with a fresh optimizer (see `compile_for`).

        An optimizer instance is a template: every compile (this one, and the ones after
        `unfreeze`) gets a new optimizer with its settings, because Keras ties an
        optimizer to the variables it first trained. `unfreeze` sets the template's
        learning rate to the fine-tuning rate.
        """
        model = self._need_model()
        mode = label_mode or self._label_mode or self._default_label_mode()
        with self._scope():
            tasks.compile_for(
                model,
                self.task,
                learning_rate=learning_rate,
                optimizer=_fresh(optimizer),
                label_mode=mode,
                metrics=metrics,
            )
        self._compile_args = dict(
            learning_rate=learning_rate, optimizer=optimizer, label_mode=mode, metrics=metrics
        )
        return self

    def train(
        self,
        data_or_x: Any,
        y: Any = None,
        *,
        epochs: int = 5,
        validation_data: Any = None,
        batch_size: int = 32,
        early_stopping: bool = True,
        patience: int = DEFAULTS.patience,
        callbacks: list[keras.callbacks.Callback] | None = None,
        verbose: Any = "auto",
        phase: str = "train",
    ) -> keras.callbacks.History:
        """Step 5: trains what is trainable now.

        Args:
            data_or_x: a `tf.data.Dataset` of `(images, labels)` batches, a tuple `(x, y)`,
                or an image array with labels in `y`.
            y: labels, when `data_or_x` is an array.
            epochs: epochs to run.
            validation_data: same forms as the training data; enables early stopping.
            batch_size: batch size for arrays (datasets keep theirs).
            early_stopping: stop when `val_loss` stops improving and restore the best weights
                (only with validation data).
            patience: epochs without improvement before stopping.
            callbacks: more Keras callbacks.
            verbose: passed to `keras.Model.fit`.
            phase: a name for this run's epochs in logs.

        Returns:
            The tuner, so steps chain; the Keras `History` of this run is `tuner.history`.

        Raises:
            StepOrderError: no model yet (call `add_head`).
            DataError: data or labels that do not fit the task.
        """
        model = self._need_model()
        _check_epochs("epochs", epochs)
        train_ds, val_ds = self._datasets(data_or_x, y, validation_data, batch_size)
        self._check_image_size(train_ds, model)
        self._match_labels(train_ds, val_ds)
        best = _BestWeights(model) if early_stopping and val_ds is not None else None
        self.history = self._run_phase(
            train_ds,
            val_ds,
            epochs=epochs,
            phase=phase,
            early_stopping=early_stopping,
            patience=patience,
            callbacks=callbacks,
            verbose=verbose,
            best=best,
        )
        return self

    def _plan_caches(
        self,
        stack: contextlib.ExitStack,
        train_ds: tf.data.Dataset,
        val_ds: tf.data.Dataset | None,
        user_callbacks: bool,
        head: bool,
        finetune: bool,
        unfreeze_args: tuple[int, freezing.Unit, bool],
    ) -> tuple[_Cached | None, _Cached | None]:
        """Features for both phases from ONE pass over the data, when both can be cached.

        The fine-tune phase's frozen prefix lies inside the head phase's (the whole base),
        so one forward pass gives the inputs of both trainers.
        """
        if not (head and finetune) or self._cache_blocker(user_callbacks) is not None:
            return None, None
        model = self._need_model()
        head_split = caching.split_frozen_prefix(model)
        n, unit, train_bn = unfreeze_args
        with _trial_trainable(self._need_base()):
            freezing.unfreeze_last(self._need_base(), n, unit=unit, train_bn=train_bn)
            tune_split = caching.split_frozen_prefix(model)
        if head_split is None or tune_split is None:
            return None, None
        if self.cache == "auto" and caching.random_layers_before(head_split):
            return None, None
        prefix = caching.joint_prefix(head_split, tune_split)
        head_cache = self._fill_cache(stack, prefix, head_split, train_ds, val_ds, 0)
        return head_cache, _Cached(tune_split, head_cache.train, head_cache.val, 1)

    def _run_phase(
        self,
        train_ds: tf.data.Dataset,
        val_ds: tf.data.Dataset | None,
        *,
        epochs: int,
        phase: str,
        early_stopping: bool,
        patience: int,
        callbacks: list[keras.callbacks.Callback] | None,
        verbose: Any,
        cached: _Cached | None = None,
        best: _BestWeights | None = None,
    ) -> keras.callbacks.History:
        """Trains one phase, on stored features when the frozen prefix can be cached.

        `cached` carries features computed ahead (by `fit`, for both phases in one pass).
        """
        model = self._need_model()
        if not self._compile_args:
            self.compile()
        self._recompile_if_needed()
        all_callbacks = list(callbacks or [])
        if early_stopping and val_ds is not None:
            # Keras' own restore_best_weights restores only when it stops early, and only
            # within one fit() call; _BestWeights restores always, and across phases.
            all_callbacks.append(
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience)
            )
            if best is not None:
                all_callbacks.append(best)
        fit_args = dict(
            epochs=self._epochs_done + epochs,
            initial_epoch=self._epochs_done,
            callbacks=all_callbacks,
            verbose=verbose,
            shuffle=False,  # datasets are reshuffled by tf.data itself
        )
        with contextlib.ExitStack() as stack:
            if cached is None:
                split = self._cache_split(model, bool(callbacks), phase)
                if split is not None:
                    cached = self._fill_cache(stack, split.prefix, split, train_ds, val_ds, 0)
            if cached is not None:
                self._log_cached(phase, cached)
            if cached is None:
                if self.augment is not None:
                    augment = self.augment
                    train_ds = train_ds.map(
                        lambda x, y: (augment(x, training=True), y),
                        num_parallel_calls=tf.data.AUTOTUNE,
                    )
                _build_optimizer(model, self._scope())
                history = model.fit(
                    train_ds.prefetch(tf.data.AUTOTUNE), validation_data=val_ds, **fit_args
                )
            else:
                args = {**self._compile_args}
                args["optimizer"] = _fresh(args.get("optimizer", "adam"))
                with self._scope():
                    tasks.compile_for(cached.split.trainer, self.task, **args)
                _build_optimizer(cached.split.trainer, self._scope())
                # Steps on stored features are tiny: run several per call to cut the
                # per-step overhead (the updates are the same, one batch per step).
                cached.split.trainer.steps_per_execution = _STEPS_PER_CALL
                val = cached.val
                history = cached.split.trainer.fit(
                    cached.train.dataset(shuffle=True, seed=self.seed, output=cached.output),
                    validation_data=(
                        val.dataset(shuffle=False, output=cached.output) if val else None
                    ),
                    **fit_args,
                )
                history.set_model(model)
        self._epochs_done += len(history.epoch)
        if best is not None:
            best.restore()
        return history

    def _fill_cache(
        self,
        stack: contextlib.ExitStack,
        prefix: keras.Model,
        split: caching.Split,
        train_ds: tf.data.Dataset,
        val_ds: tf.data.Dataset | None,
        output: int,
    ) -> _Cached:
        """Runs `prefix` once over the data; the caches close with `stack`."""
        budget = self.cache_budget
        train = stack.enter_context(caching.FeatureCache(prefix, train_ds, budget=budget))
        val = None
        if val_ds is not None:
            val = stack.enter_context(caching.FeatureCache(prefix, val_ds, budget=budget))
        return _Cached(split, train, val, output)

    def _cache_blocker(self, user_callbacks: bool) -> str | None:
        """Why the features cannot be cached, or None when they can."""
        if self.cache is False:
            return "cache=False"
        if self.cache == "auto" and self.augment is not None:
            return "augmentation runs before the frozen layers"
        if self.cache == "auto" and self.strategy is not None:
            return "a distribution strategy is set"
        if self.cache == "auto" and user_callbacks:
            return "callbacks were passed (pass cache=True to cache anyway)"
        return None

    def _cache_split(
        self, model: keras.Model, user_callbacks: bool, phase: str
    ) -> caching.Split | None:
        """The split to train on cached features, or None (and why, in the log)."""
        why = self._cache_blocker(user_callbacks)
        split = None
        if why is None:
            split = caching.split_frozen_prefix(model)
            if split is None:
                why = "the first block of the base trains: no frozen prefix"
            elif self.cache == "auto" and (names := caching.random_layers_before(split)):
                why = f"random layers precede the cut ({', '.join(names[:3])})"
                split = None
        if split is None:
            self.last_phase = {"phase": phase, "cached": False, "cut": None, "why_not": why}
            logger.info("%s phase: no feature cache (%s)", phase, why)
        return split

    def _log_cached(self, phase: str, cached: _Cached) -> None:
        self.last_phase = {
            "phase": phase,
            "cached": True,
            "cut": cached.split.cut,
            "why_not": None,
            "spilled": cached.train.spilled,
        }
        logger.info(
            "%s phase: frozen layers up to %r run once; the rest trains on their stored outputs",
            phase,
            cached.split.cut,
        )

    def unfreeze(
        self,
        n: int = 2,
        *,
        unit: freezing.Unit = "block",
        train_bn: bool = False,
        learning_rate: float | None = None,
    ) -> FineTuner:
        """Step 6: unfreezes the last `n` blocks (or layers) of the base and recompiles.

        Args:
            n: how many blocks or layers of the base, counted from its end.
            unit: `"block"` or `"layer"` (see `finetunekit.unfreeze_last`).
            train_bn: also train BatchNormalization scale/offset in the unfrozen part.
            learning_rate: the fine-tuning learning rate (default
                `DEFAULTS.finetune_learning_rate`, as in `fit`).
        """
        freezing.unfreeze_last(self._need_base(), n, unit=unit, train_bn=train_bn)
        if self.model is not None:
            rate = DEFAULTS.finetune_learning_rate if learning_rate is None else learning_rate
            args = {**self._compile_args, "learning_rate": rate}
            args["optimizer"] = _fresh(args.get("optimizer", "adam"), learning_rate=rate)
            self.compile(**args)
        return self

    # -- all of it -----------------------------------------------------------------------

    def fit(
        self,
        train: Any,
        y: Any = None,
        *,
        validation_data: Any = None,
        validation_split: float = DEFAULTS.validation_split,
        head_epochs: int = DEFAULTS.head_epochs,
        finetune_epochs: int = DEFAULTS.finetune_epochs,
        unfreeze: int = DEFAULTS.unfreeze,
        unit: freezing.Unit = "block",
        head_learning_rate: float = DEFAULTS.head_learning_rate,
        finetune_learning_rate: float = DEFAULTS.finetune_learning_rate,
        train_bn: bool = False,
        hidden: Sequence[int] = (),
        dropout: float = DEFAULTS.dropout,
        normalize: bool | None = None,
        batch_size: int = 32,
        early_stopping: bool = True,
        patience: int = DEFAULTS.patience,
        callbacks: list[keras.callbacks.Callback] | None = None,
        verbose: Any = "auto",
    ) -> FineTuneHistory:
        """Runs the six steps: load, freeze, head, compile, train the head, unfreeze, train.

        Args:
            train: training data (see `train`).
            y: labels when `train` is an image array.
            validation_data: validation data; enables early stopping with best weights.
            validation_split: without `validation_data` and with `early_stopping`, this
                fraction of the training images is held out for early stopping. Images are
                assigned by their content, so the split is the same in every epoch and
                phase even when the dataset reshuffles. 0 disables it.
            head_epochs: epochs with the whole base frozen (0 to skip).
            finetune_epochs: epochs after unfreezing (0 to skip).
            unfreeze: how many blocks (or layers, see `unit`) of the base to unfreeze.
            unit: `"block"` or `"layer"`.
            head_learning_rate: learning rate of the head phase.
            finetune_learning_rate: learning rate after unfreezing (kept low so the
                pretrained features are not destroyed).
            train_bn: train BatchNormalization scale/offset in the unfrozen part.
            hidden: hidden layer sizes of the head.
            dropout: dropout of the head.
            normalize: unit-length pooled features in the head (see `add_head`); None
                means True for classification, False for regression.
            batch_size: batch size for arrays.
            early_stopping: early stopping on `val_loss` with the best weights restored.
            patience: epochs without improvement before stopping.
            callbacks: more Keras callbacks, used in both phases.
            verbose: passed to `keras.Model.fit`.

        Returns:
            One `FineTuneHistory` for both phases, with the phase of every epoch.

        Raises:
            ConfigError: bad epochs, `unfreeze` or learning rates.
            DataError: data or labels that do not fit the task.

        Examples:
            >>> history = FineTuner("mobilenet_v2", num_classes=5).fit(train, validation_data=val)
        """
        _check_epochs("head_epochs", head_epochs)
        _check_epochs("finetune_epochs", finetune_epochs)
        _check_epochs("unfreeze", unfreeze)
        if isinstance(validation_split, bool) or not 0 <= validation_split < 1:
            raise ConfigError(f"validation_split must be in [0, 1); received {validation_split!r}.")
        train_ds, val_ds = self._datasets(train, y, validation_data, batch_size)
        if self.base is None:
            if self.input_shape is None and not isinstance(self._base_arg, keras.Model):
                self.input_shape = _image_shape(train_ds)
            self.load_base()
        self._check_image_size(train_ds, self._need_base())
        self._infer_num_classes(train_ds, train)
        self._match_labels(train_ds, val_ds)
        if val_ds is None and early_stopping and validation_split:
            train_ds, val_ds = self._split(train_ds, validation_split, batch_size)
        self.freeze()
        if self.model is None:
            self.add_head(hidden=hidden, dropout=dropout, normalize=normalize)
        self._epochs_done = 0
        self.compile(head_learning_rate)
        history = FineTuneHistory()
        model = self._need_model()
        common: dict[str, Any] = dict(
            early_stopping=early_stopping,
            patience=patience,
            callbacks=callbacks,
            verbose=verbose,
            # One tracker for both phases: fit ends with the best weights of either.
            best=_BestWeights(model) if early_stopping and val_ds is not None else None,
        )
        finetune = bool(finetune_epochs and unfreeze)
        with contextlib.ExitStack() as stack:
            head_cache, tune_cache = self._plan_caches(
                stack,
                train_ds,
                val_ds,
                bool(callbacks),
                head_epochs > 0,
                finetune,
                (unfreeze, unit, train_bn),
            )
            if head_epochs:
                history.extend(
                    HEAD,
                    self._run_phase(
                        train_ds,
                        val_ds,
                        epochs=head_epochs,
                        phase=HEAD,
                        cached=head_cache,
                        **common,
                    ),
                )
            if finetune:
                self.unfreeze(
                    unfreeze, unit=unit, train_bn=train_bn, learning_rate=finetune_learning_rate
                )
                history.extend(
                    FINETUNE,
                    self._run_phase(
                        train_ds,
                        val_ds,
                        epochs=finetune_epochs,
                        phase=FINETUNE,
                        cached=tune_cache,
                        **common,
                    ),
                )
        history.set_model(self._need_model())
        self.history = history
        return history

    # -- inspection and saving -----------------------------------------------------------

    def plan(
        self,
        *,
        head_epochs: int = DEFAULTS.head_epochs,
        finetune_epochs: int = DEFAULTS.finetune_epochs,
        unfreeze: int = DEFAULTS.unfreeze,
        unit: freezing.Unit = "block",
        head_learning_rate: float = DEFAULTS.head_learning_rate,
        finetune_learning_rate: float = DEFAULTS.finetune_learning_rate,
        train_bn: bool = False,
        early_stopping: bool = True,
    ) -> Plan:
        """Describes, per phase, what `fit` with these arguments would train.

        Loads the base and adds the head if needed; leaves what is trainable as it was.

        Returns:
            A `Plan` (a tuple of `PhasePlan`); `print(plan)` shows a table.

        Raises:
            StepOrderError: `num_classes` is unknown (pass it to the constructor).
        """
        if self.base is None:
            self.load_base()
        base = self._need_base()
        # Without a model yet, describe a default head without keeping it: a later
        # fit(hidden=..., dropout=...) must still build the head it asks for.
        model = self.model
        if model is None:
            if self.num_classes is None and self.task in ("multiclass", "multilabel"):
                raise StepOrderError(
                    "num_classes is unknown: pass FineTuner(..., num_classes=N) to plan before fit."
                )
            model = heads.add_head(
                base, self.num_classes, task=self.task, normalize=self._normalize_default()
            )
        with _trial_trainable(base):
            freezing.freeze(base, train_bn=False)
            head = freezing.trainable_report(model)
            phases = [self._phase_plan(HEAD, head_epochs, head_learning_rate, head, early_stopping)]
            if finetune_epochs and unfreeze:
                freezing.unfreeze_last(base, unfreeze, unit=unit, train_bn=train_bn)
                tuned = freezing.trainable_report(model)
                phases.append(
                    self._phase_plan(
                        FINETUNE, finetune_epochs, finetune_learning_rate, tuned, early_stopping
                    )
                )
        return Plan(phases)

    @staticmethod
    def _phase_plan(
        phase: str, epochs: int, lr: float, report: freezing.TrainableReport, stop: bool
    ) -> PhasePlan:
        return PhasePlan(
            phase=phase,
            epochs=epochs,
            learning_rate=lr,
            trainable_params=report.trainable_params,
            frozen_params=report.frozen_params,
            trainable_blocks=report.trainable_blocks,
            batchnorm=report.batchnorm,
            early_stopping=stop,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Saves the full model as a `.keras` file that `keras.models.load_model` reloads.

        The preprocessing is inside the model, so the reloaded model predicts on raw images.

        Returns:
            The path written.

        Raises:
            ConfigError: the path does not end in `.keras`.
            StepOrderError: there is no model yet.
        """
        model = self._need_model()
        if not isinstance(path, (str, os.PathLike)):
            raise ArgumentTypeError(f"path must be a str or os.PathLike; received {path!r}.")
        target = Path(os.fspath(path))
        if target.suffix != ".keras":
            raise ConfigError(
                f"save() writes a Keras 3 '.keras' file; received {str(target)!r}. Use a name "
                f"such as {str(target.with_suffix('.keras'))!r}."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            # Trained on cached features, the full model's own optimizer never ran; build it so
            # the file's optimizer state matches what load_model rebuilds (no warning there).
            optimizer.build(model.trainable_variables)
        model.save(target)
        logger.info("saved %s to %s", model.name, target)
        return target

    # -- internals -----------------------------------------------------------------------

    def _scope(self) -> contextlib.AbstractContextManager[Any]:
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def _need_base(self) -> keras.Model:
        if self.base is None:
            raise StepOrderError("No base yet: call load_base() first (or fit()).")
        return self.base

    def _need_model(self) -> keras.Model:
        if self.model is None:
            raise StepOrderError("No model yet: call load_base() and add_head() first (or fit()).")
        return self.model

    def _normalize_default(self) -> bool:
        # Unit-length features suit a classifier; a regression may need their size.
        return DEFAULTS.normalize and self.task != "regression"

    def _default_label_mode(self) -> str:
        return {"multiclass": "int", "binary": "binary", "multilabel": "binary"}.get(
            self.task, "int"
        )

    def _datasets(
        self, train: Any, y: Any, validation_data: Any, batch_size: int
    ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
        train_ds = data.as_dataset(train, y, batch_size=batch_size, shuffle=True, seed=self.seed)
        val_ds = None
        if validation_data is not None:
            val_ds = data.as_dataset(
                validation_data, batch_size=batch_size, shuffle=False, what="validation_data"
            )
        return train_ds, val_ds

    def _split(
        self, train_ds: tf.data.Dataset, fraction: float, batch_size: int
    ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
        """Holds out `fraction` of the training images, unless that leaves a side empty."""
        kept, held_out = data.split_by_content(train_ds, fraction, batch_size)
        if int(held_out.cardinality()) == 0 or int(kept.cardinality()) == 0:
            logger.warning(
                "validation_split=%g leaves one side empty (by content, with these few "
                "images): training on all of them without early stopping. Pass "
                "validation_data, or more images.",
                fraction,
            )
            return train_ds, None
        logger.info(
            "held out about %g of the training images (%d batches) for early stopping",
            fraction,
            int(held_out.cardinality()),
        )
        return kept, held_out

    def _check_image_size(self, dataset: tf.data.Dataset, model: keras.Model) -> None:
        expected = tuple(model.input_shape[1:3])
        received = tuple(dataset.element_spec[0].shape[1:3])
        if None in expected or None in received or expected == received:
            return
        raise DataError(
            f"The images are {received[0]}x{received[1]} pixels but the model takes "
            f"{expected[0]}x{expected[1]}. Resize them when loading (e.g. "
            f"finetunekit.data.from_directory(..., image_size={expected[0]})), or build the "
            f"tuner with input_shape=({received[0]}, {received[1]}, 3)."
        )

    def _infer_num_classes(self, train_ds: tf.data.Dataset, original: Any) -> None:
        if self.num_classes is not None or self.task in ("binary",):
            return
        if self.task == "regression":
            self.num_classes = data.inspect_labels(train_ds, max_batches=1).width
            return
        names = getattr(original, "class_names", None)
        if names:
            self.num_classes = len(names)
        else:
            info = data.inspect_labels(train_ds)
            if info.label_mode == "categorical":
                self.num_classes = info.width
            else:
                self.num_classes = max(int(info.max_label) + 1, 2)
        logger.info("num_classes inferred from the labels: %d", self.num_classes)
        tasks.output_units(self.task, self.num_classes)

    def _match_labels(self, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset | None) -> None:
        """Checks the labels and switches the loss between indices and one-hot if needed."""
        info = data.inspect_labels(train_ds, max_batches=4)
        mode = data.check_labels(info, self.task, self.num_classes)
        if val_ds is not None:
            val_mode = data.check_labels(
                data.inspect_labels(val_ds, max_batches=4), self.task, self.num_classes
            )
            if val_mode != mode:
                raise DataError(
                    f"Training labels are {mode} but validation labels are {val_mode}; encode "
                    "both the same way (class indices, or one-hot rows)."
                )
        self._label_mode = mode
        if self._compile_args and self._compile_args.get("label_mode") != mode:
            logger.info("labels are %s: recompiling with the matching loss", mode)
            self.compile(**{**self._compile_args, "label_mode": mode})

    def _recompile_if_needed(self) -> None:
        if self.model is not None and self._compile_args and tasks.is_stale(self.model):
            logger.info("trainable weights changed since compile: recompiling")
            self.compile(**self._compile_args)


def _fresh(optimizer: Any, learning_rate: float | None = None) -> Any:
    """A new optimizer with the settings of `optimizer` (a name is returned as is).

    Keras ties an optimizer to the variables it first trains; reusing one for another set
    (after `unfreeze`, or for the trainer on cached features) fails with "Unknown
    variable". `learning_rate`, when given, replaces the optimizer's own.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    config = optimizer.get_config()
    if learning_rate is not None and "learning_rate" in config:
        config["learning_rate"] = learning_rate
    return type(optimizer).from_config(config)


def _build_optimizer(
    model: keras.Model, scope: contextlib.AbstractContextManager[Any]
) -> None:
    """Creates the optimizer's variables for what trains now, before `fit` traces.

    Without a distribution strategy, Keras (TensorFlow backend) leaves this to the first
    trace of the training step. The optimizer then creates variables inside the trace,
    and TensorFlow traces the whole step a second time, which costs as much as the first
    trace (about 0.5 s for the last blocks of a MobileNetV2). Keras builds the optimizer
    for the same variables either way, so training is unchanged.
    """
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        with scope:
            optimizer.build(model.trainable_variables)


def _augmentation(augment: str | keras.layers.Layer | None) -> keras.layers.Layer | None:
    if augment is None or isinstance(augment, keras.layers.Layer):
        return augment
    if isinstance(augment, str) and augment in data.AUGMENTATION_PRESETS:
        return data.augmentation(augment)
    raise ConfigError(
        f"augment must be None, a preset name {sorted(data.AUGMENTATION_PRESETS)} or a "
        f"keras.layers.Layer; received {augment!r}."
    )


class _BestWeights(keras.callbacks.Callback):
    """Keeps the full model's weights of the epoch with the lowest `val_loss`.

    Attached to every phase of one `fit`, so the result is the best epoch of either
    phase: if fine-tuning only makes things worse, the head phase's best weights win.
    """

    def __init__(self, target: keras.Model) -> None:
        super().__init__()
        self.target = target
        self.best = float("inf")
        self.weights: list[Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = float(loss)
            self.weights = [w.numpy() for w in self.target.weights]

    def restore(self) -> None:
        if self.weights is not None:
            for variable, value in zip(self.target.weights, self.weights, strict=True):
                variable.assign(value)


def _image_shape(dataset: tf.data.Dataset) -> tuple[int, int, int] | None:
    """The images' static (height, width, 3), when the dataset fixes it."""
    height, width = tuple(dataset.element_spec[0].shape[1:3])
    return None if height is None or width is None else (int(height), int(width), 3)
