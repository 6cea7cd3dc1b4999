"""The `finetunekit` command: exit codes, one-line errors, train, bases, version."""

from __future__ import annotations

import argparse
import logging
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
from finetunekit.cli import build_parser, main

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


def test_another_keras_backend_is_named_before_keras_loads_it(tmp_path):
    # in fresh processes: this one's Keras is loaded on TensorFlow
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    env = {**os.environ, "KERAS_HOME": str(tmp_path)}
    env.pop("KERAS_BACKEND", None)
    command = [sys.executable, "-m", "finetunekit", "bases", "mobilenet_v2"]
    ran = subprocess.run(command, env=env, capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.split() == ["mobilenet_v2"]  # its own process
    code = (
        "import finetunekit as f\ntry:\n    f.FineTuner\n"
        "except f.FinetuneKitError as e:\n    print(e)"
    )
    for setting in ({"KERAS_BACKEND": "jax"}, {}):  # the variable, else keras.json
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **setting}, capture_output=True, text=True
        )
        assert "runs on Keras' TensorFlow backend" in out.stdout
        assert ("KERAS_BACKEND is 'jax'" if setting else "keras.json is 'jax'") in out.stdout


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
        (["train", "d", "--unfreeze", "2,1"], "expected increasing positive integers"),
        (["train", "d", "--unfreeze", "1,x"], "or increasing integers such as 1,2,4"),
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
    assert "circle/bad.jpg" in line and "--on-bad-image skip" in line


