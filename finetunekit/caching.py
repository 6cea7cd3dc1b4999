"""Running a frozen prefix once and training the rest on its outputs.

In a phase where the start of the base is frozen, every epoch pushes every
image through the same frozen layers and gets the same numbers back. Here the
frozen prefix runs once over the data; the layers after the cut train on the
stored outputs. The trainer model is built from the model's own layers
(shared, not copied), so training it trains the full model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf

from finetunekit import _folding, _pieces, data, distribute, structure
from finetunekit._orders import EpochOrders, attach
from finetunekit.errors import DataError

__all__ = [
    "Split",
    "split_frozen_prefix",
    "joint_prefix",
    "FeatureCache",
    "Slots",
    "in_shard",
    "fit_on_features",
    "random_layers_before",
    "estimate_bytes",
    "DEFAULT_BUDGET",
    "STEPS_PER_CALL",
    "EAGER_VALIDATION_BYTES",
    "EAGER_ACTIVATION_BYTES",
    "remove_stale_spills",
]

logger = logging.getLogger("finetunekit")

#: Default in-memory budget of a feature cache, in bytes; beyond it, features spill to disk.
DEFAULT_BUDGET = 1 << 30


@dataclass
class Split:
    """A model cut after its frozen prefix.

    Attributes:
        prefix: raw images -> features at the cut; frozen, run once.
        trainer: features -> the model's outputs, made of the model's own layers.
        cut: name of the last layer of the prefix.
    """

    prefix: keras.Model
    trainer: keras.Model
    cut: str


@dataclass(frozen=True)
class Slots:
    """Where a worker's stored rows go in each global batch of a multi-worker fit.

    Keras splits every global batch into one piece per replica and hands piece `j` to
    worker `j % workers` (its local replica `j // workers`). A worker that stores only
    its own shard fills its pieces with its rows and the others with zeros, which it
    never trains on; every worker makes `steps` full batches per epoch, the shorter
    shards padded by starting their order over (see `finetunekit.distribute`).

    Attributes:
        position: this worker's place among the workers (0 first).
        workers: workers in the cluster.
        local_replicas: replicas on each worker.
        steps: batches per epoch, the same on every worker.
    """

    position: int
    workers: int
    local_replicas: int
    steps: int


def random_layers_before(split: Split) -> list[str]:
    """Names of layers in the prefix that draw random numbers (dropout, noise, augmentation)."""
    return [
        layer.name
        for layer in structure.leaf_layers(split.prefix)
        if structure.draws_random_numbers(layer)
    ]


def split_frozen_prefix(model: keras.Model) -> Split | None:
    """Cuts a full model after the frozen prefix of its base.

    Args:
        model: a full model (base nested in it, called with `training=False`).

    Returns:
        The `Split`, or None when the base's first block trains (nothing to cache), the
        model has no nested base, or the base is a `keras.Sequential`.
    """
    base = structure.find_base(model)
    if base is model or not isinstance(model.output, keras.KerasTensor):
        return None
    if isinstance(base, keras.Sequential):  # its graph is Keras' own, hidden: not cut
        return None
    if structure.layers_before(model, base):  # the prefix would skip them
        return None
    trainable_ids = {id(v) for v in model.trainable_variables}
    found = structure.frozen_cut(base, trainable_ids)
    if found is None:
        return None
    cut_name, cut_tensor = found
    base_out = structure.output_of(model, base)
    if cut_tensor is base.output:
        pooled = _pooled_split(model, base, base_out)
        if pooled is not None:
            return pooled
    features = keras.Input(
        shape=tuple(cut_tensor.shape[1:]), dtype=cut_tensor.dtype, name="cached_features"
    )
    if cut_tensor is base.output:
        prefix, after_base = base, features
    else:
        prefix = keras.Model(base.input, cut_tensor, name=f"{base.name}_frozen_prefix")
        inner = keras.Input(shape=tuple(cut_tensor.shape[1:]), dtype=cut_tensor.dtype)
        suffix_out = structure.replay(base, {id(cut_tensor): inner})[id(base.output)]
        suffix = keras.Model(inner, suffix_out, name=f"{base.name}_trainable_part")
        # As the full model calls its base. (fit passes training=True down either way;
        # frozen BatchNormalization is what keeps inference mode, see freezing.py.)
        after_base = suffix(features, training=False)
    outputs = structure.replay(model, {id(base_out): after_base})[id(model.output)]
    trainer = keras.Model(features, outputs, name=f"{model.name}_on_cached_features")
    return Split(prefix=prefix, trainer=trainer, cut=cut_name)


_POOLINGS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def _pooled_split(model: keras.Model, base: keras.Model, base_out: Any) -> Split | None:
    """With the whole base frozen, cut after the head's global pooling when it comes next.

    Pooling holds no weights and draws no random numbers, so its output can be stored
    instead of the feature maps: h*w times less memory (25x for 5x5 maps), same result.
    """
    after = structure.consumers(model, base_out)
    if len(after) != 1 or not isinstance(after[0][0], _POOLINGS):
        return None
    pool, original = after[0]
    # A copy of the pooling layer (no weights), so the model's own layer gets no new call.
    pooled = pool.__class__.from_config(pool.get_config())(base.output)
    prefix = keras.Model(base.input, pooled, name=f"{base.name}_pooled")
    features = keras.Input(
        shape=tuple(original.shape[1:]), dtype=original.dtype, name="cached_features"
    )
    outputs = structure.replay(model, {id(original): features})[id(model.output)]
    trainer = keras.Model(features, outputs, name=f"{model.name}_on_cached_features")
    return Split(prefix=prefix, trainer=trainer, cut=pool.name)


def _batch_size(dataset: tf.data.Dataset) -> int:
    """The dataset's batch size: static when known, else the size of its first batch."""
    size = dataset.element_spec[0].shape[0]
    if size is None:
        first = next(iter(dataset.take(1)), None)
        size = 0 if first is None else int(tf.shape(first[0])[0])
    return int(size)


