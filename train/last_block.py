"""The encoder's last block for the one token the model reads: [CLS].

open_clip's ViT with `pool_type="tok"` and no attentional pooler keeps only token 0 of the
last block's output (`ln_post`, then `x[:, 0] @ proj`). Of that block, every token is needed
only as a key and a value: LayerNorm and the MLP act on each token alone, and the attention
output of token 0 depends on its own query and on all keys and values. So the last block
can compute, for x (B, N, C) and H heads of D = C / H:

    h      = ln_1(x)                                     (B, N, C)   every token
    k, v   = h W_kv^T + b_kv                             (B, N, 2C)  W_kv = in_proj_weight[C:]
    q      = h[:, :1] W_q^T + b_q                        (B, 1, C)   W_q  = in_proj_weight[:C]
    x0     = x[:, :1] + out_proj(softmax(q k^T / sqrt(D)) v)        (B, 1, C)
    return x0 + mlp(ln_2(x0))                                       (B, 1, C)

the same numbers for token 0 as the full block, the other N - 1 rows never computed. On
ViT-B-16-plus-240 (N = 226, C = 896) that is 0.37 of the block's 2.27 G multiply-adds per
image instead of all of them: 7 % of the encoder, on every backend. `ln_post` and the pool
then see (B, 1, C), and token 0 is token 0.

While `export_onnx` / `fsac export` trace, the last block's `forward` is this one (mode
"class-token", the default); the module, its parameters and their names are untouched, so
initializer names and the quantizer's node scopes stay "/visual/transformer/resblocks.11/...".
The PyTorch reference runs the unchanged block, and the export's parity check holds the
graph to it. Mode "all-tokens" traces the block as it is. A model this does not fit (an
attentional pooler, average pooling, output tokens, a cross-attention block) is traced as
it is, whichever the mode. `Backbone.encode_images` runs the same block while training and
evaluation encode images, so the training features and the exported file share one definition.
"""

from __future__ import annotations

import functools
import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

LAST_BLOCK_MODES = ("class-token", "all-tokens")


def class_token_forward(block: nn.Module, q_x: torch.Tensor, k_x=None, v_x=None, attn_mask=None, *,
                        width: int | None = None) -> torch.Tensor:
    """open_clip `ResidualAttentionBlock.forward` for token 0 only: (B, N, C) -> (B, 1, C).

    `width` (C) is a Python int when tracing: the weight slices `in_proj_weight[:C]` and
    `[C:]` then have constant bounds, and the export's folding makes them initializers, so
    the quantizer sees two weight products. Bounds read from `q_x.shape` would be traced as
    shape arithmetic on the input, and the slices would stay in the graph as activations."""
    if k_x is not None or v_x is not None or attn_mask is not None:
        raise ValueError("the class-token last block is self-attention without a mask")
    attn = block.attn  # nn.MultiheadAttention or its lean stand-in: the same attributes
    b, n = q_x.shape[:2]
    c = width if width is not None else q_x.shape[2]
    heads = attn.num_heads
    d = c // heads
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    h = block.ln_1(q_x)
    q = F.linear(h[:, :1], w[:c], bias[:c]).reshape(b, 1, heads, d).transpose(1, 2)    # (B, H, 1, D)
    kv = F.linear(h, w[c:], bias[c:]).reshape(b, n, 2, heads, d).permute(2, 0, 3, 1, 4)  # (2, B, H, N, D)
    a = torch.softmax((q * d ** -0.5) @ kv[0].transpose(-2, -1), dim=-1)              # (B, H, 1, N)
    o = (a @ kv[1]).transpose(1, 2).reshape(b, 1, c)
    x0 = q_x[:, :1] + block.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
    return x0 + block.ls_2(block.mlp(block.ln_2(x0)))


def last_block_of(visual: nn.Module) -> nn.Module | None:
    """The last ResidualAttentionBlock of an open_clip ViT whose output is read at token 0
    only, or None when the model is not of that kind."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not blocks or getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", None) != "tok" \
            or getattr(visual, "output_tokens", False) or not getattr(visual.transformer, "batch_first", False):
        return None
    block = blocks[-1]
    attn = getattr(block, "attn", None)
    parts = ("ln_1", "ln_2", "ls_1", "ls_2", "mlp")
    if hasattr(block, "ln_1_kv") or not all(hasattr(block, p) for p in parts) or attn is None:
        return None
    if getattr(attn, "in_proj_weight", None) is None or getattr(attn, "in_proj_bias", None) is None \
            or getattr(attn, "out_proj", None) is None or getattr(attn.out_proj, "bias", None) is None:
        return None
    if isinstance(attn, nn.MultiheadAttention) and (not attn.batch_first or not attn._qkv_same_embed_dim
                                                    or attn.bias_k is not None or attn.add_zero_attn):
        return None
    return block


@contextmanager
def last_block(module: nn.Module, mode: str = "class-token"):
    """Within the block, the last encoder block of `module` (a `DeployModel`, or anything with
    a `.visual`) computes token 0 only (mode "class-token"). Yields True if it does."""
    if mode not in LAST_BLOCK_MODES:
        raise ValueError(f"last-block mode must be one of {LAST_BLOCK_MODES}, got {mode!r}")
    visual = getattr(module, "visual", module)
    block = last_block_of(visual) if mode == "class-token" else None
    if block is None:
        yield False
        return
    width = int(block.attn.in_proj_weight.shape[1])  # read here, outside any trace
    block.forward = types.MethodType(functools.partial(class_token_forward, width=width), block)
    try:
        yield True
    finally:
        del block.forward
