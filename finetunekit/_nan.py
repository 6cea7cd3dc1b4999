"""Stopping at the first NaN loss with an error that says what was NaN.

Keras' `TerminateOnNaN` stops training quietly (it sets `stop_training`), so a fit
returns as if it had finished, with a model of NaN weights. finetunekit checks the
inputs first (NaN pixels and labels are refused by `finetunekit.data` before or
while they are read), so a NaN loss that remains comes from the training itself: a
learning rate too high, or float16 overflowing. This callback raises instead, naming
the phase, the epoch and batch, and the likely cause.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from finetunekit.errors import TrainingDivergedError

__all__ = ["RaiseOnNaN"]


class RaiseOnNaN(keras.callbacks.TerminateOnNaN):
    """Raises `TrainingDivergedError` at the first batch whose loss is NaN or infinite.

    Args:
        phase: the phase's name, for the message.
        learning_rate: the phase's learning rate, for the message.

    Example:
        >>> model.fit(x, y, callbacks=[RaiseOnNaN("head", 1e-3)])
    """

    def __init__(self, phase: str = "train", learning_rate: float | None = None) -> None:
        super().__init__()
        self.phase = phase
        self.learning_rate = learning_rate
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = float(loss)
        if math.isfinite(value):
            return
        policy = keras.config.dtype_policy().name
        rate = f" (lr {self.learning_rate:g})" if self.learning_rate is not None else ""
        if "float16" in policy:
            cause = (
                f"The dtype policy is {policy!r}: float16 overflows here. Train in float32 "
                "(keras.config.set_dtype_policy('float32')), or use 'mixed_bfloat16'."
            )
        else:
            cause = (
                "The images and labels were checked and hold no NaN, so the training "
                f"diverged: lower the learning rate{rate} (e.g. by 10x)."
            )
        raise TrainingDivergedError(
            f"The loss became {value} in epoch {self._epoch + 1} of the {self.phase} phase; "
            f"training stopped. {cause}"
        )
