"""rank_bases: the scores against direct computations, the ranking, memory, real data."""

from __future__ import annotations

import copy
import gc
import logging
import os
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import WEIGHTS_DIR
from test_cli import shapes_folder

import finetunekit as ftk
from finetunekit import selection
from finetunekit import transfer_scores as ts
from finetunekit.errors import (
    DataError,
    MissingExtraError,
    ModelStructureError,
    WeightsNotFoundError,
)

SHAPE = (32, 32, 3)


# -- the scores -----------------------------------------------------------------------------


def _direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence per image, from the matrix formulas of the LogME paper."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    log_evidence = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((f @ m - y) ** 2)
        - alpha / 2 * m @ m
        - np.linalg.slogdet(a)[1] / 2
    )
    return float(log_evidence / n)


@pytest.mark.parametrize("n, d", [(30, 50), (80, 10)])  # both sides of the eigendecomposition
def test_logme_is_the_maximum_of_the_direct_evidence(n, d):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    f = rng.normal(size=(n, d))
    f[:, 0] += 2 * labels
    value = ts.logme(f, labels, 3)
    grid = np.logspace(-3, 3, 49)
    best = [
        max(_direct_evidence(f, (labels == c).astype(float), a, b) for a in grid for b in grid)
        for c in range(3)
    ]
    # The fixed point maximises over (alpha, beta): at least the grid's best, and close.
    assert np.mean(best) - 1e-4 <= value <= np.mean(best) + 0.02


def test_logme_prefers_features_that_carry_the_labels():
    rng = np.random.default_rng(1)
    labels = np.arange(60) % 3
    noise = rng.normal(size=(60, 40))
    informative = noise + 3 * np.eye(40)[labels]
    assert ts.logme(informative, labels, 3) > ts.logme(noise, labels, 3) + 0.1


def test_logme_stays_finite_when_an_image_is_stored_twice():
    # More dimensions than images and a repeated image: without the floors and the
    # de-duplication, beta grows without bound and so does the evidence.
    rng = np.random.default_rng(2)
    labels = np.arange(20) % 2
    f = rng.normal(size=(20, 64))
    twice = np.vstack([f, f[:1]])
    assert abs(ts.logme(twice, np.append(labels, labels[0]), 2) - ts.logme(f, labels, 2)) < 1e-9
    score = ts.logme_interval(f, labels, 2, rng)
    assert np.isfinite([score.low, score.high]).all() and score.high - score.low < 1.0


