"""The real `fsac-run` entry point in subprocesses: --check, a video file, SIGTERM mid-run,
and a long-running watch-mode daemon probed over HTTP, reloaded with SIGHUP, and watched
by a stand-in for systemd's notify socket."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from fsac.modelfile import write_model_file
from fsac.score import score_from_logit
from fsac_run_helpers import (W_VALUE, build_model_bytes, expected_logit, expected_score, free_port, fsac_run, read_jsonl,
                              wait_for, write_video)



def run_check(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    code = "import sys; from fsac.runtime.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "--check", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_check_validates_and_never_imports_torch(tmp_path, model_file, image_folder):
    """Importing the runtime and running --check must not pull in torch or open_clip."""
    script = textwrap.dedent(f"""
        import sys
        import fsac.runtime, fsac.runtime.cli, fsac.runtime.daemon, fsac.runtime.backends, fsac.runtime.sources
        import fsac.runtime.http, fsac.runtime.metrics, fsac.runtime.config, fsac.runtime.sinks.jsonl
        from fsac.runtime.cli import main
        code = main(["--check", "--model", {str(model_file)!r}, "--source", {str(image_folder)!r},
                     "--jsonl", {str(tmp_path / "r.jsonl")!r}])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision")
                       or m.startswith("fsac.train"))
        print("HEAVY", heavy)
        sys.exit(code if not heavy else 3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "fsac-run --check: OK" in proc.stdout
    assert "folder" in proc.stdout and "12 image files" in proc.stdout
    assert not (tmp_path / "r.jsonl").exists()  # --check writes nothing


def test_check_refuses_a_tampered_model_with_one_clear_line(tmp_path, model_file, image_folder):
    data = bytearray(model_file.read_bytes())
    at = bytes(data).find(np.full((3, 1), W_VALUE, dtype=np.float32).tobytes())
    data[at + 2] ^= 0x40
    bad = tmp_path / "tampered.onnx"
    bad.write_bytes(bytes(data))
    proc = run_check("--model", str(bad), "--source", str(image_folder), "--jsonl", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("fsac-run: error: ") and "damaged or was modified after export" in lines[0]
    # the daemon itself refuses it the same way, before reading any frame
    code = "import sys; from fsac.runtime.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "--model", str(bad), "--source", str(image_folder),
                           "--jsonl", str(tmp_path / "r.jsonl"), "--set", "http.enabled=false"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "damaged or was modified" in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_check_names_bad_settings(tmp_path, model_file):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{path: {model_file}}}\nsource: {{uri: {tmp_path}, mode: every}}\n"
                   "sinks: {jsonl: {path: r.jsonl}}\n")
    proc = run_check("--config", str(cfg))
    assert proc.returncode == 2
    assert "source.mode: must be one of every-frame, latest-frame, trigger; got 'every'" in proc.stderr
    proc = run_check("--config", str(cfg), "--set", "source.mode=every-frame", "--source", str(tmp_path / "gone"))
    assert proc.returncode == 2 and "source.uri:" in proc.stderr and "does not exist" in proc.stderr


def test_video_file_end_to_end(tmp_path, bottle_images, model_file):
    import cv2

    video, _ = write_video(tmp_path / "line.avi", bottle_images)
    out = tmp_path / "r.jsonl"
    proc = fsac_run("--model", str(model_file), "--source", str(video), "--jsonl", str(out),
                    "--set", "http.enabled=false")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # end of the file: clean exit
    records = read_jsonl(out)
    assert [r["frame_id"] for r in records] == list(range(len(bottle_images)))
    assert records[5]["name"] == "line.avi#5" and records[0]["source"] == str(video)
    cap = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        decoded.append(np.ascontiguousarray(bgr[..., ::-1]))
    want = [expected_score(rgb) for rgb in decoded]
    assert [r["score"] for r in records] == pytest.approx(want, rel=1e-5)
    assert [r["logit"] for r in records] == pytest.approx([expected_logit(rgb) for rgb in decoded], rel=1e-5, abs=1e-6)
    assert "12 frames read, 12 results written" in err


