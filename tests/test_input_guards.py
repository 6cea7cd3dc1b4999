"""Silent wrong input is refused: pixels, labels in full, endless data, class lists, NaN loss."""

from __future__ import annotations

import logging
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from _colors import COLOURS, colour_model, pixels, write_image

import finetunekit as ftk
from finetunekit import bases, data, training
from finetunekit._nan import RaiseOnNaN
from finetunekit.errors import ConfigError, DataError, TrainingDivergedError

TINY = dict(weights=None, input_shape=(32, 32, 3), alpha=0.35)
FAST = dict(head_epochs=1, finetune_epochs=0, verbose=0)


def tuner(**kwargs):
    return ftk.FineTuner("mobilenet_v2", **{"num_classes": 3, **TINY, **kwargs})


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(160, 32, 32, 3)).astype("float32")
    return x, np.arange(160) % 3


def batches(x, y, size=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(size)


# -- pixels ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, says",
    [
        (lambda x: x / 255, "within [0, 1]"),
        (lambda x: x / 127.5 - 1, "negative"),
        (lambda x: keras.applications.mobilenet_v2.preprocess_input(x.copy()), "negative"),
    ],
)
def test_preprocessed_pixels_are_refused_before_training(images, scale, says):
    x, y = images
    with pytest.raises(DataError, match=re.escape(says)) as caught:
        tuner().fit(batches(scale(x), y), **FAST)
    assert "raw 0-255 pixels" in str(caught.value) and "x * 255" in str(caught.value)


def test_16_bit_pixels_are_refused_for_a_model_that_takes_raw_pixels(images, caplog):
    # uint16 photos trained to 0.39 test accuracy on the flowers (0.78 as uint8) after a
    # log line only.
    x, y = images
    wide = (x * 257).astype("uint16")
    with pytest.raises(DataError, match=r"beyond 255 \(16-bit images\?\).*x / 257"):
        tuner().fit(wide, y, **FAST)
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        data.check_pixels(wide[:4], "x", raw=False)  # a model of one's own: a warning
        data.check_pixels(np.full((2, 4, 4, 3), 260.0), "x")  # a bicubic overshoot
    assert caplog.text.count("beyond 255") == 2


def test_all_black_and_raw_images_pass_the_pixel_check():
    data.check_pixels(np.zeros((4, 8, 8, 3)), "x")
    data.check_pixels(np.full((4, 8, 8, 3), 255.0), "x")


def test_a_model_of_the_users_own_gets_a_warning_not_an_error(images, caplog):
    x, y = images
    inputs = keras.Input((32, 32, 3))
    own = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))  # no finetunekit preprocessing
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        ftk.FineTuner(own, num_classes=3).fit(x[:24] / 255, y[:24], **FAST)
    assert "within [0, 1]" in caplog.text


def test_predict_and_evaluate_check_pixels_too():
    classifier = ftk.Classifier(colour_model(), COLOURS)
    classifier.info = ftk.classifier.ModelInfo(COLOURS, "multiclass", "mobilenet_v2", None)
    with pytest.raises(DataError, match="within \\[0, 1\\]"):
        classifier.predict(pixels("red") / 255)
    with pytest.raises(DataError, match="negative"):
        ftk.evaluate(classifier, (pixels("red")[None] / 127.5 - 1, np.array([0])))
    assert classifier.predict(pixels("red"))[0].label  # raw pixels pass


