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
# Step by step, with an optimizer instance as the template: its copy is made in scope.
steps = ftk.FineTuner(
    "mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3), alpha=0.35,
    strategy=strategy,
)
steps.load_base().freeze().add_head().compile(1e-3, optimizer=keras.optimizers.SGD(momentum=0.9))
steps.train(x, y, epochs=1, batch_size=8, verbose=0)
report["steps_optimizer_in_scope"] = all(
    strategy.extended.variable_created_in_scope(v.value) for v in steps.model.optimizer.variables
)
print("REPORT " + json.dumps(report))
"""


def _report(script: str, tmp_path, *args: str) -> dict:
    """Runs `script` in a fresh interpreter (logical devices come first) and reads its REPORT."""
    # This checkout's finetunekit, whatever the environment has installed.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT ") :])


def test_fit_under_mirrored_strategy_on_two_cpus(tmp_path):
    report = _report(SCRIPT, tmp_path)
    assert report["devices"] == 2
    assert report["replicas"] == 2
    assert report["variables"] > 0
    # every model and optimizer variable was created under strategy.scope(), mirrored
    assert report["in_scope"] == report["variables"]
    assert report["mirrored"] == report["variables"], report["types"]
    assert report["optimizer_in_scope"]
    assert report["steps_optimizer_in_scope"]
    assert report["phases"] == ["head", "finetune"]
    for value in report["loss"] + report["val_loss"]:
        assert value == value and abs(value) < 1e6  # finite


PHASES_SCRIPT = r"""
import json, os, sys
import numpy as np
import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import finetunekit as ftk

root = sys.argv[1]
rng = np.random.default_rng(0)
for c in range(3):  # a real folder: 7, 8 and 9 PNG files
    os.makedirs(f"{root}/c{c}", exist_ok=True)
    for i in range(7 + c):
        tint = rng.uniform(0, 255, (1, 1, 3)) * (c + 1) / 3
        image = (rng.uniform(0, 60, (40, 40, 3)) + tint).clip(0, 255).astype("uint8")
        tf.io.write_file(f"{root}/c{c}/{i}.png", tf.io.encode_png(image))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def tuner(cache):
    return ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3),
                         alpha=0.35, strategy=strategy, cache=cache, seed=0)


report = {}
# Batches of 5 do not divide among 2 replicas, and the held-out split has odd sizes too.
for cache in (True, False):
    keras.utils.set_random_seed(0)
    train, _, names = ftk.data.from_directory(root, image_size=32, batch_size=5, seed=0)
    history = tuner(cache).fit(train, head_epochs=2, finetune_epochs=1, verbose=0)
    report[f"folder_{cache}"] = {
        "cached": [r.cached for r in history.reports],
        "phases": history.phases,
        "loss": history.history["loss"] + history.history["val_loss"],
    }

# The same data in one batch per epoch (order cannot matter): cached and uncached agree.
x = rng.uniform(0, 255, (20, 32, 32, 3)).astype("float32")
y = rng.integers(0, 3, 20)
weights = {}
for cache in (True, False):
    keras.utils.set_random_seed(0)
    t = tuner(cache)
    h = t.fit(x, y, validation_data=(x[:8], y[:8]), head_epochs=2, finetune_epochs=2,
              batch_size=32, dropout=0.0, early_stopping=False, verbose=0)  # one result
    initial = tuner(cache).load_base().base.get_layer("Conv_1").kernel.numpy()
    report[f"moved_{cache}"] = float(np.max(np.abs(
        t.base.get_layer("Conv_1").kernel.numpy() - initial)))
    weights[cache] = [w.numpy() for w in t.model.weights]
    report[f"arrays_{cache}"] = [r.cached for r in h.reports]
report["max_diff"] = max(
    float(np.max(np.abs(a - b))) for a, b in zip(weights[True], weights[False], strict=True)
)
print("REPORT " + json.dumps(report))
"""


def test_phases_under_mirrored_strategy_cached_and_not(tmp_path):
    report = _report(PHASES_SCRIPT, tmp_path, str(tmp_path / "photos"))
    # A folder whose batches do not divide among the replicas trains, cached or not.
    assert report["folder_True"]["cached"] == [True, True]
    assert report["folder_False"]["cached"] == [False, False]
    for key in ("folder_True", "folder_False"):
        assert report[key]["phases"] == ["head", "head", "finetune"]
        assert all(v == v and 0 < v < 1e3 for v in report[key]["loss"])  # finite
    assert report["arrays_True"] == [True, True] and report["arrays_False"] == [False, False]
    assert report["max_diff"] < 1e-4, report["max_diff"]
    assert report["moved_True"] > 1e-6  # the fine-tune phase trained the base: a real check


RATES_SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import finetunekit as ftk

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
y = rng.integers(0, 3, 32)
report = {}
for cache in (True, False):
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3), alpha=0.35,
        strategy=strategy, cache=cache, seed=0,
    )
    history = tuner.fit(
        x, y, head_epochs=2, finetune_epochs=2, lr_decay=0.5, warmup=1, batch_size=8, verbose=0,
    )
    optimizer = tuner.model.optimizer
    report[str(cache)] = {
        "optimizer": type(optimizer).__name__,
        "groups": len(optimizer.optimizers),
        "steps": [int(o.iterations.numpy()) for o in optimizer.optimizers],
        "in_scope": all(strategy.extended.variable_created_in_scope(v.value)
                        for v in optimizer.variables),
        "rates": history.history["learning_rate"],
    }
print("REPORT " + json.dumps(report))
"""


def test_per_block_rates_and_warmup_under_mirrored_strategy(tmp_path):
    report = _report(RATES_SCRIPT, tmp_path)
    for cache in ("True", "False"):
        run = report[cache]
        assert run["optimizer"] == "MultiOptimizer" and run["groups"] == 3
        assert len(set(run["steps"])) == 1 and run["steps"][0] > 0  # every group stepped
        assert run["in_scope"]
        assert run["rates"][0] == 0.0 and abs(run["rates"][1] - 1.5e-2) < 1e-6  # warm-up
