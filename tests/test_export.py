"""export: LiteRT (float32, float16, int8) and SavedModel, checked against the Keras model."""

from __future__ import annotations

import importlib
import importlib.util

import keras
import numpy as np
import pytest
import tensorflow as tf
from _colors import COLOURS, colour_folder, colour_model, conv_model, pixels

import finetunekit as ftk
from finetunekit.errors import ConfigError, DataError

# The module is finetunekit.exporting; finetunekit.export is its function.
export_module = importlib.import_module("finetunekit.exporting")
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "calibration"
    for i in range(24):
        image = rng.integers(0, 256, size=(32 + i, 40, 3)).astype("uint8")
        folder.mkdir(exist_ok=True)
        (folder / f"{i:02d}.png").write_bytes(tf.io.encode_png(image).numpy())
    return folder


def test_float_litert_agrees_with_keras(tmp_path, images):
    model = colour_model()
    saved = ftk.save_model(model, tmp_path / "m.keras", class_names=COLOURS)
    folder = colour_folder(tmp_path / "check", {"x": ["red", "green", "blue", "red"]})
    report = ftk.export(saved, tmp_path / "out" / "m.tflite", parity_data=folder)
    assert report.path.is_file() and report.size_bytes == report.path.stat().st_size
    assert report.images == 4 and report.top1_agreement == 1.0
    assert report.max_abs_diff < 1e-5
    assert report.runtime == ("ai-edge-litert" if HAS_LITERT else "tf.lite")
    assert "top-1 agreement 100.0%" in str(report)
    # The exported file takes raw pixels as float32, preprocessing inside.
    _, run = export_module._litert_runner(report.path)
    out = run(np.stack([pixels("red"), pixels("blue")]).astype("float32"))
    assert list(np.argmax(out, axis=1)) == [COLOURS.index("red"), COLOURS.index("blue")]


def test_a_mixed_precision_model_is_exported_in_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = colour_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[1].dtype_policy.compute_dtype == "float16"
    saved = ftk.save_model(model, tmp_path / "m.keras", class_names=COLOURS)
    folder = colour_folder(tmp_path / "check", {"x": ["red", "green", "blue", "red"]})
    report = ftk.export(saved, tmp_path / "m.tflite", parity_data=folder)
    assert report.top1_agreement == 1.0 and report.max_abs_diff < 1e-2
    assert b"Flex" not in report.path.read_bytes()  # no op LiteRT's interpreter lacks


def test_quantized_files_are_smaller_and_still_agree(tmp_path, images):
    model = conv_model()
    float32 = ftk.export(model, tmp_path / "f32.tflite", representative_data=images)
    float16 = ftk.export(model, tmp_path / "f16.tflite", quantize="float16", parity_data=images)
    dynamic = ftk.export(model, tmp_path / "dyn.tflite", quantize="dynamic", parity_data=images)
    int8 = ftk.export(model, tmp_path / "i8.tflite", quantize="int8", representative_data=images)
    assert dynamic.size_bytes < 0.5 * float32.size_bytes and dynamic.max_abs_diff < 0.1
    assert float32.max_abs_diff < 1e-4 and float32.top1_agreement == 1.0
    assert float16.size_bytes < 0.7 * float32.size_bytes
    assert int8.size_bytes < 0.5 * float32.size_bytes
    assert float16.max_abs_diff < 1e-2
    assert int8.images == 24 and int8.max_abs_diff < 0.1
    assert int8.quantize == "int8" and "(int8)" in str(int8)
    _, interpreter = export_module._interpreter_class()
    details = interpreter(model_path=str(int8.path)).get_input_details()[0]
    assert details["dtype"] == np.float32  # raw pixels in, as the Keras model takes them


def _outputs(report, batch):
    return export_module._litert_runner(report.path)[1](batch)


