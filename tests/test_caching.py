"""Caching the frozen prefix: the split is exact, shares the model's layers, and trains the same."""

from __future__ import annotations

import logging
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetunekit as ftk
from finetunekit import caching

SHAPE = (32, 32, 3)


def _model(unit: str | None = None, n: int = 0) -> keras.Model:
    base = ftk.load_base("mobilenet_v2", weights=None, input_shape=SHAPE, alpha=0.35)
    ftk.freeze(base)
    model = ftk.add_head(base, 3, dropout=0.0)
    if unit is not None:
        ftk.unfreeze_last(model, n, unit=unit)
    return model


def _images(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, *SHAPE)).astype("float32"), rng.integers(0, 3, n)


@pytest.mark.parametrize(
    ("unit", "n", "cut"),
    [(None, 0, None), ("block", 2, "block_15_add"), ("layer", 4, "block_15_add"),
     ("block", 5, "block_12_add")],
)
def test_split_reproduces_the_full_model(unit: str | None, n: int, cut: str | None) -> None:
    model = _model(unit, n)
    split = caching.split_frozen_prefix(model)
    assert split is not None
    assert split.cut == (cut or "head_pool")  # whole base frozen: stored after pooling
    x, _ = _images(4)
    np.testing.assert_allclose(split.trainer(split.prefix(x)), model(x), atol=1e-6)


def test_trainer_shares_the_models_variables() -> None:
    model = _model("block", 2)
    split = caching.split_frozen_prefix(model)
    assert split is not None
    assert {id(v) for v in split.trainer.trainable_variables} == {
        id(v) for v in model.trainable_variables
    }
    assert not split.prefix.trainable_variables  # everything before the cut is frozen


def test_no_split_when_the_first_block_trains() -> None:
    model = _model()
    ftk.unfreeze_last(model, len(ftk.structure.blocks(model)), unit="block")
    assert caching.split_frozen_prefix(model) is None


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "convnext_tiny"])
def test_bases_with_operations_that_are_not_layers_split(name: str) -> None:
    # `x + 3.0` on Keras tensors (MobileNetV3's hard swish, ConvNeXt's layer scale) puts
    # keras.ops operations, without weights, among the layers of the graph: finding the
    # frozen prefix once failed on them with "'Add' object has no attribute 'weights'".
    base = ftk.load_base(name, weights=None, input_shape=SHAPE)
    model = ftk.add_head(base, 3)
    ftk.freeze(model)
    ftk.unfreeze_last(model, 1, unit="block")
    split = caching.split_frozen_prefix(model)
    assert split is not None and split.cut != "head_pool"
    x, _ = _images(2)
    np.testing.assert_allclose(split.trainer(split.prefix(x)), model(x), atol=1e-5)


def test_a_sequential_base_trains_uncached_and_says_why() -> None:
    # Its graph is Keras' own: the cut failed with AttributeError '_nodes_by_depth'.
    layers = keras.layers
    base = keras.Sequential([
        keras.Input((32, 32, 3)), layers.Rescaling(1 / 255), layers.Conv2D(8, 3),
        layers.BatchNormalization(), layers.Conv2D(16, 3),
    ])
    x = np.random.default_rng(0).uniform(0, 255, (24, 32, 32, 3)).astype("float32")
    tuner = ftk.FineTuner(base, num_classes=3, weights=None)
    before = base.layers[-1].get_weights()[0].copy()
    # No early stopping: its best weights could be the head phase's, base untouched.
    history = tuner.fit(x, np.arange(24) % 3, unfreeze=1, head_epochs=1, finetune_epochs=1,
                        verbose=0, early_stopping=False)
    assert [r.cached for r in history.reports] == [False, False]
    assert "keras.Sequential" in history.reports[0].why_not_cached
    assert not np.allclose(base.layers[-1].get_weights()[0], before)  # trained in place
    assert caching.split_frozen_prefix(tuner.model) is None


def test_a_base_of_two_inputs_is_refused() -> None:
    a, b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    two = keras.Model([a, b], keras.layers.Conv2D(4, 3)(keras.layers.Add()([a, b])))
    for step in (lambda: ftk.add_head(two, 3), lambda: ftk.FineTuner(two, num_classes=3)
                 .load_base()):
        with pytest.raises(ftk.errors.ModelStructureError, match="takes 2 inputs"):
            step()


