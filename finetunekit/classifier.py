"""A saved model that knows its classes: `save_model`, `load`, `Classifier.predict`.

`save_model` writes an ordinary Keras `.keras` file and adds one small entry to
its zip archive, `finetunekit.json`, holding the class names, the task, the base
and the input size. Keras reads only the entries it knows (`config.json`,
`metadata.json`, `model.weights.h5`, `assets/`), so `keras.models.load_model`
still loads the file without finetunekit; `finetunekit.load` reads the entry
too and returns a `Classifier` that names what it predicts.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import weakref
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from finetunekit import _folding, bases, caching, structure, tasks
from finetunekit import data as ftk_data
from finetunekit._atomic import expand, name_suggested, write_beside
from finetunekit._checks import check_float
from finetunekit._version import __version__
from finetunekit.data import _arrays, _folders
from finetunekit.errors import (
    ArgumentTypeError,
    ConfigError,
    DataError,
    DataNotFoundError,
    WeightsNotFoundError,
)

__all__ = [
    "save_model",
    "load",
    "read_info",
    "ModelInfo",
    "Classifier",
    "Prediction",
    "Predictions",
]

logger = logging.getLogger("finetunekit")

#: Name of the entry `save_model` adds to the `.keras` zip archive.
INFO_ENTRY = "finetunekit.json"
_INFO_FORMAT = 1


@dataclass(frozen=True)
class ModelInfo:
    """What a saved model says about itself (the `finetunekit.json` entry).

    Attributes:
        class_names: name of every output (class `i` is `class_names[i]`); for a binary
            model, the negative and the positive class.
        task: `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`.
        base: the base the model was fine-tuned from (a registry name), when known.
        input_size: `(height, width)` images are resized to.
        recipe: the training settings, as plain JSON values, when given.
        finetunekit_version: the version that wrote the file.
    """

    class_names: tuple[str, ...]
    task: str
    base: str | None = None
    input_size: tuple[int, int] | None = None
    recipe: dict[str, Any] | None = None
    finetunekit_version: str = __version__

    def to_json(self) -> str:
        values = asdict(self)
        values["format"] = _INFO_FORMAT
        return json.dumps(values, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        values = json.loads(text)
        size = values.get("input_size")
        return cls(
            class_names=tuple(str(n) for n in values.get("class_names") or ()),
            task=str(values.get("task") or "multiclass"),
            base=values.get("base"),
            input_size=None if size is None else (int(size[0]), int(size[1])),
            recipe=values.get("recipe"),
            finetunekit_version=str(values.get("finetunekit_version", "")),
        )


def _check_model(model: Any, what: str = "model") -> keras.Model:
    if not isinstance(model, keras.Model):
        raise ArgumentTypeError(
            f"{what} must be a keras.Model, a finetunekit Classifier or a path to a .keras "
            f"file; received {type(model).__name__}."
        )
    return model


def infer_task(model: keras.Model) -> str:
    """The task a model's output layer implies: softmax, sigmoid (1 or more units), linear.

    Raises:
        ConfigError: the output is linear but the model was compiled with a
            cross-entropy on logits: a classifier whose outputs are not probabilities.
    """
    activation = structure.output_activation(model)
    task = tasks.task_of_output(activation, _output_units(model))
    if activation not in ("softmax", "sigmoid"):  # values, unless compiled as logits
        _refuse_logits(model, None)
    return task


def _refuse_logits(model: keras.Model, task: str | None) -> None:
    """Refuses a classifier that outputs logits (compiled with from_logits=True).

    Taken for a regression, it predicted the first class for every image; as a classifier
    its "probabilities" would be logits. Predictions need probabilities out of the model.
    """
    reads_logits = task is None or tasks.get_task(task).logits_when_linear
    if not reads_logits or not getattr(getattr(model, "loss", None), "from_logits", False):
        return
    raise ConfigError(
        f"{model.name!r} outputs logits (a linear output layer, compiled with a "
        "cross-entropy from_logits=True), but predictions and reports read probabilities. "
        "Add the activation as the last layer, e.g. keras.Model(model.inputs, "
        "keras.layers.Softmax()(model.output)) (or Activation('sigmoid') for binary and "
        "multilabel), or pass task='regression' if the outputs are values."
    )


def _output_is_linear(model: keras.Model) -> bool:
    return structure.output_activation(model) == "linear"


def _output_units(model: keras.Model) -> int:
    shape = model.output_shape
    if isinstance(shape, list):
        raise ConfigError(
            f"{model.name} has {len(shape)} outputs; finetunekit saves and predicts with "
            "models of one output."
        )
    return int(shape[-1])


def _per_image_units(model: keras.Model) -> int:
    """`_output_units`, refusing a feature map: predictions, reports and saved class names
    need one row per image (an export may take a feature map as it is)."""
    tasks.check_per_image_output(model, model.output_shape)
    return _output_units(model)


def _model_input_size(model: keras.Model) -> tuple[int, int] | None:
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4:
        raise ConfigError(
            f"{model.name} takes inputs of shape {shape}; finetunekit expects one batch of "
            "images (batch, height, width, channels)."
        )
    height, width = shape[1], shape[2]
    return (int(height), int(width)) if height and width else None


def _check_class_names(class_names: Any, task: str, units: int) -> tuple[str, ...]:
    spec = tasks.get_task(task)
    expected = spec.name_count(units)
    if class_names is None:
        return spec.default_names(units)
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Iterable):
        raise ArgumentTypeError(
            f"class_names must be a list of strings, e.g. ['cats', 'dogs']; received "
            f"{type(class_names).__name__}."
        )
    names = tuple(str(n) for n in class_names)
    if len(names) != expected:
        raise ConfigError(
            f"class_names has {len(names)} names but the model {spec.names_needed(units)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"class_names must be different from each other; received {names}.")
    return names


def _keras_path(path: Any, what: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"{what} must be a str or os.PathLike; received {path!r}.")
    target = expand(path)
    if target.suffix != ".keras":
        folder, example = name_suggested(target, path, ".keras")
        raise ConfigError(
            f"finetunekit saves Keras 3 '.keras' files; received {str(target)!r}"
            f"{', a folder' if folder else ''}. Use a name such as {str(example)!r}."
        )
    return target


def save_model(
    model: keras.Model,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    task: str | None = None,
    base: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> Path:
    """Saves a model as a `.keras` file that also holds its class names.

    The file is written beside the target and renamed over it, so a failed save leaves
    what was there (and no partial file); replacing an existing file is logged. `~` is
    expanded. `keras.models.load_model` loads it as any `.keras` file;
    `finetunekit.load` also returns the class names, task, base and input size.

    Args:
        model: the model (taking raw 0-255 pixels, as `load_base` models do).
        path: where to write; must end in `.keras`. Missing folders are created.
        class_names: one name per output in label order (for a binary model: the
            negative class, then the positive one). Defaults to `"0"`, `"1"`, ...
        task: `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`; inferred
            from the output layer when None (softmax, sigmoid, linear).
        base: the base's registry name, e.g. `"mobilenet_v2"`.
        recipe: training settings to keep with the model (JSON values).

    Returns:
        The path written.

    Raises:
        ConfigError: `path` does not end in `.keras`; `class_names` do not fit the
            outputs; an unknown task; `recipe` is not JSON.
        ArgumentTypeError: `model` is not a keras.Model.

    Example:
        >>> ftk.save_model(model, "flowers.keras", class_names=["daisy", "roses"])
        >>> ftk.load("flowers.keras").class_names
        ('daisy', 'roses')
    """
    model = _check_model(model)
    target = _keras_path(path)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        # Compiled, never trained: built, the file's optimizer state matches what
        # load_model rebuilds (no warning there).
        optimizer.build(model.trainable_variables)
    task = infer_task(model) if task is None else task
    if task not in tasks.TASKS:
        raise ConfigError(f"Unknown task {task!r}; choose one of {list(tasks.TASKS)}.")
    if _output_is_linear(model):
        _refuse_logits(model, task)
    info = ModelInfo(
        class_names=_check_class_names(class_names, task, _per_image_units(model)),
        task=task,
        base=base,
        input_size=_model_input_size(model),
        recipe=recipe,
    )
    try:
        entry = info.to_json()
    except TypeError as exc:
        raise ConfigError(f"recipe must hold JSON values (numbers, strings, lists): {exc}") from exc
    lambdas = [
        layer.name for layer in structure.leaf_layers(model)
        if isinstance(layer, keras.layers.Lambda)
    ]
    if lambdas:
        logger.warning(
            "%s holds Lambda layers (%s): loading the file will need "
            "keras.config.enable_unsafe_deserialization() first, since Keras does not run "
            "a Lambda's Python code from a file unasked.", target.name, ", ".join(lambdas[:3])
        )
    with write_beside(target) as temp:  # Keras needs the '.keras' ending: it is kept
        model.save(temp)
        with zipfile.ZipFile(temp, "a") as archive:
            archive.writestr(INFO_ENTRY, entry)
    logger.info("saved %s (%d classes) to %s", model.name, len(info.class_names), target)
    return target


def read_info(path: str | os.PathLike[str]) -> ModelInfo | None:
    """The `ModelInfo` stored in a `.keras` file, or None when it holds none.

    Raises:
        WeightsNotFoundError: there is no file at `path`.
        ConfigError: the file is not a `.keras` archive.
    """
    source = _existing(path)
    try:
        with zipfile.ZipFile(source) as archive:
            if INFO_ENTRY not in archive.namelist():
                return None
            return ModelInfo.from_json(archive.read(INFO_ENTRY).decode("utf-8"))
    except (zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{str(source)!r} is not a Keras '.keras' file ({exc}). Save models with "
            "finetunekit.save_model or model.save('name.keras')."
        ) from exc


def _existing(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a str or os.PathLike; received {path!r}.")
    source = expand(path)
    if not source.exists():
        raise WeightsNotFoundError(
            f"No saved model at {str(source)!r}. Check the path; models are saved with "
            "finetunekit.save_model (or FineTuner.save) as '.keras' files."
        )
    if source.is_dir():
        raise ConfigError(f"{str(source)!r} is a folder; finetunekit.load reads one '.keras' file.")
    return source


def load(path: str | os.PathLike[str]) -> Classifier:
    """Loads a `.keras` file as a `Classifier` that names its classes.

    Files written by `save_model` (or `FineTuner.save`) carry their class names; other
    `.keras` files load too, with the task read from the output layer and classes
    named `"0"`, `"1"`, ...

    Args:
        path: a `.keras` file.

    Returns:
        A `Classifier` (its `.model` is the plain Keras model, loaded without its
        optimizer).

    Raises:
        WeightsNotFoundError: there is no file at `path`.
        ConfigError: the file cannot be read as a Keras model.

    Example:
        >>> classifier = ftk.load("flowers.keras")
        >>> classifier.predict("photos/", top=2)[0].label
        'roses'
    """
    info = read_info(path)
    source = expand(path)
    model = bases._load_saved(source, otherwise="with finetunekit.save_model")
    if info is None:
        logger.info("%s holds no class names; naming the outputs by index", source)
    return Classifier(model, info=info)


def as_classifier(model_or_path: Any, class_names: Sequence[str] | None = None) -> Classifier:
    """A `Classifier` from a Classifier, a keras.Model or a path to a `.keras` file."""
    if isinstance(model_or_path, Classifier):
        classifier = model_or_path
    elif isinstance(model_or_path, (str, os.PathLike)):
        classifier = load(model_or_path)
    else:
        classifier = Classifier(_check_model(model_or_path, "model_or_path"))
    if class_names is not None:
        classifier = Classifier(classifier.model, class_names, task=classifier.task)
    return classifier


@dataclass(frozen=True)
class Prediction:
    """The prediction for one image.

    Attributes:
        source: the image file, or None for an array.
        top: `(class name, probability)` pairs, most probable first (for a regression,
            `(output name, value)` in output order).
        labels: the classes the image is predicted to have: its most probable class
            (multiclass, binary); every label whose probability is at least the
            threshold, possibly none (multilabel); none for a regression.
    """

    source: str | None
    top: tuple[tuple[str, float], ...]
    labels: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The most probable class."""
        return self.top[0][0]

    @property
    def score(self) -> float:
        """Its probability (or the first output of a regression)."""
        return self.top[0][1]


