"""`fsac bench files`: sealed files timed against each other, interleaved, through the runtime's loader."""

from __future__ import annotations

import json
import shutil

import pytest


def test_two_files_timed_interleaved_on_real_images(tmp_path, model_file, image_folder):
    import typer
    from typer.testing import CliRunner

    from fsac.runtime.bench_files import bench_files_command

    app = typer.Typer()
    app.command("files")(bench_files_command)
    app.command("other")(lambda: None)  # so "files" is a subcommand, as under `fsac bench`
    second = tmp_path / "second.onnx"
    shutil.copy(model_file, second)
    out = tmp_path / "files.json"
    result = CliRunner().invoke(app, ["files", str(model_file), str(second), "-i", str(image_folder),
                                      "--rounds", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "flags (matrix units)" in result.output and "on 8 real images" in result.output
    assert f"| {model_file.name} |" in result.output and "| second.onnx |" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["file"] for r in rows] == [str(model_file), str(second)]
    assert all(r["runs"] == 5 and 0 < r["p20_ms"] <= r["median_ms"] for r in rows)
    assert rows[0]["speedup_vs_first"] == 1.0
    assert rows[1]["speedup_vs_first"] == pytest.approx(rows[0]["median_ms"] / rows[1]["median_ms"])
    assert not any(r["spin_wait"] for r in rows) and "spinning" not in result.output

    result = CliRunner().invoke(app, ["files", str(model_file), "--rounds", "1", "--spin-wait", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "threads spinning between operators" in result.output and "on 4 random-pixel images" in result.output
    assert json.loads(out.read_text())["rows"][0]["spin_wait"] is True


def test_refuses_a_broken_seal_a_repeated_file_and_an_unknown_backend(tmp_path, model_file):
    from fsac.errors import FsacError
    from fsac.runtime.bench_files import bench_files

    bad = tmp_path / "bad.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the weights
    bad.write_bytes(bytes(data))
    with pytest.raises(FsacError, match="bad.onnx"):
        bench_files([model_file, bad], rounds=1)
    with pytest.raises(FsacError, match="given twice"):
        bench_files([model_file, model_file], rounds=1)
    with pytest.raises(FsacError, match="--backend"):
        bench_files([model_file], rounds=1, backend="tensorrt")
