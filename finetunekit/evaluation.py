"""After training: `evaluate` a model on labelled images, and draw what happened.

`evaluate` returns a `Report`: accuracy, per-class precision / recall / F1 /
support, the confusion matrix and the predictions with the highest loss (with
their files when the images came from a folder). Multilabel models get
per-label scores, regressions MAE and RMSE. `plot_history` draws a training
history with its phases. Plots need matplotlib (the `plot` extra).

Keras has the scalar metrics but no per-class report or confusion matrix, and
scikit-learn is not a dependency, so the counts are computed here with numpy.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from finetunekit import data as ftk_data
from finetunekit import tasks
from finetunekit._atomic import check_writable, expand
from finetunekit.caching import quiet_retracing, untuned
from finetunekit.classifier import (
    Classifier,
    _decode_failure,
    _load_image,
    as_classifier,
    check_decodable,
    inference,
)
from finetunekit.data import _arrays, _folders, _guards
from finetunekit.errors import ArgumentTypeError, ConfigError, DataError, missing_extra

logger = logging.getLogger("finetunekit")

__all__ = ["evaluate", "Report", "Worst", "plot_history"]

#: How many of the worst predictions a `Report` keeps (with their pixels, for the plot).
WORST_KEPT = 25
_EPS = 1e-7


@dataclass(frozen=True)
class Worst:
    """One of the predictions with the highest loss.

    Attributes:
        index: position of the image in the data.
        source: its file, or None when the data held no file names.
        true: the true class (multilabel: the labels present, joined by `+`; regression:
            the target).
        predicted: the predicted class (or labels, or value).
        probability: the probability the model gave the true class (multiclass and
            binary), else None.
        loss: the example's loss (cross-entropy; for a regression, the squared error
            averaged over the outputs, as Keras' mean squared error).
        image: the pixels as seen by the model (uint8).
    """

    index: int
    source: str | None
    true: str
    predicted: str
    probability: float | None
    loss: float
    image: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True, eq=False)
class Report:
    """What `evaluate` measured.

    Attributes:
        task: the model's task.
        class_names: the class (or label, or output) names.
        count: images evaluated.
        loss: mean loss per image.
        accuracy: share of correct top-1 predictions (multilabel: of correct labels;
            None for a regression).
        precision, recall, f1: per class (multilabel: per label, at 0.5); None for a
            regression.
        support: images of each class (multilabel: positives of each label).
        confusion: `confusion[i, j]` counts images of class i predicted as j
            (multiclass and binary; None otherwise).
        mae, rmse: per output, for a regression (None otherwise).
        worst: the predictions with the highest loss, worst first.
        predicted_counts: images predicted as each class (multilabel: predicted
            positives of each label); None for a regression.
    """

    task: str
    class_names: tuple[str, ...]
    count: int
    loss: float
    accuracy: float | None
    precision: np.ndarray | None
    recall: np.ndarray | None
    f1: np.ndarray | None
    support: np.ndarray | None
    confusion: np.ndarray | None
    mae: np.ndarray | None
    rmse: np.ndarray | None
    worst: tuple[Worst, ...]
    predicted_counts: np.ndarray | None = None

    @property
    def macro_f1(self) -> float | None:
        """The mean F1 over the classes that occur in the labels or the predictions.

        A class that is neither in the evaluated data (a test folder may lack some)
        nor predicted has no F1 to count, as in scikit-learn's
        `f1_score(average="macro")`; one that is predicted but absent counts with F1 0.
        """
        if self.f1 is None:
            return None
        if self.predicted_counts is None or self.support is None:
            return float(np.mean(self.f1))
        counted = (np.asarray(self.support) > 0) | (np.asarray(self.predicted_counts) > 0)
        return float(np.mean(self.f1[counted])) if counted.any() else 0.0

    def __str__(self) -> str:
        lines = [f"{self.task} evaluation on {self.count} images: mean loss {self.loss:.4f}"]
        if self.mae is not None and self.rmse is not None:
            lines.append(f"{'output':<16} {'MAE':>10} {'RMSE':>10}")
            for name, mae, rmse in zip(self.class_names, self.mae, self.rmse, strict=True):
                lines.append(f"{name:<16} {mae:>10.4f} {rmse:>10.4f}")
        if self.f1 is not None:
            lines[0] += f", accuracy {self.accuracy:.3f}, macro F1 {self.macro_f1:.3f}"
            width = max(len(n) for n in self.class_names + ("class",))
            lines.append(
                f"{'class':<{width}}  precision  recall     f1  support"
                + ("   predicted as" if self.confusion is not None else "")
            )
            for i, name in enumerate(self.class_names):
                assert self.precision is not None and self.recall is not None
                assert self.support is not None
                row = (
                    f"{name:<{width}}  {self.precision[i]:>9.3f}  {self.recall[i]:>6.3f}  "
                    f"{self.f1[i]:>5.3f}  {int(self.support[i]):>7d}"
                )
                if self.confusion is not None:
                    row += "   " + " ".join(f"{int(c):>4d}" for c in self.confusion[i])
                lines.append(row)
        if self.worst:
            lines.append("highest losses:")
            for worst in self.worst[:5]:
                where = worst.source if worst.source is not None else f"#{worst.index}"
                lines.append(
                    f"  {worst.loss:7.3f}  true {worst.true}, predicted {worst.predicted}  {where}"
                )
        return "\n".join(lines)

    def plot_confusion(self, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
        """Draws the confusion matrix as a PNG (rows: true class, columns: predicted).

        Raises:
            ConfigError: the task has no confusion matrix (multilabel, regression).
            MissingExtraError: matplotlib is not installed.
        """
        if self.confusion is None:
            raise ConfigError(
                f"A {self.task} report has no confusion matrix; plot_confusion is for "
                "multiclass and binary models."
            )
        figure = new_figure(figsize=(1.2 + 0.75 * len(self.class_names),) * 2)
        axis = figure.subplots()
        counts = self.confusion
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(counts):
            axis.text(
                j, i, str(int(count)), ha="center", va="center",
                color="white" if shares[i, j] > 0.5 else "black",
            )  # fmt: skip
        ticks = np.arange(len(self.class_names))
        axis.set_xticks(ticks, self.class_names, rotation=45, ha="right")
        axis.set_yticks(ticks, self.class_names)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(title or f"accuracy {self.accuracy:.3f} on {self.count} images", fontsize=9)
        return save_figure(figure, path)

    def plot_top_losses(
        self, path: str | os.PathLike[str], k: int = 9, *, title: str | None = None
    ) -> Path:
        """Draws the `k` predictions with the highest loss as a PNG grid.

        Raises:
            ConfigError: `k` is not a positive int.
            MissingExtraError: matplotlib is not installed.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive int, e.g. k=9; received {k!r}.")
        shown = self.worst[:k]
        columns = min(3, len(shown)) or 1
        rows = max(1, math.ceil(len(shown) / columns))
        figure = new_figure(figsize=(2.1 * columns, 2.7 * rows))
        axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
        for axis in axes:
            axis.axis("off")
        for axis, worst in zip(axes, shown, strict=False):
            axis.imshow(worst.image)
            name = Path(worst.source).name if worst.source else f"#{worst.index}"
            chance = "" if worst.probability is None else f" (p={worst.probability:.2f})"
            axis.set_title(
                f"true {worst.true}{chance}\npredicted {worst.predicted}\n"
                f"loss {worst.loss:.2f}\n{name}",
                fontsize=7,
            )
        if title:
            figure.suptitle(title, fontsize=9)
        return save_figure(figure, path)


