"""`FineTuner`: `fit` and `plan` over phases, on the six chaining steps of `_steps.Steps`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
from typing_extensions import Unpack

from finetunekit import _gradients, bases, checkpoints, distribute, freezing, lr_finder, training
from finetunekit._checks import check_bool
from finetunekit._steps import Steps
from finetunekit.classifier import save_model
from finetunekit.recipe import DEFAULTS, HEAD, PhasePlan, Plan, Recipe, RecipeSettings
from finetunekit.recipe import plan as plan_phases
from finetunekit.training import FineTuneHistory, PhaseReport

__all__ = ["FineTuner", "FineTuneHistory", "PhasePlan", "PhaseReport", "Plan", "DEFAULTS"]

logger = logging.getLogger("finetunekit")


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


class FineTuner(Steps):
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
            Callbacks see the full model either way. True caches even then; data with
            sample weights is never cached. False never caches.
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
            train: training data: a `tf.data.Dataset` of `(images, labels)` (or with
                sample weights third), a tuple `(x, y)` or `(x, y, w)`, or images with
                labels in `y`.
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
        run_settings.augment_views = chosen.views(prepared.images)
        if checkpoint_dir is not None:  # after _prepare: classes and size are known then
            data_args = (train, y, validation_data)
            checkpoints.bind_fit(
                tracker, self, chosen, data_args, find=find, views=run_settings.augment_views
            )
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
        With `head_learning_rate="find"`, the head phase's `learning_rate` is NaN (shown
        as "find"): `fit` finds it from the data; its `history.plan` holds the rate.

        Returns:
            A `Plan` (a tuple of `PhasePlan`); `print(plan)` shows a table.

        Raises:
            ConfigError: a setting out of range, or `unfreeze` larger than the base.
            StepOrderError: `num_classes` is unknown (pass it to the constructor).
        """
        find, settings = lr_finder.asks_find(settings, self.strategy)
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
        planned = plan_phases(model, chosen.phases(validation=has_validation))
        if find:  # the rate fit finds from the data, which a plan does not read
            planned = Plan(
                dataclasses.replace(p, learning_rate=math.nan) if p.spec.name == HEAD else p
                for p in planned
            )
        return planned

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

