"""Running a frozen prefix once and training the rest on its outputs.

In a phase where the start of the base is frozen, every epoch pushes every
image through the same frozen layers and gets the same numbers back. Here the
frozen prefix runs once over the data; the layers after the cut train on the
stored outputs. The trainer model is built from the model's own layers
(shared, not copied), so training it trains the full model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from finetunekit import structure
from finetunekit.errors import DataError

__all__ = ["Split", "split_frozen_prefix", "joint_prefix", "FeatureCache", "random_layers_before"]

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


def _base_node(model: keras.Model, base: keras.Model) -> Any:
    for node in structure._ordered_nodes(model):
        if node.operation is base:
            return node
    raise ValueError(f"{base.name!r} is not called in {model.name!r}")  # pragma: no cover


def _replay(model: keras.Model, tensors: dict[int, Any]) -> dict[int, Any]:
    """Re-calls the model's layers on new tensors, from the mapped ones onwards.

    `tensors` maps `id(original KerasTensor)` to its replacement; nodes whose inputs
    are all mapped are called again (same layer objects, so weights are shared).
    """
    for node in structure._ordered_nodes(model):
        if node.is_input or not node.input_tensors:
            continue
        if any(id(t) in tensors for t in node.outputs):
            continue
        if any(id(t) not in tensors for t in node.input_tensors):
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        outputs = node.operation(*args, **kwargs)
        for original, new in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
            tensors[id(original)] = new
    return tensors


def _frozen_cut(base: keras.Model, trainable_ids: set[int]) -> tuple[int, Any] | None:
    """The last cut of `base` before its first trainable layer: (position, alive tensor).

    Returns `(len(nodes) - 1, base.output)` when nothing in the base trains, and None
    when the first block already trains (no frozen prefix to cache).
    """
    nodes = structure._ordered_nodes(base)
    ops = [node.operation for node in nodes]

    def trains(op: Any) -> bool:
        layers = structure.leaf_layers(op) if isinstance(op, keras.Model) else [op]
        return any(id(v) in trainable_ids for layer in layers for v in layer.weights)

    first = next((i for i, op in enumerate(ops) if trains(op)), None)
    if first is None:
        return len(nodes) - 1, base.output
    _, cuts = structure._graph_ops(base)
    before = [c for c in cuts if c < first]
    # A prefix without weights (input, preprocessing) is cheap to recompute: not worth storing.
    if not before or not any(_weighted(ops[: before[-1] + 1])):
        return None
    position = before[-1]
    produced = {id(t) for node in nodes[: position + 1] for t in node.outputs}
    alive = [t for node in nodes[position + 1 :] for t in node.input_tensors if id(t) in produced]
    return position, alive[0]


def _weighted(ops: list[Any]) -> list[Any]:
    return [
        layer
        for op in ops
        for layer in (structure.leaf_layers(op) if isinstance(op, keras.Model) else [op])
        if getattr(layer, "weights", None) and not structure.is_preprocessing(layer)
    ]


def random_layers_before(split: Split) -> list[str]:
    """Names of layers in the prefix that draw random numbers (dropout, noise, augmentation)."""
    return [
        layer.name
        for layer in structure.leaf_layers(split.prefix)
        if getattr(layer, "_seed_generators", None)
    ]


def split_frozen_prefix(model: keras.Model) -> Split | None:
    """Cuts a full model after the frozen prefix of its base.

    Args:
        model: a full model (base nested in it, called with `training=False`).

    Returns:
        The `Split`, or None when the base's first block trains (nothing to cache) or the
        model has no nested base.
    """
    base = structure.find_base(model)
    if base is model or not isinstance(model.output, keras.KerasTensor):
        return None
    trainable_ids = {id(v) for v in model.trainable_variables}
    found = _frozen_cut(base, trainable_ids)
    if found is None:
        return None
    position, cut_tensor = found
    base_out = _base_node(model, base).outputs[0]
    if cut_tensor is base.output:
        pooled = _pooled_split(model, base, base_out)
        if pooled is not None:
            return pooled
    features = keras.Input(
        shape=tuple(cut_tensor.shape[1:]), dtype=cut_tensor.dtype, name="cached_features"
    )
    if cut_tensor is base.output:
        prefix, after_base = base, features
        cut_name = base.name
    else:
        prefix = keras.Model(base.input, cut_tensor, name=f"{base.name}_frozen_prefix")
        inner = keras.Input(shape=tuple(cut_tensor.shape[1:]), dtype=cut_tensor.dtype)
        suffix_out = _replay(base, {id(cut_tensor): inner})[id(base.output)]
        suffix = keras.Model(inner, suffix_out, name=f"{base.name}_trainable_part")
        after_base = suffix(features, training=False)  # as in the full model: inference mode
        cut_name = structure._ordered_nodes(base)[position].operation.name
    outputs = _replay(model, {id(base_out): after_base})[id(model.output)]
    trainer = keras.Model(features, outputs, name=f"{model.name}_on_cached_features")
    return Split(prefix=prefix, trainer=trainer, cut=cut_name)


_POOLINGS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def _pooled_split(model: keras.Model, base: keras.Model, base_out: Any) -> Split | None:
    """With the whole base frozen, cut after the head's global pooling when it comes next.

    Pooling holds no weights and draws no random numbers, so its output can be stored
    instead of the feature maps: h*w times less memory (25x for 5x5 maps), same result.
    """
    consumers = [n for n in structure._ordered_nodes(model) if base_out in n.input_tensors]
    if len(consumers) != 1 or not isinstance(consumers[0].operation, _POOLINGS):
        return None
    node = consumers[0]
    pool = node.operation
    # A copy of the pooling layer (no weights), so the model's own layer gets no new call.
    pooled = pool.__class__.from_config(pool.get_config())(base.output)
    prefix = keras.Model(base.input, pooled, name=f"{base.name}_pooled")
    original = node.outputs[0]
    features = keras.Input(
        shape=tuple(original.shape[1:]), dtype=original.dtype, name="cached_features"
    )
    outputs = _replay(model, {id(original): features})[id(model.output)]
    trainer = keras.Model(features, outputs, name=f"{model.name}_on_cached_features")
    return Split(prefix=prefix, trainer=trainer, cut=pool.name)


def _batch_size(dataset: tf.data.Dataset) -> int:
    """The dataset's batch size: static when known, else the size of its first batch."""
    size = dataset.element_spec[0].shape[0]
    if size is None:
        first = next(iter(dataset.take(1)), None)
        size = 0 if first is None else int(tf.shape(first[0])[0])
    return int(size)


