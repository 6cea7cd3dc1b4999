"""A fine-tune is a list of phases: Recipe -> phases -> one runner; plan equals what ran."""

from __future__ import annotations

import csv
import dataclasses
import logging
import re

import keras
import numpy as np
import pytest

import finetunekit as ftk
from finetunekit import caching, data, training
from finetunekit.errors import ConfigError
from finetunekit.recipe import DEFAULTS, FINETUNE, HEAD, Recipe

SHAPE = (32, 32, 3)


def _tuner(**kwargs: object) -> ftk.FineTuner:
    arguments: dict = dict(num_classes=3, weights=None, input_shape=SHAPE, alpha=0.35, seed=0)
    arguments.update(kwargs)
    return ftk.FineTuner("mobilenet_v2", **arguments)


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, *SHAPE)).astype("float32"), rng.integers(0, 3, n)


# -- Recipe and phases ---------------------------------------------------------------------


def test_defaults_are_a_recipe_and_each_default_says_how_it_was_chosen() -> None:
    assert isinstance(DEFAULTS, Recipe) and ftk.DEFAULTS is DEFAULTS
    for name in ("head_epochs", "unfreeze", "head_learning_rate", "finetune_learning_rate"):
        assert len(Recipe.NOTES[name]) > 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.head_epochs = 3  # type: ignore[misc]


def test_the_classic_schedule_is_two_phases() -> None:
    head, tune = Recipe(head_epochs=3, finetune_epochs=4, unfreeze=2).phases()
    assert (head.name, head.epochs, head.unfreeze, head.learning_rate) == (HEAD, 3, 0, 1.5e-2)
    assert (tune.name, tune.epochs, tune.unfreeze, tune.learning_rate) == (FINETUNE, 4, 2, 1e-5)
    assert head.early_stopping and tune.early_stopping
    assert not any(p.early_stopping for p in Recipe().phases(validation=False))
    assert [p.name for p in Recipe(finetune_epochs=0).phases()] == [HEAD]
    assert [p.name for p in Recipe(head_epochs=0).phases()] == [FINETUNE]


@pytest.mark.parametrize(
    ("keywords", "says"),
    [
        ({"unfreeze": -1}, "unfreeze must be an int >= 0"),
        ({"head_epochs": 2.5}, "head_epochs must be an int >= 0"),
        ({"finetune_learning_rate": 0}, "finetune_learning_rate must be a positive number"),
        ({"unit": "blocks"}, "unit must be 'block' or 'layer'"),
        ({"dropout": 1.0}, "dropout must be a rate in [0, 1)"),
        ({"validation_split": 1}, "validation_split must be in [0, 1)"),
        ({"hidden": 64}, "hidden must be a sequence of positive layer sizes"),
        ({"head_epoch": 5}, "Unknown setting head_epoch"),
        ({"steps_per_epoch": 5}, "pass ds.take(n)"),
    ],
)
def test_every_setting_is_checked_before_any_image_is_read(
    keywords: dict, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was read before the settings were checked")

    monkeypatch.setattr(data, "prepare", no_reading)
    with pytest.raises(ConfigError, match=re.escape(says)):
        _tuner().fit(*_images(8), **keywords)


@pytest.mark.parametrize(
    ("keyword", "says"),
    [("validation_split", "pass validation_data"), ("class_weight", "sample weights in the data")],
)
def test_train_names_a_keyword_it_does_not_take(
    keyword: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "prepare", lambda *a, **k: pytest.fail("the data was read"))
    tuner = _tuner()
    says_unknown = f"Unknown setting {keyword}; train\\(\\) takes"
    with pytest.raises(ConfigError, match=says_unknown) as caught:
        tuner.train(*_images(8), **{keyword: 0.2})
    assert says in str(caught.value)


def test_keras_set_random_seed_repeats_a_fit_without_a_seed_of_its_own() -> None:
    x, y = _images(24)
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        tuner = _tuner(seed=None)
        tuner.fit(x, y, head_epochs=2, finetune_epochs=1, early_stopping=False, verbose=0)
        weights.append([v.numpy() for v in tuner.model.trainable_weights])
    for first, second in zip(*weights, strict=True):
        np.testing.assert_array_equal(first, second)


def test_unfreezing_more_blocks_than_the_base_has_fails_before_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(training, "run_phases", no_training)
    with pytest.raises(ConfigError, match="has only"):
        _tuner().fit(*_images(8), unfreeze=1000, head_epochs=1)


# -- the plan is what runs -----------------------------------------------------------------


@pytest.mark.parametrize(
    "keywords",
    [
        {"head_epochs": 2, "finetune_epochs": 1},
        {"head_epochs": 1, "finetune_epochs": 1, "hidden": (64,), "dropout": 0.3},
        {"head_epochs": 1, "finetune_epochs": 1, "validation_split": 0},  # no validation
        {"head_epochs": 1, "finetune_epochs": 1, "unfreeze": 4, "unit": "layer",
         "train_bn": True},
    ],
)
def test_plan_before_fit_equals_the_plan_that_ran(keywords: dict) -> None:
    x, y = _images(40)
    tuner = _tuner()
    before = tuner.plan(**keywords)
    assert tuner.model is None  # plan kept no head: fit builds the one it asks for
    history = tuner.fit(x, y, verbose=0, **keywords)
    assert history.plan == before
    assert str(history.plan) == str(before)
    assert [p.phase for p in before] == [HEAD, FINETUNE]
    trainable = sum(int(np.prod(v.shape)) for v in tuner.model.trainable_variables)
    assert before[-1].trainable_params == trainable
    stops = keywords.get("validation_split", 0.2) > 0
    assert [p.early_stopping for p in before] == [stops, stops]


def test_a_custom_head_is_in_the_plan() -> None:
    plain = _tuner().plan(head_epochs=1)
    custom = _tuner().plan(head_epochs=1, hidden=(64,), dropout=0.3)
    assert custom[0].trainable_params == 1280 * 64 + 64 + 64 * 3 + 3
    assert plain[0].trainable_params == 1280 * 3 + 3


def test_reports_say_how_each_phase_ran() -> None:
    x, y = _images(24)
    history = _tuner().fit(x, y, validation_data=_images(9, 1), head_epochs=2,
                           finetune_epochs=1, verbose=0)
    head, tune = history.reports
    assert (head.phase, head.cached, head.cut, head.epochs_run) == (HEAD, True, "head_pool", 2)
    assert (tune.phase, tune.cached, tune.cut, tune.epochs_run) == (
        FINETUNE, True, "block_15_add", 1
    )
    assert head.why_not_cached is None and not head.spilled and head.seconds > 0
    assert history.phases == [HEAD, HEAD, FINETUNE]
    assert history.best_epoch in (0, 1, 2)

    plain = _tuner(cache=False).fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0)
    assert plain.reports[0].cached is False and plain.reports[0].why_not_cached == "cache=False"