def evaluate(
    model_or_path: Any,
    data: Any,
    *,
    class_names: Sequence[str] | None = None,
    batch_size: int = 32,
) -> Report:
    """Measures a model on labelled images: per-class scores, confusion, worst predictions.

    Args:
        model_or_path: a `Classifier`, a `keras.Model` or a path to a `.keras` file.
        data: a folder with one subfolder per class (as `data.from_directory` reads it;
            the worst predictions then name their files), a dataset made by
            `data.from_directory` (its files are read again, in order), another
            `tf.data.Dataset` of `(images, labels)`, or a tuple `(x, y)` of arrays.
            Raw pixels 0-255; labels as class indices, one-hot or multi-hot rows, or
            regression targets.
        class_names: names of the classes in label order; by default those stored in the
            model file, else those of the folder or dataset. Class folders are matched to
            them by name (a folder may lack some class).
        batch_size: images per batch.

    Returns:
        A `Report`; `print(report)` shows the table.

    Raises:
        DataNotFoundError: the folder does not exist.
        DataError: the data is malformed, empty, or its classes are not the model's; a
            multilabel or regression model given class folders.
        WeightsNotFoundError: there is no model file at `model_or_path`.

    Example:
        >>> report = ftk.evaluate("flowers.keras", "flowers/test")
        >>> print(report)
        >>> report.plot_confusion("confusion.png")
    """
    classifier = as_classifier(model_or_path, class_names)
    _arrays._check_batch_size(batch_size)
    folder = _folder_files(data)
    if folder is None:
        index = None
        names = getattr(data, "class_names", None)  # e.g. Keras' image_dataset_from_directory
        # With labels=[...], Keras names the classes "0", "1", ...: indices, not names.
        indices = tuple(str(i) for i in range(len(names or ())))
        if (
            isinstance(data, tf.data.Dataset)
            and names
            and tuple(names) not in (classifier.class_names, indices)
        ):
            given = class_names is not None
            classifier, index = _match_folder_classes(classifier, tuple(names), given=given)
        batches = _labelled_batches(data, classifier, batch_size, index)
        return _measure(classifier, batches, None)
    paths, labels, names = folder
    classifier, index = _match_folder_classes(classifier, names, given=class_names is not None)
    batches = _file_batches(paths, [index[i] for i in labels], classifier, batch_size)
    return _measure(classifier, batches, paths)


