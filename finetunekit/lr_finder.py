"""`find_lr`: a learning-rate range test (Smith 2015, fastai's `lr_find`) on a `FineTuner`.

The rate grows exponentially from `start` to `end` over at most `steps` training steps
of the phase's trainable set; the loss of every batch is smoothed, the sweep stops
when the smoothed loss diverges, and the model comes back exactly as it was.

Keras has no range test. The sweep is a loop over `train_on_batch`, by hand, because
it needs the loss of each batch: the per-batch `logs["loss"]` that `fit` hands its
callbacks is the running mean of the epoch so far, whereas `train_on_batch` resets
the metrics on every call, so its loss is that batch's alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import keras
import numpy as np

from finetunekit import caching, distribute, freezing, schedules, tasks
from finetunekit._checks import check_choice, check_float, check_int
from finetunekit.data import Prepared
from finetunekit.errors import ConfigError, StepOrderError
from finetunekit.recipe import DEFAULTS, FINETUNE, HEAD, Phase, Recipe, RecipeSettings

if TYPE_CHECKING:
    from finetunekit.finetuner import FineTuner
    from finetunekit.training import Settings

__all__ = ["find_lr", "LRFinderResult"]

logger = logging.getLogger("finetunekit")

SMOOTHING = 0.98  # fastai's: an exponential moving average over about 50 batches
DIVERGES = 4.0  # the sweep stops once the smoothed loss exceeds 4x its minimum


@dataclass(frozen=True)
class LRFinderResult:
    """What a sweep of the learning rate found.

    Attributes:
        rates: the rate of each step, increasing.
        losses: the smoothed loss after each step.
        raw_losses: the loss of each batch (before smoothing).
        suggestions: `"valley"` (the middle of the longest stretch where the loss falls,
            fastai's default), `"steep"` (where it falls fastest) and `"minimum"` (a
            tenth of the rate at the lowest loss).
        phase: `"head"` or `"finetune"`.
        cached: whether the sweep ran on stored features.
    """

    rates: tuple[float, ...]
    losses: tuple[float, ...]
    raw_losses: tuple[float, ...]
    suggestions: dict[str, float]
    phase: str
    cached: bool

    @property
    def suggestion(self) -> float:
        """The `"valley"` rate."""
        return self.suggestions["valley"]

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draws the smoothed loss against the rate (log scale), the suggestion marked.

        Needs matplotlib (`pip install "finetunekit[plot]"`).

        Returns:
            The path written (a PNG).

        Example:
            >>> ftk.find_lr(tuner, train).plot("lr.png")
        """
        from finetunekit.evaluation import new_figure, save_figure

        figure = new_figure((6.4, 4.0))
        axes = figure.add_subplot()
        axes.plot(self.rates, self.losses, color="#1f77b4", label="smoothed loss")
        axes.plot(self.rates, self.raw_losses, color="#1f77b4", alpha=0.25, label="batch loss")
        markers = {"valley": "o", "steep": "^", "minimum": "s"}
        for name, rate in self.suggestions.items():
            loss = float(np.interp(math.log(rate), np.log(self.rates), self.losses))
            axes.plot([rate], [loss], markers[name], ms=8, label=f"{name} {rate:.2g}")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("training loss")
        axes.set_title(f"learning-rate sweep, {self.phase} phase")
        low, high = min(self.losses), max(self.losses[: max(len(self.losses) // 2, 1)])
        axes.set_ylim(low - 0.1 * abs(low), max(high, low) * 1.5 + 1e-9)
        axes.legend()
        return save_figure(figure, path)


def find_lr(
    tuner: FineTuner,
    data: Any,
    y: Any = None,
    *,
    phase: Literal["head", "finetune"] = "head",
    unfreeze: int = 0,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    batch_size: int = DEFAULTS.batch_size,
) -> LRFinderResult:
    """Sweeps the learning rate of one phase and suggests one; the model is left as it was.

    Runs on stored features when the phase allows (the frozen layers run once over the
    data, so the head's sweep costs seconds), on images otherwise. The weights, the
    trainable flags and the model's compiled optimizer (with its state) are the same
    afterwards: the sweep trains a copy of the graph with an optimizer of its own,
    then puts every weight back.

    Args:
        tuner: a `FineTuner`; without a model yet, it builds the head `fit` builds by
            default (the base loaded at the data's size).
        data: training data, in any form `FineTuner.fit` takes.
        y: labels, when `data` is an image array.
        phase: `"head"` (the base frozen) or `"finetune"` (the last `unfreeze` blocks
            of the base train too).
        unfreeze: blocks of the base for `phase="finetune"` (default the recipe's).
        start: the first rate.
        end: the last rate (the sweep usually stops sooner, once the loss diverges).
        steps: the most training steps (batches, cycling over the data).
        batch_size: batch size for arrays.

    Returns:
        An `LRFinderResult`: `.rates`, `.losses`, `.suggestion`, `.suggestions`, `.plot()`.

    Raises:
        ConfigError: bad `phase`, `start`, `end` or `steps`, nothing trainable, or a
            tuner under a multi-worker strategy.
        DataError: data or labels that do not fit the task.

    Example:
        >>> tuner = ftk.FineTuner("mobilenet_v2", num_classes=5)
        >>> found = ftk.find_lr(tuner, train)
        >>> tuner.fit(train, head_learning_rate=found.suggestion)
    """
    from finetunekit.finetuner import FineTuner

    if not isinstance(tuner, FineTuner):
        raise StepOrderError(
            f"find_lr needs a finetunekit.FineTuner; received {type(tuner).__name__}. Build "
            "one: FineTuner('mobilenet_v2', num_classes=5)."
        )
    if distribute.is_multi_worker(tuner.strategy):
        raise ConfigError(
            "find_lr runs on one machine: build the tuner without a multi-worker strategy "
            "(or with MirroredStrategy) to sweep, then pass the suggestion to the workers' fit."
        )
    check_choice("phase", phase, (HEAD, FINETUNE))
    blocks = check_int("unfreeze", unfreeze, minimum=0)
    if phase == FINETUNE and not blocks:
        blocks = max((*DEFAULTS.stages, 1))
    sweep = Sweep(start, end, steps)
    prepared = tuner._prepare(data, y, None, batch_size, holdout=0.0)
    if tuner.model is None:
        tuner.freeze()
        tuner.model = tuner._head(
            tuner._need_base(), DEFAULTS.hidden, DEFAULTS.dropout, "avg", DEFAULTS.normalize
        )
    step = Phase(phase, 1, blocks if phase == FINETUNE else 0, "block", False, start, False, 0)
    return sweep.run(tuner.model, prepared, tuner._settings(prepared, None, 0), step)


@dataclass(frozen=True)
class Sweep:
    """The rates of a sweep: `steps` of them, from `start` to `end`, evenly on a log scale."""

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        check_float("start", self.start, low=0, expected="a positive rate, e.g. 1e-7")
        check_float("end", self.end, low=self.start, expected=f"a rate above start={self.start:g}")
        check_int("steps", self.steps, minimum=5, expected="an int >= 5 (training steps)")

    @property
    def rates(self) -> np.ndarray:
        return np.geomspace(self.start, self.end, self.steps)

    def run(
        self, model: keras.Model, data: Prepared, settings: Settings, phase: Phase
    ) -> LRFinderResult:
        """Sweeps `phase`'s trainable set of `model`; restores every weight afterwards."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(freezing.restoring(model))
            stack.enter_context(caching.quiet_retracing())
            freezing.set_trainable(model, phase.unfreeze, unit=phase.unit, train_bn=phase.train_bn)
            if not model.trainable_variables:
                raise ConfigError(
                    f"Nothing trains in the {phase.name} phase of {model.name!r}, so there is "
                    "no rate to find: give the model a trainable head (add_head), or use "
                    "phase='finetune' to unfreeze blocks of the base."
                )
            saved = [(v, v.numpy()) for v in model.weights]
            try:
                net, batches, cached = _trainer(stack, model, data, settings)
                with settings.scope():
                    optimizer, _ = schedules.phase_optimizer(settings.optimizer, net, phase)
                    tasks.compile_for(
                        net,
                        settings.task,
                        learning_rate=self.start,
                        optimizer=tasks.new_optimizer(optimizer, self.start),
                        label_mode=settings.label_mode,
                        metrics=[],
                    )
                rates, raw, smooth = self._loop(net, batches)
            finally:
                for variable, value in saved:
                    variable.assign(value)
        how = "on stored features" if cached else "on images"
        logger.info("learning-rate sweep: %d steps %s", len(rates), how)
        return LRFinderResult(
            rates=tuple(rates),
            losses=tuple(smooth),
            raw_losses=tuple(raw),
            suggestions=suggest(rates, smooth),
            phase=phase.name,
            cached=cached,
        )

    def _loop(
        self, net: keras.Model, batches: Any
    ) -> tuple[list[float], list[float], list[float]]:
        rates: list[float] = []
        raw: list[float] = []
        smooth: list[float] = []
        average, best = 0.0, math.inf
        stream = iter(batches.repeat())
        for i, rate in enumerate(self.rates):
            net.optimizer.learning_rate = float(rate)
            x, y = next(stream)[:2]
            loss = float(net.train_on_batch(x, y, return_dict=True)["loss"])
            if not math.isfinite(loss):
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            smoothed = average / (1 - SMOOTHING ** (i + 1))
            rates.append(float(rate))
            raw.append(loss)
            smooth.append(smoothed)
            if smoothed > DIVERGES * best:
                break
            best = min(best, smoothed)
        if len(rates) < 3:
            raise ConfigError(
                f"The loss diverged within {len(rates)} steps of the sweep from "
                f"start={self.start:g}: start lower, e.g. start={self.start / 100:g}."
            )
        return rates, raw, smooth


def _trainer(
    stack: contextlib.ExitStack, model: keras.Model, data: Prepared, settings: Settings
) -> tuple[keras.Model, Any, bool]:
    """The network the sweep trains and its batches: stored features when it can."""
    from finetunekit.training import _why_not_cached

    split, _ = _why_not_cached(model, settings, data)
    if split is not None:
        with settings.scope():
            cache = stack.enter_context(
                caching.FeatureCache(split.prefix, data.train, budget=settings.cache_budget)
            )
        return split.trainer, cache.dataset(shuffle=True, seed=settings.seed, part="all"), True
    # The same layers in a new Model: compiling it leaves the model's own optimizer as is.
    with settings.scope():
        net = keras.Model(model.inputs, model.outputs, name=f"{model.name}_sweep")
    images, _ = data.datasets()
    if settings.augment is not None:
        augment = settings.augment
        images = images.map(lambda x, y, *rest: (augment(x, training=True), y, *rest))
    return net, images, False


def suggest(rates: Sequence[float], losses: Sequence[float]) -> dict[str, float]:
    """The `"valley"`, `"steep"` and `"minimum"` rates of a sweep (see `LRFinderResult`)."""
    loss = np.asarray(losses, dtype=float)
    lograte = np.log(np.asarray(rates, dtype=float))
    n = len(loss)
    # fastai's valley: the longest run of decreasing losses (not necessarily adjacent),
    # and a point two thirds down it.
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if loss[i] < loss[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    valley = min(max(start + int(third) + int(third / 2), 0), n - 1)
    # The first points are skipped for "steep" and "minimum" (as fastai skips them):
    # there the smoothed loss still settles from its first batches.
    skip = min(n // 10, n - 2)
    slope = np.gradient(loss, lograte)[skip:]
    return {
        "valley": float(rates[valley]),
        "steep": float(rates[skip + int(np.argmin(slope))]),
        "minimum": float(rates[skip + int(np.argmin(loss[skip:]))] / 10),
    }


def asks_find(settings: RecipeSettings, strategy: Any) -> tuple[bool, RecipeSettings]:
    """Whether fit's `settings` ask for `head_learning_rate="find"`, and the settings with
    the default rate in its place until the sweep has run (a `Recipe` holds a number).

    Raises:
        ConfigError: "find" under a multi-worker strategy (the sweep runs on one machine).
    """
    if settings.get("head_learning_rate") != "find":
        return False, settings
    if distribute.is_multi_worker(strategy):
        raise ConfigError(
            "head_learning_rate='find' is not supported across workers: run "
            "finetunekit.find_lr on one machine, then pass its suggestion as "
            "head_learning_rate=..."
        )
    settings = settings.copy()
    settings["head_learning_rate"] = DEFAULTS.head_learning_rate
    return True, settings


def with_found_rate(
    tuner: FineTuner, recipe: Recipe, prepared: Prepared, settings: Settings, found: dict[str, Any]
) -> Recipe:
    """`recipe` at the head rate `FineTuner.fit(head_learning_rate="find")` trains at.

    `found` is what the run's checkpoint keeps beside it: a resumed run takes the rate
    its first run found, since a new sweep (from other initial weights, or a head
    already trained) would find another.
    """
    assert tuner.model is not None
    if not recipe.head_epochs:
        return recipe
    rate = found.get("found_rate")
    if rate is None:
        step = Phase(HEAD, 1, 0, "block", False, 1e-7, False, 0)
        rate = Sweep(1e-7, 10.0, 100).run(tuner.model, prepared, settings, step).suggestion
        logger.info("learning-rate sweep suggests %.3g for the head", rate)
    found["found_rate"] = rate
    return dataclasses.replace(recipe, head_learning_rate=rate)
