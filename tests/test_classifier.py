"""save_model / load / Classifier.predict: class names travel inside the .keras file."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from _colors import COLOURS, colour_folder, colour_model, pixels, write_image

import finetunekit as ftk
from finetunekit import classifier as clf
from finetunekit.errors import ArgumentTypeError, ConfigError, DataError, DataNotFoundError


@pytest.fixture
def saved(tmp_path):
    return ftk.save_model(
        colour_model(), tmp_path / "colours.keras", class_names=COLOURS, base="shapes_cnn",
        recipe={"head_epochs": 3},
    )  # fmt: skip


def test_the_file_holds_the_class_names_beside_keras_own_entries(saved):
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
    assert {"config.json", "metadata.json", "model.weights.h5", clf.INFO_ENTRY} <= set(names)
    info = clf.read_info(saved)
    assert info is not None
    assert info.class_names == COLOURS
    assert (info.task, info.base, info.input_size) == ("multiclass", "shapes_cnn", (32, 32))
    assert info.recipe == {"head_epochs": 3}
    assert info.finetunekit_version == ftk.__version__


def test_plain_keras_loads_the_file_without_finetunekit(saved):
    script = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({str(saved)!r})\n"
        "out = m.predict(np.zeros((1, 32, 32, 3)) + [255, 0, 0], verbose=0)\n"
        "assert 'finetunekit' not in sys.modules, 'finetunekit was imported'\n"
        "print(int(out.argmax()))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(COLOURS.index("red"))


def test_load_returns_a_classifier_that_names_its_classes(saved):
    classifier = ftk.load(saved)
    assert isinstance(classifier, ftk.Classifier)
    assert isinstance(classifier.model, keras.Model)
    assert classifier.class_names == COLOURS
    assert classifier.input_size == (32, 32)
    assert classifier.task == "multiclass"
    assert "red" in repr(classifier)


def test_predict_on_a_folder_of_any_size_grayscale_and_rgba(saved, tmp_path):
    folder = tmp_path / "photos"
    write_image(folder / "a_red.png", pixels("red", 50, 70))
    write_image(folder / "nested" / "b_blue.jpg", pixels("blue", 20, 20))
    rgba = np.concatenate([pixels("green", 40, 30), np.full((40, 30, 1), 7, "uint8")], -1)
    write_image(folder / "c_green_rgba.png", rgba)
    write_image(folder / "d_gray.png", np.full((16, 16, 1), 200, "uint8"))
    (folder / "notes.txt").write_text("not an image")
    predictions = ftk.load(saved).predict(folder, top=3)
    assert [os.path.basename(p.source) for p in predictions] == [
        "a_red.png", "c_green_rgba.png", "d_gray.png", "b_blue.jpg",
    ]  # fmt: skip
    labels = {os.path.basename(p.source): p.label for p in predictions}
    assert labels["a_red.png"] == "red"
    assert labels["c_green_rgba.png"] == "green"  # the alpha channel is dropped
    assert labels["b_blue.jpg"] == "blue"
    gray = next(p for p in predictions if p.source.endswith("d_gray.png"))
    assert [s for _, s in gray.top] == pytest.approx([1 / 3] * 3, abs=1e-5)  # R = G = B
    for row in predictions:
        assert len(row.top) == 3
        assert sum(s for _, s in row.top) == pytest.approx(1.0, abs=1e-5)
        assert [s for _, s in row.top] == sorted((s for _, s in row.top), reverse=True)


def test_folder_predictions_equal_the_model_on_keras_loader_images(saved, tmp_path):
    folder = colour_folder(tmp_path / "data", {"a": ["red", "blue"], "b": ["green", "red"]})
    # A model whose output depends on every pixel, so resizing differences would show.
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(4)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    got = ftk.Classifier(model, task="regression").predict(folder).outputs
    loaded = keras.utils.image_dataset_from_directory(
        folder, image_size=(32, 32), shuffle=False, batch_size=None, verbose=False
    )
    images = np.stack([x for x, _ in loaded.as_numpy_iterator()])
    np.testing.assert_allclose(got, model.predict(images, verbose=0), rtol=1e-5, atol=1e-4)


def test_predict_on_files_and_arrays(saved, tmp_path):
    classifier = ftk.load(saved)
    red = write_image(tmp_path / "r.png", pixels("red"))
    blue = write_image(tmp_path / "b.png", pixels("blue", 10, 90))
    assert [p.label for p in classifier.predict([red, str(blue)])] == ["red", "blue"]
    assert classifier.predict(red)[0].source == str(red)
    one = classifier.predict(pixels("green", 64, 48))  # one array, another size
    assert one[0].label == "green" and one[0].source is None
    batch = np.stack([pixels("blue"), pixels("red")])
    assert [p.label for p in classifier.predict(batch, top=2)] == ["blue", "red"]
    mixed = classifier.predict([pixels("red", 10, 10), pixels("green", 50, 20)])
    assert [p.label for p in mixed] == ["red", "green"]


def test_predictions_table_and_csv(saved, tmp_path, monkeypatch):
    folder = colour_folder(tmp_path / "p", {"x": ["red", "green"]})
    predictions = ftk.load(saved).predict(folder, top=2)
    text = str(predictions)
    assert "0_red.png" in text and "red 1.000" in text
    written = predictions.to_csv(tmp_path / "out" / "predictions.csv")
    rows = list(csv.reader(written.open()))
    assert rows[0] == ["image", "class_1", "p_1", "class_2", "p_2"]
    assert rows[1][0].endswith("0_red.png") and rows[1][1] == "red"
    assert float(rows[1][2]) == pytest.approx(1.0, abs=1e-6)
    assert rows[2][1] == "green"
    # A write stopped half-way (Ctrl-C after the header) keeps the old file whole.
    before = written.read_bytes()
    calls, real = [], csv.writer

    class Stopping:
        def __init__(self, handle):
            self.inner = real(handle)

        def writerow(self, row):
            calls.append(row)
            if len(calls) > 1:
                raise KeyboardInterrupt
            self.inner.writerow(row)

    monkeypatch.setattr(csv, "writer", Stopping)
    with pytest.raises(KeyboardInterrupt):
        predictions.to_csv(written)
    assert len(calls) == 2 and written.read_bytes() == before
    assert sorted(p.name for p in written.parent.iterdir()) == ["predictions.csv"]


def test_binary_multilabel_and_regression_predictions(tmp_path):
    binary = ftk.Classifier(colour_model("binary"), ["other", "red"])
    rows = binary.predict(np.stack([pixels("red"), pixels("blue")]), top=2)
    assert [r.label for r in rows] == ["red", "other"]
    assert rows[0].top[1][0] == "other"
    assert binary.task == "binary"
    multilabel = ftk.Classifier(colour_model("multilabel"), COLOURS)
    assert multilabel.task == "multilabel"
    assert multilabel.predict(pixels("green"))[0].label == "green"
    regression = ftk.Classifier(colour_model("regression"))
    assert regression.class_names == ("output_0",)
    assert regression.predict(pixels("red"))[0].score == pytest.approx(1.0, abs=1e-5)
    # A regression's CSV has a column per output, not 'class_1,p_1' pairs of names.
    written = regression.predict(np.stack([pixels("red"), pixels("blue")])).to_csv(
        tmp_path / "values.csv"
    )
    rows = list(csv.reader(written.open()))
    assert rows[0] == ["image", "output_0"] and len(rows) == 3
    assert float(rows[1][1]) == pytest.approx(1.0, abs=1e-5)


def test_multilabel_rows_name_every_label_at_or_above_the_threshold(tmp_path):
    # predict gave the most probable label alone, even at p = 0.38, while evaluate counted
    # labels at 0.5: now `labels` holds the labels present, by a threshold of one's own.
    model = ftk.Classifier(colour_model("multilabel"), COLOURS)
    yellow = pixels("red") + pixels("green")
    half_green = np.zeros((32, 32, 3), "uint8")
    half_green[..., 1] = 127  # 0.1 * 127 - 12.7 = 0: p = 0.5
    rows = model.predict(np.stack([yellow, np.zeros_like(yellow), half_green]), top=3)
    assert [r.labels for r in rows] == [("green", "red"), (), ("green",)]
    assert rows[1].score < 1e-5  # the most probable label is still there, absent
    assert model.predict(half_green, threshold=0.6)[0].labels == ()
    text = str(rows)
    assert "green+red  (" in text and "(none)  (" in text
    csv = rows.to_csv(tmp_path / "p.csv").read_text()
    assert csv.splitlines()[0].startswith("image,labels,class_1,p_1")
    assert csv.splitlines()[1].split(",")[1] == "green+red"
    with pytest.raises(ftk.errors.ConfigError, match="threshold must be a probability"):
        model.predict(yellow, threshold=1.5)
    single = ftk.Classifier(colour_model(), COLOURS).predict(yellow)
    assert single[0].labels == (single[0].label,)
    assert str(single).splitlines()[1] == f"(array)  {single[0].label} {single[0].score:.3f}"


def test_a_plain_keras_file_loads_with_index_names(tmp_path):
    path = tmp_path / "plain.keras"
    colour_model().save(path)
    assert clf.read_info(path) is None
    classifier = ftk.load(path)
    assert classifier.class_names == ("0", "1", "2")
    assert classifier.predict(pixels("red"))[0].label == "2"


def test_a_failed_save_leaves_the_old_file_and_no_temporary_files(saved, monkeypatch):
    before = saved.read_bytes()
    model = colour_model()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        ftk.save_model(model, saved, class_names=COLOURS)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


def test_save_model_checks_its_arguments(tmp_path):
    model = colour_model()
    with pytest.raises(ConfigError, match="has 3 outputs"):
        ftk.save_model(model, tmp_path / "m.keras", class_names=["a", "b"])
    with pytest.raises(ConfigError, match="needs 2"):
        ftk.save_model(colour_model("binary"), tmp_path / "m.keras", class_names=["a"])
    with pytest.raises(ConfigError, match="different"):
        ftk.save_model(model, tmp_path / "m.keras", class_names=["a", "a", "b"])
    with pytest.raises(ConfigError, match="'.keras'") as refused:
        ftk.save_model(model, tmp_path / "m.h5")
    assert repr(str(tmp_path / "m.keras")) in str(refused.value)
    with pytest.raises(ArgumentTypeError, match="keras.Model"):
        ftk.save_model("model", tmp_path / "m.keras")
    with pytest.raises(ConfigError, match="JSON"):
        ftk.save_model(model, tmp_path / "m.keras", recipe={"optimizer": object()})
    assert not list(tmp_path.iterdir())


def test_a_folder_given_to_save_model_is_told_a_file_inside_it(tmp_path):
    # Before, the hint named a file beside the folder ('<folder>.keras').
    folder = tmp_path / "out"
    folder.mkdir()
    for path in (folder, f"{tmp_path}/new/"):
        with pytest.raises(ConfigError, match="a folder") as refused:
            ftk.save_model(colour_model(), path)
        assert repr(str(Path(path) / "model.keras")) in str(refused.value)


def test_bad_inputs_to_load_and_predict(saved, tmp_path):
    with pytest.raises(ftk.errors.WeightsNotFoundError, match="No saved model"):
        ftk.load(tmp_path / "missing.keras")
    (tmp_path / "text.keras").write_text("not a model")
    with pytest.raises(ConfigError, match="not a Keras"):
        ftk.load(tmp_path / "text.keras")
    classifier = ftk.load(saved)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        classifier.predict(tmp_path / "empty")
    with pytest.raises(DataNotFoundError, match="No image or folder"):
        classifier.predict(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="top must be a positive int"):
        classifier.predict(pixels("red"), top=0)
    with pytest.raises(DataError, match="channels"):
        classifier.predict(np.zeros((2, 8, 8, 2)))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        classifier.predict(tmp_path / "bad")


def test_loading_and_predicting_again_and_again_raises_no_retracing_warning(
    saved, tmp_path, monkeypatch
):
    """Each loaded model traces its own predict step once, by design; TensorFlow counts
    traces by the code they come from (Keras' predict step), so it used to warn."""
    import logging

    from tensorflow.python.eager.polymorphic_function import polymorphic_function as tf_function

    folder = colour_folder(tmp_path / "images", {c: [c] for c in COLOURS})
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retracing" in record.getMessage():
                records.append(record)

    def warnings_from(calls) -> int:
        # TensorFlow warns twice per traced code at most in a process: start afresh.
        monkeypatch.setattr(
            tf_function,
            "_frequent_tracing_detector_manager",
            tf_function._FrequentTracingDetectorManager(),
        )
        records.clear()
        handler = Keep()
        logging.getLogger("tensorflow").addHandler(handler)
        try:
            for _ in range(8):
                calls()
        finally:
            logging.getLogger("tensorflow").removeHandler(handler)
        return len(records)

    images = np.stack([pixels("red"), pixels("blue")]).astype("float32")
    # The control: plain Keras, a model loaded and predicting 8 times, warns.
    assert warnings_from(lambda: keras.models.load_model(saved).predict(images, verbose=0)) > 0

    def ours() -> None:
        assert [row.label for row in ftk.load(saved).predict(folder)] == list(COLOURS)
        assert ftk.evaluate(saved, folder).accuracy == 1.0
        ftk.export(saved, tmp_path / "m.tflite", parity_data=folder)

    assert warnings_from(ours) == 0


def _pooled_model(activation=None, softmax_layer=False):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(3, activation=activation)(x)
    if softmax_layer:
        outputs = keras.layers.Softmax()(outputs)
    return keras.Model(inputs, outputs)


def test_a_classifier_that_outputs_logits_is_refused_not_taken_for_a_regression(tmp_path):
    # Taken for a regression, it "predicted" the first class for every image.
    logits = _pooled_model()
    ftk.compile_for(logits, task="multiclass")  # linear output: from_logits=True
    with pytest.raises(ftk.errors.ConfigError, match="outputs logits"):
        ftk.save_model(logits, tmp_path / "m.keras", class_names=["a", "b", "c"])
    with pytest.raises(ftk.errors.ConfigError, match="Softmax"):
        ftk.Classifier(logits, ["a", "b", "c"], task="multiclass")
    assert ftk.Classifier(logits, task="regression").task == "regression"  # said so: values
    # A model ending in a Softmax layer (not an activation argument) is a classifier.
    assert ftk.Classifier(_pooled_model(softmax_layer=True)).task == "multiclass"
    assert ftk.Classifier(_pooled_model()).task == "regression"  # uncompiled linear: values


def test_a_model_with_a_lambda_is_warned_of_at_save_and_named_at_load(tmp_path, caplog) -> None:
    # The load said to save with model.save or save_model: how it had been saved.
    inputs = keras.Input((8, 8, 3))
    scaled = keras.layers.Lambda(lambda t: t / 255.0, name="scale")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(scaled)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    path = tmp_path / "lambda.keras"
    with caplog.at_level("WARNING", logger="finetunekit"):
        ftk.save_model(model, path)
    assert "Lambda layers (scale)" in caplog.text
    with pytest.raises(ftk.errors.ConfigError, match="holds a Lambda layer") as caught:
        ftk.load(path)
    assert "enable_unsafe_deserialization()" in str(caught.value)
    assert "Save it with" not in str(caught.value)


def test_predicting_reads_its_batches_without_autotuning(saved, tmp_path, untuned_reads):
    # Deleting an iterator of an autotuned pipeline waits for the tuner's next wake-up
    # (see caching.untuned); predict makes one iterator per call.
    read = untuned_reads
    red = write_image(tmp_path / "r.png", pixels("red"))
    assert ftk.load(saved).predict([red])[0].label == "red"
    assert len(read) == 1 and read[0].options().autotune.enabled is False


def test_a_list_of_paths_and_arrays_is_refused_as_such(tmp_path):
    classifier = ftk.Classifier(colour_model(), COLOURS)
    with pytest.raises(ArgumentTypeError, match="mixes file paths and arrays"):
        classifier.predict(["a.png", np.zeros((8, 8, 3), "uint8")])