@pytest.fixture
def many_images(tmp_path):
    """As many random images as the head fit needs (MIN_HEAD_FIT_IMAGES)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(export_module.MIN_HEAD_FIT_IMAGES):
        image = rng.integers(0, 256, size=(32, 32, 3)).astype("uint8")
        (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
    return folder


def test_int8_fits_the_output_layer_and_leaves_the_keras_model_alone(tmp_path, many_images):
    keras.utils.set_random_seed(0)
    model = conv_model()
    before = [w.copy() for w in model.get_weights()]
    options = dict(quantize="int8", representative_data=many_images)
    options = dict(options, gptq=False)  # the head fit alone
    fitted = ftk.export(model, tmp_path / "f.tflite", fit_head=True, **options)
    plain = ftk.export(model, tmp_path / "p.tflite", fit_head=False, **options)
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)
    assert fitted.head_fitted and not plain.head_fitted
    assert fitted.on_calibration and "which the int8 weights were fitted to" in str(fitted)
    assert "fitted" not in str(plain)
    classifier = export_module.as_classifier(model)
    batch = export_module._images(many_images, classifier, 100, "images")
    expected = model.predict(batch, verbose=0)
    fitted_out, plain_out = _outputs(fitted, batch), _outputs(plain, batch)
    assert not np.array_equal(fitted_out, plain_out)  # the file's head differs
    # ... and its outputs follow the Keras model's more closely on those images.
    assert np.abs(fitted_out - expected).mean() < np.abs(plain_out - expected).mean()
    # Checked on other images, the report says nothing about calibration.
    other = ftk.export(
        model, tmp_path / "o.tflite", parity_data=many_images, fit_head=True, **options
    )
    assert other.head_fitted and not other.on_calibration and "fitted" not in str(other)


def _softmax_layer_model():
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3)(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))


def _tf_softmax_model():
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, activation=tf.nn.softmax)(x))


@pytest.mark.parametrize(
    "build, fitted",
    [
        (lambda: colour_model("binary"), True),  # one sigmoid
        (lambda: colour_model("regression"), False),  # no activation: left alone
        (_softmax_layer_model, False),  # the output is not a Dense
        (_tf_softmax_model, False),  # an activation Keras does not name
    ],
)
def test_which_output_layers_are_fitted(tmp_path, many_images, build, fitted):
    model = build()
    before = [w.copy() for w in model.get_weights()]
    report = ftk.export(
        model, tmp_path / "m.tflite", quantize="int8", representative_data=many_images,
        fit_head=True,
    )
    assert report.head_fitted is fitted and report.max_abs_diff is not None
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)


def test_few_calibration_images_fit_nothing(tmp_path, images):
    report = ftk.export(conv_model(), tmp_path / "m.tflite", quantize="int8",
                        representative_data=images, fit_head=True)
    assert report.images == 24 and not report.head_fitted and report.kernels_rounded == 0
    assert "rounded by GPTQ" not in str(report)
    # Said in the report (it was an INFO line only, hidden by default).
    assert report.notes == (
        "GPTQ and the output-layer fit skipped: 24 calibration images, fewer than 100 (the "
        "converter's rounding is kept); pass 100 or more for them",
    )
    assert f"note: {report.notes[0]}" in str(report)
    bare = ftk.export(conv_model(), tmp_path / "n.tflite", quantize="int8",
                      representative_data=images, gptq=False, fit_head=False)
    assert bare.notes == ()  # nothing asked, nothing skipped


def test_a_failed_fit_keeps_the_converters_output(tmp_path, many_images, monkeypatch):
    def fails(*args):
        raise RuntimeError("no")

    monkeypatch.setattr(export_module, "_fit_head", fails)
    monkeypatch.setattr(export_module._gptq, "rounded_kernels", fails)
    model = conv_model()
    before = [w.copy() for w in model.get_weights()]
    report = ftk.export(
        model, tmp_path / "m.tflite", quantize="int8", representative_data=many_images,
        fit_head=True,
    )
    assert report.path.is_file() and not report.head_fitted and report.kernels_rounded == 0
    assert report.top1_agreement is not None
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)


def test_the_head_is_fitted_to_the_keras_models_own_outputs(tmp_path, many_images, monkeypatch):
    # GPTQ's kernels are in place while the head is fitted, but the targets are what the
    # unchanged Keras model gives: the model the parity check and the user compare with.
    model = conv_model()
    seen = {}

    def far_from_the_model(model, images):
        return [(v, np.zeros(v.shape, "float32")) for v in model.trainable_variables[:1]]

    def fit_head(model, dense, loss_kind, calibration, targets):
        seen["targets"], seen["images"] = targets, calibration
        seen["outputs while fitted"] = model.predict(calibration, verbose=0)
        return [np.asarray(w) for w in dense.weights]

    monkeypatch.setattr(export_module._gptq, "rounded_kernels", far_from_the_model)
    monkeypatch.setattr(export_module, "_fit_head", fit_head)
    ftk.export(model, tmp_path / "m.tflite", quantize="int8", representative_data=many_images)
    expected = model.predict(seen["images"], verbose=0)  # the weights are back
    np.testing.assert_allclose(seen["targets"], expected, atol=1e-6)
    assert np.abs(seen["outputs while fitted"] - expected).max() > 1e-3  # the swap was in


def test_the_parity_check_reuses_the_head_fits_predictions(tmp_path, many_images, monkeypatch):
    # Without parity_data both run on the calibration images: the Keras model predicts
    # them once, and the reference is what it predicts with its own weights.
    model = conv_model()
    calls = []
    predict = model.predict

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return predict(*args, **kwargs)

    monkeypatch.setattr(model, "predict", counted)
    report = ftk.export(
        model, tmp_path / "m.tflite", quantize="int8", representative_data=many_images
    )
    assert report.head_fitted and report.on_calibration
    assert calls == [export_module.MIN_HEAD_FIT_IMAGES]  # one pass, not two
    classifier = export_module.as_classifier(model)
    batch = export_module._images(many_images, classifier, export_module.MAX_IMAGES, "x")
    got = _outputs(report, batch)
    assert report.max_abs_diff == pytest.approx(np.abs(got - predict(batch, verbose=0)).max())
    calls.clear()
    ftk.export(model, tmp_path / "p.tflite", quantize="int8", representative_data=many_images,
               parity_data=many_images)  # fmt: skip
    assert len(calls) == 2  # the head fit's pass, and the parity check's own


def test_a_failed_conversion_restores_the_swapped_weights(tmp_path, many_images, monkeypatch):
    during = {}

    def fails(classifier, *args):
        during.update({v.path: v.numpy().copy() for v in classifier.model.weights})
        raise RuntimeError("the converter failed")

    monkeypatch.setattr(export_module, "_write_litert", fails)
    model = conv_model()
    before = [w.copy() for w in model.get_weights()]
    swapped = []
    rounded_kernels = export_module._gptq.rounded_kernels
    monkeypatch.setattr(
        export_module._gptq,
        "rounded_kernels",
        lambda *a: swapped.extend(rounded_kernels(*a)) or swapped,
    )
    with pytest.raises(RuntimeError, match="the converter failed"):
        ftk.export(model, tmp_path / "m.tflite", quantize="int8", representative_data=many_images)
    assert swapped and any(  # GPTQ did change a kernel, and it was put back
        not np.array_equal(value, variable.numpy()) for variable, value in swapped
    )
    # While converting, both swaps were in: a convolution kernel (GPTQ) and the output
    # layer's kernel (the head fit) differed from the model's own.
    own = {v.path: v.numpy() for v in model.weights}
    changed = {path for path, value in during.items() if not np.array_equal(value, own[path])}
    assert any(path.startswith("conv2d") and path.endswith("kernel") for path in changed)
    assert "head_output/kernel" in changed, changed
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)


@pytest.mark.parametrize("option", ["gptq", "fit_head"])
def test_gptq_and_fit_head_must_be_bools(tmp_path, option):
    with pytest.raises(ConfigError, match=f"{option} must be True or False"):
        ftk.export(colour_model(), tmp_path / "m.tflite", **{option: "yes"})


def _layout(path):
    """Where each weight buffer starts, and each zero-point vector, in a .tflite file."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    starts = []
    for i in range(model.BuffersLength()):
        table = model.Buffers(i)._tab
        if model.Buffers(i).DataLength():
            starts.append(table.Vector(table.Offset(4)))
    zero_points = []
    subgraph = model.Subgraphs(0)
    for i in range(subgraph.TensorsLength()):
        quantization = subgraph.Tensors(i).Quantization()
        if quantization is not None and quantization.ZeroPointLength():
            table = quantization._tab
            zero_points.append(table.Vector(table.Offset(10)))
    return starts, zero_points


