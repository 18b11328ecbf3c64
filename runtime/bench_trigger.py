"""`fsac bench runtime`'s trigger rows: request -> answer latency in trigger mode.

A PLC asks "part P-1 is in front of the camera" and waits for good/reject; what matters is
the time from its request to the answer. Each row sends N requests one after the other (a
station inspects one part at a time) through `POST /v1/inspect` to an in-process daemon
(source.mode: trigger, journal and JSON-lines sink as in production) and times each on the
client side, from sending the request to having the answer:

  http_image     the image travels in the request (PNG, base64): decode + score + journal;
  gige_software  the fake GigE Vision camera of Aravis on loopback, software trigger: one
                 trigger fired per request, the frame captured after it, then scored.
                 Measured only where `arv-fake-gv-camera-0.8` and Aravis's Python binding
                 are installed; otherwise the row says why it is missing. The fake camera
                 looks for a software trigger once per frame period (25 Hz), so this row is
                 dominated by that ~40 ms: it shows the path works and what it adds, not what
                 a real camera's trigger-to-exposure time is.

The daemon's own view of the same figure is the `fsac_trigger_latency_seconds` histogram
on /metrics.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError

from .config import ModelConfig, RuntimeConfig, SourceConfig, validate
from .daemon import Daemon

FAKE_CAMERA = "arv-fake-gv-camera-0.8"
FAKE_CAMERA_LOCK = "/tmp/fsac-fake-gige-camera.lock"  # its GVCP port 3956 on loopback is shared


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/inspect", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def summarize(latencies_ms: list[float], errors: int) -> dict[str, Any]:
    arr = np.asarray(latencies_ms, dtype=np.float64)
    return {"requests": len(latencies_ms), "errors": errors, "p50_ms": float(np.percentile(arr, 50)),
            "p95_ms": float(np.percentile(arr, 95)), "max_ms": float(arr.max())}


def _requests(model: Path, work: Path, name: str, source: SourceConfig, n: int, image: bytes | None,
              batch_size: int, threads: int, backend: dict[str, Any] | None = None) -> dict[str, Any]:
    from .bench_passes import _backend_kw

    cfg = RuntimeConfig()
    cfg.model = ModelConfig(path=str(model), batch_size=batch_size, threads=threads, threshold=0.5,
                            **_backend_kw(backend))  # the backend the bench's header names
    cfg.source = source
    cfg.sinks.jsonl.path = str(work / f"{name}.jsonl")
    cfg.journal.dir = str(work / f"{name}.journal")
    cfg.http.enabled, cfg.http.port = True, _free_port()
    cfg.trigger.deadline_s = 10.0
    validate(cfg)
    daemon = Daemon(cfg, install_signals=False)
    logger = logging.getLogger("fsac.runtime")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the bench prints its own table
    thread = threading.Thread(target=daemon.run, name="fsac-bench-trigger", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not daemon.ready()[0]:
            if time.monotonic() > deadline or not thread.is_alive():
                raise FsacError(f"bench: the trigger daemon ({name}) did not become ready: {daemon.ready()[1]}")
            time.sleep(0.02)
        body: dict[str, Any] = {"image": base64.b64encode(image).decode()} if image is not None else {}
        _post(cfg.http.port, {"part_id": "warm-up", **body})  # first-call costs are not a station's latency
        served = daemon.handle.current.backend
        latencies, errors = [], 0
        for i in range(n):
            t0 = time.perf_counter()
            record = _post(cfg.http.port, {"part_id": f"bench-{i}", **body})
            latencies.append((time.perf_counter() - t0) * 1000.0)
            errors += record.get("verdict") == "error"
    finally:
        daemon.request_stop()
        thread.join(30)
        logger.setLevel(level)
    return {**summarize(latencies, errors), "backend": served.name, "streams": getattr(served, "streams", None),
            "precision": getattr(served, "precision", None)}


class _FakeCamera:
    def __init__(self) -> None:
        self.lock = open(FAKE_CAMERA_LOCK, "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.proc = subprocess.Popen([FAKE_CAMERA, "-i", "127.0.0.1", "-s", "FSACBENCH"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # it answers GVCP right after binding; the daemon's open retries anyway

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.lock.close()


def _gige_missing() -> str | None:
    if shutil.which(FAKE_CAMERA) is None:
        return f"{FAKE_CAMERA} not installed (apt-get install aravis-tools gir1.2-aravis-0.8 python3-gi)"
    try:
        from .sources.gige import import_aravis
        from .gige_settings import validate_gige_settings

        import_aravis()
        validate_gige_settings({})
    except FsacError as e:
        return str(e)
    return None


def bench_trigger(model: Path, image_file: Path, n: int, work: Path, batch_size: int = 1,
                  threads: int = 0, backend: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trigger rows of bench.json: {row name: figures, or {"skipped": reason}}."""
    rows: dict[str, Any] = {}
    rows["http_image"] = _requests(model, work, "trigger-http", SourceConfig(mode="trigger"), n,
                                   image_file.read_bytes(), batch_size, threads, backend)
    missing = _gige_missing()
    if missing:
        rows["gige_software"] = {"skipped": missing}
        return rows
    camera = _FakeCamera()
    try:
        source = SourceConfig(kind="gige", uri="127.0.0.1", mode="trigger",
                              gige={"acquisition": "software", "pixel_format": "Mono8"})
        rows["gige_software"] = _requests(model, work, "trigger-gige", source, n, None, batch_size, threads,
                                          backend)
    finally:
        camera.stop()
    return rows


def _served(r: dict[str, Any]) -> str:
    from .backends import streams_text

    if not r.get("backend"):
        return ""
    return (f" ({r['backend']}" + (f" {r['precision']}" if r.get("precision") else "")
            + streams_text(r.get("streams")) + ")")


def format_rows(rows: dict[str, Any]) -> list[str]:
    labels = {"http_image": "POST /v1/inspect, image in the request",
              "gige_software": "POST /v1/inspect, fake GigE camera, software trigger"}
    lines = []
    for key, r in rows.items():
        if "skipped" in r:
            lines.append(f"  trigger latency ({labels.get(key, key)}): skipped, {r['skipped']}")
        else:
            lines.append(f"  trigger latency ({labels.get(key, key)}), request -> answer over {r['requests']}: "
                         f"p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms, max {r['max_ms']:.2f} ms, "
                         f"{r['errors']} error answers" + _served(r))
    return lines
