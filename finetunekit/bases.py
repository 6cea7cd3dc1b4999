"""The registry of pretrained bases and `load_base`.

A base is a Keras application without its classification top. The model that
`load_base` returns takes raw RGB pixels (0-255) and carries its family's
`preprocess_input` inside the graph as built-in Keras layers, so a saved model
predicts on raw images and reloads with plain `keras.models.load_model`.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import inspect
import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from finetunekit import structure
from finetunekit._atomic import expand
from finetunekit.errors import (
    ArgumentTypeError,
    ConfigError,
    InputShapeError,
    ModelStructureError,
    UnknownBaseError,
    WeightsMismatchError,
    WeightsNotFoundError,
    WeightsUnavailableError,
)

__all__ = [
    "BaseSpec",
    "BaseDetails",
    "load_base",
    "list_bases",
    "get_spec",
    "describe_base",
    "input_size",
]

logger = logging.getLogger("finetunekit")

Preprocessing = Literal["tf", "caffe", "torch", "none"]

# Constants of `keras.applications.imagenet_utils.preprocess_input`.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

# Arguments that belong to the top or to other steps, not to the base.
_REJECTED_KWARGS = {
    "include_top": "finetunekit always loads the base without its top; add_head() adds yours.",
    "pooling": "pooling belongs to the head: use add_head(base, pooling=...).",
    "classes": "the number of classes belongs to the head: use add_head(base, num_classes=...).",
    "classifier_activation": "the output activation follows the task in add_head(task=...).",
    "input_tensor": "load_base builds its own input (raw pixels); call the returned model on "
    "your tensor instead.",
    "include_preprocessing": "finetunekit always keeps the preprocessing inside the model so it "
    "takes raw 0-255 pixels.",
}


@dataclass(frozen=True)
class BaseSpec:
    """What finetunekit knows about one `keras.applications` constructor.

    Attributes:
        name: canonical name, e.g. `"mobilenet_v2"`.
        constructor: attribute of `keras.applications`, e.g. `"MobileNetV2"`.
        preprocessing: the mode of the family's `preprocess_input`: `"tf"` (scale to
            [-1, 1]), `"caffe"` (BGR, mean subtracted), `"torch"` (ImageNet mean/std) or
            `"none"` (the Keras model rescales by itself).
        default_size: the family's native input size in pixels.
        min_size: the smallest height/width Keras accepts for the family.
        module: submodule of `keras.applications` that holds `preprocess_input`.
    """

    name: str
    constructor: str
    preprocessing: Preprocessing
    default_size: int = 224
    min_size: int = 32
    module: str = ""


def _specs() -> Iterator[BaseSpec]:
    yield BaseSpec("mobilenet", "MobileNet", "tf", module="mobilenet")
    yield BaseSpec("mobilenet_v2", "MobileNetV2", "tf", module="mobilenet_v2")
    yield BaseSpec("mobilenet_v3_small", "MobileNetV3Small", "none", module="mobilenet_v3")
    yield BaseSpec("mobilenet_v3_large", "MobileNetV3Large", "none", module="mobilenet_v3")
    b_sizes = (224, 240, 260, 300, 380, 456, 528, 600)
    for i, size in enumerate(b_sizes):
        yield BaseSpec(
            f"efficientnet_b{i}", f"EfficientNetB{i}", "none", size, module="efficientnet"
        )
    v2_sizes = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "s": 384, "m": 480, "l": 480}
    for variant, size in v2_sizes.items():
        yield BaseSpec(
            f"efficientnet_v2_{variant}",
            f"EfficientNetV2{variant.upper()}",
            "none",
            size,
            module="efficientnet_v2",
        )
    for depth in (50, 101, 152):
        yield BaseSpec(f"resnet{depth}", f"ResNet{depth}", "caffe", module="resnet")
        yield BaseSpec(f"resnet{depth}_v2", f"ResNet{depth}V2", "tf", module="resnet_v2")
    for variant in ("Tiny", "Small", "Base", "Large", "XLarge"):
        yield BaseSpec(
            f"convnext_{variant.lower()}", f"ConvNeXt{variant}", "none", module="convnext"
        )
    for depth in (121, 169, 201):
        yield BaseSpec(f"densenet{depth}", f"DenseNet{depth}", "torch", module="densenet")
    yield BaseSpec("inception_v3", "InceptionV3", "tf", 299, 75, module="inception_v3")
    yield BaseSpec(
        "inception_resnet_v2", "InceptionResNetV2", "tf", 299, 75, module="inception_resnet_v2"
    )
    yield BaseSpec("xception", "Xception", "tf", 299, 71, module="xception")
    yield BaseSpec("vgg16", "VGG16", "caffe", module="vgg16")
    yield BaseSpec("vgg19", "VGG19", "caffe", module="vgg19")


def _normalize(name: str) -> str:
    """Forgiving key: case, `-`, `_`, spaces and dots do not matter."""
    return re.sub(r"[\s_\-.]", "", name.lower())


REGISTRY: Mapping[str, BaseSpec] = {spec.name: spec for spec in _specs()}
_BY_KEY: Mapping[str, BaseSpec] = {_normalize(s.name): s for s in REGISTRY.values()}


def list_bases(pattern: str | None = None) -> list[str]:
    """Lists the names of the bases `load_base` knows.

    Args:
        pattern: optional glob (`fnmatch` style) matched against the names, forgiving about
            case, `-` and `_`: `"mobilenet*"`, `"EfficientNetV2-*"`, `"resnet*v2"`.

    Returns:
        The matching canonical names, sorted.

    Examples:
        >>> list_bases("mobilenet*")
        ['mobilenet', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small']
    """
    if pattern is None:
        return sorted(REGISTRY)
    if not isinstance(pattern, str):
        raise ArgumentTypeError(
            f"list_bases expected a glob pattern string such as 'mobilenet*'; "
            f"received {type(pattern).__name__}."
        )
    key = re.sub(r"[\s_\-.]", "", pattern.lower())
    return sorted(s.name for k, s in _BY_KEY.items() if fnmatch.fnmatchcase(k, key))


def get_spec(name: str) -> BaseSpec:
    """Returns the registry entry for a base name (forgiving about case, `-` and `_`).

    Raises:
        UnknownBaseError: the name is not registered; the message lists the closest names.
    """
    spec = _BY_KEY.get(_normalize(name))
    if spec is not None:
        return spec
    close = difflib.get_close_matches(_normalize(name), list(_BY_KEY), n=3, cutoff=0.5)
    hint = (
        "Did you mean " + ", ".join(repr(_BY_KEY[k].name) for k in close) + "?"
        if close
        else "See finetunekit.list_bases() for every name."
    )
    raise UnknownBaseError(
        f"Unknown base {name!r}. {hint} A keras.Model or a path to a saved .keras model is "
        "accepted too."
    )


@dataclass(frozen=True)
class BaseDetails:
    """What an offline user needs to know about a base before loading it.

    Attributes:
        name: canonical name, e.g. `"mobilenet_v2"`.
        default_size: the native input size in pixels (height = width).
        parameters: the parameter count of the base without its top.
        preprocessing: the mode of the family's `preprocess_input` (see `BaseSpec`).
        weights_file: the file name Keras looks for in `$KERAS_HOME/models` (default
            `~/.keras/models`) when `weights="imagenet"`, at the native size.
    """

    name: str
    default_size: int
    parameters: int
    preprocessing: Preprocessing
    weights_file: str


class _WeightsRequest(Exception):
    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        self.filename = filename


def describe_base(name: str, **kwargs: Any) -> BaseDetails:
    """Describes a registered base: native size, parameters, preprocessing, weight file.

    Builds the base twice with no download: once with random weights to count its
    parameters, and once up to the point where Keras asks for its ImageNet file, which
    gives the file name (Keras has no function that only names it).

    Args:
        name: a registered base name (see `list_bases`).
        **kwargs: constructor arguments that change the architecture, e.g. `alpha=0.35`.

    Returns:
        A `BaseDetails`.

    Raises:
        UnknownBaseError: the name is not registered.
        ConfigError: Keras rejected a constructor argument.

    Examples:
        >>> describe_base("mobilenet_v2", alpha=0.35).weights_file
        'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5'
    """
    spec = get_spec(name)
    shape = (spec.default_size, spec.default_size, 3)
    parameters = _call_constructor(spec, weights=None, input_shape=shape, **kwargs).count_params()

    def request(fname: str | None = None, origin: str | None = None, **_: Any) -> str:
        raise _WeightsRequest(fname or str(origin).rstrip("/").rsplit("/", 1)[-1])

    try:
        with structure.intercepting_downloads(request):
            _call_constructor(spec, weights="imagenet", input_shape=shape, **kwargs)
        weights_file = "(none: Keras loaded the weights without asking for a file)"
    except _WeightsRequest as found:
        weights_file = found.filename
    return BaseDetails(spec.name, spec.default_size, parameters, spec.preprocessing, weights_file)


def load_base(
    base: str | keras.Model | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] | None = None,
    **kwargs: Any,
) -> keras.Model:
    """Loads a pretrained model without its top, taking raw RGB pixels.

    The family's `preprocess_input` is built into the returned model as
    ordinary Keras layers (no `Lambda`), so feed it images with values 0-255,
    any numeric dtype, and never call `preprocess_input` yourself.

    Args:
        base: a registered name (`"mobilenet_v2"`, `"EfficientNetB0"`, ...; see
            `list_bases`), your own Functional `keras.Model` (returned unchanged), or a path
            to a saved `.keras` model (a full fine-tuned model gives back its base).
        weights: `"imagenet"` (Keras' download, or its cache in `$KERAS_HOME/models`),
            `None` for random initialisation, or a path to a Keras weights file
            (`.h5`, `.weights.h5`) or saved `.keras` model of the same architecture.
        input_shape: `(height, width, 3)`; defaults to the family's native size.
        **kwargs: passed to the Keras constructor, e.g. `alpha=0.35`.

    Returns:
        A Functional `keras.Model` mapping raw images to feature maps.

    Raises:
        UnknownBaseError: the name is not registered (the closest names are suggested).
        InputShapeError: `input_shape` is malformed, not 3-channel, or too small.
        WeightsNotFoundError: a weights or model path does not exist.
        WeightsUnavailableError: the ImageNet download failed (offline).
        WeightsMismatchError: a weights file does not fit the architecture.
        ConfigError: a constructor argument is rejected by Keras or belongs to another step;
            Keras set to channels-first images.

    Examples:
        >>> base = load_base("mobilenet_v2", weights=None, input_shape=(96, 96, 3), alpha=0.35)
        >>> base.output_shape
        (None, 3, 3, 1280)
    """
    if keras.config.image_data_format() != "channels_last":
        raise ConfigError(
            "finetunekit takes channels-last images (height, width, channels), but Keras is "
            "set to channels_first. Call keras.config.set_image_data_format('channels_last') "
            "first (or set image_data_format in ~/.keras/keras.json)."
        )
    if isinstance(base, keras.Model):
        return _from_model(base, weights=weights, input_shape=input_shape, kwargs=kwargs)
    if isinstance(base, os.PathLike) or (isinstance(base, str) and _looks_like_path(base)):
        if kwargs:
            raise ConfigError(
                f"Constructor arguments {sorted(kwargs)} cannot apply to a saved model "
                f"({os.fspath(base)!r}); remove them."
            )
        model = _load_saved(expand(base))
        return _from_model(model, weights=weights, input_shape=input_shape, kwargs={})
    if not isinstance(base, str):
        raise ArgumentTypeError(
            "load_base expected a base name (str), a keras.Model or a path to a .keras file; "
            f"received {type(base).__name__}."
        )
    spec = get_spec(base)
    shape = _check_input_shape(spec, input_shape)
    for key, why in _REJECTED_KWARGS.items():
        if key in kwargs:
            raise ConfigError(f"load_base does not take {key}={kwargs[key]!r}: {why}")
    # Keras weight files are matched to layers in graph order. The tf/torch preprocessing
    # layers hold no weights, so those files load straight into the base built on top of
    # them (one construction); the caffe channel swap holds weights, so caffe bases load
    # into a plain copy first and the weights are copied over.
    direct = spec.preprocessing != "caffe"
    if weights == "imagenet" and direct:
        return _imagenet(lambda: _construct(spec, shape, kwargs, weights="imagenet"))
    model = _construct(spec, shape, kwargs)
    if weights == "imagenet":
        source = _imagenet(
            lambda: _call_constructor(spec, weights="imagenet", input_shape=shape, **kwargs)
        )
    elif weights is not None:
        legacy_h5 = str(weights).endswith(".h5") and not str(weights).endswith(".weights.h5")
        reference = (
            model
            if direct and legacy_h5
            else _call_constructor(spec, weights=None, input_shape=shape, **kwargs)
        )
        source = _weights_file_model(weights, reference=reference)
    else:
        return model
    if source is not model:
        copy_weights(source, model, origin=_describe_weights(weights))
    return model


def check_arguments(
    base: Any, input_shape: Any, kwargs: dict[str, Any]
) -> None:
    """What `load_base(base, input_shape=..., **kwargs)` would refuse, without building it.

    For a registered name: the name, `input_shape` (when given) and the keyword
    arguments, against the Keras constructor's signature. A model or a path is checked
    when it is loaded.

    Raises:
        UnknownBaseError: the name is not registered.
        InputShapeError: `input_shape` is malformed, not 3-channel, or too small.
        ConfigError: a keyword the constructor does not take, or one of another step.
    """
    if not isinstance(base, str) or _looks_like_path(base):
        return
    spec = get_spec(base)
    if input_shape is not None:
        _check_input_shape(spec, input_shape)
    for key, why in _REJECTED_KWARGS.items():
        if key in kwargs:
            raise ConfigError(f"load_base does not take {key}={kwargs[key]!r}: {why}")
    parameters = inspect.signature(getattr(keras.applications, spec.constructor)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        close = {k: difflib.get_close_matches(k, list(parameters), n=1) for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ConfigError(
            f"keras.applications.{spec.constructor} takes no argument "
            f"{', '.join(map(repr, unknown))}"
            f"{' (' + hints + ')' if hints else ''}. Check the spelling of the keyword "
            "arguments passed on to the base."
        )


def registry_name(base: Any) -> str | None:
    """`base` when it names a registry base (not a path or a model), else None."""
    return base if isinstance(base, str) and not _looks_like_path(base) else None


def takes_raw_pixels(base: Any) -> bool:
    """Whether `base` (a name, path or model) is known to take raw 0-255 pixels: a
    registry base, or a model holding finetunekit's preprocessing. A model of the user's
    own may not."""
    if registry_name(base) is not None:
        return True
    return isinstance(base, keras.Model) and structure.has_preprocessing(base)


def channels_of(base: Any) -> int:
    """The channels of the images `base` (a name, path or model) takes, before it is built:
    3 for a registry base, the input's for a model or a `.keras` file (read from its
    config); 3 when it cannot tell."""
    if isinstance(base, keras.Model):
        return structure.input_channels(base)
    if registry_name(base) is not None or not isinstance(base, (str, os.PathLike)):
        return 3
    path = expand(base)
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        inputs = [
            layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape")
            for layer in config["config"]["layers"]
            if layer.get("class_name") == "InputLayer"
        ]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return 3  # not a .keras file that says: loading it says what is wrong
    shape = inputs[0] if len(inputs) == 1 else None
    return int(shape[-1]) if shape and len(shape) == 4 and shape[-1] else 3


def _looks_like_path(text: str) -> bool:
    """Whether a base string is a path. A registry name is a name even when a folder or
    file of that name exists in the working folder (write `./mobilenet_v2` for that)."""
    if text.endswith((".keras", ".h5")) or os.sep in text:
        return True
    return os.path.exists(text) and _normalize(text) not in _BY_KEY


_BASE_NAME_INSTEAD = "pass a base name such as 'mobilenet_v2' (see finetunekit.list_bases())"


def _load_saved(path: Path, *, otherwise: str | None = _BASE_NAME_INSTEAD) -> keras.Model:
    """Loads a `.keras` file without its optimizer; `otherwise` is the alternative offered."""
    alternative = f", or {otherwise}" if otherwise else ""
    if not path.exists():
        raise WeightsNotFoundError(f"No saved model at {str(path)!r}. Check the path{alternative}.")
    if path.is_file() and path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ConfigError(
            f"Could not read a Keras model from {str(path)!r}: it is not a complete '.keras' "
            "archive (cut short by an interrupted save or copy, or not a Keras file). Save or "
            "copy it again with "
            f"model.save('name.keras'){alternative}."
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files
        if "safe_mode" in str(exc):  # a Lambda layer: its Python code is not run unasked
            raise ConfigError(
                f"{str(path)!r} holds a Lambda layer, whose Python code Keras does not run "
                "from a file unless told it is trusted. If you trust the file, call "
                "keras.config.enable_unsafe_deserialization() before loading it; or build "
                "the model with a layer class of its own instead of the Lambda."
            ) from exc
        raise ConfigError(
            f"Could not read a Keras model from {str(path)!r} ({type(exc).__name__}: {exc}). "
            f"Save it with model.save('name.keras'){alternative}."
        ) from exc
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{str(path)!r} does not hold a keras.Model.")
    return model


def _from_model(
    model: keras.Model,
    *,
    weights: str | os.PathLike[str] | None,
    input_shape: tuple[int | None, int | None, int] | None,
    kwargs: dict[str, Any],
) -> keras.Model:
    if kwargs:
        raise ConfigError(
            f"Constructor arguments {sorted(kwargs)} only apply to a base name; the model "
            "you passed is used as it is."
        )
    base = structure.find_base(model)
    if base is not model:
        _refuse_layers_before(model, base)
    if input_shape is not None and tuple(input_shape) != tuple(base.input_shape[1:]):
        raise InputShapeError(
            f"input_shape={tuple(input_shape)} does not match the model's input shape "
            f"{tuple(base.input_shape[1:])}; leave input_shape out for a keras.Model base."
        )
    if weights is not None and weights != "imagenet":
        copy_weights(_weights_file_model(weights, reference=base), base, str(weights))
    _warn_if_keras_preprocessing_missing(base)
    return base


def _warn_if_keras_preprocessing_missing(base: keras.Model) -> None:
    """Warns when `base` looks like a `keras.applications` model (by the name Keras gives
    it, e.g. "mobilenetv2_0.35_96") of a family whose `preprocess_input` is not part of
    the model, and holds no preprocessing: fed the raw pixels finetunekit's loaders give,
    it trains on the wrong scale (0.37 test accuracy on the flowers where the same
    weights built by name reached 0.76)."""
    if structure.has_preprocessing(base):
        return
    key = _normalize(base.name)
    matches = [
        spec for spec in REGISTRY.values()
        if spec.preprocessing != "none" and key.startswith(_normalize(spec.constructor))
    ]
    if not matches:
        return
    spec = max(matches, key=lambda spec: len(spec.constructor))
    logger.warning(
        "%r looks like keras.applications.%s, which expects images passed through "
        "keras.applications.%s.preprocess_input; it holds no preprocessing, and raw 0-255 "
        "pixels train it on the wrong scale. Build the base with "
        "finetunekit.load_base(%r, weights=...) (preprocessing inside), or apply "
        "preprocess_input to your images.",
        base.name, spec.constructor, spec.module or spec.name, spec.name,
    )


def _refuse_layers_before(model: keras.Model, base: keras.Model) -> None:
    """Refuses a full model that transforms its images before its base.

    In the Keras transfer-learning guide's layout (augmentation, then the base's
    preprocessing as a Rescaling, then the base) the base alone expects preprocessed
    pixels: taken without those layers it trained on raw 0-255 values and lost a third
    of its accuracy on the flowers, without a word.
    """
    before = structure.layers_before(model, base)
    if before:
        names = ", ".join(repr(layer.name) for layer in before[:4])
        raise ModelStructureError(
            f"{model.name!r} runs layers before its base {base.name!r} ({names}): its "
            "preprocessing or augmentation, which the base alone would train without. Pass "
            "a base that holds its preprocessing (finetunekit.load_base('mobilenet_v2', ...) "
            "builds one, and FineTuner(augment=...) augments), or fine-tune this model as it "
            "is with the steps (freeze, unfreeze_last, compile_for, model.fit)."
        )


def _check_input_shape(spec: BaseSpec, input_shape: Any) -> tuple[int | None, int | None, int]:
    if input_shape is None:
        return (spec.default_size, spec.default_size, 3)
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(d is None or isinstance(d, (int, np.integer)) for d in input_shape)
    ):
        raise InputShapeError(
            "input_shape must be (height, width, channels), e.g. (160, 160, 3); "
            f"received {input_shape!r}."
        )
    height, width, channels = input_shape
    if channels != 3:
        raise InputShapeError(
            f"{spec.name} takes RGB images: input_shape must end with 3 channels; received "
            f"{tuple(input_shape)}. Convert grayscale/RGBA images to RGB (finetunekit.data does)."
        )
    for dim in (height, width):
        if dim is not None and dim < spec.min_size:
            raise InputShapeError(
                f"{spec.name} needs images of at least {spec.min_size}x{spec.min_size} pixels; "
                f"received input_shape={tuple(input_shape)}. Resize your images, e.g. "
                f"input_shape=({max(spec.min_size, 96)}, {max(spec.min_size, 96)}, 3)."
            )
    return (height, width, 3)


def _preprocessing(mode: Preprocessing, inputs: Any) -> Any:
    """Builds `preprocess_input` of the given mode from serializable Keras layers."""
    prefix = structure.PREPROCESS_PREFIX
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{prefix}_tf")(inputs)
    if mode == "torch":
        scale = [1.0 / (255.0 * s) for s in _TORCH_STD]
        offset = [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)]
        return keras.layers.Rescaling(scale, offset=offset, name=f"{prefix}_torch")(inputs)
    if mode == "caffe":
        # RGB -> BGR and mean subtraction as one fixed 1x1 convolution: exact (the kernel is a
        # permutation) and made of built-in layers only. It never trains.
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_channel in range(3):
            kernel[0, 0, 2 - out_channel, out_channel] = 1.0
        layer = keras.layers.Conv2D(
            3,
            1,
            kernel_initializer=keras.initializers.Constant(kernel),
            bias_initializer=keras.initializers.Constant(-np.array(_CAFFE_MEAN_BGR)),
            trainable=False,
            name=f"{prefix}_caffe",
        )
        return layer(inputs)
    return inputs


@contextlib.contextmanager
def _keras_warnings_to_log() -> Iterator[None]:
    """Keras warns with `warnings.warn`; route those to our logger instead of stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        logger.info("keras: %s", item.message)


