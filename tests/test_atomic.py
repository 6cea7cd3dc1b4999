"""Saving never destroys what was there: save, save_model and export write beside, then rename."""

from __future__ import annotations

import logging
import zipfile

import keras
import pytest
from _colors import COLOURS, colour_model

import finetunekit as ftk
from finetunekit._atomic import check_writable, write_beside


def _broken(*args, **kwargs):
    raise OSError("No space left on device")


def test_write_beside_replaces_only_when_the_write_finished(tmp_path, caplog):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), write_beside(target) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".a.") and temp.suffix == ".txt"
        temp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with caplog.at_level(logging.INFO, logger="finetunekit"), write_beside(target) as temp:
        temp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert "replaced the existing" in caplog.text


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "served"
    target.mkdir()
    (target / "old.txt").write_text("previous")
    with pytest.raises(OSError), write_beside(target, folder=True) as temp:
        temp.mkdir()
        (temp / "part").write_text("x")
        _broken()
    assert (target / "old.txt").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["served"]


def test_tuner_save_over_a_file_keeps_it_when_the_writer_fails(tmp_path, monkeypatch, caplog):
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    tuner.load_base().add_head()
    target = tmp_path / "m.keras"
    tuner.save(target)
    before = target.read_bytes()
    monkeypatch.setattr(tuner.model, "save", _broken)
    with pytest.raises(OSError, match="No space left"):
        tuner.save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="finetunekit"):
        tuner.save(target)
    assert "replaced the existing" in caplog.text
    assert keras.models.load_model(target).count_params() == tuner.model.count_params()


def test_a_save_killed_inside_the_zip_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = ftk.save_model(colour_model(), tmp_path / "m.keras", class_names=COLOURS)
    before = target.read_bytes()
    monkeypatch.setattr(zipfile.ZipFile, "writestr", _broken)  # fails after Keras wrote
    with pytest.raises(OSError):
        ftk.save_model(colour_model(), target, class_names=COLOURS)
    assert target.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    written = ftk.save_model(colour_model(), "~/m.keras", class_names=COLOURS)
    assert written == tmp_path / "home" / "m.keras" and written.is_file()
    report = ftk.export(colour_model(), "~/m.tflite")
    assert report.path == tmp_path / "home" / "m.tflite" and report.path.is_file()
    assert not (tmp_path / "~").exists()
    # What was saved to "~/..." loads from "~/...", and evaluates and exports from it.
    assert ftk.load("~/m.keras").class_names == tuple(COLOURS)
    assert ftk.export("~/m.keras", "~/again.tflite").path == tmp_path / "home" / "again.tflite"


def test_written_files_get_the_permissions_open_gives(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        saved = ftk.save_model(colour_model(), tmp_path / "m.keras", class_names=COLOURS)
        assert stat.S_IMODE(saved.stat().st_mode) == 0o644  # not mkstemp's owner-only 0o600
        saved.chmod(0o640)  # an existing file keeps its own
        ftk.save_model(colour_model(), saved, class_names=COLOURS)
        assert stat.S_IMODE(saved.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_an_unwritable_target_fails_before_the_writer_runs(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    ran = []
    with pytest.raises(ftk.errors.OutputPathError, match="notes.txt' is a file, not a folder"):
        with write_beside(tmp_path / "notes.txt" / "m.keras"):
            ran.append(True)
    assert not ran
    # A folder where the file is to go: named, with a file name to use instead.
    (tmp_path / "model.keras").mkdir()
    with pytest.raises(ftk.errors.OutputPathError, match="is a folder; pass the name of a file"):
        with write_beside(tmp_path / "model.keras"):
            ran.append(True)
    assert not ran and (tmp_path / "model.keras").is_dir()


def test_checking_a_path_makes_its_folders_and_leaves_no_file(tmp_path):
    check_writable(tmp_path / "a" / "b" / "m.keras", "path")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
    with write_beside(tmp_path / "c" / "m.txt") as temp:  # folders made for the write
        temp.write_text("x")
    assert (tmp_path / "c" / "m.txt").read_text() == "x"


def test_a_plot_goes_into_a_folder_that_does_not_exist_yet(tmp_path):
    pytest.importorskip("matplotlib")
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}
    path = ftk.plot_history(history, tmp_path / "plots" / "history.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_an_unwritable_checkpoint_dir_fails_before_training(tmp_path):
    import numpy as np

    (tmp_path / "notes.txt").write_text("a file")
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    x = np.random.default_rng(0).uniform(0, 255, (12, 32, 32, 3)).astype("float32")
    with pytest.raises(ftk.errors.CheckpointError, match="checkpoint_dir: cannot write"):
        tuner.fit(x, np.arange(12) % 3, checkpoint_dir=tmp_path / "notes.txt" / "run")
    assert tuner.history is None and tuner.base is None  # nothing built, nothing trained


def test_a_stricter_umask_is_followed_and_left_as_it_was(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        saved = ftk.save_model(colour_model(), tmp_path / "m.keras", class_names=COLOURS)
        assert stat.S_IMODE(saved.stat().st_mode) == 0o640
        assert os.umask(0o027) == 0o027  # still the process's own
    finally:
        os.umask(old)
