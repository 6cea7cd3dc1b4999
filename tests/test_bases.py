"""load_base and the registry: names, weights (ImageNet cache, download failure, paths, saved
models), constructor arguments, and the preprocessing carried inside the model."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import finetunekit as ftk
from finetunekit import bases, structure
from finetunekit.errors import (
    ConfigError,
    ModelStructureError,
    UnknownBaseError,
    WeightsMismatchError,
    WeightsNotFoundError,
    WeightsUnavailableError,
)

SMALL = (32, 32, 3)
TINY = dict(weights=None, input_shape=SMALL, alpha=0.35)
V2_FILE_96 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
OFFLINE_MESSAGE = (
    "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
    f"mobilenet_v2/{V2_FILE_96}: None -- [Errno -3] Temporary failure in name resolution"
)


def raw_images(n: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype("float32")


def run(model, x) -> np.ndarray:
    """The model's output in inference mode (eager: cheaper than predict for a few images)."""
    return np.asarray(model(x, training=False))


def scale_of(values) -> float:
    return float(np.abs(np.asarray(values)).max())


def assert_close(actual, expected, rtol: float = 1e-4) -> None:
    """Equal up to float32 round-off, relative to the scale of the values (random-init
    bases can output values of 1e-10)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert scale_of(expected) > 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale_of(expected))


def assert_differ(a, b, rtol: float = 1e-2) -> None:
    """Clearly different (shows that a comparison with assert_close can fail)."""
    assert scale_of(np.asarray(a) - np.asarray(b)) > rtol * scale_of(b)


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """Points Keras' cache ($KERAS_HOME) at an empty temporary folder."""
    from keras.src.backend import config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    (tmp_path / "models").mkdir()
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the way Keras reports it offline."""
    import urllib.error

    from keras.src.utils import file_utils

    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(file_utils, "urlretrieve", refuse)


# -- the registry ---------------------------------------------------------------------------

REQUIRED_FAMILIES = [
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    *[f"efficientnet_b{i}" for i in range(8)],
    *[f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")],
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50_v2",
    "resnet101_v2",
    "resnet152_v2",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    "densenet121",
    "densenet169",
    "densenet201",
    "inception_v3",
    "inception_resnet_v2",
    "xception",
    "vgg16",
    "vgg19",
]


def test_channels_first_keras_is_named():
    keras.config.set_image_data_format("channels_first")
    try:
        with pytest.raises(ConfigError, match="set_image_data_format\\('channels_last'\\)"):
            ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    finally:
        keras.config.set_image_data_format("channels_last")


def test_registry_holds_every_required_family():
    assert set(REQUIRED_FAMILIES) <= set(ftk.list_bases())


def test_every_registered_constructor_and_preprocess_input_exist():
    for name, spec in bases.REGISTRY.items():
        assert callable(getattr(keras.applications, spec.constructor, None)), name
        module = importlib.import_module(f"keras.applications.{spec.module}")
        assert callable(module.preprocess_input), name
        assert spec.preprocessing in ("tf", "caffe", "torch", "none"), name
        assert spec.min_size <= spec.default_size, name


def test_forgiving_names_do_not_collide():
    keys = {bases._normalize(name) for name in bases.REGISTRY}
    assert len(keys) == len(bases.REGISTRY)


SPELLINGS = [
    ("mobilenet_v2", "mobilenet_v2"),
    ("MobileNetV2", "mobilenet_v2"),
    ("mobilenet-v2", "mobilenet_v2"),
    ("MOBILENET_V2", "mobilenet_v2"),
    ("EfficientNetV2-B0", "efficientnet_v2_b0"),
    ("efficientnetb3", "efficientnet_b3"),
    ("ResNet50V2", "resnet50_v2"),
    ("resnet-50", "resnet50"),
    ("InceptionResNetV2", "inception_resnet_v2"),
    ("ConvNeXt-Tiny", "convnext_tiny"),
    ("MobileNetV3Small", "mobilenet_v3_small"),
]


def test_names_are_forgiving_about_case_dash_and_underscore():
    for spelling, canonical in SPELLINGS:
        assert bases.get_spec(spelling).name == canonical, spelling


GLOBS = [
    ("mobilenet*", ["mobilenet", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]),
    (
        "efficientnet_v2*",
        [f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "l", "m", "s")],
    ),
    (
        "EfficientNetV2-*",
        [f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "l", "m", "s")],
    ),
    ("resnet*v2", ["resnet101_v2", "resnet152_v2", "resnet50_v2"]),
    ("vgg1?", ["vgg16", "vgg19"]),
    ("densenet*", ["densenet121", "densenet169", "densenet201"]),
    ("nothing_like_this*", []),
]


def test_list_bases_glob():
    for pattern, expected in GLOBS:
        assert ftk.list_bases(pattern) == expected, pattern


def test_list_bases_without_pattern_is_everything_sorted():
    names = ftk.list_bases()
    assert names == sorted(bases.REGISTRY)
    assert ftk.list_bases("*") == names


SUGGESTIONS = [
    ("mobilenet_v5", "'mobilenet_v2'"),
    ("resnet5", "'resnet50'"),
    ("efficientnet_b9", "'efficientnet_b"),
    ("inceptionv4", "'inception_v3'"),
]


def test_unknown_name_suggests_the_closest_names():
    for name, suggestion in SUGGESTIONS:
        with pytest.raises(UnknownBaseError, match="Did you mean") as info:
            ftk.load_base(name, weights=None)
        assert isinstance(info.value, ValueError)
        assert suggestion in str(info.value), name
        assert repr(name) in str(info.value)


def test_unknown_name_without_close_match_points_to_list_bases():
    with pytest.raises(UnknownBaseError, match="list_bases"):
        ftk.load_base("zzzzzz", weights=None)


# -- constructor arguments and families -----------------------------------------------------


def test_kwargs_reach_the_keras_constructor_and_names_are_forgiving():
    small = ftk.load_base("MobileNetV2", weights=None, input_shape=SMALL, alpha=0.35)
    wide = ftk.load_base("mobilenet-v2", weights=None, input_shape=SMALL, alpha=0.5)
    # Parameter counts of MobileNetV2 without top (data README: 410,208 and 706,224).
    assert small.count_params() == 410_208
    assert wide.count_params() == 706_224


def test_default_input_shape_is_the_family_native_size():
    base = ftk.load_base("mobilenet_v2", weights=None, alpha=0.35)
    assert base.input_shape == (None, 224, 224, 3)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


# A sample of the families (the smallest members, at their smallest size) built without weights.
FAMILY_SAMPLE = [
    ("mobilenet", 32, "tf"),
    ("mobilenet_v3_large", 32, "none"),
    ("efficientnet_v2_b0", 32, "none"),
    ("resnet50_v2", 32, "tf"),
    ("convnext_tiny", 32, "none"),
    ("inception_v3", 75, "tf"),
]


@pytest.mark.parametrize(("name", "size", "mode"), FAMILY_SAMPLE)
def test_family_builds_without_weights_at_its_smallest_size(name, size, mode):
    base = ftk.load_base(name, weights=None, input_shape=(size, size, 3))
    assert base.input_shape == (None, size, size, 3)
    assert len(base.output_shape) == 4  # feature maps, no top
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in _all_layers(base))
    prep = [layer for layer in base.layers if structure.is_preprocessing(layer)]
    assert bases.get_spec(name).preprocessing == mode
    assert (mode != "none") == bool(prep)
    assert structure.find_base(base) is base
    out = run(base, raw_images(1, size).astype("uint8"))
    assert np.isfinite(out).all()


# -- ImageNet weights: cache, download failure ------------------------------------------------


def test_imagenet_from_keras_cache_works_offline(weights_035, keras_home, no_network):
    shutil.copy(weights_035, keras_home / "models" / weights_035.name)
    cached = ftk.load_base("mobilenet_v2", alpha=0.35, input_shape=(224, 224, 3))
    from_path = ftk.load_base(
        "mobilenet_v2", weights=weights_035, alpha=0.35, input_shape=(224, 224, 3)
    )
    for a, b in zip(cached.weights, from_path.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # And it is exactly Keras' own model with the family's preprocess_input in front.
    reference = keras.applications.MobileNetV2(
        include_top=False, weights=str(weights_035), alpha=0.35, input_shape=(224, 224, 3)
    )
    x = raw_images(2, 224)
    prep = keras.applications.mobilenet_v2.preprocess_input(x.copy())
    assert_close(run(cached, x), run(reference, prep))


def test_download_failure_names_file_cache_folder_and_weights_path(keras_home, monkeypatch):
    from keras.src.utils import file_utils

    def offline(fname, origin=None, *args, **kwargs):
        raise Exception(OFFLINE_MESSAGE)

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        ftk.load_base("mobilenet_v2", alpha=0.35, input_shape=(96, 96, 3))
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert V2_FILE_96 in message
    assert str(keras_home / "models") in message
    assert "weights=PATH" in message
    assert "weights=None" in message


def test_real_keras_download_path_offline_is_reported(keras_home, no_network):
    """The same, going through Keras' own get_file (its urlretrieve refuses to connect)."""
    with pytest.raises(WeightsUnavailableError) as info:
        ftk.load_base("mobilenet_v2", alpha=0.35, input_shape=(96, 96, 3))
    assert V2_FILE_96 in str(info.value)
    assert str(keras_home / "models") in str(info.value)
    assert not (keras_home / "models" / V2_FILE_96).exists()  # no half-written file left