def _call_constructor(spec: BaseSpec, **arguments: Any) -> keras.Model:
    constructor = getattr(keras.applications, spec.constructor)
    try:
        with _keras_warnings_to_log():
            return constructor(include_top=False, **arguments)
    except TypeError as exc:
        raise ConfigError(
            f"keras.applications.{spec.constructor} rejected the arguments "
            f"{_public_arguments(arguments)}: {exc}. Check the spelling of the keyword "
            "arguments you passed to load_base."
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"keras.applications.{spec.constructor} rejected the arguments "
            f"{_public_arguments(arguments)}: {exc}"
        ) from exc


def _public_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in arguments.items() if k != "input_tensor"}


def _construct(
    spec: BaseSpec,
    shape: tuple[int | None, int | None, int],
    kwargs: dict[str, Any],
    weights: str | None = None,
) -> keras.Model:
    inputs = keras.Input(shape=shape, name="image")
    features = _preprocessing(spec.preprocessing, inputs)
    model = _call_constructor(
        spec, weights=weights, input_shape=shape, input_tensor=features, **kwargs
    )
    # With `input_tensor`, Keras gives the model a one-element input list; rewrap the same
    # layers with a single input so the base is called like any model.
    return keras.Model(inputs, model.output, name=model.name)


def _imagenet(build: Callable[[], keras.Model]) -> keras.Model:
    """Runs a constructor that downloads ImageNet weights; explains a failed download."""
    try:
        return build()
    except ConfigError:
        raise
    except Exception as exc:  # Keras raises a bare Exception on "URL fetch failure"
        if "URL fetch failure" in str(exc) or isinstance(exc, OSError):
            raise _download_error(exc) from exc
        raise


