"""`fsac bench isa`: fp32 against INT8 with the CPU made to look like an older one, so that one
machine can say what the older classes of line-side PCs would get.

Caps: AVX2 is an AVX2-only PC (Haswell to Comet Lake), AVX2_VNNI an AVX2 PC with AVX-VNNI
(Alder Lake and later Core CPUs, no AVX-512), AVX512_CORE_VNNI a Cascade Lake / Ice Lake class
CPU, no cap this CPU itself. Each cap runs in its own process, by one of two methods:

  cpuid   `runtime/native/cpuid_mask.c`, compiled here with the system C compiler and
          LD_PRELOADed: CPUID faulting makes every library see the older CPU's feature bits,
          so ONNX Runtime's MLAS kernels, oneDNN and OpenVINO's own JIT kernels all pick the
          older instructions, and both runtimes are timed.
  onednn  where that cannot work (no C compiler, no CPUID faulting): ONEDNN_MAX_CPU_ISA only,
          which caps oneDNN's kernels inside OpenVINO but not OpenVINO's own nor ONNX
          Runtime's (MLAS reads cpuid and has no such setting): OpenVINO rows only.

The cap seen by the child is reported with every row. A capped CPU keeps its caches, clocks
and memory: read the ratios, not the milliseconds. Models are read as sealed fsac files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CAPS = ("AVX2", "AVX2_VNNI", "AVX512_CORE_VNNI", "")  # "" = no cap (this CPU)
MASK_SOURCE = Path(__file__).resolve().parent / "native" / "cpuid_mask.c"

_CHILD = r"""
import ctypes, json, os, sys
import numpy as np
from fsac.runtime.backends import load_model
from fsac.runtime.config import ModelConfig, OpenVinoConfig
from fsac.cpu_quiet import interleaved
try:
    mask = ctypes.CDLL(None).fsac_cpuid_cap()
except AttributeError:
    mask = None
out = {"cap_seen": os.environ.get("FSAC_CPUID_CAP") or os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
       "cpuid_mask_level": mask}
runs = [("openvino", "fp32", sys.argv[1], "f32"), ("openvino", "int8", sys.argv[2], "int8")]
if sys.argv[5] in ("cpuid", "none"):
    runs = [("onnxruntime", "fp32", sys.argv[1], ""), ("onnxruntime", "int8", sys.argv[2], "")] + runs
# All of them are loaded first and timed in interleaved rounds (the order rotating), each call
# after the process has gone quiet: timed one backend after another, the machine's drift
# between the blocks had been as large as the ratios (AVX2 EPYC: 1.41x and 1.59x for the same
# CPU in one run).
models, x = {}, None
for backend, name, path, precision in runs:
    kw = {"openvino": OpenVinoConfig(precision=precision)} if backend == "openvino" else {}
    model = load_model(ModelConfig(path=path, threshold=0.5, backend=backend, batch_size=1, threads=int(sys.argv[4]),
                                   **kw))
    size = model.info.image_size
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    models[f"{backend} {name}"] = model
    if backend == "openvino" and name == "fp32":
        import openvino as ov
        out["openvino_capabilities"] = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
times = interleaved({k: m.backend.infer for k, m in models.items()}, [x], int(sys.argv[3]), warmup=2)
for k, m in models.items():
    out[k] = 1000 * float(np.median(times[k]))
    m.backend.close()
