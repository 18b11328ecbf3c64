"""Metadata rewrite of a sealed model file without onnx: every other byte kept, re-sealed."""

from __future__ import annotations

import pytest

from fsac.errors import FsacError


def test_replace_metadata_keeps_the_graph(model_copy):
    import onnx

    from fsac.metadata import replace_metadata_bytes
    from fsac.modelfile import load_model_file, seal_bytes, verify_seal

    data, info = load_model_file(model_copy)
    new = replace_metadata_bytes(data, {**info.metadata, "fsac.threshold": "0.5", "x.other": "ü"})
    sealed = seal_bytes(new)
    verify_seal(sealed)
    a, b = onnx.load_from_string(data), onnx.load_from_string(sealed)
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    assert a.ir_version == b.ir_version and list(a.opset_import) == list(b.opset_import)
    meta = {p.key: p.value for p in b.metadata_props}
    assert meta["fsac.threshold"] == "0.5" and meta["x.other"] == "ü"
    assert list(meta)[-1] == "fsac.seal"  # exactly one seal entry, last
    assert sum(p.key == "fsac.seal" for p in b.metadata_props) == 1


def test_update_in_place_and_to_another_file(model_copy, tmp_path):
    from fsac.metadata import update_model_metadata
    from fsac.modelfile import load_model_file

    _, before = load_model_file(model_copy)
    path, info = update_model_metadata(model_copy, {"fsac.logit_threshold": "0.25", "fsac.head": None})
    assert path == model_copy and info.logit_threshold == 0.25 and info.seal != before.seal
    _, reread = load_model_file(model_copy)
    assert reread.logit_threshold == 0.25
    assert "fsac.head" not in reread.metadata and reread.metadata["fsac.object"] == "bottle"
    # Removing a key the contract requires gives a file the loader refuses: caught at once.
    with pytest.raises(FsacError, match="lacks fsac.object"):
        update_model_metadata(model_copy, {"fsac.object": None}, out=tmp_path / "c.onnx")
    assert not (tmp_path / "c.onnx").exists()

    out = tmp_path / "b.onnx"
    out.write_bytes(b"old")
    with pytest.raises(FsacError, match="--force"):
        update_model_metadata(model_copy, {"fsac.threshold": "0.3"}, out=out)
    assert out.read_bytes() == b"old"


def test_update_refuses_a_tampered_file(model_copy):
    from fsac.metadata import update_model_metadata

    data = bytearray(model_copy.read_bytes())
    data[len(data) // 3] ^= 0xFF
    model_copy.write_bytes(bytes(data))
    with pytest.raises(FsacError, match="modified after export"):
        update_model_metadata(model_copy, {"fsac.threshold": "0.3"})


def test_write_with_metadata_streams_a_sealed_file(model_copy, tmp_path):
    from fsac.errors import FsacError
    from fsac.metadata import replace_metadata_bytes, write_with_metadata
    from fsac.modelfile import load_model_file, seal_bytes

    data, info = load_model_file(model_copy)
    meta = {**info.metadata, "fsac.threshold": "0.25"}
    out = write_with_metadata(tmp_path / "m.onnx", data, meta)
    written, new_info = load_model_file(out)  # the seal verifies
    assert written == seal_bytes(replace_metadata_bytes(data, meta))  # the same bytes as in memory
    assert new_info.metadata["fsac.threshold"] == "0.25"
    with pytest.raises(FsacError, match="exists"):
        write_with_metadata(out, data, meta)
    # Bytes that already hold a seal entry outside metadata_props (here in an unknown field,
    # number 99): the written file would have two, so it is refused and nothing is left behind.
    from fsac.modelfile import SEAL_PLACEHOLDER

    entry = b"\x0a\x09fsac.seal\x12\x40" + SEAL_PLACEHOLDER
    twice = data + b"\x9a\x06" + bytes([len(entry)]) + entry
    with pytest.raises(FsacError):
        write_with_metadata(tmp_path / "bad.onnx", twice, meta)
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob("*.tmp"))
