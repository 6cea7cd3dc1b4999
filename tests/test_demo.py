"""`finetunekit demo`: the quick shapes run shows the advantages as numbers; plot; CLI wiring."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from finetunekit import datasets, demo, structure
from finetunekit.cli import main
from finetunekit.finetuner import FineTuneHistory

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> demo.DemoResult:
    return demo.run_demo(quick=True, out_dir=tmp_path_factory.mktemp("demo"), echo=None)


def test_fine_tuning_beats_training_from_scratch(quick_demo):
    scratch = quick_demo.run("from scratch")
    head = quick_demo.run("head only")
    tuned = quick_demo.run("full fine-tune")
    assert tuned.test_accuracy > scratch.test_accuracy + 0.2
    assert head.test_accuracy > scratch.test_accuracy + 0.2
    assert tuned.epochs_to_target is not None
    assert scratch.epochs_to_target is None or tuned.epochs_to_target < scratch.epochs_to_target
    assert "finetune" in tuned.phases and "finetune" not in head.phases
    for run in quick_demo.runs:
        assert 1 <= run.best_epoch <= run.epochs_run <= run.max_epochs
    # The source task was learned, well above chance (1/6).
    assert quick_demo.source_accuracy is not None and quick_demo.source_accuracy > 0.3


def test_the_printed_table_and_conclusions(quick_demo):
    text = str(quick_demo)
    header, rule, *rows = quick_demo.table().splitlines()
    assert "test acc" in header and "epochs to 60% val acc" in header and "epochs run/max" in header
    assert set(rule) <= {"-", " "}
    assert [row.split("  ")[0] for row in rows] == ["from scratch", "head only", "full fine-tune"]
    assert "frame, cross, star, checker, dots, crescent" in text
    conclusions = quick_demo.conclusions()
    assert conclusions[0] == quick_demo.winner()
    assert conclusions[1].startswith("improved performance: ")  # not "(not shown in this run)"
    assert conclusions[2].startswith("faster convergence: ")
    # Neither run reaching the target reads as a sentence ("after never fine-tuned" once).
    never = dataclasses.replace(
        quick_demo,
        runs=tuple(dataclasses.replace(r, epochs_to_target=None) for r in quick_demo.runs),
    )
    assert never.conclusions()[2].endswith(
        "validation accuracy reached fine-tuned never, from scratch never."
    )
    assert "early stopping" in conclusions[4] and "saved" in conclusions[4]
    assert not any(line.startswith("time cap") for line in conclusions)  # shapes: epochs only
    # A run the time cap ended is not counted as saved by early stopping.
    runs = quick_demo.runs
    capped = dataclasses.replace(runs[0], epochs_run=1, stopped_by_time=True, time_limit=2.0)
    cut = dataclasses.replace(quick_demo, runs=(capped, *runs[1:]))
    early = sum(r.max_epochs - r.epochs_run for r in runs[1:])
    assert f"saved {early} epochs: {capped.method} 1 of {capped.max_epochs} epochs (time cap);" \
        in cut.conclusions()[4]
    with pytest.raises(KeyError):
        quick_demo.run("transfer magic")


def test_the_pretrained_base_is_saved_with_readable_blocks(quick_demo):
    assert quick_demo.base_path is not None and quick_demo.base_path.exists()
    base = keras.models.load_model(quick_demo.base_path)
    assert [b.name for b in structure.blocks(base)] == ["block1", "block2", "block3", "block4"]


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib not installed (the plot extra)")
def test_the_plot_is_written(quick_demo):
    assert quick_demo.plot_path is not None
    assert quick_demo.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_plot_is_skipped_with_a_note(quick_demo, monkeypatch, tmp_path):
    tuned = quick_demo.run("full fine-tune")
    history = FineTuneHistory()
    history.history = {k: list(v) for k, v in tuned.history.items()}
    history.phases = list(tuned.phases)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    notes: list[str] = []
    assert demo._plot_or_note(history, tmp_path, scratch=None, notes=notes) is None
    assert notes == ["plot skipped: matplotlib is not installed (pip install 'finetunekit[plot]')."]
    assert not (tmp_path / "history.png").exists()


def test_cli_demo_prints_the_result(quick_demo, monkeypatch, capsys, tmp_path):
    calls = []

    def fake_run_demo(**kwargs):
        calls.append(kwargs)
        return quick_demo

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert quick_demo.table() in printed
    assert calls[0]["quick"] is True and calls[0]["seed"] == 3 and calls[0]["data"] is None


def test_cli_demo_with_a_missing_data_folder(capsys, tmp_path):
    assert main(["demo", "--data", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("finetunekit: error: --data") and "Traceback" not in err


def test_demo_on_an_image_folder_with_a_saved_base(quick_demo, tmp_path):
    x, y, names = datasets.shapes(8, image_size=32, classes=("ring", "star"), seed=0)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        path = tmp_path / "data" / names[label] / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())
    result = demo.run_demo(
        data=tmp_path / "data",
        test_data=tmp_path / "data",
        base=str(quick_demo.base_path),  # image size read from the saved model
        weights=None,
        head_epochs=1,
        finetune_epochs=1,
        scratch_seconds=1e-6,  # ends after its first epoch
        out_dir=tmp_path / "out",
        echo=None,
    )
    assert [r.method for r in result.runs] == ["from scratch", "head only", "full fine-tune"]
    assert result.run("full fine-tune").phases == ("head", "finetune")
    scratch = result.run("from scratch")
    assert scratch.max_epochs == 2 and scratch.epochs_run == 1
    assert scratch.stopped_by_time and scratch.time_limit == 1e-6
    assert not result.run("head only").stopped_by_time
    assert result.table().splitlines()[2].split("  ")[0] == "from scratch"
    assert "1/2 (time cap)" in result.table().splitlines()[2]
    assert result.conclusions()[-1] == (
        "time cap: from scratch stopped at its limit of 0.0 s of training after 1 of 2 "
        f"epochs ({scratch.seconds:.0f} s in the table with building, validating and "
        "scoring); its accuracy is what that time bought."
    )  # the table's time is the whole run's: the two figures differ and say why
    assert "2 classes (ring, star)" in result.task and "13 training and 3 validation" in result.task
    assert "at 32x32" in result.task
    assert result.base_path is None and result.source_accuracy is None
    if HAS_MATPLOTLIB:
        assert result.plot_path == Path(tmp_path / "out" / "history.png")


def _run(method: str, accuracy: float) -> demo.RunResult:
    return demo.RunResult(method, accuracy, 1.0, None, 3, 5, 3, 1.0, {}, ("head",) * 3)


def test_the_summary_says_which_method_won():
    # The flowers run that read "improved performance" while head only had won.
    result = demo.DemoResult(
        "task",
        0.6,
        (_run("from scratch", 0.236), _run("head only", 0.773), _run("full fine-tune", 0.753)),
        None,
    )
    assert result.winner() == (
        "best on the test images: head only, 0.773; full fine-tune 0.753 (-2.0 points), "
        "from scratch 0.236 (-53.7 points)."
    )
    assert str(result).splitlines()[8] == "- " + result.winner()  # first line under the table
    tie = demo.DemoResult(
        "task",
        0.6,
        (_run("from scratch", 0.2), _run("head only", 0.8), _run("full fine-tune", 0.8)),
        None,
    )
    assert tie.winner() == (
        "tie on the test images: head only and full fine-tune 0.800; from scratch 0.200 "
        "(-60.0 points)."
    )


def test_cli_demo_passes_the_scratch_time_limit(quick_demo, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: calls.append(kwargs) or quick_demo)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert main(["demo", "--quick", "--out", str(tmp_path), "--scratch-seconds", "30"]) == 0
    assert calls[0]["scratch_seconds"] is None and calls[1]["scratch_seconds"] == 30.0
