"""The lean self-attention traced at export: the same function as torch's MultiheadAttention,
the same weights under the same names, fewer layout ops in the graph, parity on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fsac.export.lean_attention import LeanSelfAttention, is_replaceable, lean_attention


def _mha(dim=64, heads=4, **kw) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    m = nn.MultiheadAttention(dim, heads, batch_first=True, **kw).eval()
    with torch.no_grad():  # non-zero biases, so a dropped or misplaced bias shows
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    return m


@pytest.mark.parametrize("fastpath", [True, False])
def test_same_function_as_torch(fastpath):
    mha = _mha()
    x = torch.randn(3, 17, 64)
    backends = torch.backends.mha
    before = backends.get_fastpath_enabled()
    backends.set_fastpath_enabled(fastpath)
    try:
        with torch.no_grad():
            want = mha(x, x, x, need_weights=False)[0]
            got, weights = LeanSelfAttention(mha)(x, x, x, need_weights=False)
    finally:
        backends.set_fastpath_enabled(before)
    assert weights is None and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_refuses_what_it_does_not_compute():
    lean = LeanSelfAttention(_mha())
    x, other = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    with pytest.raises(ValueError):
        lean(x, other, other)
    with pytest.raises(ValueError):
        lean(x, x, x, attn_mask=torch.zeros(5, 5))
    with pytest.raises(ValueError):
        lean(x, x, x, need_weights=True)


def test_only_plain_batch_first_self_attention_is_replaced():
    assert is_replaceable(_mha())
    assert not is_replaceable(nn.MultiheadAttention(64, 4, batch_first=False))
    assert not is_replaceable(nn.MultiheadAttention(64, 4, batch_first=True, add_bias_kv=True))
    assert not is_replaceable(nn.MultiheadAttention(64, 4, batch_first=True, kdim=32, vdim=32))
    assert not is_replaceable(nn.MultiheadAttention(64, 4, batch_first=True, bias=False))
    assert not is_replaceable(nn.Linear(4, 4))


def test_swaps_in_and_back_with_the_same_parameters():
    model = nn.Sequential(_mha(), nn.MultiheadAttention(64, 4, batch_first=False))
    original = model[0]
    keys = list(model.state_dict())
    params = {k: v.data_ptr() for k, v in model.state_dict().items()}
    with lean_attention(model) as n:
        assert n == 1 and isinstance(model[0], LeanSelfAttention)
        assert isinstance(model[1], nn.MultiheadAttention)  # sequence-first: left alone
        # The state_dict keys (so the ONNX initializer names) and the tensors are the same.
        assert list(model.state_dict()) == keys
        assert {k: v.data_ptr() for k, v in model.state_dict().items()} == params
    assert model[0] is original
    with lean_attention(model, "torch") as n:
        assert n == 0 and model[0] is original
    with pytest.raises(ValueError):
        with lean_attention(model, "fast"):
            pass
    assert model[0] is original


def test_swapped_back_after_an_error():
    model = nn.Sequential(_mha())
    original = model[0]
    with pytest.raises(RuntimeError):
        with lean_attention(model):
            raise RuntimeError("trace failed")
    assert model[0] is original


def test_tiny_export_lean_vs_torch_graph(tiny_checkpoint, bottle):
    """On the tiny open_clip ViT: every block's attention is replaced, the graph has fewer
    Transposes and no Squeeze, the initializer names are the same, and both graphs agree
    with PyTorch on real images through ONNX Runtime."""
    from fsac.export.onnx_export import export_onnx
    from fsac.export.parity import run_torch
    from fsac.runner import load_pixels, make_session, run_session
    from fsac.train.checkpoint import load_checkpoint

    trained = load_checkpoint(tiny_checkpoint, device="cpu", quiet=True)
    deploy = trained.deploy_model()
    blocks = len(deploy.visual.transformer.resblocks)
    pixels = load_pixels(sorted((bottle / "test" / "broken_large").glob("*.png"))[:3], trained.backbone.spec)
    ref = run_torch(deploy, pixels)
    # Every block as trained (the class-token last block computes its own attention either way).
    graphs = {mode: export_onnx(deploy, trained.backbone.spec.image_size, attention=mode, last_block="all-tokens")
              for mode in ("lean", "torch")}
    ops = {m: [n.op_type for n in g.graph.node] for m, g in graphs.items()}
    assert ops["lean"].count("Transpose") <= ops["torch"].count("Transpose") - 5 * blocks
    assert ops["lean"].count("Squeeze") == 0 < ops["torch"].count("Squeeze")
    # The same weights: as many initializers, as many bytes (the exporter folds W^T into new
    # "onnx::MatMul_*" names in both graphs), and the biases under their parameter names.
    inits = {m: g.graph.initializer for m, g in graphs.items()}
    assert len(inits["lean"]) == len(inits["torch"])
    assert sum(len(t.raw_data) for t in inits["lean"]) == sum(len(t.raw_data) for t in inits["torch"])
    assert "visual.transformer.resblocks.0.attn.in_proj_bias" in {t.name for t in inits["lean"]}
    # and the torch model is as it was (the swap was undone)
    assert isinstance(deploy.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)
    for mode, g in graphs.items():
        got = run_session(make_session(g.SerializeToString()), pixels, batch_size=3)
        for k in ("sim_normal", "sim_anomalous"):
            assert np.max(np.abs(got[k] - ref[k])) <= 1e-5, (mode, k)


def test_export_records_and_checks_the_attention_mode(tiny_export, tiny_checkpoint, tmp_path):
    import json

    from fsac.errors import FsacError
    from fsac.export.cli import export_command
    from fsac.modelfile import load_model_file

    path, _ = tiny_export
    _, info = load_model_file(path)
    assert json.loads(info.metadata["fsac.export"])["attention"] == "lean"
    with pytest.raises(FsacError, match="--attention"):
        export_command(tiny_checkpoint, out=tmp_path / "m.onnx", attention="fast", quiet=True)
