"""Shipping a model: `export` to LiteRT (`.tflite`) or a SavedModel, with a parity check.

Built on Keras' `model.export` (which runs TensorFlow's LiteRT converter and passes
it the quantization settings). What Keras lacks is the check that the exported
model still predicts what the Keras model predicts; `export` runs the exported
file on real images (with the LiteRT interpreter of `ai-edge-litert`, the
`export` extra) and reports the largest output difference and the top-1
agreement. The preprocessing stays inside the exported model: it takes raw
0-255 RGB pixels (float32), like the Keras model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from finetunekit import _gptq, tasks
from finetunekit._atomic import expand, name_suggested, write_beside
from finetunekit.caching import quiet_retracing
from finetunekit.classifier import (
    Classifier,
    _as_paths,
    _decode_failure,
    as_classifier,
    image_dataset,
)
from finetunekit.errors import (
    ArgumentTypeError,
    ConfigError,
    DataError,
    OutputPathError,
    missing_extra,
)

__all__ = ["export", "ExportReport", "FORMATS", "QUANTIZATIONS"]

logger = logging.getLogger("finetunekit")

FORMATS = ("litert", "saved_model")
QUANTIZATIONS = (None, "float16", "dynamic", "int8")
#: Most images `export` reads from `representative_data` to calibrate int8 and to check.
MAX_IMAGES = 500
#: Fitting the output layer of an int8 export to its int8 inputs (`fit_head=True`): Adam
#: steps at this rate from the Keras weights, with this L2 pull back toward them. The
#: pull was chosen on flowers-large/train (training photos, never flowers/test) for one
#: fine-tuned MobileNetV2 and checked on three more; see docs/using-the-model.md.
HEAD_FIT_STEPS = 300
HEAD_FIT_RATE = 1e-3
HEAD_FIT_PENALTY = 3e-4
#: Fewer calibration images than this and neither the output layer is fitted nor the
#: kernels rounded by GPTQ (the converter's own rounding is kept): a guard against
#: fitting weights to a handful of images, not a measured threshold.
MIN_HEAD_FIT_IMAGES = 100


@dataclass(frozen=True)
class ExportReport:
    """What `export` wrote and how well it agrees with the Keras model.

    Attributes:
        path: the file (LiteRT) or folder (SavedModel) written.
        format: `"litert"` or `"saved_model"`.
        quantize: None, `"float16"`, `"dynamic"` or `"int8"`.
        size_bytes: size of the file (of every file in the folder, for a SavedModel).
        images: images the parity check ran on (0 when no images were given).
        max_abs_diff: largest |exported - Keras| over all outputs of those images.
        top1_agreement: share of those images whose top class is the same in both
            (for a one-output sigmoid: the same side of 0.5; None for a regression).
        runtime: what ran the exported model: `"ai-edge-litert"`, `"tf.lite"` or
            `"tf.saved_model"`.
        head_fitted: True when the int8 file's output layer was fitted to its int8
            inputs on the calibration images (`fit_head=True`).
        on_calibration: True when the parity check ran on the calibration images
            (no `parity_data`): with GPTQ kernels or a fitted head, an optimistic figure.
        kernels_rounded: convolution kernels of the int8 file rounded by GPTQ on the
            calibration images (`gptq=True`); 0 when none were.
        notes: what was asked and not done, and why (e.g. GPTQ skipped for too few
            calibration images).
    """

    path: Path
    format: str
    quantize: str | None
    size_bytes: int
    images: int
    max_abs_diff: float | None
    top1_agreement: float | None
    runtime: str | None
    head_fitted: bool = False
    on_calibration: bool = False
    kernels_rounded: int = 0
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        kind = self.format + (f" ({self.quantize})" if self.quantize else "")
        lines = [f"exported {kind} to {self.path}: {self.size_bytes / 1e6:.2f} MB"]
        lines += [f"note: {note}" for note in self.notes]
        if self.kernels_rounded:
            lines.append(f"{self.kernels_rounded} convolution kernels rounded by GPTQ")
        if self.images and self.max_abs_diff is not None:
            agreement = (
                ""
                if self.top1_agreement is None
                else f", top-1 agreement {self.top1_agreement:.1%}"
            )
            lines.append(
                f"parity with Keras on {self.images} images ({self.runtime}): "
                f"max |diff| {self.max_abs_diff:.2e}{agreement}"
            )
            if (self.head_fitted or self.kernels_rounded) and self.on_calibration:
                lines.append(
                    "  (on the calibration images, which the int8 weights were fitted to: "
                    "pass parity_data with other images for a fair figure)"
                )
        else:
            lines.append("parity not checked: pass representative_data or parity_data images")
        return "\n".join(lines)


def export(
    model_or_path: Any,
    target: str | os.PathLike[str],
    *,
    format: str = "litert",
    quantize: str | None = None,
    representative_data: Any = None,
    parity_data: Any = None,
    max_images: int = MAX_IMAGES,
    gptq: bool = True,
    fit_head: bool = True,
) -> ExportReport:
    """Exports a model for inference outside Keras and checks it against the Keras model.

    A LiteRT file is written compact: quantized tensors with the same per-channel zero
    points share one vector of them, and a fused tensor keeps the first of its names
    (an int8 MobileNetV2 alpha 0.35 file is a fifth smaller; the outputs are the same).

    Args:
        model_or_path: a `keras.Model`, a `Classifier` or a path to a `.keras` file.
        target: the file to write, ending in `.tflite` for LiteRT, or the SavedModel
            folder. It is written beside and renamed into place, so a failed export
            leaves what was there.
        format: `"litert"` (a `.tflite` file for phones and microcontrollers) or
            `"saved_model"` (TensorFlow Serving, TF.js converters).
        quantize: LiteRT only. None (float32), `"float16"` (weights in float16, about
            half the size), `"dynamic"` (weights in int8, activations in float: no
            calibration) or `"int8"` (weights and activations in int8, for integer-only
            hardware; needs `representative_data` to calibrate the activation ranges).
        representative_data: real images the model will see: a folder, image files,
            arrays, or a `tf.data.Dataset` of images or `(images, labels)`. Calibrates
            int8 and, unless `parity_data` is given, runs the parity check.
        parity_data: images for the parity check (same forms), e.g. a test folder.
        max_images: most images read from each of these (of a folder of more, that many
            spread evenly over its sorted files, so every class is in them).
        gptq: int8 only. Round the kernels of the `Conv2D` and `DepthwiseConv2D`
            layers onto the converter's int8 grid with GPTQ: weight by weight, each
            rounding error spread over the weights not yet rounded, so that the
            layer's outputs on (up to 128 of) the calibration images move least,
            instead of rounding each weight to its nearest step. Needs at least 100
            calibration images; costs a few seconds; the file is the same size and
            the Keras model keeps its own weights. On four fine-tuned MobileNetV2s
            it raised the top-1 agreement on 1,989 photos outside the calibration
            from 94.9-96.2 % to 97.5-97.9 %. False rounds to nearest, as the
            converter does.
        fit_head: int8 only. Fit the model's output layer (a float32 `Dense` with
            softmax or sigmoid) to the int8 features of the calibration images (at
            least 100), so that the int8 file's outputs follow the Keras model's: 300
            gradient steps from the Keras weights, pulled back toward them; it costs
            a second conversion. Its targets are the Keras model's own outputs
            (taken before GPTQ's kernels go in). Without GPTQ this raised the
            agreement on those 1,989 photos by 0.5-1.0 points, after GPTQ by 0 to
            +0.4 (mean +0.2). False writes the converter's output layer as it is.

    Returns:
        An `ExportReport` with the size and the parity check.

    Raises:
        ConfigError: unknown `format` or `quantize`, quantization of a SavedModel, int8
            without `representative_data`, a LiteRT target not ending in `.tflite`, or
            a `gptq` or `fit_head` that is not a bool.
        WeightsNotFoundError: there is no model file at `model_or_path`.
        DataError, DataNotFoundError: the images cannot be read.
        OutputPathError: a SavedModel's folder holds other files (the export would
            replace them all), or the target cannot be written.
        MissingExtraError: no LiteRT interpreter to run the check
            (`pip install 'finetunekit[export]'`).

    Example:
        >>> report = ftk.export("flowers.keras", "flowers.tflite", quantize="int8",
        ...                     representative_data="flowers/train")
        >>> report.top1_agreement
        0.98
    """
    if format not in FORMATS:
        raise ConfigError(f"Unknown export format {format!r}; choose one of {list(FORMATS)}.")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(
            f"Unknown quantize={quantize!r}; choose None (float32), 'float16', 'dynamic' or 'int8'."
        )
    if quantize is not None and format != "litert":
        raise ConfigError(
            f"quantize={quantize!r} applies to format='litert'; a SavedModel keeps float32."
        )
    if quantize == "int8" and representative_data is None:
        raise ConfigError(
            "quantize='int8' needs representative_data: a few hundred real images (a folder, "
            "files, arrays or a dataset) to calibrate the activation ranges, e.g. "
            "representative_data='flowers/train'. Or quantize='dynamic' (int8 weights, no "
            "calibration)."
        )
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ConfigError(f"max_images must be a positive int; received {max_images!r}.")
    for name, value in (("gptq", gptq), ("fit_head", fit_head)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False; received {value!r}.")
    if not isinstance(target, (str, os.PathLike)):
        raise ArgumentTypeError(f"target must be a str or os.PathLike; received {target!r}.")
    destination = expand(target)
    if format == "litert" and destination.suffix != ".tflite":
        folder, example = name_suggested(destination, target, ".tflite")
        raise ConfigError(
            f"A LiteRT export is a '.tflite' file; received {str(destination)!r}"
            f"{', a folder' if folder else ''}. Use a name such as {str(example)!r}."
        )
    if format == "saved_model" and destination.is_file():
        raise ConfigError(
            f"A SavedModel is a folder, but {str(destination)!r} is a file; choose another name."
        )
    if format == "saved_model":
        destination = _saved_model_folder(destination)
    classifier = as_classifier(model_or_path)
    calibration = None
    if representative_data is not None:
        calibration = _images(representative_data, classifier, max_images, "representative_data")
    check = calibration
    if parity_data is not None:
        check = _images(parity_data, classifier, max_images, "parity_data")
    head_fitted = False
    kernels: list[tuple[Any, np.ndarray]] = []
    head_fit = None
    if format == "litert":
        if quantize == "int8" and calibration is not None:
            if fit_head:
                # What the Keras model gives, taken before GPTQ's kernels are swapped in:
                # the head is fitted to agree with the model the parity check compares with.
                head_fit = _head_fit_targets(classifier.model, calibration)
            if gptq:
                kernels = _kernels_rounded(classifier.model, calibration)
        with _weights_swapped(kernels):
            head: list[tuple[Any, np.ndarray]] = []
            if head_fit is not None and calibration is not None:
                # Fitted on the features of the body as it will be written (with GPTQ's
                # kernels, when there are any).
                head = _head_fitted_to_int8(classifier.model, calibration, head_fit)
            head_fitted = bool(head)
            with _weights_swapped(head):
                _write_litert(classifier, destination, quantize, calibration)
        size = destination.stat().st_size
    else:
        _write_saved_model(classifier, destination)
        size = sum(p.stat().st_size for p in destination.rglob("*") if p.is_file())
    on_calibration = check is not None and parity_data is None
    notes: tuple[str, ...] = ()
    asked = [what for what, on in (("GPTQ", gptq), ("the output-layer fit", fit_head)) if on]
    count = 0 if calibration is None else len(calibration)
    if quantize == "int8" and 0 < count < MIN_HEAD_FIT_IMAGES and asked:  # not only INFO
        notes = (
            f"{' and '.join(asked)} skipped: {count} calibration images, fewer "
            f"than {MIN_HEAD_FIT_IMAGES} (the converter's rounding is kept); pass "
            f"{MIN_HEAD_FIT_IMAGES} or more for them",
        )
    report = ExportReport(
        destination,
        format,
        quantize,
        size,
        0,
        None,
        None,
        None,
        head_fitted,
        on_calibration,
        len(kernels),
        notes,
    )
    if check is not None:
        runtime, run = (
            _litert_runner(destination) if format == "litert" else _saved_model_runner(destination)
        )
        if head_fit is not None and check is calibration:
            # The Keras model's outputs on these images, predicted once for the head fit
            # (before any weights were swapped); a second pass would give the same.
            expected = head_fit.targets
        else:
            with quiet_retracing():
                expected = np.asarray(classifier.model.predict(check, verbose=0, batch_size=32))
        got = np.concatenate([run(check[i : i + 32]) for i in range(0, len(check), 32)])
        expected = expected.reshape(len(check), -1)
        got = got.reshape(len(check), -1)
        report = ExportReport(
            destination,
            format,
            quantize,
            size,
            len(check),
            float(np.max(np.abs(got - expected))),
            _agreement(classifier, expected, got),
            runtime,
            head_fitted,
            on_calibration,
            len(kernels),
            notes,
        )
    return report


def _images(data: Any, classifier: Classifier, limit: int, what: str) -> np.ndarray:
    """Up to `limit` float32 images of the model's input size and channels."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        images = data.map(lambda *element: element[0]) if isinstance(spec, tuple) else data
        if images.element_spec.shape.rank == 3:
            images = images.batch(32)
        batches = []
        count = 0
        for batch in images.as_numpy_iterator():
            batches.append(np.asarray(batch, dtype="float32"))
            count += len(batch)
            if count >= limit:
                break
        if not batches:
            raise DataError(f"{what} is empty; pass real images the model will see.")
        arrays: Any = list(np.concatenate(batches)[:limit])
    else:
        arrays = _spread(data, limit)
    dataset, sources = image_dataset(arrays, classifier.input_size, channels=classifier.channels)
    try:
        batches = list(dataset.take(-(-limit // 32)).as_numpy_iterator())
    except tf.errors.InvalidArgumentError as exc:  # a file that does not decode
        raise _decode_failure(sources) from exc
    images = np.concatenate(batches)[:limit]
    # Images divided by 255 calibrate int8 to ranges the model never sees: converted
    # without a word, the model agreed with Keras on 2 % of images (91 % with raw pixels).
    classifier.check_pixels(images[:32], what)
    return images


def _spread(data: Any, limit: int) -> Any:
    """Of more than `limit` files, `limit` evenly spaced in sorted order; else `data`.

    The first `limit` files of a folder are those of its first classes: a parity check
    (or an int8 calibration) on flowers-large/train read daisies and dandelions only.
    """
    paths = _as_paths(data)
    if paths is None or len(paths) <= limit:
        return data
    return [paths[i] for i in np.linspace(0, len(paths) - 1, num=limit).astype(int)]


def _agreement(classifier: Classifier, expected: np.ndarray, got: np.ndarray) -> float | None:
    return tasks.get_task(classifier.task).agreement(expected, got)


def _converter_options(quantize: str | None, calibration: Any) -> dict[str, Any]:
    """What `model.export(format="litert")` passes to TensorFlow's converter."""
    options: dict[str, Any] = {}
    if quantize is not None:
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    if quantize == "int8":
        options["representative_dataset"] = _representative(calibration)
    return options


def _write_litert(
    classifier: Classifier, destination: Path, quantize: str | None, calibration: Any
) -> None:
    options = _converter_options(quantize, calibration)
    model = _in_float32(classifier.model)
    with write_beside(destination) as temp:
        model.export(temp, format="litert", verbose=False, **options)
        temp.write_bytes(_compact_litert(temp.read_bytes()))


def _in_float32(model: Any) -> Any:
    """`model`, or a float32 copy of it when it computes in another float dtype (mixed
    precision, `keras.config.set_floatx`): LiteRT's converter would otherwise write ops
    of TensorFlow's own (Flex) that LiteRT's interpreter cannot run. Keras has no
    export option for it, hence the copy: the same layers and weights, each float policy
    made float32, built under a float32 global policy. A model the copy cannot be made
    of is exported as it is, with a warning."""
    import keras

    from finetunekit import structure

    def floats(layers: list[Any]) -> set[str]:
        dtypes = {getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None)
                  for layer in layers}
        return {d for d in dtypes if d in _OTHER_FLOATS}

    other = floats(structure.leaf_layers(model))
    if not other:
        return model

    def float32_layer(layer: Any) -> Any:
        config = layer.get_config()
        compute = getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None)
        if compute in _OTHER_FLOATS and "dtype" in config:
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    try:
        keras.config.set_dtype_policy("float32")
        keras.config.set_floatx("float32")
        copy = keras.models.clone_model(model, clone_function=float32_layer, recursive=True)
        copy.set_weights(
            [w.astype("float32") if w.dtype.kind == "f" else w for w in model.get_weights()]
        )
        left = floats(structure.leaf_layers(copy))
    except Exception as exc:  # noqa: BLE001 - a layer of the user's own that does not clone
        logger.warning("the model computes in %s and no float32 copy of it could be made "
                       "(%s): exported as it is", ", ".join(sorted(other)), exc)
        return model
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)
    if left:
        logger.warning("layers of the float32 copy still compute in %s: exported as it is",
                       ", ".join(sorted(left)))
        return model
    logger.info("exporting a float32 copy of the model (it computes in %s)",
                ", ".join(sorted(other)))
    return copy


