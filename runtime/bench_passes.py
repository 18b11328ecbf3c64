"""The measurements `fsac bench runtime` (runtime/bench.py) is made of: the frames folder, the
bare backend loop, one daemon pass in this process, a private mosquitto, and the peak RSS
of `fsac-run` and of a bare loop in subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.procmem import peak_rss
from fsac.preprocess import list_images, load_image, resize_crop

from .backends import load_model
from .config import ModelConfig, RuntimeConfig, SourceConfig, validate
from .daemon import Daemon
from .sinks.mqtt_config import MqttSettings


def frames_folder(images: Path, n_frames: int, dest: Path) -> list[Path]:
    """n_frames files in `dest`, cycling through the images (hard links or copies)."""
    sources = list_images(images)
    if not sources:
        raise FsacError(f"--images: no image files in {images}")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n_frames):
        src = sources[i % len(sources)]
        target = dest / f"frame_{i:06d}{src.suffix.lower()}"
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
        out.append(target)
    return out


class Bare:
    """The bare backend on frames decoded and resized beforehand."""

    def __init__(self, model_path: Path, files: list[Path], batch_size: int, providers: list[str], threads: int,
                 spin_wait: bool, backend: dict[str, Any] | None = None) -> None:
        self.model = load_model(ModelConfig(path=str(model_path), batch_size=batch_size, providers=providers,
                                            threads=threads, threshold=0.5, spin_wait=spin_wait,
                                            **_backend_kw(backend)))
        spec = self.model.info.preprocess
        backend = self.model.backend
        # Serial loop first (it also warms the page cache for the files and the session).
        t0 = time.perf_counter()
        self.prepared = []
        for f in files:
            x = resize_crop(load_image(f, spec), spec)
            backend.infer(x[None])
            self.prepared.append(x)
        self.serial_s = time.perf_counter() - t0  # every batch size was warmed up at load (model.warm_up)

    def run(self) -> tuple[float, list[float]]:
        backend = self.model.backend
        bs = backend.max_batch
        latencies = []
        t0 = time.perf_counter()
        for start in range(0, len(self.prepared), bs):
            t = time.perf_counter()
            chunk = np.stack(self.prepared[start:start + bs])
            backend.infer(chunk)
            latencies += [(time.perf_counter() - t) * 1000.0] * chunk.shape[0]
        return time.perf_counter() - t0, latencies


def write_bytes() -> int | None:
    """Bytes this process caused to be written to storage so far (Linux /proc/self/io)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    m = re.search(r"^write_bytes: (\d+)$", text, re.M)
    return int(m.group(1)) if m else None


