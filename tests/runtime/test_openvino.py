"""OpenVINO backend: same sealed file, checked against ONNX Runtime fp32 on the tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fsac.errors import FsacError
from fsac.modelfile import OUTPUT_NAMES
from fsac.preprocess import load_image, resize_crop
from fsac.runtime.backends import load_model
from fsac.runtime.config import ModelConfig, OpenVinoConfig

pytest.importorskip("openvino", reason="fsac[openvino] is part of fsac[all]; install it to test this backend")


@pytest.fixture(scope="module")
def pixels(bottle_images, tiny_files):
    spec = load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5)).info.preprocess
    return np.stack([resize_crop(load_image(p, spec), spec) for p in bottle_images])


def _outputs(path: Path, batch: np.ndarray, **kw) -> dict[str, np.ndarray]:
    model = load_model(ModelConfig(path=str(path), threshold=0.5, **kw))
    out = model.backend.infer(batch)
    model.backend.close()
    return out


def _logit(out: dict[str, np.ndarray]) -> np.ndarray:
    """The anomaly logit: what ranks and decides (the score sigmoid(z) saturates)."""
    return np.asarray(out["logit"], np.float64)


def test_openvino_f32_matches_onnxruntime_fp32(tiny_files, pixels):
    ref = _outputs(tiny_files[0], pixels, backend="onnxruntime")
    got = _outputs(tiny_files[0], pixels, backend="openvino", batch_size=5,
                   openvino=OpenVinoConfig(precision="f32"))  # 12 frames: 5 + 5 + 2
    assert set(got) == set(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        assert got[name].dtype == np.float32 and got[name].shape == (12,)
        np.testing.assert_allclose(got[name], ref[name], atol=2e-5, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(_logit(got), _logit(ref), atol=1e-4)


def test_openvino_streams_split_each_batch_and_keep_frame_order(tiny_files, pixels):
    """streams: 2 runs each chunk of up to 5 frames as 2 parts at once; the scores come back in
    the frames' order, equal to one stream's. (OpenVINO gives at most one stream per core, and
    the backend splits into as many parts as it was given.)"""
    ref = _outputs(tiny_files[0], pixels, backend="onnxruntime")
    model = load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5, backend="openvino", batch_size=5,
                                   openvino=OpenVinoConfig(precision="f32", streams=2)))
    assert model.backend.streams == 2
    for n in (12, 1, 2):  # 5+5+2 frames (parts 3+2, 3+2, 1+1), one frame, two frames
        got = model.backend.infer(pixels[:n])
        for name in OUTPUT_NAMES:
            assert got[name].shape == (n,)
            np.testing.assert_allclose(got[name], ref[name][:n], atol=2e-5, rtol=1e-4, err_msg=name)
    assert len(model.backend._requests) == 2  # one request per stream, reused
    model.backend.close()


def test_openvino_streams_auto_follows_the_source(tiny_files, tmp_path):
    """model.openvino.streams auto: the throughput hint where frames queue up (a folder or a
    video in every-frame mode), one stream (all threads on a lone frame) for triggers, live
    sources, watch folders and latest-frame mode; a value given is kept, a wrong one named."""
    from fsac.runtime.config import load_config

    frames = tmp_path / "frames"
    frames.mkdir()
    video = tmp_path / "line.mp4"
    video.write_bytes(b"\0")

    def resolved(*sets, source=str(frames)):
        return load_config(None, list(sets), model=str(tiny_files[0]), source=source,
                           jsonl=str(tmp_path / "r.jsonl")).model.openvino.streams

    assert resolved() == "throughput"
    assert resolved(source=str(video)) == "throughput"
    assert resolved("source.mode=latest-frame") == 1
    assert resolved("source.kind=watch") == 1
    assert resolved(source="rtsp://127.0.0.1/line") == 1
    assert resolved("source.mode=trigger") == 1
    assert resolved("model.openvino.streams=0") == 0
    assert resolved("model.openvino.streams=3") == 3
    assert resolved("model.openvino.streams=throughput", "source.mode=trigger") == "throughput"
    with pytest.raises(FsacError, match=r"model\.openvino\.streams: must be auto, throughput or a number"):
        resolved("model.openvino.streams=fast")
    # what runs: OpenVINO's throughput hint gives more than one stream on 2 or more cores; one
    # stream (the latency hint) otherwise; "auto" unresolved (no source) is one stream
    for streams, want in (("throughput", None), (1, 1), ("auto", 1)):
        model = load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5, backend="openvino", batch_size=2,
                                       openvino=OpenVinoConfig(precision="f32", streams=streams), threads=2))
        got = model.backend.streams
        assert f", {got} stream{'s' if got != 1 else ''})" in model.describe()  # what --check and the log say
        model.backend.close()
        if want is None:
            assert got == min(2, os.cpu_count() or 1), got
        else:
            assert got == want


def test_openvino_bf16_agrees_with_fp32_within_bf16_error(tiny_files, pixels):
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(FsacError, match=r"model\.openvino\.precision=bf16: .* no bf16 support"):
            _outputs(tiny_files[0], pixels, backend="openvino", openvino=OpenVinoConfig(precision="bf16"))
        return
    ref = _logit(_outputs(tiny_files[0], pixels, backend="onnxruntime"))
    model = load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5, backend="openvino",
                                   openvino=OpenVinoConfig(precision="bf16")))
    assert model.backend.precision == "bf16" and "bf16" in model.backend.providers[0]
    got = model.backend.infer(pixels)
    gap = _logit(got)
    diff = np.abs(gap - ref).max()
    spread = ref.max() - ref.min()
    print(f"bf16: max |Δ logit| {diff:.3g}, fp32 logit spread {spread:.3g}")
    # bf16 keeps 8 mantissa bits: not bit-equal to fp32 (so it really ran in bf16), but the
    # error is a fraction of how much the logit varies between images.
    assert 0 < diff < 0.5 * spread, (diff, spread)


def test_openvino_int8_runs_the_qdq_file_like_onnxruntime(tiny_files, pixels):
    fp32, int8 = tiny_files
    ref_q = _logit(_outputs(int8, pixels, backend="onnxruntime"))
    ref_f = _logit(_outputs(fp32, pixels, backend="onnxruntime"))
    model = load_model(ModelConfig(path=str(int8), threshold=0.5, backend="openvino"))
    assert model.backend.precision == "int8"  # auto on a QDQ file
    got = model.backend.infer(pixels)
    gap = _logit(got)
    # OpenVINO and ONNX Runtime round the int8 kernels differently (they do not agree with
    # each other bit for bit), but both stay within int8 error of fp32, and neither is fp32.
    err_ort, err_ov = np.abs(ref_q - ref_f).max(), np.abs(gap - ref_f).max()
    print(f"max |gap - fp32|: onnxruntime int8 {err_ort:.3g}, openvino int8 {err_ov:.3g}")
    assert 1e-5 < err_ov <= 2 * err_ort, (err_ov, err_ort)


def test_openvino_int8_bf16_runs_the_float_parts_in_bf16(tiny_files, pixels):
    """int8_bf16: the same QDQ file, its float parts at bf16. Not the int8 (f32 rest) result
    bit for bit (so the hint took effect), and still within a fraction of the logit spread."""
    import openvino as ov

    fp32, int8 = tiny_files
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(FsacError, match=r"precision=int8_bf16: .* no bf16 support"):
            _outputs(int8, pixels, backend="openvino", openvino=OpenVinoConfig(precision="int8_bf16"))
        return
    ref_f = _logit(_outputs(fp32, pixels, backend="onnxruntime"))
    got = {}
    for p in ("int8", "int8_bf16"):
        model = load_model(ModelConfig(path=str(int8), threshold=0.5, backend="openvino",
                                       openvino=OpenVinoConfig(precision=p)))
        assert model.backend.precision == p
        assert model.backend.providers[0].endswith(p)
        got[p] = _logit(model.backend.infer(pixels))
    spread = ref_f.max() - ref_f.min()
    assert np.abs(got["int8_bf16"] - got["int8"]).max() > 0
    assert np.abs(got["int8_bf16"] - ref_f).max() < 0.5 * spread


def test_openvino_refuses_int8_on_an_fp32_file_and_unknown_device(tiny_files):
    with pytest.raises(FsacError, match=r"model\.openvino\.precision=int8 needs an INT8 QDQ model"):
        load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5, backend="openvino",
                               openvino=OpenVinoConfig(precision="int8")))
    with pytest.raises(FsacError, match=r"model\.openvino\.device: 'NPU7' is not one of CPU, GPU, AUTO"):
        load_model(ModelConfig(path=str(tiny_files[0]), threshold=0.5, backend="openvino",
                               openvino=OpenVinoConfig(device="NPU7")))


def test_resolve_precision_follows_the_device():
    from fsac.runtime.openvino_backend import resolve_precision

    class Info:
        source, precision = "m.onnx", "fp32"

    assert resolve_precision("auto", ["FP32", "BF16"], Info, "CPU") == "bf16"
    assert resolve_precision("auto", ["FP32", "INT8"], Info, "CPU") == "f32"
    with pytest.raises(FsacError, match="no bf16 support"):
        resolve_precision("bf16", ["FP32", "INT8"], Info, "CPU")
    with pytest.raises(FsacError, match="precision=int8_bf16 needs an INT8 QDQ model"):
        resolve_precision("int8_bf16", ["FP32", "BF16"], Info, "CPU")
    Info.precision = "int8"
    assert resolve_precision("auto", ["FP32", "BF16"], Info, "CPU") == "int8"
    assert resolve_precision("int8_bf16", ["FP32", "BF16", "INT8"], Info, "CPU") == "int8_bf16"
    with pytest.raises(FsacError, match="precision=int8_bf16: OpenVINO device CPU has no bf16 support.*use int8"):
        resolve_precision("int8_bf16", ["FP32", "INT8"], Info, "CPU")


def test_openvino_refuses_a_tampered_file_before_compiling(tiny_files, tmp_path):
    data = bytearray(tiny_files[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(FsacError, match="damaged or was modified after export"):
        load_model(ModelConfig(path=str(bad), threshold=0.5, backend="openvino"))


def test_bench_runtime_times_the_openvino_backend_against_the_peaks(tiny_files, image_folder, tmp_path):
    from fsac.runtime.bench import bench_runtime, format_table

    r = bench_runtime(tiny_files[0], image_folder, n_frames=8, batch_size=4, out_json=tmp_path / "b.json",
                      backend="openvino", precision="f32", rounds=1, measure_rss=True, paced_seconds=0,
                      trigger_requests=3)
    assert r["backend"] == "openvino" and r["precision"] == "fp32" and "OpenVINO" in r["providers"][0]
    # streams auto: the folder pass queues frames (throughput hint), the trigger pass runs each
    # request on all threads (one stream), on the backend the header names (it had run the
    # config default, ONNX Runtime, whatever --backend said)
    assert r["streams"] == (2 if (os.cpu_count() or 1) >= 2 else 1)
    trig = r["trigger"]["http_image"]
    assert (trig["backend"], trig["precision"], trig["streams"]) == ("openvino", "f32", 1) and trig["requests"] == 3
    assert r["daemon_frames"] == 8 and r["daemon_errors"] == 0 and r["bare_fps"] > 0 and r["rss_peak_bytes"] > 0
    assert r["gflop_per_image"] > 0  # recorded by fsac export
    assert r["peaks"]["fp32"] > 0 and r["bare_pct_of_peak"] == pytest.approx(
        100 * r["gflop_per_image"] * r["bare_fps"] / r["peaks"]["fp32"])
    text = format_table(r)
    assert "backend openvino fp32" in text and "CPU flags:" in text and "% of the fp32 peak" in text


def _cpuid_fault() -> bool:
    return "cpuid_fault" in Path("/proc/cpuinfo").read_text()


def test_bench_isa_times_fp32_and_int8_under_each_cap(tiny_files, monkeypatch):
    """`fsac bench isa`: each cap in its own process; with the CPUID mask both runtimes are
    timed and the child itself reports the mask in force; a broken file is a row with the
    reason. The caller's own cap settings must not leak into the uncapped row."""
    from fsac.runtime.bench_isa import bench_isa, format_rows

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("FSAC_CPUID_CAP", "AVX2")
    rows = bench_isa(tiny_files[0], tiny_files[1], repeats=2, caps=("AVX2", ""))
    assert [r["cap"] for r in rows] == ["AVX2", "none"]
    assert [r["cap_seen"] for r in rows] == ["AVX2", ""]
    for r in rows:
        assert "error" not in r, r
        assert r["openvino_fp32_ms"] > 0 and r["openvino_int8_ms"] > 0
        assert r["int8_speedup"] == pytest.approx(r["fp32_ms"] / r["int8_ms"])
        assert r["fp32_ms"] == min(v for k, v in r.items() if k.endswith("_fp32_ms") and k != "fp32_ms")
    # the uncapped row is this CPU itself: both runtimes, whether or not the mask can work here
    assert rows[1]["method"] == "none"
    assert rows[1]["onnxruntime_fp32_ms"] > 0 and rows[1]["onnxruntime_int8_ms"] > 0
    text = format_rows(rows)
    assert "AVX2" in text and "target >= 1.8x" in text
    from fsac.runtime.bench_isa import row_target

    assert row_target(rows[1], ["avx2", "avx512f", "avx512_vnni"]) == 2.5
    assert row_target(rows[1], ["avx2", "fma"]) == 1.8
    assert row_target(rows[1], ["avx2", "amx_int8", "amx_bf16"]) is None  # AMX: judged in bench export
    assert row_target(rows[0]) == 1.8
    if _cpuid_fault():  # this machine can fault on CPUID: the mask must work, for both runtimes
        assert [r["method"] for r in rows] == ["cpuid", "none"]
        assert all(r["onnxruntime_fp32_ms"] > 0 and r["onnxruntime_int8_ms"] > 0 for r in rows)
        # OpenVINO sees no bf16 under the AVX2 mask, whatever this CPU has
        assert "BF16" not in rows[0]["openvino_capabilities"]
        assert "every library sees the older CPU" in text
    else:
        assert rows[0]["method"] == "onednn" and "onnxruntime_fp32_ms" not in rows[0]
        assert "ONNX Runtime cannot be capped" in text
    broken = bench_isa(tiny_files[0], tiny_files[0], repeats=1, caps=("",))  # an fp32 file as the INT8 one
    assert "error" in broken[0] and "int8" in broken[0]["error"].lower()