class _OwnRetracing(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning about our own traces.

    Each phase trains a new trainer, each fit runs a new prefix, each candidate of
    `rank_bases` runs its own pass and each model that `load`, `evaluate` or `export`
    reads predicts with a function of its own, each traced once, on purpose. TensorFlow
    counts traces by the Python code they come from (Keras' training loop and predict
    step, the feature pass), so after a few phases or loads in one process (a
    notebook) it warns that the caller "retraces". Dropped only for those functions,
    and only inside finetunekit's own calls (see `quiet_retracing`).
    """

    active = 0
    OURS = (
        "_inference_function",
        "_keys_function",
        "_augment_function",
        "multi_step_on_iterator",
        "one_step_on_iterator",
        "one_step_on_data_distributed",
        "_pooled_function",
        "inference.<locals>",  # classifier.inference: one per loaded model
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active:
            return True
        message = record.getMessage()
        return not ("retracing" in message and any(name in message for name in self.OURS))


_RETRACING = _OwnRetracing()
logging.getLogger("tensorflow").addFilter(_RETRACING)


@contextlib.contextmanager
def quiet_retracing() -> Iterator[None]:
    """While inside, TensorFlow's retracing warnings about finetunekit's traces are dropped."""
    _RETRACING.active += 1
    try:
        yield
    finally:
        _RETRACING.active -= 1


#: Traced functions per prefix and input signature: the training and validation caches
#: of one fit (every phase of it, and every augmented view) run the same prefix, so they
#: share one trace of it.
_TRACED: weakref.WeakKeyDictionary[keras.Model, dict[Any, Any]] = weakref.WeakKeyDictionary()

#: Traced training-mode calls of augmentation layers, per layer and input signature.
_AUGMENTS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _signature(dataset: tf.data.Dataset) -> tf.TensorSpec:
    """The images' spec with the batch dimension left open."""
    spec = dataset.element_spec[0]
    shape = None if spec.shape.rank is None else (None, *spec.shape[1:])
    return tf.TensorSpec(shape, spec.dtype)


def _frozen_function(prefix: keras.Model, dataset: tf.data.Dataset) -> Any:
    """`prefix` in inference mode, BatchNormalization folded, as ONE traced function.

    `predict_on_batch` traces once for the full batches and again for a smaller last
    batch; tracing a whole base costs about as much as running it over a few hundred
    small images (and its first call as much again, while TensorFlow optimizes the
    graph), so the batch dimension is left open from the start and the function is
    kept for every later pass through the same prefix: the held-out images, the
    augmented views and a validation set all run through this one trace. Storing four
    views of the 350 flowers had traced the base twice (plain and augmented), 0.7 s a
    trace on a 2-core CPU.
    """
    signature = _signature(dataset)
    traced = _TRACED.setdefault(prefix, {})
    key = (signature, "frozen")
    if key not in traced:
        model = weakref.ref(prefix)  # the cache must not keep the prefix alive

        @tf.function(input_signature=[signature], autograph=False)
        def _inference_function(images: tf.Tensor) -> Any:
            return keras.tree.flatten(_folding.frozen_call(model(), images))

        traced[key] = _inference_function
    return traced[key]


def _keys_function(prefix: keras.Model, dataset: tf.data.Dataset, holdout: float) -> Any:
    """Each image's held-out flag (none without `holdout`) and pixel sum, traced.

    The sum is the key of the content order (see `FeatureCache`); both come from the
    batch already in memory, so the split reads no image twice.
    """
    signature = _signature(dataset)
    traced = _TRACED.setdefault(prefix, {})
    key = (signature, "keys", holdout)
    if key not in traced:

        @tf.function(input_signature=[signature], autograph=False)
        def keys(images: tf.Tensor) -> Any:
            held = data.held_out(images, holdout) if holdout else tf.zeros((0,), tf.bool)
            flat = tf.reshape(tf.cast(images, tf.float64), (tf.shape(images)[0], -1))
            return held, tf.reduce_sum(flat, axis=1)

        traced[key] = keys
    return traced[key]


def _augment_function(augment: Any, dataset: tf.data.Dataset) -> Any:
    """`augment` in training mode (random), traced apart from the frozen layers.

    Each call draws new random transforms (Keras' random layers advance their seed
    state), so calling it K times on a batch gives K different views; the frozen layers
    then run through the same trace as the plain images (`_frozen_function`), and the
    stored prefix itself draws nothing. The whole batch of kept images is augmented at
    once, so the draws do not depend on the pieces the frozen pass runs in.
    """
    signature = _signature(dataset)
    traced = _AUGMENTS.setdefault(augment, {})
    if signature not in traced:
        layer = weakref.ref(augment)

        @tf.function(input_signature=[signature], autograph=False)
        def views(images: tf.Tensor) -> Any:
            alive = layer()  # traced while the caller holds the layer
            assert alive is not None
            # In the images' dtype, which the frozen trace takes: under mixed precision
            # the layer computes (and returns) float16.
            return tf.cast(alive(images, training=True), images.dtype)

        traced[signature] = views
    return traced[signature]


def _pixel_sums(images: tf.Tensor) -> np.ndarray:
    """Each image's pixel sum: the key of the content order (see `FeatureCache`)."""
    flat = np.asarray(images, np.float64).reshape(int(tf.shape(images)[0]), -1)
    return flat.sum(axis=1)


def _into_slots(
    features: tf.Tensor, labels: tf.Tensor, *, slots: Slots, size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """A worker's local batch spread into its pieces of a global batch (see `Slots`)."""
    replicas = slots.workers * slots.local_replicas
    piece = size // replicas
    where = [[local * slots.workers + slots.position] for local in range(slots.local_replicas)]

    def spread(part: tf.Tensor) -> tf.Tensor:
        pieces = tf.reshape(part, (slots.local_replicas, piece, *part.shape[1:]))
        full = tf.scatter_nd(where, pieces, (replicas, piece, *part.shape[1:]))
        return tf.reshape(full, (size, *part.shape[1:]))

    return spread(features), spread(labels)


def _label_key(labels: np.ndarray) -> np.ndarray:
    """One float per image of its label (an index, or a one-/multi-hot row)."""
    columns = labels.reshape(len(labels), -1).astype(np.float64)
    return columns @ np.arange(1, columns.shape[1] + 1, dtype=np.float64)


def _digest(sums: np.ndarray, label_key: np.ndarray) -> int:
    """A digest of images' (pixel sum, label) pairs, whatever their order."""
    order = np.lexsort((label_key, sums))
    pairs = np.stack([sums[order], label_key[order]], axis=1)
    return int.from_bytes(hashlib.sha256(pairs.tobytes()).digest()[:8], "little")


def in_shard(images: tf.Tensor, position: int, workers: int) -> np.ndarray:
    """Whether each image belongs to the shard `position` of `workers`, by its content.

    The pixel sum spread by 2**0.5 - 1 (not the golden ratio of the held-out split, so
    shards and split are independent): the same images on every worker, whatever the
    order they are read in, and duplicates in one shard.
    """
    return _in_shard_by_sums(_pixel_sums(images), position, workers)


def _in_shard_by_sums(sums: np.ndarray, position: int, workers: int) -> np.ndarray:
    return np.floor(sums * 0.41421356237309503).astype(np.int64) % workers == position


def untuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` without tf.data's autotuning, for the iterators this module creates.

    Deleting an iterator whose pipeline autotunes waited for the autotuning thread's next
    wake-up, which comes at 10 ms and then at doubling intervals up to 10 s after the
    iterator was made: a pass storing four augmented views of the 350 flowers ended
    after 5.0-7.1 s and then waited until 10.26 s in four calls of six (TensorFlow 2.21,
    2-core CPU). Without autotuning, a parallel map still runs on every core and the
    deletion returns at once. The pipelines here are short (a gather of stored rows, or
    the caller's reading and decoding, which keeps its own parallel calls).
    """
    if dataset.options().autotune.enabled:  # the caller turned it on: their choice stands
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def estimate_bytes(prefix: keras.Model, dataset: tf.data.Dataset) -> tuple[int, int] | None:
    """`(images, bytes per image and view)` a cache of `dataset` will hold, before the pass.

    The images are counted from the dataset's length and batch size (an upper bound:
    the last batch may be short); None when the length is unknown.
    """
    batches = int(dataset.cardinality())
    if batches < 0:
        return None
    images = batches * _batch_size(dataset)
    per_image = 0
    for output in prefix.outputs:
        shape = tuple(output.shape[1:])
        if any(d is None for d in shape):
            return None
        per_image += int(np.prod(shape, dtype=np.int64)) * np.dtype(output.dtype).itemsize
    return images, per_image


def joint_prefix(*splits: Split) -> keras.Model:
    """One model computing every split's features in a single pass over the images.

    Every cut must lie in the same frozen base (true for the phases of one fine-tune:
    each phase freezes a start of the base), so all outputs come from the same layers.
    """
    first = splits[0].prefix
    return keras.Model(first.input, [split.prefix.output for split in splits])


#: Names of the parts of a `FeatureCache`: all examples, the kept ones, the held-out ones.
Part = Literal["all", "train", "held_out"]


#: Spilled files are named `finetunekit-<pid>-...features`: a run killed by SIGKILL or
#: SIGTERM cannot remove its own, so the next cache removes those of dead processes.
_SPILL = "finetunekit-"


def _spill_prefix() -> str:
    return f"{_SPILL}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or we cannot tell: keep its files
    return True


def remove_stale_spills(directory: str | None = None) -> list[str]:
    """Removes spilled feature files left by finetunekit processes that no longer run.

    A fit removes its spilled files when it ends, even on an error or a Ctrl-C; a
    process killed outright (SIGKILL, SIGTERM, a machine going down) leaves them. Each
    is named after the process that wrote it, so the next feature cache in the same
    folder removes the files of processes that are gone.

    Args:
        directory: the folder spills go to (default: the system temp folder).

    Returns:
        The paths removed.
    """
    folder = directory or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(_SPILL) and name.endswith(".features")):
            continue
        pid = name[len(_SPILL) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        path = os.path.join(folder, name)
        try:
            os.remove(path)
        except OSError:
            continue
        removed.append(path)
    if removed:
        logger.info("removed %d feature files left by runs that were killed", len(removed))
    return removed


class FeatureCache:
    """Outputs of a frozen prefix over a dataset, in memory up to a budget, else on disk.

    The prefix may have several outputs (e.g. the features of every phase's cut,
    computed in one pass); `dataset(output=i)` serves the i-th. With `augment`, each
    image is stored as `views` augmented views (bytes = images x views x features; the
    estimate is logged before the pass). With `holdout`, each
    image is assigned to the held-out part by its content, by the same rule as
    `finetunekit.data.split_by_content`, in the same pass. Use as a context manager so
    a spilled file is always removed:

    ```python
    with FeatureCache(split.prefix, train_ds) as cache:
        fit_on_features(split.trainer, cache.dataset(shuffle=True, seed=0), epochs=5)
    ```

    Args:
        prefix: the frozen model to run once.
        dataset: batched `(images, labels)`.
        budget: bytes kept in memory before spilling to temporary files (per cache: a
            fit with validation data has two, training and validation).
        directory: where spilled files go (default: the system temp folder).
        holdout: fraction of the images to hold out by content (0: none).
        augment: random transforms (a Keras layer, called with `training=True`) applied
            to the kept images before the prefix; the held-out images are stored as
            they are. None: no augmentation.
        views: with `augment`, how many augmented views of each kept image are stored
            (the prefix runs once per view); `dataset(part="train")` then serves one
            view per image, drawn afresh every epoch.
        shard: `(position, workers)`: store only this worker's shard of the training
            images (chosen by content, see `in_shard`) and every held-out image; the
            other images are read, not run. None: every image.
    """

    def __init__(
        self,
        prefix: keras.Model,
        dataset: tf.data.Dataset,
        *,
        budget: int = DEFAULT_BUDGET,
        directory: str | None = None,
        holdout: float = 0.0,
        augment: keras.layers.Layer | None = None,
        views: int = 1,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.paths: list[str] = []
        self.batch_size = _batch_size(dataset)
        self.views = views if augment is not None else 1
        n_out = len(prefix.outputs)
        chunks: list[list[Any]] = [[] for _ in range(n_out)]
        handles: list[Any] = []
        labels: list[np.ndarray] = []
        # per image: its rows (one per view; a held-out image's one row repeated), whether
        # it is held out, and the key of the content order (pixel sum, then label)
        image_rows: list[np.ndarray] = []
        held: list[np.ndarray] = []
        sums: list[np.ndarray] = []
        image_labels: list[np.ndarray] = []
        every_sum: list[np.ndarray] = []  # of every image read (a shard stores some)
        every_label: list[np.ndarray] = []
        in_memory = rows = 0
        remove_stale_spills(directory)
        frozen = _frozen_function(prefix, dataset)
        keys = _keys_function(prefix, dataset, holdout)
        # Each batch runs in pieces that keep the activations in the cache (see _pieces).
        piece = _pieces.piece_size(frozen)

        run = functools.partial(_pieces.call_in_pieces, frozen, piece=piece)
        run_view = None
        if augment is not None:
            viewed = _augment_function(augment, dataset)

            def run_view(images: tf.Tensor) -> Any:
                return run(viewed(images))

        estimate = estimate_bytes(prefix, dataset)
        if estimate is not None:
            logger.info(
                "feature cache: about %d images x %d view%s x %d bytes = %.1f MiB (budget "
                "%.1f MiB)", estimate[0], self.views, "s" if self.views > 1 else "",
                estimate[1], estimate[0] * self.views * estimate[1] / 2**20, budget / 2**20,
            )
        quiet = contextlib.ExitStack()
        quiet.enter_context(quiet_retracing())
        try:
            for images, batch_labels in untuned(dataset.prefetch(tf.data.AUTOTUNE)):
                batch_labels = np.asarray(batch_labels)
                if shard is not None:
                    every_sum.append(_pixel_sums(images))
                    every_label.append(batch_labels)
                    keep = _in_shard_by_sums(every_sum[-1], *shard)
                    if holdout:
                        keep = keep | data.held_out(images, holdout).numpy()
                    images, batch_labels = tf.boolean_mask(images, keep), batch_labels[keep]
                    if not len(batch_labels):
                        continue
                image_labels.append(batch_labels)
                flags, pixel_sums = (t.numpy() for t in keys(images))
                if not holdout:
                    flags = np.zeros(len(pixel_sums), bool)
                if run_view is not None:
                    outs = self._views_of(images, flags, run, run_view, n_out)
                    # rows: the views of the kept images (view-major), then the held-out
                    n_kept, n_held = int(np.sum(~flags)), int(np.sum(flags))
                    kept = rows + np.arange(n_kept)[:, None] + n_kept * np.arange(self.views)
                    lone = rows + n_kept * self.views + np.arange(n_held)
                    per_image = np.empty((len(flags), self.views), np.int64)
                    per_image[~flags], per_image[flags] = kept, lone[:, None]
                    batch_labels = np.concatenate(
                        [*([batch_labels[~flags]] * self.views), batch_labels[flags]]
                    )
                else:
                    outs = run(images)
                    per_image = (rows + np.arange(len(flags)))[:, None]
                image_rows.append(per_image)
                held.append(flags)
                sums.append(pixel_sums)
                labels.append(batch_labels)
                rows += int(outs[0].shape[0])
                size = sum(int(o.shape.num_elements()) * o.dtype.size for o in outs)
                if not handles and in_memory + size > budget:
                    handles = self._spill(chunks, directory)
                    logger.info("feature cache over %d bytes: spilling to %s", budget, self.paths)
                for i, out in enumerate(outs):
                    if handles:
                        handles[i].write(out.numpy().tobytes())
                    else:
                        chunks[i].append(out)  # kept as tensors: no copy until the end
                in_memory += 0 if handles else size
                self._specs = [(tuple(o.shape[1:]), o.dtype.as_numpy_dtype) for o in outs]
        except BaseException:
            for handle in handles:
                handle.close()
            self.close()
            raise
        finally:
            quiet.close()
        for handle in handles:
            handle.close()
        if rows == 0 and shard is None:
            raise DataError("The dataset is empty; there is nothing to train on.")
        if rows == 0:  # an empty shard: judged by all the workers together (training.py)
            self._empty(prefix, dataset, every_sum, every_label)
            return
        self.labels = np.concatenate(labels)
        self._tensors: list[tf.Tensor] = []
        if handles:
            self.features: list[np.ndarray] = [
                np.memmap(path, dtype=dtype, mode="r", shape=(rows, *shape))
                for path, (shape, dtype) in zip(self.paths, self._specs, strict=True)
            ]
        else:
            self._tensors = [tf.concat(c, axis=0) if len(c) > 1 else c[0] for c in chunks]
            self.features = [t.numpy() for t in self._tensors]
        flags = np.concatenate(held)
        # The parts list their images in an order of their content (pixel sum, then
        # label), not of the pass: a dataset that shuffles itself stores its images in
        # another order at each pass, and a resumed fit's epoch-keyed shuffle of the rows
        # must pick the same images as the uninterrupted fit's did.
        label_key = _label_key(np.concatenate(image_labels))
        canonical = np.lexsort((label_key, np.concatenate(sums)))
        by_image = np.concatenate(image_rows)[canonical]
        in_order = flags[canonical]
        #: A digest of the content keys and labels of every image read, whatever the
        #: order of the pass: the workers of one multi-worker fit compare theirs.
        self.digest = (
            _digest(np.concatenate(sums), label_key)
            if shard is None
            else _digest(np.concatenate(every_sum), _label_key(np.concatenate(every_label)))
        )
        # With views, "train" and "all" hold one row per (image, view): (images, views).
        wide = self.views > 1
        self._parts: dict[str, np.ndarray] = {
            "all": by_image if wide else by_image[:, 0],
            "train": by_image[~in_order] if wide else by_image[~in_order, 0],
            "held_out": by_image[in_order, 0],
        }
        logger.info(
            "cached %d examples%s%s, features %s (%s)",
            self.count("all"),
            f" x {self.views} augmented views" if self.views > 1 else "",
            f" ({self.count('held_out')} held out)" if holdout else "",
            [tuple(shape) for shape, _ in self._specs],
            "on disk" if self.paths else "in memory",
        )

    def _empty(
        self,
        prefix: keras.Model,
        dataset: tf.data.Dataset,
        every_sum: list[np.ndarray],
        every_label: list[np.ndarray],
    ) -> None:
        """The state of a shard that holds no image."""
        label_spec = dataset.element_spec[1]
        self.labels = np.zeros((0, *label_spec.shape[1:]), label_spec.dtype.as_numpy_dtype)
        self._specs = [(tuple(o.shape[1:]), np.dtype(o.dtype)) for o in prefix.outputs]
        self._tensors = [tf.zeros((0, *shape), dtype) for shape, dtype in self._specs]
        self.features = [t.numpy() for t in self._tensors]
        rows = np.zeros((0, self.views) if self.views > 1 else (0,), np.int64)
        self._parts = {"all": rows, "train": rows, "held_out": np.zeros((0,), np.int64)}
        self.digest = _digest(
            np.concatenate(every_sum) if every_sum else np.zeros(0),
            _label_key(np.concatenate(every_label)) if every_label else np.zeros(0),
        )

    def _views_of(
        self, images: tf.Tensor, flags: np.ndarray, run: Any, run_view: Any, n_out: int
    ) -> list[tf.Tensor]:
        """One batch's outputs: `views` augmented views of its kept images (the prefix once
        per view), then its held-out images (`flags`) as they are (validation is never
        augmented)."""
        parts = []
        if not flags.all():
            kept = tf.boolean_mask(images, ~flags)
            parts = [run_view(kept) for _ in range(self.views)]
        if flags.any():
            parts.append(run(tf.boolean_mask(images, flags)))
        return [tf.concat([p[i] for p in parts], 0) for i in range(n_out)]

    def _spill(self, chunks: list[list[Any]], directory: str | None) -> list[Any]:
        handles = []
        for i, pending in enumerate(chunks):
            fd, path = tempfile.mkstemp(prefix=_spill_prefix(), suffix=".features", dir=directory)
            self.paths.append(path)
            handle = os.fdopen(fd, "wb")
            for chunk in pending:
                handle.write(np.asarray(chunk).tobytes())
            chunks[i] = []
            handles.append(handle)
        return handles

    def __len__(self) -> int:
        return self.count("all")

    def count(self, part: Part = "train") -> int:
        """Examples in a part: `"all"`, `"train"` (not held out) or `"held_out"`."""
        return len(self._parts[part])

    def held_out_mask(self) -> np.ndarray:
        """One bool per example: whether the content split holds it out."""
        mask = np.zeros(len(self.labels), bool)
        mask[self._parts["held_out"]] = True
        return mask

    @property
    def spilled(self) -> bool:
        return bool(self.paths)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored features (all outputs)."""
        return int(sum(f.nbytes for f in self.features))

    def dataset(
        self,
        *,
        shuffle: bool,
        seed: int | None = None,
        output: int = 0,
        part: Part = "train",
        batch_size: int | None = None,
        replicas: int = 1,
        slots: Slots | None = None,
    ) -> tf.data.Dataset:
        """Batches of `(features, labels)` of one part, reshuffled every epoch when `shuffle`.

        Only indices are shuffled; each batch gathers its rows from the stored arrays.
        Inside a fit, epoch `e`'s order depends only on `(seed, e)` and the images'
        content, so a resumed fit draws the orders of an uninterrupted one.
        `batch_size` defaults to the batch size of the dataset the features came from.
        With `replicas`, every batch is cut down to a multiple of them (see
        `training.Settings.for_replicas`). With `slots` (a shard's cache in a
        multi-worker fit), every batch is a full global batch of `batch_size` (a
        multiple of the replicas) with this worker's rows in its own pieces. The batches
        are read without tf.data's autotuning (see `untuned`); what you chain onto
        them inherits that, unless you set `autotune.enabled` again.
        """
        index = self._parts[part]
        n = len(index)
        size = batch_size or self.batch_size
        length = None
        if slots is not None:
            local = size // slots.workers
            length = slots.steps * local
        orders = EpochOrders(seed) if (shuffle or index.ndim == 2) and n > 0 else None
        if orders is not None:  # orders (and views) keyed by (seed, epoch) in a fit: _orders.py
            ds = orders.rows(index, permute=shuffle, length=length)
        else:
            rows = index if length is None else np.resize(index, length)
            ds = tf.data.Dataset.from_tensor_slices(rows)
        ds = ds.batch(size if slots is None else local)
        batches = -(-n // size) if slots is None else slots.steps
        if replicas > 1 and slots is None:
            ds = ds.map(lambda rows: rows[: tf.shape(rows)[0] // replicas * replicas])
            ds = ds.filter(lambda rows: tf.shape(rows)[0] > 0)
            batches = n // size + (1 if n % size >= replicas else 0)
        if self._tensors:
            features = self._tensors[output]
            labels = tf.constant(self.labels)

            def take(rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return tf.gather(features, rows), tf.gather(labels, rows)

            ds = ds.map(take)
        else:
            ds = ds.map(self._reader(output))
        if slots is not None:
            ds = ds.map(functools.partial(_into_slots, slots=slots, size=size))
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(
            tf.data.AUTOTUNE
        )
        ds = untuned(ds)  # Keras makes an iterator an epoch: each deletion waited too
        return attach(ds, orders) if orders is not None else ds

    def _reader(self, output: int) -> Any:
        shape, dtype = self._specs[output]
        features, labels = self.features[output], self.labels

        def gather(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            order = np.argsort(rows)  # sequential reads from the file, then the batch's order
            picked = np.empty((len(rows), *shape), dtype)
            picked[order] = features[rows[order]]
            return picked, labels[rows]

        def load(rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x, y = tf.numpy_function(
                gather, [rows], [tf.as_dtype(dtype), tf.as_dtype(labels.dtype)]
            )
            x.set_shape((None, *shape))
            y.set_shape((None, *labels.shape[1:]))
            return x, y

        return load

    def close(self) -> None:
        """Drops the stored features and removes the spilled files, if any."""
        self.features = []
        self._tensors = []
        for path in self.paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        self.paths = []

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Steps on stored features are tiny; several run per call to cut Keras' per-step overhead
#: (the updates are the same, one batch per step).
STEPS_PER_CALL = 16


class ProgressBar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, counting real steps, redrawn only where that shows.

    With several steps per call, Keras reports each call's last step as
    `first + steps_per_execution - 1`, which overshoots a short epoch (`16/13`). And
    Keras redraws its bar with backspaces on any POSIX system, so a log file or CI
    gets every update of every epoch. This bar (built on the public
    `keras.utils.Progbar`) redraws on a terminal or in a notebook, and elsewhere
    writes one line per epoch. A subclass of `ProgbarLogger`, so Keras adds no other.
    """

    def __init__(self) -> None:
        super().__init__()
        self._bar: keras.utils.Progbar | None = None
        self._redraw = _redraws()
        self._seen = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._bar = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epochs = self.epochs  # ProgbarLogger.set_params keeps epochs, steps and verbose
        if self.verbose and epochs > 1:
            say(f"Epoch {epoch + 1}/{epochs}")  # as Keras' own bar does
        self._bar = keras.utils.Progbar(
            target=self.target,
            verbose=self.verbose,
            unit_name="step",
            stateless_metrics=set(),  # Keras' logs are running means already, as in Keras' bar
        )
        structure.set_redrawing(self._bar, self._redraw)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        target = self.target
        seen = batch + 1 if target is None else min(batch + 1, target)
        self._seen = seen
        if self._bar is not None and self._redraw and self.verbose == 1:
            self._bar.update(seen, list((logs or {}).items()), finalize=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            target = self.target or self._seen
            self._bar.target = target
            self._bar.update(target, list((logs or {}).items()), finalize=True)

    # Validation inside fit reports through on_epoch_end; nothing else draws a bar here.
    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        pass


def say(message: str) -> None:
    """Prints the way Keras prints its progress: to stdout, or to the log when Keras'
    interactive logging is off (`keras.utils.disable_interactive_logging()`)."""
    if keras.utils.is_interactive_logging_enabled():
        print(message, flush=True)
    else:
        logger.info(message)


def _redraws() -> bool:
    import sys

    stdout = sys.stdout
    return bool(getattr(stdout, "isatty", lambda: False)()) or "ipykernel" in sys.modules


class _StopForwarder(keras.callbacks.Callback):
    """Carries `stop_training`, set by a callback on the full model, to the trainer."""

    def __init__(self, watched: keras.Model, trainer: keras.Model) -> None:
        super().__init__()
        self.watched, self.trainer = watched, trainer

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.watched.stop_training = False

    def _forward(self) -> None:
        if self.watched.stop_training:
            self.trainer.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._forward()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._forward()


#: `_EagerValidation` holds at most this many bytes of stored validation features;
#: beyond, Keras' own validation runs, batch by batch.
EAGER_VALIDATION_BYTES = 32 * 2**20

#: The eager validation's chunks hold at most this many bytes of the trainer's largest
#: activation (rows x its bytes per row).
EAGER_ACTIVATION_BYTES = 64 * 2**20

_TEST_HOOKS = ("on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end")


def overrides(callback: keras.callbacks.Callback, hook: str) -> bool:
    """Whether `callback` does something at `hook`: a method of its class, or one set on
    the instance (`keras.callbacks.LambdaCallback(on_test_begin=...)`)."""
    method = getattr(callback, hook, None)
    return getattr(method, "__func__", method) is not getattr(keras.callbacks.Callback, hook)


class _EagerValidation(keras.callbacks.Callback):
    """Validation on stored features: the trainer's `test_step`, run eagerly, per epoch.

    Keras' `fit` validates through `evaluate`, which traces a test function for every
    model it trains and makes a new iterator every epoch. On stored features a trainer
    is a few layers and the held-out set a few batches, so that was most of the cost:
    on the 350 flowers (70 held out) at 160 px, a phase's first validation took
    0.14-0.29 s (the trace and TensorFlow's optimization of the graph) and each later
    one 12-25 ms, 0.5-0.6 s of a 4.4 s fine-tune (benchmarks/bench_fixed_costs.py,
    docs/benchmarks.md). Here the held-out features are read once and joined, and each
    epoch runs the trainer's own `test_step` eagerly on them, nothing traced. One eager
    step costs about what a traced one does plus Python for every layer (about 20 ms
    for the last two MobileNetV2 blocks), so the features run in as few steps as memory
    allows: chunks of
    `EAGER_ACTIVATION_BYTES` of the trainer's largest activation (all 70 or 398
    held-out flowers at once); run batch by batch, the fine-tune phase's eager
    validation had cost 57-69 ms an epoch against Keras' 20-25 ms.

    The losses and metrics are Keras' own, as `evaluate` reports them with a
    `validation_batch_size` of the chunk: the same values for metrics of each image (a
    mean loss, accuracy, AUC); a metric that returns one number per batch averages
    over chunks instead of batches. It goes first in the callback list and adds its
    results to the epoch's logs, which Keras hands to every callback in turn, so
    `EarlyStopping`, `CSVLogger`, the history and the bar see them as they see Keras'
    own. `of` keeps Keras' validation where it could differ otherwise: under a
    distribution strategy; with a callback that acts on the test hooks (TensorBoard);
    for a trainer of several outputs (Keras weighs their per-output losses by batch
    size when eager, not when traced); beyond `EAGER_VALIDATION_BYTES` of features.
    """

    def __init__(self, trainer: keras.Model, chunks: list[Any]) -> None:
        super().__init__()
        self._trainer, self._chunks = trainer, chunks
        self._last: dict[str, Any] = {}

    @classmethod
    def of(
        cls,
        trainer: keras.Model,
        validation: tf.data.Dataset,
        callbacks: Sequence[keras.callbacks.Callback],
    ) -> _EagerValidation | None:
        """The callback for `validation`, or None where Keras' own validation should run."""
        if tf.distribute.has_strategy() or (
            trainer.distribute_strategy is not tf.distribute.get_strategy()
        ):
            return None
        if len(trainer.outputs) != 1:
            return None
        if any(
            overrides(callback, hook)
            for callback in callbacks
            if not isinstance(callback, keras.callbacks.ProgbarLogger)
            for hook in _TEST_HOOKS
        ):
            return None
        batches: list[Any] = []
        size = 0
        for batch in untuned(validation):
            size += sum(int(np.prod(t.shape)) * t.dtype.size for t in tf.nest.flatten(batch))
            if size > EAGER_VALIDATION_BYTES:
                return None
            batches.append(batch)
        if not batches:
            return None
        largest = structure.largest_output_bytes(trainer)
        if largest is None:  # sizes unknown: Keras' own batches
            return cls(trainer, batches)
        rows = max(1, EAGER_ACTIVATION_BYTES // largest)
        joined = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *batches)
        total = int(tf.nest.flatten(joined)[0].shape[0])
        chunks = [
            tf.nest.map_structure(lambda t, start=start: t[start : start + rows], joined)
            for start in range(0, total, rows)
        ]
        return cls(trainer, chunks)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Keras' evaluate does the same: reset the metrics, run test steps, read them. The
        # epoch's training results are in the logs already; the next epoch resets again.
        self._trainer.reset_metrics()
        for chunk in self._chunks:
            results = self._trainer.test_step(chunk)
        self._last = {f"val_{name}": _plain(value) for name, value in results.items()}
        if logs is not None:
            logs.update(self._last)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:  # Keras' own end-of-training logs carry the last validation
            logs.update(self._last)


def _plain(value: Any) -> Any:
    """A scalar tensor as a Python float, as Keras' callbacks receive logs."""
    array = np.asarray(value)
    return float(array) if array.ndim == 0 else array


def fit_on_features(
    trainer: keras.Model,
    train: tf.data.Dataset,
    *,
    epochs: int,
    initial_epoch: int = 0,
    validation: tf.data.Dataset | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: Any = "auto",
    model: keras.Model | None = None,
    steps_per_execution: int = STEPS_PER_CALL,
) -> keras.callbacks.History:
    """Trains a split's trainer on stored features, as `model.fit` would train the model.

    The trainer must be compiled (with the full model's optimizer, so that callbacks
    which change the learning rate reach it). Callbacks see `model` (the full model)
    when given, not the trainer: `ModelCheckpoint` saves the full model, `EarlyStopping`
    restores its weights, `ReduceLROnPlateau` changes its optimizer's rate, and a
    `stop_training` they set stops this fit. Keras' `fit` would hand them the model it
    trains; it takes a `CallbackList` as given, which is how they get the full model.

    Args:
        trainer: `Split.trainer`, compiled.
        train: batches of `(features, labels)` (e.g. `FeatureCache.dataset(...)`).
        epochs: index of the last epoch + 1, as in `keras.Model.fit`.
        initial_epoch: the epoch to start at.
        validation: batches of stored validation features. Up to
            `EAGER_VALIDATION_BYTES` of them, for a trainer of one output, outside a
            distribution strategy and without a callback that acts on test hooks, each
            epoch scores them with eager `test_step`s on as few chunks as
            `EAGER_ACTIVATION_BYTES` allows, instead of Keras' traced `evaluate`.
        callbacks: Keras callbacks.
        verbose: as in `keras.Model.fit` (`"auto"` is 1).
        model: the model the callbacks see (default: the trainer).
        steps_per_execution: training steps per call of the traced function.

    Returns:
        The `History` of the run.

    Example:
        >>> split = split_frozen_prefix(model)
        >>> with FeatureCache(split.prefix, train_ds) as cache:
        ...     compile_for(split.trainer, learning_rate=1e-3)
        ...     fit_on_features(split.trainer, cache.dataset(shuffle=True), epochs=5)
    """
    watched = trainer if model is None else model
    verbose = 1 if verbose == "auto" else verbose
    steps = int(train.cardinality())
    trainer.steps_per_execution = steps_per_execution
    history = keras.callbacks.History()
    first: list[keras.callbacks.Callback] = []
    if validation is not None:
        eager = _EagerValidation.of(trainer, validation, callbacks)
        if eager is not None:  # Keras' fit then validates nothing itself
            first, validation = [eager], None
    extra: list[keras.callbacks.Callback] = [history]
    if verbose:
        extra.append(ProgressBar())
    if watched is not trainer:
        extra.append(_StopForwarder(watched, trainer))
    callback_list = keras.callbacks.CallbackList(
        [*first, *callbacks, *extra],
        model=watched,
        verbose=verbose,
        epochs=epochs,
        steps=steps if steps > 0 else None,
    )
    trainer.history = history  # Keras' fit returns the trainer's own, which callbacks set
    distribute.prepare_model(trainer)
    trainer.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=callback_list,
        verbose=verbose,
        shuffle=False,  # the index dataset reshuffles itself
    )
    history.set_model(watched)
    return history