def _folder_files(data: Any) -> tuple[list[str], list[int], tuple[str, ...]] | None:
    """`(files, the index of each one's class folder, the class folders)` of a folder of
    class subfolders or a dataset read from one (None for other data)."""
    if isinstance(data, (str, os.PathLike)):
        files = _folders._class_files(expand(data))
        names = tuple(files)
        paths = [p for name in names for p in files[name]]
        return paths, [i for i, name in enumerate(names) for _ in files[name]], names
    file_paths = getattr(data, "file_paths", None)
    classes = getattr(data, "class_names", None)
    # Only from_directory's own datasets: one of Keras' loader may hold labels of the
    # caller's (labels=[...]) or images cropped, padded or in grayscale, not the files.
    if getattr(data, "from_class_folders", False) and file_paths and classes:
        # from_directory shuffles its datasets, so their elements are not in the order
        # of file_paths; read the files again, in that order, labelled by class folder.
        names = tuple(classes)
        root = _class_root(list(file_paths), names)
        return list(file_paths), [_label_of(p, names, root) for p in file_paths], names
    return None


def _match_folder_classes(
    classifier: Classifier, folders: tuple[str, ...], *, given: bool
) -> tuple[Classifier, list[int]]:
    """The classifier to report with, and the model's label for each class folder.

    Folders are matched to the model's classes by name (a test folder may lack a class,
    and a model's names need not be in alphabetical order); a model with index names
    only (0, 1, ...) takes the folders' names in their order, as Keras labels them.
    """
    spec = tasks.get_task(classifier.task)
    if not spec.one_class_per_image:
        raise DataError(
            f"A folder of class subfolders gives each image one class, but a "
            f"{classifier.task} model is measured against label rows (multi-hot labels or "
            "target values). Evaluate on a tuple (x, y) or a tf.data.Dataset of (images, "
            "label rows)."
        )
    names = classifier.class_names
    if set(folders) <= set(names):
        return classifier, [names.index(folder) for folder in folders]
    if names == spec.default_names(len(names)) and not given and len(folders) == len(names):
        named = Classifier(classifier.model, folders, task=classifier.task)
        return named, list(range(len(folders)))
    raise DataError(
        f"The folders' classes {list(folders)} are not the model's {list(names)}: each image "
        "is labelled by matching its folder's name to a class of the model. Evaluate on "
        "folders named after the model's classes"
        + (
            ", or (from Python) pass evaluate(..., class_names=...) with the folders' "
            "names in the model's label order."
            if not given
            else "; class_names= must name the folders, in the model's label order."
        )
    )