def test_litert_files_are_compacted_without_changing_an_output(tmp_path, images, monkeypatch):
    model = conv_model()
    compact = ftk.export(model, tmp_path / "c.tflite", quantize="int8", representative_data=images)
    monkeypatch.setattr(export_module, "_compact_litert", lambda flatbuffer: flatbuffer)
    plain = ftk.export(model, tmp_path / "p.tflite", quantize="int8", representative_data=images)
    assert compact.size_bytes < plain.size_bytes
    batch = export_module._images(images, export_module.as_classifier(model), 24, "images")
    outputs = [export_module._litert_runner(r.path)[1](batch) for r in (compact, plain)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    starts, zero_points = _layout(compact.path)
    assert starts and all(start % 16 == 0 for start in starts)  # the schema's force_align
    _, plain_zero_points = _layout(plain.path)
    # A weight and its bias share one vector of per-channel zero points, at least.
    assert len(zero_points) == len(plain_zero_points)
    assert len(set(zero_points)) < len(set(plain_zero_points))
    _, interpreter = export_module._interpreter_class()
    assert interpreter(model_path=str(compact.path)).get_signature_list() == {
        "serving_default": {"inputs": ["image"], "outputs": ["output_0"]}
    }


def test_a_file_the_rewrite_cannot_read_is_written_as_converted():
    assert export_module._compact_litert(b"not a flatbuffer") == b"not a flatbuffer"


def test_saved_model_export_replaces_an_earlier_export(tmp_path, images):
    model = colour_model()
    target = tmp_path / "served"
    ftk.export(model, target, format="saved_model")
    (target / "assets" / "stale.txt").write_text("of the earlier export")
    report = ftk.export(model, target, format="saved_model", parity_data=images)
    assert report.runtime == "tf.saved_model" and report.max_abs_diff < 1e-5
    assert not (target / "assets" / "stale.txt").exists()
    assert (target / "saved_model.pb").exists() and report.size_bytes > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration", "served"]


def test_saved_model_export_never_replaces_a_folder_of_other_files(tmp_path, monkeypatch):
    # It replaced the folder whole: exported into a project folder, it deleted the
    # .keras model it was exported from and every other file there.
    project = tmp_path / "project"
    project.mkdir()
    source = ftk.save_model(colour_model(), project / "colours.keras")
    (project / "notes.txt").write_text("mine")
    with pytest.raises(ftk.errors.OutputPathError, match="holds other files .'colours.keras'"):
        ftk.export(source, project, format="saved_model")
    monkeypatch.chdir(project)
    with pytest.raises(ftk.errors.OutputPathError, match="replaces its whole folder"):
        ftk.export(source, ".", format="saved_model")
    assert sorted(p.name for p in project.iterdir()) == ["colours.keras", "notes.txt"]
    ftk.export(source, project / "served", format="saved_model")  # the way it names
    assert (project / "served" / "saved_model.pb").exists()
    (tmp_path / "empty").mkdir()
    ftk.export(source, tmp_path / "empty", format="saved_model")  # nothing to lose


def test_without_images_the_parity_check_is_skipped(tmp_path):
    report = ftk.export(colour_model(), tmp_path / "m.tflite")
    assert report.images == 0 and report.max_abs_diff is None
    assert "parity not checked" in str(report)


def test_a_failed_export_leaves_what_was_there(tmp_path, monkeypatch):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous")
    model = colour_model()

    def broken(*args, **kwargs):
        raise RuntimeError("converter failed")

    monkeypatch.setattr(model, "export", broken)
    with pytest.raises(RuntimeError, match="converter failed"):
        ftk.export(model, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(quantize="int8"), "needs representative_data"),
        (dict(format="onnx"), "Unknown export format 'onnx'"),
        (dict(quantize="int4"), "Unknown quantize='int4'"),
        (dict(format="saved_model", quantize="float16"), "applies to format='litert'"),
        (dict(max_images=0), "max_images must be a positive int"),
    ],
)
def test_bad_export_arguments(tmp_path, kwargs, says):
    with pytest.raises(ConfigError, match=says):
        ftk.export(colour_model(), tmp_path / "m.tflite", **kwargs)
    assert not list(tmp_path.iterdir())


