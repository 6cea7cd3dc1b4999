"""Augmented views, cached: K views per image stored once, one drawn per epoch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetunekit as ftk
from finetunekit import caching, data
from finetunekit.errors import ConfigError
from finetunekit.recipe import AUTO_VIEWS, AUTO_VIEWS_MANY, MANY_IMAGES, Recipe

SHAPE = (32, 32, 3)

#: Images the counting augmentation has transformed, over every call.
SEEN = tf.Variable(0, dtype=tf.int64, trainable=False)


class CountingFlip(keras.layers.Layer):
    """A random flip and shift that counts the images it transforms (in a tf.Variable)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flip = keras.layers.RandomFlip("horizontal", seed=1)
        self.shift = keras.layers.RandomTranslation(0.2, 0.2, seed=2)

    def call(self, images, training=None):
        if training:
            SEEN.assign_add(tf.cast(tf.shape(images)[0], tf.int64))
        return self.shift(self.flip(images, training=training), training=training)


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, *SHAPE)).astype("float32")
    return x, rng.integers(0, 3, n)


def _by_content(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def _flatten_prefix() -> keras.Model:
    inputs = keras.Input(SHAPE)
    return keras.Model(inputs, keras.layers.Flatten()(inputs))


@pytest.mark.parametrize("budget", [caching.DEFAULT_BUDGET, 0])  # in memory, spilled
def test_training_sees_only_stored_views_one_per_image_per_epoch(budget, tmp_path):
    n, k, epochs = 12, 3, 6
    x, _ = _images(n)
    labels = np.arange(n)  # the label names the image
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(5)
    SEEN.assign(0)
    with caching.FeatureCache(
        _flatten_prefix(), dataset, augment=CountingFlip(), views=k, budget=budget,
        directory=str(tmp_path),
    ) as c:
        assert c.spilled == (budget == 0)
        assert c.views == k and len(c) == n and c.count("train") == n
        assert int(SEEN.numpy()) == n * k  # augmented once per view, in the one pass
        rows = c._parts["train"]  # (images, views), images in their content order
        assert rows.shape == (n, k)
        stored = np.empty((n, k, int(np.prod(SHAPE))), "float32")
        stored[c.labels[rows[:, 0]]] = c.features[0][rows]  # (images by label, views, features)
        for i in range(n):  # the views of an image differ from each other
            for a in range(k):
                for b in range(a + 1, k):
                    assert np.abs(stored[i, a] - stored[i, b]).max() > 1.0
        used = np.zeros((n, k), int)
        orders = []
        batches = c.dataset(shuffle=True, seed=0, part="train")
        for _ in range(epochs):
            seen = []
            for features, batch_labels in batches:
                for row, image in zip(features.numpy(), batch_labels.numpy(), strict=True):
                    match = np.flatnonzero(np.all(stored[image] == row, axis=-1))
                    assert len(match) == 1, "a row that is not one of the image's stored views"
                    used[image, match[0]] += 1
                    seen.append(int(image))
            assert sorted(seen) == list(range(n))  # every image exactly once per epoch
            orders.append(seen)
        assert int(SEEN.numpy()) == n * k  # no epoch augmented anything
    assert used.sum() == n * epochs
    assert (used > 0).sum() > n  # fresh draws: more than one view of some images is used
    assert len({tuple(o) for o in orders}) > 1  # reshuffled between epochs


def test_held_out_images_are_stored_unaugmented():
    x, y = _images(40)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    held = data.held_out(tf.constant(x), 0.3).numpy()
    assert 0 < held.sum() < len(x)
    SEEN.assign(0)
    with caching.FeatureCache(
        _flatten_prefix(), dataset, holdout=0.3, augment=CountingFlip(), views=2
    ) as cache:
        assert cache.count("held_out") == held.sum()
        assert cache.count("train") == (~held).sum()
        assert int(SEEN.numpy()) == 2 * (~held).sum()  # only the kept images, per view
        expected = _by_content(x[held].reshape(held.sum(), -1))  # stored in content order
        rows = cache.features[0][cache._parts["held_out"]]
        np.testing.assert_array_equal(_by_content(rows), expected)
        served = np.concatenate(
            [f.numpy() for f, _ in cache.dataset(shuffle=False, part="held_out")]
        )
        np.testing.assert_array_equal(_by_content(served), expected)


def test_plain_and_augmented_images_share_one_trace_of_the_frozen_layers(monkeypatch):
    # The held-out images and the augmented views each traced the whole prefix (0.7 s
    # for a MobileNetV2, plus its first call), and a validation set traced it again.
    from finetunekit import _folding

    traced, frozen_call = [], _folding.frozen_call

    def counting(model, images):
        traced.append(model.name)  # runs while tracing only
        return frozen_call(model, images)

    monkeypatch.setattr(caching._folding, "frozen_call", counting)
    x, y = _images(40)
    prefix = _flatten_prefix()
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with caching.FeatureCache(prefix, train, holdout=0.3, augment=CountingFlip(), views=3):
        pass
    validation = tf.data.Dataset.from_tensor_slices((x[:10], y[:10])).batch(8)
    with caching.FeatureCache(prefix, validation) as stored:
        assert len(stored) == 10
    assert traced == [prefix.name]


@pytest.mark.parametrize("validation", [True, False])
def test_fit_augments_training_images_k_times_and_never_validation(validation):
    x, y = _images(24)
    xv, yv = _images(8, seed=1)
    k = 3
    SEEN.assign(0)
    tuner = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=SHAPE,
                          alpha=0.35, augment=CountingFlip())
    history = tuner.fit(
        x, y, validation_data=(xv, yv) if validation else None, head_epochs=3,
        finetune_epochs=2, unfreeze=1, augment_views=k, batch_size=8, verbose=0,
    )
    assert [r.cached for r in history.reports] == [True, True]
    kept = len(x) if validation else int((~data.held_out(tf.constant(x), 0.2).numpy()).sum())
    # 5 epochs over two phases, yet every kept training image was augmented k times only
    assert int(SEEN.numpy()) == k * kept


