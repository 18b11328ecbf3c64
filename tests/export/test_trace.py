"""The torch half of the export: a weightless trace, every weight written once, in its own process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def test_trace_writes_a_small_graph_its_weights_and_the_reference(tmp_path, tiny_checkpoint, bottle_shots):
    import onnx

    from fsac.export.external import is_external
    from fsac.export.trace import GRAPH_FILE, REFERENCE_FILE, WEIGHTS_FILE, trace_to_dir
    from fsac.export.weightless import DETACH_MIN_BYTES
    from fsac.modelfile import OUTPUT_NAMES
    from fsac.train.checkpoint import load_checkpoint

    trained = load_checkpoint(tiny_checkpoint, device="cpu", quiet=True)
    n_params = sum(p.numel() for p in trained.deploy_model().parameters())
    info = trace_to_dir(trained, "0" * 64, bottle_shots, tmp_path, quiet=True)
    json.dumps(info)  # crosses a process boundary as JSON
    graph = onnx.load(str(tmp_path / GRAPH_FILE), load_external_data=False)
    assert [i.name for i in graph.graph.input] == ["image"]  # every weight input became an initializer
    big = [t for t in graph.graph.initializer if not is_external(t)]
    assert all(len(t.raw_data) < DETACH_MIN_BYTES for t in big)  # only biases and norms stay inline
    assert (tmp_path / WEIGHTS_FILE).stat().st_size >= 0.9 * 4 * n_params - sum(len(t.raw_data) for t in big)
    weights = {t.name for t in graph.graph.initializer}
    assert any(n.op_type == "Transpose" and n.input[0] in weights for n in graph.graph.node)  # torch folded nothing
    ref = np.load(tmp_path / REFERENCE_FILE)
    assert ref["pixels"].shape[0] == len(bottle_shots) and set(OUTPUT_NAMES) <= set(ref.files)
    assert info["metadata"]["fsac.checkpoint_sha256"] == "0" * 64 and info["tau"] > 0


def test_fsac_export_never_imports_torch_itself(tmp_path, tiny_checkpoint):
    """The command's own process stays torch-free: torch, open_clip and the torch weights
    live in the tracing child, and are gone when the ONNX-side sessions open."""
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from fsac.export.cli import export_command\n"
        f"res = export_command(Path({str(tiny_checkpoint)!r}), out=Path({str(tmp_path / 'm.onnx')!r}), quiet=True)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'open_clip': 'open_clip' in sys.modules,"
        " 'peak': res['peak_rss']}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["open_clip"] is False
    peak = out["peak"]
    assert peak["trace_process_bytes"] > peak["export_process_while_tracing_bytes"] > 0
    assert (tmp_path / "m.onnx").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
