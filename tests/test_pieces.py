"""Frozen passes run each batch in pieces sized by the pass's largest per-image tensor."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from finetunekit import _pieces, caching


def _conv_model(size: int = 32, channels: int = 8) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def _traced(model: keras.Model, shape: tuple[int | None, ...]) -> tf.types.experimental.Function:
    return tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *shape))]
    )


def test_the_piece_holds_piece_bytes_of_the_largest_per_image_tensor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("on a GPU the batch runs whole (piece_size returns None)")
    model = _conv_model(32, channels=8)
    largest = 32 * 32 * 8 * 4  # the first convolution's output, float32, per image
    monkeypatch.setattr(_pieces, "piece_bytes", lambda: 5 * largest + 1)
    assert _pieces.piece_size(_traced(model, (32, 32, 3))) == 5
    monkeypatch.setattr(_pieces, "piece_bytes", lambda: 1)
    assert _pieces.piece_size(_traced(model, (32, 32, 3))) == 1  # never below one image


def test_the_piece_bytes_are_a_share_of_the_largest_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def caches(**sizes: str) -> int:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        for index, size in sizes.items():
            (folder / index).mkdir(parents=True)
            (folder / index / "size").write_text(size + "\n")
        folder.mkdir(exist_ok=True)
        monkeypatch.setattr(_pieces, "_CACHES", folder)
        _pieces.piece_bytes.cache_clear()
        return _pieces.piece_bytes()

    try:
        # L1, L2 and a 32 MiB L3 (an AMD EPYC): 20 MiB, the size measured fastest there
        assert caches(index0="48K", index2="2048K", index3="32768K") == 20 * 2**20
        assert caches(index0="32K", index3="300M") == int(300 * 2**20 * _pieces.CACHE_SHARE)
        assert caches(index0="16M", index1="4096K") == 10 * 2**20  # the largest, not the last
        assert caches() == _pieces.PIECE_BYTES  # no cache reported: the measured default
        assert caches(index0="48K") == _pieces.PIECE_BYTES  # below 1 MiB: not a real figure
        assert caches(index3="large") == _pieces.PIECE_BYTES  # unreadable: the default
        # one empty or unreadable entry does not hide the others
        assert caches(index0="", index3="65536K") == 40 * 2**20
        assert caches(index0="32K", index2="big", index3="64M") == 40 * 2**20
        folder = tmp_path / "no size file"
        (folder / "index0").mkdir(parents=True)
        (folder / "index3").mkdir()
        (folder / "index3" / "size").write_text("64M\n")
        monkeypatch.setattr(_pieces, "_CACHES", folder)
        _pieces.piece_bytes.cache_clear()
        assert _pieces.piece_bytes() == 40 * 2**20
    finally:
        _pieces.piece_bytes.cache_clear()


def test_open_image_sizes_do_not_shrink_the_batch() -> None:
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    piece = _pieces.piece_size(_traced(keras.Model(inputs, outputs), (None, None, 3)))
    # only the pooled 4 floats have a static size: no batch anyone uses is cut
    assert piece is None or piece >= _pieces.piece_bytes() // 16


def test_pieces_are_even_and_joined_in_order() -> None:
    seen: list[int] = []

    def function(images: tf.Tensor) -> dict[str, tf.Tensor]:
        seen.append(int(images.shape[0]))
        return {"double": images * 2.0, "first": images[:, 0]}

    images = tf.reshape(tf.range(32 * 2, dtype=tf.float32), (32, 2))
    joined = _pieces.call_in_pieces(function, images, 13)
    assert seen == [11, 11, 10]
    np.testing.assert_array_equal(joined["double"], images.numpy() * 2)
    np.testing.assert_array_equal(joined["first"], images.numpy()[:, 0])
    seen.clear()
    joined = _pieces.call_in_pieces(function, images[:10], 3)
    assert seen == [3, 3, 2, 2]  # not 3 + 3 + 3 + 1
    np.testing.assert_array_equal(joined["double"], images.numpy()[:10] * 2)
    seen.clear()
    _pieces.call_in_pieces(function, images, None)
    _pieces.call_in_pieces(function, images, 32)
    assert seen == [32, 32]


def test_the_feature_cache_stores_the_same_features_in_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("on a GPU the batch runs whole")
    model = _conv_model(32)
    x = np.random.default_rng(0).uniform(0, 255, (20, 32, 32, 3)).astype("float32")
    y = np.arange(20) % 2
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    whole = caching.FeatureCache(model, dataset, holdout=0.25)
    sizes: list[int] = []
    calls = _pieces.call_in_pieces

    def counted(function: object, images: tf.Tensor, piece: int | None) -> object:
        sizes.append(piece or 0)
        return calls(function, images, piece)

    monkeypatch.setattr(_pieces, "call_in_pieces", counted)
    monkeypatch.setattr(_pieces, "piece_bytes", lambda: 3 * 32 * 32 * 8 * 4)
    pieces = caching.FeatureCache(model, dataset, holdout=0.25)
    assert sizes and set(sizes) == {3}  # every batch ran in pieces of at most 3 images
    np.testing.assert_allclose(pieces.features[0], whole.features[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pieces.labels, whole.labels)
    np.testing.assert_array_equal(pieces.held_out_mask(), whole.held_out_mask())
