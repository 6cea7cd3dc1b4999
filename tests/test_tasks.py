"""compile_for: loss and metrics per task and label mode, logits, checks, stale compiles."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import finetunekit as ftk
from finetunekit import tasks
from finetunekit.errors import ConfigError, ModelStructureError, StepOrderError


def tiny_base():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv_b")(x)
    return keras.Model(inputs, x, name="tiny")


def tiny_model(task="multiclass", num_classes=3):
    return ftk.add_head(tiny_base(), num_classes, task=task, dropout=0)


def logits_model(units=3):
    """A model whose last layer is linear: its outputs are logits."""
    base = tiny_base()
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(units, name="logits")(x))


X = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 3)).astype("float32")
Y_INT = np.array([0, 1, 2, 0, 1, 2])


def evaluate(model, y):
    return model.evaluate(X, y, verbose=0, return_dict=True)


@pytest.mark.parametrize(
    ("task", "num_classes", "label_mode", "y", "loss", "metrics"),
    [
        (
            "multiclass",
            3,
            "int",
            Y_INT,
            keras.losses.SparseCategoricalCrossentropy,
            {"loss", "accuracy"},
        ),
        (
            "multiclass",
            3,
            "categorical",
            np.eye(3)[Y_INT],
            keras.losses.CategoricalCrossentropy,
            {"loss", "accuracy"},
        ),
        (
            "multiclass",
            3,
            "binary",  # image_dataset_from_directory's name for one-hot
            np.eye(3)[Y_INT],
            keras.losses.CategoricalCrossentropy,
            {"loss", "accuracy"},
        ),
        (
            "binary",
            None,
            "int",
            Y_INT % 2,
            keras.losses.BinaryCrossentropy,
            {"loss", "accuracy", "auc"},
        ),
        (
            "multilabel",
            4,
            "binary",
            np.array([[1, 0, 1, 0]] * 3 + [[0, 1, 0, 1]] * 3),
            keras.losses.BinaryCrossentropy,
            {"loss", "accuracy", "auc"},
        ),
        (
            "regression",
            None,
            "int",
            np.linspace(0, 1, 6),
            keras.losses.MeanSquaredError,
            {"loss", "mae"},
        ),
    ],
)
def test_loss_and_metrics_per_task(task, num_classes, label_mode, y, loss, metrics):
    model = tiny_model(task, num_classes)
    assert ftk.compile_for(model, task, label_mode=label_mode) is model
    assert isinstance(model.loss, loss)
    assert getattr(model.loss, "from_logits", False) is False
    result = evaluate(model, y)
    assert set(result) == metrics
    assert all(np.isfinite(v) for v in result.values())


def test_accuracy_metric_matches_the_label_encoding():
    model = tiny_model()
    ftk.compile_for(model, "multiclass")
    predicted = np.argmax(model.predict(X, verbose=0), axis=1)
    expected = float(np.mean(predicted == Y_INT))
    assert evaluate(model, Y_INT)["accuracy"] == pytest.approx(expected)
    ftk.compile_for(model, "multiclass", label_mode="categorical")
    assert evaluate(model, np.eye(3)[Y_INT])["accuracy"] == pytest.approx(expected)


def test_linear_output_is_treated_as_logits():
    model = logits_model(3)
    ftk.compile_for(model, "multiclass")
    assert model.loss.from_logits is True
    binary = logits_model(1)
    ftk.compile_for(binary, "binary")
    assert binary.loss.from_logits is True
    assert set(evaluate(binary, Y_INT % 2)) == {"loss", "accuracy", "auc"}  # AUC from logits
    regression = tiny_model("regression")
    ftk.compile_for(regression, "regression")
    assert getattr(regression.loss, "from_logits", False) is False


def op_model(units, op):
    """A model whose output activation is a keras.ops call after a linear Dense."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(tiny_base()(inputs))
    dense = keras.layers.Dense(units, bias_initializer=keras.initializers.Constant(-2.0))
    return keras.Model(inputs, op(dense(x)))


def test_an_activation_applied_as_an_op_is_read_from_the_output():
    # keras.ops.sigmoid after Dense(1) was taken for logits (the last *layer* is linear):
    # binary accuracy thresholded probabilities at 0 and read 0.2 where it was 0.8.
    binary = op_model(1, keras.ops.sigmoid)
    ftk.compile_for(binary, "binary")
    assert getattr(binary.loss, "from_logits", False) is False
    y = np.array([0, 0, 0, 0, 1, 1])
    p = binary.predict(X, verbose=0)[:, 0]
    assert evaluate(binary, y)["accuracy"] == pytest.approx(float(np.mean((p >= 0.5) == y)))
    assert ftk.Classifier(binary).task == "binary"
    multiclass = op_model(3, keras.ops.softmax)
    ftk.compile_for(multiclass, "multiclass")
    assert getattr(multiclass.loss, "from_logits", False) is False
    assert ftk.Classifier(multiclass).task == "multiclass"


@pytest.mark.parametrize(
    ("task", "units", "activation"),
    [("binary", 1, "tanh"), ("multilabel", 3, "relu"), ("multiclass", 3, "relu")],
)
def test_outputs_that_are_neither_probabilities_nor_logits_are_refused(task, units, activation):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(tiny_base()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(units, activation=activation)(x))
    with pytest.raises(ConfigError, match=f"ends in {activation}, whose outputs are neither"):
        ftk.compile_for(model, task)
    ftk.compile_for(model, "regression")  # values may be anything