#: Float dtypes LiteRT's built-in kernels do not compute in.
_OTHER_FLOATS = frozenset({"float16", "bfloat16", "float64"})


def _output_dense(model: Any) -> tuple[Any, str] | tuple[None, str]:
    """The model's output layer and its loss when the head fit applies; else None, why."""
    import keras

    try:
        outputs = model.outputs
        layer = model.layers[-1] if model.layers else None
    except (AttributeError, ValueError):  # a subclassed model has no graph to cut
        return None, "the model has no graph to cut at its output layer"
    if not isinstance(layer, keras.layers.Dense) or len(outputs) != 1:
        return None, "its output is not a single Dense layer"
    if layer.output is not outputs[0] or len(layer.input.shape) != 2:
        return None, "its output Dense is not called once on flat features"
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return None, "its output Dense is quantized or has LoRA weights"
    if layer.dtype_policy.compute_dtype != "float32" or layer.input.dtype != "float32":
        return None, "its output Dense does not compute in float32"
    # Compared by identity: `serialize` of a user's function or `tf.nn.softmax` is a dict.
    activation = layer.activation
    if activation is keras.activations.softmax:
        return layer, "categorical"
    if activation is keras.activations.sigmoid:
        return layer, "binary"
    return None, "its output Dense is not softmax or sigmoid"


