"""Trace `DeployModel` into one fused ONNX graph and give it the fsac metadata.

The graph (see `fsac.modelfile` for the contract):

    "image"  uint8 [N, S, S, 3] RGB  (the output of `fsac.preprocess.resize_crop`)
      -> Cast float -> Transpose NCHW -> x * scale - shift      (PixelNormalize: mean/std)
      -> CLIP image encoder -> projected [CLS] feature F (N, C)
      -> image adapter + cross-attention with AT+ / AT- folded in as constants -> CF (N, C)
      -> "score" AS = sigmoid(logit) (N,), "logit" z = (s(CF, AT-) - s(CF, AT+)) / tau (N,),
         "sim_normal" s(CF, AT+) (N,), "sim_anomalous" s(CF, AT-) (N,)

N is a dynamic axis ("batch"). Normalisation lives in the graph, so the runtime feeds the
uint8 pixels of the one preprocessing implementation (`fsac.preprocess`) and nothing about
mean/std can drift between training and the line.

We use the TorchScript exporter (`dynamo=False`): it handles open_clip's ViT at opset 17
(LayerNormalization as one op) and produced the graph MEASURED.md timed. The fast path of
`nn.MultiheadAttention` (`aten::_native_multi_head_attention`) has no ONNX symbolic, so it
is switched off while tracing; the slow path computes the same function. With
`attention="lean"` (the default) the encoder's self-attention is traced through
`fsac.export.lean_attention` instead: the same function with 2 Transposes per block, not 8;
with `last_block="class-token"` (the default) the last block computes only the [CLS] row the
model reads (`fsac.train.last_block`).
"""

from __future__ import annotations

import io
import json
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import fsac
from fsac.modelfile import FORMAT_VERSION, INPUT_NAME, OUTPUT_NAMES
from fsac.score import VERDICT_RULE

DEFAULT_OPSET = 17
THRESHOLD_RULE = VERDICT_RULE


@contextmanager
def _mha_fastpath_disabled():
    import torch

    backends = getattr(torch.backends, "mha", None)
    if backends is None or not hasattr(backends, "set_fastpath_enabled"):
        yield
        return
    before = backends.get_fastpath_enabled()
    backends.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backends.set_fastpath_enabled(before)


def export_onnx(deploy_model, image_size: int, opset: int = DEFAULT_OPSET, attention: str = "lean",
                last_block: str = "class-token"):
    """`DeployModel` -> onnx.ModelProto with input "image" uint8 [batch, S, S, 3] and outputs
    "score", "logit", "sim_normal", "sim_anomalous" float32 [batch], weights folded in by
    torch, in memory. Metadata is added later. `fsac export` itself traces without weights
    and folds without torch (`fsac.export.trace`, `fsac.export.fold`), which needs a third of
    the memory; this is the one-call form for tests and small models.
    attention: "lean" or "torch" (see `fsac.export.lean_attention`); last_block: "class-token"
    or "all-tokens" (see `fsac.train.last_block`)."""
    import torch

    from fsac.train.last_block import last_block as last_block_traced
    from fsac.export.lean_attention import lean_attention

    deploy_model = deploy_model.eval()
    device = next(deploy_model.parameters()).device
    example = torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8, device=device)
    axes = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    target = io.BytesIO()
    with warnings.catch_warnings(), _mha_fastpath_disabled(), lean_attention(deploy_model, attention), \
            last_block_traced(deploy_model, last_block), torch.no_grad():
        # Deprecation notice of the TorchScript exporter, and trace warnings about
        # sqrt(C) turning into a constant (C is fixed for a model, so that is intended).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deploy_model, (example,), target, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    import onnx

    model = onnx.load_from_string(target.getvalue())
    del target
    cast_before_transpose(model)
    onnx.checker.check_model(model)
    return model


