"""Shuffle orders keyed by the epoch, so a resumed run draws the orders it would have drawn.

`tf.data`'s `shuffle(seed=s, reshuffle_each_iteration=True)` draws the order of its
n-th iteration from a generator that lives in the dataset object: a new process (a
resumed run) starts that sequence again, and Keras creates more iterators per epoch
than it reads (one at the start of each epoch and one at its end), so the count is not
even a stable function of the epoch. Here the order of epoch `e` is a permutation
drawn from `(seed, e)` alone; the epoch comes from `FollowEpochs`, a callback every
phase of a fit carries. Outside a fit (no epoch set) each iteration draws the next
order of its own sequence, as `shuffle` does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

_ATTRIBUTE = "_finetunekit_orders"


def draw_seed(high: int = 2**31) -> int:
    """A seed drawn from NumPy's global generator, which `keras.utils.set_random_seed`
    seeds: as Keras' own loaders draw theirs, so a seeded process repeats itself."""
    return int(np.random.randint(high, dtype=np.int64))


class EpochOrders:
    """Permutations of `0..n-1`, one per epoch (or per iteration outside a fit).

    Args:
        seed: seed of every permutation; a random one when None.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = draw_seed() if seed is None else int(seed)
        #: The epoch whose order the next iteration draws; None: the next of its own.
        self.epoch: int | None = None
        self._drawn = 0
        self._lock = threading.Lock()

    def _generator(self) -> np.random.Generator:
        with self._lock:
            if self.epoch is None:
                key, self._drawn = self._drawn, self._drawn + 1
            else:
                key = self.epoch
        return np.random.default_rng([self.seed, key])

    def indices(self, n: int) -> tf.data.Dataset:
        """`0..n-1` in a new order at every iteration (of the epoch set, when one is)."""
        return self.rows(np.arange(n, dtype=np.int64))

    def rows(
        self, index: np.ndarray, *, permute: bool = True, length: int | None = None
    ) -> tf.data.Dataset:
        """The entries of `index`, in a new order at every iteration when `permute`.

        A 2-D `index` (one row per image, one column per stored augmented view) gives
        one entry per image: a view drawn afresh at every iteration, from the same
        `(seed, epoch)` as the order, so a resumed fit draws the same views too.
        `length` (at least `len(index)`) pads the order by starting it over, as
        PyTorch's `DistributedSampler` pads a shard.
        """
        index = np.asarray(index, np.int64)
        n = len(index)
        size = n if length is None else length

        def pick(_: np.ndarray) -> np.ndarray:
            rng = self._generator()
            order = rng.permutation(n) if permute else np.arange(n)
            if index.ndim == 1:
                picked = index[order]
            else:
                picked = index[order, rng.integers(index.shape[1], size=n)]
            return np.resize(picked, size)

        def draw(_: tf.Tensor) -> tf.Tensor:
            picked = tf.numpy_function(pick, [tf.constant(0, tf.int64)], tf.int64)
            picked.set_shape((size,))
            return picked

        # The order is drawn when the iteration reads its first element (after Keras'
        # on_epoch_begin), not when an iterator is made.
        picked = tf.data.Dataset.from_tensors(0).map(draw).unbatch()
        return picked.apply(tf.data.experimental.assert_cardinality(size))


def attach(dataset: tf.data.Dataset, orders: EpochOrders) -> tf.data.Dataset:
    """Marks `dataset` as drawing its orders from `orders` (see `orders_of`)."""
    setattr(dataset, _ATTRIBUTE, orders)
    return dataset


def orders_of(dataset: Any) -> EpochOrders | None:
    """The `EpochOrders` a dataset made by finetunekit shuffles by, if any."""
    return getattr(dataset, _ATTRIBUTE, None)


class FollowEpochs(keras.callbacks.Callback):
    """Sets the epoch of the given datasets' orders at the start of every epoch."""

    def __init__(self, *datasets: Any) -> None:
        super().__init__()
        self.orders = [o for o in map(orders_of, datasets) if o is not None]

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for orders in self.orders:
            orders.epoch = epoch

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for orders in self.orders:
            orders.epoch = None


@contextlib.contextmanager
def following(*datasets: Any) -> Iterator[FollowEpochs]:
    """A `FollowEpochs` for a fit, whose epochs are let go however the fit ends.

    Keras calls `on_train_end` only when `fit` returns: after an exception or Ctrl-C
    inside an epoch the datasets would keep that epoch, and every later iteration
    outside a fit would draw the same order.
    """
    follow = FollowEpochs(*datasets)
    try:
        yield follow
    finally:
        follow.on_train_end()
