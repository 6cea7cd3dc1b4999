"""structure: the base inside a full model, cut points and blocks read from the graph."""

from __future__ import annotations

import re
from collections import defaultdict

import keras
import numpy as np
import pytest

import finetunekit as ftk
from finetunekit import structure
from finetunekit.errors import ArgumentTypeError, ModelStructureError

KERNELS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)
FOLLOWERS = (keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU)


@pytest.fixture(scope="module")
def mobilenet_v2():
    return ftk.load_base("mobilenet_v2", weights=None, input_shape=(96, 96, 3), alpha=0.35)


@pytest.fixture(scope="module")
def resnet50():
    return ftk.load_base("resnet50", weights=None, input_shape=(32, 32, 3))


def block_of(blocks) -> dict[int, int]:
    """id(layer) -> index of its block."""
    return {id(layer): i for i, block in enumerate(blocks) for layer in block.layers}


def consumers(layer) -> list:
    return [node.operation for node in layer._outbound_nodes]


def assert_partition(model, blocks) -> None:
    """Every layer of the base but the input is in exactly one block."""
    in_blocks = [id(layer) for block in blocks for layer in block.layers]
    expected = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert len(in_blocks) == len(set(in_blocks)) == len(expected)
    assert set(in_blocks) == {id(x) for x in expected}
    assert all(block.layers for block in blocks)


def assert_kernels_keep_their_followers(model, blocks) -> None:
    """A conv/dense layer is in the block of the BN and activation that follow it."""
    where = block_of(blocks)
    checked = 0
    for layer in model.layers:
        if not isinstance(layer, KERNELS):
            continue
        chain = [layer]
        while len(consumers(chain[-1])) == 1 and isinstance(consumers(chain[-1])[0], FOLLOWERS):
            chain.append(consumers(chain[-1])[0])
        names = [x.name for x in chain]
        assert len({where[id(x)] for x in chain}) == 1, f"{names} split across blocks"
        checked += len(chain) > 1
    assert checked > 0  # the property was really exercised


def assert_groups_intact(blocks, pattern: str) -> int:
    """Layers whose names share the group of `pattern` all sit in one block."""
    groups: dict[str, set[int]] = defaultdict(set)
    for i, block in enumerate(blocks):
        for layer in block.layers:
            match = re.match(pattern, layer.name)
            if match:
                groups[match.group(1)].add(i)
    split = {name: sorted(where) for name, where in groups.items() if len(where) > 1}
    assert not split, f"groups split across blocks: {split}"
    return len(groups)


# -- MobileNetV2 ---------------------------------------------------------------------------


def test_mobilenet_v2_last_two_blocks(mobilenet_v2):
    blocks = structure.blocks(mobilenet_v2)
    assert [b.name for b in blocks[-2:]] == ["block_16", "Conv_1"]
    assert [layer.name for layer in blocks[-1].layers] == ["Conv_1", "Conv_1_bn", "out_relu"]
    assert {layer.name for layer in blocks[-2].layers} == {
        layer.name for layer in mobilenet_v2.layers if layer.name.startswith("block_16_")
    }


def test_mobilenet_v2_blocks_are_its_inverted_residuals(mobilenet_v2):
    blocks = structure.blocks(mobilenet_v2)
    assert_partition(mobilenet_v2, blocks)
    assert [b.name for b in blocks] == [
        "Conv1",
        "expanded_conv",
        *[f"block_{i}" for i in range(1, 17)],
        "Conv_1",
    ]
    # block_N_* (expand, depthwise, project, add) are never split
    assert assert_groups_intact(blocks, r"(block_\d+)_") == 16
    assert blocks[0].layers[0].name == "ftk_preprocess_tf"  # input side joins the first block


def test_mobilenet_v2_conv_never_separated_from_bn_and_activation(mobilenet_v2):
    assert_kernels_keep_their_followers(mobilenet_v2, structure.blocks(mobilenet_v2))


def test_block_weighted_layers(mobilenet_v2):
    last = structure.blocks(mobilenet_v2)[-1]
    assert [x.name for x in last.weighted()] == ["Conv_1"]
    assert [x.name for x in last.weighted(train_bn=True)] == ["Conv_1", "Conv_1_bn"]
    # Conv_1: 1x1 kernel 112 -> 1280, no bias; BN: 4 x 1280
    assert last.param_count == 112 * 1280 + 4 * 1280


# -- ResNet50 -------------------------------------------------------------------------------


