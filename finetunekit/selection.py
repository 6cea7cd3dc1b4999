"""Which pretrained base suits my data? `rank_bases` scores candidates before fine-tuning.

Each candidate runs once, frozen, over (at most `max_images` of) the data, at its own
input size and with its own preprocessing (inside the model, as `load_base` builds
it). Its pooled features are scored three ways (see `finetunekit.transfer_scores`):

- `knn`: leave-one-out k-nearest-neighbour accuracy on unit-length features, the
  primary score: cheap, and in large studies of transferability estimates the most
  robust predictor of fine-tuned accuracy;
- `logme`: LogME, the evidence of a Bayesian linear model on the features (You et
  al., ICML 2021);
- `linear`: the accuracy of a softmax regression, by stratified 5-fold
  cross-validation.

Each model is released (its references dropped and garbage collected) before the
next is built, so memory stays flat however many candidates there are.
`keras.backend.clear_session()` is not used: it would also break the models the
caller holds.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from finetunekit import (
    _folding,
    _gradients,
    _pieces,
    bases,
    caching,
    data,
    evaluation,
    structure,
    tasks,
    transfer_scores,
)
from finetunekit._atomic import expand
from finetunekit.classifier import _decode_failure, _load_image
from finetunekit.data import _arrays, _folders
from finetunekit.data._labels import _label_info
from finetunekit.errors import (
    ArgumentTypeError,
    ConfigError,
    DataError,
    ModelStructureError,
    WeightsNotFoundError,
)
from finetunekit.transfer_scores import (
    KNN_NEIGHBOURS,
    Score,
    accuracy_interval,
    knn_correct,
    knn_neighbours,
    linear_probe_correct,
    logme_interval,
)

__all__ = ["rank_bases", "Ranking", "RankedBase", "Score", "METRICS"]

logger = logging.getLogger("finetunekit")

#: The scores `rank_bases` computes, and what each one is.
METRICS: Mapping[str, str] = {
    "knn": f"leave-one-out {KNN_NEIGHBOURS}-NN accuracy on unit-length features",
    "logme": "LogME evidence per image",
    "linear": "softmax-regression accuracy, 5-fold cross-validation",
}
#: Leave-one-out k-NN needs one image of each class besides the one left out.
MIN_IMAGES_PER_CLASS = 2
_BATCH_SIZE = 32


@dataclass(frozen=True)
class RankedBase:
    """One candidate's row of a `Ranking`.

    Attributes:
        name: the dict label, else the base name, the model's name or the file name.
        score: the primary score (the first of `metrics`; k-NN accuracy by default).
        scores: metric name -> `Score(value, low, high)`, the 95 % interval.
        seconds: time spent on this candidate: loading, the pass over the images, and
            its scoring (which overlaps the next candidate's loading).
        params: parameters of the base.
        image_size: `(height, width)` the images were resized to for it.
    """

    name: str
    score: float
    scores: Mapping[str, Score]
    seconds: float
    params: int
    image_size: tuple[int, int]


class Ranking(tuple[RankedBase, ...]):
    """Candidates sorted by the primary score, best first; what `rank_bases` returns.

    A tuple of `RankedBase` rows. `str(ranking)` is a table, `ranking.best` the winner,
    `ranking.plot(path)` a bar chart of every score with its interval.

    Attributes:
        primary: the metric the rows are sorted by.
        images: how many images each candidate was scored on.
        num_classes: how many classes they hold.
    """

    primary: str
    images: int
    num_classes: int

    def __new__(
        cls, rows: Sequence[RankedBase], *, primary: str, images: int, num_classes: int
    ) -> Ranking:
        ranking = super().__new__(cls, sorted(rows, key=lambda row: -row.score))
        ranking.primary, ranking.images, ranking.num_classes = primary, images, num_classes
        return ranking

    @property
    def best(self) -> RankedBase:
        """The row with the highest primary score."""
        return self[0]

    @property
    def names(self) -> list[str]:
        """The candidates' names, best first."""
        return [row.name for row in self]

    def __str__(self) -> str:
        metrics = list(self[0].scores) if self else []
        header = ["#", "base", *metrics, "seconds", "params", "size"]
        body = [
            [
                str(rank),
                row.name,
                *(str(row.scores[m]) for m in metrics),
                f"{row.seconds:.1f}",
                f"{row.params:,}",
                f"{row.image_size[0]}x{row.image_size[1]}",
            ]
            for rank, row in enumerate(self, 1)
        ]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        right = {0, len(header) - 3, len(header) - 2}  # numbers without intervals
        lines = [
            "  ".join(
                cell.rjust(width) if i in right else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
            for line in [header, *body]
        ]
        lines.append(
            f"Ranked by {self.primary} ({self._described(self.primary)}) on {self.images} "
            "images of "
            f"{self.num_classes} classes; [low, high] are 95% intervals."
        )
        return "\n".join(lines)

    def _described(self, metric: str) -> str:
        k = knn_neighbours(self.images, self.num_classes)
        return METRICS[metric].replace(f"{KNN_NEIGHBOURS}-NN", f"{k}-NN")

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Saves a bar chart of every score, with its interval, as an image (PNG by name).

        Args:
            path: the file to write; written beside and then renamed, so an existing file
                is replaced only by a complete one.

        Returns:
            The path written.

        Raises:
            MissingExtraError: matplotlib is not installed
                (`pip install "finetunekit[plot]"`).

        Example:
            >>> ranking.plot("ranking.png")
        """
        metrics = list(self[0].scores)
        names = self.names[::-1]  # best at the top
        drawn = evaluation.new_figure((3.2 * len(metrics) + 1.5, 0.45 * len(self) + 1.4))
        axes = drawn.subplots(1, len(metrics), sharey=True)
        for axis, metric in zip(np.atleast_1d(axes), metrics, strict=True):
            scores = [row.scores[metric] for row in self][::-1]
            values = np.array([s.value for s in scores])
            errors = np.array(
                [[s.value - s.low for s in scores], [s.high - s.value for s in scores]]
            )
            colours = ["tab:blue" if metric == self.primary else "tab:grey"] * len(scores)
            axis.barh(names, values, xerr=errors, color=colours, capsize=3)
            axis.set_title(metric + (" (primary)" if metric == self.primary else ""), fontsize=9)
            axis.grid(axis="x", alpha=0.3)
            if metric != "logme":
                axis.set_xlim(0, 1)
        drawn.suptitle(
            f"{self.images} images, {self.num_classes} classes; 95% intervals", fontsize=9
        )
        return evaluation.save_figure(drawn, path)


def rank_bases(
    data: Any,
    candidates: Sequence[Any] | Mapping[str, Any],
    *,
    weights: str | os.PathLike[str] | None | Mapping[str, Any] = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    task: str = "multiclass",
    metrics: Sequence[str] = ("knn", "logme", "linear"),
    max_images: int = 2000,
    seed: int | None = None,
    **base_kwargs: Any,
) -> Ranking:
    """Ranks pretrained bases by how well their frozen features separate your classes.

    For each candidate the frozen base runs once over the images (at most `max_images`,
    the same ones for every candidate) at its own input size, with its own preprocessing,
    and its globally pooled features are scored: leave-one-out k-NN accuracy on
    unit-length features (the primary score), LogME, and the accuracy of a linear probe
    by cross-validation, each with a 95 % interval. Fine-tuning the best-ranked base is
    then the best bet; the ranking costs one forward pass per candidate and no training.

    Args:
        data: a folder with one subfolder of images per class (read with
            `finetunekit.data.from_directory` at each candidate's size), a tuple of arrays
            `(x, y)` of raw pixels and labels, or a `tf.data.Dataset` of `(images, labels)`.
            A dataset is read in its own order for each candidate: when it reshuffles every
            iteration and holds more than `max_images`, candidates see different images, so
            pass it unshuffled. Arrays and datasets are resized to each candidate's size.
        candidates: two or more of: base names (see `list_bases`), `keras.Model`s (a full
            model gives its base), paths to saved `.keras` models; or a dict
            label -> candidate, to give your own labels (e.g. two alphas of one family,
            each built with `load_base`).
        weights: for the candidates given by name, `"imagenet"`, None (random) or a weights
            file, as in `load_base`; one value for all, or a mapping from candidate names
            (or dict labels) to weights, the others keeping `"imagenet"`. A weights file
            is also loaded into a model or saved-model candidate.
        input_shape: `(height, width, 3)` for the candidates given by name and models that
            take any size; None for each base's native size (224 for most). A model of a
            fixed size runs at its size.
        task: `"multiclass"` (integer or one-hot labels) or `"binary"` (0/1 labels).
        metrics: which scores to compute, of `"knn"`, `"logme"` and `"linear"`; the first
            is the primary score the ranking is sorted by.
        max_images: at most this many images are scored (of a folder or arrays, a random
            subset in which every class keeps its share and at least 2 images; of a
            dataset, its first images), the same for every candidate; the k-NN and
            LogME costs grow with its square.
        seed: seed of the subset, the folds and the resamples (the same folds and
            resamples for every candidate); None for a random one.
        **base_kwargs: passed to `load_base` for every candidate given by name, e.g.
            `alpha=0.35` when all of them are MobileNets.

    Returns:
        A `Ranking`: rows sorted by the primary score, best first.

    Raises:
        ConfigError: fewer than two candidates, two with the same name, a weights mapping
            naming no candidate, an unknown metric or task, a bad `max_images`.
        UnknownBaseError: a candidate name is not registered (the closest are suggested).
        ArgumentTypeError: a candidate that is neither a name, a model nor a path.
        DataError: a single class, fewer than `MIN_IMAGES_PER_CLASS` images of a class,
            or data that `finetunekit.data` rejects.
        WeightsNotFoundError: a saved model or weights file that does not exist.

    Example:
        >>> ranking = rank_bases("flowers/train", ["mobilenet_v2", "efficientnet_b0"])
        >>> print(ranking)
        >>> tuner = FineTuner(ranking.best.name, num_classes=ranking.num_classes)
    """
    chosen = _check_metrics(metrics)
    if not tasks.get_task(task).one_class_per_image:  # an unknown task: the usual message
        raise ConfigError(
            f"rank_bases scores classes: task must be 'multiclass' or 'binary'; received {task!r}."
        )
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 4:
        raise ConfigError(f"max_images must be an int >= 4; received {max_images!r}.")
    entries = _candidates(candidates, weights)
    rng = np.random.default_rng(seed)
    source = _source(data, max_images, rng, task)
    score_seed = int(rng.integers(2**32))
    # Before any base is built. Named bases take raw 0-255 pixels (their preprocessing is
    # inside): images divided by 255 rank silently wrong (on 128 flowers at 96 px the k-NN
    # score fell from 0.68 to 0.32 and two bases swapped places). A model of the caller's
    # may preprocess otherwise: a warning then.
    raw = all(_is_name(candidate) for _, candidate, _ in entries)
    source.check_pixels(raw)
    rows: list[RankedBase] = []
    reference: np.ndarray | None = None
    # A candidate's scores (numpy and TensorFlow linear algebra, which release the GIL)
    # are computed on a second thread while the next candidate loads and traces (Python,
    # which holds it). On 2 cores, where scoring is about 0.5 s per candidate, the ranking
    # of four took 14.3 s against 14.9 s scored in turn (medians of 5, alternated; within
    # the noise of that machine, faster in 4 runs of 5). Threads, not processes: the
    # features are small and already in this process.
    # On an error (or Ctrl-C) the scores still queued are cancelled, not waited for; a
    # scoring that failed stops the ranking at the next candidate, not at the end.
    with _collecting_new_objects_only(), ThreadPoolExecutor(1, "finetunekit-scores") as pool:
        scoring: list[tuple[str, float, int, tuple[int, int], Future[_Scored]]] = []
        try:
            for label, candidate, candidate_weights in entries:
                _raise_failed(scoring)
                started = time.perf_counter()
                features, labels, size, params = _run_candidate(
                    candidate, candidate_weights, input_shape, base_kwargs, source, max_images
                )
                labels = _class_indices(labels, task)
                if reference is None:
                    # Folders and arrays are cut by `_balanced`, which keeps every image of
                    # a small class: only a dataset read up to max_images may hold more.
                    cut = isinstance(source, _Given) and len(labels) >= max_images
                    _check_classes(labels, source.class_names, cut=cut)
                    reference = labels
                elif len(labels) != len(reference) or not np.array_equal(labels, reference):
                    logger.warning(
                        "%s saw the images in another order than %s (the dataset "
                        "reshuffles): the scores compare different samples. Pass the data "
                        "unshuffled.",
                        label,
                        scoring[0][0],
                    )
                _check_features(features)  # here, so that bad features stop the ranking at once
                classes = int(labels.max()) + 1
                # Every candidate's folds and resamples from one seed: the same features
                # score the same wherever the candidate stands in the list.
                future = pool.submit(
                    _timed_scores, features, labels, classes, chosen,
                    np.random.default_rng(score_seed),
                )
                del features  # the worker holds them until scored
                scoring.append((label, time.perf_counter() - started, params, size, future))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # the running one still ends
            raise
        repeated: dict[str, int] = {}
        for label, seconds, params, size, future in scoring:
            scores, scoring_seconds, repeated[label] = future.result()
            seconds += scoring_seconds
            rows.append(RankedBase(label, scores[chosen[0]].value, scores, seconds, params, size))
            logger.info(
                "ranked %s (%dx%d, %d parameters) in %.1f s: %s",
                label,
                *size,
                params,
                seconds,
                ", ".join(f"{m} {s.value:.3f}" for m, s in scores.items()),
            )
    assert reference is not None
    _warn_repeated(repeated, len(reference))
    return Ranking(
        rows, primary=chosen[0], images=len(reference), num_classes=len(np.unique(reference))
    )


def _raise_failed(scoring: Sequence[tuple[Any, ...]]) -> None:
    """Raises the error of a scoring that has already failed, if any."""
    for *_, future in scoring:
        if future.done() and not future.cancelled() and future.exception() is not None:
            future.result()


@contextlib.contextmanager
def _collecting_new_objects_only() -> Iterator[None]:
    """Collections during the ranking look only at objects made since it started.

    Each candidate is collected before the next is built (memory stays flat), and a full
    collection walks every object of the process: with TensorFlow and Keras loaded, about
    0.25 s each time. `gc.freeze()` sets the objects that exist now aside (the caller's
    models among them, which the ranking does not free anyway), so the collections walk
    only the candidates' own objects; `gc.unfreeze()` puts them back afterwards, to be
    collected as before. A caller that froze objects of its own is left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# -- arguments -------------------------------------------------------------------------------


def _check_metrics(metrics: Any) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    chosen = tuple(metrics) if isinstance(metrics, (list, tuple)) else ()
    if not chosen or any(m not in METRICS for m in chosen) or len(set(chosen)) < len(chosen):
        raise ConfigError(
            f"metrics must be one or more of {tuple(METRICS)}, each once, the primary score "
            f"first; received {metrics!r}."
        )
    return chosen


def _candidates(candidates: Any, weights: Any) -> list[tuple[str, Any, Any]]:
    """(label, candidate, weights) per candidate, checked before any model is built."""
    if isinstance(candidates, Mapping):
        labelled = [(str(label), candidate) for label, candidate in candidates.items()]
        for _, candidate in labelled:
            _label(candidate)  # unknown names and missing files fail before any work
    elif isinstance(candidates, (list, tuple)):
        labelled = [(_label(candidate), candidate) for candidate in candidates]
    else:
        raise ArgumentTypeError(
            "candidates must be a list of base names, keras Models or saved-model paths, or a "
            f"dict label -> candidate; received {type(candidates).__name__}."
        )
    if len(labelled) < 2:
        shown = ", ".join(repr(label) for label, _ in labelled) or "none"
        raise ConfigError(
            f"rank_bases compares candidates: it needs at least two; received {shown}. Add "
            "another, e.g. ['mobilenet_v2', 'efficientnet_b0'] (see finetunekit.list_bases())."
        )
    labels = [label for label, _ in labelled]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(
            f"Two candidates are both named {twice[0]!r}; pass a dict label -> candidate to "
            "tell them apart."
        )
    if isinstance(weights, Mapping):
        keys = {bases._normalize(label): label for label in labels}
        unknown = [key for key in weights if bases._normalize(str(key)) not in keys]
        if unknown:
            raise ConfigError(
                f"weights names {', '.join(repr(k) for k in unknown)}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not among the candidates "
                f"({', '.join(repr(label) for label in labels)}). Key the mapping by the "
                "candidates' names, or by the labels of a candidates dict."
            )
        per_label = {keys[bases._normalize(str(k))]: w for k, w in weights.items()}
        for label, candidate in labelled:
            if label in per_label and per_label[label] is None and not _is_name(candidate):
                # None means random initial weights for a name; a model keeps its own.
                raise ConfigError(
                    f"weights gives {label!r} None (random weights), but that candidate is a "
                    "model with weights of its own, which rank_bases uses as they are. For a "
                    "random control, name the architecture (e.g. 'mobilenet_v2') with "
                    "weights None."
                )
        return [(label, c, per_label.get(label, "imagenet")) for label, c in labelled]
    return [(label, candidate, weights) for label, candidate in labelled]


def _is_name(candidate: Any) -> bool:
    return isinstance(candidate, str) and not bases._looks_like_path(candidate)


def _label(candidate: Any) -> str:
    """The name of a candidate given without a label; unknown names fail here."""
    if isinstance(candidate, keras.Model):
        return str(candidate.name)
    if isinstance(candidate, os.PathLike) or (
        isinstance(candidate, str) and bases._looks_like_path(candidate)
    ):
        path = expand(candidate)
        if not path.exists():
            raise WeightsNotFoundError(
                f"No saved model at {str(path)!r}. Check the path, or pass a base name such "
                "as 'mobilenet_v2' (see finetunekit.list_bases())."
            )
        return path.name
    if isinstance(candidate, str):
        return bases.get_spec(candidate).name
    raise ArgumentTypeError(
        "Each candidate must be a base name, a keras.Model or a path to a saved .keras "
        f"model; received {type(candidate).__name__}."
    )


# -- data ----------------------------------------------------------------------------------


class _Source:
    """The same images, in the same order, for every candidate, at any size."""

    #: The names of the classes, where the data has them (a folder's class folders).
    class_names: Sequence[str] | None = None

    def images(self, size: tuple[int, int]) -> tf.data.Dataset:
        raise NotImplementedError

    def read_error(self, exc: Exception) -> Exception:
        """The error to raise for TensorFlow's error while reading the images."""
        return exc

    def check_pixels(self, raw: bool) -> None:
        """The first batch against the 0-255 promise (see `data.check_pixels`)."""
        first = next(iter(self.images(data.DEFAULT_IMAGE_SIZE).take(1)), None)
        if first is not None:
            data.check_pixels(first[0], "data", raw=raw)


class _Folder(_Source):
    def __init__(
        self, path: str | os.PathLike[str], seed: int, max_images: int, rng: np.random.Generator
    ) -> None:
        self.path, self.seed = path, seed
        files = _folders._class_files(expand(path))
        self.class_names = list(files)
        paths = [p for name in files for p in files[name]]
        labels = np.array([i for i, name in enumerate(files) for _ in files[name]], np.int64)
        self.label_of = {os.path.normpath(p): int(y) for p, y in zip(paths, labels, strict=True)}
        #: The files every candidate reads, with their labels: a subset of every class
        #: when the folder holds more than max_images, else listed by the first read.
        self.files: tuple[list[str], np.ndarray] | None = None
        if len(paths) > max_images:
            chosen = _balanced(labels, max_images, rng)
            self.files = ([paths[i] for i in chosen], labels[chosen])

    def check_pixels(self, raw: bool) -> None:
        pass  # decoded by from_directory: 0-255 pixels

    def images(self, size: tuple[int, int]) -> tf.data.Dataset:
        if self.files is None:
            self.files = self._list(size)
        paths, labels = self.files
        return (
            tf.data.Dataset.from_tensor_slices((paths, labels))
            .map(lambda p, y: (_load_image(p, size), y), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(_BATCH_SIZE)
            .prefetch(tf.data.AUTOTUNE)
        )

    def _list(self, size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
        """The folder's files in the order of Keras' loader, after its checks and notes."""
        try:  # the folder's checks and notes, as FineTuner's data gets them
            with _notes_said_once():
                folder = data.from_directory(
                    self.path, image_size=size, batch_size=_BATCH_SIZE, seed=self.seed
                )
        except DataError as exc:  # rank_bases takes no on_bad_image: not its fix
            skip = ", or pass on_bad_image='skip' to leave them out."
            raise DataError(str(exc).replace(skip, ".")) from None
        # Read in the order Keras' loader lists the files, shuffled by numpy from `seed`.
        # Its dataset shuffles again with tf.data, whose order follows TensorFlow's global
        # seed too: the folds and leave-one-out draws then changed with
        # `tf.random.set_seed` (k-NN 0.868 or 0.874 for one base on the flowers, the same
        # seed=0). Listed once: a file added to the folder during the ranking is not read,
        # one removed fails to read (a DataError naming it).
        paths = list(folder.train.file_paths)
        try:
            labels = np.array([self.label_of[os.path.normpath(p)] for p in paths], np.int64)
        except KeyError as exc:  # listed by Keras since __init__ listed the folder
            raise DataError(
                f"The folder {os.fspath(self.path)!r} changed while rank_bases read it "
                f"({exc.args[0]!r} is new). Rank it again once nothing writes to it."
            ) from None
        return paths, labels

    def read_error(self, exc: Exception) -> Exception:
        return exc if self.files is None else _decode_failure(list(self.files[0]))


@contextlib.contextmanager
def _notes_said_once() -> Iterator[None]:
    """Drops the folder's notes on files it ignores: said when `_Folder` listed it, they
    would be said again at every candidate's size."""

    thread = threading.get_ident()  # the shared logger: other threads' notes stand

    def drop(record: logging.LogRecord) -> bool:
        return record.thread != thread or not record.getMessage().startswith("ignoring ")

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _Arrays(_Source):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def images(self, size: tuple[int, int]) -> tf.data.Dataset:
        return data.as_dataset(self.x, self.y, batch_size=_BATCH_SIZE, shuffle=False)


class _Given(_Source):
    def __init__(self, dataset: tf.data.Dataset) -> None:
        self.dataset = data.as_dataset(dataset, batch_size=_BATCH_SIZE)

    def images(self, size: tuple[int, int]) -> tf.data.Dataset:
        return self.dataset


def _balanced(labels: np.ndarray, max_images: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `max_images` examples in which every class keeps its share.

    Each class first gets `MIN_IMAGES_PER_CLASS` (or all it has), the rest is shared in
    proportion to the classes' sizes, and slots left by rounding go to images drawn at
    random. A plain random subset could leave a rare class out, silently: the ranking
    then scored fewer classes than the data has.
    """
    if len(labels) <= max_images:
        return np.arange(len(labels))
    counts = np.bincount(labels)
    quota = np.minimum(counts, MIN_IMAGES_PER_CLASS)
    if quota.sum() > max_images:  # a subset cut short would drop the last classes
        raise DataError(
            f"max_images={max_images} cannot hold {MIN_IMAGES_PER_CLASS} images of each of "
            f"the {len(counts)} classes (leave-one-out k-NN needs {MIN_IMAGES_PER_CLASS} of "
            f"every class): raise max_images to at least {int(quota.sum())}."
        )
    spare = counts - quota
    room = max(max_images - int(quota.sum()), 0)
    quota += np.floor(spare * room / max(int(spare.sum()), 1)).astype(np.int64)
    chosen = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[: quota[c]] for c in range(len(counts))]
    )
    left = max_images - len(chosen)
    if left > 0:
        others = np.setdiff1d(np.arange(len(labels)), chosen)
        chosen = np.concatenate([chosen, rng.choice(others, left, replace=False)])
    return np.sort(chosen)


def _source(given: Any, max_images: int, rng: np.random.Generator, task: str) -> _Source:
    if isinstance(given, (str, os.PathLike)):
        return _Folder(given, int(rng.integers(2**31)), max_images, rng)
    if isinstance(given, tf.data.Dataset):
        if isinstance(given.element_spec, tuple) and len(given.element_spec) == 3:
            logger.warning(
                "The data carries sample weights; the ranking scores every image alike."
            )
        return _Given(given)
    if _arrays.unpack_arrays(given)[2] is not None:
        raise ArgumentTypeError(
            "data: received a sequence of 3, read as (x, y, sample_weight); the ranking "
            "scores every image alike. Pass (x, y)."
        )
    if isinstance(given, (tuple, list)) and len(given) == 2:
        x, y = (np.asarray(part) for part in given)
        data.as_dataset(x[:1], y[:1])  # the usual checks of shapes and types, on one image
        if len(x) != len(y):
            data.as_dataset(x, y)  # names the mismatch
        chosen = _balanced(_class_indices(y, task), max_images, rng)
        _check_classes(_class_indices(y[chosen], task))  # before any model is built
        return _Arrays(x[chosen], y[chosen])
    if isinstance(given, tuple) and hasattr(given, "train"):
        raise ArgumentTypeError(
            "data: received all that from_directory returns (train, validation, "
            "class_names). Pass the folder's path itself (each candidate reads it at its "
            "own size), or its .train."
        )
    raise ArgumentTypeError(
        "data must be a folder of class folders, a tuple (x, y) of arrays or a tf.data.Dataset "
        f"of (images, labels); received {type(given).__name__}."
    )


def _class_indices(labels: np.ndarray, task: str) -> np.ndarray:
    """Labels as class indices 0..k-1 of the classes present."""
    mode = data.check_labels(_label_info(np.asarray(labels)), task, None)
    indices = labels.argmax(axis=1) if mode == "categorical" else labels.reshape(len(labels))
    return np.unique(np.asarray(indices).astype(np.int64), return_inverse=True)[1].reshape(-1)


def _check_classes(
    labels: np.ndarray, names: Sequence[str] | None = None, *, cut: bool = False
) -> None:
    """Two classes at least, and enough images of each; `cut`: the data may hold more."""
    counts = np.bincount(labels)
    if len(counts) < 2:
        raise DataError(
            f"All {len(labels)} images are of one class; ranking bases needs at least two "
            "classes to tell apart. Add images of another class."
        )
    few = [
        (label, int(count)) for label, count in enumerate(counts) if count < MIN_IMAGES_PER_CLASS
    ]
    if few:
        named = names is not None and len(names) == len(counts)  # indices are folder order
        shown = ", ".join(
            f"{names[label]!r}: {count}" if named and names else f"class {label}: {count}"
            for label, count in few
        )
        raise DataError(
            f"Leave-one-out k-NN needs at least {MIN_IMAGES_PER_CLASS} images of every class; "
            f"{shown} (of {len(labels)} images). Add images of those classes"
            + (", leave them out, or raise max_images." if cut else " or leave them out.")
        )


# -- one candidate -------------------------------------------------------------------------


def _run_candidate(
    candidate: Any,
    weights: Any,
    input_shape: tuple[int, int, int] | None,
    base_kwargs: dict[str, Any],
    source: _Source,
    max_images: int,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
    """Loads the candidate, runs it once over the images, and releases it."""
    if _is_name(candidate):
        base = bases.load_base(candidate, weights=weights, input_shape=input_shape, **base_kwargs)
    else:
        base = bases.load_base(candidate, weights=weights)
    size = _size(base, input_shape)
    params = int(base.count_params())
    dataset = source.images(size)
    pooled = _pooled_function(base, dataset, size)
    registered = _gradients.snapshot()
    try:
        with caching.quiet_retracing():  # one trace per candidate, on purpose
            features, labels = zip(*_batches(pooled, dataset, max_images), strict=True)
    except _READ_ERRORS as exc:  # a file does not decode, or has gone since it was listed
        raise source.read_error(exc) from exc
    finally:
        if pooled.experimental_get_tracing_count():
            # The pass never differentiates: the gradients its trace registered go with it.
            _gradients.release(registered, {id(pooled.get_concrete_function().graph)})
        # Only references go: the caller's own models stay usable (clear_session would not).
        del base, pooled
        gc.collect()
    return np.concatenate(features), np.concatenate(labels), size, params


#: What reading a listed image file raises: it does not decode, is missing (deleted, a
#: dangling link) or cannot be opened.
_READ_ERRORS = (
    tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError
)


def _size(base: keras.Model, input_shape: tuple[int, int, int] | None) -> tuple[int, int]:
    shape = base.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4:
        raise ModelStructureError(
            f"The candidate {base.name!r} takes inputs of shape {shape}, not images: "
            "rank_bases runs image bases, whose input is (batch, height, width, 3). Pass "
            "a base name, or a Keras model of images."
        )
    height, width = tuple(shape[1:3])
    if isinstance(height, int) and isinstance(width, int):
        return (height, width)
    if input_shape is not None:
        return (int(input_shape[0]), int(input_shape[1]))
    return data.DEFAULT_IMAGE_SIZE


def _pooled_function(base: keras.Model, dataset: tf.data.Dataset, size: tuple[int, int]) -> Any:
    """The base in inference mode, resizing to `size` and pooling, as one traced function.

    Traced once per candidate (the batch dimension left open): on 350 images at 224 px
    MobileNetV2 then runs in about a third of the eager time, plus about 1 s for the
    trace and its first call (docs/selection.md). Tracing an op made with
    `tf.custom_gradient` (swish, in EfficientNet) would keep the whole trace alive;
    `finetunekit._gradients.release`, which the caller runs once the pass is done.
    """
    spec = dataset.element_spec[0]
    resize = tuple(spec.shape[1:3]) != size
    # The sources read RGB; a candidate of grayscale images takes their luminance, as
    # FineTuner's data does (`data.prepare`).
    channels = structure.input_channels(base)
    if channels not in (1, 3):
        raise ModelStructureError(
            f"The candidate {base.name!r} takes images of {channels} channels; rank_bases "
            "reads the data as RGB and gives candidates RGB or grayscale (1-channel) images "
            "only. Rank candidates of 1 or 3 channels, or fine-tune this one with "
            "FineTuner, which gives a base images of its own channels."
        )

    def pooled(images: tf.Tensor) -> tf.Tensor:
        images = _arrays.to_channels(images, channels)
        if resize:
            images = tf.image.resize(images, size)
        outputs = _folding.frozen_call(base, images)
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[-1]
        if outputs.shape.rank > 2:  # feature maps or tokens: the global average
            outputs = tf.reduce_mean(outputs, axis=list(range(1, outputs.shape.rank - 1)))
        return outputs

    shape = None if spec.shape.rank is None else (None, *spec.shape[1:])
    # autograph=False, as Keras' own steps (do_not_convert) and the feature cache: the
    # layer-by-layer run is plain Python over layers, with nothing for autograph to convert.
    return tf.function(
        pooled, input_signature=[tf.TensorSpec(shape, spec.dtype)], autograph=False
    )


def _batches(
    pooled: Any, dataset: tf.data.Dataset, max_images: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    seen = 0
    piece = _pieces.piece_size(pooled)  # pieces that keep the activations in the cache
    for images, labels, *_ in caching.untuned(dataset):  # its deletion waits otherwise
        take = min(len(images), max_images - seen)
        features = _pieces.call_in_pieces(pooled, images[:take], piece)
        yield np.asarray(features, np.float32), np.asarray(labels[:take])
        seen += take
        if seen >= max_images:
            return
    if seen == 0:
        raise DataError("The data holds no images; there is nothing to rank on.")


#: A candidate's scores, the seconds they took, and how many images repeated another.
_Scored = tuple[dict[str, Score], float, int]


def _check_features(features: np.ndarray) -> None:
    if not np.isfinite(features).all():
        raise DataError(
            "The base gave NaN or infinite features; check the images (raw 0-255 pixels) and "
            "the weights."
        )


def _timed_scores(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    metrics: tuple[str, ...],
    rng: np.random.Generator,
) -> _Scored:
    started = time.perf_counter()
    scores, repeated = _scores(features, labels, num_classes, metrics, rng)
    return scores, time.perf_counter() - started, repeated


def _scores(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    metrics: tuple[str, ...],
    rng: np.random.Generator,
) -> tuple[dict[str, Score], int]:
    """The metrics' scores, and how many images repeated another (scored once)."""
    _check_features(features)
    # An image given twice (a copied file) is its own nearest neighbour in leave-one-out
    # k-NN and lands on both sides of the probe's folds: with random labels, each image
    # twice, k-NN read 0.98 instead of 0.19. Like LogME, every score counts it once.
    distinct, labels_distinct = transfer_scores._distinct(features, labels)
    repeated = len(features) - len(distinct)
    if repeated:
        features, labels = distinct.astype(features.dtype), labels_distinct
    scores: dict[str, Score] = {}
    for metric in metrics:
        if metric == "knn":
            correct = knn_correct(features, labels, num_classes, rng=rng)
            scores[metric] = accuracy_interval(correct, rng)
        elif metric == "logme":
            scores[metric] = logme_interval(features, labels, num_classes, rng)
        else:
            correct = linear_probe_correct(features, labels, num_classes, rng)
            scores[metric] = accuracy_interval(correct, rng)
    return scores, repeated


def _warn_repeated(repeated: dict[str, int], images: int) -> None:
    """One warning for the images that repeat another, however many candidates saw them.

    A copied file repeats for every candidate; warned per candidate, the same line came
    once for each base ranked, without saying which.
    """
    seen = {label: count for label, count in repeated.items() if count}
    if not seen:
        return
    counts = set(seen.values())
    if len(seen) == len(repeated) and len(counts) == 1:
        logger.warning(
            "%d of %d images repeat another (identical features) for every candidate: "
            "each is scored once. Remove the copies from the data to rank on distinct "
            "images.",
            counts.pop(), images,
        )
        return
    logger.warning(
        "Images that repeat another (identical features), each scored once: %s (of %d).",
        ", ".join(f"{count} for {label}" for label, count in seen.items()),
        images,
    )
