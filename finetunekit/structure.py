"""Reading a Functional graph: the base inside a full model, cut points and blocks.

A *cut point* is a boundary in the topological order of the graph where
exactly one tensor is alive: everything before it reaches everything after it
through that single tensor. The runs between cut points are atomic (a residual
block, an Inception module, a squeeze-and-excite block are never split), and
neighbouring runs are grouped into *blocks* so that a convolution always stays
with its normalization and activation:

- a run without any kernel layer (normalization, activation, pooling, padding,
  dropout) joins the block before it;
- a run whose first kernel layer's name has the same *stem* as the current
  block's joins it. The stem is the name up to its last token holding a digit
  (`block_16_expand` -> `block_16`, `block1a_dwconv` -> `block1a`), or the name
  less its last token when no token has a digit (`expanded_conv_project` ->
  `expanded_conv`). Two stems one word apart also join when they name parts of
  one numbered block: `conv_dw_1` / `conv_pw_1` (MobileNet's halves of block 1),
  `block1_conv1` / `block1_conv2` (VGG's block 1). A stem also joins one it
  extends by words (`block4a` / `block4a_dwconv2`), unless the extension is a bare
  number (`conv2d` / `conv2d_1`) or a numbered word after a stem without a number
  (`features` / `features_stage1`);
- two kernels whose names hold no number join only when they are of different
  kinds: MobileNetV3's `expanded_conv_depthwise` and `expanded_conv_project` do,
  a chain `conv_in`, `conv_mid`, `conv_out` of one kind does not.

A custom layer made of weighted sublayers (a convolution and its normalization
in one layer) is one operation of the graph, so it stays in one block; its
sublayers are leaves (`leaf_layers`), which train or stay frozen one by one, and
its BatchNormalization stays in inference mode.

Nothing here knows the names of architectures; the rules read the graph and
the naming habits all Keras applications share.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from finetunekit.errors import ArgumentTypeError, ModelStructureError

__all__ = [
    "PREPROCESS_PREFIX",
    "HEAD_PREFIX",
    "Block",
    "find_base",
    "blocks",
    "cut_points",
    "leaf_layers",
    "own_weights",
    "weighted_layers",
    "has_preprocessing",
    "trainable_capable",
]

#: Name prefix of the preprocessing layers `load_base` puts in front of a base.
PREPROCESS_PREFIX = "ftk_preprocess"
#: Name prefix of every layer `add_head` creates.
HEAD_PREFIX = "head_"

_NORMALIZATION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
)


def is_preprocessing(layer: Any) -> bool:
    return str(getattr(layer, "name", "")).startswith(PREPROCESS_PREFIX)


def is_batch_norm(layer: Any) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def trainable_capable(layer: Any) -> bool:
    """Whether a leaf layer owns variables that train when it is trainable."""
    return bool(getattr(layer, "_trainable_variables", None)) and not is_preprocessing(layer)


def _check_model(model: Any, what: str = "model") -> None:
    if not isinstance(model, keras.Model):
        raise ArgumentTypeError(
            f"Expected a keras.Model as {what}; received {type(model).__name__}. Build one with "
            "finetunekit.load_base(...) or keras.Model(inputs, outputs)."
        )
    if not (_is_functional(model) or isinstance(model, keras.Sequential)):
        raise ModelStructureError(
            f"{model.name!r} is a subclassed keras.Model; finetunekit reads the layer graph, so "
            "it needs a Functional model (keras.Model(inputs, outputs)) or a Sequential."
        )
    if isinstance(model, keras.Sequential) and not model.built:
        raise ModelStructureError(
            f"Sequential model {model.name!r} is not built; start it with keras.Input(shape=...) "
            "so its input shape is known."
        )


def _is_functional(model: Any) -> bool:
    return hasattr(model, "_nodes_by_depth") and hasattr(model, "_nodes")


def find_base(model: keras.Model) -> keras.Model:
    """Returns the base of `model`: the nested sub-model that holds its weights, or `model`.

    A nested model without weights (an augmentation or preprocessing `Sequential`, as in
    the Keras transfer-learning guide) is never the base. The nested model with weights
    and the most convolutions is the base of a full model (base + head) when it holds
    at least half of the weights or more convolutions than the rest (a conv neck after
    it belongs to the head); other nested models with weights must read its output (a
    head of one's own as a `keras.Sequential`). Otherwise it is a part of a base (a
    stem, or ConvNeXt's nested stem and downsampling), and the model is the base.

    Args:
        model: a bare base, or a full model in which the base is nested as one layer.

    Returns:
        The base model.

    Raises:
        ArgumentTypeError: `model` is not a keras.Model.
        ModelStructureError: the model is subclassed, holds several nested models
            with weights side by side or besides a head, or ends in a softmax or
            sigmoid classifier with no nested base (its head cannot be told from its
            base), or the base takes several inputs.
    """
    _check_model(model)
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.weights]
    inner = _nested_base(model, nested)
    if inner is not None:
        _check_model(inner, "base")
        return _one_input(inner)
    if len(nested) > 1 and any(layer.name.startswith(HEAD_PREFIX) for layer in model.layers):
        names = ", ".join(repr(m.name) for m in nested)
        raise ModelStructureError(
            f"{model.name!r} holds {len(nested)} nested models ({names}) besides its head; "
            "finetunekit cannot tell which is the base. Pass the base itself."
        )
    # No nested model with weights, a stem, or several parts of one base: the base itself,
    # unless it ends in a classifier (the head built on the base's own layers, as in
    # keras.Model(base.input, Dense(5, "softmax")(pool(base.output)))): then freezing
    # would freeze the head and "the last n blocks" would count it.
    activation = output_activation(model)
    if activation in ("softmax", "sigmoid"):
        raise ModelStructureError(
            f"{model.name!r} ends in a classifier ({activation} output) built on the base's "
            "own layers, so finetunekit cannot tell its base from its head. Nest the base "
            "as one layer (outputs = head(base(inputs, training=False))), or pass the base "
            "alone, e.g. add_head(base, num_classes) or FineTuner(base)."
        )
    return _one_input(model)


def _nested_base(model: keras.Model, nested: list[Any]) -> keras.Model | None:
    """The nested model that is `model`'s base, or None when `model` is itself the base.

    The nested model with the most convolutions is the base when it holds at least half
    of the weights, or more convolutions than the rest of `model` (a conv "neck" after a
    small base is head, not base; a nested stem, or ConvNeXt's nested stem and
    downsampling, hold few of the base's convolutions). Any other nested model with
    weights must read the base's output (a head of the user's own, e.g. a
    `keras.Sequential` of pooling and Dense): two bases side by side cannot be told apart.

    Raises:
        ModelStructureError: another nested model with weights does not read the base's
            output.
    """
    if not nested:
        return None
    if len(nested) == 1:
        inner = nested[0]
        if _parameters(inner) / max(_parameters(model), 1) >= 0.5:
            return inner  # the common case, without walking the layers
    convs = {id(m): _convolutions(m) for m in nested}
    inner = max(nested, key=lambda m: convs[id(m)])
    outside = _convolutions(model) - convs[id(inner)]
    share = _parameters(inner) / max(_parameters(model), 1)
    alone_convolutional = len(nested) == 1 and outside == 0
    if not (share >= 0.5 or convs[id(inner)] > outside or alone_convolutional):
        return None
    before = layers_before(model, inner)
    # Ahead of the base, a nested model of preprocessing (an adapted Normalization, say)
    # is left to the callers that refuse layers before the base; one with convolutions
    # could be the base's own stem.
    ahead = [m for m in nested if m in before]
    if any(_convolutions(m) for m in ahead):
        names = ", ".join(repr(m.name) for m in ahead)
        raise ModelStructureError(
            f"{model.name!r} runs nested models with convolutions ({names}) before "
            f"{inner.name!r}; finetunekit cannot tell whether they belong to the base. "
            "Build the base as one model and nest it as one layer, or pass the base itself."
        )
    beside = [
        m
        for m in nested
        if m is not inner and m not in ahead and inner not in layers_before(model, m)
    ]
    if beside:
        names = ", ".join(repr(m.name) for m in [inner, *beside])
        raise ModelStructureError(
            f"{model.name!r} holds nested models with weights side by side ({names}); "
            "finetunekit cannot tell which is the base. Pass the base itself, or nest one "
            "base as one layer with the head reading its output."
        )
    return inner


def _convolutions(model: keras.Model) -> int:
    return sum(isinstance(layer, _CONVOLUTIONS) for layer in leaf_layers(model))


def _one_input(base: keras.Model) -> keras.Model:
    """`base`, when it takes one input (the images)."""
    if len(base.inputs) != 1:
        raise ModelStructureError(
            f"The base {base.name!r} takes {len(base.inputs)} inputs; finetunekit fine-tunes "
            "a base of one image input. Build the base of the image branch alone (other "
            "inputs can join in a model of your own around it)."
        )
    return base


_CONVOLUTIONS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)


def _parameters(model: keras.Model) -> int:
    return sum(math.prod(weight.shape) for weight in model.weights)


def output_activation(model: keras.Model) -> str | None:
    """The activation that makes a one-output model's output, by name; None when unknown.

    Read from the operation that produces the output, not from the last layer in
    `model.layers`, which omits `keras.ops` calls: `keras.ops.sigmoid(Dense(1)(x))`
    ends in a sigmoid although its last layer is linear. `Dense(..., activation=...)`
    and `Activation` layers give their activation's name, a `Softmax` layer or
    `keras.ops.softmax` "softmax", `keras.ops.sigmoid` "sigmoid", a `ReLU` layer "relu".
    """
    if len(model.outputs) != 1:
        return None
    history = getattr(model.outputs[0], "_keras_history", None)
    operation = getattr(history, "operation", None)
    if operation is None:
        operation = model.layers[-1] if model.layers else None
    if isinstance(operation, keras.layers.Softmax):
        return "softmax"
    if isinstance(operation, keras.layers.ReLU):
        return "relu"
    activation = getattr(operation, "activation", None)
    if activation is not None:
        name = getattr(activation, "__name__", None)
        return _ACTIVATION_ALIASES.get(name, name) if isinstance(name, str) else None
    if type(operation).__module__.startswith("keras.src.ops"):  # keras.ops.sigmoid and kin
        return _ACTIVATION_OPS.get(type(operation).__name__)
    return None


#: Names of TensorFlow's functions for the activations Keras names otherwise.
_ACTIVATION_ALIASES = {"softmax_v2": "softmax", "log_softmax_v2": "log_softmax"}

#: `keras.ops` activations by the class of their operation.
_ACTIVATION_OPS = {
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hard_sigmoid",
    "Softmax": "softmax",
    "LogSoftmax": "log_softmax",
    "Relu": "relu",
    "Relu6": "relu6",
    "Tanh": "tanh",
    "Softplus": "softplus",
    "Elu": "elu",
    "Gelu": "gelu",
    "Silu": "silu",
}


def rate_is_scheduled(optimizer: Any) -> bool:
    """Whether an optimizer's rate (or that of one inside a `MultiOptimizer`) is a
    `LearningRateSchedule`, which Keras keeps in a private attribute (under mixed_float16,
    behind the `LossScaleOptimizer` it wraps the optimizer in)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    inner = getattr(optimizer, "optimizers", None)
    if isinstance(inner, (list, tuple)):
        return any(rate_is_scheduled(o) for o in inner)
    return isinstance(
        getattr(optimizer, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule
    )


def _ordered_nodes(model: keras.Model) -> list[Any]:
    """The model's own call nodes, in topological order."""
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def largest_output_bytes(model: keras.Model) -> int | None:
    """Bytes per example of the largest tensor the model's layers output, as built.

    Read from the functional graph's nodes, and from those of the functional models
    nested in it (a trainer's unfrozen blocks are one, `{base}_trainable_part`: their
    expanded activations are 2-4 times its output). None for a model that is not a
    functional graph or whose tensors have no static size.
    """
    if not _is_functional(model) or isinstance(model, keras.Sequential):
        return None
    largest = 0
    for node in _ordered_nodes(model):
        if isinstance(node.operation, keras.Model):
            largest = max(largest, largest_output_bytes(node.operation) or 0)
        for tensor in keras.tree.flatten(node.outputs):
            shape = getattr(tensor, "shape", None)
            if shape is None or len(shape) < 1 or any(d is None for d in shape[1:]):
                continue
            try:
                itemsize = np.dtype(str(tensor.dtype)).itemsize
            except TypeError:  # bfloat16 and other types numpy does not name
                itemsize = 4
            largest = max(largest, math.prod(shape[1:]) * itemsize)
    return largest or None


def _graph_ops(model: keras.Model) -> tuple[list[Any], list[int]]:
    """Operations in topological order and the cut points after each.

    Returns `(ops, cuts)` where `cuts` holds every index `i` such that exactly one
    tensor is alive between `ops[i]` and `ops[i + 1]`.
    """
    if isinstance(model, keras.Sequential):
        ops = [layer for layer in model.layers]
        return ops, list(range(len(ops) - 1))
    nodes = _ordered_nodes(model)
    produced: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for position, node in enumerate(nodes):
        for tensor in node.input_tensors:
            last_use[id(tensor)] = position
        for tensor in node.outputs:
            produced.setdefault(id(tensor), position)
    for tensor in keras.tree.flatten(model.outputs):
        last_use[id(tensor)] = len(nodes)
    # alive[i]: tensors produced at or before i and used after i.
    delta = [0] * (len(nodes) + 1)
    for key, start in produced.items():
        end = last_use.get(key, start)
        if end > start:
            delta[start] += 1
            delta[end] -= 1
    cuts, alive = [], 0
    for position in range(len(nodes) - 1):
        alive += delta[position]
        if alive == 1:
            cuts.append(position)
    return [node.operation for node in nodes], cuts


def cut_points(model: keras.Model) -> list[str]:
    """Names of the layers after which exactly one tensor is alive.

    Args:
        model: a Functional or Sequential model (a full model is read as is).

    Returns:
        Layer names, in graph order.
    """
    _check_model(model)
    ops, cuts = _graph_ops(model)
    return [ops[i].name for i in cuts]


def _stem(name: str) -> str:
    tokens = name.split("_")
    digit = [i for i, token in enumerate(tokens) if re.search(r"\d", token)]
    if digit:
        return "_".join(tokens[: digit[-1] + 1])
    return "_".join(tokens[:-1]) if len(tokens) > 1 else name


def _same_stem(a: str, b: str) -> bool:
    """Equal stems, or one extends the other by words (`block4a` / `block4a_dwconv2`).

    An extension by a bare number is a sibling, not a part (`conv2d` / `conv2d_1`), and
    so is a numbered extension of a stem without a number (`features` / `features_stage1`).
    """
    if a == b:
        return True
    short, long = sorted((a.split("_"), b.split("_")), key=len)
    extension = long[len(short) :]
    if (
        long[: len(short)] == short
        and not any(t.isdigit() for t in extension)
        and (re.search(r"\d", "".join(short)) or not re.search(r"\d", "".join(extension)))
    ):
        return True
    return _parts_of_one_block(a.split("_"), b.split("_"))


def _parts_of_one_block(a: list[str], b: list[str]) -> bool:
    """Stems that name two parts of one numbered block.

    - one word apart, a word without digits, the block's number kept: `conv_dw_1` /
      `conv_pw_1` (MobileNet's depthwise and pointwise halves of block 1);
    - the same numbered block, then numbered parts of one kind: `block1_conv1` /
      `block1_conv2` (VGG's, Xception's).

    Bare numbers stay siblings (`conv2d_1` / `conv2d_2`), and so do blocks that differ
    before their last word (`conv2_block1_1` / `conv2_block2_1`).
    """
    if len(a) != len(b):
        return False
    apart = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if len(apart) != 1:
        return False
    i = apart[0]
    x, y = a[i], b[i]
    if not re.search(r"\d", x + y):
        return any(re.search(r"\d", token) for token in a[i + 1 :])
    word = re.fullmatch(r"([A-Za-z]+)\d+", x)
    return (
        i == len(a) - 1
        and word is not None
        and re.fullmatch(word.group(1) + r"\d+", y) is not None
        and any(re.search(r"\d", token) for token in a[:i])
    )


def _is_kernel(layer: Any) -> bool:
    if isinstance(layer, keras.Model):
        return bool(layer.weights)
    return any(
        trainable_capable(leaf) and not isinstance(leaf, _NORMALIZATION)
        for leaf in _leaves([layer])
    )


def _parts_by_kind(a: Any, b: Any) -> bool:
    """Whether two kernel layers whose names share a stem without a number are two parts
    of one block: different kinds of layer (MobileNetV3's `expanded_conv_depthwise` and
    `expanded_conv_project`), not a chain of one kind (`conv_in`, `conv_mid`, `conv_out`)."""
    if re.search(r"\d", a.name) or re.search(r"\d", b.name):
        return True  # the stems came from numbered names
    return type(a) is not type(b)


@dataclass
class Block:
    """A run of layers of the base that is frozen or unfrozen together.

    Attributes:
        name: the stem of the block's first kernel layer (e.g. `"block_16"`).
        layers: the base's top-level layers in the block, in graph order.
    """

    name: str
    layers: list[Any] = field(default_factory=list)

    def weighted(self, *, train_bn: bool = False) -> list[Any]:
        """The leaf layers of the block that hold trainable weights."""
        return [
            layer
            for layer in _leaves(self.layers)
            if trainable_capable(layer) and (train_bn or not is_batch_norm(layer))
        ]

    @property
    def param_count(self) -> int:
        # by variable: a layer of sublayers may come with them (see `_leaves`)
        return sum(
            math.prod(v.shape)
            for layer in _leaves(self.layers)
            if not is_preprocessing(layer)
            for v in own_weights(layer)
        )


def blocks(model: keras.Model) -> list[Block]:
    """Splits the base of `model` into blocks (see the module docstring).

    Args:
        model: a bare base or a full model with the base nested in it.

    Returns:
        The blocks in graph order; the first one holds the input and preprocessing.

    Examples:
        >>> base = finetunekit.load_base("mobilenet_v2", weights=None, input_shape=(96, 96, 3))
        >>> [b.name for b in blocks(base)[-2:]]
        ['block_16', 'Conv_1']
    """
    base = find_base(model)
    ops, cuts = _graph_ops(base)
    runs: list[list[Any]] = []
    start = 0
    for cut in [*cuts, len(ops) - 1]:
        runs.append(
            [op for op in ops[start : cut + 1] if not isinstance(op, keras.layers.InputLayer)]
        )
        start = cut + 1
    result: list[Block] = []
    current: Block | None = None
    current_stem: str | None = None
    current_kernel: Any = None
    for run in runs:
        kernel = next((op for op in run if _is_kernel(op)), None)
        stem = _stem(kernel.name) if kernel is not None else None
        joins = current is not None and (
            stem is None
            or current_stem is None
            or (_same_stem(stem, current_stem) and _parts_by_kind(kernel, current_kernel))
        )
        if joins and current is not None:
            current.layers.extend(run)
            if current_stem is None and stem is not None:
                current.name, current_stem, current_kernel = stem, stem, kernel
        else:
            current = Block(stem or (run[0].name if run else "input"), list(run))
            current_stem, current_kernel = stem, kernel
            result.append(current)
    kept = [block for block in result if block.layers]
    for block in kept:
        block.name = _common_name(block) or block.name
    return kept


def _common_name(block: Block) -> str | None:
    """The words all kernel layers of a block share (`conv2_block1` for `conv2_block1_*_conv`).

    Only for blocks of several kernels, and only when that is at least two words: `conv2d`
    alone would name many Inception blocks.
    """
    names = [op.name.split("_") for op in block.layers if _is_kernel(op)]
    if len(names) < 2:
        return None  # one kernel: its stem already names the block
    common: list[str] = []
    for words in zip(*names, strict=False):
        if len(set(words)) != 1:
            break
        common.append(words[0])
    return "_".join(common) if len(common) >= 2 else None


def _sublayers(layer: Any) -> list[Any]:
    """The layers a layer is made of: a model's, or those a custom layer holds."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    flatten = getattr(layer, "_flatten_layers", None)  # Keras' tracking of sublayers
    return list(flatten(include_self=False, recursive=False)) if flatten is not None else []


def _leaves(layers: Sequence[Any]) -> Iterator[Any]:
    """The leaf layers: nested models flattened, and custom layers made of weighted
    sublayers (a conv and its normalization in one layer) too, so that those train and
    stay frozen one by one; such a layer comes first itself when it has weights of its own.
    """
    for layer in layers:
        inner = _sublayers(layer)
        if isinstance(layer, keras.Model):
            yield from _leaves(inner)
        elif any(sub.weights for sub in inner):
            if getattr(layer, "_trainable_variables", None) or getattr(
                layer, "_non_trainable_variables", None
            ):
                yield layer
            yield from _leaves(inner)
        else:
            yield layer


def own_weights(layer: Any) -> list[Any]:
    """A leaf layer's weights, without those of its sublayers (which are leaves too, see
    `_leaves`): each variable belongs to one leaf."""
    if any(sub.weights for sub in _sublayers(layer)) and not isinstance(layer, keras.Model):
        return [
            *getattr(layer, "_trainable_variables", ()),
            *getattr(layer, "_non_trainable_variables", ()),
        ]
    return list(layer.weights)


def leaf_layers(model: keras.Model) -> list[Any]:
    """Every non-model layer of `model`, nested models flattened, in `model.layers` order."""
    return [
        layer for layer in _leaves(model.layers) if not isinstance(layer, keras.layers.InputLayer)
    ]


def input_channels(model: keras.Model) -> int:
    """The channels of the images `model` takes (its input's last axis; 3 when open)."""
    inputs = getattr(model, "inputs", None) or []
    shape = getattr(inputs[0], "shape", None) if len(inputs) == 1 else None
    return int(shape[-1]) if shape and len(shape) == 4 and shape[-1] else 3


def has_preprocessing(model: keras.Model) -> bool:
    """Whether `model` holds the preprocessing `load_base` adds (so it takes raw 0-255 pixels)."""
    return any(is_preprocessing(layer) for layer in leaf_layers(model))


def weighted_layers(model: keras.Model) -> list[Any]:
    """Leaf layers that hold any weights (trainable or statistics), preprocessing excluded."""
    return [layer for layer in leaf_layers(model) if layer.weights and not is_preprocessing(layer)]


# -- graph surgery for caching, and other Keras internals read in this one place -------------


def optimizer_variables(optimizer: Any) -> list[Any] | None:
    """The variables an optimizer was built for, or None when this Keras hides them."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    return getattr(inner, "_trainable_variables", None)


def draws_random_numbers(layer: Any) -> bool:
    """Whether a layer draws random numbers when called (dropout, noise, augmentation)."""
    return bool(getattr(layer, "_seed_generators", None))


def call_node(model: keras.Model, layer: Any) -> Any:
    """The node where `model` calls `layer` (its first call)."""
    for node in _ordered_nodes(model):
        if node.operation is layer:
            return node
    raise ValueError(f"{layer.name!r} is not called in {model.name!r}")  # pragma: no cover


def consumers(model: keras.Model, tensor: Any) -> list[Any]:
    """The layers of `model` called on `tensor`, with the tensor each returns."""
    return [
        (node.operation, node.outputs[0])
        for node in _ordered_nodes(model)
        if any(t is tensor for t in node.input_tensors)
    ]


def layers_before(model: keras.Model, layer: Any) -> list[Any]:
    """The layers of `model` that transform its inputs before `layer` reads them.

    Empty when `layer` is called on the model's own inputs; layers of another branch
    (a second input of metadata) are not before it.
    """
    if isinstance(model, keras.Sequential):  # a chain: every layer before feeds it
        layers = list(model.layers)
        return layers[: layers.index(layer)] if layer in layers else []
    node = call_node(model, layer)
    inputs = {id(t) for t in keras.tree.flatten(model.inputs)}
    if all(id(t) in inputs for t in node.input_tensors):
        return []
    found: list[Any] = []
    todo = list(node.input_tensors)
    while todo:
        tensor = todo.pop()
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None)
        if operation is None or isinstance(operation, keras.layers.InputLayer):
            continue
        if operation not in found:
            found.append(operation)
            producer = call_node(model, operation)
            todo.extend(producer.input_tensors)
    order = {id(op): i for i, op in enumerate(model.operations)}
    return sorted(found, key=lambda op: order.get(id(op), 0))


def output_of(model: keras.Model, layer: Any) -> Any:
    """The tensor `model`'s call of `layer` returns."""
    return call_node(model, layer).outputs[0]


def replay(model: keras.Model, tensors: dict[int, Any]) -> dict[int, Any]:
    """Re-calls the model's layers on new tensors, from the mapped ones onwards.

    `tensors` maps `id(original KerasTensor)` to its replacement; nodes whose inputs
    are all mapped are called again (same layer objects, so weights are shared).
    """
    for node in _ordered_nodes(model):
        if node.is_input or not node.input_tensors:
            continue
        if any(id(t) in tensors for t in node.outputs):
            continue
        if any(id(t) not in tensors for t in node.input_tensors):
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        outputs = node.operation(*args, **kwargs)
        for original, new in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
            tensors[id(original)] = new
    return tensors


def feeds_batch_norm(model: keras.Model) -> list[tuple[Any, Any]]:
    """`(layer, BatchNormalization)` pairs where the normalization alone reads the layer's
    only output, each of the two called once in `model` (nested models not entered).

    Nothing is checked of the first layer's type: the caller decides which pairs it can
    fold. A model `run_graph` does not run (see `is_graph_model`) has none.
    """
    if not is_graph_model(model):
        return []
    nodes = _ordered_nodes(model)
    calls: dict[int, int] = {}
    readers: dict[int, int] = {}
    producer: dict[int, Any] = {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
        if not node.is_input:
            for tensor in node.outputs:
                producer[id(tensor)] = node
    for tensor in keras.tree.flatten(model.outputs):  # an output is read by the caller
        readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    pairs = []
    for node in nodes:
        norm = node.operation
        if not is_batch_norm(norm) or len(node.input_tensors) != 1:
            continue
        tensor = node.input_tensors[0]
        source = producer.get(id(tensor))
        if source is None or len(source.outputs) != 1 or readers.get(id(tensor)) != 1:
            continue
        if calls[id(norm)] == 1 and calls[id(source.operation)] == 1:
            pairs.append((source.operation, norm))
    return pairs


def run_graph(model: keras.Model, inputs: Any, replace: Any) -> Any:
    """`model(inputs, training=False)`, node by node, with some calls computed another way.

    Runs the Functional graph with Keras' own runner, as `model.call` does, but asks
    `replace(layer)` at every node first: a callable it returns gets the node's
    arguments instead of the layer; None keeps the layer's own call (with
    `training=False` where the layer takes it). Keras has no public hook for this.

    Args:
        model: a Functional model (not Sequential).
        inputs: its inputs, as `model(...)` takes them.
        replace: `layer -> callable | None`.

    Returns:
        What `model(inputs, training=False)` returns.
    """

    def operation(layer: Any) -> Any:
        custom = replace(layer)
        if custom is not None:
            return custom
        takes_training = "training" in getattr(layer, "_call_context_args", ())

        def call(*args: Any, **kwargs: Any) -> Any:
            if takes_training:
                kwargs["training"] = False
            return layer(*args, **kwargs)

        return call

    # Under the model's name scope, as its own call opens it: a layer's scope is nested
    # there (a layer named "_x" is no valid root scope).
    with model._open_name_scope():
        outputs = model._run_through_graph(
            model._standardize_inputs(inputs), operation_fn=operation
        )
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        return outputs[0]  # as Functional.call unpacks a single output
    return outputs


def is_graph_model(model: Any) -> bool:
    """Whether `run_graph` runs `model` as its own call does: a Functional model whose
    `call` is Keras' (not a Sequential, nor a subclass with a `call` of its own)."""
    from keras.src.models.functional import Functional

    return (
        isinstance(model, keras.Model)
        and _is_functional(model)
        and not isinstance(model, keras.Sequential)
        and type(model).call is Functional.call
    )


def frozen_cut(base: keras.Model, trainable_ids: set[int]) -> tuple[str, Any] | None:
    """The last cut of `base` before its first trainable layer: (layer name, alive tensor).

    Returns `(base.name, base.output)` when nothing in the base trains, and None when
    the first block already trains (no frozen prefix worth storing).
    """
    nodes = _ordered_nodes(base)
    ops = [node.operation for node in nodes]

    def trains(op: Any) -> bool:
        layers = leaf_layers(op) if isinstance(op, keras.Model) else [op]
        # An op of the graph need not be a layer: `x + 3.0` on Keras tensors (the hard
        # swish of MobileNetV3, ConvNeXt's layer scale) is a keras.ops operation, weightless.
        return any(
            id(v) in trainable_ids for layer in layers for v in getattr(layer, "weights", ())
        )

    first = next((i for i, op in enumerate(ops) if trains(op)), None)
    if first is None:
        return base.name, base.output
    _, cuts = _graph_ops(base)
    before = [c for c in cuts if c < first]
    # A prefix without weights (input, preprocessing) is cheap to recompute: not worth storing.
    if not before or not any(_weighted_ops(ops[: before[-1] + 1])):
        return None
    position = before[-1]
    produced = {id(t) for node in nodes[: position + 1] for t in node.outputs}
    alive = [t for node in nodes[position + 1 :] for t in node.input_tensors if id(t) in produced]
    return ops[position].name, alive[0]


def _weighted_ops(ops: list[Any]) -> list[Any]:
    return [
        layer
        for op in ops
        for layer in (leaf_layers(op) if isinstance(op, keras.Model) else [op])
        if getattr(layer, "weights", None) and not is_preprocessing(layer)
    ]


def set_redrawing(progbar: Any, redraw: bool) -> None:
    """Whether a `keras.utils.Progbar` redraws itself in place (Keras decides by platform)."""
    if hasattr(progbar, "_dynamic_display"):
        progbar._dynamic_display = redraw


def keras_cache_dir() -> str:
    """The folder Keras downloads weight files into (`$KERAS_HOME/models`)."""
    import os

    from keras.src.backend import config as keras_config

    return os.path.join(keras_config.keras_home(), "models")


@contextlib.contextmanager
def intercepting_downloads(handler: Any) -> Iterator[None]:
    """While inside, Keras' `get_file` (every `keras.applications` download) calls `handler`.

    `keras.applications` calls it through its module, so replacing the module's function
    reaches every architecture; Keras has no public hook for it.
    """
    from keras.src.utils import file_utils

    real = file_utils.get_file
    file_utils.get_file = handler
    try:
        yield
    finally:
        file_utils.get_file = real