@dataclass(frozen=True, eq=False)
class Predictions(Sequence[Prediction]):
    """The predictions for a batch of images, in input order.

    Attributes:
        rows: one `Prediction` per image.
        outputs: the model's raw outputs, shape `(images, outputs)`.
        class_names: the name of every output.
        label_sets: each image has a set of labels (multilabel): the table and the CSV
            show each row's `labels`.
        values: the outputs are values (regression): the CSV has one column per output.
    """

    rows: tuple[Prediction, ...]
    outputs: np.ndarray = field(repr=False)
    class_names: tuple[str, ...]
    label_sets: bool = False
    values: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __str__(self) -> str:
        width = max([len(_shown(r.source)) for r in self.rows] + [5])
        lines = [f"{'image':<{width}}  prediction"]
        for row in self.rows:
            guesses = ", ".join(f"{name} {score:.3f}" for name, score in row.top)
            if self.label_sets:
                guesses = f"{'+'.join(row.labels) or '(none)'}  ({guesses})"
            lines.append(f"{_shown(row.source):<{width}}  {guesses}")
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Writes one row per image: source, then class and probability for each of the top k
        (for a regression, the value of each output, one column per output name).

        Written beside `path` and renamed over it when complete: an interrupted write
        leaves an existing file as it was.
        """
        target = expand(path)
        top = max((len(r.top) for r in self.rows), default=1)
        header = ["image"] + [f"{kind}_{i + 1}" for i in range(top) for kind in ("class", "p")]
        if self.values:
            header = ["image", *self.class_names]
        if self.label_sets:
            header.insert(1, "labels")
        with write_beside(target) as temp, open(temp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for index, row in enumerate(self.rows):
                cells = [row.source if row.source is not None else str(index)]
                if self.label_sets:
                    cells.append("+".join(row.labels))
                if self.values:
                    cells += [f"{value:.6f}" for value in self.outputs[index]]
                else:
                    for name, score in row.top:
                        cells += [name, f"{score:.6f}"]
                writer.writerow(cells)
        return target


def _shown(source: str | None) -> str:
    return "(array)" if source is None else source


class Classifier:
    """A Keras model with the names of its classes.

    Args:
        model: a Keras model taking raw 0-255 RGB images.
        class_names: one name per output (binary: negative, positive); by default those
            in `info`, else `"0"`, `"1"`, ...
        task: inferred from the output layer when None.
        info: what the saved file said (`finetunekit.load` passes it).

    Attributes:
        model: the Keras model.
        class_names: the class of every output.
        task: `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`.
        input_size: `(height, width)` images are resized to.
        channels: the channels of the images the model takes (3: RGB, 1: grayscale);
            images are converted to them.
        info: the `ModelInfo` of the file it was loaded from, or None.

    Example:
        >>> classifier = ftk.Classifier(model, ["cats", "dogs"])
        >>> for row in classifier.predict("photos/", top=2):
        ...     print(row.source, row.label, row.score)
    """

    def __init__(
        self,
        model: keras.Model,
        class_names: Sequence[str] | None = None,
        *,
        task: str | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        self.model = _check_model(model)
        self.info = info
        self.task = task or (info.task if info is not None else infer_task(self.model))
        if self.task not in tasks.TASKS:
            raise ConfigError(f"Unknown task {self.task!r}; choose one of {list(tasks.TASKS)}.")
        if _output_is_linear(self.model):
            _refuse_logits(self.model, self.task)
        names = class_names if class_names is not None else (info.class_names if info else None)
        self.class_names = _check_class_names(names, self.task, _output_units(self.model))
        size = _model_input_size(self.model)
        if size is None and info is not None:
            size = info.input_size
        self.input_size: tuple[int, int] = size or ftk_data.DEFAULT_IMAGE_SIZE
        self.channels: int = structure.input_channels(self.model)

    def __repr__(self) -> str:
        return (
            f"Classifier({self.model.name}, task={self.task!r}, classes={list(self.class_names)}, "
            f"input_size={self.input_size})"
        )

    def outputs(self, images: Any, *, batch_size: int = 32) -> tuple[np.ndarray, list[str | None]]:
        """The model's raw outputs for `images` (see `predict`), and the file of each."""
        dataset, sources = image_dataset(
            images, self.input_size, batch_size=batch_size, channels=self.channels
        )
        if sources and sources[0] is None:  # arrays: files are 0-255 by construction
            self.check_pixels(next(iter(dataset.take(1))), "images")
        run = inference(self.model)
        try:
            with caching.quiet_retracing():
                outputs = np.concatenate(
                    [run(batch) for batch in caching.untuned(dataset.prefetch(2))]
                )
        except tf.errors.InvalidArgumentError as exc:
            # Files are decoded once, while predicting; only a failure reads them again.
            raise _decode_failure(sources) from exc
        return np.asarray(outputs, dtype="float32").reshape(len(sources), -1), sources

    def check_pixels(self, images: Any, what: str) -> None:
        """Checks a sample of images against the raw 0-255 promise (see `data.check_pixels`).

        An error for a model known to take raw pixels (it holds finetunekit's
        preprocessing, or was saved by finetunekit from a named base), else a warning.
        """
        raw = structure.has_preprocessing(self.model) or (
            self.info is not None and self.info.base is not None
        )
        ftk_data.check_pixels(images, what, raw=raw)

    def predict(
        self, images: Any, *, top: int = 1, threshold: float = 0.5, batch_size: int = 32
    ) -> Predictions:
        """Predicts the classes of images, files or a folder.

        Images are resized to `input_size` the way `data.from_directory` resizes them
        (bilinear, aspect ratio not kept); grayscale and RGBA become RGB.

        Args:
            images: an image file or a folder of them (read recursively, in sorted
                order), a list of files, one image array `(height, width, channels)`, a
                batch `(n, height, width, channels)` or a list of arrays of any sizes.
                Raw pixel values 0-255.
            top: how many classes to return per image, most probable first (clipped to
                the number of classes).
            threshold: for a multilabel model, the probability from which a label is
                counted as present in `Prediction.labels`.
            batch_size: images per batch.

        Returns:
            `Predictions`, one `Prediction` per image in input order.

        Raises:
            DataNotFoundError: a file or folder does not exist.
            DataError: a folder holds no images, an image cannot be decoded, or an array
                has the wrong shape.
            ConfigError: `top` is not a positive int, or `threshold` not within (0, 1).
        """
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ConfigError(f"top must be a positive int, e.g. top=3; received {top!r}.")
        threshold = check_float(
            "threshold", threshold, low=0, high=1, expected="a probability in (0, 1), e.g. 0.5"
        )
        _per_image_units(self.model)
        spec = tasks.get_task(self.task)
        outputs, sources = self.outputs(images, batch_size=batch_size)
        rows = tuple(
            Prediction(
                source,
                spec.ranked(row, self.class_names, top),
                spec.present(row, self.class_names, threshold),
            )
            for source, row in zip(sources, outputs, strict=True)
        )
        return Predictions(
            rows, outputs, self.class_names, label_sets=spec.label_sets, values=spec.values
        )

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """One column per class name: a binary model's sigmoid becomes (1 - p, p)."""
        return tasks.get_task(self.task).class_scores(outputs)


