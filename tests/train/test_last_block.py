"""The last block for [CLS] only (train/last_block.py): the same feature as the full block,
the module and its parameters untouched, left alone where other tokens are read."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import VisionTransformer

from fsac.train.last_block import class_token_forward, last_block, last_block_of
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
