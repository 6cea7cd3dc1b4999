"""Turning image folders, arrays and `tf.data` into batched `(raw pixels, labels)` datasets.

Images stay raw pixels (0-255, RGB); the base carries its own preprocessing.
Grayscale images become RGB and RGBA images lose their alpha channel. Bad data
(a missing folder, a class without images, a corrupt file, labels out of range)
raises a `DataError` (or `DataNotFoundError`) that names what is wrong and how
to fix it, before any training starts.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from finetunekit import bases
from finetunekit.errors import ArgumentTypeError, ConfigError, DataError, DataNotFoundError

if TYPE_CHECKING:
    from finetunekit.finetuner import FineTuner

__all__ = [
    "split_by_content",
    "from_directory",
    "DirectoryData",
    "from_arrays",
    "as_dataset",
    "augmentation",
    "AUGMENTATION_PRESETS",
    "IMAGE_FORMATS",
    "DEFAULT_IMAGE_SIZE",
    "LabelInfo",
    "inspect_labels",
    "check_labels",
]

logger = logging.getLogger("finetunekit")

#: File name endings `keras.utils.image_dataset_from_directory` reads (case-insensitive).
IMAGE_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
#: `image_size` of `from_directory` when neither it nor a base is given: the native input
#: size of most ImageNet bases (Keras' own loader defaults to 256).
DEFAULT_IMAGE_SIZE = (224, 224)
_LABEL_MODES = ("int", "categorical", "binary")
_BAD_IMAGE_POLICIES = ("raise", "skip")
_NAMES_SHOWN = 10


def _to_rgb(images: tf.Tensor) -> tf.Tensor:
    images = tf.cast(images, tf.float32)
    channels = images.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(images)
    if channels == 4:
        return images[..., :3]
    return images


def _check_image_shape(shape: tuple[Any, ...], what: str) -> None:
    if len(shape) != 4:
        raise DataError(
            f"{what} must be a batch of images (batch, height, width, channels); received "
            f"shape {shape}. Add a channel axis to grayscale arrays, e.g. x[..., None]."
        )
    if shape[-1] not in (1, 3, 4, None):
        raise DataError(
            f"{what} must have 1 (grayscale), 3 (RGB) or 4 (RGBA) channels in the last axis; "
            f"received shape {shape}. finetunekit expects channels-last images."
        )


def from_arrays(
    x: Any,
    y: Any,
    *,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    num_classes: int | None = None,
) -> tf.data.Dataset:
    """Makes a batched dataset of `(images, labels)` from numpy arrays.

    Args:
        x: images, shape `(n, height, width, channels)` with 1, 3 or 4 channels, raw pixel
            values (0-255), any numeric dtype.
        y: labels: class indices `(n,)`, one-hot or multi-hot `(n, k)`, or targets.
        batch_size: images per batch.
        shuffle: reshuffle the examples every epoch.
        seed: seed of the shuffle.
        num_classes: when given, `y` must be class indices in `0..num_classes - 1` or
            one-hot rows of `num_classes` columns, checked here rather than deep inside
            training.

    Returns:
        A `tf.data.Dataset` of `(float32 RGB images, labels)` batches.

    Raises:
        DataError: shapes or lengths that do not fit, non-numeric data, NaN in images,
            fewer than two classes or labels out of range (with `num_classes`).
        ArgumentTypeError: `x` or `y` is not array-like.

    Examples:
        >>> x, y, names = finetunekit.datasets.shapes(20, image_size=32)
        >>> train = from_arrays(x, y, batch_size=32, seed=0, num_classes=len(names))
    """
    x_arr = _as_array(x, "x")
    y_arr = _as_array(y, "y")
    _check_image_shape(tuple(x_arr.shape), "x")
    if len(x_arr) != len(y_arr):
        raise DataError(
            f"x and y must hold the same number of examples; received {len(x_arr)} images "
            f"and {len(y_arr)} labels."
        )
    if len(x_arr) == 0:
        raise DataError("x and y are empty; there is nothing to train on.")
    if not np.issubdtype(x_arr.dtype, np.number) or not np.issubdtype(y_arr.dtype, np.number):
        raise DataError(
            f"x and y must be numeric; received dtypes {x_arr.dtype} and {y_arr.dtype}. "
            "Encode class names as integers (e.g. with the sorted class list)."
        )
    if np.issubdtype(x_arr.dtype, np.floating) and not np.isfinite(x_arr).all():
        raise DataError("x holds NaN or infinite pixel values; clean the images first.")
    _check_batch_size(batch_size)
    if num_classes is not None:
        _check_num_classes(num_classes)
        check_labels(_label_info(y_arr), "multiclass", num_classes)
    dataset = tf.data.Dataset.from_tensor_slices((x_arr, y_arr))
    if shuffle:
        dataset = dataset.shuffle(len(x_arr), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(
        lambda images, labels: (_to_rgb(images), labels), num_parallel_calls=tf.data.AUTOTUNE
    )


def _check_num_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise DataError(f"num_classes must be an int >= 2; received {num_classes!r}.")
    if num_classes < 2:
        raise DataError(
            f"num_classes={num_classes}: a classifier needs at least two classes. For a yes/no "
            "task use two classes, or FineTuner(task='binary') with 0/1 labels."
        )


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int; received {batch_size!r}.")


def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise ArgumentTypeError(
            f"{name} must be a numpy array (or array-like); received {type(value).__name__}."
        )
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} could not be turned into an array: {exc}") from exc


def as_dataset(
    data: Any,
    y: Any = None,
    *,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    what: str = "training data",
) -> tf.data.Dataset:
    """Accepts a `tf.data.Dataset` of `(images, labels)`, a tuple `(x, y)` or arrays `x, y`.

    An unbatched dataset is batched; images become float32 RGB.

    Raises:
        DataError: the data is not made of `(images, labels)` elements of the right shapes.
        ArgumentTypeError: the data is of a type finetunekit does not read.
    """
    if isinstance(data, tf.data.Dataset):
        if y is not None:
            raise DataError(
                f"{what}: pass labels inside the dataset as (images, labels) elements, not as y."
            )
        return _standardize_dataset(data, batch_size, what)
    if y is None and isinstance(data, (tuple, list)) and len(data) == 2:
        data, y = data
    if y is None:
        raise DataError(
            f"{what}: labels are missing. Pass a tf.data.Dataset of (images, labels), a tuple "
            "(x, y), or arrays x and y."
        )
    if isinstance(data, tf.data.Dataset):
        raise DataError(f"{what}: a dataset cannot be paired with separate labels.")
    return from_arrays(data, y, batch_size=batch_size, shuffle=shuffle, seed=seed)


def _standardize_dataset(dataset: tf.data.Dataset, batch_size: int, what: str) -> tf.data.Dataset:
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise DataError(
            f"{what}: dataset elements must be (images, labels) tuples; received elements of "
            f"{spec}. Map them, e.g. ds.map(lambda d: (d['image'], d['label']))."
        )
    image_spec = spec[0]
    if not isinstance(image_spec, tf.TensorSpec):
        raise DataError(f"{what}: images must be tensors; received {image_spec}.")
    if image_spec.shape.rank == 3:
        _check_batch_size(batch_size)
        dataset = dataset.batch(batch_size)
        image_spec = dataset.element_spec[0]
    _check_image_shape(tuple(image_spec.shape), f"{what}: images")
    if image_spec.shape[-1] in (3, None) and image_spec.dtype == tf.float32:
        return dataset
    return dataset.map(
        lambda images, *rest: (_to_rgb(images), *rest), num_parallel_calls=tf.data.AUTOTUNE
    )


@dataclass(frozen=True)
class LabelInfo:
    """What the labels of a dataset look like.

    Attributes:
        label_mode: `"int"` (indices), `"categorical"` (one row per example with k > 1
            columns) or `"binary"` (0/1 values).
        width: columns of the labels (1 for indices).
        max_label: the largest value seen.
        min_label: the smallest value seen.
        integral: whether every value seen is a whole number.
    """

    label_mode: str
    width: int
    max_label: float
    min_label: float
    integral: bool


def inspect_labels(dataset: tf.data.Dataset, *, max_batches: int | None = None) -> LabelInfo:
    """Reads the labels of a batched dataset (all of them, or the first `max_batches`)."""
    label_ds = dataset.map(lambda _images, labels, *rest: labels)
    if max_batches is not None:
        label_ds = label_ds.take(max_batches)
    batches = [np.asarray(b) for b in label_ds.as_numpy_iterator()]
    if not batches:
        raise DataError("The dataset is empty; there is nothing to train on.")
    return _label_info(np.concatenate([b.reshape(len(b), -1) for b in batches]))


def _label_info(labels: np.ndarray) -> LabelInfo:
    labels = labels.reshape(len(labels), -1)
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
        raise DataError(f"Labels must be numeric; received dtype {labels.dtype}.")
    labels = labels.astype("float64")
    width = labels.shape[1]
    integral = bool(np.all(np.equal(np.mod(labels, 1), 0)))
    binary = integral and bool(np.all((labels == 0) | (labels == 1)))
    mode = "categorical" if width > 1 else ("binary" if binary and labels.max() <= 1 else "int")
    return LabelInfo(mode, width, float(labels.max()), float(labels.min()), integral)


def check_labels(info: LabelInfo, task: str, num_classes: int | None) -> str:
    """Validates labels against the task and returns the label mode the loss must use.

    Raises:
        DataError: labels that do not fit the task or the number of classes, naming
            what was expected.
    """
    if task == "regression":
        return "int"
    if task == "multiclass":
        if info.width > 1:
            if num_classes is not None and info.width != num_classes:
                raise DataError(
                    f"Labels are one-hot with {info.width} columns but the model has "
                    f"{num_classes} classes. Expected integer class indices (shape (n,)) or "
                    f"one-hot rows with {num_classes} columns."
                )
            return "categorical"
        if not info.integral or info.min_label < 0:
            raise DataError(
                "task='multiclass' expects integer class indices 0..num_classes-1 (or one-hot "
                f"rows); received labels from {info.min_label:g} to {info.max_label:g}"
                + ("" if info.integral else " with fractions")
                + ". Encode classes as integers."
            )
        if num_classes is not None and info.max_label >= num_classes:
            raise DataError(
                f"Label {info.max_label:g} is out of range for {num_classes} classes (expected "
                f"0..{num_classes - 1}). Set num_classes to the number of classes."
            )
        return "int"
    if info.min_label < 0 or info.max_label > 1:
        raise DataError(
            f"task={task!r} expects labels of 0 and 1; received values from "
            f"{info.min_label:g} to {info.max_label:g}."
        )
    if task == "binary" and info.width != 1:
        raise DataError(
            f"task='binary' expects one 0/1 label per example; received {info.width} columns. "
            "Use task='multilabel' (multi-hot) or task='multiclass' (one-hot)."
        )
    if task == "multilabel" and num_classes is not None and info.width != num_classes:
        raise DataError(
            f"task='multilabel' expects multi-hot rows with {num_classes} columns; received "
            f"{info.width}."
        )
    return "binary"


# -- image folders ------------------------------------------------------------------------


class DirectoryData(NamedTuple):
    """What `from_directory` returns; unpacks as `train, validation, class_names`.

    Attributes:
        train: batched `(float32 RGB images, labels)` training dataset, reshuffled every
            epoch. Like Keras' loader, it carries `class_names` and `file_paths` attributes.
        validation: the held-out split, unshuffled; None without `validation_split`.
        class_names: the class folder names, in label order (label `i` is `class_names[i]`).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    class_names: tuple[str, ...]