print("FSAC-ISA " + json.dumps(out))
"""

_LEVEL = {"AVX2": 1, "AVX2_VNNI": 2, "AVX512_CORE_VNNI": 3}
# A cap only hides instructions: it emulates its class only on a CPU that has that class's own.
# (On an AVX2-only EPYC the AVX2_VNNI and AVX-512 VNNI caps timed the AVX2 CPU again and printed
# those classes' targets against it.)
CAP_NEEDS = {"AVX2": "avx2", "AVX2_VNNI": "avx_vnni", "AVX512_CORE_VNNI": "avx512_vnni"}


def cap_unavailable(cap: str, flags: list[str] | None = None) -> str | None:
    """Why `cap` cannot emulate its class on this CPU (None: it can, or no cap)."""
    from fsac.peaks import cpu_flags

    need = CAP_NEEDS.get(cap)
    have = set(cpu_flags() if flags is None else flags)
    if need is None or need in have:
        return None
    return f"this CPU has no {need}: capped at {cap} it would still be this CPU, not that class"


def build_cpuid_mask(cache_dir: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Compile cpuid_mask.c (once per source version) -> (the .so, "") or (None, why not)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc / gcc) to build the CPUID mask"
    if not MASK_SOURCE.is_file():
        return None, f"{MASK_SOURCE} is missing"
    digest = hashlib.sha256(MASK_SOURCE.read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir or Path(tempfile.gettempdir()) / f"fsac-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / f"cpuid_mask-{digest}.so"
    if lib.is_file():
        return lib, ""
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(MASK_SOURCE)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"building the CPUID mask failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    os.replace(tmp, lib)
    return lib, ""


def _run_child(fp32_model, int8_model, repeats: int, threads: int, cap: str, method: str,
               lib: Path | None) -> subprocess.CompletedProcess:
    drop = ("ONEDNN_MAX_CPU_ISA", "FSAC_CPUID_CAP", "LD_PRELOAD", "PYTHONFAULTHANDLER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if cap:
        env["ONEDNN_MAX_CPU_ISA"] = cap
        if method == "cpuid":
            env["FSAC_CPUID_CAP"] = cap
            env["LD_PRELOAD"] = str(lib)
    return subprocess.run([sys.executable, "-c", _CHILD, str(fp32_model), str(int8_model), str(repeats),
                           str(threads), method], env=env, capture_output=True, text=True)


def bench_isa(fp32_model: str | os.PathLike, int8_model: str | os.PathLike, repeats: int = 8,
              threads: int = 0, caps: tuple[str, ...] = CAPS, method: str = "auto") -> list[dict[str, Any]]:
    """Median batch-1 ms of fp32 (the fp32 file) and int8 (the QDQ file) under each cap:
    ONNX Runtime and OpenVINO with the CPUID mask, OpenVINO only with the oneDNN cap.
    method: auto (cpuid where it works, else onednn), cpuid or onednn."""
    notes: list[str] = []
    lib = None
    if method in ("auto", "cpuid"):
        lib, why = build_cpuid_mask()
        if lib is None:
            if method == "cpuid":
                return [{"cap": c or "none", "error": why} for c in caps]
            notes.append(why)
    rows = []
    for cap in caps:
        why_not = cap_unavailable(cap)
        if why_not:
            rows.append({"cap": cap, "method": "-", "skipped": why_not})
            continue
        use = "onednn" if method == "onednn" or lib is None else "cpuid"
        if not cap:  # this CPU as it is: both runtimes, no mask (whether or not the mask could work)
            use = "none"
        proc = _run_child(fp32_model, int8_model, repeats, threads, cap, use, lib)
        if proc.returncode == 3 and use == "cpuid" and method == "auto":  # no CPUID faulting on this CPU / kernel
            notes.append((proc.stderr.strip().splitlines() or ["CPUID faulting unavailable"])[-1])
            lib, use = None, "onednn"
            proc = _run_child(fp32_model, int8_model, repeats, threads, cap, use, lib)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FSAC-ISA ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"cap": cap or "none", "method": use, "error": tail})
            continue
        ms = json.loads(line.split(" ", 1)[1])
        if use == "cpuid" and ms["cpuid_mask_level"] != _LEVEL.get(cap, 0) and cap:
            rows.append({"cap": cap, "method": use, "error": f"the CPUID mask did not take effect "
                                                          f"(level {ms['cpuid_mask_level']})"})
            continue
        row = {"cap": cap or "none", "method": use, "cap_seen": ms["cap_seen"],
               "openvino_capabilities": ms.get("openvino_capabilities", []), "notes": notes[:]}
        for rt in ("onnxruntime", "openvino"):
            if f"{rt} fp32" in ms:
                row[f"{rt}_fp32_ms"], row[f"{rt}_int8_ms"] = ms[f"{rt} fp32"], ms[f"{rt} int8"]
                row[f"{rt}_int8_speedup"] = ms[f"{rt} fp32"] / ms[f"{rt} int8"]
        # What `model.backend: auto` could reach: the fastest int8 against the fastest fp32.
        fp32 = min(v for k, v in ms.items() if k.endswith(" fp32"))
        int8 = min(v for k, v in ms.items() if k.endswith(" int8"))
        row.update(fp32_ms=fp32, int8_ms=int8, int8_speedup=fp32 / int8)
        rows.append(row)
    return rows


# The targets for INT8 against fp32, by CPU class (AMX's target is on the best backend
# against ONNX Runtime fp32, in `fsac bench export`).
TARGETS = {"AVX2": 1.8, "AVX2_VNNI": 1.8, "AVX512_CORE_VNNI": 2.5}
# The uncapped row is this CPU itself: its own class's target, measured natively.
NATIVE_TARGETS = {"avx512-vnni": 2.5, "avx2": 1.8}  # the classes the issue names


def row_target(row: dict[str, Any], flags: list[str] | None = None) -> float | None:
    """The INT8 / fp32 target for a row: the cap's, or for the uncapped row this CPU's class's."""
    if row["cap"] == "none":
        from fsac.peaks import cpu_class

        return NATIVE_TARGETS.get(cpu_class(flags))
    return TARGETS.get(row["cap"])


