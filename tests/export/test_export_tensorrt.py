"""TensorRT engine build. The build itself needs tensorrt and a CUDA GPU (the target
device); without them the command must fail with a clear error, which is tested here."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from fsac.errors import FsacError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_trtexec_equivalent_line():
    from fsac.export.tensorrt_build import trtexec_line

    line = trtexec_line("m.onnx", "m.fp16.engine", "fp16", 240, 8, 1024)
    assert "--fp16" in line and "--int8" not in line
    assert "--minShapes=image:1x240x240x3" in line and "--maxShapes=image:8x240x240x3" in line
    assert "--int8 --fp16" in trtexec_line("q.onnx", "q.engine", "int8", 240, 4, 512)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the missing-TensorRT error cannot happen here")
def test_clear_error_without_tensorrt(tiny_export, tmp_path):
    from fsac.export.cli import engine_command

    with pytest.raises(FsacError, match="TensorRT is not installed"):
        engine_command(tiny_export[0], out=tmp_path / "m.engine", quiet=True)
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the missing-TensorRT error cannot happen here")
def test_export_engine_fails_fast_without_tensorrt(tiny_checkpoint, tmp_path):
    from fsac.export.cli import export_command

    with pytest.raises(FsacError, match="TensorRT is not installed"):
        export_command(tiny_checkpoint, out=tmp_path / "m.onnx", engine=True, quiet=True)
    assert not (tmp_path / "m.onnx").exists()  # refused before the slow export


def test_precision_checks_come_before_building(tiny_export, tmp_path):
    from fsac.metadata import update_model_metadata
    from fsac.export.tensorrt_build import build_engine

    path, _ = tiny_export
    with pytest.raises(FsacError, match="fsac quantize"):
        build_engine(path, tmp_path / "m.engine", "int8")
    with pytest.raises(FsacError, match="--precision must be one of"):
        build_engine(path, tmp_path / "m.engine", "bf16")
    # A graph carrying onnxruntime-only fused ops is refused for TensorRT.
    ort_only = tmp_path / "ort.onnx"
    shutil.copy(path, ort_only)
    update_model_metadata(ort_only, {"fsac.optimize": json.dumps({"method": "ort", "kept": True})})
    with pytest.raises(FsacError, match="com.microsoft"):
        build_engine(ort_only, tmp_path / "o.engine", "fp16")
    # An existing engine is not overwritten without --force.
    (tmp_path / "exists.engine").write_bytes(b"x")
    with pytest.raises(FsacError, match="--force"):
        build_engine(path, tmp_path / "exists.engine", "fp16")


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed (engines are built on the target device, e.g. a Jetson)")
def test_build_fp16_engine_and_sidecar(tiny_export, tmp_path):
    from fsac.export.tensorrt_build import build_engine, cuda_device_name
    from fsac.modelfile import load_engine_file, load_model_file

    try:
        cuda_device_name()
    except FsacError as e:
        pytest.skip(str(e))
    rep = build_engine(tiny_export[0], tmp_path / "m.fp16.engine", "fp16", max_batch=4)
    _, info, sidecar = load_engine_file(rep.engine)
    _, onnx_info = load_model_file(tiny_export[0])
    assert info.checkpoint_sha256 == onnx_info.checkpoint_sha256
    assert sidecar["engine_precision"] == "fp16" and sidecar["source_model_seal"] == onnx_info.seal
