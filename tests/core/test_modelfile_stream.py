"""Every test of test_modelfile.py again, with `load_model_file` replaced by the streaming
`inspect_model_file` that fsac-run uses, read in 7-byte chunks so the seal entry falls across
chunk boundaries at every possible offset in some test."""

import functools
from pathlib import Path

import pytest

import fsac.modelfile as mf
import tests.core.test_modelfile as base
from tests.core.test_modelfile import *  # noqa: F401,F403 - collect the same tests here


@pytest.fixture(autouse=True)
def streaming_loader(monkeypatch):
    monkeypatch.setattr(mf, "_stream_seal", functools.partial(mf._stream_seal, chunk=7))

    def load(path):
        info = mf.inspect_model_file(path)
        return Path(path).read_bytes(), info

    monkeypatch.setattr(base, "load_model_file", load)


def test_streaming_and_in_memory_loaders_agree(sealed):
    data, info = mf.load_model_file(sealed)
    streamed = mf.inspect_model_file(sealed)
    assert streamed.seal == info.seal and streamed.metadata == info.metadata


def test_source_name_is_used_in_messages(tmp_path, sealed):
    data = bytearray(Path(sealed).read_bytes())
    data[len(data) // 3] ^= 0x10
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(mf.FsacError, match="line3-model.onnx"):
        mf.inspect_model_file(bad, source="line3-model.onnx")