def test_bench_isa_does_not_time_a_cap_above_this_cpu(tiny_files, monkeypatch):
    """A cap hides instructions, it cannot add them: on an AVX2-only CPU the AVX2_VNNI and
    AVX-512 VNNI caps are not rows of those classes (they timed this CPU again, under those
    classes' targets); they say why, and the caps this CPU can emulate still run."""
    import fsac.peaks
    from fsac.runtime.bench_isa import bench_isa, cap_unavailable, format_rows

    assert cap_unavailable("AVX2_VNNI", ["avx2", "fma"]).startswith("this CPU has no avx_vnni")
    assert cap_unavailable("AVX512_CORE_VNNI", ["avx2", "avx512f", "avx512_vnni"]) is None
    assert cap_unavailable("AVX2", ["avx2"]) is None and cap_unavailable("", []) is None
    monkeypatch.setattr(fsac.peaks, "cpu_flags", lambda: ["sse2", "avx2", "fma"])
    rows = bench_isa(tiny_files[0], tiny_files[1], repeats=1, caps=("AVX2_VNNI", "AVX512_CORE_VNNI", ""))
    assert [("skipped" in r) for r in rows] == [True, True, False] and rows[2]["openvino_int8_ms"] > 0
    text = format_rows(rows)
    assert "AVX512_CORE_VNNI   not timed: this CPU has no avx512_vnni" in text and "target >= 2.5x" not in text


@pytest.mark.skipif(not _cpuid_fault(), reason="this CPU / kernel has no CPUID faulting (cpuid_fault)")
def test_cpuid_mask_hides_the_matrix_units_from_every_library(tmp_path):
    """The preloaded mask: OpenVINO's capabilities lose BF16 under AVX2 (where this CPU has
    it), and a child reports the level in force; an unknown cap is refused."""
    import subprocess
    import sys

    from fsac.runtime.bench_isa import build_cpuid_mask

    lib, why = build_cpuid_mask(tmp_path)
    assert lib is not None, why
    code = ("import ctypes, openvino as ov; print(ctypes.CDLL(None).fsac_cpuid_cap(), "
            "'BF16' in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))")

    def run(cap):
        env = {**os.environ, "LD_PRELOAD": str(lib), "FSAC_CPUID_CAP": cap}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)

    import openvino as ov

    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert run("AVX2").stdout.split() == ["1", "False"]
    assert run("").stdout.split() == ["0", str(has_bf16)]
    bad = run("SSE2")
    assert bad.returncode == 2 and "unknown cap SSE2" in bad.stderr
