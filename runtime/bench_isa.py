"""`fsac bench isa`: OpenVINO fp32 against INT8 with the CPU's instruction set capped, so that
one machine can say what the older classes of line-side PCs would get.

Each cap runs in its own process with `ONEDNN_MAX_CPU_ISA` set before OpenVINO loads (oneDNN,
and the OpenVINO CPU plugin built on it, read it once): AVX2 is an AVX2-only PC (Haswell to
Comet Lake), AVX2_VNNI an AVX2 PC with AVX-VNNI (Alder Lake and later Core CPUs, no AVX-512),
AVX512_CORE_VNNI a Cascade Lake / Ice Lake class CPU, no cap this CPU itself. Only OpenVINO is capped: ONNX
Runtime's MLAS kernels pick their instructions from cpuid and have no such setting, so they are
not timed here. A capped CPU is an emulation of an older one (same caches, clocks and memory),
so read the ratios, not the milliseconds. Models are read as sealed fsac files (seal verified).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CAPS = ("AVX2", "AVX2_VNNI", "AVX512_CORE_VNNI", "")  # "" = no cap (this CPU)

_CHILD = r"""
import json, os, sys, time
import numpy as np
from fsac.runtime.backends import load_model
from fsac.runtime.config import ModelConfig, OpenVinoConfig
out = {"cap_seen": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}
for name, path, precision in (("fp32", sys.argv[1], "f32"), ("int8", sys.argv[2], "int8")):
    model = load_model(ModelConfig(path=path, threshold=0.5, backend="openvino", batch_size=1, threads=int(sys.argv[4]),
                                   openvino=OpenVinoConfig(precision=precision)))
    size = model.info.image_size
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for _ in range(2):
        model.backend.infer(x)
    times = []
    for _ in range(int(sys.argv[3])):
        t = time.perf_counter()
        model.backend.infer(x)
        times.append(time.perf_counter() - t)
    out[name] = 1000 * float(np.median(times))
    model.backend.close()
print("FSAC-ISA " + json.dumps(out))
"""


def bench_isa(fp32_model: str | os.PathLike, int8_model: str | os.PathLike, repeats: int = 8,
              threads: int = 0, caps: tuple[str, ...] = CAPS) -> list[dict[str, Any]]:
    """Median batch-1 ms of OpenVINO f32 (the fp32 file) and int8 (the QDQ file) under each cap."""
    rows = []
    for cap in caps:
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if cap:
            env["ONEDNN_MAX_CPU_ISA"] = cap
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(fp32_model), str(int8_model), str(repeats),
                               str(threads)], env=env, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FSAC-ISA ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"cap": cap or "none", "error": tail})
            continue
        ms = json.loads(line.split(" ", 1)[1])
        rows.append({"cap": cap or "none", "cap_seen": ms["cap_seen"], "fp32_ms": ms["fp32"],
                     "int8_ms": ms["int8"], "int8_speedup": ms["fp32"] / ms["int8"]})
    return rows


# The targets for INT8 against fp32, by CPU class (AMX's target is on the best backend
# against ONNX Runtime fp32, in `fsac bench export`).
TARGETS = {"AVX2": 1.8, "AVX2_VNNI": 1.8, "AVX512_CORE_VNNI": 2.5}


def format_rows(rows: list[dict[str, Any]]) -> str:
    from fsac.peaks import cpu_flags, matrix_flags

    lines = [f"OpenVINO batch 1, median ms; CPU flags: {' '.join(matrix_flags(cpu_flags()))}",
             f"  {'ONEDNN_MAX_CPU_ISA':<20} {'f32':>9} {'int8':>9} {'int8 vs f32':>12}"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['cap']:<20} failed: {r['error']}")
            continue
        target = TARGETS.get(r["cap"])
        verdict = "" if target is None else (f"  (target >= {target}x: "
                                              f"{'met' if r['int8_speedup'] >= target else 'NOT met'})")
        lines.append(f"  {r['cap']:<20} {r['fp32_ms']:9.1f} {r['int8_ms']:9.1f} {r['int8_speedup']:11.2f}x{verdict}")
    lines.append("  a capped CPU emulates an older one (same caches and clocks); ONNX Runtime cannot be capped")
    return "\n".join(lines)


try:  # typer is a base dependency; the runtime itself does not need it
    from typing import Annotated, Optional

    import typer

    def bench_isa_command(
        model: Annotated[Path, typer.Option("--model", help="sealed fp32 fsac model file (.onnx)", exists=True,
                                            dir_okay=False)],
        int8: Annotated[Path, typer.Option("--int8", help="its INT8 QDQ file (`fsac quantize`)", exists=True,
                                           dir_okay=False)],
        repeats: Annotated[int, typer.Option("--repeats", min=1, help="timed calls per model and cap")] = 8,
        threads: Annotated[int, typer.Option("--threads", min=0, help="OpenVINO threads (0: its choice)")] = 0,
        out: Annotated[Optional[Path], typer.Option("--out", help="write the rows as JSON")] = None,
    ) -> None:
        """OpenVINO fp32 vs INT8 with the instruction set capped at AVX2, AVX2 + VNNI and AVX-512 VNNI."""
        rows = bench_isa(model, int8, repeats, threads)
        typer.echo(format_rows(rows))
        if out is not None:
            from fsac.io import atomic_write_json

            atomic_write_json(out, {"rows": rows})
            typer.echo(f"wrote {out}")

except ImportError:  # pragma: no cover
    pass