def test_sigterm_mid_run_loses_no_record(tmp_path, image_folder, model_file):
    folder = tmp_path / "many"
    folder.mkdir()
    sources = sorted(image_folder.iterdir())
    n = 600
    for i in range(n):
        os.link(sources[i % len(sources)], folder / f"f_{i:05d}.png")
    out = tmp_path / "r.jsonl"
    proc = fsac_run("--model", str(model_file), "--source", str(folder), "--jsonl", str(out),
                    "--set", "http.enabled=false", "--set", "model.batch_size=2")
    wait_for(lambda: out.exists() and out.stat().st_size > 0 and len(out.read_text().splitlines()) >= 20, 30,
             what="the first records")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    text = out.read_text()
    assert text.endswith("\n")  # nothing half-written
    records = read_jsonl(out)
    assert 20 <= len(records) < n, "SIGTERM did not land mid-run"
    assert [r["frame_id"] for r in records] == list(range(len(records)))
    assert [r["name"] for r in records] == [f"f_{i:05d}.png" for i in range(len(records))]
    m = re.search(r"stopped: (\d+) frames read, (\d+) results written", err)
    assert m and int(m.group(1)) == int(m.group(2)) == len(records), err


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_watch_daemon_http_sighup_notify_and_sigterm(tmp_path, bottle_images):
    drop = tmp_path / "drop"
    drop.mkdir()
    model = tmp_path / "live.onnx"
    write_model_file(model, build_model_bytes(threshold="0"))
    out = tmp_path / "r.jsonl"
    port = free_port()
    sock_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(0.2)
    messages: list[str] = []
    reading = threading.Event()

    def read_notify():  # as systemd does: read while the service runs (the queue holds ~10)
        while not reading.is_set():
            try:
                messages.append(notify.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                pass

    reader = threading.Thread(target=read_notify, daemon=True)
    reader.start()

    def drain_notify():
        time.sleep(0.3)
        reading.set()
        reader.join(2)
        return messages

    cfg = tmp_path / "run.yaml"
    cfg.write_text(textwrap.dedent(f"""
        model: {{path: live.onnx}}
        source: {{kind: watch, uri: drop, settle_s: 0.2, poll_s: 0.05, processed: move}}
        sinks: {{jsonl: {{path: r.jsonl}}}}
        http: {{port: {port}}}
    """))
    proc = fsac_run("--config", str(cfg), env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _try(lambda: http_get(base + "/readyz")[0] == 200), 30, what="/readyz 200")
        assert http_get(base + "/healthz") == (200, "ok\n")
        assert http_get(base + "/nope")[0] == 404

        def drop_file(name, src, slow=False):
            data = src.read_bytes()
            with open(drop / name, "wb") as f:
                if slow:  # half now, the rest after longer than settle_s
                    f.write(data[: len(data) // 2])
                    f.flush()
                    time.sleep(0.5)
                f.write(data[len(data) // 2 if slow else 0:])

        drop_file("a.png", bottle_images[0], slow=True)
        drop_file("b.png", bottle_images[6])
        drop_file("c.png", bottle_images[1])
        wait_for(lambda: metric(http_get(base + "/metrics")[1], "fsac_frames_total") == 3, 20, what="3 frames")
        wait_for(lambda: sorted(p.name for p in (drop / "done").iterdir()) == ["a.png", "b.png", "c.png"], 10,
                 what="processed files moved to done/")
        # New model file + SIGHUP: verified, then swapped.
        write_model_file(model, build_model_bytes(threshold="0.6"), force=True)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(http_get(base + "/metrics")[1], "fsac_model_reloads_total") == 1, 20, what="reload")
        drop_file("d.png", bottle_images[2])
        wait_for(lambda: len(read_jsonl(out)) == 4, 20, what="record d")
        # A damaged file + SIGHUP: refused, the current model keeps serving.
        good_bytes = model.read_bytes()
        model.write_bytes(good_bytes[:-5] + b"xxxxx")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(http_get(base + "/metrics")[1], "fsac_model_reload_failures_total") == 1, 20,
                 what="refused reload")
        drop_file("e.png", bottle_images[3])
        wait_for(lambda: len(read_jsonl(out)) == 5, 20, what="record e")
        status, text = http_get(base + "/metrics")
        assert status == 200
        assert metric(text, "fsac_frames_total") == 5 and metric(text, "fsac_errors_total") == 0
        assert metric(text, "fsac_queue_depth") == 0 and metric(text, "fsac_reconnects_total") == 0
        assert metric(text, "fsac_dropped_frames_total") == 0 and metric(text, 'fsac_latency_seconds_count') == 5
        assert metric(text, 'fsac_latency_seconds_bucket{le="+Inf"}') == 5
        from prometheus_client.parser import text_string_to_metric_families

        (info,) = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "fsac_model_info"]
        assert info.value == 1 and info.labels["name"] == "live.onnx" and info.labels["arch"] == "test-mean-pixel"
        assert re.fullmatch(r"[0-9a-f]{64}", info.labels["sha256"]) and info.labels["logit_threshold"] == "0.6"
        assert "# TYPE fsac_latency_seconds histogram" in text
        assert metric(text, 'fsac_sink_written_total{sink="jsonl"}') == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    records = read_jsonl(out)
    assert [r["name"] for r in records] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert len({r["model_sha256"] for r in records[:3]}) == 1
    assert records[3]["model_sha256"] != records[0]["model_sha256"]
    assert [r["logit_threshold"] for r in records] == [0.0, 0.0, 0.0, 0.6, 0.6]
    assert [r["threshold"] for r in records] == [0.5, 0.5, 0.5, score_from_logit(0.6), score_from_logit(0.6)]
    assert records[4]["model_sha256"] == records[3]["model_sha256"]
    assert records[0]["score"] == pytest.approx(expected_score(__import__("fsac.preprocess").preprocess.load_image(
        bottle_images[0])), rel=1e-5)  # the slowly written file was read whole
    assert "model reload refused" in err
    joined = "".join(drain_notify())
    assert joined.startswith("READY=1") and "WATCHDOG=1" in joined and "STOPPING=1" in joined
    notify.close()


def _try(fn):
    try:
        return fn()
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def test_check_refuses_a_journal_dir_that_cannot_be_created(tmp_path, model_file, image_folder, mount_small):
    """--check says at once what the daemon would refuse at start: a journal.dir under a
    regular file, or on a read-only file system, is one line naming the setting and the path."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, not a folder\n")
    readonly = mount_small("64k")
    subprocess.run(["mount", "-o", "remount,ro", str(readonly)], check=True)
    for journal in (blocker / "journal", blocker, readonly / "journal"):
        proc = run_check("--model", str(model_file), "--source", str(image_folder), "--jsonl",
                         str(tmp_path / "r.jsonl"), "--set", f"journal.dir={journal}")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert len(lines) == 1 and "Traceback" not in proc.stderr
        assert lines[0].startswith("fsac-run: error: journal.dir: ") and str(journal) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fs0", "not-a-folder"]  # --check wrote nothing