def test_the_early_stopping_split_reads_the_images_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cached, the held-out flags come from the pass that stores the features: no separate
    # pass of the content split, and one pass over the training images for both phases.
    def no_split(*args: object, **kwargs: object) -> None:
        raise AssertionError("split_by_content ran")

    passes: list[float] = []
    original = caching.FeatureCache.__init__

    def counting(self: caching.FeatureCache, *args: object, **kwargs: object) -> None:
        passes.append(float(kwargs.get("holdout", 0.0)))  # type: ignore[arg-type]
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(data._prepare, "split_by_content", no_split)
    monkeypatch.setattr(caching.FeatureCache, "__init__", counting)
    x, y = _images(60)
    history = _tuner().fit(x, y, head_epochs=2, finetune_epochs=1, verbose=0)
    assert passes == [0.2]
    assert "val_loss" in history.history and all(r.cached for r in history.reports)


def test_held_out_images_are_the_same_cached_or_not() -> None:
    x, y = _images(50)
    dataset = data.from_arrays(x, y, batch_size=8, shuffle=True, seed=0)
    kept, held = data.split_by_content(dataset, 0.3, batch_size=8)
    held_sums = sorted(float(im.sum()) for b, _ in held for im in b.numpy())
    prefix = keras.Sequential([keras.Input(SHAPE), keras.layers.Lambda(lambda t: t)])
    with caching.FeatureCache(prefix, dataset, holdout=0.3) as cache:
        rows = cache.features[0][cache._parts["held_out"]]
        assert sorted(float(r.sum()) for r in rows) == pytest.approx(held_sums)
        assert cache.count("train") + cache.count("held_out") == 50


# -- callbacks see the full model, cached ---------------------------------------------------