def test_imagenet_efficientnet_matches_keras_own_model(keras_home, monkeypatch, tmp_path):
    """EfficientNet adds a layer only when weights == "imagenet": the base must have it too.

    Keras is given a stand-in for its ImageNet file (random weights with the ImageNet
    normalization statistics) through a patched download.
    """
    from keras.src.utils import file_utils

    donor = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=SMALL)
    norm = next(layer for layer in donor.layers if isinstance(layer, keras.layers.Normalization))
    mean = np.array([0.485, 0.456, 0.406], "float32")
    var = np.array([0.229, 0.224, 0.225], "float32") ** 2
    norm.set_weights([mean, var, np.array(0, "int64")][: len(norm.get_weights())])
    stand_in = tmp_path / "stand_in.weights.h5"
    donor.save_weights(str(stand_in))
    monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: str(stand_in))

    ours = ftk.load_base("efficientnet_b0", input_shape=SMALL)
    reference = keras.applications.EfficientNetB0(include_top=False, input_shape=SMALL)
    x = raw_images(2)
    prep = keras.applications.efficientnet.preprocess_input(x.copy())
    assert_close(run(ours, x), run(reference, prep))
    # Without that layer (the weights=None graph) the output is clearly different.
    assert_differ(run(donor, prep), run(reference, prep))


