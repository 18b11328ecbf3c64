"""`fsac bench export` on the tiny configuration: every backend timed, ratios, report files."""

from __future__ import annotations

import json

import pytest

from fsac.errors import FsacError


def test_bench_tiny_end_to_end(bottle, tmp_path, models):
    from fsac.export.bench import bench_export_command

    res = bench_export_command(
        images=[bottle / "train" / "good"], anomalous_images=[bottle / "test" / "broken_small"],
        arch=models.TINY_ARCH, out_dir=tmp_path, runs=4, batch=2, batch_runs=2, num_calib=4, num_eval=4,
        threads=1, quiet=True, int8_variants=["all-ops"], keep_models=True)
    names = set(res["backends"])
    import openvino as ov

    ov_rows = {"openvino f32", "openvino int8"}
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        ov_rows |= {"openvino bf16", "openvino int8_bf16"}
    assert {"pytorch eager fp32", "onnxruntime fp32", "onnxruntime int8", "onnxruntime int8 [all-ops]"} | ov_rows == names
    # the machine's own peaks, measured in this run, and each row's fraction of its matching peak
    pk = res["peaks"]
    assert pk["fp32"] > 0 and pk["int8"] > 0 and pk["measured"]["numpy sgemm"] > 0
    assert res["cpu_flags"] == pk["flags"] and pk["cpu_class"] in ("amx", "avx512-vnni", "avx512", "avx2", "other")
    for name, b in res["backends"].items():
        want = "int8" if "int8" in name else ("bf16" if "bf16" in name else "fp32")  # int8_bf16: int8
        assert b["precision"] == want and b["peak_gops"] == pk[want]
        if b["peak_gops"]:
            assert b["pct_of_peak_b1"] == pytest.approx(100 * b["gflops_b1"] / b["peak_gops"])
    # logit agreement of every runtime row with ONNX Runtime fp32 (8 images)
    la = res["logit_agreement"]
    assert set(la) == names - {"pytorch eager fp32", "onnxruntime fp32"}
    assert la["openvino f32"]["rel_max_abs_diff"] < 1e-3 and la["openvino f32"]["spearman"] > 0.999
    assert all(a["n_images"] == 8 for a in la.values())
    th = res["targets_hardware"]
    assert th["cpu_class"] == pk["cpu_class"]
    if th["rows"] == "int8":  # the int8 rows' ceiling here, printed beside the target
        assert th["int8_over_fp32_peak"] == pytest.approx(pk["int8"] / pk["fp32"])
        assert f"int8 / fp32 matrix-multiply peak: {pk['int8'] / pk['fp32']:.2f}x (the int8 rows' ceiling" in \
            (tmp_path / "bench.md").read_text()
    # where the INT8 row's batch-1 time goes, and the ceiling that leaves it on this machine
    prof = res["int8_profile"]
    assert prof["runs"] == 8 and 0 < prof["int8_product_ms"] < prof["kernel_ms"]
    assert prof["calls"]["MatMulIntegerToFloat"] > 0 and prof["unsized_products"] == 0
    assert 0 < prof["int8_product_gop"] < res["gflop_per_image"]  # the encoder's products, not the head
    fp32_ms = res["backends"]["onnxruntime fp32"]["batch1"]["p50_ms"]
    assert th["onnxruntime_int8_ceiling_b1"] == pytest.approx(
        fp32_ms / (1e3 * prof["int8_product_gop"] / max(pk["int8"], prof["int8_product_gops"])
                   + prof["kernel_ms"] - prof["int8_product_ms"]))
    assert "ONNX Runtime INT8 profile, batch 1 (8 runs)" in (tmp_path / "bench.md").read_text()
    assert f"at most {th['onnxruntime_int8_ceiling_b1']:.2f}x ONNX Runtime fp32" in (tmp_path / "bench.md").read_text()
    # encoder feature F against fp32: the figure to read when random weights flatten the logits
    fc = res["feature_cosine"]
    assert {"openvino f32", "onnxruntime int8", "openvino int8", "onnxruntime int8 [all-ops]"} <= set(fc)
    assert fc["openvino f32"] > 0.99999 and all(0.9 < v <= 1.0 + 1e-9 for v in fc.values())
    for b in res["backends"].values():
        assert b["batch1"]["runs"] == 4 and 0 < b["batch1"]["p50_ms"] <= b["batch1"]["p99_ms"]
        assert b["throughput_img_s"] > 0 and b["gflops_b1"] > 0
    mem = [res["backends"][k]["peak_rss_mib"] for k in ("pytorch eager fp32", "onnxruntime fp32", "onnxruntime int8")]
    assert all(m is not None and m > 20 for m in mem)
    e = res["export"]  # `fsac export` ran as its own process: its peak memory against the file size
    assert e["peak_rss_bytes"] > e["size_bytes"] > 0
    assert e["peak_rss_over_file"] == pytest.approx(e["peak_rss_bytes"] / e["size_bytes"])
    parts = e["peak_rss"]  # the tracing child counts: the peak is never below it plus the waiting parent
    assert parts["trace_process_bytes"] > 100 * 2**20 and parts["export_process_while_tracing_bytes"] > 0
    assert e["peak_rss_bytes"] >= parts["trace_process_bytes"] + parts["export_process_while_tracing_bytes"]
    # tiny config (2 blocks): 0.048 GFLOP per image with the last block for [CLS] only, 0.067 with all tokens
    assert 0.03 < res["gflop_per_image"] < 0.06
    assert res["sgemm_gflops"] > 0
    r = res["ratios"]
    assert r["int8_vs_fp32_b1"] == pytest.approx(
        res["backends"]["onnxruntime fp32"]["batch1"]["p50_ms"] / res["backends"]["onnxruntime int8"]["batch1"]["p50_ms"])
    assert res["int8_agreement"]["n_images"] == 8  # 4 held-out good + 4 defective
    assert isinstance(res["targets"]["int8_vs_fp32"], bool)
    assert any("RANDOM" in n for n in res["notes"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["ratios"] == res["ratios"]
    md = (tmp_path / "bench.md").read_text()
    assert "| onnxruntime int8 |" in md and "Spearman" in md and "GFLOP" in md
    assert "`fsac export` (own processes) peak RSS" in md and "tracing process" in md
    assert "| openvino f32 | fp32 |" in md and "CPU flags (matrix units):" in md and "Measured peaks" in md
    # --keep-models leaves the two timed files, each a sealed fsac model file (the INT8 one
    # had kept the fp32 file's seal, so fsac-run and `fsac bench isa` refused it)
    from fsac.modelfile import load_model_file

    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["bench.fp32.onnx", "bench.int8.onnx"]
    _, fp_info = load_model_file(tmp_path / "bench.fp32.onnx")
    _, q_info = load_model_file(tmp_path / "bench.int8.onnx")
    assert (fp_info.precision, q_info.precision) == ("fp32", "int8")
    assert q_info.metadata["fsac.source_model_seal"] == fp_info.seal
    assert json.loads(q_info.metadata["fsac.quantization"])["n_calibration_images"] == 4


def test_bench_needs_enough_images(bottle, tmp_path):
    from fsac.export.bench import bench_export_command

    with pytest.raises(FsacError, match="need"):
        bench_export_command(images=[bottle / "test" / "good"], out_dir=tmp_path, num_calib=16, num_eval=16, quiet=True)
    with pytest.raises(FsacError, match="--int8-variant"):
        bench_export_command(images=[bottle / "test" / "good"], out_dir=tmp_path, int8_variants=["fastest"], quiet=True)