class _Seen(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.models: set[int] = set()
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.models.add(id(self.model))
        self.epochs.append(epoch)


def _fit_with(callbacks: list, **keywords: object) -> tuple[ftk.FineTuner, ftk.FineTuneHistory]:
    x, y = _images(24)
    tuner = _tuner()
    arguments: dict = dict(validation_data=_images(9, 1), head_epochs=2, finetune_epochs=2,
                           verbose=0)
    arguments.update(keywords)
    history = tuner.fit(x, y, callbacks=callbacks, **arguments)
    assert all(r.cached for r in history.reports), history.reports
    return tuner, history


def test_callbacks_see_the_full_model_while_it_trains_on_stored_features() -> None:
    seen = _Seen()
    tuner, history = _fit_with([seen])
    assert seen.models == {id(tuner.model)}
    assert seen.epochs == [0, 1, 2, 3]


def test_model_checkpoint_writes_a_loadable_full_model(tmp_path: object) -> None:
    path = f"{tmp_path}/best.keras"
    # The best epoch by val_loss across both phases: the weights fit ends with.
    checkpoint = keras.callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    tuner, _ = _fit_with([checkpoint])
    loaded = keras.models.load_model(path)
    x, _ = _images(4, 7)
    assert loaded.input_shape == tuner.model.input_shape
    np.testing.assert_allclose(loaded.predict(x, verbose=0), tuner.model.predict(x, verbose=0),
                               atol=1e-5)


def test_csv_logger_and_tensorboard_log_every_epoch(tmp_path: object) -> None:
    import os

    log = f"{tmp_path}/log.csv"
    board = f"{tmp_path}/board"
    # A CSVLogger as made by default (append=False) opened its file anew at each phase:
    # the head phase's rows were lost.
    logger = keras.callbacks.CSVLogger(log)
    _fit_with([logger, keras.callbacks.TensorBoard(board, write_graph=False)])
    with open(log) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("epoch,") and sum(line.startswith("epoch,") for line in lines) == 1
    with open(log) as f:
        rows = [r for r in csv.DictReader(f) if r.get("epoch") not in (None, "epoch")]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([1.5e-2] * 2 + [1e-5] * 2)
    assert logger.append is False  # the caller's setting, back
    assert all(float(r["val_loss"]) > 0 for r in rows)
    events = [n for _, _, names in os.walk(board) for n in names if "tfevents" in n]
    assert events, "TensorBoard wrote no event file"


def test_early_stopping_callback_stops_the_phase() -> None:
    # min_delta so large that no epoch improves on the first: each phase stops at its second
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    _, history = _fit_with([stop], head_epochs=5, finetune_epochs=5, early_stopping=False)
    assert [r.epochs_run for r in history.reports] == [2, 2]


def test_learning_rate_callbacks_reach_the_optimizer_that_trains() -> None:
    rates: list[float] = []

    def halve(epoch: int, lr: float) -> float:
        rates.append(float(lr))
        return lr * 0.5

    scheduler = keras.callbacks.LearningRateScheduler(halve)
    tuner, history = _fit_with([scheduler], head_epochs=3, finetune_epochs=0,
                               early_stopping=False)
    assert rates == pytest.approx([1.5e-2, 7.5e-3, 3.75e-3])
    assert history.history["learning_rate"] == pytest.approx([7.5e-3, 3.75e-3, 1.875e-3])
    assert float(tuner.model.optimizer.learning_rate) == pytest.approx(1.875e-3)

    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.1, patience=0,
                                                min_delta=1e9, min_lr=0)
    tuner, history = _fit_with([plateau], head_epochs=2, finetune_epochs=0,
                               early_stopping=False)
    # the first epoch sets the mark, the second misses it: one reduction, x0.1
    assert float(tuner.model.optimizer.learning_rate) == pytest.approx(1.5e-3, rel=1e-3)


def test_the_logged_rate_is_the_one_a_scheduler_set_with_rates_per_block() -> None:
    # The rate was read before the caller's scheduler set it, and with rates per block
    # the scheduler's own entry read the wrapper's rate: 1e-3 logged, 5e-4 applied.
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    tuner, history = _fit_with([scheduler], head_epochs=1, finetune_epochs=1, lr_decay=0.5,
                               finetune_learning_rate=1e-3, early_stopping=False)
    assert history.history["learning_rate"] == pytest.approx([7.5e-3, 5e-4])


@pytest.mark.parametrize("schedule", [dict(warmup=1), dict(cosine=True)])
def test_rate_setting_callbacks_with_a_rate_schedule_are_refused_before_training(schedule):
    # Keras raised its own TypeError, for ReduceLROnPlateau only after epochs had run.
    for callback in (keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-3),
                     keras.callbacks.ReduceLROnPlateau(patience=0)):
        seen = _Seen()
        with pytest.raises(ConfigError, match="Drop warmup and cosine .or the schedule., or the"):
            _fit_with([callback, seen], **schedule)
        assert seen.epochs == []


