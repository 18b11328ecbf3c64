"""Helpers for the fsac-run tests (importable from test modules; conftest uses them too).

A tiny but valid sealed fsac model, built with onnx.helper, that follows the model-file
contract exactly (input "image" uint8 [N, S, S, 3], outputs score/logit/sim_normal/
sim_anomalous, every required metadata key of format 2, sealed by
`fsac.modelfile.write_model_file`); what it computes is simple enough to check by hand: with
m = mean pixel / 255, sim_normal = 1 - m, sim_anomalous = m, logit = sim_anomalous -
sim_normal = 2m - 1 (tau = 1) and score = sigmoid(logit). The default logit threshold 0 is
"m >= 0.5". The division is a weight tensor (initializer "w"), so a test can tamper with
"the weights".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fsac.modelfile import OUTPUT_NAMES
from fsac.preprocess import PreprocessSpec, resize_crop
from fsac.score import score_from_logit

from mosquitto_helper import free_port  # noqa: F401  (one port picker: below the ephemeral range)

S = 64
W_VALUE = 1.0 / (3 * 255.0)


def build_model_bytes(image_size: int = S, graph_size: int | None = None, threshold: str | None = "0",
                      format_version: str = "2", batch: int | str = "N", scale: float = 1.0,
                      drop_keys: tuple[str, ...] = ()) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    g = graph_size or image_size
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, g, g, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch]) for n in OUTPUT_NAMES]
    w = np.full((3, 1), W_VALUE * scale, dtype=np.float32)
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [3, 1], w.tobytes(), raw=True),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("shape1", TensorProto.INT64, [1], [-1]),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["xf"], ["m"], axes=[1, 2], keepdims=0),  # [N, 3]
        helper.make_node("MatMul", ["m", "w"], ["s2"]),  # [N, 1]
        helper.make_node("Reshape", ["s2", "shape1"], ["sim_anomalous"]),  # m
        helper.make_node("Sub", ["one", "sim_anomalous"], ["sim_normal"]),  # 1 - m
        helper.make_node("Sub", ["sim_anomalous", "sim_normal"], ["logit"]),  # 2m - 1
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(nodes, "fsac_test_mean_pixel", [image], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fsac-tests")
    model.ir_version = 8
    spec = PreprocessSpec(image_size=image_size)
    meta = {
        "fsac.format_version": format_version,
        "fsac.version": "0.1.0",
        "fsac.arch": "test-mean-pixel",
        "fsac.weights_id": "none",
        "fsac.object": "bottle",
        "fsac.preprocess": json.dumps(spec.to_dict()),
        "fsac.inputs": json.dumps({"image": {"dtype": "uint8", "shape": ["N", image_size, image_size, 3]}}),
        "fsac.outputs": json.dumps({n: {"dtype": "float32", "shape": ["N"]} for n in OUTPUT_NAMES}),
        "fsac.checkpoint_sha256": "0" * 64,
        "fsac.precision": "fp32",
    }
    if threshold is not None:
        meta["fsac.logit_threshold"] = threshold
    for k in drop_keys:
        meta.pop(k, None)
    meta["fsac.seal"] = "0" * 64
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def expected_mean(rgb: np.ndarray, size: int = S) -> float:
    """m, the mean pixel / 255 of a decoded (H, W, 3) RGB image after preprocessing."""
    x = resize_crop(rgb, PreprocessSpec(image_size=size))
    return float(x.astype(np.float64).mean() / 255.0)


def expected_logit(rgb: np.ndarray, size: int = S) -> float:
    """The anomaly logit the fixture model computes for a decoded (H, W, 3) RGB image."""
    return 2.0 * expected_mean(rgb, size) - 1.0


def expected_score(rgb: np.ndarray, size: int = S) -> float:
    """The record's score for that image: sigmoid(logit)."""
    return float(score_from_logit(expected_logit(rgb, size)))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]



def fsac_run(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """Start the real fsac-run entry point in a subprocess (same interpreter)."""
    code = "import sys; from fsac.runtime.cli import main; sys.exit(main())"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # only where a test asks for them
        full_env.pop(key, None)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-c", code, *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_video(path: Path, images: list[Path], size: int = 128, fps: int = 10) -> tuple[Path, list[np.ndarray]]:
    """A real MJPG .avi of the given images (resized to size x size); returns the BGR frames written."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    frames = []
    for p in images:
        bgr = cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (size, size), interpolation=cv2.INTER_AREA)
        writer.write(bgr)
        frames.append(bgr)
    writer.release()
    return path, frames


class Feed:
    """Records -> a real journal -> one durable sink, through the daemon's own delivery thread
    (runtime/delivery.py): a sink tested the way fsac-run drives it, without a model."""

    def __init__(self, sink, folder: Path, **journal_kw):
        from fsac.runtime.delivery import Delivery
        from fsac.runtime.journal import Journal

        self.sink = sink
        self.journal = Journal(folder, [sink.name], **journal_kw)
        self.delivery = Delivery(sink, self.journal)
        self.delivery.start()
        self.left: int | None = None  # pending at close()
        self.closed = False
        self._tick = threading.Thread(target=self._housekeep, daemon=True)  # the daemon's journal thread does this
        self._tick.start()

    def _housekeep(self) -> None:
        while not self.closed:
            self.journal.housekeep()
            time.sleep(0.05)

    def write(self, record: dict) -> None:
        from fsac.runtime.record import encode_record

        if self.closed:
            raise RuntimeError("feed closed")
        self.journal.append([encode_record(record)])

    def stats(self) -> dict:
        return {**self.sink.stats(), "buffered": self.delivery.pending(),
                "lost": self.journal.lost[self.sink.name], "at_risk": self.journal.at_risk[self.sink.name],
                "delivery_errors": self.delivery.errors}

    def wait_delivered(self, timeout: float = 10.0) -> bool:
        return self.delivery.wait_delivered(time.monotonic() + timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self.closed:
            return
        self.delivery.wait_delivered(time.monotonic() + timeout)
        self.closed = True
        self._tick.join(2)
        self.delivery.stop(timeout)
        self.left = self.delivery.pending()
        self.sink.close(timeout=timeout)
        self.journal.close()


def metric_value(text: str, metric: str, **labels: str) -> float | None:
    """A sample of a /metrics page, read with Prometheus's own text parser (so the page must
    parse); None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def fill(folder: Path) -> Path:
    """Write a filler file until the file system is full (ENOSPC); return it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    os.close(fd)
    probe = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT)
    try:  # really full: not even one more block
        os.write(probe, b"x" * 4096)
    except OSError:
        pass
    else:
        raise AssertionError(f"{folder} is not full after filling it")
    finally:
        os.close(probe)
        os.unlink(folder / "probe")
    return filler


def png(value: int, size: int = 64) -> bytes:
    """A uniform size x size PNG of one grey value (the toy model's logit is 2 value/255 - 1)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def drop(folder: Path, name: str, data: bytes) -> None:
    """How a camera program should write: a hidden temporary name, then one rename."""
    tmp = folder / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)
