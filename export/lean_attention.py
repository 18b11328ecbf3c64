"""Trace the encoder's self-attention as a lean graph: same function, fewer layout ops.

open_clip's ViT blocks call `nn.MultiheadAttention(batch_first=True)`. Its fast path has no
ONNX symbolic, and its slow path (`F.multi_head_attention_forward`) traces into 8 Transposes
plus Unsqueeze/Squeeze/Gather per block, because it works sequence-first and splits q, k, v
by reshaping three times. OpenVINO runs those Transposes with its reference kernel: on the
full ViT-B-16-plus-240 at batch 1 they took 85 calls, 2.4 ms of 30 ms (int8, AMX) and 3.9 ms
of 62 ms (int8 on AVX-512 VNNI) - time spent moving bytes, not multiplying.

While `export_onnx` traces, each such module is replaced by `LeanSelfAttention`, which holds
the very same Parameter objects under the same names (so initializer names, the quantizer's
node scopes and the parity check are unchanged) and computes, for x (B, N, C), H heads of
D = C / H:

    qkv = x W_in^T + b_in                      (B, N, 3C) -> (B, N, 3, H, D) -> (3, B, H, N, D)
    A   = softmax((q / sqrt(D)) k^T)            (B, H, N, N)
    out = (A v) -> (B, N, H, D) -> (B, N, C) -> out W_out^T + b_out

which is what the slow path computes (eval mode: no dropout; no mask, no bias_k/bias_v, no
zero attention: any module that has one of those is left as it was). Parity against the
unchanged PyTorch model is checked by `fsac export` as always; `--attention torch` traces
torch's own graph instead.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES = ("lean", "torch")


class LeanSelfAttention(nn.Module):
    """Self-attention of one `nn.MultiheadAttention(batch_first=True)`, sharing its weights.

    forward(query, key, value, need_weights=False, attn_mask=None) with query is key is
    value, (B, N, C) -> ((B, N, C), None), the call signature open_clip uses."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        # The same Parameter objects, registered under the names they had (state_dict keys,
        # and so ONNX initializer names, stay "...attn.in_proj_weight" etc.).
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.num_heads = mha.num_heads
        self.head_dim = mha.head_dim

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        if attn_mask is not None or need_weights or (key is not None and key is not query) \
                or (value is not None and value is not query):
            raise ValueError("LeanSelfAttention is self-attention without a mask or weights")
        b, n, c = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                       # (B, H, N, D) each
        attn = torch.softmax((q * self.head_dim ** -0.5) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)      # (B, N, C)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias), None


def is_replaceable(mha: nn.Module) -> bool:
    """A batch-first self-attention whose slow path is exactly `LeanSelfAttention`."""
    return (isinstance(mha, nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim
            and mha.in_proj_weight is not None and mha.in_proj_bias is not None
            and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn
            and mha.out_proj.bias is not None)


@contextmanager
def lean_attention(module: nn.Module, mode: str = "lean"):
    """Within the block, every replaceable `nn.MultiheadAttention` under `module` is a
    `LeanSelfAttention` (mode "lean"); on leaving, the originals are back. Yields the
    number replaced (0 for mode "torch")."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if mode == "lean":
        for parent in module.modules():
            for name, child in list(parent.named_children()):
                if is_replaceable(child):
                    swapped.append((parent, name, child))
    try:
        for parent, name, child in swapped:
            setattr(parent, name, LeanSelfAttention(child))
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