def test_a_rate_schedule_behind_mixed_precision_loss_scaling_is_seen() -> None:
    from finetunekit import structure

    rate = keras.optimizers.schedules.CosineDecay(1e-3, 10)
    assert structure.rate_is_scheduled(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(rate)
    ))
    assert not structure.rate_is_scheduled(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(1e-3)
    ))


def test_unfreeze_with_a_rate_before_the_head_is_refused_and_train_drops_the_recipe(tmp_path):
    # The rate was dropped without a word: the unfrozen blocks trained at 1e-3, not 1e-5.
    tuner = _tuner().load_base().freeze()
    with pytest.raises(ftk.errors.StepOrderError, match="call add_head.. first"):
        tuner.unfreeze(2, learning_rate=1e-5)
    x, y = _images(12)
    tuner = _tuner()
    tuner.fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0)
    assert ftk.load(tuner.save(tmp_path / "fit.keras")).info.recipe is not None
    tuner.unfreeze(1, learning_rate=1e-4).train(x, y, epochs=1, verbose=0)
    # The fit's recipe no longer says how the weights came about.
    assert ftk.load(tuner.save(tmp_path / "more.keras")).info.recipe is None


class _Batches(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches.append(batch)


def test_a_callback_acting_on_batches_sees_every_batch_cached() -> None:
    # Keras calls batch hooks once per call of its step function: with the 16 cached
    # steps per call, a per-batch callback saw batch 15 of a 6-batch epoch, once.
    seen = _Batches()
    _fit_with([seen], head_epochs=1, finetune_epochs=0, early_stopping=False, batch_size=4)
    assert seen.batches == [0, 1, 2, 3, 4, 5]  # 24 images in batches of 4


def test_bad_callbacks_are_refused() -> None:
    with pytest.raises(ftk.FinetuneKitError, match="callbacks must be a list of"):
        _tuner().fit(*_images(8), callbacks=[object()])


# -- what is printed -----------------------------------------------------------------------


def test_progress_bars_count_real_steps_and_each_phase_has_a_banner(
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, y = _images(52)  # 13 batches of 4: Keras' 16 steps per call used to show 16/13
    _tuner().fit(x, y, validation_data=_images(8, 1), batch_size=4, head_epochs=2,
                 finetune_epochs=1, verbose=1)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # Keras' bold and colours
    counts = re.findall(r"(\d+)/(\d+) ", out)
    assert counts and all(int(a) <= int(b) for a, b in counts), counts
    assert "13/13" in out and "16/13" not in out
    # Not a terminal: one line per epoch, no bar redrawn over itself with backspaces.
    assert "\b" not in out and out.count("13/13") == 3
    assert "head phase: trains the head at lr 0.015" in out
    assert "finetune phase: trains the head and the last 2 blocks" in out
    assert re.search(r"fit done: head \d+ epochs .*finetune 1 epochs", out)

    _tuner().fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0)
    assert capsys.readouterr().out == ""


def test_several_fits_in_one_process_warn_of_no_retracing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A notebook fits again and again: each phase and each fit traces its own functions
    # once, on purpose, and TensorFlow must not blame the caller for "retracing".
    x, y = _images(16)
    with caplog.at_level(logging.WARNING):
        for _ in range(4):
            _tuner().fit(x, y, head_epochs=1, finetune_epochs=1, verbose=0)
    assert "retracing" not in caplog.text


def test_plan_keeps_no_base_so_fit_still_takes_the_size_of_its_data() -> None:
    tuner = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, alpha=0.35, seed=0)
    tuner.plan(head_epochs=1)  # described at the base's native 224 px
    assert tuner.base is None and tuner.model is None
    x, y = _images(12)  # 32 px
    tuner.fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0)
    assert tuner.model.input_shape[1:3] == (32, 32)


def test_sample_weights_train_uncached_and_the_report_says_why() -> None:
    import tensorflow as tf

    x, y = _images(16)
    weighted = tf.data.Dataset.from_tensor_slices((x, y, np.ones(16, "float32"))).batch(8)
    history = _tuner().fit(weighted, head_epochs=1, finetune_epochs=1, verbose=0)
    assert [r.cached for r in history.reports] == [False, False]
    assert "sample weights" in (history.reports[0].why_not_cached or "")


def test_keras_style_validation_data_with_sample_weights_weighs_the_validation_loss() -> None:
    x, y = _images(16)
    xv, yv = _images(8)
    weighed = _tuner().fit(x, y, validation_data=(xv, yv, np.zeros(8)), head_epochs=1,
                           finetune_epochs=1, verbose=0)
    plain = _tuner().fit(x, y, validation_data=(xv, yv), head_epochs=1, finetune_epochs=1,
                         verbose=0)
    assert weighed.history["val_loss"] == [0.0, 0.0]
    assert all(loss > 0 for loss in plain.history["val_loss"])


