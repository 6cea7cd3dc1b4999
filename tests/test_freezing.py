"""freeze / unfreeze_last: the base only, BatchNormalization policy, counting, errors."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

import finetunekit as ftk
from finetunekit import structure, tasks
from finetunekit.errors import ConfigError
from finetunekit.freezing import trainable_report


@pytest.fixture(scope="module")
def shared_base():
    return ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)


@pytest.fixture
def base(shared_base):
    """The shared base, all trainable again (as load_base returns it)."""
    shared_base.trainable = True
    for layer in structure.leaf_layers(shared_base):
        layer.trainable = not structure.is_preprocessing(layer)
    assert len(shared_base.trainable_variables) == 156  # 52 convs + 52 BN x 2
    return shared_base


@pytest.fixture
def model(base):
    """The seed document's head: pool, a hidden layer, dropout, output (4 layers)."""
    return ftk.add_head(base, 5, hidden=(32,))


def trainable_base_layers(base) -> list[str]:
    """Names of the base's leaf layers whose weights are really trainable."""
    ids = {id(v) for v in base.trainable_variables}
    return [
        layer.name
        for layer in structure.leaf_layers(base)
        if layer.weights and any(id(v) in ids for v in layer.weights)
    ]


def head_variables(model) -> list:
    return [v for layer in model.layers if layer.name.startswith("head_") for v in layer.weights]


def test_freeze_bare_base(base):
    assert ftk.freeze(base) is base
    assert base.trainable_variables == []
    assert trainable_base_layers(base) == []


def test_freeze_full_model_keeps_the_head_trainable(base, model):
    assert ftk.freeze(model) is model
    assert base.trainable_variables == []
    head = head_variables(model)
    assert len(head) == 4  # two Dense layers: kernel and bias each
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in head}


def test_freeze_with_train_bn_keeps_only_batchnorm(base):
    ftk.freeze(base, train_bn=True)
    names = trainable_base_layers(base)
    assert names and all(
        isinstance(base.get_layer(n), keras.layers.BatchNormalization) for n in names
    )
    assert len(names) == sum(
        isinstance(x, keras.layers.BatchNormalization) for x in structure.leaf_layers(base)
    )


def test_the_seed_document_trap(base, model):
    """Step 6 of the seed document unfreezes the head again, not the base."""
    assert [layer.name for layer in model.layers[-4:]] == [
        "head_pool",
        "head_dense_1",
        "head_dropout_1",
        "head_output",
    ]
    ftk.freeze(model)
    for layer in model.layers[-4:]:
        layer.trainable = True
    assert trainable_base_layers(base) == []  # no base weight unfrozen

    ftk.unfreeze_last(model, 4)
    unfrozen = trainable_base_layers(base)
    assert len(unfrozen) == 4
    assert unfrozen == ["block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"]


def flat_classifier(activation: str = "softmax") -> keras.Model:
    """The Keras layout with the head on the base's own layers: no nested base."""
    bare = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    pooled = keras.layers.GlobalAveragePooling2D()(bare.output)
    out = keras.layers.Dense(3, activation=activation, name="my_out")(pooled)
    return keras.Model(bare.input, out)


@pytest.mark.parametrize(
    "step",
    [
        lambda m: ftk.freeze(m),
        lambda m: ftk.unfreeze_last(m, 2),
        lambda m: ftk.add_head(m, 3),
        lambda m: ftk.FineTuner(m, num_classes=3, weights=None).load_base(),
    ],
    ids=["freeze", "unfreeze_last", "add_head", "FineTuner"],
)
def test_a_head_on_the_bases_own_layers_is_refused(step) -> None:
    # freeze froze the head too (fit trained nothing), unfreeze_last(m, 1) unfroze only
    # the head, and add_head stacked a second head on the softmax.
    model = flat_classifier()
    with pytest.raises(ftk.errors.ModelStructureError, match="cannot tell its base from its head"):
        step(model)
    assert len(model.trainable_weights) == len(flat_classifier().trainable_weights)


def test_a_base_ending_in_pooling_or_logits_is_still_a_base() -> None:
    pooled = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35, pooling="avg"
    )
    assert structure.find_base(ftk.freeze(pooled)) is pooled
    assert pooled.trainable_weights == []
    logits = flat_classifier(activation="relu")
    assert structure.find_base(logits) is logits  # not a probability output: a base


