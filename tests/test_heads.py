"""add_head: the base nested once in inference mode, head_* layers, task activations, dtypes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import finetunekit as ftk
from finetunekit.errors import ConfigError, ModelStructureError


@pytest.fixture(scope="module")
def base():
    """Shared: add_head leaves the base as it is (tests that train use their own)."""
    return ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_base_is_nested_once_and_called_in_inference_mode(base):
    model = ftk.add_head(base, num_classes=3)
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert nested == [base]
    assert model.layers[1] is base
    nodes = [node for node in base._inbound_nodes if node.operation is base]
    calls = [node.arguments.kwargs.get("training") for node in nodes]
    assert calls[-1] is False
    assert model.input_shape == base.input_shape


def _bn_state(layer) -> dict[str, np.ndarray]:
    return {v.path.rsplit("/", 1)[-1]: v.numpy().copy() for v in layer.weights}


def small_bn_base():
    """conv -> BN -> ReLU twice: cheap to train."""
    inputs = keras.Input((16, 16, 3))
    x = inputs
    for i in (1, 2):
        x = keras.layers.Conv2D(4, 3, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"conv{i}_bn")(x)
        x = keras.layers.ReLU(name=f"conv{i}_relu")(x)
    return keras.Model(inputs, x, name="small")


def test_frozen_batchnorm_does_not_drift_while_the_layers_around_it_train():
    base = small_bn_base()
    model = ftk.add_head(base, num_classes=3, dropout=0)
    ftk.unfreeze_last(model, 2)  # both convs train, BN stays frozen
    ftk.compile_for(model, "multiclass", learning_rate=0.1)
    bn, conv = base.get_layer("conv2_bn"), base.get_layer("conv2")
    before, kernel = _bn_state(bn), conv.kernel.numpy().copy()
    model.train_on_batch(images(8, 16), np.arange(8) % 3)
    after = _bn_state(bn)
    assert not np.array_equal(kernel, conv.kernel.numpy())  # the unfrozen conv trained
    for name in ("moving_mean", "moving_variance", "gamma", "beta"):
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


def test_head_phase_leaves_the_whole_base_untouched():
    base = small_bn_base()
    model = ftk.add_head(base, num_classes=3, dropout=0)
    ftk.freeze(model)
    ftk.compile_for(model, "multiclass", learning_rate=0.1)
    before = [w.numpy().copy() for w in base.weights]
    head = model.get_layer("head_output").kernel.numpy().copy()
    model.train_on_batch(images(8, 16), np.arange(8) % 3)
    for old, new in zip(before, base.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy(), err_msg=new.path)
    assert not np.array_equal(head, model.get_layer("head_output").kernel.numpy())


def test_train_bn_trains_batchnorm():
    base = small_bn_base()
    model = ftk.add_head(base, num_classes=3, dropout=0)
    ftk.freeze(model, train_bn=True)
    ftk.compile_for(model, "multiclass", learning_rate=0.1)
    bn = base.get_layer("conv2_bn")
    before = _bn_state(bn)
    model.train_on_batch(images(8, 16), np.arange(8) % 3)
    assert not np.array_equal(before["gamma"], _bn_state(bn)["gamma"])


def test_head_layers_are_named_head(base):
    model = ftk.add_head(base, num_classes=3, hidden=(16, 8), dropout=0.3)
    head = [layer.name for layer in model.layers[2:]]
    assert head == [
        "head_pool",
        "head_dense_1",
        "head_dropout_1",
        "head_dense_2",
        "head_dropout_2",
        "head_output",
    ]
    assert model.get_layer("head_dense_1").units == 16
    assert model.get_layer("head_dropout_2").rate == pytest.approx(0.3)


def test_default_head_is_pool_dropout_output(base):
    model = ftk.add_head(base, num_classes=3)
    assert [layer.name for layer in model.layers[2:]] == [
        "head_pool",
        "head_dropout",
        "head_output",
    ]
    no_dropout = ftk.add_head(base, num_classes=3, dropout=0)
    assert [layer.name for layer in no_dropout.layers[2:]] == ["head_pool", "head_output"]


def test_normalize_gives_the_head_unit_length_features(base):
    model = ftk.add_head(base, num_classes=3, normalize=True)
    assert [layer.name for layer in model.layers[2:]] == [
        "head_pool",
        "head_normalize",
        "head_dropout",
        "head_output",
    ]
    features = keras.Model(model.input, model.get_layer("head_normalize").output)
    norms = np.linalg.norm(features.predict(images(), verbose=0), axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("task", "num_classes", "expected"),
    [
        ("multiclass", 3, True),
        ("multilabel", 3, True),
        ("binary", None, True),
        ("regression", 1, False),
    ],
)
def test_finetuner_normalizes_features_for_classification_only(task, num_classes, expected):
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes, task=task, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    names = [layer.name for layer in tuner.load_base().add_head().model.layers]
    assert ("head_normalize" in names) is expected
    explicit = [layer.name for layer in tuner.add_head(normalize=not expected).model.layers]
    assert ("head_normalize" in explicit) is (not expected)


@pytest.mark.parametrize(
    ("task", "num_classes", "units", "activation"),
    [
        ("multiclass", 5, 5, "softmax"),
        ("binary", None, 1, "sigmoid"),
        ("binary", 2, 1, "sigmoid"),
        ("multilabel", 4, 4, "sigmoid"),
        ("regression", None, 1, "linear"),
        ("regression", 3, 3, "linear"),
    ],
)
def test_output_follows_the_task(base, task, num_classes, units, activation):
    model = ftk.add_head(base, num_classes, task=task)
    output = model.get_layer("head_output")
    assert output.units == units
    assert output.activation.__name__ == activation
    out = np.asarray(model(images(2), training=False))
    assert out.shape == (2, units)
    if activation == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    if activation == "sigmoid":
        assert ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize(
    ("pooling", "layer"),
    [
        ("avg", keras.layers.GlobalAveragePooling2D),
        ("max", keras.layers.GlobalMaxPooling2D),
        ("flatten", keras.layers.Flatten),
    ],
)
def test_pooling(base, pooling, layer):
    model = ftk.add_head(base, num_classes=3, pooling=pooling)
    assert isinstance(model.layers[2], layer)
    assert model.layers[2].name.startswith("head_")
    assert model.output_shape == (None, 3)


def test_pooling_none_on_a_base_that_outputs_vectors():
    inputs = keras.Input((8,))
    vectors = keras.Model(inputs, keras.layers.Dense(4, name="features")(inputs))
    model = ftk.add_head(vectors, num_classes=3, pooling=None)
    assert model.output_shape == (None, 3)


def test_flatten_needs_a_fixed_input_size():
    base = ftk.load_base("mobilenet_v2", weights=None, input_shape=(None, None, 3), alpha=0.35)
    with pytest.raises(ConfigError, match="pooling='avg'"):
        ftk.add_head(base, num_classes=3, pooling="flatten")
    model = ftk.add_head(base, num_classes=3)  # avg pooling works at any size
    assert np.asarray(model(images(1, 48), training=False)).shape == (1, 3)


def test_output_stays_float32_under_mixed_precision(mixed_precision):
    base = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    model = ftk.add_head(base, num_classes=3, hidden=(8,))
    assert model.get_layer("head_dense_1").compute_dtype == "float16"
    assert model.get_layer("head_output").compute_dtype == "float32"
    assert keras.backend.standardize_dtype(model.output.dtype) == "float32"
    assert np.asarray(model(images(2), training=False)).dtype == np.float32


def test_mixed_precision_fixture_restored_the_policy():
    assert keras.mixed_precision.global_policy().name == "float32"


def test_add_head_twice_is_refused(base):
    model = ftk.add_head(base, num_classes=3)
    with pytest.raises(ModelStructureError, match="already has a head") as info:
        ftk.add_head(model, num_classes=3)
    assert isinstance(info.value, ValueError)


def test_a_head_of_the_users_own_is_refused_and_layers_before_the_base_are_not(base):
    inputs = keras.Input((32, 32, 3))
    scaled = keras.layers.Rescaling(1.0, name="scale")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(base(scaled, training=False))
    own = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="pred")(pooled))
    with pytest.raises(ModelStructureError, match=r"head of its own .*: pred\)"):
        ftk.add_head(own, num_classes=5)
    # the same layout without weights after the base (features out) takes a head
    features = keras.Model(inputs, pooled)
    model = ftk.add_head(features, num_classes=5, pooling=None)
    assert model.output_shape == (None, 5)
    # and so does a neck of feature maps after the base (a 1x1 convolution)
    neck = keras.layers.Conv2D(8, 1, name="neck")(base(scaled, training=False))
    assert ftk.add_head(keras.Model(inputs, neck), num_classes=5).output_shape == (None, 5)


def test_hidden_none_means_no_hidden_layer(base):
    model = ftk.add_head(base, num_classes=3, hidden=None)
    assert not any(layer.name.startswith("head_dense") for layer in model.layers)


def test_numpy_integer_num_classes_is_accepted(base):
    labels = np.array([0, 1, 2, 1])
    model = ftk.add_head(base, labels.max() + 1)  # np.int64
    assert model.output_shape == (None, 3)


def test_add_head_on_a_sequential_base():
    base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    model = ftk.add_head(base, num_classes=2)
    assert model.layers[1] is base
    assert model.output_shape == (None, 2)


def test_unit_normalization_computes_in_float32_under_mixed_precision(mixed_precision):
    # In float16 the sum of squares of 1280 pooled features overflows past 65,504 (all
    # at 8: 81,920): the normalized features became 0 and the model predicted the same
    # for every image, silently.
    inputs = keras.Input((1280,))
    base = keras.Model(inputs, keras.layers.Identity()(inputs), name="features")
    model = ftk.add_head(base, num_classes=3, pooling=None, normalize=True)
    assert model.get_layer("head_normalize").compute_dtype == "float32"
    features = np.full((2, 1280), 8.0, "float32")
    features[1, :640] = 2.0
    normalized = keras.Model(model.inputs, model.get_layer("head_normalize").output)([features])
    expected = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(normalized, "float32"), expected, rtol=2e-3)
