"""Long runs: checkpoints, resume after SIGKILL, Ctrl-C, stale spill files.

The kill tests run `tests/_long_run.py` in subprocesses: an uninterrupted reference
run, a run killed with SIGKILL inside a fine-tune epoch, and the same call again in a
process whose random state differs (so a restart from scratch would end elsewhere).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import finetunekit as ftk
from finetunekit import caching, checkpoints
from finetunekit.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "_long_run.py"
TIMEOUT = 240  # seconds for any one subprocess (they take 10-40 s on 2 shared cores)
KILL_IN = 4  # the second epoch of the fine-tune phase (3 head epochs come first)


def _start(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(JOB), *args],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _wait_ready(process: subprocess.Popen[bytes], ready: Path, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not ready.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it was stopped:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the run never reached the epoch it is stopped in")
        time.sleep(0.05)


def _result(folder: Path) -> tuple[list[np.ndarray], dict]:
    with np.load(folder / "result.npz") as stored:
        weights = [stored[f"w{i}"] for i in range(len(stored.files) - 1)]
        return weights, json.loads(str(stored["history"]))


def _spills(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".features")]


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    spill = tmp_path / "tmp"
    spill.mkdir()
    env = {"TMPDIR": str(spill), "RUN_SEED": "0"}
    runs = {"cached": "true", "uncached": "false"}
    reference = _start(*(f"{tmp_path / ('ref_' + k)}={c}" for k, c in runs.items()), env=env,
                       log=tmp_path / "ref.log")
    killed = {}
    for name, cache in runs.items():  # the cached one spills its features (budget 0)
        killed[name] = _start(f"{tmp_path / name}={cache}", "--stop-in", str(KILL_IN),
                              "--budget", "0", env=env, log=tmp_path / f"{name}.log")
    for name, process in killed.items():
        _wait_ready(process, tmp_path / name / "ready", tmp_path / f"{name}.log")
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=TIMEOUT) == -signal.SIGKILL
    left = len(_spills(spill))
    assert left, "the killed cached run left no spilled file: the test tests nothing"
    # Killed inside epoch 5 (the fine-tune phase's second): the checkpoint is epoch 4's.
    found = checkpoints.read(tmp_path / "cached" / "ckpt")
    assert found is not None
    state = found[0]
    assert (state["phase"], state["in_phase"]) == (1, 1)
    assert state["phases"] == ["head"] * 3 + ["finetune"]
    # The same call again, in a process whose random state differs (weights=None: a
    # restart from scratch would draw other initial weights and end elsewhere).
    resumed = _start(*(f"{tmp_path / k}={c}" for k, c in runs.items()), "--budget", "0",
                     env={**env, "RUN_SEED": "7"}, log=tmp_path / "resume.log")
    assert resumed.wait(timeout=TIMEOUT) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert reference.wait(timeout=TIMEOUT) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    log = (tmp_path / "resume.log").read_text()
    assert log.count("after epoch 4 (epoch 1 of the finetune phase)") == 2
    assert f"removed {left} feature files left by runs that were killed" in log
    assert _spills(spill) == []
    diffs = {}
    for name in runs:
        expected, expected_history = _result(tmp_path / f"ref_{name}")
        got, history = _result(tmp_path / name)
        assert len(got) == len(expected)
        diffs[name] = max(float(np.max(np.abs(a - b))) for a, b in zip(got, expected, strict=True))
        assert history["epoch"] == list(range(7))  # every epoch once
        assert history["phases"] == ["head"] * 3 + ["finetune"] * 4
        np.testing.assert_allclose(history["history"]["loss"], expected_history["history"]["loss"],
                                   atol=1e-5)
        assert history["best_epoch"] == expected_history["best_epoch"]
    print("max |resumed - uninterrupted| of the final weights:", diffs)
    assert diffs["cached"] <= 1e-5 and diffs["uncached"] <= 1e-5, diffs


def test_ctrl_c_keeps_the_best_weights_and_the_epochs_that_ran(tmp_path: Path) -> None:
    spill = tmp_path / "tmp"
    spill.mkdir()
    process = _start(f"{tmp_path / 'run'}=true", "--stop-in", str(KILL_IN), "--budget", "0",
                     env={"TMPDIR": str(spill)}, log=tmp_path / "run.log")
    _wait_ready(process, tmp_path / "run" / "ready", tmp_path / "run.log")
    assert _spills(spill)  # the features spilled: there is something to remove
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=TIMEOUT) == 130, (tmp_path / "run.log").read_text()[-3000:]
    log = (tmp_path / "run.log").read_text()
    assert "fit interrupted after 4 epochs" in log
    assert f"checkpoint_dir={str(tmp_path / 'run' / 'ckpt')!r} to resume after epoch 4" in log
    assert _spills(spill) == []  # the spilled features are gone
    weights, history = _result(tmp_path / "run")
    assert history["interrupted"] and history["epoch"] == [0, 1, 2, 3]
    assert history["phases"] == ["head"] * 3 + ["finetune"]
    # The model holds the best weights so far: those the checkpoint keeps as best.
    with np.load(tmp_path / "run" / "ckpt" / checkpoints.FILE) as stored:
        best = [stored[f"b{i}"] for i in range(len(weights))]
        state = json.loads(str(stored["state"]))
    assert history["best_epoch"] == state["best"]["epoch"]
    losses = history["history"]["val_loss"]
    assert state["best"]["epoch"] == int(np.argmin(losses))
    for a, b in zip(weights, best, strict=True):
        np.testing.assert_array_equal(a, b)


# -- in process: the refusals, a finished run, the files ---------------------------------


def _tuner() -> ftk.FineTuner:
    return ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3),
                         alpha=0.35, seed=0)


FIT = dict(head_epochs=1, finetune_epochs=1, batch_size=8, verbose=0)


def test_a_finished_run_returns_its_result_and_other_calls_are_refused(
    tmp_path: Path, tiny_images: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    x, y = tiny_images
    folder = tmp_path / "ckpt"
    first = _tuner()
    history = first.fit(x, y, checkpoint_dir=folder, **FIT)
    assert history.phases == ["head", "finetune"]
    again = _tuner()
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        repeated = again.fit(x, y, checkpoint_dir=folder, **FIT)
    assert "holds a finished run (2 epochs)" in caplog.text
    assert repeated.phases == history.phases and repeated.history == history.history
    assert [r.phase for r in repeated.reports] == ["head", "finetune"]
    for a, b in zip(first.model.weights, again.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(CheckpointError, match="head_epochs: stored 1, asked 2"):
        _tuner().fit(x, y, checkpoint_dir=folder, **{**FIT, "head_epochs": 2})
    with pytest.raises(CheckpointError, match="other data") as caught:
        _tuner().fit(x[::-1], y[::-1], checkpoint_dir=folder, **FIT)
    assert "delete" in str(caught.value) and "new checkpoint_dir" in str(caught.value)


def test_a_found_head_rate_is_stored_and_reused_on_resume(
    tmp_path: Path, tiny_images: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetunekit import lr_finder

    x, y = tiny_images
    folder = tmp_path / "ckpt"
    sweeps: list[float] = []
    real = lr_finder.Sweep.run

    def counted(self: lr_finder.Sweep, *args: Any) -> lr_finder.LRFinderResult:
        found = real(self, *args)
        sweeps.append(found.suggestion)
        return found

    monkeypatch.setattr(lr_finder.Sweep, "run", counted)
    first = _tuner().fit(x, y, checkpoint_dir=folder, **{**FIT, "head_learning_rate": "find"})
    assert len(sweeps) == 1
    stored = checkpoints.read(folder)
    assert stored is not None and stored[0]["extra"]["found_rate"] == pytest.approx(sweeps[0])
    assert stored[0]["call"]["recipe"]["head_learning_rate"] == "find"
    # The same call again: no second sweep (it would find another rate), the stored run.
    again = _tuner().fit(x, y, checkpoint_dir=folder, **{**FIT, "head_learning_rate": "find"})
    assert len(sweeps) == 1
    assert again.history == first.history


def test_resume_needs_a_checkpoint_and_a_folder(tmp_path: Path,
                                                tiny_images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = tiny_images
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        _tuner().fit(x, y, checkpoint_dir=tmp_path / "none", resume=True, **FIT)
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is a file"):
        _tuner().fit(x, y, checkpoint_dir=tmp_path / "file", **FIT)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / checkpoints.FILE).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="Could not read the checkpoint"):
        _tuner().fit(x, y, checkpoint_dir=tmp_path / "bad", **FIT)


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "c.npz"
    checkpoints.write_atomically(target, lambda h: np.savez(h, a=np.arange(3)))

    def failing(handle: object) -> None:
        handle.write(b"half a file")  # type: ignore[attr-defined]
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        checkpoints.write_atomically(target, failing)
    with np.load(target) as stored:
        np.testing.assert_array_equal(stored["a"], np.arange(3))
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind


def test_spill_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "stale": f"finetunekit-{dead.pid}-abc.features",
        "alive": f"finetunekit-{os.getppid()}-abc.features",
        "mine": f"finetunekit-{os.getpid()}-abc.features",
        "other": "somebody-else.features",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = caching.remove_stale_spills(str(tmp_path))
    assert removed == [str(tmp_path / names["stale"])]
    assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k != "stale")
    # Spilled files carry the process id, so a later run can tell whose they are.
    assert caching._spill_prefix() == f"finetunekit-{os.getpid()}-"
    assert tempfile.gettempdir()  # the default folder is the system temp folder


def test_shuffles_follow_the_epoch_not_the_process() -> None:
    from finetunekit import _orders
    from finetunekit.data import from_arrays

    x = np.zeros((10, 4, 4, 3), "float32")
    first = from_arrays(x, np.arange(10), batch_size=4, seed=0)
    second = from_arrays(x, np.arange(10), batch_size=4, seed=0)  # a new process, as it were
    orders = _orders.orders_of(first), _orders.orders_of(second)
    assert all(o is not None for o in orders)

    def labels(ds: object) -> list[int]:
        return [int(v) for _, b in ds for v in b.numpy()]  # type: ignore[attr-defined]

    orders[0].epoch = 5  # type: ignore[union-attr]
    seen = labels(first)
    labels(first)  # reading it again in the same epoch draws the same order
    assert labels(first) == seen and sorted(seen) == list(range(10))
    orders[1].epoch = 5  # type: ignore[union-attr]
    assert labels(second) == seen  # epoch 5 of another pipeline: the same order
    orders[1].epoch = 6  # type: ignore[union-attr]
    assert labels(second) != seen


@pytest.mark.parametrize("cache", [False, True])
def test_a_fit_that_raises_lets_go_of_the_epoch_of_its_data(cache: bool) -> None:
    import keras

    from finetunekit import _orders
    from finetunekit.data import from_arrays

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (12, 32, 32, 3)).astype("float32")
    data = from_arrays(x, np.arange(12) % 2, batch_size=4, seed=0)
    orders = _orders.orders_of(data)
    assert orders is not None

    class Fails(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 1:
                raise RuntimeError("stopped by the test")

    tuner = ftk.FineTuner("mobilenet_v2", num_classes=2, weights=None, alpha=0.35,
                          input_shape=(32, 32, 3), cache=cache, seed=0)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        tuner.fit(data, head_epochs=3, finetune_epochs=0, early_stopping=False,
                  callbacks=[Fails()], verbose=0)
    assert orders.epoch is None  # not stuck at the epoch the fit died in

    def labels() -> list[int]:
        return [int(v) for _, b in data for v in b.numpy()]

    assert len({tuple(labels()) for _ in range(4)}) > 1  # each reading reshuffles


def test_ctrl_c_then_the_same_fit_on_the_same_tuner_resumes(
    tmp_path: Path, tiny_images: tuple[np.ndarray, np.ndarray]
) -> None:
    import keras

    x, y = tiny_images

    def tuner() -> ftk.FineTuner:  # num_classes and the size come from the data
        keras.utils.set_random_seed(0)
        return ftk.FineTuner("mobilenet_v2", weights=None, alpha=0.35, seed=0)

    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.epoch == 4:
                raise KeyboardInterrupt

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

    settings = dict(head_epochs=2, finetune_epochs=4, batch_size=8, verbose=0)
    reference = tuner()
    reference.fit(x, y, **settings)  # uninterrupted, without checkpoints
    stopped = tuner()
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(x, y, checkpoint_dir=tmp_path / "run", callbacks=[CtrlC()], **settings)
    assert stopped.history is not None and stopped.history.epoch == [0, 1, 2, 3]
    history = stopped.fit(x, y, checkpoint_dir=tmp_path / "run", **settings)  # the same call
    assert history.epoch == list(range(6))
    assert history.phases == ["head"] * 2 + ["finetune"] * 4
    assert [r.epochs_run for r in history.reports] == [2, 4]
    np.testing.assert_allclose(history.history["loss"], reference.history.history["loss"],
                               atol=1e-5)
    diff = max(float(np.max(np.abs(a.numpy() - b.numpy())))
               for a, b in zip(stopped.model.weights, reference.model.weights, strict=True))
    assert diff <= 1e-5


def test_stored_features_shuffle_the_same_images_whatever_order_they_came_in() -> None:
    import keras
    import tensorflow as tf

    from finetunekit import _orders

    x = np.random.default_rng(0).uniform(0, 255, (20, 8, 8, 3)).astype("float32")
    prefix = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
    forward = tf.data.Dataset.from_tensor_slices((x, np.arange(20))).batch(4)
    backward = tf.data.Dataset.from_tensor_slices((x[::-1], np.arange(20)[::-1])).batch(4)
    with caching.FeatureCache(prefix, forward) as a, caching.FeatureCache(prefix, backward) as b:
        seen = []
        for cache in (a, b):
            ds = cache.dataset(shuffle=True, seed=0)
            _orders.orders_of(ds).epoch = 3  # type: ignore[union-attr]
            seen.append([int(v) for _, labels in ds for v in labels.numpy()])
    assert seen[0] == seen[1] and sorted(seen[0]) == list(range(20))
    assert seen[0] != list(range(20)) and seen[0] != list(range(20))[::-1]


def test_the_resume_message_says_where_the_run_stands():
    from finetunekit.checkpoints import _where

    # Killed in the first fine-tune epoch, after 3 head epochs: the checkpoint is the one
    # written when the head phase closed (once read "head phase, epoch 0 of it").
    assert _where(["head"] * 3, 0) == "the last of the head phase"
    assert _where(["head"] * 3 + ["finetune"], 1) == "epoch 1 of the finetune phase"
    assert _where([], 0) == "no epoch done yet"


def test_the_call_names_its_augmentation_by_its_settings() -> None:
    # Every augmentation was described by its class, Sequential: a run killed with
    # augment="light" resumed with augment="strong", mixing the two.
    import keras

    from finetunekit.recipe import DEFAULTS

    def call(augment: object) -> dict:
        tuner = ftk.FineTuner("mobilenet_v2", weights=None, num_classes=2, augment=augment)
        return checkpoints.describe_call(tuner, DEFAULTS)

    assert call("light") != call("strong")
    assert call("light") == call("light")
    flip = lambda: keras.Sequential([keras.layers.RandomFlip("horizontal")])  # noqa: E731
    assert call(flip()) == call(flip())  # auto-numbered names (random_flip_1, _2) aside
    other = keras.Sequential([keras.layers.RandomFlip("vertical")])
    assert call(flip()) != call(other) and call(None) != call("light")
    # Once it has run (a Ctrl-C, then the same fit in the same process), a layer's
    # serialized form gains its build state and an InputLayer: still the same call.
    layer = flip()
    before = call(layer)
    layer(np.zeros((1, 8, 8, 3), "float32"))
    assert call(layer) == before


def test_a_folder_named_from_another_working_directory_is_the_same_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The files' paths were hashed as given: a job restarted from another directory was
    # refused as "other data".
    import tensorflow as tf

    from finetunekit.data import from_directory

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            image = np.full((8, 8, 3), 40 * i + (name == "b") * 100, "uint8")
            (tmp_path / "data" / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())

    def described(folder: str) -> dict:
        train, _, _ = from_directory(folder, image_size=8, seed=0)
        return checkpoints.fingerprint(train)

    absolute = described(str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert described("data") == absolute
    (tmp_path / "data" / "b" / "1.png").rename(tmp_path / "data" / "b" / "2.png")
    assert described("data") != absolute


def test_the_fingerprint_of_arrays_with_sample_weights_holds_all_three() -> None:
    # A tuple of 3 was fingerprinted as {'type': 'tuple'}: a resume on other arrays passed.
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (10, 8, 8, 3)).astype("float32"), np.arange(10) % 2
    ones = np.ones(10, "float32")
    given = checkpoints.fingerprint((x, y, ones))
    assert given["train"]["count"] == 10
    assert given == checkpoints.fingerprint([x, y, ones])
    assert given != checkpoints.fingerprint((x + 1, y, ones))
    assert given != checkpoints.fingerprint((x, y, ones * 2))
    assert given != checkpoints.fingerprint((x, y))
    assert checkpoints.fingerprint((x, y)) == checkpoints.fingerprint(x, y)  # as before


def test_a_dataset_of_tensors_is_fingerprinted_by_its_first_batch() -> None:
    import tensorflow as tf

    # Only structure and length were held: a resume with every label changed passed.
    x = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 3

    def batches(labels: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)

    given = checkpoints.fingerprint(batches(y))
    assert given["train"]["first_batch"] is not None
    assert given == checkpoints.fingerprint(batches(y))
    assert given != checkpoints.fingerprint(batches((y + 1) % 3))
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(16).batch(8)
    assert checkpoints.fingerprint(shuffled)["train"]["first_batch"] is None
    # Arrays shuffled per epoch (from_arrays) read the same first batch twice once a fit
    # has left their epoch set (an interrupted fit), which a first fit did not: unsampled.
    from finetunekit._orders import orders_of
    from finetunekit.data import from_arrays

    arrays = from_arrays(x, y, batch_size=8, seed=1)
    orders_of(arrays).epoch = 2
    assert checkpoints.fingerprint(arrays)["train"]["first_batch"] is None
    named = tf.data.Dataset.from_tensor_slices((x, np.array(["a", "b"] * 8))).batch(8)
    assert checkpoints.fingerprint(named)["train"]["first_batch"] is None  # no addresses
    # A checkpoint written before first batches were hashed still resumes.
    old = {"train": {k: v for k, v in given["train"].items() if k != "first_batch"},
           "validation": None}
    assert not checkpoints._differences(old, given, new_keys=checkpoints._NEW_DATA_KEYS)
    fewer = checkpoints.fingerprint(batches(y).take(1))  # what it holds is still compared
    assert checkpoints._differences(old, fewer, new_keys=checkpoints._NEW_DATA_KEYS)



def test_a_run_with_the_old_preset_is_refused_with_the_reason(tmp_path: Path) -> None:
    import keras

    from finetunekit.recipe import DEFAULTS

    def call(augment: object) -> dict:
        tuner = ftk.FineTuner("mobilenet_v2", weights=None, num_classes=2, augment=augment)
        return checkpoints.describe_call(tuner, DEFAULTS)

    # What augment="default" was: Keras' three layers at the preset's amounts.
    old = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.05),
            keras.layers.RandomZoom(0.1),
        ],
        name="augmentation",
    )
    tracker = checkpoints.Tracker(tmp_path)
    tracker.state = {"call": call(old), "data": {}}
    with pytest.raises(CheckpointError, match="preset was then Keras' RandomFlip"):
        tracker.bind(call("default"), {})
    tracker.state = {"call": call("light"), "data": {}}
    with pytest.raises(CheckpointError, match="other settings") as info:
        tracker.bind(call("strong"), {})
    assert "preset was then" not in str(info.value)


def test_a_run_written_before_auto_views_followed_the_data_resumes_only_if_they_agree(
    tmp_path: Path,
) -> None:
    from finetunekit.recipe import DEFAULTS

    tuner = ftk.FineTuner("mobilenet_v2", weights=None, num_classes=2, augment="default")
    before = checkpoints.describe_call(tuner, DEFAULTS, views=4)
    del before["views"]  # a checkpoint from before the views were recorded: "auto" was 4
    tracker = checkpoints.Tracker(tmp_path)
    tracker.state = {"call": before, "data": {}}
    tracker.bind(checkpoints.describe_call(tuner, DEFAULTS, views=4), {})  # small data
    with pytest.raises(CheckpointError, match="views: stored 4, asked 2.*stores 2 augmented"):
        tracker.bind(checkpoints.describe_call(tuner, DEFAULTS, views=2), {})  # 1,000+


def test_the_views_a_fit_stores_are_part_of_its_checkpoint(tmp_path: Path) -> None:
    from finetunekit.recipe import AUTO_VIEWS_MANY, MANY_IMAGES

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (MANY_IMAGES, 32, 32, 3)).astype("float32")
    y = np.arange(MANY_IMAGES) % 2
    tuner = ftk.FineTuner("mobilenet_v2", weights=None, num_classes=2, alpha=0.35,
                          input_shape=(32, 32, 3), augment="light", seed=0)
    tuner.fit(x, y, head_epochs=4, finetune_epochs=0, batch_size=100, verbose=0,
              checkpoint_dir=tmp_path)
    state, _ = checkpoints.read(tmp_path)  # type: ignore[misc]
    assert state["call"]["views"] == AUTO_VIEWS_MANY  # 4 epochs, yet 1,000 images
