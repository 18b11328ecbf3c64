"""The export traces the last block for [CLS] only: fewer operations, the same parity on
real images, the mode recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_tiny_export_class_token_vs_all_tokens(tiny_checkpoint, bottle):
    """On the tiny open_clip ViT: both graphs agree with PyTorch on real images through ONNX
    Runtime, the class-token graph's last MLP sees one token per image, and it has fewer
    operations (torch's FLOP counter, as the export reports them)."""
    import onnx

    from fsac.export.bench import model_flops
    from fsac.export.onnx_export import export_onnx
    from fsac.export.parity import run_torch
    from fsac.runner import load_pixels, make_session, run_session
    from fsac.train.checkpoint import load_checkpoint

    trained = load_checkpoint(tiny_checkpoint, device="cpu", quiet=True)
    deploy = trained.deploy_model()
    size = trained.backbone.spec.image_size
    last = len(deploy.visual.transformer.resblocks) - 1
    pixels = load_pixels(sorted((bottle / "test" / "broken_large").glob("*.png"))[:3], trained.backbone.spec)
    ref = run_torch(deploy, pixels)
    fc_out = f"/visual/transformer/resblocks.{last}/mlp/c_fc/MatMul_output_0"
    shapes = {}
    for mode in ("class-token", "all-tokens"):
        g = export_onnx(deploy, size, last_block=mode)
        assert "forward" not in vars(deploy.visual.transformer.resblocks[last])  # undone after the trace
        assert fc_out in {o for n in g.graph.node for o in n.output}
        consts = {t.name for t in g.graph.initializer}
        block_mm = [n for n in g.graph.node if n.op_type == "MatMul" and f"/resblocks.{last}/" in n.name]
        weight_mm = [n for n in block_mm if set(n.input) & consts]
        # the weights are initializers (folded slices), so a quantizer sees them as weight
        # products: in-projection as one (all tokens) or as Q and K,V (class token), out, fc, proj
        assert len(weight_mm) == {"class-token": 5, "all-tokens": 4}[mode], [n.name for n in block_mm]
        assert len(block_mm) - len(weight_mm) == 2  # Q K^T and A V, both of activations
        g.graph.output.append(onnx.helper.make_tensor_value_info(fc_out, onnx.TensorProto.FLOAT, None))
        session = make_session(g.SerializeToString())
        got = run_session(session, pixels, batch_size=3)
        for k in ("sim_normal", "sim_anomalous"):
            assert np.max(np.abs(got[k] - ref[k])) <= 1e-5, (mode, k)
        shapes[mode] = session.run([fc_out], {"image": pixels})[0].shape
    tokens = (size // 16) ** 2 + 1  # tiny config: patch 16
    assert shapes == {"class-token": (3, 1, shapes["all-tokens"][2]), "all-tokens": (3, tokens, shapes["all-tokens"][2])}
    assert model_flops(deploy, size, "class-token") < 0.8 * model_flops(deploy, size, "all-tokens")


def test_export_records_and_checks_the_last_block_mode(tiny_export, tiny_checkpoint, tmp_path):
    from fsac.errors import FsacError
    from fsac.export.cli import export_command
    from fsac.modelfile import load_model_file

    path, _ = tiny_export
    _, info = load_model_file(path)
    assert json.loads(info.metadata["fsac.export"])["last_block"] == "class-token"
    with pytest.raises(FsacError, match="--last-block"):
        export_command(tiny_checkpoint, out=tmp_path / "m.onnx", last_block="cls", quiet=True)