def test_logme_interval_in_small_stacks_matches_one_stack(monkeypatch):
    rng_data = np.random.default_rng(5)
    labels = np.arange(120) % 3
    f = rng_data.normal(size=(120, 200)) + np.eye(200)[labels] * 2.0  # n <= d: the gram path
    whole = ts.logme_interval(f, labels, 3, np.random.default_rng(0))
    stacks: list[int] = []
    eigh = ts._eigh

    def recorded(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stacks.append(len(matrix) if matrix.ndim == 3 else 0)
        return eigh(matrix)

    monkeypatch.setattr(ts, "_eigh", recorded)
    # Room for three half-samples' grams and eigenvectors at a time (60 rows each).
    monkeypatch.setattr(ts, "_EIGH_STACK_BYTES", 3 * 2 * 60 * 60 * 8)
    chunked = ts.logme_interval(f, labels, 3, np.random.default_rng(0))
    assert [n for n in stacks if n] == [3] * 6 + [2]  # 20 halves, never more than 3 held
    np.testing.assert_allclose([chunked.value, chunked.low, chunked.high],
                               [whole.value, whole.low, whole.high], rtol=1e-9)


def _brute_force_knn(features: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    classes = labels.max() + 1
    left_out = ts.leave_one_per_class(labels, classes, np.random.default_rng(seed))
    correct = []
    for i in range(len(unit)):
        assert left_out[i, labels[i]] == i  # the image itself, from its own class
        others = [c for c in range(classes) if c != labels[i]]
        assert all(labels[left_out[i, c]] == c for c in others)  # one of each other class
        similarity = unit @ unit[i]
        similarity[left_out[i]] = -np.inf
        nearest = np.argsort(-similarity)[:k]
        votes = np.zeros(classes)
        for j in nearest:
            votes[labels[j]] += np.exp((similarity[j] - 1) / ts.KNN_TEMPERATURE)
        correct.append(votes.argmax() == labels[i])
    return np.array(correct)


@pytest.mark.parametrize("sizes", [(13, 13, 12, 12), (20, 2, 2, 1)])  # even; small and one
def test_knn_matches_a_brute_force_leave_one_out(sizes):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    features = rng.normal(size=(len(labels), 8)) + np.eye(8)[labels] * 1.5
    expected = _brute_force_knn(features, labels, k=5, seed=1)
    assert 0.3 < expected.mean() < 1.0  # neither trivial nor hopeless
    got = ts.knn_correct(features, labels, len(sizes), k=5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("classes, per_class", [(2, 5), (2, 10), (10, 2), (20, 3), (10, 5)])
def test_knn_on_features_without_class_information_scores_chance(classes, per_class):
    # Leaving only the image out leaves its class one short; with k = 20 near the class
    # size the vote went against it (2 classes of 5: 0.06; 10 of 2: 0.0), and scaling
    # the own class's votes by n/(n-1) overshot (10 of 2: 0.17).
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    scores = [
        ts.knn_correct(
            rng.normal(size=(len(labels), 64)) + 3.0, labels, classes, rng=rng
        ).mean()
        for _ in range(200)
    ]
    assert abs(np.mean(scores) - 1 / classes) < 0.25 / classes, np.mean(scores)


def test_a_tuple_with_sample_weights_is_refused_with_what_to_pass():
    x = np.zeros((8, 32, 32, 3), "float32")
    refused = r"\(x, y, sample_weight\).*Pass \(x, y\)"
    with pytest.raises(ftk.errors.ArgumentTypeError, match=refused):
        ftk.rank_bases((x, np.arange(8) % 2, np.ones(8)), ["mobilenet_v2", "mobilenet"])


def test_knn_leaves_the_image_itself_out():
    # Each image's only same-class neighbour is far; with itself counted it would be right.
    features = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    assert not ts.knn_correct(features, labels, 2, k=1).any()


@pytest.mark.parametrize("d", [201, 30])  # more dimensions than images, and fewer
def test_linear_probe_separates_separable_classes_and_not_random_labels(d):
    rng = np.random.default_rng(4)
    labels = np.arange(90) % 3
    blocks = np.repeat(np.eye(3), d // 3, axis=1)  # each class shifts its own third of the dims
    features = rng.normal(size=(90, d)) + blocks[labels]
    assert ts.linear_probe_correct(features, labels, 3, rng).mean() > 0.9
    shuffled = rng.permutation(labels)
    assert ts.linear_probe_correct(features, shuffled, 3, rng).mean() < 0.5


def test_logme_of_several_spectra_equals_each_alone():
    # Half-samples of different ranks run their fixed points together, padded: each
    # value must be the one it has alone (zero padding, masked log-determinant, its own
    # stopping step).
    rng = np.random.default_rng(6)
    spectra = []
    for n, d, signal in ((20, 10, 2.0), (15, 30, 0.0), (40, 25, 5.0)):
        labels = np.arange(n) % 3
        features = rng.normal(size=(n, d)) + signal * np.eye(3).repeat(-(-d // 3), axis=1)[
            labels, :d
        ]
        spectra.append(ts._spectrum(features, labels, 3))
    assert len({len(sp.eigenvalues) for sp in spectra}) == 3  # three ranks: padding is used
    together = ts._logme_of(spectra)
    alone = [ts._logme_of([sp])[0] for sp in spectra]
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12)
    assert together[2] > together[1]  # the scores differ: the comparison is not vacuous


def test_the_probe_on_gram_matrices_predicts_as_on_the_features():
    # Fewer images than dimensions: the descent on K = X X' (no eigendecomposition) takes
    # the same steps as on X itself, so the logits agree up to float32 rounding.
    rng = np.random.default_rng(5)
    problems = []
    for n in (40, 37):  # folds of different sizes: padded rows and columns
        labels = rng.integers(0, 3, n)
        train = rng.normal(size=(n, 120)) + np.eye(3).repeat(40, axis=1)[labels]
        problems.append((train, labels, rng.normal(size=(9, 120))))
    on_gram = ts._fit_predict_all(problems, 3, kernel=True)
    on_features = ts._fit_predict_all(problems, 3, kernel=False)
    by_default = ts._fit_predict_all(problems, 3)  # n < d in every fold: the Gram form
    for a, c in zip(on_gram, by_default, strict=True):
        np.testing.assert_array_equal(a, c)
    for a, b in zip(on_gram, on_features, strict=True):
        assert a.shape == b.shape == (9, 3)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())
        assert np.abs(b).max() > 0.1  # the descent moved: the comparison is of trained models


def test_intervals_hold_the_value_and_narrow_with_more_images():
    rng = np.random.default_rng(5)
    small = ts.accuracy_interval(rng.random(40) < 0.7, rng)
    large = ts.accuracy_interval(rng.random(4000) < 0.7, rng)
    for score in (small, large):
        assert score.low <= score.value <= score.high
    assert large.high - large.low < (small.high - small.low) / 4


# -- rank_bases -----------------------------------------------------------------------------


def _colour_data(per_class: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart only by hue; every image has a random brightness."""
    rng = np.random.default_rng(0)
    labels = np.arange(3 * per_class) % 3
    images = np.full((len(labels), 32, 32, 3), 100.0)
    images[np.arange(len(labels)), :, :, labels] = 200.0
    images += rng.uniform(-50, 50, (len(labels), 1, 1, 1)) + rng.normal(0, 5, images.shape)
    return images.astype("float32"), labels


def _hue_base() -> keras.Model:
    """Features = the mean colour: carries the class."""
    inputs = keras.Input(SHAPE)
    return keras.Model(inputs, keras.layers.Rescaling(1 / 255)(inputs), name="hue")


def _brightness_base() -> keras.Model:
    """Features = the mean brightness: blind to the class."""
    inputs = keras.Input(SHAPE)
    grey = keras.layers.Conv2D(1, 1, use_bias=False, name="grey")
    outputs = grey(inputs)
    grey.set_weights([np.full((1, 1, 3, 1), 1 / 3)])
    return keras.Model(inputs, outputs, name="brightness")


def test_rank_bases_puts_the_informative_base_first():
    x, y = _colour_data()
    ranking = ftk.rank_bases(
        (x, y), [_brightness_base(), _hue_base(), "mobilenet_v2"], weights=None,
        input_shape=SHAPE, alpha=0.35, seed=0,
    )  # fmt: skip
    assert isinstance(ranking, ftk.Ranking) and len(ranking) == 3
    assert ranking.best.name == "hue"
    assert ranking.best.scores["knn"].value == 1.0
    assert ranking.best.scores["linear"].value == 1.0
    by_name = {row.name: row for row in ranking}
    brightness = by_name["brightness"].scores
    assert brightness["knn"].value < 0.6 and brightness["linear"].value < 0.6
    assert by_name["hue"].scores["logme"].value > brightness["logme"].value
    scores = [row.score for row in ranking]
    assert scores == sorted(scores, reverse=True)
    assert all(row.score == row.scores["knn"].value for row in ranking)
    assert ranking.images == 36 and ranking.num_classes == 3
    assert (
        by_name["mobilenet_v2"].params
        == ftk.load_base("mobilenet_v2", weights=None, input_shape=SHAPE, alpha=0.35).count_params()
    )
    assert all(row.seconds > 0 and row.image_size == (32, 32) for row in ranking)


def test_str_is_a_table_of_every_candidate_and_score():
    x, y = _colour_data(4)
    ranking = ftk.rank_bases(
        (x, y), {"by hue": _hue_base(), "by brightness": _brightness_base()}, seed=0
    )
    lines = str(ranking).splitlines()
    assert lines[0].split()[:5] == ["#", "base", "knn", "logme", "linear"]
    assert lines[1].startswith("1  by hue") and lines[2].startswith("2  by brightness")
    assert str(ranking.best.scores["knn"]) in lines[1]
    assert "Ranked by knn" in lines[-1] and "12 images of 3 classes" in lines[-1]
    assert "leave-one-out 9-NN" in lines[-1]  # k = 20 cut to the 12 - 3 in each pool


def test_metrics_choose_the_scores_and_the_first_is_primary():
    x, y = _colour_data(4)
    ranking = ftk.rank_bases(
        (x, y), [_hue_base(), _brightness_base()], metrics=("logme", "knn"), seed=0
    )
    assert ranking.primary == "logme"
    assert all(list(row.scores) == ["logme", "knn"] for row in ranking)
    assert all(row.score == row.scores["logme"].value for row in ranking)


def test_a_weights_mapping_reaches_its_candidate_only(monkeypatch):
    loaded = []
    real = selection.bases.load_base

    def spy(candidate, *, weights="imagenet", **kwargs):
        loaded.append((candidate, weights))
        return real(candidate, weights=None, **kwargs)

    monkeypatch.setattr(selection.bases, "load_base", spy)
    x, y = _colour_data(4)
    ranking = ftk.rank_bases(
        (x, y),
        {"one": "mobilenet_v2", "other": "MobileNetV2", "third": "mobilenet"},
        weights={"one": "one.h5", "other": None},
        input_shape=SHAPE,
        alpha=0.35,
        metrics=("knn",),
        seed=0,
    )
    assert sorted(ranking.names) == ["one", "other", "third"]
    assert loaded == [("mobilenet_v2", "one.h5"), ("MobileNetV2", None), ("mobilenet", "imagenet")]


def test_scores_computed_beside_the_next_candidate_equal_scores_computed_in_turn(monkeypatch):
    # Each candidate's scores run on a worker thread while the next candidate loads.
    x, y = _colour_data(4)
    calls: list[tuple[str, tuple]] = []
    timed = selection._timed_scores

    def recorded(features, labels, classes, metrics, rng):
        calls.append((threading.current_thread().name, (features, labels, classes, metrics,
                                                        copy.deepcopy(rng))))
        return timed(features, labels, classes, metrics, rng)

    monkeypatch.setattr(selection, "_timed_scores", recorded)
    ranking = ftk.rank_bases((x, y), {"a": _hue_base(), "b": _brightness_base()}, seed=0)
    assert [thread for thread, _ in calls] == ["finetunekit-scores_0"] * 2
    assert threading.current_thread().name not in {thread for thread, _ in calls}
    by_name = {row.name: row for row in ranking}
    for name, (_, arguments) in zip("ab", calls, strict=True):
        in_turn, _ = selection._scores(*arguments)  # on this thread, from the same stream
        assert by_name[name].scores == in_turn
    again = ftk.rank_bases((x, y), {"a": _hue_base(), "b": _brightness_base()}, seed=0)
    assert [row.scores for row in again] == [row.scores for row in ranking]


def test_each_candidates_pass_reads_without_autotuning(untuned_reads):
    # Deleting an autotuned iterator waited for the tuner's next wake-up: up to seconds
    # after a candidate's pass (see caching.untuned).
    x, y = _colour_data(4)
    read = untuned_reads
    ftk.rank_bases((x, y), {"a": _hue_base(), "b": _brightness_base()}, seed=0)
    assert len(read) == 2  # one pass per candidate
    assert all(ds.options().autotune.enabled is False for ds in read)


def test_bad_features_stop_the_ranking_before_the_next_candidate_loads(monkeypatch):
    x, y = _colour_data(4)
    inputs = keras.Input(SHAPE)
    broken = keras.Model(inputs, keras.layers.Lambda(lambda t: t * np.nan)(inputs), name="nan")
    ran: list[object] = []
    run = selection._run_candidate

    def counted(candidate, *rest):
        ran.append(candidate)
        return run(candidate, *rest)

    monkeypatch.setattr(selection, "_run_candidate", counted)
    with pytest.raises(ftk.errors.DataError, match="NaN or infinite features"):
        ftk.rank_bases((x, y), [broken, _hue_base(), _brightness_base()], seed=0)
    assert ran == [broken]


def test_an_error_cancels_the_scores_still_queued(monkeypatch):
    x, y = _colour_data(4)
    started: list[int] = []
    timed = selection._timed_scores

    def slow(*arguments):
        started.append(len(started))
        threading.Event().wait(2.0)  # the first scoring still runs when the third fails
        return timed(*arguments)

    run = selection._run_candidate

    def failing_third(candidate, *rest):
        if candidate.name == "third":
            raise ftk.errors.ConfigError("the third candidate cannot load")
        return run(candidate, *rest)

    monkeypatch.setattr(selection, "_timed_scores", slow)
    monkeypatch.setattr(selection, "_run_candidate", failing_third)
    third = _hue_base()
    third.name = "third"
    with pytest.raises(ftk.errors.ConfigError, match="cannot load"):
        ftk.rank_bases((x, y), [_hue_base(), _brightness_base(), third], seed=0)
    assert started == [0]  # the second candidate's scores, queued, never ran


def test_a_failed_scoring_stops_the_ranking_at_the_next_candidate(monkeypatch):
    x, y = _colour_data(4)
    failed = threading.Event()

    def broken_scores(*arguments):
        failed.set()
        raise RuntimeError("scoring failed")

    ran: list[str] = []
    run = selection._run_candidate

    def waits_for_the_failure(candidate, *rest):
        ran.append(candidate.name)
        if len(ran) == 2:  # the first scoring has failed by the time the second is run
            assert failed.wait(10.0)
            threading.Event().wait(0.3)
        return run(candidate, *rest)

    monkeypatch.setattr(selection, "_timed_scores", broken_scores)
    monkeypatch.setattr(selection, "_run_candidate", waits_for_the_failure)
    models = [_hue_base(), _brightness_base(), _hue_base()]
    models[2].name = "hue_again"
    with pytest.raises(RuntimeError, match="scoring failed"):
        ftk.rank_bases((x, y), models, seed=0)
    assert "hue_again" not in ran  # stopped before the third (if not before the second)


def test_max_images_scores_the_same_subset_for_every_candidate():
    x, y = _colour_data(20)
    ranking = ftk.rank_bases((x, y), [_hue_base(), _brightness_base()], max_images=30, seed=0)
    assert ranking.images == 30


def test_the_heap_is_frozen_only_while_ranking_and_a_callers_freeze_is_kept():
    x, y = _colour_data(4)
    during: list[int] = []

    class FreezeCount(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("ranked"):
                during.append(gc.get_freeze_count())

    handler = FreezeCount()
    logger = logging.getLogger("finetunekit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        ftk.rank_bases((x, y), {"a": _hue_base(), "b": _brightness_base()}, seed=0)
        assert len(during) == 2 and all(count > 0 for count in during)  # collections skip them
        assert gc.get_freeze_count() == 0  # and everything is back afterwards
        gc.freeze()
        frozen = gc.get_freeze_count()
        try:
            ftk.rank_bases((x, y), {"a": _hue_base(), "b": _brightness_base()}, seed=0)
            # The caller's own freeze is neither undone nor added to (frozen objects that
            # are freed leave it, so the count only shrinks).
            assert frozen * 0.9 < gc.get_freeze_count() <= frozen
            assert len(during) == 4 and all(frozen * 0.9 < n <= frozen for n in during[2:])
        finally:
            gc.unfreeze()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_folder_is_read_at_each_candidates_size(tmp_path, caplog):
    root = shapes_folder(tmp_path / "data", per_class=6)
    small = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    large = ftk.load_base("mobilenet_v2", weights=None, input_shape=(48, 48, 3), alpha=0.35)
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        ranking = ftk.rank_bases(str(root), {"small": small, "large": large}, seed=0)
    sizes = {row.name: row.image_size for row in ranking}
    assert sizes == {"small": (32, 32), "large": (48, 48)}
    assert ranking.images == 12 and ranking.num_classes == 2
    assert "another order" not in caplog.text  # the same images, in the same order
    # The caller's models are untouched and still work.
    assert small(np.zeros((1, 32, 32, 3)), training=False).shape[0] == 1


def test_a_folders_ranking_does_not_depend_on_tensorflows_global_seed(tmp_path):
    # Keras' folder loader shuffles with tf.data as well, whose order follows
    # tf.random.set_seed: the same rank_bases(..., seed=0) scored k-NN 0.868 or 0.874 for
    # one base on the flowers, whether keras.utils.set_random_seed had been called.
    root = shapes_folder(tmp_path / "data", per_class=12)
    scores = []
    for global_seed in (1, 2):
        tf.random.set_seed(global_seed)
        ranking = ftk.rank_bases(
            str(root), {"a": _hue_base(), "b": _brightness_base()}, metrics=("knn", "linear"),
            seed=0,
        )
        scores.append({row.name: row.scores for row in ranking})
    assert scores[0] == scores[1]


def _after_first_read(monkeypatch, change):
    """Calls `change()` once the first candidate has listed and read the folder."""
    images = selection._Folder.images
    calls = []

    def patched(self, size):
        if calls:
            change()
        calls.append(size)
        return images(self, size)

    monkeypatch.setattr(selection._Folder, "images", patched)


def test_a_file_added_during_a_ranking_is_not_read(tmp_path, monkeypatch):
    # The files were listed again for each candidate: a file added meanwhile had no
    # label and raised a raw KeyError.
    root = shapes_folder(tmp_path / "data", per_class=6)
    new = root / "circle" / "new.png"
    copy = sorted((root / "plus").iterdir())[0].read_bytes()
    _after_first_read(monkeypatch, lambda: new.write_bytes(copy))
    ranking = ftk.rank_bases(str(root), {"a": _hue_base(), "b": _brightness_base()}, seed=0)
    assert new.exists() and ranking.images == 12


@pytest.mark.parametrize("max_images", [2000, 10])
def test_a_file_gone_during_a_ranking_is_named(tmp_path, monkeypatch, max_images):
    # A listed file that is gone by the time it is read (deleted, or a dangling link)
    # raised TensorFlow's NotFoundError; a subset (max_images) is read file by file.
    root = shapes_folder(tmp_path / "data", per_class=6)
    files = sorted((root / "plus").iterdir())
    _after_first_read(monkeypatch, lambda: [f.unlink() for f in files if f.exists()])
    with pytest.raises(DataError, match=r"could not be decoded: .*plus"):
        ftk.rank_bases(
            str(root), {"a": _hue_base(), "b": _brightness_base()}, max_images=max_images,
            seed=0,
        )


def test_a_folders_ignored_files_are_noted_once_not_per_candidate(tmp_path, caplog):
    root = shapes_folder(tmp_path / "data", per_class=6)
    (root / next(p.name for p in root.iterdir() if p.is_dir()) / "notes.txt").write_text("x")
    small = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)
    large = ftk.load_base("mobilenet_v2", weights=None, input_shape=(48, 48, 3), alpha=0.35)
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        ftk.rank_bases(str(root), {"small": small, "large": large}, seed=0)
    assert caplog.text.count("ignoring 1 files that are not") == 1


def test_a_dataset_is_resized_to_each_candidate():
    x, y = _colour_data(4)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    inputs = keras.Input((16, 16, 3))
    small = keras.Model(inputs, keras.layers.Rescaling(1 / 255)(inputs), name="small")
    ranking = ftk.rank_bases(dataset, [small, _hue_base()], seed=0)
    assert {row.name: row.image_size for row in ranking} == {"small": (16, 16), "hue": (32, 32)}
    assert ranking.images == 12


def test_a_saved_model_file_is_a_candidate_named_by_its_file(tmp_path):
    x, y = _colour_data(4)
    path = tmp_path / "colours.keras"
    _hue_base().save(path)
    ranking = ftk.rank_bases((x, y), [str(path), _brightness_base()], seed=0)
    assert ranking.best.name == "colours.keras"
    with pytest.raises(WeightsNotFoundError, match="No saved model at"):
        ftk.rank_bases((x, y), [str(tmp_path / "gone.keras"), _hue_base()])


def test_plot_writes_an_image(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = _colour_data(4)
    ranking = ftk.rank_bases((x, y), [_hue_base(), _brightness_base()], seed=0)
    path = ranking.plot(tmp_path / "ranking.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ranking.png"]  # nothing left beside


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    x, y = _colour_data(4)
    ranking = ftk.rank_bases((x, y), [_hue_base(), _brightness_base()], seed=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'finetunekit\[plot\]'") as info:
        ranking.plot(tmp_path / "never.png")
    assert isinstance(info.value, ImportError)
    assert not list(tmp_path.iterdir())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssAfterEachCandidate(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.rss: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ranked "):
            self.rss.append(_rss())


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_memory_stays_flat_across_candidates():
    # EfficientNet at 32 px: each model holds 16 MB of weights, and tracing it in a
    # tf.function kept about 28 MB per candidate alive in TensorFlow.
    x, y = _colour_data(4)
    handler = _RssAfterEachCandidate()
    logger = logging.getLogger("finetunekit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        ftk.rank_bases(
            (x, y), {f"b{i}": "efficientnet_b0" for i in range(6)}, weights=None,
            input_shape=SHAPE, metrics=("knn",), seed=0,
        )  # fmt: skip
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    weights_bytes = (
        4 * ftk.load_base("efficientnet_b0", weights=None, input_shape=SHAPE).count_params()
    )
    assert len(handler.rss) == 6
    # From the level of the first two candidates (the first pays TensorFlow's warm-up),
    # four more candidates may not add two models' worth of memory; keeping each would
    # add four. (The allocator can hand memory back after either of the first two: after
    # other tests, [834, 805, 838, 839, 841, 839] MB.)
    start = max(handler.rss[:2])
    assert handler.rss[-1] - start < 2 * weights_bytes, [r >> 20 for r in handler.rss]


# -- real data ------------------------------------------------------------------------------


def test_pretrained_bases_rank_above_random_ones_on_the_flowers(flowers, weights_035):
    v1 = WEIGHTS_DIR / "derived" / "mobilenet_2_5_128_tf_no_top.h5"
    if not v1.exists():
        pytest.skip(f"{v1} not found (../shared/data absent)")

    def base(name: str, weights: Path | None, alpha: float) -> keras.Model:
        return ftk.load_base(name, weights=weights, input_shape=(96, 96, 3), alpha=alpha)

    ranking = ftk.rank_bases(
        flowers / "train",
        {
            "v2 0.35 imagenet": base("mobilenet_v2", weights_035, 0.35),
            "v1 0.25 imagenet": base("mobilenet", v1, 0.25),
            "v2 0.35 random": base("mobilenet_v2", None, 0.35),
            "v1 0.25 random": base("mobilenet", None, 0.25),
        },
        metrics=("knn",),
        max_images=150,
        seed=0,
    )
    assert {row.name.split()[-1] for row in ranking[:2]} == {"imagenet"}, str(ranking)
    assert ranking[1].scores["knn"].low > ranking[2].scores["knn"].high, str(ranking)


def test_repeated_images_are_scored_once(caplog):
    # Each image twice, with random labels: leave-one-out k-NN found every image's copy
    # (0.98 where chance is 0.2), and the linear probe's folds split the copies.
    from finetunekit.selection import _scores

    rng = np.random.default_rng(0)
    features = rng.normal(size=(100, 16)).astype("float32")
    labels = rng.integers(0, 5, 100)
    twice_features, twice_labels = np.concatenate([features] * 2), np.concatenate([labels] * 2)
    twice, repeated = _scores(
        twice_features, twice_labels, 5, ("knn", "linear"), np.random.default_rng(1)
    )
    once, none = _scores(features, labels, 5, ("knn", "linear"), np.random.default_rng(1))
    assert (repeated, none) == (100, 0)
    assert twice["knn"].value == once["knn"].value < 0.4
    assert twice["linear"].value == once["linear"].value


def test_a_copied_image_is_warned_about_once_per_ranking(caplog):
    # The same line came once per candidate (six times for six bases), naming none.
    x, y = _colour_data(8)
    x, y = np.concatenate([x, x[:1]]), np.concatenate([y, y[:1]])
    bases = {"a": _hue_base(), "b": _brightness_base(), "c": _hue_base()}
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        ftk.rank_bases((x, y), bases, metrics=("knn",), seed=0)
    said = [r.getMessage() for r in caplog.records if "repeat another" in r.getMessage()]
    assert said == [
        "1 of 25 images repeat another (identical features) for every candidate: each is "
        "scored once. Remove the copies from the data to rank on distinct images."
    ]


def test_repeats_seen_by_some_candidates_are_named(caplog):
    # A base can map distinct images to identical features; the warning says which.
    with caplog.at_level(logging.WARNING, logger="finetunekit"):
        selection._warn_repeated({"a": 0, "b": 3, "c": 1}, 40)
        selection._warn_repeated({"a": 0, "b": 0}, 40)
    assert [r.getMessage() for r in caplog.records] == [
        "Images that repeat another (identical features), each scored once: 3 for b, "
        "1 for c (of 40)."
    ]


# -- the subset, the seeds, the weights of model candidates ----------------------------------


def test_a_subset_keeps_every_class_in_its_share():
    # A random subset of 40 of 183 images dropped the class of 3 images for five seeds
    # of eight, and the ranking then scored 3 classes without a word.
    labels = np.array([0] * 3 + [1] * 60 + [2] * 60 + [3] * 60)
    for seed in range(8):
        chosen = selection._balanced(labels, 40, np.random.default_rng(seed))
        counts = np.bincount(labels[chosen], minlength=4)
        assert len(chosen) == 40 and len(set(chosen)) == 40
        assert counts[0] >= 2 and all(11 <= c <= 14 for c in counts[1:]), counts
    assert list(selection._balanced(labels, 500, np.random.default_rng(0))) == list(range(183))


def test_rank_bases_subsets_folders_and_arrays_by_class(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0] * 3 + [1] * 30 + [2] * 30)
    x = rng.integers(0, 256, (len(y), *SHAPE)).astype("uint8")
    kwargs = dict(weights=None, alpha=0.35, input_shape=SHAPE, metrics=("knn",), max_images=20)
    for seed in (1, 3):  # seeds that once left class 0 out
        ranking = ftk.rank_bases((x, y), ["mobilenet_v2", "mobilenet"], seed=seed, **kwargs)
        assert ranking.num_classes == 3 and ranking.images == 20
    folder = tmp_path / "photos"
    for label, count in enumerate((3, 30, 30)):
        for i in range(count):
            path = folder / f"class{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.io.encode_png(x[i]).numpy())
    ranking = ftk.rank_bases(folder, ["mobilenet_v2", "mobilenet"], seed=1, **kwargs)
    assert ranking.num_classes == 3 and ranking.images == 20


def test_the_same_features_score_the_same_wherever_they_stand():
    # Each candidate drew its own folds and resamples: the same base listed twice scored
    # 0.433 and 0.350 by the linear probe, and the list's order could pick the winner.
    x, y = _colour_data()
    base = _hue_base()
    ranking = {row.name: row for row in ftk.rank_bases((x, y), {"first": base, "again": base})}
    first, again = ranking["first"], ranking["again"]
    for metric in ("knn", "logme", "linear"):
        assert first.scores[metric] == again.scores[metric], metric


def test_random_weights_for_a_model_candidate_are_refused():
    x, y = _colour_data()
    base = _hue_base()
    with pytest.raises(ftk.errors.ConfigError, match="'control' None .random weights., but"):
        ftk.rank_bases((x, y), {"mine": base, "control": base}, weights={"control": None})


def test_too_few_images_of_a_folder_class_names_the_class(tmp_path):
    x, _ = _colour_data()
    for name, count in (("alpha", 6), ("beta", 1), ("gamma", 6)):
        for i in range(count):
            path = tmp_path / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.io.encode_png(x[i].astype("uint8")).numpy())
    with pytest.raises(ftk.errors.DataError, match="'beta': 1 .of 13 images"):
        ftk.rank_bases(tmp_path, {"a": _hue_base(), "b": _brightness_base()})


def test_raise_max_images_is_suggested_only_where_it_would_help():
    # A class of one image in all the data was told to raise max_images, which already
    # held every image.
    x, _ = _colour_data()
    y = np.array([1] + [0, 2] * 6 + [1, 1])  # class 1: the first image and the last two
    candidates = {"a": _hue_base(), "b": _brightness_base()}
    with pytest.raises(ftk.errors.DataError) as refused:
        ftk.rank_bases((x[:13], y[:13]), candidates, max_images=12)
    assert "class 1: 1" in str(refused.value) and "max_images" not in str(refused.value)
    # A dataset read up to max_images holds more images of that class further on.
    dataset = tf.data.Dataset.from_tensor_slices((x[:15], y)).batch(4)
    with pytest.raises(ftk.errors.DataError, match="class 1: 1 .*raise max_images"):
        ftk.rank_bases(dataset, candidates, max_images=12)


def test_a_subset_too_small_for_two_images_of_each_class_is_refused():
    # It came out longer than max_images, and the pass cut it short: the last classes
    # were dropped without a word.
    labels = np.repeat(np.arange(5), 10)
    with pytest.raises(ftk.errors.DataError, match="max_images=8 cannot hold 2 images .* 10"):
        selection._balanced(labels, 8, np.random.default_rng(0))


def _luminance_base() -> keras.Model:
    """A grayscale candidate whose pooled features, (luminance, 100), point apart by luminance."""
    inputs = keras.Input((32, 32, 1))
    conv = keras.layers.Conv2D(2, 1, name="luminance")
    outputs = conv(inputs)
    conv.set_weights([np.array([[[[1.0, 0.0]]]], "float32"), np.array([0.0, 100.0], "float32")])
    return keras.Model(inputs, outputs, name="grey")


def test_a_grayscale_candidate_takes_the_luminance_of_rgb_images():
    # It took the RGB images as they were: Keras' raw "incompatible with the layer" error.
    rng = np.random.default_rng(0)
    grey = np.repeat([30.0, 120.0, 220.0], 20)  # one luminance per class
    x = np.broadcast_to(grey[:, None, None, None], (60, 32, 32, 3)).astype("float32")
    x = x + rng.uniform(-3, 3, x.shape).astype("float32")
    y = np.repeat(np.arange(3), 20)
    inputs = keras.Input(SHAPE)
    flat = keras.Model(inputs, keras.layers.Rescaling(0.0)(inputs), name="flat")
    ranking = ftk.rank_bases((x, y), [_luminance_base(), flat], metrics=("knn",), seed=0)
    assert ranking.best.name == "grey" and ranking.best.score == pytest.approx(1.0)
    assert [row.name for row in ranking] == ["grey", "flat"]


def test_a_candidate_of_four_channels_is_refused_with_the_reason():
    x = np.zeros((60, 32, 32, 4), "float32")
    y = np.repeat(np.arange(3), 20)
    inputs = keras.Input((32, 32, 4))
    four = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs), name="four")
    with pytest.raises(ModelStructureError, match="4 channels.*RGB or grayscale"):
        ftk.rank_bases((x, y), [four, _luminance_base()], metrics=("knn",), seed=0)


def test_a_corrupt_file_in_a_ranked_folder_is_named_without_a_keyword_rank_lacks(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (8, *SHAPE)).astype("uint8")
    folder = tmp_path / "photos"
    for i in range(8):
        path = folder / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(x[i]).numpy())
    (folder / "class0" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg") as info:
        ftk.rank_bases(folder, ["mobilenet_v2", "mobilenet"], weights=None, alpha=0.35,
                       input_shape=SHAPE, metrics=("knn",))
    assert "on_bad_image" not in str(info.value)


def test_all_that_from_directory_returns_is_refused_with_the_fix(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (8, *SHAPE)).astype("uint8")
    for i in range(8):
        path = tmp_path / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(x[i]).numpy())
    folder = ftk.data.from_directory(tmp_path, image_size=SHAPE[0])
    with pytest.raises(ftk.errors.ArgumentTypeError, match="Pass the folder's path itself"):
        ftk.rank_bases(folder, ["mobilenet_v2", "mobilenet"], weights=None, alpha=0.35)