def test_resnet50_no_boundary_inside_a_residual_block(resnet50):
    blocks = structure.blocks(resnet50)
    assert_partition(resnet50, blocks)
    # conv{2..5}_block{M}_* including the shortcut (_0_), _add and _out
    assert assert_groups_intact(blocks, r"(conv\d_block\d+)_") == 16
    assert len(blocks) == 17  # the stem and 3 + 4 + 6 + 3 residual blocks
    for block in blocks[1:]:
        names = {layer.name for layer in block.layers}
        prefix = re.match(r"conv\d_block\d+", block.layers[0].name)
        assert prefix is not None
        assert f"{prefix.group(0)}_add" in names and f"{prefix.group(0)}_out" in names


def test_resnet50_cut_points_fall_between_residual_blocks(resnet50):
    cuts = structure.cut_points(resnet50)
    assert "conv2_block1_out" in cuts and "conv5_block2_out" in cuts
    assert not any(re.match(r"conv\d_block\d+_\d_", name) for name in cuts)
    # after every residual block but the last, whose output is the model's output
    assert len([name for name in cuts if name.endswith("_out")]) == 15


def test_resnet50_conv_never_separated_from_bn_and_activation(resnet50):
    assert_kernels_keep_their_followers(resnet50, structure.blocks(resnet50))


@pytest.mark.parametrize(
    ("name", "size", "group", "groups"),
    [
        ("efficientnet_b0", 32, r"(block\d[a-z])", 10),
        ("inception_v3", 75, None, 0),
        ("mobilenet", 32, r"conv_(?:dw|pw)_(\d+)", 13),
    ],
)
def test_other_families_keep_units_together(name, size, group, groups):
    base = ftk.load_base(name, weights=None, input_shape=(size, size, 3))
    blocks = structure.blocks(base)
    assert_partition(base, blocks)
    assert_kernels_keep_their_followers(base, blocks)
    if group:
        assert assert_groups_intact(blocks, group) >= groups
    # every merge (add, multiply, concatenate) closes a run: it is never the start of a block
    for block in blocks:
        assert not isinstance(block.layers[0], keras.layers.Add | keras.layers.Concatenate)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Keras builds MobileNet of conv1 and 13 blocks of a depthwise and a pointwise
        # half (block_id); each half was once a block of its own, 27 in all.
        ("mobilenet", ["conv1", *(f"conv_dw_{i}" for i in range(1, 14))]),
        ("vgg16", [f"block{i}_conv1" for i in range(1, 6)]),
    ],
)
def test_numbered_blocks_of_several_named_parts_are_one_block(name, expected):
    base = ftk.load_base(name, weights=None, input_shape=(32, 32, 3))
    blocks = structure.blocks(base)
    assert [block.name for block in blocks] == expected
    last = {layer.name for layer in blocks[-1].layers}
    if name == "mobilenet":
        assert {"conv_dw_13", "conv_dw_13_bn", "conv_pw_13", "conv_pw_13_relu"} <= last
    else:
        assert {"block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"} <= last


def test_names_that_stay_apart():
    same = structure._same_stem
    assert same("conv_dw_1", "conv_pw_1") and same("block1_conv1", "block1_conv2")
    assert not same("conv_dw_1", "conv_dw_2")  # the next block
    assert not same("conv2d_1", "conv2d_2")  # bare numbers: siblings
    assert not same("conv2_block1_1", "conv2_block2_1")  # another block, same part
    assert not same("Conv_1", "Conv_2") and not same("block1_conv1", "block2_conv1")


# -- plain chains --------------------------------------------------------------------------


def _chain_layers():
    return [
        keras.layers.Conv2D(4, 3),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(4, 3),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(8),
        keras.layers.Activation("relu"),
        keras.layers.Dense(2),
    ]


def sequential_chain():
    return keras.Sequential([keras.Input((12, 12, 3)), *_chain_layers()])


def functional_chain():
    inputs = keras.Input((12, 12, 3))
    x = inputs
    for layer in _chain_layers():
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("build", [sequential_chain, functional_chain])
def test_plain_chain_gives_one_block_per_kernel_layer(build):
    model = build()  # default names: conv2d, conv2d_1, dense, dense_1 ...
    blocks = structure.blocks(model)
    assert_partition(model, blocks)
    assert_kernels_keep_their_followers(model, blocks)
    kinds = [[type(layer).__name__ for layer in block.layers] for block in blocks]
    assert kinds == [
        ["Conv2D", "BatchNormalization", "ReLU"],
        ["Conv2D", "ReLU", "Flatten"],
        ["Dense", "Activation"],
        ["Dense"],
    ]
    assert [b.name for b in blocks] == [b.layers[0].name for b in blocks]


