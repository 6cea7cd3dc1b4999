"""`finetunekit demo`: fine-tuning against training from scratch, measured, offline.

By default everything is made in process: a small CNN is pretrained on six
classes of `finetunekit.datasets.shapes`, saved, and fine-tuned on six *other*
classes with 20 labelled images each, next to the same CNN trained from
scratch. The table it prints compares test accuracy (improved performance),
epochs to a set validation accuracy (faster convergence), the train-test gap
(better generalization) and what early stopping saved (the overfitting risk).
With `data=` (`--data DIR`) the same comparison runs on a folder of real images
and a Keras application base; training from scratch then gets the time the full
fine-tune took, no more, and the summary says when that cap ended it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from finetunekit import data as ftk_data
from finetunekit import datasets
from finetunekit._atomic import expand
from finetunekit.bases import load_base
from finetunekit.errors import ConfigError, DataError
from finetunekit.evaluation import plot_history
from finetunekit.finetuner import FineTuneHistory, FineTuner

__all__ = ["run_demo", "DemoResult", "RunResult", "shapes_cnn", "plot_history"]

SCRATCH, HEAD_ONLY, FINE_TUNE = "from scratch", "head only", "full fine-tune"
#: Source task (pretraining) and target task (fine-tuning) of the shapes demo.
SOURCE_CLASSES = datasets.SHAPE_CLASSES[:6]
TARGET_CLASSES = datasets.SHAPE_CLASSES[6:]
_PLOT_TITLE = "FineTuner.fit on the target task: head phase (base frozen), then unfreeze"


@dataclass(frozen=True)
class _Budget:
    """Sizes and epochs of one demo run."""

    source_per_class: int
    pretrain_epochs: int
    target_per_class: int
    test_per_class: int
    scratch_epochs: int
    head_epochs: int
    finetune_epochs: int
    patience: int
    scratch_lr: float = 3e-3
    head_lr: float = 1e-2
    finetune_lr: float = 1e-3


# The shapes base is small and its head sees few batches per epoch: higher learning rates
# than the defaults meant for ImageNet bases.
_FULL = _Budget(300, 8, 20, 100, 60, 10, 20, 15)
_QUICK = _Budget(120, 5, 20, 30, 12, 5, 6, 4)


@dataclass(frozen=True)
class RunResult:
    """One row of the demo table.

    Attributes:
        method: `"from scratch"`, `"head only"` or `"full fine-tune"`.
        test_accuracy: accuracy on the held-out test images.
        train_accuracy: accuracy on the training images (inference mode).
        epochs_to_target: first epoch (1-based) whose validation accuracy reached the
            demo's target accuracy; None when none did.
        epochs_run: epochs trained, all phases together.
        max_epochs: epochs allowed; early stopping ended the run after `epochs_run`.
        best_epoch: epoch (1-based) with the lowest validation loss in the last phase:
            the weights early stopping kept.
        seconds: wall time of the run.
        history: metric name -> one value per epoch.
        phases: the phase of every epoch (`"head"`, `"finetune"`, or `"scratch"`).
        time_limit: the seconds the run was allowed (None: epochs alone bound it).
        stopped_by_time: the time limit ended the run before its last epoch.
    """

    method: str
    test_accuracy: float
    train_accuracy: float
    epochs_to_target: int | None
    epochs_run: int
    max_epochs: int
    best_epoch: int
    seconds: float
    history: dict[str, list[float]] = field(repr=False, compare=False)
    phases: tuple[str, ...] = field(repr=False, compare=False)
    time_limit: float | None = None
    stopped_by_time: bool = False

    @property
    def gap(self) -> float:
        """Train accuracy minus test accuracy: how much the model overfits."""
        return self.train_accuracy - self.test_accuracy


@dataclass(frozen=True)
class DemoResult:
    """What `run_demo` measured; `str(result)` is the table and the conclusions.

    Attributes:
        task: one line describing the target task.
        target_accuracy: the validation accuracy `epochs_to_target` counts epochs to.
        runs: the three `RunResult`s, scratch first.
        plot_path: the PNG of the fine-tuning history; None when matplotlib is missing.
        base_path: the pretrained base saved by the shapes demo; None with `data=`.
        source_accuracy: validation accuracy of the pretraining on the source task (shapes
            demo); None with `data=`.
        notes: lines about the setup (pretraining, skipped plot, ...).
    """

    task: str
    target_accuracy: float
    runs: tuple[RunResult, ...]
    plot_path: Path | None
    base_path: Path | None = None
    source_accuracy: float | None = None
    notes: tuple[str, ...] = ()

    def run(self, method: str) -> RunResult:
        """The row of one method (`"from scratch"`, `"head only"`, `"full fine-tune"`)."""
        for run in self.runs:
            if run.method == method:
                return run
        raise KeyError(method)

    def table(self) -> str:
        """The comparison as a plain-text table."""
        target = f"epochs to {self.target_accuracy:.0%} val acc"
        rows = [
            ("method", "test acc", "train acc", "gap", target, "epochs run/max", "best", "time")
        ]
        for r in self.runs:
            reached = str(r.epochs_to_target) if r.epochs_to_target else f"not in {r.epochs_run}"
            run_max = f"{r.epochs_run}/{r.max_epochs}" + (
                " (time cap)" if r.stopped_by_time else ""
            )
            rows.append(
                (
                    r.method,
                    f"{r.test_accuracy:.3f}",
                    f"{r.train_accuracy:.3f}",
                    f"{r.gap:+.3f}",
                    reached,
                    run_max,
                    str(r.best_epoch),
                    f"{r.seconds:.0f} s",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def winner(self) -> str:
        """Which method scored best on the test images, in one sentence with the numbers."""
        ranked = sorted(self.runs, key=lambda r: r.test_accuracy, reverse=True)
        best = ranked[0]
        tied = [r.method for r in ranked if r.test_accuracy == best.test_accuracy]
        others = ", ".join(
            f"{r.method} {r.test_accuracy:.3f} ({(r.test_accuracy - best.test_accuracy) * 100:+.1f}"
            " points)"
            for r in ranked
            if r.method not in tied
        )
        if len(tied) > 1:
            lead = f"tie on the test images: {' and '.join(tied)} {best.test_accuracy:.3f}"
        else:
            lead = f"best on the test images: {best.method}, {best.test_accuracy:.3f}"
        return f"{lead}; {others}." if others else f"{lead}."

    def conclusions(self) -> list[str]:
        """The winner, the advantages and the overfitting risk, with the measured numbers.

        Each advantage is labelled "not shown in this run" when the numbers do not bear it out.
        """
        scratch, head, tuned = self.run(SCRATCH), self.run(HEAD_ONLY), self.run(FINE_TUNE)

        def claim(name: str, shown: bool) -> str:
            return name if shown else f"{name} (not shown in this run)"

        def reached(r: RunResult, who: str) -> str:
            return f"{who} after {r.epochs_to_target} epochs" if r.epochs_to_target else (
                f"{who} never"
            )

        faster = tuned.epochs_to_target is not None and (
            scratch.epochs_to_target is None or tuned.epochs_to_target < scratch.epochs_to_target
        )
        generalizes = tuned.gap < scratch.gap and tuned.test_accuracy > scratch.test_accuracy
        # Epochs a time cap cut are not early stopping's doing (see the time-cap line).
        saved = sum(r.max_epochs - r.epochs_run for r in self.runs if not r.stopped_by_time)
        stops = "; ".join(
            f"{r.method} {r.epochs_run} of {r.max_epochs} epochs"
            + (" (time cap)" if r.stopped_by_time else f", best {r.best_epoch}")
            for r in self.runs
        )
        capped = [
            f"{r.method} stopped at its limit of {r.time_limit:.1f} s of training after "
            f"{r.epochs_run} of {r.max_epochs} epochs ({r.seconds:.0f} s in the table with "
            "building, validating and scoring); its accuracy is what that time bought"
            for r in self.runs
            if r.stopped_by_time and r.time_limit is not None
        ]
        return [
            self.winner(),
            f"{claim('improved performance', tuned.test_accuracy > scratch.test_accuracy)}: "
            f"the full fine-tune's test accuracy {tuned.test_accuracy:.3f} against "
            f"{scratch.test_accuracy:.3f} from scratch "
            f"({(tuned.test_accuracy - scratch.test_accuracy) * 100:+.1f} points; head only "
            f"{head.test_accuracy:.3f}).",
            f"{claim('faster convergence', faster)}: {self.target_accuracy:.0%} validation "
            f"accuracy reached {reached(tuned, 'fine-tuned')}, "
            f"{reached(scratch, 'from scratch')}.",
            f"{claim('better generalization', generalizes)}: train-test gap {tuned.gap:+.3f} "
            f"fine-tuned, {scratch.gap:+.3f} from scratch.",
            f"overfitting risk: early stopping on validation loss (best weights kept) saved "
            f"{saved} epochs: {stops}.",
        ] + [f"time cap: {line}." for line in capped]

    def __str__(self) -> str:
        parts = [self.task, "", self.table(), ""]
        parts += [f"- {line}" for line in self.conclusions()]
        parts += [f"- {note}" for note in self.notes]
        return "\n".join(parts)


def shapes_cnn(image_size: int = 32, *, name: str = "shapes_cnn") -> keras.Model:
    """A small Functional CNN base: four Conv-BN-ReLU blocks, raw pixels in, feature maps out.

    Layers are named `block{i}_conv`, `block{i}_bn`, `block{i}_relu`, `block{i}_pool`, so
    `finetunekit.structure.blocks` finds `block1` ... `block4` and `unfreeze_last(model,
    2, unit="block")` trains the last two.

    Args:
        image_size: height and width of the input.
        name: the model's name.

    Returns:
        An uncompiled `keras.Model` from `(image_size, image_size, 3)` pixels (0-255) to
        `(image_size / 8, image_size / 8, 128)` feature maps.

    Examples:
        >>> base = shapes_cnn(32)
        >>> base.output_shape
        (None, 4, 4, 128)
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    filters = (32, 64, 96, 128)
    for i, width in enumerate(filters, start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        # A faster-moving average than Keras' 0.99, so the statistics settle within the few
        # steps a small dataset gives (otherwise validation lags training for many epochs).
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        if i < len(filters):
            x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name=name)


