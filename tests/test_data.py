"""finetunekit.data: image folders (each bad-data case), arrays, augmentation."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from _colors import write_image

import finetunekit as ftk
from finetunekit import data
from finetunekit.errors import ConfigError, DataError, DataNotFoundError, FinetuneKitError


def _pixels(seed: int, size: int = 20, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8)


def make_folder(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    seed = 0
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"{i:02d}{suffix}", _pixels(seed))
            seed += 1
    return root


def _all(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


# -- from_directory: the good path -------------------------------------------------------


def test_from_directory_reads_classes_labels_and_sizes(tmp_path):
    root = make_folder(tmp_path / "pics", {"cats": 3, "dogs": 4})
    train, validation, names = data.from_directory(root, image_size=16, batch_size=2, seed=0)
    assert names == ("cats", "dogs")
    assert validation is None
    x, y = _all(train)
    assert x.shape == (7, 16, 16, 3) and x.dtype == np.float32
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 1]
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 1  # raw pixels, not rescaled
    assert train.class_names == ["cats", "dogs"]  # FineTuner infers num_classes from it
    assert len(train.file_paths) == 7


def test_validation_split_is_disjoint_and_seeded(tmp_path):
    root = make_folder(tmp_path, {"a": 5, "b": 5})
    first = data.from_directory(root, image_size=8, validation_split=0.2, seed=3)
    again = data.from_directory(root, image_size=8, validation_split=0.2, seed=3)
    assert first.validation is not None and again.validation is not None
    assert len(first.train.file_paths) == 8 and len(first.validation.file_paths) == 2
    assert not set(first.train.file_paths) & set(first.validation.file_paths)
    assert first.validation.file_paths == again.validation.file_paths


def test_categorical_labels(tmp_path):
    root = make_folder(tmp_path, {"a": 2, "b": 2, "c": 2})
    train, _, _ = data.from_directory(root, image_size=8, label_mode="categorical")
    _, y = _all(train)
    assert y.shape == (6, 3) and (y.sum(axis=1) == 1).all()


def test_image_size_comes_from_the_base_through_input_size(tmp_path):
    root = make_folder(tmp_path, {"a": 2, "b": 2})
    model = keras.Sequential([keras.Input((24, 40, 3)), keras.layers.Conv2D(2, 3)])
    loaded = data.from_directory(root, image_size=ftk.input_size(model))
    assert tuple(loaded.train.element_spec[0].shape[1:]) == (24, 40, 3)

    sized = ftk.FineTuner("mobilenet_v2", input_shape=(48, 48, 3), weights=None)
    assert sized.input_size == (48, 48)
    native = ftk.FineTuner("efficientnet_b1", weights=None)
    resized = data.from_directory(root, image_size=native.input_size)
    assert resized.train.element_spec[0].shape[1:3] == (240, 240)
    assert native.base is None  # read from the registry, nothing loaded
    assert ftk.input_size("mobilenet_v2") == (224, 224)
    assert ftk.input_size("mobilenet_v2", (96, 128, 3)) == (96, 128)


def test_the_data_package_builds_no_models():
    # data turns files and arrays into datasets; which size a model wants is the caller's
    # (ftk.input_size), so nothing in it imports the modules that build or train models.
    import ast

    package = Path(ftk.__file__).parent / "data"
    imported = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    assert len(list(package.glob("*.py"))) >= 5
    for module in ("bases", "heads", "finetuner", "_steps", "training", "caching", "freezing"):
        assert f"finetunekit.{module}" not in imported, sorted(imported)



def test_grayscale_jpeg_and_rgba_png_become_rgb(tmp_path):
    gray = _pixels(1, channels=1)
    rgba = np.concatenate([_pixels(2), np.full((20, 20, 1), 9, np.uint8)], axis=-1)
    write_image(tmp_path / "gray" / "g.jpg", gray)
    write_image(tmp_path / "rgba" / "r.png", rgba)
    train, _, _ = data.from_directory(tmp_path, image_size=20, batch_size=4, seed=0)
    x, y = _all(train)
    assert x.shape == (2, 20, 20, 3)
    g, r = x[y == 0][0], x[y == 1][0]
    assert np.allclose(g[..., 0], g[..., 1]) and np.allclose(g[..., 1], g[..., 2])
    np.testing.assert_allclose(r, rgba[..., :3].astype("float32"))  # alpha dropped, RGB kept


def test_real_flowers_folder(flowers):
    train, validation, names = data.from_directory(
        flowers / "train", image_size=64, validation_split=0.2, seed=0
    )
    assert names == ("daisy", "dandelion", "roses", "sunflowers", "tulips")
    assert validation is not None
    assert len(train.file_paths) + len(validation.file_paths) == 350


# -- from_directory: each bad-data case --------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="No image folder at .*nowhere") as info:
        data.from_directory(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, FinetuneKitError)


def test_a_file_instead_of_a_folder(tmp_path):
    path = write_image(tmp_path / "one.png", _pixels(0))
    with pytest.raises(DataError, match="is a file, not a folder"):
        data.from_directory(path)


def test_empty_folder_has_no_class_folders(tmp_path):
    with pytest.raises(DataError, match="has no class folders \\(nothing to read\\)"):
        data.from_directory(tmp_path)


def test_loose_images_without_class_folders(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", _pixels(i))
    with pytest.raises(DataError, match="no class folders \\(3 images directly in it\\)"):
        data.from_directory(tmp_path)


def test_fewer_than_two_classes(tmp_path):
    make_folder(tmp_path, {"only": 3})
    with pytest.raises(DataError, match="only one class folder \\('only'\\).*at least two"):
        data.from_directory(tmp_path)


def test_class_folder_without_images_is_named(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError) as info:
        data.from_directory(tmp_path)
    message = str(info.value)
    assert "'empty', 'notes'" in message and "hold no images" in message
    assert "readme.txt" in message  # says what it found instead


def test_corrupt_files_are_named(tmp_path):
    make_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "broken.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    good = tf.io.encode_jpeg(_pixels(9)).numpy()
    (tmp_path / "b" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as info:
        data.from_directory(tmp_path, image_size=8)
    message = str(info.value)
    assert "2 image files" in message
    assert "a/broken.jpg" in message and "b/truncated.jpg" in message
    assert "on_bad_image='skip'" in message


def test_a_folder_read_again_is_decoded_again_only_where_a_file_changed(tmp_path, monkeypatch):
    from finetunekit.data import _folders

    make_folder(tmp_path, {"a": 3, "b": 3})
    decoded: list[int] = []
    real = _folders._decoded_shape

    def counting(index, path):
        decoded.append(1)  # runs once per trace of the check's map, i.e. once per check
        return real(index, path)

    monkeypatch.setattr(_folders, "_decoded_shape", counting)
    data.from_directory(tmp_path, image_size=8)
    data.from_directory(tmp_path, image_size=16)  # the same files: not checked again
    assert len(decoded) == 1
    # The same size and another content (a later modification time): checked, and named.
    target = tmp_path / "a" / "00.png"
    size = target.stat().st_size
    target.write_bytes(np.random.default_rng(1).bytes(size))
    with pytest.raises(DataError, match="a/00.png"):
        data.from_directory(tmp_path, image_size=8)
    assert len(decoded) == 2


def test_skip_leaves_corrupt_files_out_with_a_warning(tmp_path, caplog):
    make_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "broken.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        loaded = data.from_directory(
            tmp_path, image_size=8, on_bad_image="skip", validation_split=0.5, seed=1
        )
    assert "broken.png" in caplog.text
    assert loaded.validation is not None
    x_train, _ = _all(loaded.train)
    x_val, _ = _all(loaded.validation)
    assert len(x_train) + len(x_val) == 6  # every readable image, iterated without error
    assert not any("broken" in p for p in loaded.train.file_paths + loaded.validation.file_paths)


def test_skip_that_empties_a_class_still_fails(tmp_path):
    make_folder(tmp_path, {"a": 2})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="'b'.*no images once the unreadable files are left out"):
        data.from_directory(tmp_path, on_bad_image="skip")


def test_split_that_leaves_no_validation_images(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DataError, match="leaves no validation images"):
        data.from_directory(tmp_path, validation_split=0.1)


def test_binary_label_mode_needs_two_classes(tmp_path):
    make_folder(tmp_path, {"a": 1, "b": 1, "c": 1})
    with pytest.raises(DataError, match="exactly 2 class folders"):
        data.from_directory(tmp_path, label_mode="binary")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"on_bad_image": "ignore"}, "on_bad_image must be one of"),
        ({"image_size": (0, 3)}, "image_size must be"),
        ({"label_mode": "sparse"}, "label_mode must be one of"),
        ({"validation_split": 1.5}, "validation_split must be a fraction"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    make_folder(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(ConfigError, match=match):
        data.from_directory(tmp_path, **kwargs)


# -- from_arrays -------------------------------------------------------------------------


def test_from_arrays_checks_labels_against_num_classes(tiny_images):
    x, y = tiny_images
    dataset = data.from_arrays(x, y, batch_size=8, num_classes=3)
    assert sum(len(b[1]) for b in dataset.as_numpy_iterator()) == 24
    with pytest.raises(DataError, match="Label 2 is out of range for 2 classes"):
        data.from_arrays(x, y, num_classes=2)
    with pytest.raises(DataError, match="expects integer class indices"):
        data.from_arrays(x, y - 1, num_classes=3)
    with pytest.raises(DataError, match="one-hot with 3 columns but the model has 4"):
        data.from_arrays(x, np.eye(3)[y], num_classes=4)
    with pytest.raises(DataError, match="at least two classes"):
        data.from_arrays(x, np.zeros_like(y), num_classes=1)


# -- augmentation ------------------------------------------------------------------------


def test_augmentation_changes_training_batches_only():
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    augment = data.augmentation(seed=0)
    assert isinstance(augment, keras.Sequential)
    assert [type(layer).__name__ for layer in augment.layers] == ["FlipRotateZoom"]
    trained = np.asarray(augment(images, training=True))
    assert trained.shape == images.shape
    assert not np.allclose(trained, images)
    assert trained.min() >= -1e-3 and trained.max() <= 255 + 1e-3  # still raw pixels
    np.testing.assert_allclose(np.asarray(augment(images, training=False)), images)


def test_augmentation_runs_in_a_tf_data_pipeline():
    images = np.random.default_rng(1).uniform(0, 255, (6, 24, 24, 3)).astype("float32")
    augment = data.augmentation("strong", seed=1)
    dataset = data.from_arrays(images, np.arange(6) % 2, batch_size=3, shuffle=False)
    mapped = dataset.map(lambda x, y: (augment(x, training=True), y))
    x, _ = _all(mapped)
    assert x.shape == images.shape and not np.allclose(x, images)


def _smooth_images() -> np.ndarray:
    """Two images of slow waves: resampling them once or twice differs little."""
    yy, xx = np.mgrid[0:64, 0:48].astype("float32")
    image = np.stack([np.sin(xx / 7) + np.cos(yy / 9), np.cos(xx / 5 + yy / 11), xx / 48], -1)
    return np.repeat(image[None] * 100 + 128, 2, axis=0)


def test_one_composed_transform_matches_keras_rotation_then_zoom():
    from finetunekit.data._augment import flip_rotate_zoom_transform

    images = _smooth_images()
    turn, zoom = 0.03, -0.07  # Keras' layers with a fixed draw
    chain = keras.Sequential(
        [keras.layers.RandomRotation((turn, turn)), keras.layers.RandomZoom((zoom, zoom))]
    )
    plain = np.asarray(chain(images, training=True))
    mirrored = np.asarray(chain(images[:, :, ::-1], training=True))  # RandomFlip first
    transform = flip_rotate_zoom_transform(
        np.array([1.0, -1.0], "float32"),
        np.full(2, 2 * np.pi * turn, "float32"),
        np.full(2, 1 + zoom, "float32"),
        64,
        48,
    )
    ours = np.asarray(keras.ops.image.affine_transform(images, transform, fill_mode="reflect"))
    inner = (slice(8, -8), slice(8, -8))  # edges: reflected once against twice
    # One bilinear resampling against two: about 1 in the images' range of 400; a wrong
    # centre, direction or order of the maps moves pixels by tens.
    assert np.abs(ours[0][inner] - plain[0][inner]).max() < 2.0
    assert np.abs(ours[1][inner] - mirrored[1][inner]).max() < 2.0


def test_flip_rotate_zoom_draws_per_image_and_saves_with_the_model(tmp_path):
    from finetunekit.data._augment import FlipRotateZoom

    images = np.repeat(_smooth_images()[:1], 16, axis=0)
    out = np.asarray(FlipRotateZoom(seed=0)(images))  # training by default, as Keras' layers
    assert len({round(float(o.sum()), 1) for o in out}) == 16  # a draw per image
    light = np.asarray(data.augmentation("light", seed=0)(images, training=True))
    flipped = [np.allclose(o, images[0, :, ::-1]) for o in light]
    # flipped or not, nothing resampled
    assert all(f or np.allclose(o, images[0]) for f, o in zip(flipped, light, strict=True))
    assert 0 < sum(flipped) < 16
    model = keras.Sequential([keras.Input((64, 48, 3)), data.augmentation("strong", seed=3)])
    model.save(tmp_path / "m.keras")
    layer = keras.models.load_model(tmp_path / "m.keras").layers[0].layers[0]
    assert (type(layer).__name__, layer.rotation, layer.zoom, layer.seed) == (
        "FlipRotateZoom",
        0.1,
        0.2,
        3,
    )
    with pytest.raises(ConfigError, match="zoom one in"):
        FlipRotateZoom(zoom=1.5)


def test_unknown_augmentation_preset():
    with pytest.raises(ConfigError, match="Unknown augmentation preset 'wild'"):
        data.augmentation("wild")


def test_sample_weights_of_one_column_are_one_per_image():
    x = np.zeros((8, 32, 32, 3), "float32")
    y = np.arange(8) % 2
    for weights in (np.ones(8, "float32"), np.ones((8, 1), "float32")):  # Keras squeezes (n, 1)
        data.as_dataset(tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(4))
    with pytest.raises(DataError, match="one number per image"):
        data.as_dataset(tf.data.Dataset.from_tensor_slices((x, y, np.ones((8, 2)))).batch(4))


@pytest.mark.parametrize("shuffle", [True, False])
def test_arrays_with_sample_weights_keep_each_weight_with_its_image(shuffle):
    # (x, y, w), as Keras' validation_data takes; refused as "no labels" before.
    x = np.arange(10, dtype="float32")[:, None, None, None] * np.ones((1, 8, 8, 3), "float32")
    y, w = np.arange(10) % 2, np.arange(10, dtype="float32") / 10
    batches = list(data.as_dataset((x, y, w), batch_size=4, shuffle=shuffle, seed=1))
    rows = np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in batches]).astype(int)
    assert sorted(rows) == list(range(10)) and (rows != np.arange(10)).any() == shuffle
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), y[rows])
    np.testing.assert_allclose(np.concatenate([b[2].numpy() for b in batches]), w[rows])
    as_list = list(data.as_dataset([x, y, w], batch_size=10, shuffle=False))  # a list too
    np.testing.assert_allclose(as_list[0][2].numpy(), w)
    for bad, says in [
        (-w, "negative, NaN or too large"),
        (w.astype("float64") * 1e300 + 1, "too large for float32"),
        (w > 0.5, "received bool values"), (w[:9], r"received shape \(9,\) for 10 images"),
    ]:
        with pytest.raises(DataError, match=f"validation_data: sample weights .*{says}"):
            data.as_dataset((x, y, bad), what="validation_data")


def test_true_false_labels_are_read_as_1_and_0(tiny_images):
    # Refused with "x and y must be numeric ... encode class names as integers".
    x, y = tiny_images
    flags = y % 2 == 1
    batches = data.from_arrays(x, flags, batch_size=64, shuffle=False)
    labels = np.concatenate([b.numpy() for _, b in batches])
    np.testing.assert_array_equal(labels, flags.astype(int))
    rows = np.stack([flags, ~flags], axis=1)
    labels = np.concatenate([b.numpy() for _, b in data.from_arrays(x, rows, shuffle=False)])
    np.testing.assert_array_equal(labels, rows.astype(int))


def test_a_validation_split_that_leaves_a_class_on_one_side_warns(tmp_path, caplog):
    # Keras splits at random: both images of a rare class could land in validation, and
    # fit then trained a model that never saw that class, silently.
    for name, count in (("common", 12), ("rare", 2)):
        for i in range(count):
            write_image(tmp_path / name / f"{i}.png", np.full((8, 8, 3), 10 * i, "uint8"))
    messages = set()
    for seed in range(16):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="finetunekit"):
            split = data.from_directory(tmp_path, image_size=8, validation_split=0.5, seed=seed)
        held = {p.split("/")[-2] for p in split.validation.file_paths}
        trained = {p.split("/")[-2] for p in split.train.file_paths}
        warned = caplog.text
        assert ("holds every image of 'rare'" in warned) == ("rare" not in trained)
        assert ("holds no image of 'rare'" in warned) == ("rare" not in held)
        messages |= {"every"} if "every image" in warned else set()
        messages |= {"no"} if "no image" in warned else set()
    assert {"every", "no"} <= messages  # both cases met among the seeds


def test_numpy_integers_are_batch_sizes_and_a_bad_size_is_echoed_as_given(tiny_images, tmp_path):
    x, y = tiny_images
    assert int(data.from_arrays(x, y, batch_size=np.int64(8)).cardinality()) == 3
    with pytest.raises(DataError, match="batch_size must be a positive int; received True"):
        data.from_arrays(x, y, batch_size=True)
    write_image(tmp_path / "a" / "0.png", np.zeros((8, 8, 3), "uint8"))
    write_image(tmp_path / "b" / "0.png", np.zeros((8, 8, 3), "uint8"))
    with pytest.raises(ConfigError, match=r"or 160; received 0\.$"):
        data.from_directory(tmp_path, image_size=0)


def test_hidden_images_of_every_class_are_counted(tmp_path):
    # Only the first class's hidden files were counted ("3 image files are hidden" of 6).
    for name in ("a", "b"):
        for i in range(3):
            write_image(tmp_path / name / f"{i}.png", np.zeros((8, 8, 3), "uint8"))
            write_image(tmp_path / name / f"._{i}.png", np.zeros((8, 8, 3), "uint8"))
    with pytest.raises(DataError, match=r"^6 image files in .* are hidden .*macOS"):
        data.from_directory(tmp_path, image_size=8)


def test_flip_rotate_zoom_refuses_what_is_not_an_amount():
    with pytest.raises(ConfigError, match="rotation must be a number"):
        data.FlipRotateZoom(rotation=(-0.1, 0.1))
    with pytest.raises(ConfigError, match="rotation must be a number"):
        data.FlipRotateZoom(zoom="0.1")


def test_skipped_files_leave_a_dataset_of_known_length(tmp_path):
    make_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "broken.png").write_bytes(b"")
    loaded = data.from_directory(tmp_path, image_size=8, batch_size=4, on_bad_image="skip")
    assert int(loaded.train.cardinality()) == 2  # 6 images in batches of 4; not unknown
    assert sum(len(y) for _, y in loaded.train) == 6


def test_a_function_or_a_dict_is_named_as_such():
    def batches():
        yield np.zeros((2, 8, 8, 3)), np.zeros(2)

    with pytest.raises(DataError, match="received a function .batches., not data"):
        data.as_dataset(batches)
    with pytest.raises(DataError, match="received a dict"):
        data.as_dataset({"x": np.zeros((2, 8, 8, 3)), "y": np.zeros(2)})
