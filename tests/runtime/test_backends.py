"""Model backends: what is served, what is refused at start, and atomic reload."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fsac_run_helpers import W_VALUE, build_model_bytes, expected_logit, expected_mean, expected_score
from fsac.errors import FsacError
from fsac.modelfile import OUTPUT_NAMES, write_engine_sidecar
from fsac.preprocess import PreprocessSpec, load_image, resize_crop
from fsac.runtime.backends import ModelHandle, OnnxBackend, choose_providers, load_model, warm_up_sizes
from fsac.runtime.config import ModelConfig


def test_onnx_backend_scores_real_images_in_dynamic_batches(model_file, bottle_images):
    model = load_model(ModelConfig(path=str(model_file), batch_size=3))
    assert model.logit_threshold == 0.0 and model.threshold == 0.5 and model.threshold_source == "model file"
    assert model.backend.max_batch == 3 and model.backend.fixed_batch is None
    spec = model.info.preprocess
    rgbs = [load_image(p, spec) for p in bottle_images[:7]]
    batch = np.stack([resize_crop(r, spec) for r in rgbs])
    out = model.backend.infer(batch)  # 7 frames: split into 3 + 3 + 1
    assert list(out) == list(OUTPUT_NAMES)
    m = np.array([expected_mean(r) for r in rgbs])
    for name in OUTPUT_NAMES:
        assert out[name].dtype == np.float32 and out[name].shape == (7,)
    np.testing.assert_allclose(out["logit"], [expected_logit(r) for r in rgbs], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["score"], [expected_score(r) for r in rgbs], rtol=1e-5)
    np.testing.assert_allclose(out["sim_normal"], 1 - m, rtol=1e-5)
    np.testing.assert_allclose(out["sim_anomalous"], m, rtol=1e-5)
    with pytest.raises(FsacError, match=r"model input must be uint8 \(N, 64, 64, 3\)"):
        model.backend.infer(batch[:, :32])


def test_warm_up_runs_every_batch_size_the_scorer_can_form(model_file, monkeypatch):
    """A runtime's first call at a new input shape is slow (OpenVINO compiles kernels per shape):
    load runs each batch size once, so no frame on the line pays for it; warm_up: false skips it."""
    seen: list[tuple[int, ...]] = []
    infer = OnnxBackend.infer

    def spy(self, batch):
        seen.append(batch.shape)
        return infer(self, batch)

    monkeypatch.setattr(OnnxBackend, "infer", spy)
    model = load_model(ModelConfig(path=str(model_file), batch_size=3))
    assert seen == [(n, 64, 64, 3) for n in (1, 2, 3)]
    assert model.backend.max_batch == 3
    seen.clear()
    load_model(ModelConfig(path=str(model_file), batch_size=3, warm_up=False))
    assert seen == []
    assert warm_up_sizes(1) == [1]
    assert warm_up_sizes(8) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert warm_up_sizes(40) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 40]
    assert warm_up_sizes(64) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64]


def test_fixed_batch_graph_is_padded(make_model, bottle_images):
    path = make_model("fixed4.onnx", batch=4)
    model = load_model(ModelConfig(path=str(path), batch_size=8))
    assert model.backend.fixed_batch == 4 and model.backend.max_batch == 4
    spec = model.info.preprocess
    xs = np.stack([resize_crop(load_image(p, spec), spec) for p in bottle_images[:5]])
    out = model.backend.infer(xs)  # 4 + 1 padded to 4
    assert out["logit"].shape == (5,)
    np.testing.assert_allclose(out["sim_anomalous"], xs.reshape(5, -1).mean(axis=1) / 255.0, rtol=1e-5)
    np.testing.assert_allclose(out["logit"], 2 * xs.reshape(5, -1).mean(axis=1) / 255.0 - 1, rtol=1e-5, atol=1e-6)


def test_threshold_override_and_missing_threshold(make_model, caplog):
    path = make_model("nothr.onnx", threshold=None)
    with pytest.raises(FsacError, match=r"no decision threshold .* run `fsac calibrate` .* set model\.logit_threshold"):
        load_model(ModelConfig(path=str(path)))
    model = load_model(ModelConfig(path=str(path), logit_threshold=-0.4))
    assert model.logit_threshold == -0.4 and model.threshold_source == "config"
    assert model.threshold == pytest.approx(1 / (1 + np.exp(0.4)), rel=1e-12)
    # A threshold in score units is converted to the logit the verdict rule uses.
    model = load_model(ModelConfig(path=str(path), threshold=0.3))
    assert model.logit_threshold == pytest.approx(np.log(0.3 / 0.7), rel=1e-12)
    assert model.threshold == pytest.approx(0.3, rel=1e-12) and model.threshold_source == "config (score units)"
    with pytest.raises(FsacError, match=r"model\.threshold: .*strictly between 0 and 1"):
        load_model(ModelConfig(path=str(path), threshold=1.0))
    # Near 1 the score saturates: the conversion is still exact, but the user is told to write logits.
    with caplog.at_level(logging.WARNING, logger="fsac.runtime"):
        load_model(ModelConfig(path=str(path), threshold=0.99))
        assert "saturates" not in caplog.text
        model = load_model(ModelConfig(path=str(path), threshold=0.9999999))
    assert model.logit_threshold == pytest.approx(np.log(0.9999999 / 1e-7), rel=1e-6)
    assert "saturates" in caplog.text and "model.logit_threshold: 16.118" in caplog.text
    with pytest.raises(FsacError, match=r"model\.threshold and model\.logit_threshold are both set"):
        load_model(ModelConfig(path=str(path), threshold=0.3, logit_threshold=0.1))


def test_tampered_weights_are_refused(make_model, tmp_path):
    path = make_model("tamper.onnx")
    data = bytearray(path.read_bytes())
    weights = np.full((3, 1), W_VALUE, dtype=np.float32).tobytes()
    at = bytes(data).find(weights)
    assert at > 0
    data[at + 5] ^= 0x01  # one bit of one weight
    bad = tmp_path / "tampered.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(FsacError, match=r"damaged or was modified after export"):
        load_model(ModelConfig(path=str(bad)))


def test_unknown_format_version_and_size_mismatch_are_refused(make_model):
    with pytest.raises(FsacError, match=r"format version 9 is not supported"):
        load_model(ModelConfig(path=str(make_model("v9.onnx", format_version="9"))))
    # Graph built for 32x32 images, metadata says 64: refused at start, not on the first frame.
    with pytest.raises(FsacError, match=r"takes 32x32 images .*preprocess.image_size=64.* different input size"):
        load_model(ModelConfig(path=str(make_model("g32.onnx", graph_size=32))))
    # The deployment pins the size it expects.
    with pytest.raises(FsacError, match=r"model input size is 64 but model\.image_size is 240"):
        load_model(ModelConfig(path=str(make_model("ok.onnx")), image_size=240))
    with pytest.raises(FsacError, match="not an fsac model file"):
        load_model(ModelConfig(path=str(make_model("nometa.onnx", drop_keys=("fsac.arch",)))))
    with pytest.raises(FsacError, match="model file not found"):
        load_model(ModelConfig(path="/nonexistent/model.onnx"))


def test_provider_choice():
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers([], available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers([], ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])[0] \
        == "TensorrtExecutionProvider"
    assert choose_providers(["cpu"], available) == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "cpu"], available) == available
    with pytest.raises(FsacError, match=r"model\.providers: tensorrt \(TensorrtExecutionProvider\) is not available"):
        choose_providers(["tensorrt"], available)


def test_named_unavailable_provider_is_a_clear_error(model_file):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(FsacError, match=r"model\.providers: cuda \(CUDAExecutionProvider\) is not available"):
        load_model(ModelConfig(path=str(model_file), providers=["cuda"]))


def test_reload_swaps_atomically_and_keeps_old_model_on_failure(tmp_path, make_model):
    from fsac.modelfile import write_model_file

    path = tmp_path / "live.onnx"
    write_model_file(path, build_model_bytes(threshold="0"))
    handle = ModelHandle(ModelConfig(path=str(path)))
    first = handle.current
    # A broken file in place: refused, the old model keeps serving.
    path.write_bytes(path.read_bytes()[:-10])
    assert handle.reload() is False
    assert handle.current is first
    # A valid new file: swapped.
    write_model_file(path, build_model_bytes(threshold="0.4", scale=0.5), force=True)
    assert handle.reload() is True
    assert handle.current.logit_threshold == 0.4 and handle.current.sha256 != first.sha256
    x = np.full((1, 64, 64, 3), 200, np.uint8)
    np.testing.assert_allclose(handle.current.backend.infer(x)["logit"], [2 * 200 / 255 * 0.5 - 1], rtol=1e-5)
    np.testing.assert_allclose(first.backend.infer(x)["logit"], [2 * 200 / 255 - 1], rtol=1e-5)  # the old one still works


def test_tensorrt_backend_checks_the_engine_before_needing_tensorrt(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine, but hashed like one")
    meta = {"fsac.format_version": "2", "fsac.version": "0.1.0", "fsac.arch": "x", "fsac.weights_id": "w",
            "fsac.object": "bottle", "fsac.preprocess": json.dumps(PreprocessSpec(image_size=64).to_dict()),
            "fsac.inputs": "{}", "fsac.outputs": "{}", "fsac.checkpoint_sha256": "0" * 64, "fsac.precision": "fp16",
            "fsac.logit_threshold": "0"}
    write_engine_sidecar(engine, meta, {"tensorrt_version": "10.0"})
    cfg = ModelConfig(path=str(engine))  # backend auto -> tensorrt by suffix
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(FsacError, match=r"tensorrt Python package is not installed"):
            load_model(cfg)
    else:  # a real TensorRT refuses these bytes as an engine
        with pytest.raises(FsacError):
            load_model(cfg)
    engine.write_bytes(b"not really an engine, but hashed like one!")  # changed after the sidecar
    with pytest.raises(FsacError, match=r"engine bytes do not match the sha256"):
        load_model(cfg)


def test_tensorrt_backend_runs_a_real_engine(tmp_path, model_file, bottle_images):  # pragma: no cover - GPU
    trt = pytest.importorskip("tensorrt", reason="TensorRT not installed (no GPU here); runs on the Jetson")
    from fsac.modelfile import SEAL_KEY, load_model_file

    data, info = load_model_file(model_file)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0  # TensorRT 10: explicit batch is the only mode
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(data), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 64, 64, 3), (4, 64, 64, 3), (8, 64, 64, 3))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        pytest.skip("TensorRT cannot build this graph on this GPU")
    engine = tmp_path / "m.engine"
    engine.write_bytes(bytes(serialized))
    write_engine_sidecar(engine, {k: v for k, v in info.metadata.items() if k != SEAL_KEY}, {})
    trt_model = load_model(ModelConfig(path=str(engine), batch_size=4))
    onnx_model = load_model(ModelConfig(path=str(model_file), batch_size=4))
    assert trt_model.backend.name == "tensorrt" and trt_model.backend.max_batch == 4
    spec = info.preprocess
    xs = np.stack([resize_crop(load_image(p, spec), spec) for p in bottle_images[:6]])
    a, b = trt_model.backend.infer(xs), onnx_model.backend.infer(xs)
    assert list(a) == list(b) == list(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-4)
    trt_model.backend.close()


def test_onnx_backend_rejects_a_non_fsac_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from fsac.modelfile import load_model_file, write_model_file

    inp = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 64, 64, 3])
    out = helper.make_tensor_value_info("score", TensorProto.UINT8, ["N", 64, 64, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["pixels"], ["score"])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = json.loads(json.dumps({k: "x" for k in ("fsac.version", "fsac.arch", "fsac.weights_id", "fsac.object",
                                                   "fsac.inputs", "fsac.outputs", "fsac.checkpoint_sha256",
                                                   "fsac.precision")}))
    meta.update({"fsac.format_version": "2", "fsac.preprocess": json.dumps(PreprocessSpec(image_size=64).to_dict()),
                 "fsac.seal": "0" * 64})
    helper.set_model_props(model, meta)
    path = write_model_file(tmp_path / "other.onnx", model.SerializeToString())
    data, info = load_model_file(path)
    with pytest.raises(FsacError, match=r"has no input 'image'"):
        OnnxBackend(data, info)
    assert onnx  # imported for the graph above


def test_an_int8_file_with_8_bit_weights_is_named_on_a_cpu_that_saturates(tiny_files, tiny_8bit_file, image_folder,
                                                                           tmp_path, monkeypatch, caplog):
    """On an x86 CPU without VNNI the int8 kernels clamp 8-bit weights' pair sums
    (fsac/int8_saturation.py); fsac-run says so at load and in --check, for either CPU backend,
    and says nothing for a 7-bit file (the `fsac quantize` default) or on a VNNI CPU."""
    import onnx

    import fsac.peaks
    from fsac.runtime.cli import check
    from fsac.runtime.config import load_config
    from tests.calibration.test_calib_quantize import int8_weights

    fp32, seven_bit = tiny_files
    eight_bit = tiny_8bit_file
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in int8_weights(onnx.load(str(eight_bit)))) > 64

    monkeypatch.setattr(fsac.peaks, "cpu_flags", lambda: ["sse2", "avx2", "fma"])  # an AVX2-only PC
    for backend in ("onnxruntime", "openvino"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fsac"):
            model = load_model(ModelConfig(path=str(eight_bit), threshold=0.5, backend=backend))
        model.backend.close()
        assert len(model.warnings) == 1 and "m8.int8.onnx: INT8 file with 8-bit weights" in model.warnings[0]
        assert "class avx2" in model.warnings[0] and model.warnings[0] in caplog.text
        model = load_model(ModelConfig(path=str(seven_bit), threshold=0.5, backend=backend))
        model.backend.close()
        assert model.warnings == ()
    # --check's lines (`check`, not `main`: main installs the daemon's own log handler, which
    # would take the records from every later test's caplog)
    cfg = load_config(None, ["model.threshold=0.5"], model=str(eight_bit), source=str(image_folder),
                      jsonl=str(tmp_path / "r.jsonl"))
    lines = check(cfg)
    assert lines[0].startswith("model: ") and lines[1].startswith("warning: ")
    assert "8-bit weights on a CPU without VNNI" in lines[1]

    monkeypatch.setattr(fsac.peaks, "cpu_flags", lambda: ["sse2", "avx2", "avx512f", "avx512_vnni"])
    model = load_model(ModelConfig(path=str(eight_bit), threshold=0.5))
    model.backend.close()
    assert model.warnings == ()


def test_cpu_prepack_is_on_by_default_and_false_turns_it_off(tiny_files, image_folder, tmp_path):
    """model.cpu_prepack (default true): ONNX Runtime pre-packs the MatMul weights of a float
    and an INT8 file alike; false builds the session without; --check names what runs."""
    from fsac.runtime.cli import check
    from fsac.runtime.config import load_config

    fp32, int8 = tiny_files

    def packed(model) -> bool:
        opts = model.backend.session.get_session_options()
        try:  # ONNX Runtime raises for an entry never set: its default, pre-packing on
            return opts.get_session_config_entry("session.disable_prepacking") != "1"
        except RuntimeError:
            return True

    assert ModelConfig().cpu_prepack is True
    for path in (fp32, int8):
        for setting in (True, False):
            model = load_model(ModelConfig(path=str(path), threshold=0.5, cpu_prepack=setting))
            assert model.backend.cpu_prepack is setting and packed(model) is setting, (path.name, setting)
            assert ("pre-packed weights" in model.describe()) is setting
            model.backend.close()
    with pytest.raises(FsacError, match=r"model\.cpu_prepack: expected true or false, got 'sometimes'"):
        load_config(None, ["model.cpu_prepack=sometimes"], model=str(int8), source=str(image_folder))
    args = dict(model=str(int8), source=str(image_folder), jsonl=str(tmp_path / "r.jsonl"))
    assert "pre-packed weights" in check(load_config(None, ["model.threshold=0.5"], **args))[0]
    cfg = load_config(None, ["model.threshold=0.5", "model.cpu_prepack=false"], **args)
    assert "pre-packed weights" not in check(cfg)[0]