def _weights_file_model(weights: str | os.PathLike[str], reference: keras.Model) -> keras.Model:
    """Loads a weights path into `reference` (for .h5) or as a model (for .keras)."""
    if not isinstance(weights, (str, os.PathLike)):
        raise ArgumentTypeError(
            "weights must be 'imagenet', None or a path to a weights file; received "
            f"{type(weights).__name__}."
        )
    path = expand(weights)
    if not path.exists():
        if path.suffix in (".h5", ".keras", ".hdf5") or os.sep in str(weights):
            raise WeightsNotFoundError(
                f"No weights file at {str(path)!r}. Check the path, or use weights='imagenet' "
                "or weights=None."
            )
        raise ConfigError(
            f"weights must be 'imagenet', None, or a path to a .h5/.weights.h5/.keras file; "
            f"received {str(weights)!r}."
        )
    _check_weights_file(path)
    if path.suffix == ".keras":
        return structure.find_base(_load_saved(path))
    try:
        with _keras_warnings_to_log():
            reference.load_weights(str(path))
    except Exception as exc:  # h5py and Keras raise ValueError, OSError, KeyError...
        # Keras' own text, tidied: it ends in a full stop and writes ")for weight".
        keras_says = re.sub(r"\)(?=\w)", ") ", str(exc).strip()).rstrip(".")
        raise WeightsMismatchError(
            f"The weights in {str(path)!r} do not fit {reference.name!r}: {keras_says}. The "
            "file must be saved from the same architecture without its top (same alpha, "
            "same include_top=False); a file with the classification top needs "
            "include_top=True in Keras and cannot be used as a base directly."
        ) from exc
    return reference


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"


