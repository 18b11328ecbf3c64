"""fsac.modelfile: the sealed ONNX model-file contract, read without onnx.

The models here are built with onnx.helper (no torch): input "image" uint8 [N, 16, 16, 3],
outputs score / logit / sim_normal / sim_anomalous, every REQUIRED_KEYS entry in metadata_props.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fsac.errors import FsacError  # noqa: E402
from fsac.modelfile import (  # noqa: E402
    INPUT_NAME,
    OUTPUT_NAMES,
    REQUIRED_KEYS,
    SEAL_KEY,
    SEAL_PLACEHOLDER,
    engine_sidecar_path,
    load_engine_file,
    load_model_file,
    read_metadata_bytes,
    seal_bytes,
    verify_seal,
    write_engine_sidecar,
    write_model_file,
)
from fsac.preprocess import PreprocessSpec  # noqa: E402

S = 16
# A distinctive weight pattern, so tests can find the initializer's bytes in the file.
WEIGHTS = (np.arange(S * S * 3, dtype=np.float32).reshape(S, S, 3) % 7 + 1) / 8.0


def base_metadata(**overrides) -> dict[str, str]:
    meta = {
        "fsac.format_version": "2",
        "fsac.version": "0.1.0",
        "fsac.arch": "ViT-B-16-plus-240-tiny",
        "fsac.weights_id": "random",
        "fsac.object": "bottle",
        "fsac.preprocess": json.dumps(PreprocessSpec(image_size=S).to_dict()),
        "fsac.inputs": json.dumps({INPUT_NAME: {"dtype": "uint8", "shape": ["N", S, S, 3]}}),
        "fsac.outputs": json.dumps({n: {"dtype": "float32", "shape": ["N"]} for n in OUTPUT_NAMES}),
        "fsac.checkpoint_sha256": "ab" * 32,
        "fsac.precision": "fp32",
        "fsac.logit_threshold": "0.5",
        SEAL_KEY: "0" * 64,
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def build_model(meta: dict[str, str] | None = None, extra_entries=(), big_initializer_bytes: int = 0) -> bytes:
    """Serialized ModelProto. sim_normal = mean(x) / 255, sim_anomalous = mean(x * W) / 255,
    logit = (sim_anomalous - sim_normal) * 100 (tau = 0.01), score = sigmoid(logit)."""
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", S, S, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in OUTPUT_NAMES]
    inits = [
        numpy_helper.from_array(WEIGHTS, "w"),
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "c255"),
        numpy_helper.from_array(np.array(100.0, dtype=np.float32), "inv_tau"),
    ]
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "c255"], ["xn"]),
        helper.make_node("Mul", ["xn", "w"], ["xw"]),
        helper.make_node("ReduceMean", ["xw"], ["sim_anomalous"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["xn"], ["sim_normal"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["sim_anomalous", "sim_normal"], ["gap"]),
        helper.make_node("Mul", ["gap", "inv_tau"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    if big_initializer_bytes:
        rng = np.random.default_rng(0)
        big = rng.standard_normal(big_initializer_bytes // 4).astype(np.float32)
        inits.append(numpy_helper.from_array(big, "big_unused"))
    graph = helper.make_graph(nodes, "fsac_test", [x], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fsac-tests")
    model.ir_version = 8
    helper.set_model_props(model, base_metadata() if meta is None else meta)
    for k, v in extra_entries:
        e = model.metadata_props.add()
        e.key, e.value = k, v
    if not extra_entries:  # onnx's checker refuses duplicated metadata keys, which some tests want
        onnx.checker.check_model(model)
    return model.SerializeToString()


def expected_outputs(x: np.ndarray) -> dict[str, np.ndarray]:
    xn = x.astype(np.float32) / np.float32(255.0)
    sim_normal = xn.mean(axis=(1, 2, 3))
    sim_anomalous = (xn * WEIGHTS).mean(axis=(1, 2, 3))
    logit = (sim_anomalous - sim_normal) * np.float32(100.0)
    return {"score": 1 / (1 + np.exp(-logit)), "logit": logit, "sim_normal": sim_normal,
            "sim_anomalous": sim_anomalous}


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return build_model()


@pytest.fixture
def sealed(tmp_path, model_bytes):
    path = tmp_path / "bottle.fsac.onnx"
    write_model_file(path, model_bytes)
    return path


def _write_raw(path, data: bytes):
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- round trip


def test_write_seals_and_load_parses(sealed, model_bytes):
    data, info = load_model_file(sealed)
    raw = sealed.read_bytes()
    assert data == raw
    assert len(raw) == len(model_bytes)
    # The seal is the sha256 of the file with the seal bytes replaced by the placeholder.
    off = raw.find(info.seal.encode())
    assert off > 0 and raw.count(info.seal.encode()) == 1
    assert hashlib.sha256(raw[:off] + SEAL_PLACEHOLDER + raw[off + 64 :]).hexdigest() == info.seal
    assert raw[:off] + SEAL_PLACEHOLDER + raw[off + 64 :] == model_bytes  # nothing else changed
    assert info.seal != "0" * 64 and len(info.seal) == 64
    assert info.format_version == 2
    assert info.fsac_version == "0.1.0"
    assert info.arch == "ViT-B-16-plus-240-tiny"
    assert info.weights_id == "random"
    assert info.object_name == "bottle"
    assert info.precision == "fp32"
    assert info.checkpoint_sha256 == "ab" * 32
    assert info.logit_threshold == 0.5
    assert info.preprocess == PreprocessSpec(image_size=S)
    assert info.image_size == S
    assert info.name == "bottle.fsac.onnx"
    assert info.source == str(sealed)
    # Our protobuf parse equals onnx's.
    onnx_meta = {p.key: p.value for p in onnx.load(str(sealed)).metadata_props}
    assert info.metadata == onnx_meta
    assert info.metadata[SEAL_KEY] == info.seal
    assert verify_seal(raw) == info.seal


def test_onnxruntime_runs_sealed_file(sealed):
    ort = pytest.importorskip("onnxruntime")
    data, info = load_model_file(sealed)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map == info.metadata
    assert [i.name for i in sess.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    x = np.random.default_rng(1).integers(0, 256, size=(2, S, S, 3), dtype=np.uint8)
    got = dict(zip(OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x})))
    want = expected_outputs(x)
    for n in OUTPUT_NAMES:
        assert got[n].shape == (2,)
        np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-6)


def test_reseal_is_idempotent(model_bytes):
    once = seal_bytes(model_bytes)
    assert once != model_bytes
    assert seal_bytes(once) == once
    assert verify_seal(once) == hashlib.sha256(model_bytes).hexdigest()


# --------------------------------------------------------------------------- tampering


def test_every_single_byte_flip_breaks_the_seal(sealed):
    raw = sealed.read_bytes()
    verify_seal(raw)
    for i in range(len(raw)):
        for mask in (0x01, 0x80):
            bad = bytearray(raw)
            bad[i] ^= mask
            with pytest.raises(FsacError):
                verify_seal(bytes(bad), "m.onnx")


def _positions(raw: bytes, info) -> dict[str, int]:
    w_at = raw.find(WEIGHTS.tobytes())
    thr_key = raw.find(b"fsac.logit_threshold")
    thr_val = raw.find(b"0.5", thr_key)
    seal_at = raw.find(info.seal.encode())
    assert min(w_at, thr_key, thr_val, seal_at) > 0
    return {
        "first byte": 0,
        "weights": w_at + WEIGHTS.nbytes // 2,
        "threshold value": thr_val + 2,  # "0.5" -> "0.4"
        "seal value": seal_at + 10,
        "seal key": seal_at - 5,
        "last byte": len(raw) - 1,
    }


@pytest.mark.parametrize("where", ["first byte", "weights", "threshold value", "seal value", "seal key", "last byte"])
def test_flipped_byte_is_refused_naming_the_file(tmp_path, sealed, where):
    raw = sealed.read_bytes()
    _, info = load_model_file(sealed)
    pos = _positions(raw, info)[where]
    bad = bytearray(raw)
    bad[pos] ^= 0x01
    path = _write_raw(tmp_path / f"tampered-{where.replace(' ', '_')}.onnx", bytes(bad))
    with pytest.raises(FsacError) as e:
        load_model_file(path)
    assert str(path) in str(e.value)
    if where == "seal key":
        assert "not a sealed fsac model file" in str(e.value)
    else:
        assert "damaged or was modified" in str(e.value)


def test_changed_threshold_resealed_by_hand_needs_seal(tmp_path, sealed):
    """Editing the threshold and leaving the old seal is refused; the edit is visible to onnx."""
    raw = sealed.read_bytes()
    bad = raw.replace(b"\x12\x030.5", b"\x12\x030.9")
    assert bad != raw and len(bad) == len(raw)
    p = _write_raw(tmp_path / "edited.onnx", bad)
    assert {m.key: m.value for m in onnx.load(str(p)).metadata_props}["fsac.logit_threshold"] == "0.9"
    with pytest.raises(FsacError, match="modified after export"):
        load_model_file(p)


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -64, -1])
def test_truncated_file_is_refused(tmp_path, sealed, keep):
    raw = sealed.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(raw) + keep)
    p = _write_raw(tmp_path / "cut.onnx", raw[:n])
    with pytest.raises(FsacError) as e:
        load_model_file(p)
    assert str(p) in str(e.value)


def test_appended_bytes_are_refused(tmp_path, sealed):
    p = _write_raw(tmp_path / "longer.onnx", sealed.read_bytes() + b"\x00")
    with pytest.raises(FsacError, match="modified after export"):
        load_model_file(p)


# --------------------------------------------------------------------------- malformed contracts


def test_file_without_seal_entry_is_refused(tmp_path):
    data = build_model(base_metadata(**{SEAL_KEY: None}))
    with pytest.raises(FsacError, match="no fsac.seal entry") as e:
        write_model_file(tmp_path / "noseal.onnx", data)
    assert "noseal.onnx" in str(e.value)
    assert not (tmp_path / "noseal.onnx").exists()
    p = _write_raw(tmp_path / "raw-noseal.onnx", data)
    with pytest.raises(FsacError, match="not a sealed fsac model file") as e:
        load_model_file(p)
    assert str(p) in str(e.value)


def test_unsealed_placeholder_file_is_refused(tmp_path, model_bytes):
    """A file written without write_model_file still has the placeholder: refused."""
    p = _write_raw(tmp_path / "placeholder.onnx", model_bytes)
    with pytest.raises(FsacError, match="modified after export"):
        load_model_file(p)


def test_duplicated_seal_entry_is_refused(tmp_path):
    data = build_model(extra_entries=[(SEAL_KEY, "0" * 64)])
    with pytest.raises(FsacError, match="more than one fsac.seal"):
        write_model_file(tmp_path / "dup.onnx", data)
    p = _write_raw(tmp_path / "dup-raw.onnx", data)
    with pytest.raises(FsacError, match="more than one fsac.seal") as e:
        load_model_file(p)
    assert str(p) in str(e.value)


def test_duplicated_threshold_entry_is_refused(tmp_path):
    data = build_model(extra_entries=[("fsac.logit_threshold", "0.9")])
    p = write_model_file(tmp_path / "dupthr.onnx", data)  # the seal itself is fine
    with pytest.raises(FsacError, match="'fsac.logit_threshold' occurs more than once") as e:
        load_model_file(p)
    assert str(p) in str(e.value)


def test_format_1_file_is_refused_with_a_re_export_line(tmp_path):
    """A file from before the logit (outputs score/sim_pos/sim_neg, threshold in score units)."""
    p = write_model_file(tmp_path / "v1.onnx", build_model(base_metadata(**{"fsac.format_version": "1"})))
    with pytest.raises(FsacError, match=r"format version 1 was written by an older fsac.*Re-export it with `fsac export`"
                       ) as e:
        load_model_file(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_unknown_format_version_is_refused(tmp_path):
    p = write_model_file(tmp_path / "v99.onnx", build_model(base_metadata(**{"fsac.format_version": "99"})))
    with pytest.raises(FsacError, match="format version 99 is not supported") as e:
        load_model_file(p)
    assert str(p) in str(e.value)
    p2 = write_model_file(tmp_path / "vx.onnx", build_model(base_metadata(**{"fsac.format_version": "one"})))
    with pytest.raises(FsacError, match="bad fsac.format_version 'one'"):
        load_model_file(p2)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_required_key_is_refused(tmp_path, key):
    p = write_model_file(tmp_path / "m.onnx", build_model(base_metadata(**{key: None})))
    with pytest.raises(FsacError) as e:
        load_model_file(p)
    msg = str(e.value)
    assert str(p) in msg and "not an fsac model file" in msg and key in msg


def test_missing_several_keys_names_them_all(tmp_path):
    meta = base_metadata(**{"fsac.arch": None, "fsac.precision": None})
    p = write_model_file(tmp_path / "m.onnx", build_model(meta))
    with pytest.raises(FsacError, match="fsac.arch, fsac.precision"):
        load_model_file(p)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"fsac.logit_threshold": "abc"}, "bad fsac.logit_threshold 'abc'"),
        ({"fsac.logit_threshold": "nan"}, "not a finite number"),
        ({"fsac.logit_threshold": "inf"}, "not a finite number"),
        ({"fsac.preprocess": "{not json"}, "bad fsac.preprocess"),
        ({"fsac.preprocess": "[1, 2]"}, "bad fsac.preprocess"),
        ({"fsac.preprocess": json.dumps({"image_size": 8})}, "preprocess.image_size"),
        ({"fsac.preprocess": json.dumps({"image_size": "big"})}, "preprocess.image_size"),
        ({"fsac.preprocess": json.dumps({"colour": "red"})}, "unknown preprocessing settings"),
    ],
)
def test_bad_metadata_values_are_refused(tmp_path, override, match):
    p = write_model_file(tmp_path / "bad.onnx", build_model(base_metadata(**override)))
    with pytest.raises(FsacError, match=match) as e:
        load_model_file(p)
    assert str(p) in str(e.value)


def test_threshold_absent_or_empty_is_none(tmp_path):
    for i, thr in enumerate([None, ""]):
        p = write_model_file(tmp_path / f"uncal{i}.onnx", build_model(base_metadata(**{"fsac.logit_threshold": thr})))
        _, info = load_model_file(p)
        assert info.logit_threshold is None and info.threshold is None


def test_load_missing_file_or_folder(tmp_path):
    with pytest.raises(FsacError, match="model file not found") as e:
        load_model_file(tmp_path / "nope.onnx")
    assert "nope.onnx" in str(e.value)
    with pytest.raises(FsacError, match="not a file"):
        load_model_file(tmp_path)


def test_not_an_onnx_file_is_refused(tmp_path):
    p = _write_raw(tmp_path / "junk.onnx", b"\xff" * 300)
    with pytest.raises(FsacError) as e:
        load_model_file(p)
    assert str(p) in str(e.value)
    with pytest.raises(FsacError, match="not a valid ONNX model file"):
        read_metadata_bytes(b"\x72\x7f" + b"x" * 10, "junk")  # field 14 claims 127 bytes, has 10
    with pytest.raises(FsacError, match="not a valid ONNX model file"):
        read_metadata_bytes(b"\x09\x00\x00", "junk")  # 64-bit field with 2 bytes left


# --------------------------------------------------------------------------- writing


def test_write_refuses_existing_without_force(tmp_path, model_bytes):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"precious")
    with pytest.raises(FsacError, match="exists") as e:
        write_model_file(p, model_bytes)
    assert str(p) in str(e.value)
    assert p.read_bytes() == b"precious"
    write_model_file(p, model_bytes, force=True)
    _, info = load_model_file(p)
    assert info.object_name == "bottle"
    # a second force write with other metadata replaces it
    write_model_file(p, build_model(base_metadata(**{"fsac.logit_threshold": "0.25"})), force=True)
    _, info2 = load_model_file(p)
    assert info2.logit_threshold == 0.25 and info2.seal != info.seal
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.onnx"]


# --------------------------------------------------------------------------- metadata parsing


def test_read_metadata_bytes_skips_large_graph():
    meta = base_metadata(**{"fsac.note": "ünïcode ✓ " * 50, "fsac.empty": ""})
    data = build_model(meta, big_initializer_bytes=1 << 20)
    assert len(data) > (1 << 20)
    ours = read_metadata_bytes(data)
    model = onnx.load_from_string(data)
    theirs = {p.key: p.value for p in model.metadata_props}
    assert ours == theirs
    assert ours["fsac.note"].startswith("ünïcode ✓")
    assert ours["fsac.empty"] == ""
    assert len(ours) == len(meta)


def test_read_metadata_bytes_field_order_independent():
    """Protobuf readers accept fields in any order: metadata before the graph parses the same."""
    model = onnx.load_from_string(build_model())
    meta_only = onnx.ModelProto()
    meta_only.metadata_props.extend(model.metadata_props)
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    del rest.metadata_props[:]
    data = meta_only.SerializeToString() + rest.SerializeToString()
    assert read_metadata_bytes(data) == {p.key: p.value for p in model.metadata_props}
    assert {p.key: p.value for p in onnx.load_from_string(data).metadata_props} == read_metadata_bytes(data)


def test_import_needs_neither_torch_nor_onnx():
    code = (
        "import sys, fsac.modelfile, fsac.io, fsac.errors; "
        "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'open_clip', 'cv2') if m in sys.modules]; "
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- TensorRT sidecar


@pytest.fixture
def engine(tmp_path):
    p = tmp_path / "bottle.engine"
    p.write_bytes(bytes(range(256)) * 64)
    meta = {k: v for k, v in base_metadata().items()}
    meta["fsac.precision"] = "fp16"
    write_engine_sidecar(p, meta, {"tensorrt_version": "10.3.0", "max_batch": 8, "onnx_seal": "cd" * 32})
    return p


def test_engine_sidecar_round_trip(engine):
    side = engine_sidecar_path(engine)
    assert side.name == "bottle.engine.json" and side.is_file()
    data, info, sidecar = load_engine_file(engine)
    assert data == engine.read_bytes()
    assert info.seal == hashlib.sha256(data).hexdigest() == sidecar["engine_sha256"]
    assert info.precision == "fp16"
    assert info.logit_threshold == 0.5
    assert info.preprocess == PreprocessSpec(image_size=S)
    assert info.source == str(engine)
    assert sidecar["tensorrt_version"] == "10.3.0" and sidecar["max_batch"] == 8
    assert json.loads(side.read_text())["metadata"]["fsac.object"] == "bottle"


def test_engine_changed_byte_is_refused(engine):
    raw = bytearray(engine.read_bytes())
    raw[1000] ^= 0x01
    engine.write_bytes(bytes(raw))
    with pytest.raises(FsacError, match="do not match") as e:
        load_engine_file(engine)
    assert str(engine) in str(e.value)


def test_engine_missing_sidecar_or_engine(engine, tmp_path):
    engine_sidecar_path(engine).unlink()
    with pytest.raises(FsacError, match="sidecar not found") as e:
        load_engine_file(engine)
    assert "bottle.engine.json" in str(e.value)
    with pytest.raises(FsacError, match="engine file not found"):
        load_engine_file(tmp_path / "none.engine")


def test_engine_edited_sidecar_threshold_is_refused(engine):
    side = engine_sidecar_path(engine)
    obj = json.loads(side.read_text())
    obj["metadata"]["fsac.logit_threshold"] = "0.99"
    side.write_text(json.dumps(obj, indent=2))
    with pytest.raises(FsacError, match="edited after export") as e:
        load_engine_file(engine)
    assert str(side) in str(e.value)


def test_engine_sidecar_reformatted_is_accepted(engine):
    """The sidecar seal is over the content, not the formatting."""
    side = engine_sidecar_path(engine)
    obj = json.loads(side.read_text())
    side.write_text(json.dumps(dict(reversed(list(obj.items())))))
    _, info, _ = load_engine_file(engine)
    assert info.logit_threshold == 0.5


@pytest.mark.parametrize("content", ["{broken", "[1, 2, 3]"])
def test_engine_bad_sidecar_json(engine, content):
    side = engine_sidecar_path(engine)
    side.write_text(content)
    with pytest.raises(FsacError) as e:
        load_engine_file(engine)
    assert str(side) in str(e.value)


def test_engine_sidecar_reserved_extra_keys(engine):
    with pytest.raises(FsacError, match="reserved"):
        write_engine_sidecar(engine, base_metadata(), {"engine_sha256": "0" * 64})