def _kernels_rounded(model: Any, calibration: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """GPTQ values for the convolution kernels, as (variable, value) pairs; [] to skip.

    Skipped (the converter rounds to nearest) for fewer than `MIN_HEAD_FIT_IMAGES`
    calibration images, or when the rounding fails.
    """
    if len(calibration) < MIN_HEAD_FIT_IMAGES:
        logger.info(
            "int8 export: kernels rounded to nearest, not by GPTQ: %d calibration images, "
            "fewer than %d",
            len(calibration),
            MIN_HEAD_FIT_IMAGES,
        )
        return []
    try:
        return _gptq.rounded_kernels(model, calibration)
    except Exception as exc:  # noqa: BLE001 - rounding to nearest is still a good export
        logger.warning("int8 export: GPTQ failed (%s); kernels rounded to nearest", exc)
        return []


@dataclass(frozen=True)
class _HeadFit:
    """The output layer to fit, its loss, and the Keras model's outputs to fit it to."""

    dense: Any
    loss_kind: str
    targets: np.ndarray


def _head_fit_targets(model: Any, calibration: np.ndarray) -> _HeadFit | None:
    """The output layer and the float model's outputs on the calibration images.

    None, and the export keeps the converter's output layer, for a model whose output
    layer is not a float32 softmax or sigmoid `Dense`, for fewer than
    `MIN_HEAD_FIT_IMAGES` images, or when the model cannot be run on them.
    """
    dense, loss_or_why = _output_dense(model)
    if dense is None:
        logger.info("int8 export: the output layer is not fitted: %s", loss_or_why)
        return None
    if len(calibration) < MIN_HEAD_FIT_IMAGES:
        logger.info(
            "int8 export: the output layer is not fitted: %d calibration images, fewer than %d",
            len(calibration),
            MIN_HEAD_FIT_IMAGES,
        )
        return None
    try:
        with quiet_retracing():
            targets = np.asarray(model.predict(calibration, verbose=0, batch_size=32), "float32")
    except Exception as exc:  # noqa: BLE001 - the converter's output is still a good export
        logger.warning("int8 export: fitting the output layer failed (%s); not fitted", exc)
        return None
    return _HeadFit(dense, loss_or_why, targets)


def _head_fitted_to_int8(
    model: Any, calibration: np.ndarray, head_fit: _HeadFit
) -> list[tuple[Any, np.ndarray]]:
    """New weights for the output layer, fitted to its int8 inputs, as (variable, value).

    The model up to the output layer is converted to int8 as the export will be,
    and run on the calibration images; the output layer's kernel and bias are then
    fitted so that, on those int8 features, it gives what the Keras model gives (its
    outputs as soft targets, `head_fit.targets`), starting from its own weights and
    pulled back toward them. TensorFlow's converter corrects nothing after
    calibrating, and quantization-aware training is not in Keras 3 for convolutions,
    so this is written here; it costs one more conversion and about a second of
    steps. Returns [], and the export keeps the converter's output, when the fit fails.
    """
    dense = head_fit.dense
    try:
        fitted = _fit_head(model, dense, head_fit.loss_kind, calibration, head_fit.targets)
    except Exception as exc:  # noqa: BLE001 - the converter's output is still a good export
        logger.warning("int8 export: fitting the output layer failed (%s); not fitted", exc)
        return []
    variables = [dense.kernel] + ([dense.bias] if dense.bias is not None else [])
    return list(zip(variables, fitted, strict=True))


def _fit_head(
    model: Any, dense: Any, loss_kind: str, calibration: np.ndarray, targets: np.ndarray
) -> list[Any]:
    import keras

    body = keras.Model(model.inputs, dense.input)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "body.tflite"
        options = _converter_options("int8", calibration)  # as the export converts
        body.export(str(path), format="litert", verbose=False, **options)
        _, run = _litert_runner(path)
        features = np.concatenate(
            [run(calibration[i : i + 32]) for i in range(0, len(calibration), 32)]
        )
    start = [tf.constant(np.asarray(dense.kernel, "float32"))]
    if dense.bias is not None:
        start.append(tf.constant(np.asarray(dense.bias, "float32")))
    weights = [tf.Variable(w) for w in start]
    x = tf.constant(features.reshape(len(features), -1), tf.float32)
    y = tf.constant(targets.reshape(len(targets), -1), tf.float32)
    optimizer = keras.optimizers.Adam(HEAD_FIT_RATE)

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, weights[0]) + (weights[1] if len(weights) > 1 else 0.0)
            if loss_kind == "categorical":
                fit = tf.nn.softmax_cross_entropy_with_logits(y, logits)
            else:
                fit = tf.nn.sigmoid_cross_entropy_with_logits(y, logits)
            pull = sum(
                tf.reduce_sum(tf.square(w - w0)) for w, w0 in zip(weights, start, strict=True)
            )
            loss = tf.reduce_mean(fit) + HEAD_FIT_PENALTY * pull
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        return loss

    for _ in range(HEAD_FIT_STEPS):
        step()
    return [w.numpy() for w in weights]