def test_auto_views_follow_the_number_of_training_images():
    x, y = _images(MANY_IMAGES)
    SEEN.assign(0)
    tuner = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=SHAPE,
                          alpha=0.35, augment=CountingFlip())
    tuner.fit(x, y, validation_data=(x[:8], y[:8]), head_epochs=4, finetune_epochs=0,
              batch_size=50, verbose=0)
    assert int(SEEN.numpy()) == AUTO_VIEWS_MANY * len(x)  # the default "auto"


def test_the_image_count_is_exact_where_known_and_never_over(tmp_path):
    x, y = _images(70)
    assert data.prepare(x, y, batch_size=32).images == 70
    assert data.prepare(data.from_arrays(x, y, batch_size=32)).images == 70
    raw = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    assert data.prepare(raw).images == 65  # two full batches and at least one image
    for i in range(6):
        path = tmp_path / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(tf.io.encode_png(x[i].astype("uint8")).numpy())
    folder = data.from_directory(tmp_path, image_size=32, batch_size=4)
    assert data.prepare(folder.train).images == 6
    unknown = raw.filter(lambda images, labels: True)  # a length tf.data cannot know
    assert data.prepare(unknown).images is None  # "auto" keeps 4 views


def test_views_under_mixed_precision_reach_the_frozen_layers():
    # The augmentation, traced apart, returned float16 to a trace of float32 images.
    x, y = _images(12)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        prefix, augment = _flatten_prefix(), data.augmentation("default")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with caching.FeatureCache(prefix, dataset, augment=augment, views=2) as stored:
        assert stored.count("train") == 12
        assert stored.features[0].dtype == np.float16


def test_cache_false_augments_afresh_every_epoch():
    x, y = _images(16)
    SEEN.assign(0)
    tuner = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=SHAPE,
                          alpha=0.35, augment=CountingFlip(), cache=False)
    history = tuner.fit(x, y, validation_data=(x[:4], y[:4]), head_epochs=3, finetune_epochs=0,
                        early_stopping=False, batch_size=8, verbose=0)
    assert history.reports[0].cached is False
    assert int(SEEN.numpy()) == 3 * len(x)


def test_augment_views_auto_and_bounds():
    assert Recipe().views() == AUTO_VIEWS
    assert Recipe(head_epochs=2, finetune_epochs=1).views() == min(AUTO_VIEWS, 2)
    assert Recipe(augment_views=7).views() == 7
    # From MANY_IMAGES training images on, "auto" stores fewer views (chosen on folds
    # of flowers-large); an unknown count keeps the small-data number.
    assert AUTO_VIEWS_MANY < AUTO_VIEWS
    assert Recipe().views(MANY_IMAGES - 1) == Recipe().views(None) == AUTO_VIEWS
    assert Recipe().views(MANY_IMAGES) == AUTO_VIEWS_MANY
    assert Recipe(head_epochs=1, finetune_epochs=1).views(MANY_IMAGES) == 1
    assert Recipe(augment_views=3).views(MANY_IMAGES) == 3
    for bad in (0, -1, 2.5, True, "many"):
        with pytest.raises(ConfigError, match="augment_views must be"):
            Recipe(augment_views=bad)


def test_estimate_before_the_pass():
    x, y = _images(10)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    images, per_image = caching.estimate_bytes(_flatten_prefix(), dataset)
    assert images == 12  # 3 batches of 4 (an upper bound: the last one has 2)
    assert per_image == int(np.prod(SHAPE)) * 4
