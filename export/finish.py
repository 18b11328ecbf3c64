"""The torch-free half of `fsac export`: from the traced graph to the sealed model file.

    result = finish_export(workdir, info, out, ...)   # workdir, info: from fsac.export.trace

    fold constants (fsac.export.fold) -> Cast before Transpose -> onnx checker
    -> parity with PyTorch on the real images (ONNX Runtime session from the file)
    -> optimise, measured, parity re-checked (fsac.export.optimize)
    -> metadata -> the self-contained file streamed and sealed into the work folder
    -> read back: seal and metadata verified, parity of the written file checked again
    -> only then renamed to the output (a file that fails a check never replaces the model)

The weights stay in the work folder's external-data files throughout; every session is
opened from a path and only one exists at a time, and the final file is assembled one
tensor at a time (`fsac.export.external.inline_model_parts`). So this process holds at most
one ONNX Runtime session's copy of the weights, not the two to four copies a parsed graph,
its serialized bytes and a session from bytes would make.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from fsac.errors import FsacError
from fsac.io import fsync_dir
from fsac.modelfile import OUTPUT_NAMES

FOLDED_GRAPH = "folded.onnx"
FOLDED_WEIGHTS = "folded.bin"
KEPT_GRAPH = "kept.onnx"
FINAL_FILE = "model.onnx"  # the sealed file, checked before it is renamed to the output


def fold_and_check(workdir: Path) -> tuple[Path, dict[str, int]]:
    """graph.onnx of the trace -> folded.onnx beside it (weights external), checked."""
    import onnx

    from fsac.export.external import TensorFile
    from fsac.export.fold import fold_constants
    from fsac.export.onnx_export import cast_before_transpose
    from fsac.export.trace import GRAPH_FILE

    model = onnx.load(str(workdir / GRAPH_FILE), load_external_data=False)
    counts = fold_constants(model, workdir, TensorFile(workdir / FOLDED_WEIGHTS))
    cast_before_transpose(model)
    path = workdir / FOLDED_GRAPH
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))  # from the path: external data is checked, not loaded
    return path, dict(counts)


def finish_export(workdir: Path, info: dict, out: Path, force: bool = False, tolerance: float = 1e-4,
                  optimize: str = "slim", quiet: bool = False) -> dict:
    """See the module docstring. -> the export report (what `fsac export --report` writes)."""
    import onnx

    from fsac.export.cli import _say
    from fsac.export.external import inline_model_parts
    from fsac.export.optimize import optimize_and_measure
    from fsac.export.parity import check_parity
    from fsac.export.trace import REFERENCE_FILE
    from fsac.metadata import write_stream_with_metadata
    from fsac.modelfile import inspect_model_file
    from fsac.procmem import give_back_memory

    ref = np.load(workdir / REFERENCE_FILE)
    pixels = ref["pixels"]
    torch_out = {k: ref[k] for k in OUTPUT_NAMES}
    names, tau = info["images"], info["tau"]

    t0 = time.perf_counter()
    folded, counts = fold_and_check(workdir)
    fold_s = time.perf_counter() - t0
    _say(quiet, f"folded {sum(counts.values())} constant nodes without torch in {fold_s:.1f} s")
    parity = check_parity(torch_out, folded, pixels, names, tau, tolerance, "fp32 ONNX graph")
    _say(quiet, f"parity: {parity.summary()}")
    give_back_memory()

    def reparity(model) -> float:
        return check_parity(torch_out, model, pixels, names, tau, tolerance,
                            f"{optimize}-optimised graph").max_abs_diff_logit

    graph, opt = optimize_and_measure(folded, optimize, pixels[:1], reparity,
                                      num_heads=info.get("heads"), hidden_size=info.get("width"))
    kept = workdir / KEPT_GRAPH  # the chosen graph's weights are still the work folder's files
    kept.write_bytes(graph)
    del graph
    give_back_memory()
    if optimize != "none":
        lat = ""
        if opt.latency_before_s is not None:
            lat = f", batch-1 latency {opt.latency_before_s * 1e3:.1f} -> {opt.latency_after_s * 1e3:.1f} ms"
        _say(quiet, f"optimise ({optimize}): {'kept' if opt.kept else 'not kept'} - {opt.reason}; "
                    f"nodes {opt.nodes_before} -> {opt.nodes_after}{lat}")
    final_diff = opt.parity_max_abs_diff if opt.kept and opt.parity_max_abs_diff is not None \
        else parity.max_abs_diff_logit

    meta = dict(info["metadata"])
    meta.update({
        "fsac.parity_max_abs_diff_logit": repr(float(final_diff)),
        "fsac.parity": json.dumps({**parity.to_dict(), "max_abs_diff_logit_final": float(final_diff),
                                   "images": [Path(n).name for n in names]}),
        "fsac.optimize": json.dumps(opt.to_dict()),
        # For the runtime benchmark's fraction of the CPU's peak (fsac-run has no torch to count).
        "fsac.gflop_per_image": f"{info['gflop_per_image']:.4f}",
    })
    model = onnx.load(str(kept), load_external_data=False)
    del model.metadata_props[:]
    _, chunks = inline_model_parts(model, workdir)
    # Written and checked in the work folder (the same file system), then renamed into place:
    # a file that fails the checks below never replaces the model at `out`.
    final = workdir / FINAL_FILE
    write_stream_with_metadata(final, chunks, meta, force=True)
    del model
    file_info = inspect_model_file(final)  # read back, streamed: the seal verifies, the metadata parses
    written = check_parity(torch_out, final, pixels, names, tau, tolerance, "written model file")
    if out.exists() and not force:  # created while this export ran
        raise FsacError(f"{out} exists; pass --force to overwrite it")
    if out.exists():  # keep the replaced file's mode, as every atomic write of fsac does
        os.chmod(final, out.stat().st_mode & 0o7777)
    os.replace(final, out)
    fsync_dir(out.parent)
    size = out.stat().st_size
    _say(quiet, f"wrote {out} ({size / 1e6:.1f} MB, seal {file_info.seal[:12]}...)")
    if info.get("random_weights"):
        _say(quiet, "note: RANDOM backbone weights - the file is fine for pipeline tests, its scores mean nothing")
    return {
        "model": str(out),
        "size_bytes": size,
        "seal": file_info.seal,
        "parity": parity.to_dict(),
        "optimize": opt.to_dict(),
        "parity_max_abs_diff_logit": float(final_diff),
        "parity_written_file_max_abs_diff_logit": written.max_abs_diff_logit,
        "folded_nodes": counts,
        "export_s": info["export_s"],
        "torch_reference_s": info["torch_reference_s"],
    }
