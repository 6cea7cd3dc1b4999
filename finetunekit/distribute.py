"""Training across workers: what `fit` adds to Keras under `MultiWorkerMirroredStrategy`.

Keras 3 (up to 3.15 at least) cannot run `model.fit` under a
`MultiWorkerMirroredStrategy` that spans more than one worker, for two reasons that are
both in its TensorFlow trainer (keras-team/keras#20585, tensorflow/tensorflow#72388):

1. Before the first step it builds the model from `strategy.reduce("MEAN",
   first_batch)`, a collective over a batch of several tensors that fails with a raw
   `PerReplica` error. The build needs only the shapes and dtypes of one batch, so
   `prepare_model` builds from this worker's own part of the batch instead: no
   collective, the same variables.
2. It reduces every step's logs with `strategy.reduce("MEAN", logs, axis=0)`, which
   fails for the scalar losses and metrics every step returns ("Invalid reduction
   dimension 0 for input with 0 dimensions"). `prepare_model` makes the training and
   test steps return each scalar as a vector of one; the reduce then averages the
   replicas' values into one scalar, the same on every worker (as `MirroredStrategy`
   does on one machine).

Both are patches of one model instance, applied only across several workers; the rest
of the step (gradients all-reduced across workers, variables mirrored) is Keras' own.

Cached, the frozen layers' pass is split: each worker stores the features of its own
shard of the training images (`caching.in_shard`, by content) and fills its pieces of
every global batch from it (`caching.Slots`); `placement` and `gather_counts` tell each
worker where its pieces go and how many steps every worker makes.

Every worker must see the same data: the shuffles of `fit` are drawn from one seed,
which the workers agree on (`shared_seed`: worker 0's, when none is given), and
`check_same_data` stops a fit whose workers were handed different images.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from finetunekit import _orders
from finetunekit.errors import ConfigError, DataError

__all__ = [
    "workers",
    "is_multi_worker",
    "prepare_model",
    "placement",
    "gather_counts",
    "shared_seed",
    "together",
    "by_batches",
    "check_same_data",
]

#: Set on a model once `prepare_model` has patched it.
_PATCHED = "_finetunekit_multi_worker"


def workers(strategy: tf.distribute.Strategy | None) -> int:
    """Worker processes the strategy trains across (1 without a cluster)."""
    resolver: Any = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec()
    return max(1, sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker")))


def is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` across several workers."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and workers(strategy) > 1


def prepare_model(model: keras.Model) -> keras.Model:
    """Lets Keras' `fit` and `evaluate` run `model` across workers (see the module's docstring).

    Does nothing unless the model was built under a multi-worker strategy; patches a
    model once.

    Args:
        model: a Keras model built under its `distribute_strategy`.

    Returns:
        The same model.
    """
    strategy = getattr(model, "distribute_strategy", None)
    if not is_multi_worker(strategy) or getattr(model, _PATCHED, False):
        return model

    def build_from_own_part(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, batches in iterator:
                batch = next(batches)
                data_batch = tf.nest.map_structure(_own_part(self.distribute_strategy), batch)
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(build_from_own_part, model)
    for name in ("train_step", "test_step"):
        setattr(model, name, _vector_logs(getattr(model, name)))
    setattr(model, _PATCHED, True)
    return model


def _own_part(strategy: tf.distribute.Strategy) -> Any:
    def part(value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return part


def _vector_logs(step: Any) -> Any:
    def wrapped(data: Any) -> Any:
        logs = step(data)
        if not isinstance(logs, dict):
            return logs
        return {
            key: tf.reshape(value, [1])
            if isinstance(value, (tf.Tensor, tf.Variable)) and value.shape.rank == 0
            else value
            for key, value in logs.items()
        }

    return wrapped


def _gather(strategy: tf.distribute.Strategy, values: list[int]) -> np.ndarray:
    """Every replica's `values` (int64), one row per replica, worker 0's first."""
    local = tf.constant([values], tf.int64)
    gathered = strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0)
    return np.asarray(gathered).reshape(-1, len(values))


def placement(strategy: tf.distribute.Strategy | None) -> tuple[int, int, int] | None:
    """`(this worker's position, workers, replicas per worker)`; None on one worker.

    The position is this worker's place in the order of `strategy.gather` (worker 0
    first), the order in which Keras hands out the pieces of a batch.
    """
    if not is_multi_worker(strategy):
        return None
    assert strategy is not None
    local = len(strategy.extended.worker_devices)
    token = int(np.random.default_rng().integers(2**62))
    rows = _gather(strategy, [token])[:, 0]
    first = int(np.flatnonzero(rows == token)[0])
    return first // local, len(rows) // local, local


def gather_counts(strategy: tf.distribute.Strategy | None, count: int) -> list[int]:
    """Every worker's `count`, worker 0's first (`[count]` on one worker)."""
    if not is_multi_worker(strategy):
        return [count]
    assert strategy is not None
    local = len(strategy.extended.worker_devices)
    return [int(c) for c in _gather(strategy, [count])[::local, 0]]


def shared_seed(strategy: tf.distribute.Strategy | None, seed: int | None) -> int | None:
    """The seed of the shuffles, the same on every worker.

    One worker: `seed` as given. Several: `seed` when every worker was given the same
    one; worker 0's random draw when none was. Decided from what every worker was
    given, so all of them return, or all raise.

    Raises:
        ConfigError: the workers were given different seeds (or some None, some not).
    """
    if not is_multi_worker(strategy):
        return seed
    assert strategy is not None
    drawn = _orders.draw_seed() if seed is None else int(seed)
    rows = _gather(strategy, [drawn, seed is None])
    unseeded = rows[:, 1].astype(bool)
    if unseeded.all():
        return int(rows[0, 0])
    if unseeded.any() or not np.all(rows[:, 0] == rows[0, 0]):
        given = ["None" if none else str(int(value)) for value, none in rows]
        raise ConfigError(
            f"The workers were given different seeds ({', '.join(given)}, worker 0 first): "
            "every worker must run the same FineTuner(seed=...)."
        )
    return seed


@contextlib.contextmanager
def together(strategy: tf.distribute.Strategy | None, what: str) -> Iterator[None]:
    """Runs a step of every worker's own (reading data, a pass): all go on, or all stop.

    A worker that failed alone would leave the others waiting forever at the next
    collective, so every worker reports whether its step failed: the failed worker
    raises its own error, the others a `DataError` that points to its log.

    Raises:
        DataError: another worker failed this step.
    """
    if not is_multi_worker(strategy):
        yield
        return
    assert strategy is not None
    failed: Exception | None = None
    try:
        yield
    except Exception as error:  # KeyboardInterrupt ends the process anyway
        failed = error
    flags = _gather(strategy, [failed is not None])[:, 0]
    if failed is not None:
        raise failed
    if flags.any():
        local = len(strategy.extended.worker_devices)
        who = sorted({int(i) // local for i in np.flatnonzero(flags)})
        raise DataError(
            f"Worker {', '.join(map(str, who))} failed {what}; its own log says why. Every "
            "worker stops here instead of waiting for it."
        )


def by_batches(dataset: tf.data.Dataset | None) -> tf.data.Dataset | None:
    """`dataset` shared among workers by batches (each its pieces of every batch).

    Keras leaves tf.data's AUTO policy, which shards a dataset of several files by
    files instead: other batch counts per worker, and the zeros of `caching.Slots` would
    be trained on.
    """
    if dataset is None:
        return None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


#: What `check_same_data` tells the user to do about different data.
_SAME_DATA = (
    "every worker must read the same images with the same labels (each shuffles and "
    "splits them alike, by the fit's seed). A dataset split or shuffled with seed=None "
    "differs per worker: pass the same seed= to from_directory (or "
    "keras.utils.image_dataset_from_directory)."
)


def check_same_data(
    strategy: tf.distribute.Strategy | None, key: int, what: str, fix: str = _SAME_DATA
) -> None:
    """Stops a multi-worker fit whose workers hold different data (`key`: its digest).

    Args:
        strategy: the fit's strategy (nothing is checked on one worker).
        key: this worker's digest of what must be the same everywhere.
        what: what the digest is of, for the message.
        fix: what to do about it, for the message.

    Raises:
        DataError: the workers' digests differ (on every worker alike).
    """
    if not is_multi_worker(strategy):
        return
    assert strategy is not None
    rows = _gather(strategy, [key & (2**62 - 1)])
    if not np.all(rows == rows[0]):
        raise DataError(f"The workers hold different {what}: {fix}")