def from_directory(
    path: str | os.PathLike[str],
    *,
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 32,
    validation_split: float | None = None,
    seed: int | None = None,
    label_mode: str = "int",
    base: keras.Model | FineTuner | None = None,
    on_bad_image: str = "raise",
) -> DirectoryData:
    """Reads a folder with one subfolder of images per class.

    ```
    path/
        daisy/  001.jpg 002.png ...
        roses/  ...
    ```

    Built on `keras.utils.image_dataset_from_directory` (same file discovery, class
    order, split and resizing) with checks first: every image file is decoded once, in
    parallel, so a corrupt file is named before training rather than failing an epoch
    half-way through. Grayscale and RGBA files become RGB; sub-subfolders are read too.
    Files with other endings are ignored (see `IMAGE_FORMATS`).

    Args:
        path: the folder.
        image_size: `(height, width)` (or one int for squares) every image is resized to.
            Defaults to the input size of `base` when given, else `DEFAULT_IMAGE_SIZE`
            (224 x 224).
        batch_size: images per batch.
        validation_split: fraction of the images held out for validation, e.g. 0.2.
        seed: seed of the shuffle and of the split; a random one when None.
        label_mode: `"int"` (class indices), `"categorical"` (one-hot) or `"binary"`
            (0/1, exactly two classes).
        base: a `keras.Model` or a `FineTuner` whose input size sets `image_size`. A tuner
            whose base is a saved-model path is loaded to read it.
        on_bad_image: `"raise"` (default) stops on unreadable or corrupt image files and
            names them; `"skip"` leaves them out with a logged warning.

    Returns:
        A `DirectoryData(train, validation, class_names)`.

    Raises:
        DataNotFoundError: `path` does not exist.
        DataError: `path` is not a folder, has no class folders or fewer than two, a class
            folder has no images, image files are unreadable (with `on_bad_image="raise"`),
            or the split leaves a side empty.
        ConfigError: a bad `image_size`, `batch_size`, `label_mode` or `on_bad_image`.

    Examples:
        >>> train, val, class_names = from_directory(
        ...     "flowers/train", validation_split=0.2, seed=0, image_size=160)
        >>> FineTuner("mobilenet_v2", num_classes=len(class_names),
        ...           input_shape=(160, 160, 3)).fit(train, validation_data=val)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a str or os.PathLike; received {path!r}.")
    size = _image_size(image_size, base)
    _check_batch_size(batch_size)
    if label_mode not in _LABEL_MODES:
        raise ConfigError(f"label_mode must be one of {_LABEL_MODES}; received {label_mode!r}.")
    if on_bad_image not in _BAD_IMAGE_POLICIES:
        raise ConfigError(
            f"on_bad_image must be one of {_BAD_IMAGE_POLICIES}; received {on_bad_image!r}."
        )
    root = Path(os.fspath(path))
    files = _class_files(root)
    if label_mode == "binary" and len(files) != 2:
        raise DataError(
            f"label_mode='binary' needs exactly 2 class folders; {str(root)!r} has "
            f"{len(files)}: {_names(list(files))}. Use label_mode='int'."
        )
    bad = _find_bad_images([p for paths in files.values() for p in paths])
    if bad:
        _report_bad_images(bad, root, skip=on_bad_image == "skip")
        files = {name: [p for p in paths if p not in bad] for name, paths in files.items()}
        _check_classes_have_images(root, files, after_skipping=True)
    total = sum(len(paths) for paths in files.values())
    logger.info(
        "found %d images in %d classes in %s (%s)",
        total,
        len(files),
        root,
        ", ".join(f"{name}: {len(paths)}" for name, paths in files.items()),
    )
    if validation_split is not None:
        _check_split(validation_split, total + len(bad))
        if seed is None:
            seed = int(np.random.default_rng().integers(1_000_000))
    with _keras_prints_to_log():
        loaded = keras.utils.image_dataset_from_directory(
            os.fspath(root),
            labels="inferred",
            label_mode=label_mode,
            class_names=list(files),
            color_mode="rgb",
            batch_size=None,
            image_size=size,
            shuffle=True,
            seed=seed,
            validation_split=validation_split,
            subset="both" if validation_split is not None else None,
            verbose=False,
        )
    train_raw, val_raw = loaded if validation_split is not None else (loaded, None)
    names = tuple(files)
    train = _finish(train_raw, names, bad, batch_size, "training")
    validation = None if val_raw is None else _finish(val_raw, names, bad, batch_size, "validation")
    if validation is not None:
        logger.info(
            "using %d images for training, %d for validation",
            len(train.file_paths),
            len(validation.file_paths),
        )
    return DirectoryData(train, validation, names)


def _image_size(image_size: Any, base: Any) -> tuple[int, int]:
    if image_size is None:
        return _base_image_size(base) if base is not None else DEFAULT_IMAGE_SIZE
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
            for d in image_size
        )
    ):
        raise ConfigError(
            f"image_size must be (height, width) or one int, e.g. (160, 160) or 160; "
            f"received {image_size!r}."
        )
    return (int(image_size[0]), int(image_size[1]))


def _base_image_size(base: Any) -> tuple[int, int]:
    """The (height, width) a keras.Model or a FineTuner takes."""
    if isinstance(base, keras.Model):
        return _model_image_size(base)
    if hasattr(base, "_base_arg") and hasattr(base, "input_shape"):
        if getattr(base, "base", None) is not None:
            return _model_image_size(base.base)
        if base.input_shape is not None:
            return _image_size(tuple(base.input_shape[:2]), None)
        if isinstance(base._base_arg, keras.Model):
            return _model_image_size(base._base_arg)
        if isinstance(base._base_arg, str) and not bases._looks_like_path(base._base_arg):
            size = bases.get_spec(base._base_arg).default_size
            return (size, size)
        return _model_image_size(base.load_base().base)
    raise ArgumentTypeError(
        f"base must be a keras.Model or a FineTuner (to read its input size); received "
        f"{type(base).__name__}. Or pass image_size=(height, width)."
    )


def _model_image_size(model: keras.Model) -> tuple[int, int]:
    shape = tuple(model.input_shape[1:3]) if model.input_shape else ()
    if len(shape) != 2 or not all(isinstance(d, int) for d in shape):
        logger.info(
            "%s takes any image size; using %s. Pass image_size= to choose.",
            model.name,
            DEFAULT_IMAGE_SIZE,
        )
        return DEFAULT_IMAGE_SIZE
    return (int(shape[0]), int(shape[1]))


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_FORMATS)


def _walk_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, in the order Keras' loader walks them."""
    return [
        Path(root) / name
        for root, _, names in sorted(os.walk(folder), key=lambda entry: entry[0])
        for name in sorted(names)
    ]


