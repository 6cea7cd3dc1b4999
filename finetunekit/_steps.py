"""The six steps of fine-tuning on one model, as chaining methods `FineTuner` inherits.

`Steps` holds the tuner's settings and the state the steps share (the base, the full
model, the compile arguments, the class names); `finetunekit.finetuner` adds `fit`,
`plan` and `save` over phases. The split follows Keras' own `Model(Trainer, Layer)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from typing_extensions import Self

from finetunekit import (
    bases,
    caching,
    data,
    distribute,
    freezing,
    heads,
    schedules,
    tasks,
    training,
)
from finetunekit._checks import check_bool, check_choice, check_int
from finetunekit.errors import ArgumentTypeError, StepOrderError
from finetunekit.recipe import DEFAULTS, FINETUNE, Phase, Recipe, check_lr_decay, refuse_unknown
from finetunekit.training import PhaseReport

logger = logging.getLogger("finetunekit")

#: The keywords of `FineTuner.train`, named when it is given another.
_TRAIN_KEYWORDS = (
    "epochs", "validation_data", "batch_size", "early_stopping", "patience", "callbacks",
    "verbose", "phase",
)


class Steps:
    """The settings of a tuner and its six steps; see `FineTuner`, which documents them.

    Every step returns the tuner, so steps chain: `tuner.load_base().freeze().add_head()`.
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
        self._task = tasks.get_task(task)
        check_choice("cache", cache, ("auto", True, False))
        check_int("cache_budget", cache_budget, minimum=0, expected="a number of bytes >= 0")
        if seed is not None:
            check_int("seed", seed, minimum=0, expected="an int >= 0 or None")
        if num_classes is not None:
            tasks.output_units(task, num_classes)
        bases.check_arguments(base, input_shape, base_kwargs)  # now, not after the data
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
        self.augment = data.augmentation_layer(augment)
        self.cache = cache
        self.cache_budget = cache_budget
        self.seed = seed
        self._seed_now = seed  # the seed of this call's shuffles: shared across workers
        self._compile_args: dict[str, Any] = {}
        self._label_mode: str | None = None
        #: The History of the last `train` (or the `FineTuneHistory` of the last `fit`).
        self.history: keras.callbacks.History | None = None
        #: The class names the training data carries (label i is class_names[i]), if any.
        self.class_names: tuple[str, ...] | None = None
        self._last_report: PhaseReport | None = None
        self._recipe: Recipe | None = None
        self._head_settings: dict[str, Any] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        """`(height, width)` the images must have, e.g. for `data.from_directory`."""
        if self.base is not None:
            return bases.input_size(self.base)
        return bases.input_size(self._base_arg, self.input_shape)

    @property
    def last_phase(self) -> PhaseReport | None:
        """How the last phase (of `train`, or of `fit`) ran; `fit`'s every phase is on
        `history.reports`."""
        return self._last_report

    # -- the six steps -------------------------------------------------------------------

    def load_base(self) -> Self:
        """Step 1: loads the base (see `finetunekit.load_base`).

        The base of a full model (e.g. another tuner's `model`) is copied, so training
        this tuner leaves that model as it was; a bare base is trained in place.

        Raises:
            StepOrderError: the tuner has a model already (`add_head` or `fit` ran): its
                steps would act on a new base while the model keeps the old one.
        """
        if self.model is not None:
            on = f" on the base {self.base.name!r}" if self.base is not None else ""
            raise StepOrderError(
                f"This tuner has a model already ({self.model.name!r}{on}): a new base "
                "would leave the model on the old one, and freeze() and unfreeze() would "
                "act on a base the model does not use. To start over, make a new FineTuner "
                "(this one's model stays as it is)."
            )
        with self._scope():
            self.base = bases.load_base(
                self._base_arg, weights=self.weights, input_shape=self.input_shape,
                **self.base_kwargs,
            )
            if isinstance(self._base_arg, keras.Model) and self.base is not self._base_arg:
                logger.info("copying the base of %r: it stays as it was", self._base_arg.name)
                copy = keras.models.clone_model(self.base)
                copy.set_weights(self.base.get_weights())
                self.base = copy
        return self

    def freeze(self, *, train_bn: bool = False) -> Self:
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
    ) -> Self:
        """Step 3: puts a head on the base (see `finetunekit.add_head`).

        `normalize=None` means the task's default: True for classification, False for
        regression (unit length would drop the size of the features, which a regression
        may need).
        """
        self.model = self._head(self._need_base(), hidden, dropout, pooling, normalize)
        self._compile_args = {}
        return self

    def compile(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | None = None,
        *,
        optimizer: str | keras.optimizers.Optimizer = "adam",
        label_mode: str | None = None,
        metrics: list[Any] | None = None,
    ) -> Self:
        """Step 4: compiles for the task with a fresh optimizer (see `compile_for`).

        An optimizer instance is a template: every compile (this one, and the ones after
        `unfreeze` and in each phase of `fit`) gets a new optimizer with its settings,
        because Keras ties an optimizer to the variables it first trained.
        `learning_rate` replaces the template's rate; None keeps it (1e-3 for a name).
        A `MultiOptimizer` keeps the rates of its groups: give it no `learning_rate`.
        """
        model = self._need_model()
        mode = label_mode or self._label_mode or self._task.default_label_mode
        with self._scope():  # the optimizer's variables too, under a strategy
            fresh, rate = training.from_template(optimizer, learning_rate)
            tasks.compile_for(
                model, self.task, learning_rate=rate, optimizer=fresh, label_mode=mode,
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
        **unknown: Any,
    ) -> Self:
        """Step 5: trains what is trainable now, as compiled (stored features when it can).

        Args:
            data_or_x: a `tf.data.Dataset` of `(images, labels)` batches (or with sample
                weights third), a tuple `(x, y)` or `(x, y, w)`, or an image array with
                labels in `y`.
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
            ConfigError: a keyword train() does not take (with how to do it).
        """
        refuse_unknown(unknown, _TRAIN_KEYWORDS, "train() takes")
        model = self._need_model()
        check_int("epochs", epochs, minimum=0)
        check_int("patience", patience, minimum=0)
        check_bool("early_stopping", early_stopping)
        prepared = self._prepare(data_or_x, y, validation_data, batch_size, holdout=0.0)
        if not self._compile_args:
            if getattr(model, "compiled", False):
                logger.warning(
                    "%s was compiled outside this tuner; train() compiles it for the task "
                    "with tuner.compile() (Adam at 1e-3). Pass your optimizer and metrics "
                    "to tuner.compile(optimizer=..., metrics=...) to train with them.",
                    model.name,
                )
            self.compile()
        self._recompile_if_needed()
        rate = schedules.current_rate(model.optimizer)
        step = Phase(phase, epochs, 0, "block", False, rate, early_stopping, patience)
        run = training.new_run(model, step)
        shared = self._settings(prepared, callbacks, verbose)
        shared.augment_views = Recipe(head_epochs=epochs, finetune_epochs=0).views(prepared.images)
        with prepared.errors():  # a bad label or NaN image past the first batches
            self._last_report, self.history = training.run_phase(
                model, step, prepared, shared, run=run
            )
        self._recipe = None  # a fit's recipe no longer says how these weights came about
        return self

    def unfreeze(
        self,
        n: int | None = None,
        *,
        unit: freezing.Unit = "block",
        train_bn: bool = False,
        learning_rate: float | None = None,
        lr_decay: float | None = None,
    ) -> Self:
        """Step 6: unfreezes the last `n` blocks (or layers) of the base and recompiles.

        Args:
            n: how many blocks or layers of the base, counted from its end (default
                the last stage of `DEFAULTS.unfreeze`, as in `fit`).
            unit: `"block"` or `"layer"` (see `finetunekit.unfreeze_last`).
            train_bn: also train BatchNormalization scale/offset in the unfrozen part.
            learning_rate: the fine-tuning learning rate (default
                `DEFAULTS.finetune_learning_rate`, as in `fit`).
            lr_decay: None for one rate; else the k-th unfrozen block from the top
                trains at `learning_rate * lr_decay**k` (see `finetunekit.schedules`).
                A later recompile after another trainable change goes back to one rate.

        Example:
            >>> tuner.unfreeze(3, learning_rate=1e-4, lr_decay=0.5)  # 5e-5, 2.5e-5, 1.25e-5
        """
        decay = check_lr_decay(lr_decay)
        if self.model is None and (learning_rate is not None or decay is not None):
            raise StepOrderError(
                "unfreeze(learning_rate=..., lr_decay=...) sets the rate of the next "
                "compile, but there is no model to compile yet: call add_head() first, then "
                "unfreeze(...)."
            )
        n = DEFAULTS.stages[-1] if n is None else n
        freezing.unfreeze_last(self._need_base(), n, unit=unit, train_bn=train_bn)
        if self.model is not None:
            rate = DEFAULTS.finetune_learning_rate if learning_rate is None else learning_rate
            template = self._compile_args.get("optimizer", "adam")
            step = Phase(FINETUNE, 1, n, unit, train_bn, rate, False, 0, lr_decay=decay)
            with self._scope():
                optimizer, _ = schedules.phase_optimizer(template, self.model, step)
            multi = isinstance(optimizer, keras.optimizers.MultiOptimizer)  # rates inside
            args = {"learning_rate": None if multi else rate, "optimizer": optimizer}
            self.compile(**{**self._compile_args, **args})
            # What a recompile after another trainable change starts from: one rate.
            self._compile_args.update(optimizer=template, learning_rate=rate)
        return self

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

    def _head(
        self,
        base: keras.Model,
        hidden: Sequence[int],
        dropout: float,
        pooling: str | None,
        normalize: bool | None,
    ) -> keras.Model:
        if self.num_classes is None and self._task.needs_num_classes:
            raise StepOrderError(
                "num_classes is unknown: pass FineTuner(..., num_classes=N), or call fit(), "
                "which infers it from the labels."
            )
        with self._scope():
            model = heads.add_head(
                base, self.num_classes, task=self.task, hidden=hidden, dropout=dropout,
                pooling=pooling, normalize=self._normalize(normalize),
            )
        # What the head was built with: a later fit trains this head, whatever it asks.
        self._head_settings = {
            "hidden": tuple(hidden), "dropout": dropout, "normalize": normalize
        }
        return model

    def _prepare(
        self, train: Any, y: Any, validation_data: Any, batch_size: int, *, holdout: float
    ) -> data.Prepared:
        """The data of one fit or train, checked against the task; loads the base if needed."""
        self._seed_now = distribute.shared_seed(self.strategy, self.seed)
        with distribute.together(self.strategy, "reading the data"):
            return self._prepare_here(train, y, validation_data, batch_size, holdout=holdout)

    def _prepare_here(
        self, train: Any, y: Any, validation_data: Any, batch_size: int, *, holdout: float
    ) -> data.Prepared:
        prepared = data.prepare(
            train, y, task=self._task, num_classes=self.num_classes,
            validation_data=validation_data, holdout=holdout, batch_size=batch_size,
            seed=self._seed_now,
            raw_pixels=any(map(bases.takes_raw_pixels, (self._base_arg, self.base))),
            one_size=None not in self._wanted_size(),
            channels=self._channels(),
        )
        if self.base is None:
            if self.input_shape is None and not isinstance(self._base_arg, keras.Model):
                self.input_shape = prepared.image_shape
            self.load_base()
        size = tuple(self._need_base().input_shape[1:3])
        data.check_image_size(prepared.train, size)
        if prepared.validation is not None:
            data.check_image_size(prepared.validation, size, "validation_data")
        self.num_classes = prepared.num_classes if self.num_classes is None else self.num_classes
        self.class_names = prepared.class_names or self.class_names
        self._label_mode = prepared.label_mode
        if self._compile_args and self._compile_args.get("label_mode") != prepared.label_mode:
            logger.info("labels are %s: recompiling with the matching loss", prepared.label_mode)
            self.compile(**{**self._compile_args, "label_mode": prepared.label_mode})
        return prepared

    def _normalize(self, normalize: bool | None) -> bool:
        """`normalize` as the head applies it (None: the task's default)."""
        return self._task.normalize_features if normalize is None else normalize

    def _wanted_size(self) -> tuple[int | None, ...]:
        """The (height, width) the base takes, None for an open side; a base still to be
        built at the data's size takes one size."""
        if self.base is not None:
            return tuple(self.base.input_shape[1:3])
        return tuple(self.input_shape[:2]) if self.input_shape is not None else (0, 0)

    def _channels(self) -> int:
        """The channels of the images the base takes (the registry's take RGB)."""
        return bases.channels_of(self.base if self.base is not None else self._base_arg)

    def _settings(
        self, prepared: data.Prepared, callbacks: Any, verbose: Any
    ) -> training.Settings:
        return training.Settings(
            task=self._task,
            label_mode=prepared.label_mode,
            optimizer=self._compile_args.get("optimizer", "adam"),
            metrics=self._compile_args.get("metrics"),
            cache=self.cache,
            cache_budget=self.cache_budget,
            seed=self._seed_now,
            strategy=self.strategy,
            augment=self.augment,
            callbacks=training.check_callbacks(callbacks),
            verbose=verbose,
        )

    def _recompile_if_needed(self) -> None:
        if self.model is not None and self._compile_args and tasks.is_stale(self.model):
            logger.info("trainable weights changed since compile: recompiling")
            self.compile(**self._compile_args)