#: Traced inference functions per prefix and input signature: the training and validation
#: caches of one phase (or of both phases) run the same prefix, so they share one trace.
_TRACED: weakref.WeakKeyDictionary[keras.Model, dict[tf.TensorSpec, Any]] = (
    weakref.WeakKeyDictionary()
)


def _inference_function(prefix: keras.Model, dataset: tf.data.Dataset) -> Any:
    """`prefix` in inference mode as ONE traced function for every batch size.

    `predict_on_batch` traces once for the full batches and again for a smaller last
    batch; tracing a whole base costs about as much as running it over a few hundred
    small images, so the batch dimension is left open from the start, and the function
    is kept for the next dataset run through the same prefix.
    """
    spec = dataset.element_spec[0]
    shape = None if spec.shape.rank is None else (None, *spec.shape[1:])
    signature = tf.TensorSpec(shape, spec.dtype)
    traced = _TRACED.setdefault(prefix, {})
    if signature not in traced:
        model = weakref.ref(prefix)  # the cache must not keep the prefix alive

        @tf.function(input_signature=[signature], autograph=False)
        def run(images: tf.Tensor) -> Any:
            return model()(images, training=False)  # type: ignore[misc]

        traced[signature] = run
    return traced[signature]


def joint_prefix(first: Split, second: Split) -> keras.Model:
    """One model computing both splits' features in a single pass over the images.

    `second`'s cut must lie in `first`'s prefix (true when `first` freezes the whole base
    and `second` freezes its start): both outputs then come from the same frozen layers.
    """
    return keras.Model(first.prefix.input, [first.prefix.output, second.prefix.output])