def _labelled_batches(
    data: Any, classifier: Classifier, batch_size: int, index: list[int] | None = None
) -> tf.data.Dataset:
    """The data as batches of (images, labels); with `index`, the dataset's class i (an
    index, or one-hot rows of its classes) is the model's class `index[i]`."""
    if _arrays.unpack_arrays(data)[2] is not None:
        raise ArgumentTypeError(
            "evaluation data: received a sequence of 3, read as (x, y, sample_weight); the "
            "report counts every image once, unweighted. Pass (x, y)."
        )
    if isinstance(data, (tf.data.Dataset, keras.utils.PyDataset)) or (
        isinstance(data, (tuple, list)) and len(data) == 2
    ):
        dataset = ftk_data.as_dataset(
            data, batch_size=batch_size, what="evaluation data", shuffle=False,
            channels=classifier.channels,
        )
        if index is not None:
            table = tf.constant(index, tf.int64)

            def remap(images: tf.Tensor, labels: tf.Tensor, *rest: tf.Tensor) -> tuple:
                if labels.shape.rank == 2 and labels.shape[-1] == len(index) > 1:
                    labels = tf.argmax(labels, axis=-1)  # one-hot rows of its own classes
                flat = tf.cast(tf.reshape(labels, [-1]), tf.int64)
                return (images, tf.gather(table, flat), *rest)

            dataset = dataset.map(remap)
        if isinstance(dataset.element_spec, tuple) and len(dataset.element_spec) == 3:
            logger.warning(
                "evaluation data carries sample weights; the report counts every image "
                "once, unweighted."
            )
        with _guards.data_errors():  # a bad file in the first batch: our error too
            for batch in dataset.take(1):  # a sample: the first batch
                classifier.check_pixels(batch[0], "evaluation data")
        return dataset
    raise ArgumentTypeError(
        "data must be a folder of class subfolders, a tf.data.Dataset (or keras.utils."
        f"PyDataset) of (images, labels) or a tuple (x, y); received {type(data).__name__}."
    )


def _class_root(paths: Sequence[str], names: tuple[str, ...]) -> Path:
    """The folder that holds the class folders: above the files' common folder, when all of
    them (a small validation split) lie in one class folder, or deeper in it."""
    root = Path(os.path.commonpath(list(paths)))
    if root.is_file():
        root = root.parent
    while root != root.parent and Path(os.path.relpath(paths[0], root)).parts[0] not in names:
        root = root.parent
    return root


def _label_of(path: str, names: tuple[str, ...], root: Path) -> int:
    top = Path(os.path.relpath(path, root)).parts[0]
    if top not in names:
        raise DataError(
            f"Cannot tell the class of {path!r}: its folder {top!r} is not one of {list(names)}."
        )
    return names.index(top)