def test_train_with_a_missing_weights_file(capsys, tmp_path):
    root = shapes_folder(tmp_path / "data", per_class=2)
    argv = ["train", str(root), "--weights", str(tmp_path / "nope.h5"), "--image-size", "32"]
    assert main(argv + ["--alpha", "0.35", "--validation-split", "0"]) == 1
    assert "nope.h5': no such file" in _one_error_line(capsys.readouterr().err)


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
        "--plots",
        str(tmp_path / "plots"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("history.png", "confusion.png", "top_losses.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert finetunekit.load(out).class_names == ("circle", "plus")  # classes travel with it
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


def _run_python(code: str | list[str], env_extra: dict[str, str] | None = None, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GRPC"))}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *code] if isinstance(code, list) else [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
        **kwargs,
    )


def test_python_m_finetunekit_bases():
    completed = _run_python(["-m", "finetunekit", "bases", "mobilenet*"])
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == [
        "mobilenet",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
    ]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_tensorflow(flag):
    code = (
        "import sys\n"
        "from finetunekit.cli import main\n"
        f"status = main([{flag!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print('STATUS', status, 'HEAVY', heavy)\n"
    )
    completed = _run_python(code)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "STATUS 0 HEAVY []"
    assert completed.stderr == ""


def test_the_package_is_lazy_but_every_name_is_there():
    code = (
        "import sys\n"
        "import finetunekit as ftk\n"
        "print('tensorflow' in sys.modules, sorted(set(ftk.__all__) - set(dir(ftk))))\n"
        "print(ftk.FineTuner.__module__, ftk.data.__name__, ftk.load_base.__module__)\n"
        "from finetunekit import unfreeze_last, datasets\n"
        "print(unfreeze_last.__module__, datasets.__name__)\n"
        "try:\n"
        "    ftk.no_such_name\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n"
    )
    completed = _run_python(code, {"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        "False []",
        "finetunekit.finetuner finetunekit.data finetunekit.bases",
        "finetunekit.freezing finetunekit.datasets",
        "module 'finetunekit' has no attribute 'no_such_name'",
    ]


def test_tensorflow_start_up_lines_stay_off_stderr_unless_verbose():
    quiet = _run_python(["-m", "finetunekit", "bases", "mobilenet_v2"])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["mobilenet_v2"]
    assert quiet.stderr == ""
    loud = _run_python(["-m", "finetunekit", "bases", "mobilenet_v2", "--verbose"])
    assert loud.returncode == 0 and loud.stdout.split() == ["mobilenet_v2"]
    # This TensorFlow build announces oneDNN / CUDA / absl while it loads.
    assert any(word in loud.stderr for word in ("oneDNN", "cuda", "absl")), loud.stderr


def test_python_warnings_during_the_quiet_import_still_show(tmp_path):
    # A stand-in for keras that writes to file descriptor 2 (as TF's C++ code does) and
    # raises a Python warning: the first is silenced, the second shown.
    (tmp_path / "keras.py").write_text(
        "import os, warnings\n"
        "os.write(2, b'C++ start-up noise\\n')\n"
        "warnings.warn('a real warning from the import')\n"
    )
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from finetunekit.cli import _import_tensorflow\n"
        "_import_tensorflow(verbose=False)\n"
        "import os; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
    )
    completed = _run_python(code)
    assert completed.returncode == 0, completed.stderr
    assert "C++ start-up noise" not in completed.stderr
    assert "UserWarning: a real warning from the import" in completed.stderr
    assert completed.stdout.strip() == "3"


@pytest.fixture
def no_training(monkeypatch):
    from finetunekit.finetuner import FineTuner

    def refuse(*args, **kwargs):
        raise AssertionError("training started although an argument was bad")

    monkeypatch.setattr(FineTuner, "fit", refuse)


@pytest.mark.parametrize(
    "out, expected",
    [
        ("model.h5", "--out 'OUT/model.h5': the model is saved as a Keras 3 '.keras' file"),
        ("missing/model.keras", "--out 'OUT/missing/model.keras': no folder 'OUT/missing'"),
        ("folder.keras", "--out 'OUT/folder.keras' is a folder"),
    ],
)
def test_out_is_checked_before_training(capsys, tmp_path, no_training, out, expected):
    root = shapes_folder(tmp_path / "data", per_class=2)
    target = str(tmp_path / out)
    if out == "folder.keras":
        (tmp_path / out).mkdir()
    argv = ["train", str(root), "--weights", "none", "--image-size", "32", "--out", target]
    assert main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert expected.replace("OUT", str(tmp_path)) in line


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--validation-split", "1"], "--validation-split must be in [0, 1)"),
        (["--head-lr", "0"], "--head-lr must be a positive number"),
        (["--weights", "nope.h5"], "--weights 'nope.h5': no such file"),
        (["--lr-decay", "0"], "--lr-decay must be a factor in (0, 1]"),
        (["--finetune-epochs", "2", "--warmup", "2"], "--warmup 2 epochs is not shorter"),
        (["--finetune-lr", "0"], "--finetune-lr must be a positive number"),
        (["--finetune-lr", "inf"], "error: --finetune-lr must be a positive number"),
        (["--seed", "-1"], "--seed: expected an integer >= 0"),
        (["--augment-views", "0"], "--augment-views: expected a positive integer or 'auto'"),
        (["--augment", "heavy"], "--augment: invalid choice: 'heavy'"),
        (["--base-arg", "weights=None"], "use --weights instead"),
        (["--base-arg", "input_shape=(32, 32, 3)"], "use --image-size instead"),
    ],
)
def test_other_arguments_are_checked_before_training(
    capsys, tmp_path, no_training, extra, expected
):
    root = shapes_folder(tmp_path / "data", per_class=2)
    usage = extra[0] in ("--seed", "--augment-views", "--augment")  # argparse's: usage errors
    assert main(["train", str(root), "--weights", "none", *extra]) == (2 if usage else 1)
    assert expected in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "library, command",
    [
        (
            "received input_shape=(16, 16, 3). Resize your images, e.g. input_shape=(96, 96, 3).",
            "received --image-size 16. Resize your images, e.g. --image-size 96.",
        ),
        (
            "or pass weights=PATH to a copy of it, or weights=None to start from random weights.",
            "or pass --weights PATH to a copy of it, or --weights none to start from random "
            "weights.",
        ),
        (
            "Check the spelling of the keyword arguments you passed to load_base.",
            "Check the spelling of --alpha and --base-arg KEY=VALUE.",
        ),
        ("save() writes a Keras 3 '.keras' file", "--out must name a Keras 3 '.keras' file"),
        ("See finetunekit.list_bases() for every name.", "See 'finetunekit bases' for every name."),
        (
            "or pass on_bad_image='skip' to leave it out",
            "or pass --on-bad-image skip to leave it out",
        ),
        ("batch_size=32 is larger than", "--batch-size 32 is larger than"),
        (
            "n=100 but the base 'b' has only 19 blocks; use n <= 19 (see "
            "finetunekit.structure.blocks(model)).",
            "--unfreeze 100 but the base 'b' has only 19 blocks; use --unfreeze <= 19.",
        ),
        (
            "n=60 but the base 'b' has only 52 layers with weights. Use n <= 52, or "
            "freeze(model) then train the whole base.",
            "--unfreeze 60 but the base 'b' has only 52 layers with weights. Use "
            "--unfreeze <= 52.",
        ),
    ],
)
def test_library_words_become_flags(library, command):
    from finetunekit.cli import _in_flag_words

    assert _in_flag_words(library, None) == command