def test_nan_pixels_past_the_first_batch_are_named(images):
    x, y = images
    x = x.copy()
    x[150, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN or infinite pixel values"):
        tuner(cache=False).fit(batches(x, y), validation_split=0, **FAST)


# -- labels -----------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["auto", False])
def test_a_bad_label_at_index_150_of_a_dataset_is_a_data_error(images, cache):
    x, y = images
    y = y.copy()
    y[150] = 7
    with pytest.raises(DataError, match="labels from 0 to 7") as caught:
        tuner(cache=cache).fit(batches(x, y), **FAST)
    assert "class indices 0..2" in str(caught.value)


def test_array_labels_are_checked_in_full_before_anything_trains(images, monkeypatch):
    x, y = images
    y = y.copy()
    y[150] = 7
    monkeypatch.setattr(training, "run_phases", lambda *a, **k: pytest.fail("training began"))
    with pytest.raises(DataError, match="Label 7 is out of range for 3 classes"):
        tuner().fit(x, y, **FAST)


def test_label_2_in_a_binary_dataset_is_refused(images):
    x, _ = images
    y = np.arange(160) % 2
    y[150] = 2
    with pytest.raises(DataError, match="task='binary'"):
        ftk.FineTuner("mobilenet_v2", task="binary", **TINY).fit(batches(x, y), **FAST)


def test_nan_regression_targets_are_refused(images):
    x, _ = images
    targets = np.ones(160)
    targets[150] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        ftk.FineTuner("mobilenet_v2", task="regression", **TINY).fit(x, targets, **FAST)


# -- datasets ---------------------------------------------------------------------------


def test_an_infinite_dataset_is_refused_instead_of_hanging(images):
    x, y = images
    with pytest.raises(DataError, match="infinite") as caught:
        tuner().fit(batches(x, y).repeat(), **FAST)
    assert "Remove .repeat()" in str(caught.value)


def test_a_repeat_hidden_by_a_filter_is_refused_and_an_unknown_length_warned(images, caplog):
    x, y = images
    endless = batches(x, y).repeat().filter(lambda images, labels: True)
    assert int(endless.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    with pytest.raises(DataError, match="infinite"):
        tuner().fit(endless, **FAST)
    ended = batches(x, y).repeat().filter(lambda images, labels: True).take(3)
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        tuner().fit(ended, **FAST)  # finite, length unknown: trains, with a word
    assert "cannot tell how many batches" in caplog.text


def test_a_keras_py_dataset_trains_and_a_generator_is_refused(images):
    x, y = images

    class Batches(keras.utils.PyDataset):
        epochs_ended = 0

        def __len__(self):
            return 4

        def __getitem__(self, index):
            return x[index * 8 : (index + 1) * 8], y[index * 8 : (index + 1) * 8]

        def on_epoch_end(self):
            Batches.epochs_ended += 1

    history = tuner().fit(Batches(), **FAST)
    assert history.reports[0].cached and Batches.epochs_ended >= 1
    with pytest.raises(DataError, match="read only once") as caught:
        tuner().fit(((x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)), **FAST)
    assert "from_generator" in str(caught.value)


def test_a_py_dataset_with_workers_is_read_by_that_many_threads_in_order(images):
    import threading
    import time

    x, y = images
    readers: set[str] = set()

    class Slow(keras.utils.PyDataset):
        epochs_began = 0

        def __len__(self):
            return 8

        def __getitem__(self, index):
            readers.add(threading.current_thread().name)
            time.sleep(0.02 * (index % 3))  # later batches may be ready first
            return x[index * 4 : (index + 1) * 4], np.full(4, index)

        def on_epoch_begin(self):
            Slow.epochs_began += 1

    dataset = data.as_dataset(Slow(workers=3, max_queue_size=2))
    readers.clear()  # the first batch, read once for its shapes
    for _ in range(2):  # every pass reads all batches, in order
        labels = [int(batch_labels[0]) for _, batch_labels in dataset]
        assert labels == list(range(8))
    assert Slow.epochs_began == 2
    assert len(readers) == 3 and all(r.startswith("finetunekit-pydataset") for r in readers)
    readers.clear()
    reads = []
    Slow.__getitem__, read = (  # type: ignore[method-assign]
        lambda self, index: reads.append(index) or read(self, index),
        Slow.__getitem__,
    )
    first = next(iter(data.as_dataset(Slow(workers=np.int64(2), max_queue_size=10))))
    time.sleep(0.2)  # the reads that taking the first batch started, ended
    assert int(first[1][0]) == 0
    # The shapes' read, then a window that opens at 2 reads (numpy's int counts) and
    # grows by one per batch taken: not all 11 of max(workers, max_queue_size) + 1.
    assert 3 <= len(reads) <= 6, reads
    Slow.__getitem__ = read  # type: ignore[method-assign]
    assert data._arrays._count(None) == data._arrays._count(0) == data._arrays._count("4") == 1
    readers.clear()
    one = data.as_dataset(Slow())  # workers=1: read in the caller's thread
    assert [int(b[0]) for _, b in one] == list(range(8))
    assert not any(r.startswith("finetunekit-pydataset") for r in readers)


def _grey_and_colour(x, y, grey, batch=True):
    """Images decoded with each one's own channels (a grey or an RGB PNG), batched or not."""
    def image(i):
        return np.asarray(x[i][..., :1] if grey(i) else x[i], "float32")

    dataset = tf.data.Dataset.from_generator(
        lambda: ((image(i), y[i]) for i in range(32)),
        output_signature=(tf.TensorSpec((32, 32, None)), tf.TensorSpec((), tf.int64)),
    )
    return dataset.batch(8) if batch else dataset


def test_images_of_open_channels_become_rgb_and_a_mixed_batch_names_the_fix(images):
    x, y = images
    tuner().fit(_grey_and_colour(x, y, lambda i: True), **FAST)  # all grey: converted
    mixed = _grey_and_colour(x, y, lambda i: i % 2 == 0, batch=False)
    tuner().fit(mixed, **FAST)  # unbatched: each image converted before batching
    with pytest.raises(DataError, match="differ in size or channels") as caught:
        tuner().fit(_grey_and_colour(x, y, lambda i: i % 2 == 0), **FAST)
    assert "channels=3" in str(caught.value)


@pytest.mark.parametrize("channels", [1, 4])
def test_a_base_of_other_channels_gets_images_of_its_channels(images, channels, tmp_path):
    inputs = keras.Input((32, 32, channels))
    hidden = keras.layers.Conv2D(8, 3, name="g1_conv")(inputs)
    hidden = keras.layers.BatchNormalization(name="g1_bn")(hidden)
    base = keras.Model(inputs, keras.layers.Conv2D(8, 3, name="g2_conv")(hidden))
    x, y = images
    own = x[:40, ..., :1] if channels == 1 else np.concatenate([x[:40], x[:40, ..., :1]], -1)
    tuned = ftk.FineTuner(base, num_classes=3, weights=None)
    tuned.fit(own, y[:40], head_epochs=1, finetune_epochs=1, unfreeze=1, verbose=0)
    classifier = ftk.Classifier(tuned.model, ["a", "b", "c"])
    assert classifier.channels == channels
    assert len(classifier.predict(own[:3])) == 3
    if channels == 1:  # RGB into a grey model: its luminance
        tuned.fit(x[:40], y[:40], head_epochs=1, finetune_epochs=0, verbose=0)
        assert ftk.evaluate(tuned.model, (x[:40], y[:40])).accuracy >= 0.0
        # a grey base saved to a file: its channels read before it is loaded
        base.save(tmp_path / "grey.keras")
        from_file = ftk.FineTuner(str(tmp_path / "grey.keras"), num_classes=3, weights=None)
        from_file.fit(x[:40], y[:40], head_epochs=1, finetune_epochs=0, verbose=0)
        assert from_file.model.input_shape[-1] == 1
    else:
        with pytest.raises(DataError, match="must have 4 channels"):
            tuned.fit(x[:40], y[:40], head_epochs=1, finetune_epochs=0, verbose=0)


def test_validation_data_of_other_classes_is_refused(images):
    x, y = images
    train, validation = batches(x, y), batches(x, y % 2)
    train.class_names = ["daisy", "roses", "tulips"]
    validation.class_names = ["daisy", "tulips"]
    with pytest.raises(DataError, match="other classes") as caught:
        tuner().fit(train, validation_data=validation, **FAST)
    assert "missing from validation: ['roses']" in str(caught.value)


def test_unbatched_images_of_mixed_sizes_name_the_fix():
    sizes = [32] * 5 + [40]
    dataset = tf.data.Dataset.from_generator(
        lambda: ((np.full((s, s, 3), 100.0, "float32"), i % 3) for i, s in enumerate(sizes)),
        output_signature=(tf.TensorSpec((None, None, 3)), tf.TensorSpec((), tf.int64)),
    )
    with pytest.raises(DataError, match="different sizes") as caught:
        tuner().fit(dataset, **FAST)
    assert "tf.image.resize" in str(caught.value)


def open_size(x, y, size=8):
    """Batches whose image size the dataset leaves open, as a decoder in a py_function."""
    def decode(images):
        images = tf.py_function(lambda t: t, [images], tf.float32)
        return tf.ensure_shape(images, (None, None, None, 3))

    return batches(x, y, size).map(lambda images, labels: (decode(images), labels))


def test_class_names_come_from_validation_data_when_training_data_lost_them(images):
    # Keras' idiom train.cache().prefetch(...) drops class_names: the model was saved
    # with classes "0", "1", "2" and evaluate then matched folders alphabetically.
    x, y = images
    validation = batches(x[:24], y[:24])
    validation.class_names = ["tulips", "daisy", "roses"]
    tuner_ = tuner()
    tuner_.fit(batches(x, y).prefetch(1), validation_data=validation, **FAST)
    assert tuner_.class_names == ("tulips", "daisy", "roses")


def test_validation_data_reading_training_files_is_warned(tmp_path, caplog):
    # Two validation_split subsets drawn with different seeds shared 51 of 70 files:
    # best validation accuracy 0.84 against 0.69 honestly, without a word.
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        for i in range(6):
            image = rng.uniform(0, 255, (32, 32, 3)).astype("uint8")
            (tmp_path / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    load = keras.utils.image_dataset_from_directory
    train = load(tmp_path, image_size=(32, 32), batch_size=8, verbose=False)
    half = load(tmp_path, image_size=(32, 32), batch_size=8, validation_split=0.5,
                subset="validation", seed=1, verbose=False)
    shared = len(set(train.file_paths) & set(half.file_paths))
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        tuner().fit(train, validation_data=half, **FAST)
    assert f"shares {shared} of its 9 files with the training data" in caplog.text
    caplog.clear()
    train, apart = load(tmp_path, image_size=(32, 32), batch_size=8, validation_split=0.5,
                        subset="both", seed=1, verbose=False)
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        tuner().fit(train, validation_data=apart, **FAST)
    assert "shares" not in caplog.text


def test_a_split_that_changes_between_passes_is_named() -> None:
    # cache=False with augmentation mapped into the dataset: the content split's count,
    # asserted on the next pass, failed with TensorFlow's FailedPreconditionError.
    changing = tf.data.Dataset.range(2).apply(tf.data.experimental.assert_cardinality(3))
    with pytest.raises(DataError, match="other images on another pass"):
        with data._guards.data_errors():
            list(changing)


def test_images_of_open_size_are_checked_and_built_at_their_size(images):
    # The size check was skipped: a 32 px tuner trained on 48 px images, and without
    # input_shape the base was built at 224 px, then the cached fine-tune phase failed
    # with Keras' raw ValueError after the head had trained (and its history was lost).
    x, y = images
    big = np.repeat(np.repeat(x[:16], 3, axis=1), 3, axis=2)[:, :48, :48]
    with pytest.raises(DataError, match="48x48 pixels but the model takes 32x32"):
        tuner().fit(open_size(big, y[:16]), **FAST)
    bare = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, alpha=0.35)
    history = bare.fit(open_size(x[:48], y[:48]), head_epochs=1, finetune_epochs=1, verbose=0)
    assert bare.base.input_shape[1:3] == (32, 32)
    assert [report.cached for report in history.reports] == [True, True]
    assert len(history.history["loss"]) == 2


def test_a_base_of_open_size_still_takes_batches_of_several_sizes(images):
    # Held to the first batch's size, multi-size batches were refused for a base that
    # takes any size (they trained before).
    x, y = images
    big = np.repeat(np.repeat(x[:8], 2, axis=1), 2, axis=2)  # 64 px
    several = open_size(x[:16], y[:16]).concatenate(open_size(big, y[:8]))
    any_size = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, alpha=0.35,
                             input_shape=(None, None, 3), cache=False)
    history = any_size.fit(several, head_epochs=1, finetune_epochs=0, verbose=0,
                           early_stopping=False)
    assert len(history.history["loss"]) == 1


def test_images_of_open_size_that_change_size_are_named(images):
    x, y = images
    small = open_size(x[:16], y[:16])
    other = open_size(x[:8, :24, :24], y[:8])
    with pytest.raises(DataError, match=r"images of 24x24 pixels, another size than the first"):
        tuner(cache=False).fit(small.concatenate(other), **FAST)


def test_a_class_of_one_image_left_out_of_the_validation_split_is_warned(caplog):
    labels = np.array([0, 0, 1, 1, 2])
    held = np.array([True, False, True, False, False])
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        data.warn_lost_classes(labels, held, "multiclass")
    assert "leaves class [2] out of the validation images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        data.warn_lost_classes(labels, ~held, "multiclass")
    assert "holds out every image of class [2]: the model never trains on it" in caplog.text
    data.warn_lost_classes(np.eye(3)[labels], np.array([1, 0, 1, 0, 1], bool), "multiclass")


@pytest.mark.parametrize("cache", ["auto", False])
def test_the_content_split_warns_when_a_class_lands_on_one_side(images, cache, caplog):
    x, y = images
    y = y.copy()
    y[:] = np.arange(160) % 2
    y[0] = 2  # a class of one image
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        tuner(cache=cache).fit(x, y, **FAST)
    assert "class [2]" in caplog.text


def test_hidden_folders_in_class_folders_are_refused_and_never_predicted_on(tmp_path):
    for name in ("red", "green"):
        write_image(tmp_path / name / "a.png", pixels(name))
        write_image(tmp_path / name / "b.png", pixels(name))
    write_image(tmp_path / "red" / ".ipynb_checkpoints" / "a-checkpoint.png", pixels("red"))
    with pytest.raises(DataError, match="hidden") as caught:
        data.from_directory(tmp_path, image_size=32)
    assert "rm -r" in str(caught.value) and ".ipynb_checkpoints" in str(caught.value)
    files = ftk.classifier.image_files(tmp_path)
    assert len(files) == 4 and not any(".ipynb" in f for f in files)


# -- NaN loss -----------------------------------------------------------------------------


def test_a_diverging_fit_stops_at_the_first_nan_loss_with_an_error(images):
    x, _ = images
    regression = ftk.FineTuner("mobilenet_v2", task="regression", **TINY)
    with pytest.raises(TrainingDivergedError, match="loss became inf") as caught:
        regression.fit(x[:24], np.full(24, 1e30), **FAST)
    assert "in epoch 1 of the head phase" in str(caught.value)
    assert "lower the learning rate" in str(caught.value)
    assert isinstance(caught.value, ArithmeticError)


def test_the_nan_callback_names_a_float16_policy(monkeypatch):
    monkeypatch.setattr(keras.config, "dtype_policy", lambda: keras.DTypePolicy("mixed_float16"))
    callback = RaiseOnNaN("finetune", 1e-5)
    callback.on_batch_end(0, {"loss": 1.0})
    with pytest.raises(TrainingDivergedError, match="'mixed_float16': float16 overflows"):
        callback.on_batch_end(3, {"loss": float("nan")})


# -- the base -------------------------------------------------------------------------------


def test_a_tuner_on_another_tuners_model_leaves_that_model_alone(images):
    x, y = images
    first = tuner()
    first.load_base().freeze().add_head()
    before = [w.copy() for w in first.model.get_weights()]
    second = ftk.FineTuner(first.model, num_classes=3)
    second.fit(x[:24], y[:24], head_epochs=1, finetune_epochs=1, verbose=0)
    assert second.base is not first.base
    after = first.model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_unfreeze_is_checked_against_the_base_before_any_image_is_read(monkeypatch):
    monkeypatch.setattr(data, "prepare", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match="n=1000 but the base"):
        tuner().fit(np.zeros((4, 32, 32, 3)), np.arange(4) % 3, unfreeze=1000)


def test_a_folder_named_like_a_base_does_not_hijack_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mobilenet_v2").mkdir()
    assert not bases._looks_like_path("mobilenet_v2")
    assert bases._looks_like_path("./mobilenet_v2") or bases._looks_like_path("mobilenet_v2/")
    assert ftk.load_base("mobilenet_v2", **TINY).name.startswith("mobilenetv2")


def test_a_cut_short_file_in_the_keras_cache_is_named(tmp_path, monkeypatch):
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    (tmp_path / "models").mkdir()
    good = tmp_path / "w.weights.h5"
    ftk.load_base("mobilenet_v2", **TINY).save_weights(good)
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    (tmp_path / "models" / name).write_bytes(good.read_bytes()[:3000])
    with pytest.raises(ftk.errors.WeightsUnavailableError, match="cut short") as caught:
        ftk.load_base("mobilenet_v2", alpha=0.35, input_shape=(96, 96, 3))
    assert name in str(caught.value) and "Delete the file" in str(caught.value)
    assert "unknown URL" not in str(caught.value)


@pytest.mark.parametrize("kind", ["truncated", "folder", "renamed"])
def test_unreadable_weights_files_name_the_real_cause(tmp_path, kind):
    base = ftk.load_base("mobilenet_v2", **TINY)
    if kind == "truncated":
        base.save_weights(tmp_path / "w.weights.h5")
        path = tmp_path / "w.h5"
        path.write_bytes((tmp_path / "w.weights.h5").read_bytes()[:5000])
        says = "is cut short"
    elif kind == "folder":
        path = tmp_path / "w.h5"
        path.mkdir()
        says = "is a folder"
    else:
        base.save(tmp_path / "m.keras")
        path = tmp_path / "m.h5"
        path.write_bytes((tmp_path / "m.keras").read_bytes())
        says = "is a Keras '.keras' archive named '.h5'"
    with pytest.raises(ConfigError, match=says) as caught:
        ftk.load_base("mobilenet_v2", **{**TINY, "weights": path})
    assert "do not fit" not in str(caught.value)


def test_a_truncated_keras_file_is_not_reported_missing(tmp_path):
    ftk.load_base("mobilenet_v2", **TINY).save(tmp_path / "m.keras")
    cut = tmp_path / "cut.keras"
    cut.write_bytes((tmp_path / "m.keras").read_bytes()[:2000])
    with pytest.raises(ConfigError, match="not a complete '.keras' archive") as caught:
        ftk.load_base(cut)
    assert "File not found" not in str(caught.value)


def test_bad_validation_labels_are_said_of_the_validation_data():
    x = np.random.default_rng(0).uniform(0, 255, (12, 32, 32, 3)).astype("float32")
    y = np.arange(12) % 3
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    with pytest.raises(DataError, match="validation_data: Label 5 .*classes of the training"):
        tuner.fit(x, y, validation_data=(x[:6], y[:6] + 3), head_epochs=1, finetune_epochs=0)


def test_keras_rgba_loading_of_jpegs_is_our_error(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"c{i % 2}" / f"{i}.jpg", pixels("red"))
    ds = keras.utils.image_dataset_from_directory(
        tmp_path, image_size=(32, 32), color_mode="rgba", batch_size=2, verbose=False
    )
    tuner = ftk.FineTuner("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    with pytest.raises(DataError, match="color_mode='rgb'"):
        tuner.fit(ds, head_epochs=1, finetune_epochs=0, verbose=0)
