"""FineTuner under tf.distribute.MirroredStrategy over two logical CPU devices.

Logical devices must be configured before TensorFlow initializes its devices,
so the run happens in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import finetunekit as ftk

keras.utils.set_random_seed(0)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
tuner = ftk.FineTuner(
    "mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3), alpha=0.35,
    strategy=strategy,
)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
y = rng.integers(0, 3, 16)
history = tuner.fit(
    x, y, validation_data=(x[:8], y[:8]), head_epochs=1, finetune_epochs=1, unfreeze=1,
    batch_size=8, verbose=0,
)
variables = tuner.model.variables
report = {
    "replicas": strategy.num_replicas_in_sync,
    "devices": len(tf.config.list_logical_devices("CPU")),
    "variables": len(variables),
    # Keras 3 variables wrap the backend's: `.value` is the tf.Variable the strategy made
    "in_scope": sum(strategy.extended.variable_created_in_scope(v.value) for v in variables),
    "mirrored": sum(isinstance(v.value, tf.distribute.DistributedValues) for v in variables),
    "types": sorted({type(v.value).__name__ for v in variables}),
    "optimizer_in_scope": all(
        strategy.extended.variable_created_in_scope(v.value)
        for v in tuner.model.optimizer.variables
    ),
    "phases": history.phases,
    "loss": history.history["loss"],
    "val_loss": history.history["val_loss"],
}
print("REPORT " + json.dumps(report))
"""


def test_fit_under_mirrored_strategy_on_two_cpus(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line[len("REPORT ") :])
    assert report["devices"] == 2
    assert report["replicas"] == 2
    assert report["variables"] > 0
    # every model and optimizer variable was created under strategy.scope(), mirrored
    assert report["in_scope"] == report["variables"]
    assert report["mirrored"] == report["variables"], report["types"]
    assert report["optimizer_in_scope"]
    assert report["phases"] == ["head", "finetune"]
    for value in report["loss"] + report["val_loss"]:
        assert value == value and abs(value) < 1e6  # finite