def test_log_lines_are_printed_once_when_absl_logs(capsys, monkeypatch):
    import logging

    from absl import logging as absl_logging

    from finetunekit.cli import _logging_to_stderr

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process
    with _logging_to_stderr(quiet=False):
        absl_logging.info("what TensorFlow logs while exporting")  # calls basicConfig
        logging.getLogger("finetunekit").info("exported litert")
        logging.getLogger("another.library").warning("a warning of its own")
    err = capsys.readouterr().err
    assert err.count("exported litert") == 1, err
    assert "finetunekit: exported litert" in err
    assert err.count("a warning of its own") == 1, err  # other libraries' warnings still show
    assert not logging.getLogger().handlers  # the root logger as it was


def test_log_lines_name_the_commands_flags(capsys):
    import logging

    from finetunekit.cli import _logging_to_stderr

    with _logging_to_stderr(quiet=False):
        logging.getLogger("finetunekit").warning(
            "fit interrupted after 4 epochs: the model holds the best weights so far; run the "
            "same fit with checkpoint_dir='runs/x' to resume after epoch 4"
        )
        logging.getLogger("finetunekit").warning(
            "pass checkpoint_dir=... to fit to make a run resumable after a stop"
        )
    err = capsys.readouterr().err
    assert "run the same command with --checkpoint-dir 'runs/x' to resume" in err, err
    assert "pass --checkpoint-dir DIR to make a run resumable" in err, err
    assert "checkpoint_dir" not in err


def test_rank_names_weights_inside_its_candidate_flag():
    import argparse

    from finetunekit.cli import _in_flag_words

    library = "or pass weights=PATH to a copy of it, or weights=None to start from random weights."
    rank = argparse.Namespace(command="rank")
    assert _in_flag_words(library, rank) == (
        "or pass --candidate NAME=PATH to a copy of it, or --candidate NAME=none to start "
        "from random weights."
    )  # rank has no --weights: its usage error would be all the user got