def _trainable_classifier(base: keras.Model, num_classes: int, learning_rate: float) -> keras.Model:
    """Base + pooling + softmax, every layer training (BatchNorm in training mode).

    This is how a network is trained from scratch or pretrained; `add_head` differs on
    purpose (it keeps a pretrained base in inference mode).
    """
    inputs = keras.Input(shape=base.input_shape[1:], name="image")
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="output")(x)
    model = keras.Model(inputs, outputs, name=f"{base.name}_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


@dataclass(frozen=True)
class _Task:
    """Train / validation / test data of the target task (arrays or datasets)."""

    description: str
    num_classes: int
    train: tuple[Any, Any]
    validation: tuple[Any, Any]
    test: tuple[Any, Any]
    batch_size: int


@dataclass(frozen=True)
class _Setup:
    """The target task and how to make a fresh model for each run."""

    task: _Task
    make_base: Callable[[], keras.Model]  # random weights, for training from scratch
    make_tuner: Callable[[], FineTuner]  # on the pretrained base
    base_path: Path | None = None
    source_accuracy: float | None = None


def _fit_kwargs(pair: tuple[Any, Any], batch_size: int) -> dict[str, Any]:
    x, y = pair
    if y is None:  # a tf.data.Dataset of (images, labels) batches
        return {"x": x}
    return {"x": x, "y": y, "batch_size": batch_size}


def _validation(pair: tuple[Any, Any]) -> Any:
    return pair[0] if pair[1] is None else pair


def _accuracy(model: keras.Model, pair: tuple[Any, Any], batch_size: int) -> float:
    scores = model.evaluate(**_fit_kwargs(pair, batch_size), verbose=0, return_dict=True)
    return float(scores["accuracy"])


def _result(
    method: str,
    history: dict[str, list[float]],
    phases: list[str],
    model: keras.Model,
    task: _Task,
    target: float,
    max_epochs: int,
    started: float,
) -> RunResult:
    val_acc = history.get("val_accuracy", [])
    reached = next((i + 1 for i, a in enumerate(val_acc) if a >= target), None)
    last = [i for i, p in enumerate(phases) if p == phases[-1]]
    val_loss = history.get("val_loss", [])
    best = min(last, key=lambda i: val_loss[i] if not math.isnan(val_loss[i]) else math.inf)
    return RunResult(
        method=method,
        test_accuracy=_accuracy(model, task.test, task.batch_size),
        train_accuracy=_accuracy(model, task.train, task.batch_size),
        epochs_to_target=reached,
        epochs_run=len(phases),
        max_epochs=max_epochs,
        best_epoch=best + 1,
        seconds=time.perf_counter() - started,
        history={k: [float(v) for v in vs] for k, vs in history.items()},
        phases=tuple(phases),
    )


class _TimeLimit(keras.callbacks.Callback):
    """Ends `fit` at the first batch past `seconds` (that epoch still validates).

    Keras has epoch and early-stopping limits but no time limit (TF Addons'
    TimeStopping is gone with Addons), hence this one.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.stopped_at: int | None = None
        self._started = 0.0

    def on_train_begin(self, logs: Any = None) -> None:
        self._started = time.perf_counter()

    def _past(self) -> bool:
        return time.perf_counter() - self._started >= self.seconds

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self._past():
            self.model.stop_training = True  # Keras checks it after every step

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self._past():
            self.model.stop_training = True
            self.stopped_at = epoch


def _train_scratch(
    make_base: Callable[[], keras.Model],
    task: _Task,
    budget: _Budget,
    target: float,
    seed: int,
    verbose: Any,
    seconds: float | None = None,
) -> RunResult:
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    model = _trainable_classifier(make_base(), task.num_classes, budget.scratch_lr)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=budget.patience, restore_best_weights=True
    )
    callbacks: list[keras.callbacks.Callback] = [stop]
    limit = None if seconds is None else _TimeLimit(seconds)
    if limit is not None:
        callbacks.append(limit)
    history = model.fit(
        **_fit_kwargs(task.train, task.batch_size),
        validation_data=_validation(task.validation),
        epochs=budget.scratch_epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=task.train[1] is not None,  # a dataset reshuffles by itself
    )
    phases = ["scratch"] * len(history.epoch)
    result = _result(
        SCRATCH, history.history, phases, model, task, target, budget.scratch_epochs, started
    )
    # The cap ended the run only if neither the last epoch nor early stopping did first.
    by_time = (
        limit is not None
        and limit.stopped_at == len(history.epoch) - 1
        and len(history.epoch) < budget.scratch_epochs
        and not stop.stopped_epoch
    )
    return dataclasses.replace(result, time_limit=seconds, stopped_by_time=by_time)


def _fine_tune(
    make_tuner: Callable[[], FineTuner],
    task: _Task,
    budget: _Budget,
    target: float,
    seed: int,
    verbose: Any,
    *,
    head_only: bool,
) -> tuple[RunResult, FineTuneHistory]:
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    tuner = make_tuner()
    head_epochs = budget.head_epochs + (budget.finetune_epochs if head_only else 0)
    finetune_epochs = 0 if head_only else budget.finetune_epochs
    x, y = task.train
    history = tuner.fit(
        x,
        y,
        validation_data=_validation(task.validation),
        head_epochs=head_epochs,
        finetune_epochs=finetune_epochs,
        unfreeze=2,
        head_learning_rate=budget.head_lr,
        finetune_learning_rate=budget.finetune_lr,
        batch_size=task.batch_size,
        patience=budget.patience,
        verbose=verbose,
    )
    model = tuner.model
    assert model is not None
    method = HEAD_ONLY if head_only else FINE_TUNE
    result = _result(
        method,
        history.history,
        history.phases,
        model,
        task,
        target,
        head_epochs + finetune_epochs,
        started,
    )
    return result, history


def run_demo(
    *,
    quick: bool = False,
    out_dir: str | os.PathLike[str] = "finetunekit-demo",
    seed: int = 0,
    target_accuracy: float = 0.6,
    data: str | os.PathLike[str] | None = None,
    test_data: str | os.PathLike[str] | None = None,
    base: str = "mobilenet_v2",
    weights: str | os.PathLike[str] | None = "imagenet",
    image_size: int | None = None,
    head_epochs: int = 5,
    finetune_epochs: int = 5,
    base_kwargs: dict[str, Any] | None = None,
    scratch_seconds: float | None = None,
    verbose: Any = 0,
    echo: Callable[[str], None] | None = print,
) -> DemoResult:
    """Compares training from scratch, head only and full fine-tuning on one target task.

    Without `data`: pretrains `shapes_cnn` on six `shapes` classes (1,800 images), saves
    it to `out_dir/shapes_base.keras`, then trains on six other classes with 20 labelled
    images per class (20 more for validation, 100 per class for testing): from scratch,
    head only and head + unfreeze through `FineTuner(base=<the pretrained model>)`. About
    a minute on two CPU cores; `quick=True` shrinks every size for tests.

    With `data`: the same three runs on a folder of class subfolders (see
    `finetunekit.data.from_directory`, 20 % held out for validation) with the Keras base
    `base`; `weights` only applies to the two fine-tuning runs. Training from scratch
    runs last and gets the time the full fine-tune took (or `scratch_seconds`): a large
    base trained from random weights on a small folder learns little in many minutes.

    Seeds are fixed, so the numbers repeat on the same machine.

    Args:
        quick: smaller data and fewer epochs (shapes demo only).
        out_dir: where the plot and the pretrained base are written (created if needed).
        seed: seed of the data and of every run.
        target_accuracy: the validation accuracy "epochs to" counts epochs to.
        data: a folder of real images, one subfolder per class.
        test_data: a folder with the same classes for testing; the validation split
            is the test set when None.
        base: base name (or saved `.keras` path) for `data`.
        weights: `"imagenet"`, a weights path, or None, for `data`.
        image_size: input size for `data`; the base's native size when None.
        head_epochs: most head epochs with `data` (the shapes demo uses its own budget).
        finetune_epochs: most fine-tune epochs with `data`.
        base_kwargs: constructor arguments of the base, e.g. `{"alpha": 0.35}`.
        scratch_seconds: time limit of the from-scratch run; with `data` it defaults to
            the full fine-tune's time, without `data` the run is bounded by epochs alone.
        verbose: Keras' progress output for every `fit` (0 silent, 1 bars, 2 lines).
        echo: where progress lines go; None for silence.

    Returns:
        A `DemoResult`; `print(result)` shows the table.

    Raises:
        DataError: `data` cannot be read (see `from_directory`).
        ConfigError: bad sizes or epochs.

    Examples:
        >>> result = run_demo(quick=True, out_dir="/tmp/demo", echo=None)
        >>> result.run("full fine-tune").test_accuracy > result.run("from scratch").test_accuracy
        True
    """
    say = echo or (lambda _line: None)
    if not 0 < target_accuracy <= 1:
        raise ConfigError(f"target_accuracy must be in (0, 1]; received {target_accuracy!r}.")
    if scratch_seconds is not None and not scratch_seconds > 0:
        raise ConfigError(
            f"scratch_seconds must be a positive number of seconds; received {scratch_seconds!r}."
        )
    out = expand(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if data is None:
        budget = _QUICK if quick else _FULL
        setup = _shapes_setup(budget, out, seed, say, notes)
    else:
        budget = _Budget(
            source_per_class=0,
            pretrain_epochs=0,
            target_per_class=0,
            test_per_class=0,
            scratch_epochs=head_epochs + finetune_epochs,
            head_epochs=head_epochs,
            finetune_epochs=finetune_epochs,
            patience=3,
            scratch_lr=1e-3,
            head_lr=1e-3,
            finetune_lr=1e-4,
        )
        setup = _folder_setup(
            data, test_data, base, weights, image_size, base_kwargs or {}, seed, notes
        )
    task = setup.task
    say(f"Target task: {task.num_classes} classes, three runs with early stopping:")
    say(f"  [1/3] {HEAD_ONLY} (FineTuner, pretrained base frozen) ...")
    head, _ = _fine_tune(
        setup.make_tuner, task, budget, target_accuracy, seed, verbose, head_only=True
    )
    say(f"  [2/3] {FINE_TUNE} (FineTuner, head phase, then the last 2 blocks unfrozen) ...")
    tuned, history = _fine_tune(
        setup.make_tuner, task, budget, target_accuracy, seed, verbose, head_only=False
    )
    if scratch_seconds is None and data is not None:
        scratch_seconds = max(tuned.seconds, 1.0)
        notes.append(
            f"{SCRATCH} was given the time the full fine-tune took ({scratch_seconds:.0f} s)."
        )
    cap = "" if scratch_seconds is None else f", at most {scratch_seconds:.0f} s"
    say(f"  [3/3] {SCRATCH} (random weights, every layer training{cap}) ...")
    scratch = _train_scratch(
        setup.make_base, task, budget, target_accuracy, seed, verbose, scratch_seconds
    )
    runs = [scratch, head, tuned]
    plot_path = _plot_or_note(history, out, scratch=scratch, notes=notes)
    if setup.base_path is not None:
        notes.append(f"pretrained base saved to {setup.base_path}")
    return DemoResult(
        task=task.description,
        target_accuracy=target_accuracy,
        runs=tuple(runs),
        plot_path=plot_path,
        base_path=setup.base_path,
        source_accuracy=setup.source_accuracy,
        notes=tuple(notes),
    )


def _plot_or_note(
    history: FineTuneHistory, out: Path, *, scratch: RunResult | None, notes: list[str]
) -> Path | None:
    """Writes `out/history.png`, or notes why not (matplotlib is an optional extra)."""
    try:
        path = plot_history(
            history,
            out / "history.png",
            baseline=None if scratch is None else scratch.history,
            baseline_label="from scratch",
            title=_PLOT_TITLE,
        )
    except ImportError:
        notes.append("plot skipped: matplotlib is not installed (pip install 'finetunekit[plot]').")
        return None
    notes.append(f"plot of the two-phase history: {path}")
    return path


def _shapes_setup(
    budget: _Budget, out: Path, seed: int, say: Callable[[str], None], notes: list[str]
) -> _Setup:
    """Pretrains and saves the base; makes the target task's data."""
    size = 32
    keras.utils.set_random_seed(seed)
    x_src, y_src, _ = datasets.shapes(
        budget.source_per_class, image_size=size, classes=SOURCE_CLASSES, seed=seed
    )
    x_src_val, y_src_val, _ = datasets.shapes(
        max(budget.source_per_class // 6, 10),
        image_size=size,
        classes=SOURCE_CLASSES,
        seed=seed + 1,
    )
    say(
        f"Pretraining shapes_cnn on the source task: {len(SOURCE_CLASSES)} classes "
        f"({', '.join(SOURCE_CLASSES)}), {len(x_src)} images, {budget.pretrain_epochs} epochs ..."
    )
    started = time.perf_counter()
    source_base = shapes_cnn(size)
    model = _trainable_classifier(source_base, len(SOURCE_CLASSES), learning_rate=3e-3)
    history = model.fit(
        x_src,
        y_src,
        validation_data=(x_src_val, y_src_val),
        epochs=budget.pretrain_epochs,
        batch_size=32,
        verbose=0,
    )
    base_path = out / "shapes_base.keras"
    source_base.save(base_path)
    source_accuracy = float(history.history["val_accuracy"][-1])
    notes.append(
        f"pretraining on the source task: validation accuracy {source_accuracy:.3f} after "
        f"{budget.pretrain_epochs} epochs ({time.perf_counter() - started:.0f} s)."
    )

    def split(per_class: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        x, y, _ = datasets.shapes(
            per_class, image_size=size, classes=TARGET_CLASSES, seed=seed + offset
        )
        return x, y

    n = budget.target_per_class
    task = _Task(
        description=(
            f"Target task: {len(TARGET_CLASSES)} new shape classes ({', '.join(TARGET_CLASSES)}), "
            f"{n} labelled images per class for training and {n} for validation; test on "
            f"{budget.test_per_class * len(TARGET_CLASSES)} unseen images."
        ),
        num_classes=len(TARGET_CLASSES),
        train=split(n, 2),
        validation=split(n, 3),
        test=split(budget.test_per_class, 4),
        batch_size=16,
    )

    def make_tuner() -> FineTuner:
        pretrained = keras.models.load_model(base_path, compile=False)
        return FineTuner(pretrained, num_classes=task.num_classes, weights=None)

    return _Setup(task, lambda: shapes_cnn(size), make_tuner, base_path, source_accuracy)


def _folder_setup(
    data: str | os.PathLike[str],
    test_data: str | os.PathLike[str] | None,
    base: str,
    weights: str | os.PathLike[str] | None,
    image_size: int | None,
    base_kwargs: dict[str, Any],
    seed: int,
    notes: list[str],
) -> _Setup:
    input_shape = None if image_size is None else (image_size, image_size, 3)
    probe = FineTuner(base, weights=weights, input_shape=input_shape, **base_kwargs)
    loaded = ftk_data.from_directory(
        data, image_size=probe.input_size, validation_split=0.2, seed=seed
    )
    size = tuple(loaded.train.element_spec[0].shape[1:3])
    validation = loaded.validation
    assert validation is not None  # validation_split was given
    if test_data is not None:
        test = ftk_data.from_directory(test_data, image_size=size, seed=seed)
        if test.class_names != loaded.class_names:
            raise DataError(
                f"The test folder's classes {list(test.class_names)} differ from the training "
                f"folder's {list(loaded.class_names)}."
            )
        test_set = test.train
    else:
        test_set = validation
        notes.append("no test folder given: the validation split doubles as the test set.")
    names = loaded.class_names
    shape = (size[0], size[1], 3)

    def make_base() -> keras.Model:
        # Cloning re-initializes every weight, also those of a saved-model base.
        loaded = load_base(base, weights=None, input_shape=shape, **base_kwargs)
        return keras.models.clone_model(loaded)

    def make_tuner() -> FineTuner:
        return FineTuner(base, len(names), weights=weights, input_shape=shape, **base_kwargs)

    task = _Task(
        description=(
            f"Target task: {len(names)} classes ({', '.join(names)}) from {os.fspath(data)}, "
            f"{len(loaded.train.file_paths)} training and {len(validation.file_paths)} "
            f"validation images at {size[0]}x{size[1]}; base {base} ({_describe(weights)})."
        ),
        num_classes=len(names),
        train=(loaded.train, None),
        validation=(validation, None),
        test=(test_set, None),
        batch_size=32,
    )
    return _Setup(task, make_base, make_tuner)


def _describe(weights: str | os.PathLike[str] | None) -> str:
    if weights is None:
        return "random weights"
    return "ImageNet weights" if weights == "imagenet" else f"weights {os.fspath(weights)}"