@contextlib.contextmanager
def _weights_swapped(pairs: list[tuple[Any, Any]]) -> Iterator[None]:
    """Gives each variable its new value while the export converts, then its own.

    The Keras model holds the new weights for as long as the conversion runs: do
    not predict with it from another thread meanwhile.
    """
    own = [variable.numpy() for variable, _ in pairs]
    try:
        for variable, value in pairs:
            variable.assign(value)
        yield
    finally:
        for (variable, _), value in zip(pairs, own, strict=True):
            variable.assign(value)


def _compact_litert(flatbuffer: bytes) -> bytes:
    """The same LiteRT model in fewer bytes: per-channel bookkeeping shared, names trimmed.

    A per-channel quantized tensor stores a float32 scale and an int64 zero point per
    output channel, and its bias another pair. The zero points are all 0 (weights are
    quantized symmetrically), yet TensorFlow's converter writes a new vector of them for
    every tensor; on a small MobileNetV2 they are a sixth of an int8 file. Flatbuffers
    lets tables point at one vector, so each distinct zero-point vector is written once.
    The converter also names a fused tensor by every TF op folded into it
    (`a;b;c`); the first name is kept. Weights, ranges and the graph are untouched: the
    interpreter computes exactly the same outputs (tested).

    TensorFlow has no such pass (its own rewrite, `_deduplicate_readonly_buffers`,
    shares identical weight buffers only), so it is written here, on TensorFlow's
    flatbuffer object API (`tensorflow.lite.tools.flatbuffer_utils`), as that rewrite
    is. Where the rewrite fails or is not smaller, or the model keeps its weights
    outside the flatbuffer (files over 2 GB), the model is returned as it came.
    """
    try:
        return _compacted(flatbuffer)
    except Exception as exc:  # noqa: BLE001 - as TensorFlow's own rewrite, never fail the export
        logger.info("LiteRT file written as converted (not compacted: %s)", exc)
        return flatbuffer


