"""Constant folding of the traced graph, without torch, one node at a time.

The tracing process exports with `do_constant_folding=False` and without parameters
(`fsac.export.trace`): torch's folding would compute a second copy of every weight (each
Linear's transposed matrix) while the first is still alive, and the exporter would then copy
both into its protobuf. Here the weight-only subgraphs (Transpose of a weight, the
normalisation of the text vectors, Constant nodes, shape arithmetic on constants) are
evaluated with ONNX's reference implementation of each op, reading only that node's inputs
and writing its outputs to the external-data file; a weight nobody uses afterwards is dropped.

    counts = fold_constants(model, workdir, TensorFile(workdir / "folded.bin"))

`Identity` of a constant is an alias, not a copy: its consumers are pointed at the source.
The export's parity check runs on the folded graph, so a fold that changed a number fails
the export like any other difference from PyTorch.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from fsac.export.external import TensorFile, tensor_array

INLINE_MAX_BYTES = 1 << 12  # folded tensors up to this size stay in the graph file
_NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli", "If", "Loop", "Scan"}


def _evaluate(node, inputs: dict[str, np.ndarray], opsets) -> list[np.ndarray]:
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in node.output if o])
    model = helper.make_model(graph, opset_imports=list(opsets))
    return ReferenceEvaluator(model).run(None, inputs)


def fold_constants(model, base_dir: str | os.PathLike, store: TensorFile) -> Counter:
    """Fold every node of `model` (in place) whose inputs are all constants -> {op: count}.
    `model.graph.initializer` may be external (relative to `base_dir`); large results are
    appended to `store`, small ones inline."""
    from onnx import numpy_helper

    g = model.graph
    consts = {t.name: t for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    folded: Counter = Counter()
    rename: dict[str, str] = {}
    kept = []
    for node in list(g.node):
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NOT_FOLDED
                    and all(not n or n in consts for n in node.input))
        if not foldable:
            kept.append(node)
            continue
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            rename[node.output[0]] = node.input[0]
            folded["Identity"] += 1
            continue
        arrays = {n: tensor_array(consts[n], base_dir) for n in dict.fromkeys(node.input) if n}
        results = _evaluate(node, arrays, model.opset_import)
        del arrays
        for name, value in zip([o for o in node.output if o], results):
            value = np.asarray(value)
            if value.nbytes <= INLINE_MAX_BYTES:
                t = numpy_helper.from_array(value, name)
            else:
                t = store.append(name, value)
            consts[name] = t
            g.initializer.append(t)
        folded[node.op_type] += 1
    del g.node[:]
    g.node.extend(kept)
    used = {n for node in g.node for n in node.input} | graph_outputs
    alive = [t for t in g.initializer if t.name in used]
    if len(alive) != len(g.initializer):
        keep = [t.SerializeToString() for t in alive]  # external or small: cheap to copy
        del g.initializer[:]
        for data in keep:
            g.initializer.add().ParseFromString(data)
    return folded
