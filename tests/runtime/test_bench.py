"""`fsac bench runtime`: the typer command runs end to end on a few frames and reports every figure."""

from __future__ import annotations

import json


def test_bench_runtime_command(tmp_path, model_file, image_folder):
    import typer
    from typer.testing import CliRunner

    from fsac.runtime.bench import bench_runtime_command

    app = typer.Typer()
    app.command("runtime")(bench_runtime_command)
    app.command("other")(lambda: None)  # so "runtime" is a subcommand, as under `fsac bench`
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["runtime", "--model", str(model_file), "--images", str(image_folder),
                                      "--frames", "24", "--batch-size", "4", "--out", str(out),
                                      "--trigger-requests", "8", "--paced-fps", "20", "--paced-seconds", "1"])
    assert result.exit_code == 0, result.output
    for text in ("bare backend", "serial loop", "daemon (every-frame)", "daemon / bare throughput", "peak RSS"):
        assert text in result.output
    r = json.loads(out.read_text())
    for key in ("bare_fps", "serial_fps", "daemon_fps", "ratio", "bare_p50_ms", "bare_p99_ms", "daemon_p50_ms",
                "daemon_p99_ms", "rss_peak_bytes", "rss_budget_bytes", "model_bytes"):
        assert r[key] == r[key] and r[key] > 0, key  # present, not NaN
    assert r["daemon_frames"] == 24 * r["rounds"] and r["daemon_errors"] == 0 and r["frames"] == 24
    assert "storage written per record" in result.output
    assert r["bytes_written_per_record"] > 0  # the journal and JSONL reach the disk (tmp is not tmpfs here)
    assert r["delivered"]["jsonl"] == 24 * r["rounds"]
    # At a camera's pace the toy model keeps up: every frame its own batch, all recorded.
    paced = r["paced"]
    assert paced["fps"] == 20 and paced["records"] == paced["frames"] == 20 and paced["dropped"] == 0
    assert paced["mean_batch"] < 1.5 and paced["bytes_written_per_record"] > 0
    assert 10 < paced["achieved_fps"] <= 21
    assert "storage per record at a camera's pace (20 frames/s for 20 frames" in result.output
    row = r["trigger"]["http_image"]
    assert row["requests"] == 8 and row["errors"] == 0 and 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
    assert "trigger latency (POST /v1/inspect, image in the request), request -> answer over 8" in result.output
    gige = r["trigger"]["gige_software"]
    if "skipped" not in gige:  # Aravis and its fake camera installed
        assert gige["requests"] == 8 and gige["errors"] == 0 and gige["p50_ms"] > 0
    if r["sinks"] == "jsonl+mqtt":
        assert r["delivered"]["mqtt"] == 24 * r["rounds"]


def test_bench_runtime_cpu_prepack_reaches_every_pass(tmp_path, model_file, image_folder):
    """--cpu-prepack / --no-cpu-prepack set model.cpu_prepack for the in-process passes and
    the fsac-run subprocess alike, and the header says which ran."""
    import typer
    from typer.testing import CliRunner

    from fsac.runtime.bench import bench_runtime_command
    from fsac.runtime.bench_passes import _backend_args, _backend_kw

    assert _backend_kw({"cpu_prepack": False}) == {"cpu_prepack": False}
    assert _backend_kw({}) == {}
    assert _backend_args({"cpu_prepack": False}) == ["--set", "model.cpu_prepack=false"]
    assert _backend_args({"cpu_prepack": True}) == ["--set", "model.cpu_prepack=true"]

    app = typer.Typer()
    app.command("runtime")(bench_runtime_command)
    app.command("other")(lambda: None)
    out = tmp_path / "bench.json"
    base = ["runtime", "--model", str(model_file), "--images", str(image_folder), "--frames", "8", "--rounds", "1",
            "--trigger-requests", "0", "--paced-seconds", "0", "--no-peaks", "--no-rss", "--out", str(out)]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["cpu_prepack"] is True and ", pre-packed weights" in result.output
    result = CliRunner().invoke(app, base + ["--no-cpu-prepack"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["cpu_prepack"] is False and "pre-packed" not in result.output