def _compacted(flatbuffer: bytes) -> bytes:
    import flatbuffers
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    if any(meta.name == b"buffer_location" for meta in model.metadata or ()):
        return flatbuffer
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if tensor.name:
                tensor.name = tensor.name.split(b";")[0]

    class SharingBuilder(flatbuffers.Builder):
        """Writes each distinct int64 vector once; aligns byte vectors (weights) to 16."""

        def __init__(self, size: int) -> None:
            super().__init__(size)
            self.written: dict[bytes, int] = {}

        def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 - flatbuffers' name
            if x.dtype == np.int64 and x.ndim == 1:
                key = x.tobytes()
                if key not in self.written:
                    self.written[key] = super().CreateNumpyVector(x)
                return self.written[key]
            if x.dtype == np.uint8 and x.ndim == 1:
                # The schema asks weight buffers to start at 16 bytes (force_align),
                # which the generated Python writer does not do on its own: pad first.
                self.Prep(16, x.size)
            return int(super().CreateNumpyVector(x))

    builder = SharingBuilder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    compact = bytes(builder.Output())
    return compact if len(compact) < len(flatbuffer) else flatbuffer


def _representative(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def samples() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[None].astype("float32")]

    return samples


def _saved_model_folder(destination: Path) -> Path:
    """The folder a SavedModel goes to; a folder holding anything else is refused.

    Writing a SavedModel replaces its folder whole: exported into a project folder, it
    once deleted the model it was exported from and every other file there.
    """
    if not destination.name:  # "." has no name to write beside
        destination = destination.absolute()
    if destination.is_dir():
        present = sorted(p.name for p in destination.iterdir())
        if present and "saved_model.pb" not in present:
            shown = ", ".join(repr(name) for name in present[:3])
            more = f" and {len(present) - 3} more" if len(present) > 3 else ""
            raise OutputPathError(
                f"{str(destination)!r} is a folder that holds other files ({shown}{more}), "
                "and a SavedModel export replaces its whole folder. Export to a new folder, "
                f"e.g. {str(destination / 'saved_model')!r}."
            )
    return destination


