"""Which `tf.distribute` strategies `fit` can train under, checked before any image is read.

Keras 3 (up to 3.15 at least) cannot run `model.fit` under a
`MultiWorkerMirroredStrategy` that spans more than one worker: it builds the model
from `strategy.reduce("MEAN", first_batch)`, which the multi-worker strategy cannot
reduce for a batch of several tensors, and it reduces every step's scalar logs along
axis 0 (keras-team/keras#20585, tensorflow/tensorflow#72388). A fit would fail with a
raw `PerReplica` error on every worker after loading the data, so it is refused here
with what to use instead. A `MultiWorkerMirroredStrategy` of ONE worker (no
`TF_CONFIG`, or a cluster of one) trains, cached or not, like `MirroredStrategy`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from finetunekit.errors import ConfigError

__all__ = ["workers", "check_strategy"]


def workers(strategy: tf.distribute.Strategy | None) -> int:
    """Worker processes the strategy trains across (1 without a cluster)."""
    resolver: Any = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec()
    return max(1, sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker")))


def check_strategy(strategy: tf.distribute.Strategy | None) -> None:
    """Refuses a strategy Keras' `fit` cannot train under (see the module's docstring).

    Raises:
        ConfigError: a `MultiWorkerMirroredStrategy` across more than one worker.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    count = workers(strategy)
    if count > 1:
        raise ConfigError(
            f"MultiWorkerMirroredStrategy across {count} workers: Keras {keras.__version__}'s "
            "model.fit cannot train under it (it fails reducing the first batch and each "
            "step's logs across workers: keras-team/keras#20585). Train on one machine: "
            "MirroredStrategy() over its GPUs, or MultiWorkerMirroredStrategy() without "
            "TF_CONFIG (one worker)."
        )