class FeatureCache:
    """Outputs of a frozen prefix over a dataset, in memory up to a budget, else on disk.

    The prefix may have several outputs (e.g. the features of two phases' cuts, computed
    in one pass); `dataset(output=i)` serves the i-th. Use as a context manager so a
    spilled file is always removed:

    ```python
    with FeatureCache(split.prefix, train_ds) as cache:
        trainer.fit(cache.dataset(shuffle=True, seed=0), epochs=5)
    ```

    Args:
        prefix: the frozen model to run once.
        dataset: batched `(images, labels)`.
        budget: bytes kept in memory before spilling to temporary files.
        directory: where spilled files go (default: the system temp folder).
    """

    def __init__(
        self,
        prefix: keras.Model,
        dataset: tf.data.Dataset,
        *,
        budget: int = DEFAULT_BUDGET,
        directory: str | None = None,
    ) -> None:
        self.paths: list[str] = []
        self.batch_size = _batch_size(dataset)
        n_out = len(prefix.outputs)
        chunks: list[list[np.ndarray]] = [[] for _ in range(n_out)]
        handles: list[Any] = []
        labels: list[np.ndarray] = []
        in_memory = total = 0
        run = _inference_function(prefix, dataset)
        try:
            for images, batch_labels in dataset.prefetch(tf.data.AUTOTUNE):
                outs = [np.asarray(o) for o in keras.tree.flatten(run(images))]
                labels.append(np.asarray(batch_labels))
                total += len(outs[0])
                size = sum(o.nbytes for o in outs)
                if not handles and in_memory + size > budget:
                    handles = self._spill(chunks, directory)
                    logger.info("feature cache over %d bytes: spilling to %s", budget, self.paths)
                for i, out in enumerate(outs):
                    if handles:
                        handles[i].write(out.tobytes())
                    else:
                        chunks[i].append(out)
                in_memory += 0 if handles else size
                self._specs = [(o.shape[1:], o.dtype) for o in outs]
        except BaseException:
            for handle in handles:
                handle.close()
            self.close()
            raise
        for handle in handles:
            handle.close()
        if total == 0:
            raise DataError("The dataset is empty; there is nothing to train on.")
        self.labels = np.concatenate(labels)
        if handles:
            self.features: list[np.ndarray] = [
                np.memmap(path, dtype=dtype, mode="r", shape=(total, *shape))
                for path, (shape, dtype) in zip(self.paths, self._specs, strict=True)
            ]
        else:
            self.features = [np.concatenate(c) for c in chunks]
        logger.info(
            "cached %d examples, features %s (%s)",
            total,
            [tuple(shape) for shape, _ in self._specs],
            "on disk" if self.paths else "in memory",
        )

    def _spill(self, chunks: list[list[np.ndarray]], directory: str | None) -> list[Any]:
        handles = []
        for i, pending in enumerate(chunks):
            fd, path = tempfile.mkstemp(suffix=".features", dir=directory)
            self.paths.append(path)
            handle = os.fdopen(fd, "wb")
            for chunk in pending:
                handle.write(chunk.tobytes())
            chunks[i] = []
            handles.append(handle)
        return handles

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def spilled(self) -> bool:
        return bool(self.paths)

    def dataset(
        self, *, shuffle: bool, seed: int | None = None, output: int = 0
    ) -> tf.data.Dataset:
        """Batches of `(features, labels)`, reshuffled every epoch when `shuffle`."""
        n = len(self)
        features, labels = self.features[output], self.labels
        if not self.spilled:
            ds = tf.data.Dataset.from_tensor_slices((features, labels))
            if shuffle:
                ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
            return ds.batch(self.batch_size).prefetch(tf.data.AUTOTUNE)
        shape, dtype = self._specs[output]

        def gather(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            index = np.sort(index)  # sequential reads from the file
            return np.asarray(features[index]), labels[index]

        def load(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x, y = tf.numpy_function(
                gather, [index], [tf.as_dtype(dtype), tf.as_dtype(labels.dtype)]
            )
            x.set_shape((None, *shape))
            y.set_shape((None, *labels.shape[1:]))
            return x, y

        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return ds.batch(self.batch_size).map(load).prefetch(tf.data.AUTOTUNE)

    def close(self) -> None:
        """Removes the spilled files, if any."""
        self.features = []
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
