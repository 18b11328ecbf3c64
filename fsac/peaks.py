"""The machine's own matrix-multiply peaks, measured in the benchmark's run (torch-free).

Machines differ (AVX2 only, AVX-512 VNNI, AMX have all been seen), so a backend's speed
only means something as a fraction of what this CPU reaches, measured in the same run on
the same threads. Every measurer is best-of-N on a large square product (2048^3), where
kernels run at their plateau:

  fp32  numpy SGEMM (the BLAS numpy ships); OpenVINO f32 MatMul where installed
  bf16  OpenVINO MatMul with the bf16 precision hint (AVX-512 BF16 / AMX-BF16); torch bf16
        matmul in the workstation benchmark (export/bench.py passes it in: the core never
        imports torch)
  int8  ONNX Runtime MatMulInteger (u8 x s8, VNNI / AMX-INT8 through MLAS); OpenVINO
        int8 (FakeQuantize -> MatMul, which its low-precision pass runs in int8)

The peak of a precision is the best of its measurers; each measurer's figure is kept so a
reader sees where it came from. A measurer whose library is missing is skipped, and a
precision the CPU lacks (no bf16 flag) is reported as absent rather than timed in emulation.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """All flags of the first CPU in /proc/cpuinfo ([] where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def matrix_flags(flags: list[str] | None = None) -> list[str]:
    """The flags that decide which low-precision matrix units exist, in a fixed order."""
    have = set(cpu_flags() if flags is None else flags)
    return [f for f in FLAGS_OF_INTEREST if f in have]


def cpu_class(flags: list[str] | None = None) -> str:
    """'amx', 'avx512-vnni', 'avx512', 'avx2' or 'other': which issue target applies."""
    have = set(cpu_flags() if flags is None else flags)
    if {"amx_int8", "amx_bf16"} & have:
        return "amx"
    if "avx512_vnni" in have:
        return "avx512-vnni"
    if "avx512f" in have:
        return "avx512"
    if "avx2" in have:
        return "avx2"
    return "other"


def best_rate(fn: Callable[[], Any], ops: float, repeats: int) -> float:
    """Best-of-`repeats` rate of `fn` in G(FL)OP/s after one warm-up call (also for a wing's
    own measurers, `measure_peaks(extra=...)`)."""
    from fsac.cpu_quiet import wait_until_idle

    wait_until_idle()  # the last measurer's spinning threads (another runtime's) off the cores
    fn()  # warm-up: first call packs weights / compiles
    best = math.inf
    for _ in range(repeats):
        wait_until_idle()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return ops / best / 1e9


def numpy_sgemm(n: int, threads: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return best_rate(lambda: a @ b, 2 * n**3, repeats)


# f32 / bf16: MatMuls chained in one graph, so converting the fp32 input to bf16 and the result
# back (once per call) does not count as matrix-unit time: one bf16 2048^3 MatMul measured
# 1628 GFLOP/s, a chain of 4 2152, torch's bf16 matmul 2684 on the same AMX CPU.
OPENVINO_CHAIN = 8


def openvino_matmul(n: int, threads: int, repeats: int, precision: str) -> float:
    """OpenVINO MatMul of a (n, n) input by constant (n, n) weights: how its backends run."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], ov.Type.f32, name="x")
    if precision == "int8":
        # FakeQuantize on the input and an int8 weight times a scale is the pattern
        # OpenVINO's low-precision pass runs as a u8 x i8 FullyConnected (checked: the
        # runtime model reports it with runtime precision u8).
        c = lambda v: ops.constant(np.array(v, dtype=np.float32))  # noqa: E731
        wq = rng.integers(-127, 127, (n, n), dtype=np.int8)
        weight = ops.multiply(ops.convert(ops.constant(wq), ov.Type.f32), c(0.01))
        y = ops.matmul(ops.fake_quantize(x, c(0.0), c(4.0), c(0.0), c(4.0), 256), weight, False, True)
        hint = "f32"
        depth = 1
    else:
        # weights of std 1/sqrt(n): the activations keep their scale along the chain
        y, depth = x, OPENVINO_CHAIN
        for _ in range(depth):
            y = ops.matmul(y, ops.constant((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)), False, True)
        hint = precision
    model = ov.Model([y], [x], "peak")
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(model, "CPU", cfg)
    req = compiled.create_infer_request()
    data = np.abs(rng.standard_normal((n, n), dtype=np.float32))
    return best_rate(lambda: req.infer({0: data}), depth * 2 * n**3, repeats)


def onnxruntime_matmul_integer(n: int, threads: int, repeats: int) -> float:
    """ONNX Runtime MatMulInteger u8 x s8 (the op its dynamic and QDQ int8 paths end in)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 127, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        initializer=[helper.make_tensor("w", TensorProto.INT8, [n, n], w.tobytes(), raw=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    return best_rate(lambda: sess.run(None, {"a": a}), 2 * n**3, repeats)


@dataclass
class Peaks:
    """Measured peaks (G(FL)OP/s) per precision, with each measurer's own figure."""

    cpu: str
    flags: list[str]
    cpu_class: str
    threads: int
    n: int
    fp32: float | None = None
    bf16: float | None = None
    int8: float | None = None
    measured: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def peak(self, precision: str) -> float | None:
        return {"fp32": self.fp32, "f32": self.fp32, "bf16": self.bf16, "int8": self.int8}.get(precision)

    def fraction(self, ops_per_s: float, precision: str) -> float | None:
        p = self.peak(precision)
        return None if not p else ops_per_s / (p * 1e9)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.0f}"

        parts = ", ".join(f"{k} {v:.0f}" for k, v in self.measured.items())
        return (f"peaks on {self.threads} threads ({self.n}^3): fp32 {f(self.fp32)} GFLOP/s, bf16 {f(self.bf16)} "
                f"GFLOP/s, int8 {f(self.int8)} GOP/s [{parts}]")


def measure_peaks(threads: int = 2, n: int = 2048, repeats: int = 3,
                  extra: tuple[tuple[str, str, Callable[[int, int, int], float]], ...] = ()) -> Peaks:
    """Measure every available fp32 / bf16 / int8 matmul peak on this machine. `extra`:
    (precision, name, fn(n, threads, repeats)) measurers of a caller's own libraries."""
    flags = cpu_flags()
    res = Peaks(cpu=f"{cpu_name()} ({os.cpu_count()} logical CPUs)", flags=matrix_flags(flags),
                cpu_class=cpu_class(flags), threads=threads, n=n)
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(flags))
    measurers: list[tuple[str, str, Callable[[], float]]] = [
        ("fp32", "numpy sgemm", lambda: numpy_sgemm(n, threads, repeats)),
        ("fp32", "openvino f32", lambda: openvino_matmul(n, threads, repeats, "f32")),
        ("int8", "onnxruntime MatMulInteger", lambda: onnxruntime_matmul_integer(n, threads, repeats)),
        ("int8", "openvino int8", lambda: openvino_matmul(n, threads, repeats, "int8")),
    ]
    if has_bf16:
        measurers.append(("bf16", "openvino bf16", lambda: openvino_matmul(n, threads, repeats, "bf16")))
    else:
        res.skipped["bf16"] = "CPU has neither avx512_bf16 nor amx_bf16"
    for precision, name, fn in extra:
        if precision != "bf16" or has_bf16:  # no bf16 timed in emulation
            measurers.append((precision, name, lambda fn=fn: fn(n, threads, repeats)))
    for precision, name, fn in measurers:
        try:
            rate = fn()
        except ImportError as e:
            res.skipped[name] = f"not installed ({e.name})"
            continue
        except Exception as e:  # a measurer failing must not sink the benchmark; say why
            res.skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            continue
        res.measured[name] = rate
        setattr(res, precision, max(getattr(res, precision) or 0.0, rate))
    return res


def best_of(a: Peaks, b: Peaks) -> Peaks:
    """Per measurer, the higher of two runs of `measure_peaks` (before and after a benchmark):
    on a shared CPU a peak measured while something else ran would flatter every fraction."""
    out = Peaks(cpu=a.cpu, flags=a.flags, cpu_class=a.cpu_class, threads=a.threads, n=a.n,
                skipped={**b.skipped, **a.skipped})
    for name in set(a.measured) | set(b.measured):
        out.measured[name] = max(a.measured.get(name, 0.0), b.measured.get(name, 0.0))
    for precision in ("fp32", "bf16", "int8"):
        values = [v for v in (getattr(a, precision), getattr(b, precision)) if v]
        setattr(out, precision, max(values) if values else None)
    return out
