"""Graph optimisation: measured, parity re-checked, kept only when it holds."""

from __future__ import annotations

import numpy as np
import pytest

from fsac.errors import FsacError


@pytest.fixture(scope="module")
def graph_and_pixels(tiny_checkpoint, bottle):
    from fsac.runner import load_pixels
    from fsac.export.onnx_export import export_onnx
    from fsac.export.parity import run_torch
    from fsac.train.checkpoint import load_checkpoint

    trained = load_checkpoint(tiny_checkpoint, device="cpu", quiet=True)
    deploy = trained.deploy_model()
    pixels = load_pixels(sorted((bottle / "test" / "good").glob("*.png"))[:3], trained.backbone.spec)
    return export_onnx(deploy, 240), pixels, run_torch(deploy, pixels)


def test_slim_is_measured_and_keeps_parity(graph_and_pixels):
    from fsac.export.optimize import optimize_and_measure
    from fsac.export.parity import check_parity

    model, pixels, ref = graph_and_pixels
    seen = []

    def parity(data: bytes) -> float:
        d = check_parity(ref, data, pixels, ["a", "b", "c"], tau=0.01).max_abs_diff_logit
        seen.append(d)
        return d

    n_before = len(model.graph.node)
    kept_model, rep = optimize_and_measure(model, "slim", pixels[:1], parity)
    assert seen and seen[0] <= 1e-2  # parity (logit, tau 0.01) was re-checked on the optimised graph
    assert rep.nodes_before == n_before and rep.nodes_after < n_before  # onnxslim folds shape arithmetic
    assert rep.latency_before_s > 0 and rep.latency_after_s > 0 and rep.load_before_s > 0
    assert len(model.graph.node) == n_before  # the input graph was not changed in place
    if rep.kept:
        assert kept_model is not model and len(kept_model.graph.node) == rep.nodes_after
    else:
        assert kept_model is model and "slower" in rep.reason


def test_optimised_graph_dropped_when_parity_breaks(graph_and_pixels):
    from fsac.export.optimize import optimize_and_measure

    model, pixels, _ = graph_and_pixels

    def broken(data: bytes) -> float:
        raise FsacError("parity check failed: max |Δ score| = 1 exceeds the tolerance")

    kept, rep = optimize_and_measure(model, "slim", pixels[:1], broken)
    assert kept is model and not rep.kept and "parity lost" in rep.reason


def test_none_and_bad_method(graph_and_pixels):
    from fsac.export.optimize import optimize_and_measure, optimize_graph

    model, pixels, _ = graph_and_pixels
    kept, rep = optimize_and_measure(model, "none", pixels[:1], lambda d: 0.0)
    assert kept is model and not rep.kept and rep.method == "none"
    with pytest.raises(FsacError, match="--optimize must be one of"):
        optimize_graph(model, "fast")


def test_time_alternating_times_each_file_with_one_session_at_a_time(graph_and_pixels, tmp_path):
    from fsac.export.optimize import time_alternating

    model, pixels, _ = graph_and_pixels
    paths = {"a": tmp_path / "a.onnx", "b": tmp_path / "b.onnx"}
    for p in paths.values():
        p.write_bytes(model.SerializeToString())
    lat, loads = time_alternating(paths, pixels[:1], runs=3, rounds=2, min_seconds=0.0)
    assert set(lat) == set(loads) == {"a", "b"}
    assert all(np.isfinite(v) and v > 0 for v in [*lat.values(), *loads.values()])