# -- reading images ----------------------------------------------------------------------


#: One traced inference function per model, kept while the model lives.
_INFERENCE: weakref.WeakKeyDictionary[keras.Model, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def _layer_state(model: keras.Model) -> tuple[Any, ...]:
    """What a trace depends on besides the weights' values: changed by `quantize`,
    `enable_lora` or a new dtype policy, after which Keras retraces its predict too."""
    return tuple(
        (
            id(layer),
            getattr(layer, "quantization_mode", None),
            bool(getattr(layer, "lora_enabled", False)),
            getattr(getattr(layer, "dtype_policy", None), "name", None),
        )
        for layer in structure.leaf_layers(model)
    )


def inference(model: keras.Model) -> Any:
    """`model(images, training=False)` on a batch, as numpy: what `model.predict` gives.

    One traced function per model, with an open batch dimension (one trace for every
    batch size), each BatchNormalization folded into the convolution before it (see
    `finetunekit._folding`; on a CPU a MobileNetV2's pass ran 1.3-1.9x faster folded),
    with outputs equal to `model.predict`'s up to float rounding. Traced again when the
    model's layers change (quantized, LoRA enabled); a model with several inputs runs
    through `predict_on_batch`.
    """
    state = _layer_state(model)
    if model in _INFERENCE and _INFERENCE[model][0] == state:
        return _INFERENCE[model][1]
    owner = weakref.ref(model)  # the cache must not keep the model alive
    if len(model.inputs) != 1:

        def function(images: Any) -> np.ndarray:
            return np.asarray(owner().predict_on_batch(images))  # type: ignore[union-attr]

    else:
        spec = model.inputs[0]
        traced = tf.function(
            lambda images: _folding.frozen_call(owner(), images),
            input_signature=[tf.TensorSpec((None, *spec.shape[1:]), spec.dtype)],
            autograph=False,
        )

        def function(images: Any) -> np.ndarray:
            return np.asarray(traced(tf.cast(images, spec.dtype)))

    _INFERENCE[model] = (state, function)
    return function


def image_files(source: str | os.PathLike[str]) -> list[str]:
    """A file, or every image file under a folder (sorted, recursively)."""
    path = expand(source)
    if not path.exists():
        raise DataNotFoundError(f"No image or folder at {str(path)!r}. Check the path.")
    if path.is_file():
        return [str(path)]
    files = [str(p) for p in _folders._walk_files(path) if _folders._is_image(p.name)]
    if not files:
        raise DataError(
            f"{str(path)!r} holds no images (readable formats: "
            f"{', '.join(ftk_data.IMAGE_FORMATS)}). Pass a folder of images, or the files."
        )
    return files


def _load_image(path: tf.Tensor, size: tuple[int, int], channels: int = 3) -> tf.Tensor:
    # The calls Keras' image_dataset_from_directory makes (decode to 3 channels, bilinear
    # resize), so a file predicts as it trained; Keras keeps that loader private. A grey
    # model's images then become grey as its training images did (`prepare`).
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, size, method="bilinear")
    image.set_shape((size[0], size[1], 3))
    return _arrays.to_channels(image, channels)