def _class_files(root: Path) -> dict[str, list[str]]:
    """Class name -> image paths, checking the folder layout."""
    layout = f"Expected one subfolder per class, e.g. {root / 'cats'}/*.jpg, {root / 'dogs'}/*.jpg."
    if not root.exists():
        raise DataNotFoundError(f"No image folder at {str(root)!r}. {layout}")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a folder. {layout}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in root.iterdir() if p.is_file() and _is_image(p.name)]
    if not classes:
        found = f"{len(loose)} images directly in it" if loose else "nothing to read"
        raise DataError(
            f"{str(root)!r} has no class folders ({found}). {layout} The folder names become "
            "the class names."
        )
    if len(classes) < 2:
        raise DataError(
            f"{str(root)!r} has only one class folder ({classes[0]!r}); a classifier needs at "
            f"least two classes. {layout}"
        )
    if loose:
        logger.warning(
            "ignoring %d images directly in %s (not in a class folder): %s",
            len(loose),
            root,
            _names(sorted(loose)),
        )
    files: dict[str, list[str]] = {}
    other: dict[str, list[str]] = {}
    for name in classes:
        everything = _walk_files(root / name)
        files[name] = [str(p) for p in everything if _is_image(p.name)]
        other[name] = [p.name for p in everything if not _is_image(p.name)]
    ignored = sorted({Path(n).suffix.lower() or n for names in other.values() for n in names})
    if ignored and any(files.values()):
        logger.warning(
            "ignoring %d files that are not %s images: %s",
            sum(len(n) for n in other.values()),
            "/".join(f.lstrip(".") for f in IMAGE_FORMATS),
            _names(ignored),
        )
    _check_classes_have_images(root, files, other=other)
    return files