def _write_saved_model(classifier: Classifier, destination: Path) -> None:
    with write_beside(destination, folder=True) as temp:
        classifier.model.export(temp, format="tf_saved_model", verbose=False)


def _interpreter_class() -> tuple[str, Any]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return "ai-edge-litert", Interpreter
    except ImportError:
        pass
    interpreter = getattr(getattr(tf, "lite", None), "Interpreter", None)
    if interpreter is None:
        raise missing_extra("Checking a LiteRT export", "ai-edge-litert", "export")
    logger.info("ai-edge-litert is not installed; checking the export with tf.lite.Interpreter")
    return "tf.lite", interpreter


def _litert_runner(path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    name, interpreter_class = _interpreter_class()
    interpreter = interpreter_class(model_path=str(path))
    source = interpreter.get_input_details()[0]
    sink = interpreter.get_output_details()[0]
    shape: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        if list(batch.shape) != shape:
            interpreter.resize_tensor_input(source["index"], list(batch.shape))
            interpreter.allocate_tensors()
            shape[:] = list(batch.shape)
        interpreter.set_tensor(source["index"], batch.astype(source["dtype"]))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(sink["index"]), dtype="float32")

    return name, run


def _saved_model_runner(path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    loaded = tf.saved_model.load(str(path))

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(loaded.serve(tf.constant(batch, tf.float32)), dtype="float32")

    return "tf.saved_model", run
