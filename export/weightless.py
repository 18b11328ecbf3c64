"""Run a graph optimiser on a graph without its weights, then give the weights back.

onnxslim's shape inference serializes and re-parses the whole model several times: on the
471 MB ViT-B-16-plus-240 export it peaked at 3.7 GB for a 1 GB input (measured). What it
needs from the weights is their shapes and types, not their values: the TorchScript
exporter has already folded every weight-only subgraph (do_constant_folding=True). So each
large initializer is turned into a graph input of the same name, shape and type while the
optimiser runs, and is put back afterwards from a stash of its serialized bytes.

    stash = detach_weights(model)       # model: large initializers -> typed graph inputs
    model = optimiser(model)            # sees a graph of a few MB
    attach_weights(model, stash)        # inputs -> the original initializers, bit for bit

The optimiser cannot fold through a detached weight, which is the point: the weights come
back unchanged, and the export's parity check then runs on the result as usual.
"""

from __future__ import annotations

from fsac.errors import FsacError

DETACH_MIN_BYTES = 1 << 16  # smaller constants (biases, the head's vectors) stay foldable


def detach_weights(model, min_bytes: int = DETACH_MIN_BYTES) -> dict[str, bytes]:
    """Move every initializer with at least `min_bytes` of raw data, and every external one,
    out of `model` (in place) -> {name: serialized TensorProto}. Memory: the weights exist once throughout,
    as proto or as stash bytes."""
    from onnx import helper

    from fsac.export.external import is_external

    g = model.graph
    stash: dict[str, bytes] = {}
    kept = []
    for t in list(g.initializer):
        if len(t.raw_data) < min_bytes and not is_external(t):
            kept.append(t.SerializeToString())
            continue
        stash[t.name] = t.SerializeToString()  # an external weight's entry is its file reference
        g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        t.ClearField("raw_data")  # frees this weight's copy inside the proto now
    del g.initializer[:]
    for data in kept:
        g.initializer.add().ParseFromString(data)
    return stash


def attach_weights(model, stash: dict[str, bytes], inputs: tuple[str, ...]) -> None:
    """Undo `detach_weights` on the optimised `model` (in place; `stash` is emptied).
    `inputs`: the graph's real inputs. Weights the optimiser made unused are dropped; any
    other input left over means the optimiser renamed a weight, and is an error."""
    g = model.graph
    for vi in [i for i in g.input if i.name in stash]:
        g.input.remove(vi)
    used = {name for n in g.node for name in n.input} | {o.name for o in g.output}
    for name in [n for n in stash if n in used]:
        g.initializer.add().ParseFromString(stash.pop(name))
    stash.clear()
    strays = sorted(i.name for i in g.input if i.name not in inputs)
    if strays:
        raise FsacError(f"the optimiser changed the graph's inputs (now also {strays[:5]}); "
                        "export with --optimize none")