def format_rows(rows: list[dict[str, Any]]) -> str:
    from fsac.peaks import cpu_flags, matrix_flags

    lines = [f"batch 1, median ms; CPU flags: {' '.join(matrix_flags(cpu_flags()))}",
             f"  {'cap':<18} {'method':<7} {'ORT f32':>8} {'ORT int8':>9} {'ratio':>6}  {'OV f32':>7} {'OV int8':>8} "
             f"{'ratio':>6}  {'best int8 vs best f32':>22}"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['cap']:<18} failed: {r['error']}")
            continue
        if "skipped" in r:
            lines.append(f"  {r['cap']:<18} not timed: {r['skipped']}")
            continue
        ort = (f"{r['onnxruntime_fp32_ms']:8.1f} {r['onnxruntime_int8_ms']:9.1f} {r['onnxruntime_int8_speedup']:5.2f}x"
               if "onnxruntime_fp32_ms" in r else f"{'-':>8} {'-':>9} {'-':>6}")
        ov = f"{r['openvino_fp32_ms']:7.1f} {r['openvino_int8_ms']:8.1f} {r['openvino_int8_speedup']:5.2f}x"
        target = row_target(r)
        verdict = "" if target is None else (f"  (target >= {target}x{' natively' if r['cap'] == 'none' else ''}: "
                                              f"{'met' if r['int8_speedup'] >= target else 'NOT met'})")
        lines.append(f"  {r['cap']:<18} {r['method']:<7} {ort}  {ov}  {r['int8_speedup']:21.2f}x{verdict}")
    methods = {r.get("method") for r in rows if "error" not in r and "skipped" not in r}
    if "cpuid" in methods:
        lines.append("  cpuid: every library sees the older CPU's CPUID bits (runtime/native/cpuid_mask.c)")
    if "onednn" in methods:
        lines.append("  onednn: ONEDNN_MAX_CPU_ISA caps oneDNN only; ONNX Runtime cannot be capped that way")
    for note in sorted({n for r in rows for n in r.get("notes", [])}):
        lines.append(f"  note: {note}")
    lines.append("  a capped CPU emulates an older one (same caches and clocks): read the ratios")
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
        method: Annotated[str, typer.Option("--method", help="auto (the CPUID mask where it works), cpuid "
                                                              "or onednn (ONEDNN_MAX_CPU_ISA, OpenVINO only)")] = "auto",
        out: Annotated[Optional[Path], typer.Option("--out", help="write the rows as JSON")] = None,
    ) -> None:
        """fp32 vs INT8 (ONNX Runtime and OpenVINO) with the CPU made to look like AVX2, AVX2 + VNNI
        and AVX-512 VNNI ones."""
        if method not in ("auto", "cpuid", "onednn"):
            raise typer.BadParameter(f"--method must be auto, cpuid or onednn, got {method!r}")
        rows = bench_isa(model, int8, repeats, threads, method=method)
        typer.echo(format_rows(rows))
        if out is not None:
            from fsac.io import atomic_write_json

            atomic_write_json(out, {"rows": rows})
            typer.echo(f"wrote {out}")

except ImportError:  # pragma: no cover
    pass