def _decode_failure(sources: list[str | None]) -> Exception:
    bad = _folders._find_bad_images([s for s in sources if s is not None])
    if not bad:
        return DataError("The images could not be read; see the cause above.")
    first, reason = next(iter(bad.items()))
    return DataError(
        f"{len(bad)} image file(s) could not be decoded: {_folders._names(list(bad))} "
        f"({first}: {reason}). Remove or re-save them."
    )


def _fit_array(image: np.ndarray, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """One image array -> float32 of `size` and the model's `channels` (RGB: 3)."""
    if image.ndim == 2:
        image = image[..., None]
    accepted = (1, 3, 4) if channels in (1, 3) else (channels,)
    if image.ndim != 3 or image.shape[-1] not in accepted:
        grey = "(height, width) or " if 1 in accepted else ""
        raise DataError(
            f"An image must be {grey}(height, width, {'|'.join(map(str, accepted))} "
            f"channels); received shape {image.shape}."
        )
    if not np.issubdtype(image.dtype, np.number) and image.dtype != bool:
        raise DataError(f"Image arrays must be numeric; received dtype {image.dtype}.")
    fitted = _arrays.to_channels(tf.convert_to_tensor(image.astype("float32")), channels)
    if tuple(image.shape[:2]) != tuple(size):
        fitted = tf.image.resize(fitted, size, method="bilinear")
    return fitted.numpy()


def image_dataset(
    images: Any, size: tuple[int, int], *, batch_size: int = 32, channels: int = 3
) -> tuple[tf.data.Dataset, list[str | None]]:
    """Batched float32 images of `size` and `channels` (RGB: 3) from files, a folder or
    arrays, and their files."""
    _arrays._check_batch_size(batch_size)
    paths = _as_paths(images)
    if paths is not None:
        check_decodable(channels)
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise DataNotFoundError(
                f"{len(missing)} image file(s) do not exist: {_folders._names(missing)}."
            )
        dataset = (
            tf.data.Dataset.from_tensor_slices(paths)
            .map(lambda p: _load_image(p, size, channels), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        return dataset, list(paths)
    arrays = _as_arrays(images)
    batch = np.stack([_fit_array(image, size, channels) for image in arrays])
    return tf.data.Dataset.from_tensor_slices(batch).batch(batch_size), [None] * len(batch)


def check_decodable(channels: int) -> None:
    """Image files decode to RGB or grayscale: a model of other channels takes arrays."""
    if channels not in (1, 3):
        raise DataError(
            f"The model takes images of {channels} channels, which image files do not "
            "decode to (they give RGB or grayscale). Pass arrays of "
            f"(height, width, {channels}) instead of files."
        )


def _as_paths(images: Any) -> list[str] | None:
    if isinstance(images, (str, os.PathLike)):
        return image_files(images)
    if (
        isinstance(images, (list, tuple))
        and images
        and all(isinstance(i, (str, os.PathLike)) for i in images)
    ):
        return [f for item in images for f in image_files(item)]
    return None


def _as_arrays(images: Any) -> list[np.ndarray]:
    if isinstance(images, (list, tuple)):
        if not images:
            raise DataError("No images given: the list is empty.")
        if any(isinstance(i, (str, os.PathLike)) for i in images):
            raise ArgumentTypeError(
                "images mixes file paths and arrays in one list; pass either paths "
                "(files or folders) or image arrays, and predict the two kinds in two calls."
            )
        return [np.asarray(i) for i in images]
    if isinstance(images, tf.data.Dataset):
        raise ArgumentTypeError(
            "images must be files, a folder or image arrays, not a tf.data.Dataset: pass its "
            "images as one array (for batches of (images, labels): np.concatenate([x for x, "
            "*_ in ds])), or use finetunekit.evaluate(model, ds) to score a labelled dataset."
        )
    if isinstance(images, (bytes, dict)) or images is None:
        raise ArgumentTypeError(
            "images must be a file, a folder, a list of files, or image arrays; received "
            f"{type(images).__name__}."
        )
    try:
        array = np.asarray(images)
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError(f"images could not be read as arrays: {exc}") from exc
    if array.ndim == 4:
        if len(array) == 0:
            raise DataError("No images given: the batch is empty.")
        return list(array)
    if array.ndim in (2, 3):
        return [array]
    raise DataError(
        "images must be files, a folder, one image (height, width, channels) or a batch "
        f"(n, height, width, channels); received an array of shape {array.shape}."
    )