def cast_before_transpose(model) -> bool:
    """Rewrite `image -> Transpose -> Cast(float)` as `image -> Cast(float) -> Transpose`.

    Same numbers (a transpose moves values, a cast converts each one), but TensorRT accepts
    uint8 tensors only as network inputs feeding a Cast, so the uint8 input must meet a
    Cast first. Returns True if the graph was changed (False: already in that order).
    """
    g = model.graph
    consumers = [n for n in g.node if INPUT_NAME in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "Transpose":
        return False
    tr = consumers[0]
    casts = [n for n in g.node if tr.output[0] in n.input]
    if len(casts) != 1 or casts[0].op_type != "Cast":
        return False
    cast = casts[0]
    if any(tr.output[0] == o.name for o in g.output):
        return False
    mid_tr, mid_cast, out = tr.output[0], cast.input[0], cast.output[0]
    assert mid_tr == mid_cast
    # image -> Cast -> mid ; mid -> Transpose -> out
    cast.input[0] = INPUT_NAME
    cast.output[0] = mid_tr
    tr.input[0] = mid_tr
    tr.output[0] = out
    # Keep the node list topologically sorted: Cast must now come before Transpose.
    i_tr = list(g.node).index(tr)
    i_cast = list(g.node).index(cast)
    if i_cast > i_tr:
        nodes = list(g.node)
        nodes[i_tr], nodes[i_cast] = nodes[i_cast], nodes[i_tr]
        del g.node[:]
        g.node.extend(nodes)
    # The intermediate value changed dtype (uint8 -> float): drop stale shape info for it.
    stale = [vi for vi in g.value_info if vi.name == mid_tr]
    for vi in stale:
        g.value_info.remove(vi)
    return True


def serialize(model) -> bytes:
    """onnx.ModelProto -> bytes. The fused ViT-B-16-plus-240 is ~0.5 GB, under protobuf's
    2 GB limit, so one self-contained file (no external data) is possible and is what we want."""
    data = model.SerializeToString()
    if len(data) >= 2**31 - 1:
        from fsac.errors import FsacError

        raise FsacError("the model is larger than 2 GB, which one ONNX file cannot hold")
    return data


def io_metadata(image_size: int) -> tuple[str, str]:
    """JSON values of "fsac.inputs" and "fsac.outputs"."""
    inputs = [{"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", image_size, image_size, 3],
               "layout": "NHWC RGB, pixels of fsac.preprocess.resize_crop; normalisation is in the graph"}]
    outputs = [
        {"name": "score", "dtype": "float32", "shape": ["N"],
         "meaning": "anomaly score AS = sigmoid(logit) in [0, 1], for people; saturates"},
        {"name": "logit", "dtype": "float32", "shape": ["N"],
         "meaning": "anomaly logit z = (sim_anomalous - sim_normal) / tau: ranks and decides"},
        {"name": "sim_normal", "dtype": "float32", "shape": ["N"], "meaning": "cosine s(CF, AT+), normal prompts"},
        {"name": "sim_anomalous", "dtype": "float32", "shape": ["N"],
         "meaning": "cosine s(CF, AT-), anomalous prompts"},
    ]
    return json.dumps(inputs), json.dumps(outputs)


def build_metadata(trained, checkpoint_sha256: str, opset: int, precision: str = "fp32",
                   extra: dict[str, Any] | None = None, attention: str = "lean",
                   last_block: str = "class-token") -> dict[str, str]:
    """All "fsac.*" metadata of a freshly exported model (no threshold yet: `fsac calibrate`).

    `trained` is a `fsac.train.checkpoint.TrainedModel`. Values are strings, structured
    ones JSON. `extra` entries (already strings) are added last.
    """
    import onnx
    import onnxruntime
    import torch

    info = trained.backbone.info
    spec = trained.backbone.spec
    inputs, outputs = io_metadata(spec.image_size)
    meta = {
        "fsac.format_version": str(FORMAT_VERSION),
        "fsac.version": fsac.__version__,
        "fsac.arch": info.arch,
        "fsac.weights_id": info.weights_id,
        "fsac.weights_sha256": info.weights_sha256 or "",
        "fsac.weights_random": "true" if info.is_random else "false",
        "fsac.object": trained.object_name,
        "fsac.preprocess": json.dumps(spec.to_dict()),
        "fsac.inputs": inputs,
        "fsac.outputs": outputs,
        "fsac.checkpoint_sha256": checkpoint_sha256,
        "fsac.precision": precision,
        "fsac.tau": repr(float(trained.head.cfg.tau)),
        "fsac.head": json.dumps({**trained.head.cfg.to_dict(), "use_text_adapter": trained.use_text_adapter}),
        "fsac.threshold_rule": THRESHOLD_RULE,
        "fsac.export": json.dumps({
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "exporter": "torch.onnx.export (TorchScript, dynamo=False, no parameters, no folding) + fsac.export.fold",
            "opset": opset,
            "attention": attention,
            "last_block": last_block,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        }),
    }
    meta.update(extra or {})
    return meta