def _check_weights_file(path: Path) -> None:
    """Names what is wrong with a weights path that is not a readable file of its kind.

    Without this, every unreadable file would be reported as weights that "do not fit".

    Raises:
        ConfigError: a folder, a `.keras` archive named `.h5` (or the reverse), a file
            cut short, or a file of no weights format.
    """
    if path.is_dir():
        raise ConfigError(
            f"weights={str(path)!r} is a folder; pass the weights file inside it (a .h5, "
            ".weights.h5 or .keras file)."
        )
    with open(path, "rb") as handle:
        head = handle.read(8)
    kind = "zip" if head.startswith(_ZIP_SIGNATURE) else "hdf5" if head == _HDF5_SIGNATURE else ""
    if path.suffix == ".keras" and kind == "hdf5":
        raise ConfigError(
            f"weights={str(path)!r} is an HDF5 weights file named '.keras'; rename it to "
            f"{str(path.with_suffix('.h5'))!r}."
        )
    if path.suffix in (".h5", ".hdf5") and kind == "zip":
        raise ConfigError(
            f"weights={str(path)!r} is a Keras '.keras' archive named '{path.suffix}'; rename "
            f"it to {str(path.with_suffix('.keras'))!r} (or pass it as the base itself)."
        )
    if kind == "" and path.suffix != ".keras":
        raise ConfigError(
            f"weights={str(path)!r} is not an HDF5 weights file (it starts with {head!r}); "
            "pass a .h5, .weights.h5 or .keras file saved by Keras."
        )
    if kind == "hdf5":
        import h5py

        try:
            h5py.File(path, "r").close()
        except OSError as exc:
            what = "is cut short (an interrupted download or copy?)" if "truncated" in str(
                exc
            ) else "cannot be read as HDF5"
            raise ConfigError(
                f"weights={str(path)!r} {what}: {exc}. Download or copy it again."
            ) from exc


