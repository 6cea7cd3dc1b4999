"""evaluate: per-class scores, confusion matrix, worst predictions; plots and plot_history."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from _colors import COLOURS, colour_folder, colour_model, pixels, write_image

import finetunekit as ftk
from finetunekit import data as ftk_data
from finetunekit.errors import ArgumentTypeError, ConfigError, DataError, MissingExtraError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def folder(tmp_path):
    # One green image is filed under red: the model says green, the folder says red.
    return colour_folder(
        tmp_path / "test",
        {"blue": ["blue", "blue"], "green": ["green", "green"], "red": ["red", "red", "green"]},
    )


@pytest.fixture
def saved(tmp_path):
    return ftk.save_model(colour_model(), tmp_path / "colours.keras", class_names=COLOURS)


def test_a_folder_report_counts_by_hand(saved, folder):
    report = ftk.evaluate(saved, folder)
    assert report.count == 7
    assert report.class_names == COLOURS
    assert report.accuracy == pytest.approx(6 / 7)
    # rows: true blue, green, red; columns: predicted
    np.testing.assert_array_equal(report.confusion, [[2, 0, 0], [0, 2, 0], [0, 1, 2]])
    np.testing.assert_allclose(report.precision, [1, 2 / 3, 1])
    np.testing.assert_allclose(report.recall, [1, 1, 2 / 3])
    np.testing.assert_allclose(report.f1, [1, 0.8, 0.8])
    np.testing.assert_array_equal(report.support, [2, 2, 3])
    assert report.macro_f1 == pytest.approx(13 / 15)
    worst = report.worst[0]
    assert worst.source.endswith("red/2_green.png")
    assert (worst.true, worst.predicted) == ("red", "green")
    # p(red) = exp(-25.5); the loss clips it at 1e-7 as Keras' cross-entropy does.
    assert worst.loss == pytest.approx(-np.log(1e-7), abs=1e-3)
    assert worst.probability < 1e-7
    assert worst.image.shape == (32, 32, 3) and worst.image.dtype == np.uint8
    assert [w.loss for w in report.worst] == sorted((w.loss for w in report.worst), reverse=True)
    assert report.loss == pytest.approx(-np.log(1e-7) / 7, abs=1e-3)


def test_a_keras_loader_dataset_is_scored_on_its_own_images_and_labels(saved, folder):
    # Any dataset with file_paths was read again from its files and labelled by folder:
    # labels given as a list were ignored (0.017 where the model scored 0.983).
    load = keras.utils.image_dataset_from_directory
    as_is = load(folder, image_size=(32, 32), shuffle=False, verbose=False)
    report = ftk.evaluate(saved, as_is)
    assert report.accuracy == pytest.approx(6 / 7)
    np.testing.assert_array_equal(report.confusion, [[2, 0, 0], [0, 2, 0], [0, 1, 2]])
    # The folders' own labels swapped by a labels list: the dataset's labels count.
    files = as_is.file_paths
    swapped = [{"blue": 1, "green": 0, "red": 2}[Path(f).parent.name] for f in files]
    relabelled = load(folder, labels=swapped, image_size=(32, 32), shuffle=False, verbose=False)
    assert ftk.evaluate(saved, relabelled).accuracy == pytest.approx(2 / 7)
    # Class names in another order than the model's: matched by name, one-hot rows too.
    names = ["red", "blue", "green"]
    for mode in ("int", "categorical"):
        reordered = load(folder, image_size=(32, 32), class_names=names, label_mode=mode,
                         shuffle=True, seed=1, verbose=False)
        again = ftk.evaluate(saved, reordered)
        np.testing.assert_array_equal(again.confusion, report.confusion)


def test_the_report_reads_as_a_table(saved, folder):
    text = str(ftk.evaluate(saved, folder))
    assert "accuracy 0.857" in text
    assert "macro F1 0.867" in text
    lines = text.splitlines()
    red = next(line for line in lines if line.startswith("red "))
    assert red.split()[1:5] == ["1.000", "0.667", "0.800", "3"]
    assert red.split()[-3:] == ["0", "1", "2"]  # the confusion row
    assert "2_green.png" in text


def test_a_from_directory_dataset_names_its_files_too(saved, folder):
    train, _, names = ftk_data.from_directory(folder, image_size=32, seed=3)
    report = ftk.evaluate(saved, train)  # shuffled: the files are read again, in order
    np.testing.assert_array_equal(report.confusion, [[2, 0, 0], [0, 2, 0], [0, 1, 2]])
    assert report.worst[0].source.endswith("red/2_green.png")


def test_arrays_and_one_hot_labels(tmp_path):
    model = colour_model()
    x = np.stack([pixels(c) for c in ("red", "green", "blue", "blue")]).astype("float32")
    y = np.array([2, 1, 0, 2])  # the last one is wrong
    report = ftk.evaluate(model, (x, y), class_names=COLOURS)
    assert report.accuracy == 0.75
    assert report.worst[0].source is None and report.worst[0].index == 3
    one_hot = ftk.evaluate(model, (x, np.eye(3)[y]), class_names=COLOURS)
    np.testing.assert_array_equal(one_hot.confusion, report.confusion)
    stream = ftk.evaluate(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(2))
    assert stream.class_names == ("0", "1", "2")  # a plain model: classes by index
    np.testing.assert_array_equal(stream.confusion, report.confusion)
    # Rows of another width were scored by their argmax (0.625 for 2 columns, 3 classes).
    for width in (2, 4):
        with pytest.raises(DataError, match=f"one-hot rows of {width} columns but this model "
                                            "has 3 classes"):
            ftk.evaluate(model, (x, np.eye(width)[y % 2]))


def test_sample_weights_are_refused_in_a_tuple_and_named_in_a_dataset(caplog):
    # A tuple of 3 got "or a tuple (x, y); received tuple"; a dataset's weights went unsaid.
    model = colour_model()
    x = np.stack([pixels(c) for c in ("red", "green", "blue")]).astype("float32")
    y, w = np.array([2, 1, 0]), np.ones(3)
    with pytest.raises(ArgumentTypeError, match=r"read as \(x, y, sample_weight\).*Pass \(x, y\)"):
        ftk.evaluate(model, (x, y, w))
    weighted = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(2)
    with caplog.at_level("WARNING", logger="finetunekit"):
        report = ftk.evaluate(model, weighted)
    assert report.accuracy == 1.0 and "unweighted" in caplog.text


def test_multilabel_scores_per_label():
    model = colour_model("multilabel")
    x = np.stack([pixels(c) for c in ("red", "green", "blue")]).astype("float32")
    y = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 0]])  # image 2 is also labelled red
    report = ftk.evaluate(model, (x, y), class_names=COLOURS)
    assert report.task == "multilabel" and report.confusion is None
    np.testing.assert_allclose(report.precision, [1, 1, 1])
    np.testing.assert_allclose(report.recall, [1, 1, 0.5])
    np.testing.assert_allclose(report.f1, [1, 1, 2 / 3])
    np.testing.assert_array_equal(report.support, [1, 1, 2])
    assert report.accuracy == pytest.approx(8 / 9)
    assert report.worst[0].index == 1
    assert (report.worst[0].true, report.worst[0].predicted) == ("green+red", "green")
    with pytest.raises(ConfigError, match="no confusion matrix"):
        report.plot_confusion("x.png")


def test_binary_and_regression():
    x = np.stack([pixels(c) for c in ("red", "green", "red")]).astype("float32")
    binary = ftk.evaluate(colour_model("binary"), (x, np.array([1, 0, 0])), class_names=["o", "r"])
    np.testing.assert_array_equal(binary.confusion, [[1, 1], [0, 1]])
    assert binary.worst[0].index == 2 and binary.worst[0].predicted == "r"
    targets = np.array([1.0, 0.5, 0.0])
    regression = ftk.evaluate(colour_model("regression"), (x, targets))
    assert regression.accuracy is None and regression.f1 is None
    np.testing.assert_allclose(regression.mae, [0.5], atol=1e-5)
    np.testing.assert_allclose(regression.rmse, [np.sqrt(1.25 / 3)], atol=1e-5)
    assert regression.worst[0].index == 2
    assert "RMSE" in str(regression)


def test_plots_are_pngs(saved, folder, tmp_path):
    report = ftk.evaluate(saved, folder)
    confusion = report.plot_confusion(tmp_path / "plots" / "confusion.png")
    losses = report.plot_top_losses(tmp_path / "plots" / "losses.png", k=4)
    assert confusion.read_bytes()[:8] == PNG and losses.read_bytes()[:8] == PNG
    with pytest.raises(ConfigError, match="k must be a positive int"):
        report.plot_top_losses(tmp_path / "x.png", k=0)


def history(phases):
    h = keras.callbacks.History()
    n = len(phases)
    h.history = {
        "loss": list(np.linspace(1, 0.2, n)),
        "accuracy": list(np.linspace(0.3, 0.9, n)),
        "val_loss": list(np.linspace(1.1, 0.4, n)),
        "val_accuracy": list(np.linspace(0.3, 0.8, n)),
    }
    h.phases = phases
    return h


def test_plot_history_shades_phases_and_marks_unfreezes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    spans, lines = [], []
    monkeypatch.setattr(
        "matplotlib.axes.Axes.axvspan", lambda self, a, b, **k: spans.append((a, b, k["label"]))
    )
    monkeypatch.setattr(
        "matplotlib.axes.Axes.axvline", lambda self, x, **k: lines.append((x, k.get("label")))
    )
    assert Figure  # imported above: matplotlib is there
    phases = ["head"] * 3 + ["stage 1"] * 2 + ["stage 2"] * 2
    path = ftk.plot_history(history(phases), tmp_path / "history.png", title="t")
    assert path.read_bytes()[:8] == PNG
    per_axis = spans[: len(spans) // 2]  # two panels: accuracy, loss
    assert per_axis == [(0.5, 3.5, "head phase"), (3.5, 5.5, "stage 1 phase"),
                        (5.5, 7.5, "stage 2 phase")]  # fmt: skip
    assert [x for x, _ in lines[:2]] == [3.5, 5.5]
    assert lines[0][1] == "unfreeze"


def test_plot_history_takes_a_plain_history_and_an_explicit_phase_list(tmp_path):
    h = history(["a"] * 4)
    del h.phases
    assert ftk.plot_history(h, tmp_path / "one.png").read_bytes()[:8] == PNG
    path = ftk.plot_history(h.history, tmp_path / "two.png", phases=["x", "x", "y", "y"])
    assert path.exists()
    with pytest.raises(ConfigError, match="phases names 3 epochs"):
        ftk.plot_history(h, tmp_path / "bad.png", phases=["x"] * 3)
    with pytest.raises(ConfigError, match="no 'auc'"):
        ftk.plot_history(h, tmp_path / "bad.png", metric="auc")
    with pytest.raises(ConfigError, match="empty"):
        ftk.plot_history({"loss": []}, tmp_path / "bad.png")


def test_without_matplotlib_plots_name_the_extra(tmp_path, monkeypatch, saved, folder):
    report = ftk.evaluate(saved, folder)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    for draw in (
        lambda: report.plot_confusion(tmp_path / "c.png"),
        lambda: ftk.plot_history(history(["head"]), tmp_path / "h.png"),
    ):
        with pytest.raises(MissingExtraError, match=r"pip install 'finetunekit\[plot\]'"):
            draw()
    assert issubclass(MissingExtraError, ImportError)


def test_bad_evaluation_inputs(saved, tmp_path):
    other = colour_folder(tmp_path / "other", {"cats": ["red"], "dogs": ["blue"], "owls": ["red"]})
    with pytest.raises(DataError, match="are not the model's"):
        ftk.evaluate(saved, other)
    with pytest.raises(ftk.errors.DataNotFoundError):
        ftk.evaluate(saved, tmp_path / "nowhere")
    x = np.stack([pixels("red")]).astype("float32")
    with pytest.raises(DataError, match="class indices 0..2"):
        ftk.evaluate(saved, (x, np.array([5])))
    with pytest.raises(ftk.errors.ArgumentTypeError, match="data must be"):
        ftk.evaluate(saved, 42)


def reversed_colour_model() -> keras.Model:
    """colour_model with its outputs in the order red, green, blue (not alphabetical)."""
    model = colour_model()
    kernel, bias = model.get_layer("head_output").get_weights()
    model.get_layer("head_output").set_weights([kernel[:, ::-1], bias[::-1]])
    return model


def test_class_folders_are_matched_to_the_model_classes_by_name(tmp_path, folder):
    # Labels once came from the folders' alphabetical positions: with the model's classes
    # in another order, accuracy read 1/7 where it is 6/7, the confusion matrix reversed.
    names = ("red", "green", "blue")
    given = ftk.evaluate(reversed_colour_model(), folder, class_names=names)
    saved = ftk.save_model(reversed_colour_model(), tmp_path / "r.keras", class_names=names)
    stored = ftk.evaluate(saved, folder)  # once refused, naming class_names= as the fix
    for report in (given, stored):
        assert report.class_names == names
        assert report.accuracy == pytest.approx(6 / 7)
        np.testing.assert_array_equal(report.support, [3, 2, 2])
        np.testing.assert_array_equal(report.confusion, [[2, 1, 0], [0, 2, 0], [0, 0, 2]])
        assert (report.worst[0].true, report.worst[0].predicted) == ("red", "green")
    # A test folder without some class is read by name too.
    some = colour_folder(tmp_path / "some", {"blue": ["blue"], "red": ["red", "green"]})
    partial = ftk.evaluate(saved, some)
    np.testing.assert_array_equal(partial.support, [2, 0, 1])
    assert partial.accuracy == pytest.approx(2 / 3)


def test_folders_that_name_no_class_of_the_model_are_refused(tmp_path, folder):
    with pytest.raises(DataError, match="class_names= must name the folders"):
        ftk.evaluate(colour_model(), folder, class_names=["a", "b", "c"])
    # A model with index names takes the folders' names, as Keras labels them.
    assert ftk.evaluate(colour_model(), folder).class_names == COLOURS
    with pytest.raises(DataError, match="gives each image one class, but a multilabel"):
        ftk.evaluate(colour_model("multilabel"), folder)
    with pytest.raises(DataError, match="a regression model is measured against label rows"):
        ftk.evaluate(colour_model("regression"), folder)


def test_files_all_in_one_class_folder_are_still_labelled_by_it(tmp_path):
    # A small validation split can hold images of one class only: their common folder is
    # then that class folder, and the class must still come from it.
    from finetunekit.evaluation import _class_root, _label_of

    names = ("blue", "red")
    paths = [str(tmp_path / "red" / f"{i}.png") for i in range(3)]
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")
    root = _class_root(paths, names)
    assert root == tmp_path
    assert [_label_of(p, names, root) for p in paths] == [1, 1, 1]


def test_a_regression_of_several_outputs_reports_keras_mean_squared_error():
    # The loss once summed the squared errors over the outputs: 3x Keras' MSE here.
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (10, 8, 8, 3)).astype("float32")
    targets = rng.normal(size=(10, 3)).astype("float32")
    report = ftk.evaluate(model, (x, targets))  # a linear output: a regression
    keras_mse = float(keras.losses.MeanSquaredError()(targets, model.predict(x, verbose=0)))
    assert report.loss == pytest.approx(keras_mse, rel=1e-4)


def test_evaluating_reads_its_batches_without_autotuning(saved, folder, untuned_reads):
    # Deleting an iterator of an autotuned pipeline waits for the tuner's next wake-up
    # (see caching.untuned).
    read = untuned_reads
    assert ftk.evaluate(saved, folder).count == 7
    assert len(read) == 1 and read[0].options().autotune.enabled is False


def test_a_corrupt_file_in_the_folder_is_named(saved, folder):
    (folder / "red" / "zz_broken.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="could not be decoded: .*zz_broken.png"):
        ftk.evaluate(saved, folder)


def test_plot_endings_and_histories_of_validation_or_arrays(tmp_path):
    path = ftk.plot_history({"loss": [1.0, 0.5]}, tmp_path / "no_ending")
    assert path.read_bytes()[:8] == PNG  # a PNG, not matplotlib's "Format 'partial'"
    assert b"<svg" in ftk.plot_history({"loss": [1.0, 0.5]}, tmp_path / "h.svg").read_bytes()
    with pytest.raises(ConfigError, match="name a .png file"):
        ftk.plot_history({"loss": [1.0, 0.5]}, tmp_path / "h.txt")
    assert not (tmp_path / "h.txt").exists()
    only_validation = ftk.plot_history({"val_loss": [1.0, 0.5]}, tmp_path / "val.png")
    assert only_validation.read_bytes()[:8] == PNG
    arrays = {"loss": np.array([1.0, 0.5]), "val_loss": np.array([1.2, 0.7])}
    assert ftk.plot_history(arrays, tmp_path / "arrays.png").read_bytes()[:8] == PNG
    with pytest.raises(ConfigError, match="nothing to plot"):
        ftk.plot_history({"learning_rate": [1e-3, 1e-4]}, tmp_path / "lr.png")


def test_macro_f1_counts_the_classes_in_the_data_or_the_predictions(saved, tmp_path):
    # red is neither in the folder nor predicted: it has no F1 to count (it counted 0)
    lacking = colour_folder(tmp_path / "lacking", {"blue": ["blue"], "green": ["green", "green"]})
    report = ftk.evaluate(saved, lacking)
    np.testing.assert_array_equal(report.predicted_counts, [1, 2, 0])
    assert report.macro_f1 == pytest.approx(1.0)
    # green is predicted but absent: it counts, with F1 0
    wrong = colour_folder(tmp_path / "wrong", {"blue": ["blue"], "red": ["green"]})
    assert ftk.evaluate(saved, wrong).macro_f1 == pytest.approx(1 / 3)


def test_a_corrupt_file_in_a_dataset_s_first_batch_is_our_error(saved, tmp_path):
    import tensorflow as tf

    good = tmp_path / "good.png"
    write_image(good, pixels("red"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(tf.cast(image, "float32"), (8, 8)), label

    ds = tf.data.Dataset.from_tensor_slices(([str(good), str(bad)], [2, 0])).map(decode)
    with pytest.raises(DataError, match="could not be decoded") as info:
        ftk.evaluate(saved, ds.batch(2))
    assert "{{function_node" not in str(info.value)


def test_plot_history_of_validation_metrics_only(tmp_path):
    values = {"val_loss": [1.0, 0.5], "val_accuracy": [0.5, 0.6]}
    assert ftk.plot_history(values, tmp_path / "a.png").read_bytes()[:8] == PNG
    only = ftk.plot_history({"val_accuracy": [0.5, 0.6]}, tmp_path / "b.png", metric="accuracy")
    assert only.read_bytes()[:8] == PNG