def _file_batches(
    paths: list[str], labels: list[int], classifier: Classifier, batch_size: int
) -> tf.data.Dataset:
    size, channels = classifier.input_size, classifier.channels
    check_decodable(channels)
    return (
        tf.data.Dataset.from_tensor_slices((paths, labels))
        .map(lambda p, y: (_load_image(p, size, channels), y), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def _iterate(
    dataset: tf.data.Dataset, sources: list[str] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    # TensorFlow's errors about bad batches (images of other channels or sizes) as ours;
    # a file that cannot be decoded is named (the files are read again to find it).
    with _guards.data_errors():
        try:
            for element in untuned(dataset).as_numpy_iterator():
                yield element[0], element[1]
        except tf.errors.InvalidArgumentError as exc:
            if sources and _guards.is_decode_failure(exc):
                raise _decode_failure(list(sources)) from exc
            raise


def _measure(classifier: Classifier, batches: tf.data.Dataset, sources: list[str] | None) -> Report:
    task = classifier.task
    spec = tasks.get_task(task)
    tasks.check_per_image_output(classifier.model, classifier.model.output_shape)
    names = classifier.class_names
    run = inference(classifier.model)
    size = classifier.input_size
    heap: list[tuple[float, int, Worst]] = []
    outputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    done = 0
    for images, labels in _iterate(batches, sources):
        if tuple(images.shape[1:3]) != tuple(size):
            images = tf.image.resize(images, size).numpy()
        with quiet_retracing():  # each loaded model traces its own step (see caching)
            out = np.asarray(run(images), dtype="float64")
        out = out.reshape(len(images), -1)
        truth = spec.targets(labels, len(names), out.shape[1])
        losses = spec.losses(out, truth)
        for i in np.argsort(-losses)[:WORST_KEPT]:
            index = done + int(i)
            if len(heap) == WORST_KEPT and losses[i] <= heap[0][0]:
                break
            row = _worst(classifier, index, sources, images[i], out[i], truth[i], losses[i])
            entry = (float(losses[i]), -index, row)
            if len(heap) < WORST_KEPT:
                heapq.heappush(heap, entry)
            else:
                heapq.heapreplace(heap, entry)
        outputs.append(out)
        targets.append(truth)
        done += len(images)
    if done == 0:
        raise DataError("The evaluation data is empty; there is nothing to evaluate.")
    out = np.concatenate(outputs)
    truth = np.concatenate(targets)
    worst = tuple(entry[2] for entry in sorted(heap, key=lambda e: (-e[0], -e[1])))
    loss = float(np.mean(spec.losses(out, truth)))
    return Report(task, names, done, loss, **spec.report_fields(out, truth), worst=worst)


def _worst(
    classifier: Classifier,
    index: int,
    sources: list[str] | None,
    image: np.ndarray,
    out: np.ndarray,
    truth: Any,
    loss: float,
) -> Worst:
    source = sources[index] if sources is not None else None
    pixels = np.clip(image, 0, 255).astype("uint8")
    true, predicted, probability = tasks.get_task(classifier.task).described(
        out, truth, classifier.class_names
    )
    return Worst(index, source, true, predicted, probability, float(loss), pixels)


# -- plots --------------------------------------------------------------------------------


def new_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure drawn off-screen (no pyplot, so the caller's backend is untouched).

    Raises:
        MissingExtraError: matplotlib is not installed (the `plot` extra).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_extra("Plotting", "matplotlib", "plot") from None
    return Figure(figsize=figsize, layout="tight")


def save_figure(drawn: Any, path: str | os.PathLike[str]) -> Path:
    """Writes a figure beside `path`, then renames it over `path`.

    The format follows the file's ending (`.png`, `.svg`, `.pdf`, ...); a name without
    one gets a PNG.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a str or os.PathLike; received {path!r}.")
    target = expand(path)
    kind = target.suffix[1:].lower() or "png"  # no ending: a PNG, as matplotlib writes
    formats = drawn.canvas.get_supported_filetypes()
    if kind not in formats:
        raise ConfigError(
            f"Cannot draw a plot as {target.suffix!r} ({str(target)!r}); name a .png file "
            f"(or one of {', '.join('.' + f for f in sorted(formats))})."
        )
    check_writable(target)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial{target.suffix}")
    try:
        drawn.savefig(partial, dpi=100, format=kind)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _main_metric(history: Mapping[str, Sequence[float]], metric: str | None) -> str | None:
    if metric is not None:
        if metric not in history and f"val_{metric}" not in history:
            raise ConfigError(
                f"The history has no {metric!r}; it has {sorted(history)}. Pass one of those."
            )
        return metric
    skip = ("loss", "learning_rate", "lr")
    names = dict.fromkeys(k.removeprefix("val_") for k in history)  # in order, once
    candidates = [k for k in names if k not in skip]
    return candidates[0] if candidates else None


def _runs(phases: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive epochs of the same phase: (name, first epoch, last epoch), 1-based."""
    runs: list[tuple[str, int, int]] = []
    for epoch, name in enumerate(phases, start=1):
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], epoch)
        else:
            runs.append((name, epoch, epoch))
    return runs


def plot_history(
    history: Any,
    path: str | os.PathLike[str],
    *,
    phases: Sequence[str] | None = None,
    metric: str | None = None,
    baseline: Mapping[str, Sequence[float]] | None = None,
    baseline_label: str = "baseline",
    title: str | None = None,
) -> Path:
    """Draws loss and the main metric per epoch, training and validation, with the phases.

    Each phase is shaded and every unfreeze (the start of each phase after the first) is
    marked with a dashed line.

    Args:
        history: a `keras.callbacks.History` (what `fit` returns), a `FineTuneHistory`, or
            its `history` dict (metric name -> one value per epoch).
        path: the PNG to write.
        phases: the phase name of every epoch; by default `history.phases` when it has
            them (`FineTuneHistory`), else one phase.
        metric: the metric drawn beside the loss; by default the first one in the history
            (e.g. `accuracy`, `mae`).
        baseline: another run's history whose validation curves are drawn for comparison.
        baseline_label: its name in the legend.
        title: a title over both panels.

    Returns:
        The path written.

    Raises:
        ConfigError: the history is empty, `phases` has the wrong length, or `metric` is
            not in the history.
        MissingExtraError: matplotlib is not installed (`pip install 'finetunekit[plot]'`).

    Example:
        >>> history = tuner.fit(train, validation_data=val)
        >>> ftk.plot_history(history, "history.png")
    """
    values = history.history if hasattr(history, "history") else history
    if not isinstance(values, Mapping):
        raise ArgumentTypeError(
            f"history must be a keras History or a dict of metric lists; received "
            f"{type(history).__name__}."
        )
    epochs = max((len(v) for v in values.values()), default=0)
    if epochs == 0:
        raise ConfigError("The history is empty (no epoch ran); there is nothing to plot.")
    if phases is None:
        phases = getattr(history, "phases", None) or ["training"] * epochs
    if len(phases) != epochs:
        raise ConfigError(f"phases names {len(phases)} epochs but the history has {epochs}.")
    main = _main_metric(values, metric)
    panels = [
        m for m in dict.fromkeys((main, "loss")) if m is not None and {m, f"val_{m}"} & set(values)
    ]
    if not panels:
        raise ConfigError(
            f"The history has nothing to plot: no loss and no metric ({sorted(values)}). "
            "Pass a keras History, or a dict such as {'loss': [...], 'val_loss': [...]}."
        )
    figure = new_figure(figsize=(5.5 * len(panels), 4))
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    runs = _runs(list(phases))
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")
    for axis, name in zip(axes, panels, strict=True):
        for prefix, style in (("", "-"), ("val_", "-o")):
            series = values.get(prefix + name)
            if series is not None and len(series):
                label = ("validation " if prefix else "training ") + name
                axis.plot(np.arange(1, len(series) + 1), series, style, markersize=3, label=label)
        if baseline is not None and f"val_{name}" in baseline:
            series = baseline[f"val_{name}"]
            axis.plot(
                np.arange(1, len(series) + 1), series, ":", color="grey",
                label=f"validation {name}, {baseline_label}",
            )  # fmt: skip
        seen: dict[str, str] = {}
        for number, (phase, first, last) in enumerate(runs):
            color = seen.setdefault(phase, colors[len(seen) % len(colors)])
            axis.axvspan(first - 0.5, last + 0.5, color=color, alpha=0.08, label=f"{phase} phase")
            if number:
                axis.axvline(
                    first - 0.5, color="black", linestyle="--", linewidth=1,
                    label="unfreeze" if number == 1 else None,
                )  # fmt: skip
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes[0].legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    if title:
        figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)