def _broken_cached_weights() -> list[str]:
    """The weight files in the Keras cache folder that do not open (cut-short downloads)."""
    import h5py

    folder = Path(structure.keras_cache_dir())
    broken = []
    for path in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
        try:
            h5py.File(path, "r").close()
        except OSError:
            broken.append(str(path))
    return broken


def _download_error(exc: BaseException) -> WeightsUnavailableError:
    match = re.search(r"(https?://\S+?)(?::\s|\s|$)", str(exc))
    broken = [] if match else _broken_cached_weights()
    if broken:
        return WeightsUnavailableError(
            f"The ImageNet weights in the Keras cache cannot be read ({exc}): "
            f"{', '.join(repr(p) for p in broken)} "
            f"{'is' if len(broken) == 1 else 'are'} cut short (an interrupted download?). "
            "Delete the file so that Keras downloads it again, or pass weights=PATH to a "
            "good copy."
        )
    url = match.group(1) if match else "(unknown URL)"
    filename = url.rstrip("/").rsplit("/", 1)[-1]
    cache = structure.keras_cache_dir()
    return WeightsUnavailableError(
        f"Could not download the ImageNet weights {filename!r} from {url} ({exc}). "
        f"Either place that file in the Keras cache folder {cache!r} "
        "($KERAS_HOME/models, default ~/.keras/models), or pass weights=PATH to a copy of it "
        "(any input size works with a path), or weights=None to start from random weights."
    )