def _check_classes_have_images(
    root: Path,
    files: dict[str, list[str]],
    *,
    other: dict[str, list[str]] | None = None,
    after_skipping: bool = False,
) -> None:
    empty = [name for name, paths in files.items() if not paths]
    if not empty:
        return
    why = " once the unreadable files are left out" if after_skipping else ""
    details = ""
    if other and any(other[name] for name in empty):
        examples = [n for name in empty for n in other[name]]
        details = f" (other files there: {_names(examples)})"
    raise DataError(
        f"Class folder{'s' if len(empty) > 1 else ''} {_names(empty)} in {str(root)!r} "
        f"hold{'' if len(empty) > 1 else 's'} no images{why}{details}. Readable formats: "
        f"{', '.join(IMAGE_FORMATS)}. Add images, convert them, or remove the folder."
    )


def _decoded_shape(index: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # The same decode call as Keras' loader, so what passes here loads there. The shape is
    # returned so that the decode cannot be optimized away.
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return index, tf.shape(image)


def _find_bad_images(paths: list[str]) -> dict[str, str]:
    """Decodes every file once, in parallel; returns path -> reason for the ones that fail."""
    if not paths:
        return {}
    decoded = (
        tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
        .map(_decoded_shape, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .ignore_errors()
        .batch(1024)
    )
    good = {int(i) for indices, _ in decoded.as_numpy_iterator() for i in indices}
    return {path: _decode_error(path) for i, path in enumerate(paths) if i not in good}


def _decode_error(path: str) -> str:
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as exc:
        # "{{function_node ...}} Input is empty. [Op:DecodeImage]" -> "Input is empty."
        message = re.sub(
            r"\{\{.*?\}\}|\[Op:\w+\]|\s+name:\s*$", "", getattr(exc, "message", str(exc))
        )
        return " ".join(message.split()) or type(exc).__name__
    return "failed to decode"


def _report_bad_images(bad: dict[str, str], root: Path, *, skip: bool) -> None:
    names = [os.path.relpath(p, root) for p in bad]
    first_path, first_reason = next(iter(bad.items()))
    if skip:
        logger.warning(
            "skipping %d unreadable image file%s in %s: %s",
            len(bad),
            "s" if len(bad) > 1 else "",
            root,
            _names(names),
        )
        return
    raise DataError(
        f"{len(bad)} image file{'s' if len(bad) > 1 else ''} in {str(root)!r} could not be "
        f"decoded: {_names(names)} ({os.path.relpath(first_path, root)}: {first_reason}). "
        "Remove or re-save them, or pass on_bad_image='skip' to leave them out."
    )


def _check_split(validation_split: Any, total: int) -> None:
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, (int, float))
        or not 0 < validation_split < 1
    ):
        raise ConfigError(
            f"validation_split must be a fraction between 0 and 1, e.g. 0.2; received "
            f"{validation_split!r}."
        )
    held_out = int(validation_split * total)
    if held_out < 1 or held_out >= total:
        raise DataError(
            f"validation_split={validation_split} of {total} images leaves "
            f"{'no validation' if held_out < 1 else 'no training'} images. Add images or "
            "change validation_split."
        )