def test_plain_chain_cut_points_are_every_boundary():
    model = functional_chain()
    names = [layer.name for layer in model.layers]
    # after the input and after every layer but the last
    assert structure.cut_points(model) == names[:-1]


def test_unfreeze_by_block_on_a_plain_chain():
    model = sequential_chain()
    ftk.unfreeze_last(model, 2, unit="block")
    trainable = [layer.name for layer in model.layers if layer.trainable_weights]
    assert [type(model.get_layer(n)).__name__ for n in trainable] == ["Dense", "Dense"]


# -- cut points on a residual graph --------------------------------------------------------


def residual_model():
    inputs = keras.Input((6,), name="x")
    a = keras.layers.Dense(6, name="pre")(inputs)
    b = keras.layers.Dense(6, name="branch_1")(a)
    b = keras.layers.ReLU(name="branch_act")(b)
    b = keras.layers.Dense(6, name="branch_2")(b)
    c = keras.layers.Add(name="merge")([a, b])
    d = keras.layers.Dense(2, name="post")(c)
    return keras.Model(inputs, d)


def test_cut_points_on_a_residual_graph():
    model = residual_model()
    cuts = structure.cut_points(model)
    assert "pre" in cuts  # before the branch: only `a` is alive
    assert "merge" in cuts  # after the add: only its output is alive
    assert not {"branch_1", "branch_act", "branch_2"} & set(cuts)  # `a` and the branch alive
    assert "post" not in cuts  # the output is not a boundary


def test_blocks_of_a_residual_graph_keep_the_branch_with_its_merge():
    blocks = structure.blocks(residual_model())
    names = [[layer.name for layer in block.layers] for block in blocks]
    assert ["branch_1", "branch_act", "branch_2", "merge"] in names


def test_two_branches_from_the_input_are_one_run():
    inputs = keras.Input((4,))
    left = keras.layers.Dense(3, name="left")(inputs)
    right = keras.layers.Dense(3, name="right")(inputs)
    out = keras.layers.Concatenate(name="cat")([left, right])
    model = keras.Model(inputs, out)
    assert structure.cut_points(model) == [model.layers[0].name]
    blocks = structure.blocks(model)
    assert len(blocks) == 1
    assert {layer.name for layer in blocks[0].layers} == {"left", "right", "cat"}


# -- find_base -------------------------------------------------------------------------------


def test_find_base_on_full_model_returns_the_nested_base(mobilenet_v2):
    model = ftk.add_head(mobilenet_v2, num_classes=3)
    assert structure.find_base(model) is mobilenet_v2
    assert structure.find_base(mobilenet_v2) is mobilenet_v2
    assert [b.name for b in structure.blocks(model)] == [
        b.name for b in structure.blocks(mobilenet_v2)
    ]


def test_the_keras_guide_layout_finds_the_base_behind_its_augmentation(mobilenet_v2):
    # The guide puts a Sequential of random layers (no weights) before the base: with two
    # nested models and no head_ layer, the whole model was taken for the base; freeze
    # froze the head too, and unfreeze_last(2) unfroze the whole MobileNetV2.
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal")], name="augment")
    inputs = keras.Input((96, 96, 3))
    x = mobilenet_v2(augment(inputs), training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="out")(x))
    try:
        assert structure.find_base(model) is mobilenet_v2
        ftk.freeze(model)
        assert [w.path for w in model.trainable_weights] == ["out/kernel", "out/bias"]
        ftk.unfreeze_last(model, 2, unit="block")
        blocks = structure.blocks(mobilenet_v2)[-2:]
        last_two = {layer.name for block in blocks for layer in block.layers}
        trained = {layer.name for layer in mobilenet_v2.layers if layer.trainable_weights}
        assert trained and trained <= last_two
    finally:
        mobilenet_v2.trainable = True


def test_a_nested_part_of_a_base_is_not_taken_for_the_base():
    # A preprocessing Sequential (no weights), or a small stem beside convolutions of the
    # model's own: the model is the base, and freeze freezes all of it.
    inputs = keras.Input((32, 32, 3))
    x = keras.Sequential([keras.layers.Rescaling(1 / 127.5, offset=-1)], name="prep")(inputs)
    stem = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3)], name="stem")
    for model_input in (x, stem(x)):
        y = keras.layers.Conv2D(32, 3, name="c1")(model_input)
        y = keras.layers.BatchNormalization(name="bn1")(y)
        base = keras.Model(inputs, keras.layers.Conv2D(64, 3, name="c2")(y), name="mybase")
        assert structure.find_base(base) is base
        ftk.freeze(base)
        assert not base.trainable_weights
    # A small base under a large dense head is still the base.
    tiny = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)], name="tiny")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(tiny(inputs))
    model = keras.Model(inputs, keras.layers.Dense(256)(keras.layers.Dense(512)(x)))
    assert structure.find_base(model) is tiny