def _describe_weights(weights: str | os.PathLike[str]) -> str:
    return "ImageNet weights" if weights == "imagenet" else repr(os.fspath(weights))


def copy_weights(source: keras.Model, target: keras.Model, origin: str) -> None:
    """Copies weights layer by layer, in graph order, skipping preprocessing layers.

    Raises:
        WeightsMismatchError: the two models do not have the same weighted layers.
    """
    src = structure.weighted_layers(source)
    dst = structure.weighted_layers(target)
    src_shapes = [[tuple(w.shape) for w in layer.weights] for layer in src]
    dst_shapes = [[tuple(w.shape) for w in layer.weights] for layer in dst]
    if src_shapes != dst_shapes:
        where = next(
            (i for i, (a, b) in enumerate(zip(src_shapes, dst_shapes, strict=False)) if a != b),
            min(len(src), len(dst)),
        )
        detail = (
            f"layer {where}: {dst[where].name!r} expects {dst_shapes[where]}, "
            f"the weights hold {src_shapes[where]}"
            if where < min(len(src), len(dst))
            else f"{len(src)} weighted layers in the weights, {len(dst)} in the base"
        )
        raise WeightsMismatchError(
            f"{origin} do not fit the base {target.name!r} ({detail}). Load the same "
            "architecture with the same constructor arguments (e.g. alpha) they were saved with."
        )
    for s, d in zip(src, dst, strict=True):
        d.set_weights(s.get_weights())


