"""Where an ONNX Runtime session's time goes, and the ceiling that leaves the INT8 row.

ONNX Runtime's own profiler (`SessionOptions.enable_profiling`) times every kernel of every
run. The INT8 file's time splits into its integer matrix products (`INT8_PRODUCT_OPS`) and
everything else, which stays float (LayerNorm, GELU, Softmax, the attention products, the
residual Adds, QuantizeLinear). The products' operation count is read from the shapes the
profiler records for each call (2 * M * K * N), so their rate is a measured figure, not the
model's nominal FLOPs. Then, Amdahl on this run's own numbers:

    ceiling = t_fp32 / (ops_int8_products / peak_int8 + t_float_ops)

is what the INT8 row would reach against fp32 if every integer product ran at the machine's
measured int8 peak and nothing else changed. On a 2-core AVX2 EPYC: products 153 ms at 342
GOP/s (96 % of its 355 GOP/s peak), float ops 41 ms, ceiling ~1.80x against the 1.8x target.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np

# Integer matrix products as ONNX Runtime's CPU provider runs a QDQ or dynamically quantized
# graph, with the position of the weight among a convolution's inputs. The profiler records
# the shapes of a call's activations but not of its constant (pre-packed) weights, so a
# product's size is read from its activation A (..., M, K) and its output (..., M, N).
INT8_PRODUCT_OPS = {
    "MatMulIntegerToFloat": None,
    "MatMulInteger": None,
    "DynamicQuantizeMatMul": None,
    "QLinearMatMul": None,
    "QGemm": None,
    "QLinearConv": 3,
    "ConvInteger": 1,
}


def product_ops(op: str, in_shapes: Sequence[Sequence[int] | None], out_shape: Sequence[int] | None) -> float | None:
    """Multiply-adds x 2 of one integer product call; None when the recorded shapes do not say
    (a convolution's weight shape is not recorded when it is a constant)."""
    if op not in INT8_PRODUCT_OPS or not in_shapes or not in_shapes[0] or not out_shape:
        return None
    w = INT8_PRODUCT_OPS[op]
    if w is not None:  # convolution, weight (M, C/group, kh, kw): C/group * kh * kw MACs per output
        weight = in_shapes[w] if len(in_shapes) > w else None
        return 2.0 * math.prod(out_shape) * math.prod(weight[1:]) if weight and len(weight) >= 2 else None
    a = list(in_shapes[0])
    if len(out_shape) < 2 or list(out_shape[:-1])[-1:] != a[-2:-1]:
        return None  # the output's rows are not A's: not a shape this reads
    return 2.0 * math.prod(out_shape) * a[-1]


@dataclass
class OpProfile:
    """Kernel times per run (ms, mean over the profiled runs) of one session."""

    runs: int
    kernel_ms: float
    by_op: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # per run
    # the integer products whose size the profile recorded (the others count as other ops,
    # unimproved, in the ceiling: `unsized_products` says how many calls per run those were)
    int8_product_ms: float = 0.0
    int8_product_gop: float | None = None  # per run
    unsized_products: int = 0

    @property
    def other_ms(self) -> float:
        return self.kernel_ms - self.int8_product_ms

    def int8_product_gops(self) -> float | None:
        if not self.int8_product_gop or self.int8_product_ms <= 0:
            return None
        return self.int8_product_gop / (self.int8_product_ms / 1e3)

    def ceiling(self, fp32_ms: float, int8_peak_gops: float | None) -> float | None:
        """fp32 time / (the products at the int8 peak + the other ops as measured)."""
        if not self.int8_product_gop or not int8_peak_gops:
            return None
        # A peak measured under the products' own rate was itself measured low (a shared CPU's
        # unsteady int8 peak): the products are at least as fast as they ran.
        peak = max(int8_peak_gops, self.int8_product_gops() or 0.0)
        best_ms = 1e3 * self.int8_product_gop / peak + self.other_ms
        return fp32_ms / best_ms if best_ms > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "other_ms": self.other_ms, "int8_product_gops": self.int8_product_gops()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpProfile":
        """Back from `to_dict` (its derived figures are recomputed, not read)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _shape(entry: Any) -> list[int] | None:
    # the profiler writes each tensor as {"<type>": [dims]}
    if isinstance(entry, dict) and len(entry) == 1:
        dims = next(iter(entry.values()))
        if isinstance(dims, list) and all(isinstance(d, int) for d in dims):
            return dims
    return None


def summarize_profile(events: list[dict[str, Any]], runs: int) -> OpProfile:
    """The profiler's JSON events -> per-run kernel times by op type (the last `runs` runs)."""
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    if len(starts) < runs or runs < 1:
        raise ValueError(f"profile holds {len(starts)} runs, asked for {runs}")
    t0 = starts[-runs]
    by_op: dict[str, float] = {}
    calls: dict[str, int] = {}
    prod_us, prod_ops, unsized = 0.0, 0.0, 0
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < t0:
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"]
        calls[op] = calls.get(op, 0) + 1
        if op in INT8_PRODUCT_OPS:
            shapes = [_shape(s) for s in args.get("input_type_shape", [])]
            outs = [_shape(s) for s in args.get("output_type_shape", [])]
            ops = product_ops(op, shapes, outs[0] if outs else None)
            if ops is None:
                unsized += 1
            else:
                prod_us += e["dur"]
                prod_ops += ops
    return OpProfile(runs=runs, kernel_ms=sum(by_op.values()) / runs / 1e3,
                     by_op={k: v / runs / 1e3 for k, v in by_op.items()},
                     calls={k: v // runs for k, v in calls.items()},
                     int8_product_ms=prod_us / runs / 1e3,
                     int8_product_gop=(prod_ops / runs / 1e9) if prod_ops else None,
                     unsized_products=unsized // runs)


def profile_session(model: bytes, x: np.ndarray, threads: int, runs: int = 8, warmup: int = 2,
                    input_name: str = "image") -> OpProfile:
    """Profile `runs` calls of a fresh CPU session of `model` on input `x` (after `warmup`
    calls, which the summary leaves out: the first call packs weights and plans memory)."""
    from fsac.cpu_quiet import wait_until_idle
    from fsac.runner import make_session

    with tempfile.TemporaryDirectory(prefix="fsac-profile-") as tmp:
        # the timed INT8 row's own session settings, with the kernel profiler on
        sess = make_session(model, threads, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(warmup + runs):
            wait_until_idle()  # the same quiet start as the timed rounds
            sess.run(None, {input_name: x})
        path = sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
    return summarize_profile(events, runs)
