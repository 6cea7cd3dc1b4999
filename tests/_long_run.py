"""A tiny fit run in a subprocess by test_checkpoints.py, to be killed or interrupted.

    python tests/_long_run.py OUT_DIR=true|false ... [--stop-in EPOCH] [--budget BYTES]

Fits, once per OUT_DIR (cached or not), a tiny MobileNetV2 (random weights drawn
from RUN_SEED, 32 px) on 32 fixed images with
`checkpoint_dir=OUT_DIR/ckpt`. With `--stop-in E`, a callback writes `OUT_DIR/ready`
during epoch E (after its first training step, before the epoch's checkpoint) and
waits there to be killed (SIGKILL) or interrupted (SIGINT). At the end (or after a
Ctrl-C) it writes `OUT_DIR/result.npz`: the model's weights and the history.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import finetunekit as ftk  # noqa: E402

#: The call every run makes: 3 head epochs, then 4 fine-tune epochs, no early stop.
SETTINGS = dict(head_epochs=3, finetune_epochs=4, unfreeze=2, head_learning_rate=1e-2,
                finetune_learning_rate=1e-3, batch_size=8, early_stopping=True,
                patience=50, verbose=0)


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(32, 32, 32, 3)).astype("float32")
    y = np.arange(32) % 3
    x[y == 1] *= 0.5  # something to learn
    return x, y


class StopIn(keras.callbacks.Callback):
    """Signals readiness inside epoch `epoch`, then waits to be killed."""

    def __init__(self, epoch: int, ready: Path) -> None:
        super().__init__()
        self.epoch, self.ready, self.current = epoch, ready, -1

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.current = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.current == self.epoch:
            self.ready.write_text(str(os.getpid()))
            for _ in range(600):  # at most a minute: the test kills it long before
                time.sleep(0.1)


def fit(out: Path, cache: bool, stop_in: int | None, budget: int) -> bool:
    """One fit into `out`; returns whether it was interrupted."""
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(int(os.environ.get("RUN_SEED", "0")))
    x, y = data()
    tuner = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3),
                          alpha=0.35, cache=cache, seed=0, cache_budget=budget)
    callbacks = [] if stop_in is None else [StopIn(stop_in, out / "ready")]
    interrupted = False
    try:
        tuner.fit(x, y, checkpoint_dir=out / "ckpt", callbacks=callbacks, **SETTINGS)
    except KeyboardInterrupt:
        interrupted = True
    history = tuner.history
    np.savez(
        out / "result.npz",
        **{f"w{i}": v.numpy() for i, v in enumerate(tuner.model.weights)},
        history=json.dumps({"history": history.history, "phases": history.phases,
                            "epoch": history.epoch, "best_epoch": history.best_epoch,
                            "interrupted": interrupted}),
    )
    keras.backend.clear_session()
    return interrupted


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="OUT_DIR=true|false (cache), one fit each")
    parser.add_argument("--stop-in", type=int, default=None)
    parser.add_argument("--budget", type=int, default=1 << 30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    interrupted = False
    for spec in args.runs:
        out, _, cache = spec.partition("=")
        interrupted |= fit(Path(out), cache != "false", args.stop_in, args.budget)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