def input_size(
    base: str | keras.Model | os.PathLike[str],
    input_shape: tuple[int, int, int] | None = None,
) -> tuple[int, int]:
    """The `(height, width)` images must have for a base: what `from_directory` wants.

    Args:
        base: a base name (its native size), a keras.Model (its input size) or a saved
            model path (loaded to read it).
        input_shape: the `input_shape` the base will be loaded with, if any (it wins).

    Returns:
        `(height, width)`; `finetunekit.data.DEFAULT_IMAGE_SIZE` for a model that takes
        any size.

    Raises:
        UnknownBaseError: an unknown base name.

    Example:
        >>> input_size("mobilenet_v2")
        (224, 224)
    """
    if isinstance(base, str) and not _looks_like_path(base):
        spec = get_spec(base)
        height, width, _ = _check_input_shape(spec, input_shape)
        if height is not None and width is not None:
            return (int(height), int(width))
        return (spec.default_size, spec.default_size)
    if input_shape is not None and all(isinstance(d, (int, np.integer)) for d in input_shape[:2]):
        return (int(input_shape[0]), int(input_shape[1]))
    model = base if isinstance(base, keras.Model) else load_base(base, weights=None)
    shape = tuple(model.input_shape[1:3]) if model.input_shape else ()
    if len(shape) == 2 and all(isinstance(d, int) for d in shape):
        return (int(shape[0]), int(shape[1]))
    return (224, 224)