# -- weights from a path -----------------------------------------------------------------------


def test_weights_path_h5_at_another_input_size(weights_035):
    base = ftk.load_base(  # a str here; the cache test passes a Path
        "mobilenet_v2", weights=str(weights_035), alpha=0.35, input_shape=(96, 96, 3)
    )
    reference = keras.applications.MobileNetV2(
        include_top=False, weights=str(weights_035), alpha=0.35, input_shape=(96, 96, 3)
    )
    x = raw_images(2, 96)
    prep = keras.applications.mobilenet_v2.preprocess_input(x.copy())
    assert_close(run(base, x), run(reference, prep))


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "weights.h5"
    with pytest.raises(WeightsNotFoundError, match="No weights file") as info:
        ftk.load_base("mobilenet_v2", weights=missing, alpha=0.35, input_shape=SMALL)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value)


def test_mismatched_weights_file_alpha(weights_035):
    half = weights_035.with_name(weights_035.name.replace("_0.35_", "_0.5_"))
    if not half.exists():
        pytest.skip(f"{half} not found")
    with pytest.raises(WeightsMismatchError, match="do not fit") as info:
        ftk.load_base("mobilenet_v2", weights=half, alpha=0.35, input_shape=SMALL)
    assert isinstance(info.value, ValueError)
    assert "alpha" in str(info.value)


@pytest.fixture(scope="module")
def saved_full_model(tmp_path_factory):
    """A full model (base + head) saved as .keras, and its base."""
    tmp_path = tmp_path_factory.mktemp("saved")
    base = ftk.load_base("mobilenet_v2", **TINY)
    rng = np.random.default_rng(1)
    for variable in base.weights:  # recognisable weights, not the initializers'
        low = 0.5 if "variance" in variable.path else -0.5
        variable.assign(rng.uniform(low, 1.5, size=variable.shape).astype("float32"))
    model = ftk.add_head(base, num_classes=3)
    path = tmp_path / "full.keras"
    model.save(path)
    return path, base, model