@contextlib.contextmanager
def _keras_prints_to_log() -> Iterator[None]:
    """Keras' loader prints 'Using N files for training.'; send that to our log instead.

    (Turning Keras' interactive logging off would route it to absl, which configures the
    root logger of the whole program.)
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            logger.debug("keras: %s", line)


def _finish(
    dataset: tf.data.Dataset,
    class_names: tuple[str, ...],
    bad: dict[str, str],
    batch_size: int,
    what: str,
) -> tf.data.Dataset:
    paths = [p for p in dataset.file_paths if p not in bad]
    if not paths:
        raise DataError(
            f"No readable images are left for {what} once the unreadable files are left out."
        )
    if any(p in bad for p in dataset.file_paths):
        # Elements are (image, label) pairs decoded together, so dropping a failing element
        # drops its label with it.
        dataset = dataset.ignore_errors()
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    dataset.class_names = list(class_names)
    dataset.file_paths = paths
    return dataset


# -- augmentation -------------------------------------------------------------------------

#: Preset name -> what `augmentation(preset)` applies, as fractions (rotation of a full
#: turn, zoom of the image size).
AUGMENTATION_PRESETS: dict[str, dict[str, float]] = {
    "light": {"rotation": 0.0, "zoom": 0.0},
    "default": {"rotation": 0.05, "zoom": 0.1},
    "strong": {"rotation": 0.1, "zoom": 0.2},
}


def augmentation(preset: str = "default", seed: int | None = None) -> keras.Sequential:
    """Random flips, rotations and zooms as Keras layers, for training batches only.

    Keras' random layers only act with `training=True`, so the same model or pipeline
    passes validation and test images through unchanged. They work on raw pixels: values
    stay in the input range (0-255). `FineTuner(augment="default")` applies this preset
    to training batches in the `tf.data` pipeline.

    Args:
        preset: `"light"` (horizontal flips), `"default"` (flips, rotations up to 18
            degrees, zoom up to 10 %) or `"strong"` (flips, 36 degrees, 20 %); see
            `AUGMENTATION_PRESETS`.
        seed: seed of the random transforms.

    Returns:
        A `keras.Sequential` named `augmentation`.

    Raises:
        ConfigError: unknown preset.

    Examples:
        >>> augment = augmentation("default", seed=0)
        >>> train = train.map(lambda x, y: (augment(x, training=True), y))
    """
    if preset not in AUGMENTATION_PRESETS:
        raise ConfigError(
            f"Unknown augmentation preset {preset!r}; choose one of {sorted(AUGMENTATION_PRESETS)}."
        )
    amounts = AUGMENTATION_PRESETS[preset]
    layers: list[keras.layers.Layer] = [
        keras.layers.RandomFlip("horizontal", seed=seed, name="augment_flip")
    ]
    if amounts["rotation"]:
        layers.append(
            keras.layers.RandomRotation(amounts["rotation"], seed=seed, name="augment_rotation")
        )
    if amounts["zoom"]:
        layers.append(keras.layers.RandomZoom(amounts["zoom"], seed=seed, name="augment_zoom"))
    return keras.Sequential(layers, name="augmentation")


def split_by_content(
    dataset: tf.data.Dataset, fraction: float, batch_size: int = 32
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Splits a batched `(images, labels)` dataset into training and held-out parts.

    Each image is assigned by a fingerprint of its pixels, not by its position, so the
    split is the same in every epoch even when the dataset reshuffles (a `take`/`skip`
    split would then leak held-out images into training), and duplicates land together.

    Args:
        dataset: batched `(images, labels)`.
        fraction: share of the images to hold out, in (0, 1).
        batch_size: batch size of both results (constant, so every epoch has as many
            batches as the first).

    Returns:
        `(train, held_out)` batched datasets of known length (0 batches when a side
        is empty).

    Raises:
        DataError: `fraction` is not in (0, 1).

    Examples:
        >>> train, val = split_by_content(dataset, 0.2)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be in (0, 1); received {fraction!r}.")
    threshold = int(round(fraction * 1000))

    def held_out(image: tf.Tensor, *_rest: tf.Tensor) -> tf.Tensor:
        total = tf.reduce_sum(tf.cast(image, tf.float64))
        bucket = tf.math.floormod(tf.cast(tf.floor(total * 0.6180339887498949), tf.int64), 1000)
        return bucket < threshold

    items = dataset.unbatch()
    # One pass counts both sides (the same per-image test the filters use), so both
    # results carry their length: Keras then neither guesses the epoch length nor warns
    # that the filtered data "ran out", and callers see an empty side as 0 batches.
    held, total = items.map(lambda *item: tf.cast(held_out(*item), tf.int64)).reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda acc, h: (acc[0] + h, acc[1] + 1),
    )
    n_held, n_kept = int(held), int(total - held)
    train = items.filter(lambda *item: tf.logical_not(held_out(*item))).batch(batch_size)
    validation = items.filter(held_out).batch(batch_size)
    return (
        train.apply(tf.data.experimental.assert_cardinality(-(-n_kept // batch_size))),
        validation.apply(tf.data.experimental.assert_cardinality(-(-n_held // batch_size))),
    )
