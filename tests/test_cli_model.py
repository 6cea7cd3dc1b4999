"""`finetunekit predict`, `evaluate` and `export` on a saved model."""

from __future__ import annotations

import csv

import pytest
from _colors import COLOURS, colour_folder, colour_model

import finetunekit as ftk
from finetunekit.cli import main


@pytest.fixture
def saved(tmp_path):
    return ftk.save_model(colour_model(), tmp_path / "colours.keras", class_names=COLOURS)


@pytest.fixture
def folder(tmp_path):
    return colour_folder(
        tmp_path / "test", {"blue": ["blue"], "green": ["green"], "red": ["red", "green"]}
    )


def _error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("finetunekit: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_predict_a_folder_with_top_k_and_csv(saved, folder, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["-q", "predict", str(saved), str(folder), "--top", "2", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "red/0_red.png" in printed and "red 1.000" in printed
    rows = list(csv.reader(out.open()))
    assert len(rows) == 5 and rows[0][:3] == ["image", "class_1", "p_1"]
    assert {row[0].split("/")[-1]: row[1] for row in rows[1:]}["1_green.png"] == "green"


def test_predict_image_files(saved, folder, capsys):
    files = [str(folder / "blue" / "0_blue.png"), str(folder / "red" / "0_red.png")]
    assert main(["predict", str(saved), *files]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[1] for line in lines] == ["blue", "red"]


def test_evaluate_prints_the_table_and_writes_plots(saved, folder, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert main(["-q", "evaluate", str(saved), str(folder), "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy 0.750" in printed and "red/1_green.png" in printed
    assert (plots / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (plots / "top_losses.png").read_bytes()[:4] == b"\x89PNG"


def test_export_int8_with_calibration(saved, folder, tmp_path, capsys):
    out = tmp_path / "colours.tflite"
    args = ["-q", "export", str(saved), str(out), "--quantize", "int8", "--calibration"]
    assert main([*args, str(folder)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "(int8)" in printed and "top-1 agreement 100.0%" in printed
    assert "note: GPTQ and the output-layer fit skipped" in printed  # a few colour images


def test_export_prints_its_report_once(saved, tmp_path, capsys):
    # The report was logged by the library and printed by the command: twice.
    assert main(["export", str(saved), str(tmp_path / "c.tflite")]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("exported litert to") == 1
    assert "exported litert to" in captured.out
    # In the command's words: its flags, not export()'s keywords.
    assert "parity not checked: pass --calibration or --check FOLDER" in captured.out


def test_export_passes_gptq_and_fit_head(saved, tmp_path, monkeypatch):
    seen = {}

    def export(*args, **kwargs):
        seen.update(kwargs)
        return "exported"

    monkeypatch.setattr("finetunekit.exporting.export", export)
    out = str(tmp_path / "m.tflite")
    assert main(["-q", "export", str(saved), out]) == 0
    assert seen["gptq"] is True and seen["fit_head"] is True  # export's defaults
    command = ["-q", "export", str(saved), out, "--quantize", "int8"]
    assert main([*command, "--no-gptq", "--fit-head"]) == 0
    assert seen["gptq"] is False and seen["fit_head"] is True
    assert main([*command, "--gptq", "--no-fit-head"]) == 0
    assert seen["gptq"] is True and seen["fit_head"] is False


@pytest.mark.parametrize(
    "argv, says",
    [
        (["predict", "{tmp}/missing.keras", "{tmp}"], "No saved model"),
        (["predict", "{saved}", "{tmp}/nowhere"], "No image or folder"),
        (["predict", "{saved}", "{tmp}/empty"], "holds no images"),
        (["evaluate", "{saved}", "{tmp}/nowhere"], "No image folder"),
        (["export", "{saved}", "{tmp}/m.tflite", "--quantize", "int8"],
         "--quantize int8 needs --calibration FOLDER"),
        (["export", "{saved}", "{tmp}/m.onnx"], "'.tflite' file"),
        (["export", "{saved}", "{tmp}/empty"], "empty/model.tflite"),  # was 'empty.tflite'
    ],
)
def test_bad_model_commands_fail_with_one_line(saved, tmp_path, capsys, argv, says):
    (tmp_path / "empty").mkdir()
    filled = [a.format(tmp=tmp_path, saved=saved) for a in argv]
    assert main(filled) == 1
    assert says in _error(capsys.readouterr().err)


def test_predict_needs_images(saved, capsys):
    assert main(["predict", str(saved)]) == 2
    assert "IMAGES" in _error(capsys.readouterr().err)


def test_a_csv_path_that_is_a_folder_fails_before_anything_is_predicted(saved, folder, tmp_path,
                                                                          capsys):
    # It predicted and printed every image first, then failed to write.
    assert main(["predict", str(saved), str(folder), "--csv", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "--csv" in _error(captured.err) and "red/0_red.png" not in captured.out