def test_weights_from_a_saved_keras_model(saved_full_model):
    path, original, _ = saved_full_model
    base = ftk.load_base("mobilenet_v2", weights=str(path), alpha=0.35, input_shape=SMALL)
    assert len(structure.weighted_layers(base)) == len(structure.weighted_layers(original))
    for a, b in zip(original.weights, base.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_from_a_saved_keras_model_of_another_alpha(saved_full_model):
    path, _, _ = saved_full_model
    with pytest.raises(WeightsMismatchError, match="do not fit"):
        ftk.load_base("mobilenet_v2", weights=path, alpha=0.5, input_shape=SMALL)


def test_saved_keras_path_as_base_gives_its_base(saved_full_model):
    path, original, _ = saved_full_model
    base = ftk.load_base(path)
    assert not any(layer.name.startswith("head_") for layer in base.layers)
    x = raw_images(2)
    assert_close(run(base, x), run(original, x), rtol=1e-6)


def test_own_functional_model_is_returned_unchanged():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="mine")(inputs)
    model = keras.Model(inputs, x)
    before = [w.numpy().copy() for w in model.weights]
    assert ftk.load_base(model) is model
    assert ftk.load_base(model, weights=None) is model
    for a, b in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())


def test_own_sequential_model_is_returned_unchanged():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    assert ftk.load_base(model) is model


def test_own_model_with_weights_path_gets_those_weights(tmp_path):
    def make():
        inputs = keras.Input((8, 8, 3))
        return keras.Model(inputs, keras.layers.Conv2D(4, 3, name="mine")(inputs))

    donor = make()
    path = tmp_path / "donor.weights.h5"
    donor.save_weights(path)
    target = make()
    assert ftk.load_base(target, weights=path) is target
    np.testing.assert_array_equal(target.weights[0].numpy(), donor.weights[0].numpy())


# -- preprocessing inside the model -----------------------------------------------------------

# (name, keras constructor, module, mode): every preprocessing mode in use.
MODES = [
    ("mobilenet_v2", "MobileNetV2", "mobilenet_v2", "tf", {"alpha": 0.35}),
    ("vgg16", "VGG16", "vgg16", "caffe", {}),
    ("densenet121", "DenseNet121", "densenet", "torch", {}),
    ("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", "none", {}),
]


@pytest.fixture(scope="module", params=MODES, ids=[m[3] + "-" + m[0] for m in MODES])
def pair(request):
    """Our base and Keras' own model holding the same weights."""
    name, constructor, module, mode, kwargs = request.param
    keras.utils.set_random_seed(0)
    ours = ftk.load_base(name, weights=None, input_shape=SMALL, **kwargs)
    reference = getattr(keras.applications, constructor)(
        include_top=False, weights=None, input_shape=SMALL, **kwargs
    )
    bases.copy_weights(ours, reference, "test")
    preprocess = importlib.import_module(f"keras.applications.{module}").preprocess_input
    return ours, reference, preprocess, mode


def test_base_on_raw_pixels_equals_keras_model_on_preprocess_input(pair):
    ours, reference, preprocess, mode = pair
    x = raw_images(3)
    expected = run(reference, preprocess(x.copy()))
    assert_close(run(ours, x), expected)
    if mode != "none":  # preprocessing changes the output: the comparison above can fail
        assert_differ(run(reference, x), expected)


def test_preprocessing_layers_equal_preprocess_input(pair):
    ours, _, preprocess, mode = pair
    x = raw_images(3)
    prep_layers = [layer for layer in ours.layers if structure.is_preprocessing(layer)]
    if mode == "none":
        assert prep_layers == []
        np.testing.assert_array_equal(preprocess(x.copy()), x)  # nothing to do by hand
        return
    assert [layer.name for layer in prep_layers] == [f"ftk_preprocess_{mode}"]
    assert ours.layers[1] is prep_layers[0]  # straight after the input
    front = keras.Model(ours.input, prep_layers[-1].output)
    assert_close(run(front, x), preprocess(x.copy()), rtol=1e-5)


