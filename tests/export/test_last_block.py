"""The encoder's last block traced for [CLS] only: the same feature as the full block, the
same parameters under the same names, fewer operations, parity on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from open_clip.transformer import VisionTransformer

from fsac.export.last_block import class_token_forward, last_block, last_block_of
from fsac.export.lean_attention import lean_attention


def _vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_ratio=4.0,
                            output_dim=48, **kw).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a dropped or misplaced bias shows
        for name, p in vit.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return vit


@pytest.mark.parametrize("ls_init_value", [None, 0.3])
@pytest.mark.parametrize("attention", ["torch", "lean"])
def test_same_feature_as_the_full_block(ls_init_value, attention):
    vit = _vit(ls_init_value=ls_init_value)
    x = torch.randn(3, 3, 32, 32)
    block = vit.transformer.resblocks[-1]
    with torch.no_grad(), lean_attention(vit, attention):
        tokens = vit.transformer.resblocks[0](vit._embeds(x))        # (B, N, C) into the last block
        want = block(tokens)
        got = class_token_forward(block, tokens)
        feature = vit(x)
        with last_block(vit) as active:
            assert active
            feature_cls = vit(x)
    assert got.shape == (3, 1, 64) and want.shape == (3, 17, 64)
    torch.testing.assert_close(got[:, 0], want[:, 0], atol=2e-6, rtol=1e-5)
    assert not torch.allclose(want[:, 1], want[:, 0])  # token 0 is not every token
    torch.testing.assert_close(feature_cls, feature, atol=2e-6, rtol=1e-5)


def test_the_block_and_its_parameters_are_untouched():
    vit = _vit()
    block = vit.transformer.resblocks[-1]
    keys = list(vit.state_dict())
    params = {k: v.data_ptr() for k, v in vit.state_dict().items()}
    with last_block(vit):
        assert "forward" in vars(block)
        assert list(vit.state_dict()) == keys
        assert {k: v.data_ptr() for k, v in vit.state_dict().items()} == params
    assert "forward" not in vars(block)
    with pytest.raises(RuntimeError):
        with last_block(vit):
            raise RuntimeError("trace failed")
    assert "forward" not in vars(block)
    with last_block(vit, "all-tokens") as active:
        assert not active and "forward" not in vars(block)
    with pytest.raises(ValueError, match="last-block mode"):
        with last_block(vit, "cls"):
            pass


def test_left_alone_where_other_tokens_are_read():
    assert last_block_of(_vit()) is not None
    assert last_block_of(_vit(pool_type="avg")) is None
    assert last_block_of(_vit(output_tokens=True)) is None
    assert last_block_of(_vit(attentional_pool=True, attn_pooler_queries=4)) is None
    assert last_block_of(torch.nn.Linear(3, 3)) is None
    vit = _vit(pool_type="avg")
    with last_block(vit) as active:
        assert not active
    block = vit.transformer.resblocks[-1]
    with pytest.raises(ValueError):
        class_token_forward(block, torch.zeros(1, 5, 64), attn_mask=torch.zeros(5, 5))


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