def test_tensorflow_and_custom_activations_are_not_refused():
    import tensorflow as tf

    def own_softmax(x):
        return keras.ops.softmax(x)

    for activation in (tf.nn.softmax, own_softmax):  # tf.nn.softmax is named softmax_v2
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.GlobalAveragePooling2D()(tiny_base()(inputs))
        model = keras.Model(inputs, keras.layers.Dense(3, activation=activation)(x))
        ftk.compile_for(model, "multiclass")


def test_optimizer_and_learning_rate():
    model = tiny_model()
    ftk.compile_for(model, learning_rate=1e-4, optimizer="SGD")
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    first = model.optimizer
    ftk.compile_for(model, learning_rate=np.float32(1e-3))  # numpy numbers are fine
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert model.optimizer is not first  # a fresh optimizer every compile
    mine = keras.optimizers.RMSprop(learning_rate=0.01)
    ftk.compile_for(model, optimizer=mine)
    assert model.optimizer is mine


def test_an_optimizer_built_for_the_same_variables_can_be_passed_again():
    model = tiny_model()
    ftk.freeze(model)  # the base: only the head trains
    mine = keras.optimizers.Adam(1e-3)
    ftk.compile_for(model, optimizer=mine)
    model.fit(X, Y_INT, epochs=1, verbose=0)  # builds `mine` for these variables
    assert mine.built
    ftk.compile_for(model, optimizer=mine, metrics=["accuracy"])  # e.g. to change metrics
    model.fit(X, Y_INT, epochs=1, verbose=0)
    assert int(mine.iterations) == 2  # one step per fit (6 images, one batch), same state
    # After unfreezing, the same instance meets weights it does not know: refused at once.
    ftk.unfreeze_last(model, 1, unit="layer")
    with pytest.raises(ConfigError, match="already built for other variables"):
        ftk.compile_for(model, optimizer=mine)


def test_custom_metrics_replace_the_defaults():
    model = tiny_model()
    ftk.compile_for(model, metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    assert set(evaluate(model, Y_INT)) == {"loss", "top2"}


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        (dict(task="classification"), "task must be one of"),
        (dict(optimizer="adamax2"), "optimizer must be one of"),
        (dict(optimizer=3), "optimizer must be one of"),
        (dict(learning_rate=0), "learning_rate must be a positive"),
        (dict(learning_rate=-1e-3), "learning_rate must be a positive"),
        (dict(learning_rate="fast"), "learning_rate must be a positive"),
        (dict(learning_rate=float("nan")), "learning_rate must be a positive"),
        (dict(learning_rate=float("inf")), "learning_rate must be a positive"),
        (dict(label_mode="onehot"), "label_mode for task='multiclass'"),
    ],
)
def test_bad_arguments(kwargs, phrase):
    with pytest.raises(ConfigError, match=phrase) as info:
        ftk.compile_for(tiny_model(), **kwargs)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("task", "model_task", "num_classes", "phrase"),
    [
        ("binary", "multiclass", 5, "one sigmoid output unit"),
        ("multilabel", "multiclass", 5, "needs a sigmoid output"),
        ("multiclass", "multilabel", 5, "needs a softmax output"),
        ("multiclass", "binary", None, "one unit per class"),
    ],
)
def test_output_that_does_not_fit_the_task(task, model_task, num_classes, phrase):
    model = tiny_model(model_task, num_classes)
    with pytest.raises(ConfigError, match=phrase):
        ftk.compile_for(model, task)


def test_label_mode_not_accepted_by_the_task():
    with pytest.raises(ConfigError, match="label_mode for task='binary'"):
        ftk.compile_for(tiny_model("binary", None), "binary", label_mode="categorical")


@pytest.mark.parametrize(("task", "num_classes"), [("binary", None), ("multilabel", 4)])
def test_default_label_mode_works_for_every_task(task, num_classes):
    model = tiny_model(task, num_classes)
    ftk.compile_for(model, task)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)


def test_check_compiled_catches_never_compiled_and_stale_models():
    model = tiny_model()
    with pytest.raises(StepOrderError, match="not compiled"):
        tasks.check_compiled(model)
    ftk.compile_for(model)
    tasks.check_compiled(model)
    ftk.freeze(model)
    assert tasks.is_stale(model)
    with pytest.raises(StepOrderError, match="changed since it was compiled") as info:
        tasks.check_compiled(model)
    assert isinstance(info.value, RuntimeError)


def test_fit_refuses_a_stale_compile_and_trains_after_recompiling():
    model = tiny_model()
    base = model.layers[1]
    ftk.freeze(model)
    ftk.compile_for(model)
    model.fit(X, Y_INT, epochs=1, verbose=0)
    ftk.unfreeze_last(model, 1)  # conv_b
    with pytest.raises(StepOrderError, match="compile_for"):
        model.fit(X, Y_INT, epochs=1, verbose=0)
    ftk.compile_for(model, learning_rate=0.1)
    before = base.get_layer("conv_b").kernel.numpy().copy()
    frozen = base.get_layer("conv_a").kernel.numpy().copy()
    model.fit(X, Y_INT, epochs=1, verbose=0)
    assert not np.array_equal(before, base.get_layer("conv_b").kernel.numpy())
    np.testing.assert_array_equal(frozen, base.get_layer("conv_a").kernel.numpy())


def test_compile_for_refuses_a_model_of_two_outputs():
    base = tiny_base()
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    model = keras.Model(
        inputs, [keras.layers.Dense(3, activation="softmax")(x), keras.layers.Dense(1)(x)]
    )
    with pytest.raises(ModelStructureError, match="has 2 outputs"):
        ftk.compile_for(model)
