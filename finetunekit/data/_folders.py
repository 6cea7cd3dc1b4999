"""Image folders (one subfolder per class) into checked, batched datasets."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from finetunekit._atomic import expand
from finetunekit._orders import draw_seed
from finetunekit.data._arrays import _check_batch_size
from finetunekit.errors import ArgumentTypeError, ConfigError, DataError, DataNotFoundError

logger = logging.getLogger("finetunekit")

#: File name endings `keras.utils.image_dataset_from_directory` reads (case-insensitive).
IMAGE_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
#: `image_size` of `from_directory` when none is given: the native input size of most
#: ImageNet bases (Keras' own loader defaults to 256).
DEFAULT_IMAGE_SIZE = (224, 224)
_LABEL_MODES = ("int", "categorical", "binary")
_BAD_IMAGE_POLICIES = ("raise", "skip")
_NAMES_SHOWN = 10
#: Lists of files that decoded without an error, each file with its modification time
#: and size, so that reading the same folder again (each candidate of `rank_bases`, a
#: fit and then an evaluation) does not decode every file again; the last few are kept.
_DECODED: OrderedDict[tuple[tuple[str, int, int], ...], None] = OrderedDict()
_DECODED_KEPT = 8
_decoded_lock = threading.Lock()



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
        image_size: `(height, width)` (or one int for squares) every image is resized to;
            `DEFAULT_IMAGE_SIZE` (224 x 224) when None. A base's own size is
            `finetunekit.input_size(base)` (or `FineTuner.input_size`).
        batch_size: images per batch.
        validation_split: fraction of the images held out for validation, e.g. 0.2.
        seed: seed of the shuffle and of the split; a random one when None.
        label_mode: `"int"` (class indices), `"categorical"` (one-hot) or `"binary"`
            (0/1, exactly two classes).
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
    size = _image_size(image_size)
    _check_batch_size(batch_size)
    if label_mode not in _LABEL_MODES:
        raise ConfigError(f"label_mode must be one of {_LABEL_MODES}; received {label_mode!r}.")
    if on_bad_image not in _BAD_IMAGE_POLICIES:
        raise ConfigError(
            f"on_bad_image must be one of {_BAD_IMAGE_POLICIES}; received {on_bad_image!r}."
        )
    root = expand(path)
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
            seed = draw_seed(1_000_000)
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
        _warn_one_sided(files, {os.path.normpath(p) for p in validation.file_paths})
    return DirectoryData(train, validation, names)


def _warn_one_sided(files: dict[str, list[str]], held: set[str]) -> None:
    """Warns when the random split leaves a class on one side only.

    Keras splits the files at random, not class by class: with few images of a class,
    all of them can land in validation (the model never trains on it, silently) or none.
    """
    sides = {name: [os.path.normpath(p) in held for p in paths] for name, paths in files.items()}
    only_held = [name for name, inside in sides.items() if all(inside)]
    never_held = [name for name, inside in sides.items() if not any(inside)]
    if only_held:
        logger.warning(
            "the validation split holds every image of %s: the model never trains on it. Add "
            "images of it, or try another seed or validation_split.", _names(only_held),
        )
    if never_held:
        logger.warning(
            "the validation split holds no image of %s: validation does not measure it. Add "
            "images of it, or try another seed or validation_split.", _names(never_held),
        )


def _image_size(image_size: Any) -> tuple[int, int]:
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    given = image_size
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
            f"received {given!r}."
        )
    return (int(image_size[0]), int(image_size[1]))


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_FORMATS)


def _walk_files(folder: Path, *, hidden: bool = False) -> list[Path]:
    """Every file under `folder`, sorted, in the order Keras' loader walks them.

    Hidden folders and files (`.ipynb_checkpoints/`, `._photo.jpg`) are left out unless
    `hidden`: they hold copies or metadata, not images of their own.
    """
    return [
        Path(root) / name
        for root, _, names in sorted(os.walk(folder), key=lambda entry: entry[0])
        for name in sorted(names)
        if hidden or not _is_hidden(Path(root) / name, folder)
    ]


def _is_hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _refuse_hidden(root: Path, walked: dict[str, list[Path]]) -> None:
    """Refuses images in hidden folders of a class folder, which Keras' loader would read.

    Keras' `image_dataset_from_directory` (which `from_directory` builds on, for its
    split, order and resizing) walks every subfolder, hidden ones too, and has no way
    to leave some out: Jupyter's `.ipynb_checkpoints` copies would then be images of
    the class, landing in training and validation both.
    """
    hidden = [
        p
        for name, files in walked.items()
        for p in files
        if _is_image(p.name) and _is_hidden(p, root / name)
    ]
    if not hidden:
        return
    folders = sorted({str(p.parent) for p in hidden if p.parent.parent != root})
    shown = _names([os.path.relpath(p, root) for p in hidden])
    remove = f"rm -r {folders[0]!r}" if folders else f"rm {str(hidden[0])!r}"
    raise DataError(
        f"{len(hidden)} image file{'s' if len(hidden) > 1 else ''} in {str(root)!r} "
        f"{'are' if len(hidden) > 1 else 'is'} hidden ({shown}), e.g. Jupyter's "
        ".ipynb_checkpoints copies or macOS' ._ files: Keras' loader would read them as "
        "images of their class, "
        f"so copies would land in training and validation both. Remove them (e.g. {remove}) "
        "or move them out of the class folders."
    )


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
    walked = {name: _walk_files(root / name, hidden=True) for name in classes}
    _refuse_hidden(root, walked)
    for name, everything in walked.items():
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
    """Decodes every file once, in parallel; returns path -> reason for the ones that fail.

    Files that all decoded before, unchanged since (same modification time and size), are
    not decoded again: 350 photos took about 0.1 s on 2 cores, every read of the folder.
    """
    if not paths:
        return {}
    key = _stat_key(paths)
    with _decoded_lock:
        if key is not None and key in _DECODED:
            _DECODED.move_to_end(key)
            return {}
    decoded = (
        tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
        .map(_decoded_shape, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .ignore_errors()
        .batch(1024)
    )
    good = {int(i) for indices, _ in decoded.as_numpy_iterator() for i in indices}
    bad = {path: _decode_error(path) for i, path in enumerate(paths) if i not in good}
    if not bad and key is not None:
        with _decoded_lock:
            _DECODED[key] = None
            while len(_DECODED) > _DECODED_KEPT:
                _DECODED.popitem(last=False)
    return bad


def _stat_key(paths: list[str]) -> tuple[tuple[str, int, int], ...] | None:
    """Each path with its modification time and size; None when one cannot be read."""
    try:
        stats = [os.stat(path) for path in paths]
    except OSError:
        return None
    return tuple(
        (path, stat.st_mtime_ns, stat.st_size) for path, stat in zip(paths, stats, strict=True)
    )


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
        # ignore_errors loses the length, and fit would warn of a dataset that may never
        # end; the files left are known.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(paths)))
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    dataset.class_names = list(class_names)
    dataset.file_paths = paths
    dataset.from_class_folders = True  # evaluate reads its files again, in order
    return dataset


