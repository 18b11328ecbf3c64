"""The command functions work as typer commands (fsac/cli.py registers them this way)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def app():
    typer = pytest.importorskip("typer")
    from fsac.calibration.cli import calibrate_command, quantize_command
    from fsac.export.bench import bench_export_command
    from fsac.export.cli import engine_command, export_command

    a = typer.Typer()
    a.command("export")(export_command)
    a.command("engine")(engine_command)
    a.command("calibrate")(calibrate_command)
    a.command("quantize")(quantize_command)
    a.command("bench-export")(bench_export_command)
    return a


@pytest.mark.parametrize("cmd,flag", [("export", "--check-images"), ("engine", "--precision"),
                                      ("calibrate", "--alpha"), ("quantize", "--allow-disagreement"),
                                      ("bench-export", "--int8-variant")])
def test_help(app, cmd, flag):
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    assert flag in r.output


def test_export_then_calibrate_through_typer(app, tiny_checkpoint, bottle, tmp_path):
    from typer.testing import CliRunner

    from fsac.modelfile import load_model_file

    out = tmp_path / "m.onnx"
    runner = CliRunner()
    r = runner.invoke(app, ["export", str(tiny_checkpoint), "-o", str(out), "--optimize", "none", "-q",
                            "--check-images", str(bottle / "test" / "good" / "000.png"),
                            "--check-images", str(bottle / "test" / "good" / "001.png")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["calibrate", str(out), "-n", str(bottle / "test" / "good"), "--alpha", "0.1", "-q"])
    assert r.exit_code == 0, r.output
    _, info = load_model_file(out)
    assert info.threshold is not None and (tmp_path / "m.scores.png").is_file()
    r = runner.invoke(app, ["calibrate", str(out), "-n", str(bottle / "test" / "good"), "-q"])
    assert r.exit_code != 0 and "already has a threshold" in str(r.exception)


def test_quantize_no_reduce_range_makes_8_bit_weights_and_says_where_they_may_run(app, exported_model, bottle,
                                                                                  tmp_path):
    import json

    from typer.testing import CliRunner

    from fsac.modelfile import load_model_file

    out = tmp_path / "m8.int8.onnx"
    r = CliRunner().invoke(app, ["quantize", str(exported_model), "-c", str(bottle / "train" / "good"),
                                 "-e", str(bottle / "test" / "good"), "--num-calib", "6", "--no-reduce-range",
                                 "--allow-disagreement", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "8-bit weights (--no-reduce-range): serve this file only on CPUs with VNNI or AMX" in r.output
    q = json.loads(load_model_file(out)[1].metadata["fsac.quantization"])
    assert q["reduce_range"] is False and q["weight_type"].startswith("8-bit")


def test_model_file_preset_names_the_settings_that_differ_from_it():
    """fsac.train_preset never names a preset whose values the model does not have."""
    from fsac.export.cli import _preset_text

    assert _preset_text({"preset": "mvtec", "preset_overrides": {}}) == "mvtec"
    assert _preset_text({"preset": "mvtec", "preset_overrides": {"synth": "nsa", "beta1": 1.0}}) == \
        "mvtec with synth=nsa, beta1=1.0"
    assert _preset_text({"preset": None}) == "" and _preset_text({}) == ""  # checkpoints from before presets