def test_a_weights_file_named_for_alpha_035_hints_at_the_flag(capsys, tmp_path, weights_035):
    root = shapes_folder(tmp_path / "data", per_class=2)
    argv = ["train", str(root), "--weights", str(weights_035), "--image-size", "96"]
    assert main(argv + ["--validation-split", "0"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "do not fit" in line and line.endswith(
        "The file name says alpha 0.35: pass --alpha 0.35."
    )


@pytest.mark.parametrize("command", ["train", "bases", "demo"])
def test_help_shows_the_default_of_every_option(command):
    from finetunekit.cli import _HelpFormatter

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    formatter = _HelpFormatter(prog="finetunekit")
    for action in sub.choices[command]._actions:
        if not action.option_strings or action.nargs == 0:  # positional, or a switch
            continue
        text = formatter._get_help_string(action) or ""
        assert "default" in text, (action.option_strings, text)
    batch = next(a for a in sub.choices["train"]._actions if "--batch-size" in a.option_strings)
    assert batch.help and "(default: %(default)s)" in formatter._get_help_string(batch)


def test_bases_details_names_the_weight_file_keras_looks_for(capsys):
    assert main(["bases", "mobilenet_v2", "--details", "--alpha", "0.35"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["name", "size", "parameters", "preprocessing"]
    assert row.split() == [
        "mobilenet_v2",
        "224",
        "410,208",
        "tf",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
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


def test_rank_tells_two_files_of_one_name_apart(capsys, tmp_path):
    # r1/m.keras and r2/m.keras were refused as "the same --candidate given twice".
    root = shapes_folder(tmp_path / "data")
    paths = []
    for folder, alpha in (("r1", 0.25), ("r2", 0.5)):
        shape = (32, 32, 3)
        base = finetunekit.load_base("mobilenet", weights=None, input_shape=shape, alpha=alpha)
        (tmp_path / folder).mkdir()
        base.save(tmp_path / folder / "m.keras")
        paths.append(str(tmp_path / folder / "m.keras"))
    argv = ["rank", str(root), "--candidate", paths[0], "--candidate", paths[1]]
    assert main(argv) == 0
    names = {line.split()[1] for line in capsys.readouterr().out.splitlines()[1:3]}
    assert names == set(paths)


def test_rank_keeps_two_weights_files_of_one_name(tmp_path, monkeypatch):
    # Both showed as mobilenet_v2=w.h5, and one of them was dropped without a word.
    seen = {}

    def rank_bases(data, candidates, *, weights, **kwargs):
        seen.update(candidates=candidates, weights=weights)
        raise SystemExit(0)

    monkeypatch.setattr("finetunekit.selection.rank_bases", rank_bases)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "w.h5").write_bytes(b"")
    first, second = str(tmp_path / "a" / "w.h5"), str(tmp_path / "b" / "w.h5")
    argv = ["rank", str(tmp_path), "--candidate", f"mobilenet_v2={first}",
            "--candidate", f"mobilenet_v2={second}"]
    assert main(argv) == 0
    assert sorted(seen["weights"].values()) == sorted([first, second])
    assert len(seen["candidates"]) == 2


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


def test_train_without_a_validation_split_holds_nothing_out(capsys, tmp_path):
    # "--validation-split 0: none" once still held out fit's own 20 % for early stopping.
    root = shapes_folder(tmp_path / "data", per_class=4)
    argv = ["train", str(root), "--weights", "none", "--alpha", "0.35", "--image-size", "32",
            "--head-epochs", "1", "--finetune-epochs", "1", "--batch-size", "4",
            "--validation-split", "0", "--out", str(tmp_path / "m.keras")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "held out" not in err and "cached 8 examples, features" in err, err  # all 8 train


def test_train_checkpoints_and_resume(capsys, tmp_path, caplog):
    root = shapes_folder(tmp_path / "data", per_class=4)
    folder, out = tmp_path / "ckpt", tmp_path / "m.keras"
    argv = ["train", str(root), "--weights", "none", "--alpha", "0.35", "--image-size", "32",
            "--head-epochs", "1", "--finetune-epochs", "1", "--batch-size", "4",
            "--validation-split", "0", "--out", str(out)]
    assert main([*argv, "--resume"]) == 1  # --resume names the folder to resume
    assert "--resume needs --checkpoint-dir DIR" in _one_error_line(capsys.readouterr().err)
    assert main([*argv, "--checkpoint-dir", str(folder), "--resume"]) == 1
    message = _one_error_line(capsys.readouterr().err)
    assert "--resume, but" in message and "holds no checkpoint" in message
    assert "drop --resume" in message
    assert main([*argv, "--checkpoint-dir", str(folder)]) == 0
    assert (folder / "checkpoint.npz").is_file() and out.is_file()
    first = keras.models.load_model(out).get_weights()
    out.unlink()
    # The same command again: the run had finished, so its result is saved, untrained.
    assert main([*argv, "--checkpoint-dir", str(folder), "--resume"]) == 0
    assert "holds a finished run (2 epochs)" in capsys.readouterr().err
    for a, b in zip(first, keras.models.load_model(out).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Another recipe with the same folder is refused, naming both values.
    assert main([*argv, "--checkpoint-dir", str(folder), "--head-epochs", "2"]) == 1
    message = _one_error_line(capsys.readouterr().err)
    assert "--head-epochs: stored 1, asked 2" in message and "new --checkpoint-dir" in message


def test_train_unfreezes_gradually_with_per_block_rates_and_a_found_rate(capsys, tmp_path):
    root = shapes_folder(tmp_path / "data")
    out = tmp_path / "model.keras"
    argv = [
        "train", str(root), "--weights", "none", "--alpha", "0.35", "--image-size", "32",
        "--head-epochs", "1", "--finetune-epochs", "1", "--unfreeze", "1,2", "--lr-decay",
        "0.5", "--warmup", "0.5", "--cosine", "--find-lr", "--batch-size", "4",
        "--validation-split", "0.25", "--out", str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "epochs per phase: head 1 of 1, finetune-1 1 of 1, finetune-2 1 of 1" in printed
    recipe = finetunekit.load(out).info.recipe
    assert recipe["unfreeze"] == [1, 2] and recipe["lr_decay"] == 0.5
    assert recipe["warmup"] == 0.5 and recipe["cosine"] is True
    assert recipe["head_learning_rate"] != finetunekit.DEFAULTS.head_learning_rate
    assert isinstance(keras.models.load_model(out).optimizer, keras.optimizers.MultiOptimizer)


def test_train_with_augmented_views(capsys, tmp_path, caplog):
    root = shapes_folder(tmp_path / "data")
    out = tmp_path / "model.keras"
    argv = [
        "train", str(root), "--weights", "none", "--alpha", "0.35", "--image-size", "32",
        "--head-epochs", "1", "--finetune-epochs", "1", "--unfreeze", "1", "--batch-size", "4",
        "--validation-split", "0.25", "--augment", "default", "--augment-views", "2",
        "--out", str(out),
    ]
    with caplog.at_level(logging.INFO, logger="finetunekit"):
        assert main(argv) == 0
    assert finetunekit.load(out).info.recipe["augment_views"] == 2
    cached = [r.getMessage() for r in caplog.records if "augmented views" in r.getMessage()]
    assert any("x 2 augmented views" in line for line in cached), cached


def test_a_ctrl_c_keeps_the_model_beside_out(capsys, tmp_path, monkeypatch):
    # The process exited with the trained weights: the log said "the model holds the best
    # weights so far", and nothing was saved.
    from finetunekit.finetuner import FineTuner

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    fit = FineTuner.fit
    def interrupted_fit(self, *args, **kwargs):
        return fit(self, *args, callbacks=[CtrlC()], **kwargs)

    monkeypatch.setattr(FineTuner, "fit", interrupted_fit)
    root = shapes_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "m.keras"
    argv = ["train", str(root), "--weights", "none", "--alpha", "0.35", "--image-size", "32",
            "--head-epochs", "3", "--finetune-epochs", "1", "--batch-size", "4",
            "--validation-split", "0", "--out", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    kept = tmp_path / "m.interrupted.keras"
    assert not out.exists() and kept.is_file()
    assert f"(1 epoch finished) to {kept}; the run did not finish" in err
    classifier = finetunekit.load(kept)
    assert classifier.class_names == ("circle", "plus")