def test_unfreeze_last_layers_counts_only_weighted_layers(base, model):
    ftk.freeze(model)
    ftk.unfreeze_last(model, 4)
    layers = [base.get_layer(n) for n in trainable_base_layers(base)]
    assert len(layers) == 4
    assert all(x.weights for x in layers)
    assert not any(isinstance(x, keras.layers.BatchNormalization) for x in layers)
    # Exactly their variables train in the base (plus the untouched head).
    expected = {id(v) for x in layers for v in x.trainable_weights} | {
        id(v) for v in head_variables(model)
    }
    assert {id(v) for v in model.trainable_variables} == expected


def test_batchnorm_stays_frozen_after_unfreeze_unless_asked(base):
    ftk.unfreeze_last(base, 10)
    assert not any(
        isinstance(base.get_layer(n), keras.layers.BatchNormalization)
        for n in trainable_base_layers(base)
    )
    ftk.unfreeze_last(base, 4, train_bn=True)
    assert trainable_base_layers(base) == [
        "block_16_project",
        "block_16_project_BN",
        "Conv_1",
        "Conv_1_bn",
    ]


def test_unfreeze_last_blocks(base, model):
    ftk.freeze(model)
    ftk.unfreeze_last(model, 2, unit="block")
    assert trainable_base_layers(base) == [
        "block_16_expand",
        "block_16_depthwise",
        "block_16_project",
        "Conv_1",
    ]
    ftk.unfreeze_last(model, 2, unit="block", train_bn=True)
    names = trainable_base_layers(base)
    assert len(names) == 8
    assert all(n.startswith(("block_16_", "Conv_1")) for n in names)


def test_unfreeze_last_is_exact_not_cumulative(base):
    ftk.unfreeze_last(base, 10)
    ftk.unfreeze_last(base, 1)
    assert trainable_base_layers(base) == ["Conv_1"]


def test_unfreeze_everything(base):
    count = len(structure.blocks(base))
    ftk.unfreeze_last(base, count, unit="block")
    kernels = [
        x
        for x in structure.weighted_layers(base)
        if not isinstance(x, keras.layers.BatchNormalization)
    ]
    assert len(trainable_base_layers(base)) == len(kernels)


def test_unfreeze_never_touches_the_head(base, model):
    ftk.freeze(model)
    model.get_layer("head_dense_1").trainable = False  # the user's choice stays
    ftk.unfreeze_last(model, 3)
    ftk.unfreeze_last(model, 2, unit="block")
    assert model.get_layer("head_dense_1").trainable is False
    assert model.get_layer("head_output").trainable is True


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        (dict(n=0), "positive int"),
        (dict(n=-2), "positive int"),
        (dict(n=2.5), "positive int"),
        (dict(n=True), "positive int"),
        (dict(n=10_000), "has only"),
        (dict(n=10_000, unit="block"), "has only"),
        (dict(n=2, unit="blocks"), "unit must be"),
    ],
)
def test_unfreeze_last_bad_arguments(base, kwargs, phrase):
    with pytest.raises(ConfigError, match=phrase) as info:
        ftk.unfreeze_last(base, **kwargs)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ftk.FinetuneKitError)


def test_n_too_large_says_how_many_there_are(base):
    weighted = [
        x
        for x in structure.weighted_layers(base)
        if not isinstance(x, keras.layers.BatchNormalization)
    ]
    with pytest.raises(ConfigError, match=f"only {len(weighted)} layers"):
        ftk.unfreeze_last(base, len(weighted) + 1)
    ftk.unfreeze_last(base, len(weighted))  # exactly all of them is fine


def test_numpy_integer_n_is_accepted(base):
    ftk.unfreeze_last(base, np.int64(2))
    assert trainable_base_layers(base) == ["block_16_project", "Conv_1"]


def test_trainable_change_after_compile_is_logged_and_detected(model, caplog):
    ftk.freeze(model)
    ftk.compile_for(model, "multiclass")
    assert not tasks.is_stale(model)
    with caplog.at_level(logging.INFO, logger="finetunekit"):
        ftk.unfreeze_last(model, 2)
    assert "compile_for" in caplog.text
    assert tasks.is_stale(model)
    ftk.compile_for(model, "multiclass", learning_rate=1e-5)
    assert not tasks.is_stale(model)


def test_trainable_report(base, model):
    ftk.freeze(model)
    report = trainable_report(model)
    head_params = 1280 * 32 + 32 + 32 * 5 + 5
    assert report.trainable_params == head_params
    assert report.frozen_params == model.count_params() - head_params
    assert report.base_trainable_layers == ()
    assert report.trainable_blocks == ()
    assert report.batchnorm.startswith("frozen")
    ftk.unfreeze_last(model, 2, unit="block", train_bn=True)
    report = trainable_report(model)
    assert report.trainable_blocks == ("block_16", "Conv_1")
    assert report.batchnorm.startswith("training")