def test_no_lambda_and_preprocessing_survives_save_and_reload(pair, tmp_path):
    ours, _, preprocess, mode = pair
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in _all_layers(ours))
    # The whole base round-trips in test_base_save_reload; here, cheaply, every mode's layers.
    front = keras.Model(ours.input, ours.layers[1].output)
    front.save(tmp_path / "front.keras")
    reloaded = keras.models.load_model(tmp_path / "front.keras")
    x = raw_images(2)
    assert_close(run(reloaded, x), run(front, x), rtol=1e-6)
    if mode != "none":
        assert_close(run(reloaded, x), preprocess(x.copy()), rtol=1e-5)


def test_base_save_reload_gives_identical_predictions(tmp_path):
    base = ftk.load_base("mobilenet_v2", **TINY)
    base.save(tmp_path / "base.keras")
    reloaded = keras.models.load_model(tmp_path / "base.keras")
    x = raw_images(2)
    assert_close(run(reloaded, x), run(base, x), rtol=1e-6)
    assert [layer.name for layer in reloaded.layers[:2]] == ["image", "ftk_preprocess_tf"]


def test_raw_uint8_input_works(pair):
    ours, *_ = pair
    x = raw_images(2).round()
    as_uint8 = run(ours, x.astype("uint8"))
    assert_close(as_uint8, run(ours, x), rtol=1e-6)


def test_preprocessing_never_trains(pair):
    ours, *_ = pair
    ours.trainable = True
    prep = [layer for layer in ours.layers if structure.is_preprocessing(layer)]
    ftk.unfreeze_last(ours, 1, unit="block")
    trainable = {id(v) for v in ours.trainable_variables}
    assert not any(id(v) in trainable for layer in prep for v in layer.weights)
    ftk.freeze(ours)
    assert ours.trainable_variables == []


def test_load_base_rejects_kwargs_for_other_steps():
    with pytest.raises(ConfigError, match="add_head"):
        ftk.load_base("mobilenet_v2", include_top=True, **TINY)


def test_describe_base_names_the_file_keras_looks_for_without_downloading():
    from conftest import MOBILENET_V2_035

    from finetunekit.bases import describe_base

    details = describe_base("MobileNetV2", alpha=0.35)
    assert details.name == "mobilenet_v2" and details.default_size == 224
    assert details.preprocessing == "tf"
    # The file in ../shared/data/weights is the one Keras would download.
    assert details.weights_file == MOBILENET_V2_035.name
    built = ftk.load_base("mobilenet_v2", weights=None, alpha=0.35)
    assert details.parameters == built.count_params() == 410_208
    assert describe_base("resnet50").weights_file == (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


def test_a_full_model_with_layers_before_its_base_is_refused():
    # The Keras guide's layout: augmentation and the base's Rescaling before the base.
    # Taken alone, the base trained on raw pixels (0.43 test accuracy against 0.67 on
    # the flowers) with an INFO line as the only word.
    base = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    inputs = keras.Input((32, 32, 3))
    x = keras.Sequential([keras.layers.RandomFlip("horizontal")], name="augmentation")(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")(x)
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    guide = keras.Model(inputs, keras.layers.Dense(5)(x))
    with pytest.raises(ModelStructureError, match="runs layers before its base .* 'rescaling'"):
        ftk.FineTuner(guide, num_classes=5).load_base()
    with pytest.raises(ModelStructureError, match="fine-tune this model as it is"):
        ftk.load_base(guide)
    # A model from add_head feeds its base the images as they come: its base is taken.
    assert ftk.load_base(ftk.add_head(base, 5)) is base


def test_a_keras_applications_model_without_its_preprocessing_is_warned_of(caplog) -> None:
    # Fed raw pixels, keras.applications.MobileNetV2 trained on the wrong scale without a
    # word (0.37 test accuracy on the flowers against 0.76 for the same weights by name).
    bare = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    with caplog.at_level("WARNING", logger="finetunekit"):
        assert ftk.FineTuner(bare, num_classes=2, weights=None).load_base().base is bare
    (record,) = [r for r in caplog.records if "preprocess_input" in r.getMessage()]
    assert "keras.applications.MobileNetV2" in record.getMessage()
    assert "load_base('mobilenet_v2'" in record.getMessage()
    caplog.clear()
    ours = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    inputs = keras.Input((32, 32, 3))
    own = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs), name="resnet_of_mine")
    with caplog.at_level("WARNING", logger="finetunekit"):
        ftk.load_base(ours)
        ftk.load_base(own)
    assert not [r for r in caplog.records if "preprocess_input" in r.getMessage()]
