"""Arrays and `tf.data` datasets into batched `(float32 RGB images, labels)`."""

from __future__ import annotations

import collections
import operator
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from finetunekit._checks import check_int
from finetunekit._orders import EpochOrders, attach
from finetunekit.data._labels import _label_info, check_labels
from finetunekit.errors import ArgumentTypeError, DataError


def to_channels(images: tf.Tensor, channels: int = 3) -> tf.Tensor:
    """Images as float32 with the `channels` the model takes.

    For a model of RGB images (3 channels), grayscale is repeated and an alpha channel
    dropped; for a grayscale model (1 channel), RGB(A) becomes its luminance. Any other
    count must match the model's already (`_check_image_shape`).
    """
    images = tf.cast(images, tf.float32)
    have = images.shape[-1]
    if have == channels:
        return images
    if have is None:  # decoded with the file's own channels: converted as each batch comes
        return _to_channels_as_read(images, channels)
    if channels not in (1, 3) or have not in (1, 3, 4):
        raise DataError(
            f"The model takes images of {channels} channels; received {have}. Pass images "
            f"of {channels} channels (channels last)."
        )
    if have == 4:
        images, have = images[..., :3], 3  # alpha dropped
    if channels == 3:
        return images if have == 3 else tf.image.grayscale_to_rgb(images)
    return tf.image.rgb_to_grayscale(images)


def _to_channels_as_read(images: tf.Tensor, channels: int) -> tf.Tensor:
    """`to_channels` of images whose channels the dataset leaves open (`decode_png` with
    the file's own channels, say), decided batch by batch; another count is refused."""
    if channels not in (1, 3):
        converted = tf.ensure_shape(images, (*images.shape[:-1], channels))
        return converted
    have = tf.shape(images)[-1]
    ok = tf.debugging.Assert(
        tf.reduce_any(tf.equal(have, [1, 3, 4])),
        [f"{_MARK_CHANNELS}: images of", have, "channels"],
    )
    with tf.control_dependencies([ok]):
        rgb = tf.switch_case(
            tf.where(tf.equal(have, 1), 0, tf.where(tf.equal(have, 4), 1, 2)),
            [
                lambda: tf.tile(images[..., :1], [*([1] * (images.shape.rank - 1)), 3]),
                lambda: images[..., :3],
                lambda: images[..., :3],
            ],
        )
    rgb = tf.ensure_shape(rgb, (*images.shape[:-1], 3))
    return rgb if channels == 3 else tf.image.rgb_to_grayscale(rgb)


#: In the assertion of channels that vary by batch; translated by `_guards.data_errors`.
_MARK_CHANNELS = "finetunekit-bad-channels"