def test_a_head_of_ones_own_or_a_conv_neck_after_a_nested_base_is_not_base(mobilenet_v2):
    # A head as a nested keras.Sequential: the base is found, and freeze leaves the head.
    head = keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")],
        name="myhead",
    )
    inputs = keras.Input(mobilenet_v2.input_shape[1:])
    model = keras.Model(inputs, head(mobilenet_v2(inputs, training=False)))
    try:
        assert structure.find_base(model) is mobilenet_v2
        ftk.freeze(model)
        assert head.trainable_weights and not mobilenet_v2.trainable_weights
        assert "myhead" not in [b.name for b in structure.blocks(model)]
        # A convolution "neck" larger than the base, after it: head, not a stem.
        x = keras.layers.Conv2D(2048, 1, name="neck")(mobilenet_v2(inputs, training=False))
        x = keras.layers.GlobalAveragePooling2D()(x)
        necked = keras.Model(inputs, keras.layers.Dense(1, name="reg")(x))
        assert structure._parameters(mobilenet_v2) < structure._parameters(necked) / 2
        assert structure.find_base(necked) is mobilenet_v2
    finally:
        mobilenet_v2.trainable = True


def test_find_base_refuses_two_bases_side_by_side(mobilenet_v2):
    other = ftk.load_base(
        "mobilenet", weights=None, input_shape=mobilenet_v2.input_shape[1:], alpha=0.25
    )
    inputs = keras.Input(mobilenet_v2.input_shape[1:])
    pooled = [keras.layers.GlobalAveragePooling2D()(b(inputs)) for b in (mobilenet_v2, other)]
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Concatenate()(pooled)))
    with pytest.raises(ModelStructureError, match="side by side"):
        structure.find_base(model)


def test_find_base_on_sequential():
    model = sequential_chain()
    assert structure.find_base(model) is model


def test_find_base_rejects_a_model_with_two_nested_models_and_a_head():
    def part(name):
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(4)(inputs), name=name)

    inputs = keras.Input((4,))
    x = part("one")(inputs)
    x = part("two")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head_output")(x))
    with pytest.raises(ModelStructureError, match="cannot tell which is the base"):
        structure.find_base(model)


def test_find_base_rejects_what_is_not_a_model():
    with pytest.raises(ArgumentTypeError, match="keras.Model"):
        structure.find_base([1, 2])


def test_leaf_and_weighted_layers(mobilenet_v2):
    model = ftk.add_head(mobilenet_v2, num_classes=3)
    leaves = structure.leaf_layers(model)
    assert not any(isinstance(x, keras.Model | keras.layers.InputLayer) for x in leaves)
    assert {"Conv1", "Conv_1_bn", "head_output"} <= {x.name for x in leaves}
    weighted = structure.weighted_layers(mobilenet_v2)
    assert all(x.weights for x in weighted)
    assert not any(structure.is_preprocessing(x) for x in weighted)


def test_layers_before_a_base_and_the_split_of_such_a_model(mobilenet_v2):
    from finetunekit import caching

    image, meta = keras.Input((96, 96, 3)), keras.Input((4,))
    scaled = keras.layers.Rescaling(1 / 255, name="scale")(image)
    pooled = keras.layers.GlobalAveragePooling2D()(mobilenet_v2(scaled, training=False))
    guide = keras.Model(image, keras.layers.Dense(2)(pooled))
    assert [layer.name for layer in structure.layers_before(guide, mobilenet_v2)] == ["scale"]
    # The frozen prefix would have skipped the Rescaling: no split at all.
    mobilenet_v2.trainable = False
    try:
        assert caching.split_frozen_prefix(guide) is None
    finally:
        mobilenet_v2.trainable = True
    # A second input's branch is beside the base, not before it.
    features = keras.layers.GlobalAveragePooling2D()(mobilenet_v2(image, training=False))
    joined = keras.layers.Concatenate()([features, keras.layers.Dense(4, name="meta")(meta)])
    two = keras.Model([image, meta], keras.layers.Dense(2)(joined))
    assert structure.layers_before(two, mobilenet_v2) == []


