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

import threading
from typing import Any

import keras
import numpy as np
import tensorflow as tf

_ATTRIBUTE = "_finetunekit_orders"


class EpochOrders:
    """Permutations of `0..n-1`, one per epoch (or per iteration outside a fit).

    Args:
        seed: seed of every permutation; a random one when None.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = int(np.random.default_rng().integers(2**31)) if seed is None else int(seed)
        #: The epoch whose order the next iteration draws; None: the next of its own.
        self.epoch: int | None = None
        self._drawn = 0
        self._lock = threading.Lock()

    def _permutation(self, n: np.ndarray) -> np.ndarray:
        with self._lock:
            if self.epoch is None:
                key, self._drawn = self._drawn, self._drawn + 1
            else:
                key = self.epoch
        return np.random.default_rng([self.seed, key]).permutation(int(n)).astype(np.int64)

    def indices(self, n: int) -> tf.data.Dataset:
        """`0..n-1` in a new order at every iteration (of the epoch set, when one is)."""

        def order(_: tf.Tensor) -> tf.Tensor:
            rows = tf.numpy_function(self._permutation, [tf.constant(n, tf.int64)], tf.int64)
            rows.set_shape((n,))
            return rows

        # The order is drawn when the iteration reads its first element (after Keras'
        # on_epoch_begin), not when an iterator is made.
        rows = tf.data.Dataset.from_tensors(0).map(order).unbatch()
        return rows.apply(tf.data.experimental.assert_cardinality(n))


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