def test_bad_export_targets(tmp_path):
    with pytest.raises(ConfigError, match="'.tflite' file"):
        ftk.export(colour_model(), tmp_path / "m.lite")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        ftk.export(colour_model(), tmp_path / "file", format="saved_model")
    with pytest.raises(ftk.errors.WeightsNotFoundError):
        ftk.export(tmp_path / "missing.keras", tmp_path / "m.tflite")


def test_a_folder_is_sampled_across_its_classes_and_a_broken_file_named(tmp_path):
    # The first max_images files were read: those of the first classes only. And a file
    # that does not decode gave TensorFlow's raw InvalidArgumentError.
    from finetunekit.exporting import _images

    folder = colour_folder(tmp_path / "photos", {c: [c] * 4 for c in COLOURS})
    classifier = ftk.Classifier(colour_model(), COLOURS)
    images = _images(folder, classifier, 3, "parity_data")
    brightest = [int(np.argmax(image.mean(axis=(0, 1)))) for image in images]
    assert sorted(brightest) == [0, 1, 2]  # red, green and blue channels: all three
    (folder / "red" / "9_cut.png").write_bytes((folder / "red" / "0_red.png").read_bytes()[:60])
    with pytest.raises(DataError, match="could not be decoded: .*9_cut.png"):
        ftk.export(classifier, tmp_path / "m.tflite", parity_data=folder)