def test_residual_blocks_are_not_cut() -> None:
    base = ftk.load_base("resnet50", weights=None, input_shape=SHAPE)
    model = ftk.add_head(base, 3)
    ftk.freeze(model)
    ftk.unfreeze_last(model, 5, unit="layer")  # lands inside conv5_block2/3
    split = caching.split_frozen_prefix(model)
    assert split is not None
    assert split.cut.endswith("_out")  # a residual block's output, never inside one
    x, _ = _images(2)
    np.testing.assert_allclose(split.trainer(split.prefix(x)), model(x), atol=1e-5)


def _small_base() -> keras.Model:
    """Three conv/BN/ReLU blocks with plain ReLU, so gradients reach the base at random init."""
    inputs = keras.Input(SHAPE)
    x = inputs
    for i, filters in enumerate((8, 16, 16), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    return keras.Model(inputs, x, name="small")


def _fit(cache: bool | str, x: np.ndarray, y: np.ndarray, budget: int = caching.DEFAULT_BUDGET,
         **kwargs: object) -> ftk.FineTuner:
    keras.utils.set_random_seed(0)
    tuner = ftk.FineTuner(_small_base(), num_classes=3, cache=cache, seed=0, cache_budget=budget)
    tuner.fit(x, y, head_epochs=3, finetune_epochs=3, unfreeze=2, dropout=0.0,
              head_learning_rate=1e-2, finetune_learning_rate=1e-2,
              batch_size=kwargs.pop("batch_size", len(x)), early_stopping=False, verbose=0,
              **kwargs)
    return tuner


def test_cached_and_uncached_training_end_with_the_same_weights() -> None:
    x, y = _images(16)
    keras.utils.set_random_seed(0)
    initial = [w.numpy() for w in _small_base().weights]
    cached = _fit(True, x, y)
    plain = _fit(False, x, y)
    assert cached.last_phase.cached and cached.last_phase.cut == "block1_relu"
    assert not plain.last_phase.cached
    for a, b in zip(cached.model.weights, plain.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5, rtol=1e-4, err_msg=a.path)
    base = cached.model.layers[1]
    trained = [w.numpy() for w in base.weights]
    moved = [not np.allclose(a, b) for a, b in zip(initial, trained, strict=True)]
    names = [w.path for w in base.weights]
    # The unfrozen blocks (2 and 3) trained, block 1 and every BatchNormalization did not.
    assert moved[names.index("block3_conv/kernel")] and moved[names.index("block2_conv/kernel")]
    assert not moved[names.index("block1_conv/kernel")]
    assert not any(m for m, n in zip(moved, names, strict=True) if "_bn/" in n)


@pytest.mark.parametrize("cache", [True, False])
def test_every_phase_traces_its_training_step_once(
    cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keras builds the optimizer inside the first trace of the step; TensorFlow then sees
    # new variables and traces the whole step again. fit builds it ahead: one trace each.
    traced: list[str] = []
    original = keras.Model.train_step

    def counting(self: keras.Model, data: object) -> object:
        traced.append(self.name)
        return original(self, data)

    monkeypatch.setattr(keras.Model, "train_step", counting)
    x, y = _images(16)
    tuner = _fit(cache, x, y)
    assert tuner.last_phase.cached is cache
    assert len(traced) == 2, traced  # the head phase, then the fine-tune phase


def test_building_the_optimizer_ahead_trains_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetunekit import training

    x, y = _images(16)
    ahead = _fit(False, x, y)
    monkeypatch.setattr(training, "build_optimizer", lambda model, settings: None)
    in_trace = _fit(False, x, y)  # as Keras does it: inside the first trace
    for a, b in zip(ahead.model.weights, in_trace.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    keras.utils.set_random_seed(0)
    untrained = _small_base().get_layer("block3_conv").kernel.numpy()
    trained = ahead.model.layers[1].get_layer("block3_conv").kernel.numpy()
    assert not np.allclose(trained, untrained)  # both phases trained: the test compares work


class _TestSteps:
    """Counts the model's `test_step` calls, eager and traced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.eager = self.traced = 0
        original = keras.Model.test_step

        def counting(model: keras.Model, data: object) -> object:
            if tf.executing_eagerly():
                self.eager += 1
            else:
                self.traced += 1
            return original(model, data)

        monkeypatch.setattr(keras.Model, "test_step", counting)


class _EndLogs(keras.callbacks.Callback):
    def on_train_end(self, logs: dict | None = None) -> None:
        self.logs = dict(logs or {})


def _validated(monkeypatch: pytest.MonkeyPatch, cache: bool = True,
               **kwargs: object) -> tuple[ftk.FineTuner, dict[str, list[float]], _TestSteps]:
    steps = _TestSteps(monkeypatch)
    x, y = _images(16)
    tuner = _fit(cache, x, y, validation_data=_images(6, seed=1), **kwargs)
    history = tuner.history.history
    monkeypatch.undo()
    return tuner, history, steps


def test_validation_on_stored_features_runs_eagerly_and_matches_keras(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    end = _EndLogs()
    tuner, eager, steps = _validated(monkeypatch, callbacks=[end])
    assert tuner.last_phase.cached
    # One eager step per epoch (3 + 3) on all the held-out features, nothing traced.
    assert (steps.eager, steps.traced) == (6, 0)
    assert len(eager["val_loss"]) == len(eager["val_accuracy"]) == 6
    assert end.logs["val_loss"] == eager["val_loss"][-1]  # the end-of-training logs too

    monkeypatch.setattr(caching._EagerValidation, "of", staticmethod(lambda *args: None))
    _, keras_own, steps = _validated(monkeypatch)
    assert steps.traced > 0 and steps.eager == 0  # Keras' evaluate, traced per phase
    _, uncached, _ = _validated(monkeypatch, cache=False)
    for other in (keras_own, uncached):
        for key in ("val_loss", "val_accuracy", "loss"):
            np.testing.assert_allclose(eager[key], other[key], atol=1e-4, rtol=1e-4,
                                       err_msg=key)


class _TestHooks(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.began = 0

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.began += 1


def test_keras_validates_where_a_callback_uses_its_test_hooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooks = _TestHooks()
    _, history, steps = _validated(monkeypatch, callbacks=[hooks])
    assert hooks.began == 6 and steps.eager == 0  # TensorBoard, for one, needs them
    _, eager, _ = _validated(monkeypatch)
    np.testing.assert_allclose(history["val_loss"], eager["val_loss"], atol=1e-4, rtol=1e-4)


def test_validation_features_beyond_the_bound_go_through_keras(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The head phase's 6 x 16 pooled floats (384 bytes) stay under it, the fine-tune
    # phase's 6 x 16 x 16 x 8 floats of block 1 (48 KiB) do not.
    monkeypatch.setattr(caching, "EAGER_VALIDATION_BYTES", 1024)
    steps = _TestSteps(monkeypatch)
    x, y = _images(16)
    tuner = _fit(True, x, y, validation_data=_images(6, seed=1))
    assert tuner.last_phase.cached
    assert steps.eager == 3 and steps.traced > 0
    assert len(tuner.history.history["val_loss"]) == 6


def _batch_mean(y_true: object, y_pred: object) -> object:
    """A metric of one number per batch: Keras averages batches, short ones counted alike."""
    return keras.ops.mean(y_pred[:, 0])


def _features_fit(eager: bool, monkeypatch: pytest.MonkeyPatch, outputs: int = 1,
                  callbacks: tuple = ()) -> tuple[dict[str, list[float]], _TestSteps]:
    """fit_on_features on 12 + 10 stored feature rows in batches of 4 (the last of 2)."""
    with monkeypatch.context() as patch:
        if not eager:
            patch.setattr(caching._EagerValidation, "of", staticmethod(lambda *args: None))
        steps = _TestSteps(patch)
        keras.utils.set_random_seed(0)
        inputs = keras.Input((5,))
        heads = [keras.layers.Dense(3, activation="softmax", name=f"out{i}")(inputs)
                 for i in range(outputs)]
        trainer = keras.Model(inputs, heads if outputs > 1 else heads[0])
        trainer.compile(optimizer="adam", loss=["sparse_categorical_crossentropy"] * outputs,
                        metrics=[[_batch_mean, "accuracy"]] * outputs if outputs > 1
                        else [_batch_mean, "accuracy"])
        rng = np.random.default_rng(3)
        x, y = rng.normal(size=(22, 5)).astype("float32"), rng.integers(0, 3, 22)
        targets = tuple([y[12:]] * outputs) if outputs > 1 else y[12:]
        train = tf.data.Dataset.from_tensor_slices(
            (x[:12], tuple([y[:12]] * outputs) if outputs > 1 else y[:12])).batch(4)
        validation = tf.data.Dataset.from_tensor_slices((x[12:], targets)).batch(4)
        history = caching.fit_on_features(trainer, train, epochs=2, validation=validation,
                                          verbose=0, callbacks=list(callbacks))
    return history.history, steps


def test_eager_validation_joins_the_batches_and_reports_what_keras_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eager, steps = _features_fit(True, monkeypatch)
    assert (steps.eager, steps.traced) == (2, 0)  # the 3 batches (4, 4, 2) as one, 2 epochs
    keras_own, steps = _features_fit(False, monkeypatch)
    assert steps.eager == 0 and steps.traced > 0
    assert set(eager) == set(keras_own) >= {"val_loss", "val_accuracy", "val__batch_mean"}
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):  # metrics of each image
        np.testing.assert_allclose(eager[key], keras_own[key], rtol=1e-6, atol=1e-7,
                                   err_msg=key)
    # In chunks of Keras' own batches (4 rows of at most 20 bytes: the input), even a
    # metric of one number per batch reads as Keras reads it.
    monkeypatch.setattr(caching, "EAGER_ACTIVATION_BYTES", 80)
    chunked, steps = _features_fit(True, monkeypatch)
    assert (steps.eager, steps.traced) == (6, 0)
    for key, values in keras_own.items():
        np.testing.assert_allclose(chunked[key], values, rtol=1e-6, atol=1e-7, err_msg=key)
    assert not np.allclose(eager["val__batch_mean"], keras_own["val__batch_mean"])


def test_keras_validates_a_trainer_of_several_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    history, steps = _features_fit(True, monkeypatch, outputs=2)
    assert steps.eager == 0 and steps.traced > 0
    assert len(history["val_loss"]) == 2


def test_a_test_hook_set_on_the_instance_keeps_keras_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    began: list[int] = []
    hook = keras.callbacks.LambdaCallback()
    hook.on_test_begin = lambda logs=None: began.append(1)
    _, steps = _features_fit(True, monkeypatch, callbacks=(hook,))
    assert len(began) == 2 and steps.eager == 0


def test_a_batch_hook_set_on_the_instance_sees_every_batch() -> None:
    ends: list[int] = []
    counter = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append(batch)
    )
    x, y = _images(16)
    tuner = _fit(True, x, y, callbacks=[counter], batch_size=4)
    assert tuner.last_phase.cached
    assert ends == [0, 1, 2, 3] * 6  # 4 batches in each of 3 + 3 epochs, one step per call


def test_savers_per_epoch_keep_several_steps_per_call(tmp_path: object) -> None:
    from finetunekit import training

    path = os.path.join(str(tmp_path), "m.keras")
    assert not training._acts_on_batches([keras.callbacks.ModelCheckpoint(path)])
    assert not training._acts_on_batches([keras.callbacks.BackupAndRestore(str(tmp_path))])
    assert training._acts_on_batches([keras.callbacks.ModelCheckpoint(path, save_freq=2)])
    assert training._acts_on_batches(
        [keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=2)]
    )


def test_both_phases_come_from_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[int] = []
    original = caching.FeatureCache.__init__

    def counting(self: caching.FeatureCache, prefix: keras.Model, *args: object,
                 **kwargs: object) -> None:
        passes.append(len(prefix.outputs))
        original(self, prefix, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(caching.FeatureCache, "__init__", counting)
    x, y = _images(12)
    tuner = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=SHAPE,
                          alpha=0.35)
    history = tuner.fit(x, y, validation_data=_images(6, seed=1), head_epochs=1,
                        finetune_epochs=1, verbose=0)
    assert history.phases == ["head", "finetune"]
    assert passes == [2, 2]  # training and validation data, each once, two cuts at a time


def test_spill_to_disk_trains_and_cleans_up(tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x, y = _images(16)
    in_memory = _fit(True, x, y)
    with caplog.at_level(logging.INFO, logger="finetunekit"):
        spilled = _fit(True, x, y, budget=0)
    assert spilled.last_phase.spilled is True
    assert "spilling to" in caplog.text
    leftovers = [f for f in os.listdir(str(tmp_path)) if f.endswith(".features")]
    assert leftovers == []  # the spilled feature files are gone
    # Same batches, but a spilled batch is read in file order: sums in another order, and
    # the head's unit normalization passes such float noise on. A batch out of place or a
    # label paired with the wrong features moves the weights by 1e-2 and more.
    for a, b in zip(in_memory.model.weights, spilled.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=5e-5, rtol=1e-4, err_msg=a.path)


def test_feature_cache_reshuffles_every_epoch() -> None:
    x, y = _images(64)
    prefix = keras.Sequential([keras.Input(SHAPE), keras.layers.GlobalAveragePooling2D()])
    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(64))).batch(8)
    with caching.FeatureCache(prefix, dataset) as cache:
        ds = cache.dataset(shuffle=True, seed=0)
        first = np.concatenate([b.numpy() for _, b in ds])
        second = np.concatenate([b.numpy() for _, b in ds])
        np.testing.assert_allclose(cache.features[0], x.mean(axis=(1, 2)), rtol=1e-5)
    assert sorted(first) == sorted(second) == list(range(64))
    assert list(first) != list(second)


def test_the_iterators_of_stored_features_do_not_autotune(untuned_reads: list) -> None:
    # Deleting an iterator of an autotuned pipeline waited for the tuner's next wake-up
    # (up to seconds after a long pass); Keras makes an iterator every epoch.
    x, y = _images(16)
    prefix = keras.Sequential([keras.Input(SHAPE), keras.layers.GlobalAveragePooling2D()])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    read = untuned_reads
    with caching.FeatureCache(prefix, dataset) as cache:
        batches = cache.dataset(shuffle=True, seed=0)
    assert len(read) == 2  # the pass and the batches
    assert all(ds.options().autotune.enabled is False for ds in (*read, batches))
    assert dataset.options().autotune.enabled is not False  # the caller's stays as it was


class _CountTraces(keras.layers.Layer):
    """Identity that counts how often its Python `call` runs (once per trace in graph mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        self.calls += 1
        return inputs


def test_feature_cache_traces_the_prefix_once_for_every_batch_size() -> None:
    # 70 images in batches of 32: two full batches and a last one of 6. Tracing a whole
    # base costs about as much as running it over a few hundred small images.
    x, _ = _images(70)
    counter = _CountTraces()
    inputs = keras.Input(SHAPE)
    prefix = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(counter(inputs)))
    counter.calls = 0  # the symbolic call that built the model
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(70))).batch(32)
    with caching.FeatureCache(prefix, dataset) as cache:
        assert len(cache) == 70
        np.testing.assert_allclose(cache.features[0], x.mean(axis=(1, 2)), rtol=1e-5)
    assert counter.calls == 1
    # A second dataset through the same prefix (the validation data) reuses the trace.
    validation = tf.data.Dataset.from_tensor_slices((x[:10], np.zeros(10))).batch(4)
    with caching.FeatureCache(prefix, validation) as cache:
        np.testing.assert_allclose(cache.features[0], x[:10].mean(axis=(1, 2)), rtol=1e-5)
    assert counter.calls == 1


@pytest.mark.parametrize(
    ("kwargs", "fit_kwargs", "reason"),
    [
        ({"cache": False}, {}, "cache=False"),
    ],
)
def test_auto_turns_itself_off_and_says_why(
    kwargs: dict, fit_kwargs: dict, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    x, y = _images(8)
    tuner = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=SHAPE,
                          alpha=0.35, **kwargs)
    with caplog.at_level(logging.INFO, logger="finetunekit"):
        tuner.fit(x, y, head_epochs=1, finetune_epochs=0, early_stopping=False, verbose=0,
                  **fit_kwargs)
    assert tuner.last_phase.cached is False
    assert reason in tuner.last_phase.why_not_cached
    assert reason in caplog.text


def test_cache_must_be_auto_true_or_false() -> None:
    with pytest.raises(ValueError, match="cache must be"):
        ftk.FineTuner("mobilenet_v2", weights=None, cache="yes")