def test_a_dataset_keeps_its_batch_size_in_every_phase() -> None:
    import tensorflow as tf

    x, y = _images(40)
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def steps_per_phase(cache: bool) -> list[int]:
        steps: list[int] = []

        class Steps(keras.callbacks.Callback):
            def on_train_begin(self, logs: dict | None = None) -> None:
                steps.append(int(self.params["steps"]))

        _tuner(cache=cache).fit(batched, head_epochs=1, finetune_epochs=1, verbose=0,
                                callbacks=[Steps()])
        return steps

    cached, uncached = steps_per_phase(True), steps_per_phase(False)
    # about 32 of the 40 images train (20% held out): 4 batches of 8, not 1 of 32
    assert cached == uncached and all(s >= 3 for s in cached), (cached, uncached)


def test_a_second_fit_says_it_keeps_the_head_and_its_recipe_names_that_head(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Once, the second fit trained the old head silently while the saved recipe claimed
    # the new settings.
    x, y = _images(24)
    tuner = _tuner()
    tuner.fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0)
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        history = tuner.fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0,
                            hidden=(64,), dropout=0.0)
    assert "already has a head" in caplog.text and "hidden=(64,)" in caplog.text
    assert not any(layer.name.startswith("head_dense") for layer in tuner.model.layers)
    assert history.plan is not None
    recipe = tuner._recipe
    assert recipe is not None and recipe.hidden == () and recipe.dropout == 0.5
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        tuner.fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0)  # asks nothing of it
        # normalize=True is what the default (None: the task's) built: nothing ignored
        tuner.fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0, normalize=True)
        _tuner().fit(x, y, head_epochs=1, finetune_epochs=0, verbose=0, normalize=None)
    assert "already has a head" not in caplog.text
    # The recipe names the head as built (None: the task's default), as checkpoints do.
    assert tuner._recipe is not None and tuner._recipe.normalize is None


class _Counter(keras.layers.Layer):
    """A frozen layer that writes its own state (as SpectralNormalization does)."""

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, inputs):
        return inputs


def test_best_weights_put_back_the_state_of_frozen_layers_that_write_it():
    from finetunekit.training import BestWeights

    inputs = keras.Input((4,))
    counter = _Counter()
    x = counter(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    for layer in model.layers[:-1]:
        layer.trainable = False
    best = BestWeights(model)
    best.begin_phase()
    best.on_epoch_end(0, {"val_loss": 1.0})  # the first improvement copies everything
    counter.count.assign(5.0)
    model.layers[-1].kernel.assign(model.layers[-1].kernel + 1.0)
    best.on_epoch_end(1, {"val_loss": 2.0})  # worse: nothing copied
    best.restore()
    assert float(counter.count) == 0.0
    kernel = model.layers[-1].kernel.numpy()
    best.on_epoch_end(2, {"val_loss": 0.5})  # better: what may change is copied again
    counter.count.assign(7.0)
    best.restore()
    assert float(counter.count) == 0.0  # the copy made at epoch 2 held 0
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), kernel)


def test_a_plan_before_a_seeded_fit_leaves_its_initial_weights_as_they_were() -> None:
    x, y = _images(24)

    def fitted(plan_first: bool) -> list[np.ndarray]:
        keras.utils.set_random_seed(7)
        tuner = _tuner()
        if plan_first:
            tuner.plan(head_epochs=1, hidden=(8,), dropout=0.2)
        tuner.fit(x, y, head_epochs=1, finetune_epochs=0, hidden=(8,), dropout=0.2,
                  verbose=0)
        return [w.numpy() for w in tuner.model.trainable_weights]

    alone, after_plan = fitted(False), fitted(True)
    assert len(alone) == len(after_plan) == 4  # the hidden layer and the output layer
    for a, b in zip(alone, after_plan, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_load_base_again_after_the_head_is_refused():
    # Re-running a notebook cell: the new base would not be the model's, and unfreeze()
    # then unfroze nothing the model trains, without a word.
    tuner = _tuner().load_base().freeze().add_head()
    base = tuner.base
    with pytest.raises(ftk.errors.StepOrderError, match="has a model already"):
        tuner.load_base()
    assert tuner.base is base
    tuner.unfreeze(1)
    assert any(v in tuner.model.trainable_variables for v in base.trainable_variables)
    # Before the head, loading again just replaces the base.
    again = _tuner().load_base()
    first = again.base
    assert again.load_base().base is not first
