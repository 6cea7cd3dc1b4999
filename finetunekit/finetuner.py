"""`FineTuner`: the six steps as chaining methods, and `fit` that runs them as phases."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from typing_extensions import Unpack

from finetunekit import (
    _gradients,
    bases,
    caching,
    checkpoints,
    data,
    distribute,
    freezing,
    heads,
    lr_finder,
    schedules,
    tasks,
    training,
)
from finetunekit._checks import check_bool, check_choice, check_int
from finetunekit.classifier import save_model
from finetunekit.errors import ArgumentTypeError, StepOrderError
from finetunekit.recipe import (
    DEFAULTS,
    FINETUNE,
    Phase,
    PhasePlan,
    Plan,
    Recipe,
    RecipeSettings,
    check_lr_decay,
    refuse_unknown,
)
from finetunekit.recipe import plan as plan_phases
from finetunekit.training import FineTuneHistory, PhaseReport

__all__ = ["FineTuner", "FineTuneHistory", "PhasePlan", "PhaseReport", "Plan", "DEFAULTS"]

logger = logging.getLogger("finetunekit")


#: The keywords of `FineTuner.train`, named when it is given another.
_TRAIN_KEYWORDS = (
    "epochs", "validation_data", "batch_size", "early_stopping", "patience", "callbacks",
    "verbose", "phase",
)


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Puts back the random state that building a model draws from.

    Keras 3 seeds every initializer and random layer made with `seed=None` from Python's
    `random` (`keras.random.make_default_seed`), the state `keras.utils.set_random_seed`
    sets; NumPy's global state is put back too.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class FineTuner:
    """The six steps of fine-tuning on one model, chained.

    Step by step, each method returns the tuner:

    ```python
    tuner = FineTuner("mobilenet_v2", num_classes=5, input_shape=(160, 160, 3))
    tuner.load_base().freeze().add_head().compile(learning_rate=1e-3)
    tuner.train(train, epochs=5, validation_data=val)
    tuner.unfreeze(2).train(train, epochs=5, validation_data=val)  # recompiled at 1e-5
    ```

    or in one call: `history = tuner.fit(train, validation_data=val)`, which runs the
    phases of a `Recipe` (`tuner.plan()` shows them first).

    The tuner recompiles by itself after every trainable change, matches the loss to
    the labels (indices or one-hot), builds under `strategy.scope()` when a
    `tf.distribute` strategy is given, and keeps the best weights of the whole fit
    when there is validation data.

    Args:
        base: a base name (see `list_bases`), a keras.Model, or a saved `.keras` path.
        num_classes: classes of the task; inferred from the training labels when None.
        task: `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`.
        weights: `"imagenet"`, None, or a weights path (see `load_base`).
        input_shape: `(height, width, 3)`; the base's native size when None.
        strategy: a `tf.distribute.Strategy` to build, compile and train under:
            `MirroredStrategy` over the GPUs of one machine, `MultiWorkerMirroredStrategy`
            across machines (every worker runs the same script; see
            `finetunekit.distribute`).
        augment: `"default"` for `finetunekit.data.augmentation()`, a Keras layer of random
            transforms, or None. Applied to training images only (in pixel space, before
            the frozen layers), never to validation or held-out data or at inference.
            Cached, each training image is stored as `augment_views` augmented views
            (a `fit` setting) and every epoch trains on one of them, drawn afresh;
            with `cache=False`, every epoch augments afresh.
        cache: run the frozen layers once over the data (once per augmented view) and
            train the rest of each phase on their stored outputs. `"auto"` does so
            unless a random layer precedes the cut (the report on the history says why).
            Callbacks see the full model either way. True forces it, False never caches.
        cache_budget: bytes of stored features kept in memory; beyond, they spill to a
            temporary file that is removed after the fit.
        seed: seed of the shuffles.
        **base_kwargs: passed to the Keras constructor, e.g. `alpha=0.35`.

    Attributes:
        base: the base model (after `load_base`).
        model: the full model (after `add_head`); after `fit`, the trained model.
        history: the Keras `History` of the last `train`, or the `FineTuneHistory` of the
            last `fit` (with its `plan` and a `PhaseReport` per phase).

    Raises:
        ConfigError: bad `task`, `num_classes`, `cache` or `cache_budget`.
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
        self._task = tasks.get_task(task)
        check_choice("cache", cache, ("auto", True, False))
        check_int("cache_budget", cache_budget, minimum=0, expected="a number of bytes >= 0")
        if seed is not None:
            check_int("seed", seed, minimum=0, expected="an int >= 0 or None")
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

    def load_base(self) -> FineTuner:
        """Step 1: loads the base (see `finetunekit.load_base`).

        The base of a full model (e.g. another tuner's `model`) is copied, so training
        this tuner leaves that model as it was; a bare base is trained in place.
        """
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
    ) -> FineTuner:
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
    ) -> FineTuner:
        """Step 5: trains what is trainable now, as compiled (stored features when it can).

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
        shared.augment_views = Recipe(head_epochs=epochs, finetune_epochs=0).views()
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
    ) -> FineTuner:
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

    # -- all of it -----------------------------------------------------------------------

    def fit(
        self,
        train: Any,
        y: Any = None,
        *,
        validation_data: Any = None,
        recipe: Recipe | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
        verbose: Any = "auto",
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        **settings: Unpack[RecipeSettings],
    ) -> FineTuneHistory:
        """Runs the six steps as phases: the head with the base frozen, then the last blocks.

        Every setting of the recipe is checked before the first image is read, and
        `unfreeze` against the base before anything trains. The data is converted and
        checked once; the frozen layers see each image once for all phases (when they
        can be cached); the model ends with the best weights of any phase.

        Args:
            train: training data: a `tf.data.Dataset` of `(images, labels)`, a tuple
                `(x, y)`, or images with labels in `y`.
            y: labels when `train` is an image array.
            validation_data: validation data; enables early stopping with best weights.
            recipe: a `Recipe` to start from (default `DEFAULTS`); the settings below
                replace its fields.
            callbacks: more Keras callbacks, used in every phase; they see the full model
                (`callback.model is tuner.model`), cached or not.
            verbose: passed to `keras.Model.fit`; at 0 the phase banners are silent too.
            checkpoint_dir: a folder to checkpoint the run in after every epoch (see the
                "Long runs" page). If it holds an unfinished checkpoint of the same call
                and data, the fit resumes after its last finished epoch; if it holds a
                finished one, its result is returned without training. A Ctrl-C leaves
                the model with the best weights so far and `tuner.history` with the
                epochs that ran, and re-raises.
            resume: with True, `checkpoint_dir` must hold a checkpoint (never start afresh).
            **settings: any field of `Recipe`, documented there (defaults: `DEFAULTS`),
                e.g. `head_epochs`, `finetune_epochs`, `unfreeze` (a tuple for gradual
                unfreezing), `finetune_learning_rate`, `lr_decay`, `warmup`, `cosine`,
                `early_stopping`, `validation_split`. `head_learning_rate="find"` runs
                `finetunekit.find_lr` on the head first and trains at its suggestion.

        Returns:
            One `FineTuneHistory` for every phase, with the phase of every epoch, the
            `plan` that ran and a `PhaseReport` per phase.

        Raises:
            ConfigError: a setting out of range, or `unfreeze` larger than the base.
            DataError: data or labels that do not fit the task.
            CheckpointError: `checkpoint_dir` is a file, holds a run of other settings or
                data, or holds none while `resume` is True.

        Example:
            >>> history = FineTuner("mobilenet_v2", num_classes=5).fit(train, head_epochs=5)
            >>> history.plan == tuner.plan(head_epochs=5)
            True
        """
        find, settings = lr_finder.asks_find(settings, self.strategy)
        chosen = Recipe.from_keywords(recipe, **settings)
        user_callbacks = training.check_callbacks(callbacks)
        check_bool("resume", resume)
        with distribute.together(self.strategy, "opening its checkpoint"):
            tracker = checkpoints.Tracker(checkpoint_dir, resume=resume)
        self._check_unfreeze_before_data(chosen)
        holdout = chosen.validation_split if chosen.early_stopping else 0.0
        prepared = self._prepare(train, y, validation_data, chosen.batch_size, holdout=holdout)
        self.freeze()
        if self.model is None:
            self.model = self._head(
                self._need_base(), chosen.hidden, chosen.dropout, "avg", chosen.normalize
            )
        asked = set(settings)
        if self._normalize(settings.get("normalize")) == self._normalize(
            self._head_settings.get("normalize")
        ):  # normalize=True asks what the default (None, the task's) built: nothing ignored
            asked.discard("normalize")
        chosen = chosen.with_head(self._head_settings, asked=asked)
        model = self._need_model()
        run_settings = self._settings(prepared, user_callbacks, verbose)
        run_settings.augment_views = chosen.views()
        if checkpoint_dir is not None:  # after _prepare: classes and size are known then
            data_args = (train, y, validation_data)
            checkpoints.bind_fit(tracker, self, chosen, data_args, find=find)
        if find:
            chosen = lr_finder.with_found_rate(self, chosen, prepared, run_settings, tracker.extra)
        phases = chosen.phases(validation=prepared.has_validation)
        planned = plan_phases(model, phases)  # also checks `unfreeze` against the base
        registered = _gradients.snapshot()
        try:
            with prepared.errors():  # a bad label or NaN image past the first batches
                history = training.run_phases(
                    model, phases, prepared, run_settings, plan=planned, tracker=tracker
                )
        except KeyboardInterrupt:
            if tracker.history is not None:
                self.history = tracker.history  # the epochs that ran
            raise
        finally:
            # What TensorFlow's gradient registry holds of the phases' finished steps
            # (swish bases) goes; the last phase's, which the model holds, at a later
            # fit, as do the few entries of bases without custom gradients.
            _gradients.release(registered, at_least=_gradients.FEW)
        self._compile_args = {
            "optimizer": "adam", "metrics": None, **self._compile_args,
            "learning_rate": phases[-1].learning_rate if phases else chosen.head_learning_rate,
            "label_mode": prepared.label_mode,
        }
        self.history = history
        self._last_report = history.reports[-1] if history.reports else None
        self._recipe = chosen
        return history

    def plan(
        self,
        *,
        validation_data: Any = None,
        recipe: Recipe | None = None,
        **settings: Unpack[RecipeSettings],
    ) -> Plan:
        """Describes, per phase, what `fit` with the same keywords would train.

        The same phases, through the same code as `fit`: `fit(**kw).plan == plan(**kw)`.
        Without a model yet, describes the base and the head `fit` would build (`hidden`,
        `dropout`, `normalize`) without keeping either (the base is built without its
        weights: the plan counts them, it does not need their values). Leaves what is
        trainable and the random state as they were (a seeded `fit` after a plan starts
        from the same weights); reads no data (`validation_data` only says there is some).

        Returns:
            A `Plan` (a tuple of `PhasePlan`); `print(plan)` shows a table.

        Raises:
            ConfigError: a setting out of range, or `unfreeze` larger than the base.
            StepOrderError: `num_classes` is unknown (pass it to the constructor).
        """
        _, settings = lr_finder.asks_find(settings, self.strategy)  # a rate fit will find
        chosen = Recipe.from_keywords(recipe, **settings)
        model = self.model
        if model is None:
            # A base loaded only to be described, not kept: fit must still load one at the
            # size of its data (the counts and blocks do not depend on the size). Built
            # with the random state put back after: a seeded fit after a plan starts
            # from the same initial weights as without the plan.
            base = self.base
            with _random_state_kept():
                if base is None:
                    with self._scope():
                        base = bases.load_base(
                            self._base_arg, weights=None, input_shape=self.input_shape,
                            **self.base_kwargs,
                        )
                model = self._head(base, chosen.hidden, chosen.dropout, "avg", chosen.normalize)
        has_validation = validation_data is not None or (
            chosen.early_stopping and chosen.validation_split > 0
        )
        return plan_phases(model, chosen.phases(validation=has_validation))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Saves the full model as a `.keras` file that `keras.models.load_model` reloads.

        The preprocessing is inside the model, so the reloaded model predicts on raw
        images. The file also holds the class names (from the training data), the task,
        the base and the recipe of the last `fit`, which `finetunekit.load` returns with
        the model (see `finetunekit.save_model`). It is written beside the target and
        renamed over it, so a failed save leaves an existing file as it was.

        Returns:
            The path written.

        Raises:
            ConfigError: the path does not end in `.keras`.
            StepOrderError: there is no model yet.
        """
        recipe = dataclasses.asdict(self._recipe) if self._recipe is not None else None
        return save_model(
            self._need_model(), path, class_names=self.class_names, task=self._task.name,
            base=bases.registry_name(self._base_arg), recipe=recipe,
        )

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

    def _check_unfreeze_before_data(self, chosen: Recipe) -> None:
        """`unfreeze` against the base before any image is read, when the base does not
        wait for the data's image size (`input_shape` given, or a model); otherwise the
        plan checks it once the base is built, still before anything trains."""
        if self.base is None and (
            self.input_shape is not None or isinstance(self._base_arg, keras.Model)
        ):
            self.load_base()
        if self.base is not None and chosen.stages and chosen.finetune_epochs:
            with freezing.restoring(self.base):  # the last stage unfreezes the most
                freezing.unfreeze_last(
                    self.base, chosen.stages[-1], unit=chosen.unit, train_bn=chosen.train_bn
                )

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

