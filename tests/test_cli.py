"""The `finetunekit` command: exit codes, one-line errors, train, bases, version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetunekit
from finetunekit import datasets
from finetunekit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("finetunekit: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def shapes_folder(root: Path, per_class: int = 6, size: int = 32) -> Path:
    x, y, names = datasets.shapes(per_class, image_size=size, classes=("circle", "plus"), seed=0)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        path = root / names[label] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())
    return root


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"finetunekit {finetunekit.__version__}"


def test_bases_lists_matching_names(capsys):
    assert main(["bases", "mobilenet*"]) == 0
    assert capsys.readouterr().out.split() == finetunekit.list_bases("mobilenet*")


def test_bases_without_a_match_is_an_error(capsys):
    assert main(["bases", "nosuchnet*"]) == 1
    captured = capsys.readouterr()
    assert "no base matches 'nosuchnet*'" in _one_error_line(captured.err)
    assert captured.out == ""


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "arguments are required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["train"], "arguments are required: DATA_DIR (see 'finetunekit train --help')"),
        (["train", "d", "--head-epochs", "-1"], "--head-epochs: expected an integer >= 0"),
        (["train", "d", "--base-arg", "alpha"], "expected KEY=VALUE"),
        (["train", "d", "--unit", "row"], "invalid choice: 'row'"),
    ],
)
def test_usage_errors_print_one_line_and_exit_2(capsys, argv, expected):
    assert main(argv) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_train_on_a_missing_folder(capsys, tmp_path):
    assert main(["train", str(tmp_path / "missing"), "--weights", "none"]) == 1
    assert "No image folder at" in _one_error_line(capsys.readouterr().err)


def test_train_names_a_corrupt_file(capsys, tmp_path):
    root = shapes_folder(tmp_path / "data", per_class=2)
    (root / "circle" / "bad.jpg").write_bytes(os.urandom(64))
    assert main(["train", str(root), "--weights", "none", "--image-size", "32"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "circle/bad.jpg" in line and "on_bad_image='skip'" in line


def test_train_with_a_missing_weights_file(capsys, tmp_path):
    root = shapes_folder(tmp_path / "data", per_class=2)
    argv = ["train", str(root), "--weights", str(tmp_path / "nope.h5"), "--image-size", "32"]
    assert main(argv + ["--alpha", "0.35", "--validation-split", "0"]) == 1
    assert "No weights file at" in _one_error_line(capsys.readouterr().err)


def test_train_fits_both_phases_and_saves_a_raw_pixel_model(capsys, tmp_path):
    root = shapes_folder(tmp_path / "data")
    out = tmp_path / "model.keras"
    argv = [
        "train",
        str(root),
        "--base",
        "mobilenet_v2",
        "--weights",
        "none",
        "--alpha",
        "0.35",
        "--image-size",
        "32",
        "--head-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--unfreeze",
        "1",
        "--batch-size",
        "4",
        "--validation-split",
        "0.25",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Trained mobilenet_v2 on 2 classes (circle, plus): 9 training, 3 validation" in printed
    assert "epochs per phase: head 1 of 1, finetune 1 of 1" in printed
    assert "validation accuracy: last epoch" in printed
    assert f"saved: {out}" in printed
    model = keras.models.load_model(out)
    assert model.predict(np.full((1, 32, 32, 3), 200.0), verbose=0).shape == (1, 2)


def test_base_arg_reaches_the_constructor(capsys, tmp_path):
    root = shapes_folder(tmp_path / "data", per_class=2)
    argv = ["train", str(root), "--weights", "none", "--image-size", "32"]
    assert main(argv + ["--base-arg", "no_such_argument=1", "--validation-split", "0"]) == 1
    assert "no_such_argument" in _one_error_line(capsys.readouterr().err)


def test_python_m_finetunekit_bases():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [sys.executable, "-m", "finetunekit", "bases", "mobilenet*"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == [
        "mobilenet",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
    ]


# -- rank -----------------------------------------------------------------------------------


def test_rank_prints_the_table(capsys, tmp_path):
    root = shapes_folder(tmp_path / "data")
    argv = ["rank", str(root), "--candidate", "mobilenet_v2=none", "--candidate", "mobilenet=none"]
    assert main(argv + ["--image-size", "32", "--alpha", "0.35", "--seed", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["#", "base", "knn", "logme", "linear"]
    assert {line.split()[1] for line in lines[1:3]} == {"mobilenet_v2=random", "mobilenet=random"}
    assert "on 12 images of 2 classes" in lines[-1]


@pytest.mark.parametrize(
    "candidates, expected",
    [
        (["mobilenet_v5=none", "mobilenet=none"], "Did you mean 'mobilenet_v2'"),
        (["mobilenet=none"], "needs at least two"),
        (["mobilenet=none", "mobilenet=none"], "the same --candidate is given twice"),
    ],
)
def test_rank_rejects_bad_candidates_in_one_line(capsys, tmp_path, candidates, expected):
    root = shapes_folder(tmp_path / "data", per_class=2)
    argv = ["rank", str(root), "--image-size", "32"]
    for candidate in candidates:
        argv += ["--candidate", candidate]
    assert main(argv) == 1
    assert expected in _one_error_line(capsys.readouterr().err)


def test_rank_usage_errors(capsys, tmp_path):
    assert main(["rank", str(tmp_path), "--candidate", "mobilenet="]) == 2
    assert "expected NAME or NAME=WEIGHTS" in _one_error_line(capsys.readouterr().err)
    assert main(["rank", str(tmp_path / "missing"), "--candidate", "a", "--candidate", "b"]) == 1
    assert "no such folder" in _one_error_line(capsys.readouterr().err)