def _check_image_shape(shape: tuple[Any, ...], what: str, channels: int = 3) -> None:
    if len(shape) != 4:
        raise DataError(
            f"{what} must be a batch of images (batch, height, width, channels); received "
            f"shape {shape}. Add a channel axis to grayscale arrays, e.g. x[..., None]."
        )
    if channels in (1, 3):
        if shape[-1] not in (1, 3, 4, None):
            kind = "RGB" if channels == 3 else "grayscale"
            raise DataError(
                f"{what} must have 1 (grayscale), 3 (RGB) or 4 (RGBA) channels in the last "
                f"axis (the model takes {kind} images); received shape {shape}. finetunekit "
                "expects channels-last images."
            )
    elif shape[-1] not in (channels, None):
        raise DataError(
            f"{what} must have {channels} channels in the last axis, as the model's input "
            f"has; received shape {shape}. Pass images of {channels} channels (channels last)."
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
    return _from_arrays(
        x, y, batch_size=batch_size, shuffle=shuffle, seed=seed, num_classes=num_classes
    )


def _from_arrays(
    x: Any,
    y: Any,
    *,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    num_classes: int | None = None,
    channels: int = 3,
    sample_weight: Any = None,
    what: str = "training data",
) -> tf.data.Dataset:
    """`from_arrays`, with images of the `channels` the model takes (see `to_channels`),
    and with `sample_weight` (one number per image) as the elements' third part."""
    x_arr = _as_array(x, "x")
    y_arr = _as_array(y, "y")
    _check_image_shape(tuple(x_arr.shape), "x", channels)
    if len(x_arr) != len(y_arr):
        raise DataError(
            f"x and y must hold the same number of examples; received {len(x_arr)} images "
            f"and {len(y_arr)} labels."
        )
    w_arr = None
    if sample_weight is not None:
        w_arr = _weights_array(sample_weight, len(x_arr), what)
    if len(x_arr) == 0:
        raise DataError("x and y are empty; there is nothing to train on.")
    if y_arr.dtype == bool:  # 0/1 labels (binary, multi-hot) as True/False
        y_arr = y_arr.astype("int64")
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
    columns = (x_arr, y_arr) if w_arr is None else (x_arr, y_arr, w_arr)
    if not shuffle:
        dataset = tf.data.Dataset.from_tensor_slices(columns).batch(batch_size)
        dataset = dataset.map(
            lambda images, *rest: (to_channels(images, channels), *rest),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        setattr(dataset, IMAGES, len(x_arr))
        return dataset
    # Reshuffled every epoch by an order keyed by (seed, epoch) during a fit, so a resumed
    # fit draws the orders of an uninterrupted one (see finetunekit._orders).
    orders = EpochOrders(seed)
    images, *rest = (tf.constant(column) for column in columns)
    dataset = orders.indices(len(x_arr)).batch(batch_size).map(
        lambda rows: (
            to_channels(tf.gather(images, rows), channels),
            *(tf.gather(column, rows) for column in rest),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    setattr(dataset, IMAGES, len(x_arr))
    return attach(dataset, orders)


#: The attribute of a `from_arrays` dataset that holds how many images it has (batched
#: datasets only know their batches).
IMAGES = "_finetunekit_images"


def _weights_array(sample_weight: Any, count: int, what: str) -> np.ndarray:
    """Sample weights given beside arrays: one finite number >= 0 per image, as float32."""
    weights = _as_array(sample_weight, "sample_weight")
    if weights.ndim == 2 and weights.shape[1] == 1:
        weights = weights[:, 0]
    problem = None
    if weights.shape != (count,):
        problem = f"received shape {weights.shape} for {count} images"
    elif weights.dtype == bool or not np.issubdtype(weights.dtype, np.number):
        problem = f"received {weights.dtype} values"
    else:
        with np.errstate(over="ignore"):  # 1e300 is no float32: refused below as infinite
            weights = weights.astype(np.float32)
        if not np.isfinite(weights).all() or (weights < 0).any():
            problem = "some are negative, NaN or too large for float32"
    if problem is not None:
        raise DataError(
            f"{what}: sample weights must be one finite number >= 0 per image; {problem}. "
            "Pass (x, y, w) with w of shape (len(x),)."
        )
    return weights


def _check_num_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise DataError(f"num_classes must be an int >= 2; received {num_classes!r}.")
    if num_classes < 2:
        raise DataError(
            f"num_classes={num_classes}: a classifier needs at least two classes. For a yes/no "
            "task use two classes, or FineTuner(task='binary') with 0/1 labels."
        )


def _check_batch_size(batch_size: Any) -> None:
    check_int("batch_size", batch_size, minimum=1, expected="a positive int", error=DataError)


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
    channels: int = 3,
) -> tf.data.Dataset:
    """Accepts a `tf.data.Dataset` of `(images, labels)`, a tuple `(x, y)` or `(x, y,
    sample_weight)` (as Keras' `validation_data` takes), or arrays `x, y`.

    An unbatched dataset is batched; images become float32 with the `channels` the model
    takes (RGB by default, see `to_channels`).

    Raises:
        DataError: the data is not made of `(images, labels)` elements of the right shapes.
        ArgumentTypeError: the data is of a type finetunekit does not read.
    """
    if isinstance(data, tf.data.Dataset):
        if y is not None:
            raise DataError(
                f"{what}: pass labels inside the dataset as (images, labels) elements, not as y."
                + (
                    " The second argument is y: pass validation data as validation_data=..."
                    if isinstance(y, tf.data.Dataset)
                    else ""
                )
            )
        return _standardize_dataset(data, batch_size, what, channels)
    if isinstance(data, keras.utils.PyDataset):
        if y is not None:
            raise DataError(f"{what}: a PyDataset holds its labels; pass it alone, not with y.")
        return _standardize_dataset(_from_py_dataset(data, what), batch_size, what, channels)
    if isinstance(data, Iterator):
        raise DataError(
            f"{what}: received a {type(data).__name__}, which can be read only once, and "
            "finetunekit reads the data more than once (to check it, to cache features, "
            "per epoch). Pass a tf.data.Dataset that makes it anew on each pass, e.g. "
            "tf.data.Dataset.from_generator(make_batches, output_signature=("
            "tf.TensorSpec((None, 224, 224, 3)), tf.TensorSpec((None,), tf.int64))), "
            "or a keras.utils.PyDataset."
        )
    if y is None and isinstance(data, (str, os.PathLike)):
        raise DataError(
            f"{what}: {os.fspath(data)!r} is a path, not images. Load the folder first: "
            "folder = finetunekit.data.from_directory(path, image_size=...), then pass "
            "folder.train (and folder.validation as validation_data=...)."
        )
    if y is None and isinstance(data, tuple) and hasattr(data, "train"):
        raise DataError(
            f"{what}: received all that from_directory returns (train, validation, "
            "class_names). Pass its .train, and its .validation as validation_data=..."
        )
    if y is None and callable(data) and not hasattr(data, "__getitem__"):
        raise DataError(
            f"{what}: received a function ({getattr(data, '__name__', type(data).__name__)}), "
            "not data. Pass what it makes: a generator's batches through "
            "tf.data.Dataset.from_generator(make_batches, output_signature=...), or "
            "a tf.data.Dataset or keras.utils.PyDataset of (images, labels)."
        )
    if y is None and isinstance(data, dict):
        raise DataError(
            f"{what}: received a dict ({sorted(map(str, data))}); finetunekit reads images "
            "and labels as a tuple (x, y), or a tf.data.Dataset of (images, labels)."
        )
    data, y, weights = unpack_arrays(data, y)
    if y is None:
        raise DataError(
            f"{what}: labels are missing. Pass a tf.data.Dataset of (images, labels), a tuple "
            "(x, y), or arrays x and y."
        )
    if isinstance(data, tf.data.Dataset):
        raise DataError(f"{what}: a dataset cannot be paired with separate labels.")
    return _from_arrays(
        data, y, batch_size=batch_size, shuffle=shuffle, seed=seed, channels=channels,
        sample_weight=weights, what=what,
    )


def unpack_arrays(data: Any, y: Any = None) -> tuple[Any, Any, Any]:
    """`(x, y, sample_weight)` of data given as `x, y`, or as a tuple or list `(x, y)` or
    `(x, y, w)` (as Keras' `validation_data` takes); anything else comes back as it was,
    with no weights."""
    if (
        y is None
        and isinstance(data, (tuple, list))
        and len(data) in (2, 3)
        and not hasattr(data, "train")  # from_directory's (train, validation, class_names)
    ):
        return data[0], data[1], data[2] if len(data) == 3 else None
    return data, y, None


def _from_py_dataset(source: keras.utils.PyDataset, what: str) -> tf.data.Dataset:
    """A `keras.utils.PyDataset` of `(images, labels[, sample_weights])` batches as a
    `tf.data.Dataset` of the same batches, in order, `on_epoch_begin` and `on_epoch_end`
    called around each pass, as Keras calls them. With `workers` > 1, that many threads
    read up to `max(workers, max_queue_size)` batches ahead, as Keras' adapter does
    without `use_multiprocessing`; with it, threads still: its worker processes belong
    to that adapter, which is private to `fit`, hence this one."""
    try:
        batches = source.num_batches
    except NotImplementedError:  # Keras 3.15 when the class has no __len__
        batches = None
    if batches is None:
        raise DataError(
            f"{what}: the PyDataset has no length (it is infinite): finetunekit passes over "
            "the data once per epoch. Give it a __len__."
        )
    if batches == 0:
        raise DataError(f"{what}: the PyDataset is empty; there is nothing to train on.")
    first = source[0]
    if not isinstance(first, (tuple, list)) or len(first) not in (2, 3):
        raise DataError(
            f"{what}: a PyDataset's batches must be (images, labels) or (images, labels, "
            f"sample_weights) tuples; its first batch is a {type(first).__name__}."
        )
    parts = [np.asarray(part) for part in first]
    if any(not (np.issubdtype(p.dtype, np.number) or p.dtype == bool) for p in parts):
        raise DataError(
            f"{what}: a PyDataset's batches must hold arrays of numbers (images, labels); "
            f"its first batch holds {', '.join(type(p).__name__ for p in first)}. Return "
            "(x, y) arrays from __getitem__ (class indices, not names, as labels)."
        )
    signature = tuple(
        tf.TensorSpec((None, *part.shape[1:]), tf.as_dtype(part.dtype)) for part in parts
    )

    workers = _count(getattr(source, "workers", 1))
    ahead = max(workers, _count(getattr(source, "max_queue_size", 10)))

    def generate() -> Iterator[tuple[np.ndarray, ...]]:
        source.on_epoch_begin()
        if workers == 1:
            for index in range(batches):
                yield tuple(np.asarray(part) for part in source[index])
        else:
            yield from _read_ahead(source, batches, workers, ahead)
        source.on_epoch_end()

    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches))


def _count(value: Any) -> int:
    """A PyDataset's `workers` or `max_queue_size` as an int >= 1 (1 for None or 0)."""
    try:
        return max(1, operator.index(value))
    except TypeError:  # None, or not an integer: Keras' default of one
        return 1


def _read_ahead(
    source: keras.utils.PyDataset, batches: int, workers: int, ahead: int
) -> Iterator[tuple[np.ndarray, ...]]:
    """`source[0]`, `source[1]`, ... in order, read by `workers` threads, at most `ahead`
    batches read or being read beyond the one consumed.

    The window opens with `workers` reads and grows by one with every batch taken, up
    to `ahead`: the checks read only the first batch or two, and a slow source should
    not pay for `ahead` reads of them.
    """
    with ThreadPoolExecutor(workers, thread_name_prefix="finetunekit-pydataset") as pool:
        pending: collections.deque[Future[Any]] = collections.deque()
        started = 0

        def fill(limit: int) -> None:
            nonlocal started
            while started < batches and len(pending) < limit:
                pending.append(pool.submit(source.__getitem__, started))
                started += 1

        try:
            fill(workers)
            taken = 0
            while pending:
                batch = pending.popleft().result()
                yield tuple(np.asarray(part) for part in batch)
                taken += 1
                fill(min(ahead, workers + taken))
        finally:  # a pass stopped early: the batches not started are not read
            for future in pending:
                future.cancel()


def _check_sample_weights(weights: Any, what: str) -> None:
    """Sample weights (the third element) must be numbers, one per image of the batch."""
    if isinstance(weights, tf.TensorSpec):
        shape = weights.shape
        numeric = weights.dtype.is_floating or weights.dtype.is_integer
        # One per image: (batch,), or (batch, 1), which Keras squeezes.
        per_image = shape.rank is None or shape.rank <= 1 or (
            shape.rank == 2 and shape[-1] in (1, None)
        )
        if numeric and per_image:
            return
        received = f"{weights.dtype.name} of shape {tuple(shape)} per batch"
    else:
        received = str(weights)
    raise DataError(
        f"{what}: the third element of each (images, labels, sample_weights) must be one "
        f"number per image (shape (batch,)); received {received}. Map it to one "
        "weight per image, or drop it."
    )


def _standardize_dataset(
    dataset: tf.data.Dataset, batch_size: int, what: str, channels: int = 3
) -> tf.data.Dataset:
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
        if image_spec.shape[-1] != channels:  # each image first: grey and RGB files batch
            dataset = dataset.map(
                lambda image, *rest: (to_channels(image, channels), *rest),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        dataset = dataset.batch(batch_size)
        image_spec = dataset.element_spec[0]
    if len(spec) == 3:
        _check_sample_weights(dataset.element_spec[2], what)
    if image_spec.shape.rank is None:
        raise DataError(
            f"{what}: the images have no known shape (as made by tf.py_function, for one). "
            "Set it in the dataset, e.g. for batches of 224x224 RGB images and their labels "
            "ds.map(lambda x, y: (tf.ensure_shape(x, (None, 224, 224, 3)), y))."
        )
    _check_image_shape(tuple(image_spec.shape), f"{what}: images", channels)
    if image_spec.shape[-1] == channels and image_spec.dtype == tf.float32:
        return dataset
    return dataset.map(
        lambda images, *rest: (to_channels(images, channels), *rest),
        num_parallel_calls=tf.data.AUTOTUNE,
    )




def check_image_size(
    dataset: tf.data.Dataset, expected: tuple[Any, ...], what: str = "training data"
) -> None:
    """Raises when the dataset's images are not `expected` = (height, width) pixels.

    Raises:
        DataError: the sizes differ (both known), naming both fixes.
    """
    shape = dataset.element_spec[0].shape
    received = tuple(shape[1:3]) if shape.rank is not None else (None, None)
    if None in expected or None in received or tuple(expected) == received:
        return
    raise DataError(
        f"{what}: the images are {received[0]}x{received[1]} pixels but the model takes "
        f"{expected[0]}x{expected[1]}. Resize them when loading (e.g. "
        f"finetunekit.data.from_directory(..., image_size={expected[0]})), or build the "
        f"tuner with input_shape=({received[0]}, {received[1]}, 3)."
    )