class Broker:
    """A private mosquitto for the MQTT sink's share of the storage and CPU cost (if installed)."""

    def __init__(self, folder: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise FsacError("bench: mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _backend_kw(backend: dict[str, Any] | None) -> dict[str, Any]:
    """ModelConfig keywords of --backend / --precision (OpenVINO settings in their own section)."""
    from .config import OpenVinoConfig

    b = dict(backend or {})
    kw: dict[str, Any] = {}
    if b.get("backend"):
        kw["backend"] = b["backend"]
    ov = {k: b[k] for k in ("precision", "streams") if b.get(k) not in (None, "")}  # streams 0 is a choice
    if ov:
        kw["openvino"] = OpenVinoConfig(**ov)
    if b.get("cpu_prepack") is not None:
        kw["cpu_prepack"] = bool(b["cpu_prepack"])
    return kw


def _backend_args(backend: dict[str, Any] | None) -> list[str]:
    b = dict(backend or {})
    args = []
    if b.get("backend"):
        args += ["--set", f"model.backend={b['backend']}"]
    if b.get("precision"):
        args += ["--set", f"model.openvino.precision={b['precision']}"]
    if b.get("streams") not in (None, ""):
        args += ["--set", f"model.openvino.streams={b['streams']}"]
    if b.get("cpu_prepack") is not None:
        args += ["--set", f"model.cpu_prepack={'true' if b['cpu_prepack'] else 'false'}"]
    return args


def daemon_pass(model_path: Path, folder: Path, out: Path, batch_size: int, providers: list[str], threads: int,
                 workers: int, queue_size: int, spin_wait: bool, mqtt_port: int | None = None,
                 backend: dict[str, Any] | None = None, page: bool = False) -> dict[str, Any]:
    """One run of the real pipeline over the folder, in this process; model load not timed.
    `page`: the live view on, with a client that behaves like the page (runtime/pageclient.py)."""
    import logging

    cfg = RuntimeConfig()
    cfg.model = ModelConfig(path=str(model_path), batch_size=batch_size, providers=providers, threads=threads,
                            threshold=0.5, spin_wait=spin_wait, **_backend_kw(backend))
    cfg.source = SourceConfig(kind="folder", uri=str(folder), mode="every-frame", decode_workers=workers,
                              queue_size=queue_size)
    cfg.sinks.jsonl.path = str(out)
    cfg.journal.dir = str(out.parent / f"{out.stem}.journal")
    if mqtt_port is not None:
        cfg.sinks.mqtt = MqttSettings(host="127.0.0.1", port=mqtt_port, client_id=f"fsac-bench-{out.stem}")
    cfg.http.enabled = page
    cfg.http.port = 0
    validate(cfg)
    before = write_bytes()
    daemon = Daemon(cfg, install_signals=False)
    logger = logging.getLogger("fsac.runtime")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the bench prints its own table
    client = None
    if page:
        from .pageclient import PageClient

        client = PageClient(daemon)
        client.start()
    try:
        code = daemon.run()
    finally:
        logger.setLevel(level)
        if client is not None:
            client.stop()
    after = write_bytes()
    if code != 0:
        raise FsacError(f"the daemon run exited with {code}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {"seconds": (daemon.last_written or 0) - (daemon.first_read or 0), "frames": len(records),
            "latencies": [r["latency_ms"] for r in records], "errors": daemon.metrics.errors.value,
            "batches": daemon.metrics.batches.value,
            "written_bytes": None if before is None or after is None else after - before,
            "delivered": {d.name: d.delivered for d in daemon.deliveries},
            "page": client.counts() if client is not None else None}


def rss_subprocess(model_path: Path, folder: Path, workdir: Path, batch_size: int, providers: list[str],
                    threads: int, workers: int, spin_wait: bool, backend: dict[str, Any] | None = None,
                    live: bool = False) -> dict[str, Any]:
    """Peak RSS of `fsac-run` on the frames, and of a bare backend loop on the same frames."""
    args = ["--model", str(model_path), "--source", str(folder), "--jsonl", str(workdir / "subprocess.jsonl"),
           "--set", "http.enabled=false", "--set", f"model.batch_size={batch_size}",
           "--set", f"model.threads={threads}", "--set", f"source.decode_workers={workers}",
           "--set", "model.threshold=0.5", "--set", f"model.spin_wait={'true' if spin_wait else 'false'}"]
    if providers:
        args += ["--set", f"model.providers={','.join(providers)}"]
    args += _backend_args(backend)
    rss, log_text = peak_rss("from fsac.runtime.cli import main; sys.exit(main())", args)
    m = re.search(r"([\d.]+) frames/s", log_text)
    kw = _backend_kw(backend)  # the same ModelConfig keywords as the in-process passes, as JSON
    if "openvino" in kw:
        kw["openvino"] = kw["openvino"].model_dump()
    bare_rss, _ = peak_rss(_BARE_RSS_SCRIPT, [str(model_path), str(folder), str(batch_size), str(threads),
                                               ",".join(providers), "1" if spin_wait else "0", json.dumps(kw)])
    if rss is None or bare_rss is None:
        raise FsacError("peak memory needs /proc/self/status (Linux); run with --no-rss elsewhere")
    out = {"rss_peak_bytes": rss, "bare_rss_peak_bytes": bare_rss, "subprocess_fps": float(m.group(1)) if m else None}
    if live:  # the live view keeps references to recent frames: measure what that costs
        on = [a if a != "http.enabled=false" else "http.enabled=true" for a in args] + ["--set", "http.port=0"]
        out["rss_live_peak_bytes"] = peak_rss("from fsac.runtime.cli import main; sys.exit(main())", on)[0]
    return out


_BARE_RSS_SCRIPT = """
import json
import sys
import numpy as np
from fsac.preprocess import list_images, load_image, resize_crop
from fsac.runtime.backends import load_model
from fsac.runtime.config import ModelConfig
from fsac.runtime.config import OpenVinoConfig
kw = json.loads(sys.argv[7])
if "openvino" in kw:
    kw["openvino"] = OpenVinoConfig(**kw["openvino"])
cfg = ModelConfig(path=sys.argv[1], batch_size=int(sys.argv[3]), threads=int(sys.argv[4]),
                  providers=[p for p in sys.argv[5].split(",") if p], threshold=0.5, spin_wait=sys.argv[6] == "1",
                  **kw)
model = load_model(cfg)
spec, backend = model.info.preprocess, model.backend
files = list_images(sys.argv[2])
for start in range(0, len(files), backend.max_batch):
    backend.infer(np.stack([resize_crop(load_image(f, spec), spec) for f in files[start:start + backend.max_batch]]))
"""
