"""FineTuner: chaining steps, recompiles, the two-phase fit, early stopping, plan, save, data."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetunekit as ftk
from finetunekit import structure, tasks
from finetunekit.errors import DataError
from finetunekit.finetuner import FineTuneHistory

HEAD_PARAMS = 1280 * 3 + 3  # MobileNetV2 a0.35 features -> 3 classes


def make_tuner(**kwargs) -> ftk.FineTuner:
    arguments = dict(num_classes=3, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    arguments.update(kwargs)
    return ftk.FineTuner("mobilenet_v2", **arguments)


def noise(n: int, seed: int, classes: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(n, 32, 32, 3)).astype("float32")
    return x, rng.integers(0, classes, size=(n,))


def kernel(tuner, name) -> np.ndarray:
    return tuner.base.get_layer(name).weights[0].numpy().copy()


def trainable_state(model) -> tuple:
    return (
        tuple(layer.trainable for layer in structure.leaf_layers(model)),
        tuple(id(v) for v in model.trainable_variables),
    )


@pytest.fixture(scope="module")
def fitted():
    """One small two-phase fit shared by the read-only tests below."""
    keras.utils.set_random_seed(0)
    x, y = noise(24, 0)
    val = noise(12, 1)
    tuner = make_tuner()
    history = tuner.fit(
        x, y, validation_data=val, head_epochs=2, finetune_epochs=1, unfreeze=2, verbose=0
    )
    return tuner, history, val


# -- the steps, chained ----------------------------------------------------------------------


def test_step_methods_return_the_tuner(tiny_images):
    tuner = make_tuner()
    assert tuner.load_base() is tuner
    assert tuner.freeze() is tuner
    assert tuner.add_head() is tuner
    assert tuner.compile(learning_rate=1e-3) is tuner
    assert tuner.unfreeze(2) is tuner
    assert tuner.model is not None and structure.find_base(tuner.model) is tuner.base


def test_train_returns_the_tuner_so_steps_chain(tiny_images):
    x, y = tiny_images
    tuner = make_tuner().load_base().freeze().add_head().compile()
    assert tuner.train(x, y, epochs=1, verbose=0) is tuner


def test_train_says_when_it_replaces_a_compile_made_outside_the_tuner(tiny_images, caplog):
    x, y = tiny_images
    tuner = make_tuner().load_base().freeze().add_head()
    tuner.model.compile(
        optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy"
    )
    with caplog.at_level("WARNING", logger="finetunekit"):
        tuner.train(x, y, epochs=1, verbose=0)
    assert "compiled outside this tuner" in caplog.text
    assert "tuner.compile(optimizer=" in caplog.text


@pytest.mark.parametrize("cache", [True, False])
def test_an_optimizer_instance_is_a_template_for_every_phase(cache: bool) -> None:
    # Keras ties an optimizer to the variables it first trained: the same instance
    # again after unfreeze failed with "Unknown variable" in the second phase.
    mine = keras.optimizers.AdamW(learning_rate=2e-3, weight_decay=0.01)
    x, y = noise(16, 0)
    tuner = make_tuner(cache=cache).load_base().freeze().add_head()
    tuner.compile(optimizer=mine).train(x, y, epochs=1, verbose=0)
    before = kernel(tuner, "Conv_1")
    tuner.unfreeze(2, learning_rate=1e-4).train(x, y, epochs=1, verbose=0)
    assert tuner.last_phase.cached is cache
    assert not np.allclose(kernel(tuner, "Conv_1"), before)  # the unfrozen block trained
    optimizer = tuner.model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer is not mine
    assert optimizer.weight_decay == pytest.approx(0.01)
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)  # unfreeze's rate
    assert not mine.built and float(mine.learning_rate) == pytest.approx(2e-3)  # untouched


def test_compile_applies_its_learning_rate_to_an_optimizer_instance() -> None:
    # The rate was ignored for an instance: compile(1e-4, optimizer=SGD(momentum=0.9))
    # trained at SGD's own 0.01, and the phase banner said 1e-4.
    x, y = noise(16, 0)
    tuner = make_tuner().load_base().freeze().add_head()
    tuner.compile(1e-4, optimizer=keras.optimizers.SGD(momentum=0.9))
    optimizer = tuner.model.optimizer
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)
    assert optimizer.momentum == pytest.approx(0.9)
    tuner.train(x, y, epochs=1, verbose=0)
    assert tuner.history.history["learning_rate"] == pytest.approx([1e-4])
    # Without a rate, the instance keeps its own, through the recompile after a change.
    tuner.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
    tuner.freeze(train_bn=True)
    assert float(tuner.model.optimizer.learning_rate) == pytest.approx(0.05)
    with pytest.raises(ftk.errors.ConfigError, match="learning_rate"):
        tuner.compile("fast", optimizer=keras.optimizers.SGD())


def test_a_multi_optimizer_of_ones_own_keeps_its_rates() -> None:
    # train() read the rate of the map itself: Keras' raw AttributeError; and a rate
    # given to compile was ignored without a word.
    x, y = noise(16, 0)
    tuner = make_tuner().load_base().freeze().add_head()

    def multi() -> keras.optimizers.MultiOptimizer:
        return keras.optimizers.MultiOptimizer(
            keras.optimizers.OptimizerMap(keras.optimizers.Adam(2e-3), {})
        )

    with pytest.raises(ftk.errors.ConfigError, match="does not apply to a MultiOptimizer"):
        tuner.compile(1e-4, optimizer=multi())
    before = tuner.model.get_layer("head_output").get_weights()[0].copy()
    tuner.compile(optimizer=multi()).train(x, y, epochs=1, verbose=0)
    assert not np.allclose(tuner.model.get_layer("head_output").get_weights()[0], before)


def test_the_tuner_recompiles_after_every_trainable_change(tiny_images):
    x, y = tiny_images
    tuner = make_tuner().load_base().freeze().add_head().compile(learning_rate=1e-3)
    tuner.train(x, y, epochs=1, verbose=0)

    tuner.unfreeze(2, learning_rate=1e-4)
    model = tuner.model
    assert not tasks.is_stale(model)  # compiled for exactly what trains now
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    base_trainable = [v for v in model.trainable_variables if not v.path.startswith("head_")]
    assert len(base_trainable) == 4  # block_16 expand/depthwise/project + Conv_1 kernels
    names = ("Conv_1", "block_16_project", "block_15_project")
    before = {name: kernel(tuner, name) for name in names}
    tuner.train(x, y, epochs=1, verbose=0)
    assert not np.array_equal(before["Conv_1"], kernel(tuner, "Conv_1"))
    np.testing.assert_array_equal(before["block_15_project"], kernel(tuner, "block_15_project"))

    # A change behind the tuner's back (plain unfreeze_last) is caught and recompiled too.
    ftk.unfreeze_last(model, 1)  # only Conv_1 now
    assert tasks.is_stale(model)
    before = {name: kernel(tuner, name) for name in names}
    tuner.train(x, y, epochs=1, verbose=0)
    assert not tasks.is_stale(model)
    assert not np.array_equal(before["Conv_1"], kernel(tuner, "Conv_1"))
    np.testing.assert_array_equal(before["block_16_project"], kernel(tuner, "block_16_project"))


# -- fit: one history for both phases --------------------------------------------------------


def test_fit_returns_one_history_with_both_phases(fitted):
    tuner, history, _ = fitted
    assert isinstance(history, keras.callbacks.History)
    assert isinstance(history, FineTuneHistory)
    assert history.phases == ["head", "head", "finetune"]
    assert history.unfreeze_epoch == 2
    assert history.epoch == [0, 1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(history.history[key]) == 3, key
        assert np.isfinite(history.history[key]).all(), key
    assert history.model is tuner.model


def test_fit_leaves_the_finetune_state(fitted):
    tuner, _, _ = fitted
    report = ftk.freezing.trainable_report(tuner.model)
    assert report.trainable_blocks == ("block_16", "Conv_1")
    assert report.batchnorm.startswith("frozen")
    assert not tasks.is_stale(tuner.model)


def test_early_stopping_restores_the_best_weights():
    x, y = noise(24, 2)
    val = noise(12, 3)
    tuner = make_tuner()
    history = tuner.fit(
        x,
        y,
        validation_data=val,
        head_epochs=8,
        finetune_epochs=0,
        head_learning_rate=5.0,  # noisy jumps of the validation loss
        patience=1,
        verbose=0,
    )
    losses = history.history["val_loss"]
    assert len(losses) < 8  # stopped early
    assert history.phases == ["head"] * len(losses)
    final = tuner.model.evaluate(*val, verbose=0, return_dict=True)["loss"]
    assert final == pytest.approx(min(losses), rel=1e-4)
    assert final < losses[-1]  # the last epoch was not the best: weights were restored


@pytest.mark.parametrize("train_bn", [False, True])
def test_fit_ends_with_the_best_weights_of_both_phases(train_bn: bool):
    # The restore after the fine-tune phase assigns only what that phase could change
    # (with train_bn, the statistics of its BatchNormalization too): all of it must
    # come back to the head phase's best.
    x, y = noise(24, 4)
    val = noise(12, 5)
    tuner = make_tuner()
    history = tuner.fit(
        x,
        y,
        validation_data=val,
        head_epochs=1,
        finetune_epochs=1,
        head_learning_rate=1e-3,
        finetune_learning_rate=50.0,  # wrecks the unfrozen part: the epoch is worse
        train_bn=train_bn,
        verbose=0,
    )
    losses = history.history["val_loss"]
    head_best = min(losses[: history.unfreeze_epoch])
    assert min(losses[history.unfreeze_epoch :]) > head_best  # the scenario holds
    final = tuner.model.evaluate(*val, verbose=0, return_dict=True)["loss"]
    assert final == pytest.approx(head_best, rel=1e-4)


# -- plan ------------------------------------------------------------------------------------


def test_plan_describes_both_phases_and_changes_nothing():
    tuner = make_tuner()
    tuner.load_base().add_head()
    before = trainable_state(tuner.model)
    plan = tuner.plan(
        head_epochs=3,
        finetune_epochs=2,
        unfreeze=2,
        head_learning_rate=1e-3,
        finetune_learning_rate=1e-5,
    )
    assert trainable_state(tuner.model) == before
    head, tune = plan
    assert (head.phase, head.epochs, head.learning_rate) == ("head", 3, 1e-3)
    assert head.trainable_params == HEAD_PARAMS
    assert head.trainable_blocks == ()
    assert head.frozen_params == tuner.model.count_params() - HEAD_PARAMS
    assert head.batchnorm.startswith("frozen")
    assert (tune.phase, tune.epochs, tune.learning_rate) == ("finetune", 2, 1e-5)
    assert tune.trainable_blocks == ("block_16", "Conv_1")
    unfrozen = sum(
        layer.count_params()
        for block in structure.blocks(tuner.base)[-2:]
        for layer in block.weighted()
    )
    assert tune.trainable_params == HEAD_PARAMS + unfrozen
    assert tune.batchnorm.startswith("frozen")
    table = str(plan)
    assert "block_16, Conv_1" in table and "finetune" in table and "1e-05" in table


def test_plan_with_layers_and_bn(fitted):
    tuner, _, _ = fitted
    before = trainable_state(tuner.model)
    _, tune = tuner.plan(unfreeze=3, unit="layer", train_bn=True)
    assert trainable_state(tuner.model) == before  # the fitted state is kept
    assert tune.batchnorm.startswith("training")
    # the last 3 weighted layers, BN counted: block_16_project_BN, Conv_1, Conv_1_bn
    assert tune.trainable_blocks == ("block_16", "Conv_1")
    assert tune.trainable_params == HEAD_PARAMS + 2 * 112 + 112 * 1280 + 2 * 1280


def test_plan_without_finetuning_has_one_phase():
    plan = make_tuner().plan(finetune_epochs=0)
    assert [p.phase for p in plan] == ["head"]


def test_fit_after_plan_still_builds_the_requested_head(tiny_images):
    x, y = tiny_images
    tuner = make_tuner()
    tuner.plan()
    tuner.fit(x, y, hidden=(16,), head_epochs=1, finetune_epochs=0, verbose=0)
    assert "head_dense_1" in [layer.name for layer in tuner.model.layers]


# -- save -----------------------------------------------------------------------------------

RELOAD = """
import sys
import keras, numpy as np
model = keras.models.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
assert not [name for name in sys.modules if name.startswith("finetunekit")]
"""


def test_save_reloads_with_plain_keras_and_identical_predictions(fitted, tmp_path):
    tuner, _, (x_val, _) = fitted
    path = tuner.save(tmp_path / "sub" / "tuned.keras")
    assert path.exists() and path.suffix == ".keras"
    expected = tuner.model.predict(x_val, verbose=0)
    # Reloaded in a fresh interpreter that never imports finetunekit.
    np.save(tmp_path / "x.npy", x_val)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, str(path), str(tmp_path / "x.npy"), str(tmp_path / "p.npy")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=1e-5, atol=1e-6)


# -- data forms and labels ----------------------------------------------------------------


def test_few_images_with_the_default_validation_split():
    x, y = noise(4, 0)  # by their content, none of these 4 images is held out
    try:
        make_tuner().fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0)
    except DataError as exc:  # a clear message is fine too: it must name the split
        assert "validation" in str(exc), f"misleading message: {exc}"


def test_num_classes_and_one_hot_loss_come_from_the_labels(tiny_images):
    x, y = tiny_images
    tuner = make_tuner(num_classes=None)
    tuner.fit(x, np.eye(3)[y], head_epochs=1, finetune_epochs=0, verbose=0)
    assert tuner.num_classes == 3
    assert tuner.model.output_shape == (None, 3)
    assert isinstance(tuner.model.loss, keras.losses.CategoricalCrossentropy)
    # Integer labels on the same tuner switch back to the sparse loss.
    tuner.train(x, y, epochs=1, verbose=0)
    assert isinstance(tuner.model.loss, keras.losses.SparseCategoricalCrossentropy)


def test_binary_task_on_a_dataset_of_uint8_images(tiny_images):
    # (`fitted` above trains on arrays x, y with an (x, y) tuple as validation data)
    x, y = tiny_images
    dataset = tf.data.Dataset.from_tensor_slices((x.astype("uint8"), y % 2)).batch(8)
    tuner = make_tuner(num_classes=None, task="binary")
    history = tuner.fit(
        dataset, validation_data=(x[:6], y[:6] % 2), head_epochs=1, finetune_epochs=0, verbose=0
    )
    assert history.phases == ["head"] and len(history.history["val_loss"]) == 1
    assert tuner.model.output_shape == (None, 1)
    assert isinstance(tuner.model.loss, keras.losses.BinaryCrossentropy)


def test_labels_out_of_range_name_what_was_expected(tiny_images):
    x, y = tiny_images
    with pytest.raises(DataError, match=r"expected 0\.\.2") as info:
        make_tuner().fit(x, y + 5, head_epochs=1, finetune_epochs=0, verbose=0)
    assert isinstance(info.value, ValueError)


def test_one_hot_of_the_wrong_width_names_what_was_expected(tiny_images):
    x, y = tiny_images
    with pytest.raises(DataError, match="3 columns"):
        make_tuner().fit(x, np.eye(4)[y], head_epochs=1, finetune_epochs=0, verbose=0)


def test_validation_labels_are_checked_too(tiny_images):
    x, y = tiny_images
    with pytest.raises(DataError):
        make_tuner().fit(
            x, y, validation_data=(x, y + 3), head_epochs=1, finetune_epochs=0, verbose=0
        )


def test_regression_on_scalar_targets_gets_one_output(tiny_images):
    x, _ = tiny_images
    targets = np.linspace(0, 10, len(x)).astype("float32")
    tuner = make_tuner(num_classes=None, task="regression")
    tuner.fit(x, targets, head_epochs=1, finetune_epochs=0, verbose=0)
    assert tuner.model.output_shape == (None, 1)


def test_images_of_another_size_are_a_data_error():
    x, y = noise(12, 6)
    bigger = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 64 x 64
    with pytest.raises(DataError, match="32"):
        make_tuner().fit(bigger, y, head_epochs=1, finetune_epochs=0, verbose=0)


def test_own_functional_base():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, name="mine_1")(x)
    x = keras.layers.Conv2D(4, 3, name="mine_2")(x)
    base = keras.Model(inputs, x, name="mine")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (12, 16, 16, 3)).astype("float32")
    tuner = ftk.FineTuner(base, num_classes=2)
    history = tuner.fit(
        images, rng.integers(0, 2, 12), head_epochs=1, finetune_epochs=1, unfreeze=1, verbose=0
    )
    assert tuner.base is base
    assert history.phases == ["head", "finetune"]



def test_save_keeps_the_class_names_and_the_recipe(tmp_path):
    from _colors import colour_folder

    root = colour_folder(
        tmp_path / "photos", {"blue": ["blue"] * 4, "green": ["green"] * 4, "red": ["red"] * 4}
    )
    train, _, names = ftk.data.from_directory(root, image_size=32, batch_size=4, seed=0)
    tuner = ftk.FineTuner("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    tuner.fit(train, head_epochs=1, finetune_epochs=1, verbose=0)
    assert tuner.class_names == names == ("blue", "green", "red")
    path = tuner.save(tmp_path / "colours.keras")
    loaded = ftk.load(path)
    assert loaded.class_names == names
    assert loaded.info.recipe["head_epochs"] == 1 and loaded.info.base == "mobilenet_v2"
    plain = keras.models.load_model(path)  # still a plain Keras file
    assert plain.output_shape == (None, 3)
