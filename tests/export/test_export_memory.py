"""The export keeps one copy of the graph: the optimiser takes a file or bytes, returns bytes,
and times both graphs from scratch files; the text tower is freed before tracing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fsac.errors import FsacError


@pytest.mark.parametrize("given", ["bytes", "path"])
def test_optimize_takes_a_file_or_bytes_and_returns_bytes(tiny_export, tmp_path, given):
    import onnx

    from fsac.export.optimize import optimize_and_measure
    from fsac.modelfile import load_model_file

    data, info = load_model_file(tiny_export[0])
    px = np.zeros((1, info.image_size, info.image_size, 3), np.uint8)
    src = tmp_path / "graph.onnx"
    src.write_bytes(data)
    model = data if given == "bytes" else src
    seen = []

    def parity(candidate) -> float:  # the optimised graph, as a scratch file
        seen.append(os.path.getsize(candidate))
        return 0.0

    out, rep = optimize_and_measure(model, "slim", px, parity)
    assert isinstance(out, bytes) and seen and rep.latency_before_s > 0 and rep.load_before_s > 0
    assert rep.nodes_before == len(onnx.load_from_string(data).graph.node)
    if rep.kept:
        assert len(onnx.load_from_string(out).graph.node) == rep.nodes_after and len(out) == seen[0]
    else:
        assert out == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.onnx"]  # no scratch file left behind

    def failing(candidate) -> float:
        raise FsacError("parity check failed (test)")

    out, rep = optimize_and_measure(model, "slim", px, failing)
    assert out == data and not rep.kept and "parity lost" in rep.reason  # the original, untouched


def test_export_frees_the_torch_weights_when_asked(tmp_path, bottle_shots, models):
    import gc
    import weakref

    from fsac.export.cli import export_trained
    from fsac.train.checkpoint import random_trained_model

    trained = random_trained_model(models.TINY_ARCH, 0, tau=0.05, object_name="bottle")
    alive = weakref.ref(trained.backbone.model)
    export_trained(trained, "0" * 64, tmp_path / "m.onnx", bottle_shots, quiet=True, release_torch=True)
    gc.collect()
    assert alive() is None and trained.backbone.model is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the trace scratch file is gone
    kept = random_trained_model(models.TINY_ARCH, 0, tau=0.05, object_name="bottle")
    export_trained(kept, "0" * 64, tmp_path / "k.onnx", bottle_shots, quiet=True)
    assert kept.backbone.model is not None  # the benchmark times PyTorch after exporting
    with pytest.raises(FsacError):
        export_trained(kept, "0" * 64, tmp_path / "k.onnx", bottle_shots, quiet=True)  # exists, no force