# -- layers of the user's own making -------------------------------------------------------


@keras.saving.register_keras_serializable(package="finetunekit_tests")
class ConvBN(keras.layers.Layer):
    """A custom layer made of a convolution and its normalization, no weights of its own."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")
        self.bn = keras.layers.BatchNormalization()

    def call(self, x, training=None):
        return keras.ops.relu(self.bn(self.conv(x), training=training))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def composite_base():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, name="stem_conv")(inputs)
    x = ConvBN(8, name="block_1")(x)
    return keras.Model(inputs, ConvBN(8, name="block_2")(x))


def test_layers_made_of_layers_are_blocks_and_train_one_by_one():
    base = composite_base()
    last = base.get_layer("block_2")
    assert [b.name for b in structure.blocks(base)] == ["stem", "block_1", "block_2"]
    assert {x.name for x in structure.blocks(base)[-1].weighted()} == {last.conv.name}
    assert structure.blocks(base)[-1].param_count == sum(v.numpy().size for v in last.weights)
    model = ftk.add_head(ftk.freeze(base), num_classes=3)
    ftk.unfreeze_last(model, 1, unit="block")
    trained = {id(v) for v in model.trainable_variables}
    assert {id(v) for v in last.conv.trainable_weights} <= trained
    assert not {id(v) for v in last.bn.weights} & trained  # BatchNormalization stays frozen
    assert not {id(v) for v in base.get_layer("block_1").weights} & trained
    assert not {id(v) for v in base.get_layer("stem_conv").weights} & trained
    ftk.unfreeze_last(model, 3, unit="layer")  # three convolutions, counted inside the layers
    assert {id(v) for v in base.get_layer("block_1").conv.weights} <= {
        id(v) for v in model.trainable_variables
    }


def test_a_chain_of_one_kind_named_without_numbers_is_one_block_per_layer():
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for name in ("conv_in", "conv_mid", "conv_out"):
        x = keras.layers.Conv2D(8, 3, name=name)(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.ReLU()(x)
    chain = keras.Model(inputs, x)
    assert [[x.name for x in b.weighted()] for b in structure.blocks(chain)] == [
        ["conv_in"], ["conv_mid"], ["conv_out"]
    ]
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, name="features_stem")(inputs)
    for i in (1, 2):
        x = keras.layers.Conv2D(8, 3, name=f"features_stage{i}")(x)
    stages = keras.Model(inputs, x)
    assert [b.name for b in structure.blocks(stages)] == [
        "features", "features_stage1", "features_stage2"
    ]
    ftk.unfreeze_last(ftk.add_head(ftk.freeze(stages), num_classes=2), 1, unit="block")
    assert [x.name for x in stages.layers if x.trainable_weights] == ["features_stage2"]


def test_a_nested_preprocessing_model_before_the_base_is_not_a_second_base(mobilenet_v2):
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(0).uniform(0, 255, (4, 3)).astype("float32"))
    shape = mobilenet_v2.input_shape[1:]
    prep = keras.Sequential([keras.Input(shape), norm], name="prep")
    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(mobilenet_v2(prep(inputs), training=False))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    assert structure.find_base(model) is mobilenet_v2
    stem = keras.Sequential([keras.Input(shape), keras.layers.Conv2D(3, 3, padding="same")])
    x = keras.layers.GlobalAveragePooling2D()(mobilenet_v2(stem(inputs), training=False))
    with pytest.raises(ModelStructureError, match="nested models with convolutions"):
        structure.find_base(keras.Model(inputs, keras.layers.Dense(3)(x)))


def test_largest_output_bytes_reads_the_graph() -> None:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same")(inputs)  # 8 x 8 x 16 floats: the largest
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    assert structure.largest_output_bytes(keras.Model(inputs, outputs)) == 8 * 8 * 16 * 4
    assert structure.largest_output_bytes(keras.Sequential([keras.layers.Dense(2)])) is None


def test_largest_output_bytes_looks_inside_nested_models() -> None:
    # A trainer's unfrozen blocks are a nested model whose inner activations (here 32
    # channels) exceed its output (4 channels).
    inner_in = keras.Input((8, 8, 3))
    wide = keras.layers.Conv2D(32, 1)(inner_in)
    blocks = keras.Model(inner_in, keras.layers.Conv2D(4, 1)(wide), name="blocks")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(blocks(inputs)))
    assert structure.largest_output_bytes(keras.Model(inputs, outputs)) == 8 * 8 * 32 * 4
