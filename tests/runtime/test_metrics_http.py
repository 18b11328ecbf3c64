"""Metrics text format, the status server's readiness answers, the frame queue, sd_notify."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from fsac.errors import FsacError
from fsac.runtime.framequeue import CLOSED, FrameQueue
from fsac.runtime.http import StatusServer
from fsac.runtime.metrics import RuntimeMetrics

from fsac_run_helpers import metric_value
from fsac.runtime.notify import sd_notify, watchdog_interval


def test_metrics_page_parses_with_prometheus_and_counts_exactly():
    from prometheus_client.parser import text_string_to_metric_families

    m = RuntimeMetrics()
    m.frames.inc(3)
    for v in (0.005, 0.01, 0.02, 0.5, 30.0):
        m.latency.observe(v)
    m.sink_error("mqtt")
    text = m.render(queue_depth=2, reconnects=1, ready=True, source_connected=True,
                    model_info={"name": 'we"ird\\name', "sha256": "ab"}, sink_stats={"jsonl": {"written": 3}},
                    extra=lambda e: e.scalar("fsac_extra_total", "counter", "An extra counter.", 7))
    assert m.frames.value == 3
    assert metric_value(text, "fsac_frames_total") == 3 and metric_value(text, "fsac_queue_depth") == 2
    assert metric_value(text, "fsac_reconnects_total") == 1 and metric_value(text, "fsac_extra_total") == 7
    assert metric_value(text, "fsac_model_info", name='we"ird\\name', sha256="ab") == 1  # escaping round-trips
    assert metric_value(text, "fsac_latency_seconds_bucket", le="0.01") == 2  # cumulative; le is inclusive
    assert metric_value(text, "fsac_latency_seconds_bucket", le="0.025") == 3
    assert metric_value(text, "fsac_latency_seconds_bucket", le="+Inf") == 5
    assert metric_value(text, "fsac_latency_seconds_count") == 5
    assert metric_value(text, "fsac_latency_seconds_sum") == pytest.approx(30.535)
    assert metric_value(text, "fsac_sink_written_total", sink="jsonl") == 3
    assert metric_value(text, "fsac_sink_errors_total", sink="mqtt") == 1
    assert metric_value(text, "fsac_sink_errors_total", sink="jsonl") == 0  # shown before its first error
    families = [f.name for f in text_string_to_metric_families(text)]
    assert len(families) == len(set(families))  # every family declared once
    assert "_created" not in text



def test_per_sink_counts_are_counters_and_states_are_gauges():
    """A sink's delivered / lost / written counts only grow: Prometheus counters (rate() and
    increase() need them as such); pending, failing and connected go up and down: gauges."""
    from prometheus_client.parser import text_string_to_metric_families

    stats = {"jsonl": {"delivered": 5, "pending": 2, "delivery_errors": 1, "failing": 0, "lost": 0, "written": 5},
             "mqtt": {"delivered": 3, "pending": 4, "lost": 2, "published": 3, "connected": 1, "reconnects": 1}}
    text = RuntimeMetrics().render(queue_depth=0, reconnects=0, ready=True, source_connected=True,
                                   model_info={}, sink_stats=stats)
    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    for key in ("delivered", "lost", "delivery_errors", "written", "published", "reconnects"):
        assert kinds[f"fsac_sink_{key}"] == "counter", key
    for key in ("pending", "failing", "connected"):
        assert kinds[f"fsac_sink_{key}"] == "gauge", key
    assert metric_value(text, "fsac_sink_delivered_total", sink="mqtt") == 3
    assert metric_value(text, "fsac_sink_lost_total", sink="mqtt") == 2
    assert metric_value(text, "fsac_sink_lost_total", sink="jsonl") == 0
    assert metric_value(text, "fsac_sink_pending", sink="mqtt") == 4
    assert "fsac_sink_delivered{" not in text  # the count is no longer also a gauge of that name

def test_the_frames_sinks_failed_saves_are_a_counter_of_their_own(tmp_path):
    """The saved-frames sink's failed saves only grow: a counter, fsac_sink_save_failures_total.
    They had been a gauge fsac_sink_errors beside the daemon's own counter
    fsac_sink_errors_total (exceptions raised by a sink): one name, two meanings. No metric
    name is declared twice with every sink's stats present."""
    import re

    from fsac.runtime.sinks.frames import FramesSink

    sink = FramesSink({"dir": str(tmp_path / "frames")})
    sink._save_failures = 1  # what one failed save leaves (tests/runtime/test_frames.py makes real ones)
    frames_stats = sink.stats()
    sink.close(1.0)
    stats = {"jsonl": {"delivered": 5, "pending": 0, "delivery_errors": 0, "failing": 0, "lost": 0, "written": 5},
             "frames": {"delivered": 2, "pending": 0, "failing": 0, "lost": 0, **frames_stats}}
    m = RuntimeMetrics()
    m.sink_error("frames")
    text = m.render(queue_depth=0, reconnects=0, ready=True, source_connected=True, model_info={},
                    sink_stats=stats)
    declared = re.findall(r"^# TYPE (\S+) ", text, flags=re.M)
    assert len(declared) == len(set(declared)), sorted(n for n in declared if declared.count(n) > 1)
    assert metric_value(text, "fsac_sink_errors_total", sink="frames") == 1  # exceptions raised by the sink
    assert metric_value(text, "fsac_sink_save_failures_total", sink="frames") == 1  # frames it could not save
    assert "fsac_sink_errors{" not in text


def test_status_server_readiness_and_port_conflict():
    state = {"ready": (False, "source /dev/video0 is not open")}
    server = StatusServer("127.0.0.1", 0, metrics=lambda: "fsac_up 1\n", ready=lambda: state["ready"])
    server.start()
    host, port = server.address
    base = f"http://{host}:{port}"
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert e.value.code == 503 and b"not open" in e.value.read()
        state["ready"] = (True, "")
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert r.read() == b"fsac_up 1\n"
        with pytest.raises(FsacError, match=r"http\.port: cannot listen on 127\.0\.0\.1:%d" % port):
            StatusServer("127.0.0.1", port, metrics=lambda: "", ready=lambda: (True, ""))
    finally:
        server.stop()


def test_frame_queue_modes():
    q = FrameQueue(2)
    assert q.put(1) == (True, None) and q.put(2) == (True, None)
    blocked = []
    t = threading.Thread(target=lambda: blocked.append(q.put(3)))
    t.start()
    time.sleep(0.1)
    assert not blocked  # every-frame: the reader waits (back-pressure)
    assert q.get() == 1
    t.join(2)
    assert blocked == [(True, None)]
    assert q.take_ready(5, lambda item: item == 2) == [2]  # stops at the first not-ready item
    q.close()
    assert q.put(4) == (False, None)
    assert q.get() == 3 and q.get() is CLOSED
    latest = FrameQueue(2, drop_oldest=True)
    latest.put("a"), latest.put("b")
    assert latest.put("c") == (True, "a") and len(latest) == 2
    assert latest.get(timeout=0.01) == "b"
    assert FrameQueue(1).get(timeout=0.01) is None


def test_sd_notify_datagrams(tmp_path, monkeypatch):
    path = str(tmp_path / "n.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False and watchdog_interval() is None
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sd_notify("READY=1") is True
    assert sock.recv(100) == b"READY=1"
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    assert sd_notify("WATCHDOG=1") is False  # never raises
    sock.close()


def test_sd_notify_never_blocks_on_a_supervisor_that_stopped_reading(tmp_path, monkeypatch):
    """A full datagram queue (max_dgram_qlen, 10 on many systems) drops the message; it must
    not block the daemon's main loop, which is what sends the watchdog pings."""
    path = str(tmp_path / "n.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)  # never read until the end
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    outcome: list[bool] = []
    sender = threading.Thread(target=lambda: outcome.extend(sd_notify("WATCHDOG=1") for _ in range(2000)),
                              daemon=True)
    sender.start()
    sender.join(10)
    assert not sender.is_alive(), "sd_notify blocked on a full notify socket"
    assert outcome.count(False) > 0 and outcome[0] is True  # the queue filled, later ones were dropped
    sock.setblocking(False)
    assert sock.recv(100) == b"WATCHDOG=1"
    sock.close()


def test_idle_connections_cannot_exhaust_the_status_server(monkeypatch):


    from fsac.runtime import http as http_mod

    monkeypatch.setattr(http_mod, "CONN_TIMEOUT_S", 2.0)
    server = StatusServer("127.0.0.1", 0, metrics=lambda: "", ready=lambda: (True, ""))
    server.start()
    host, port = server.address
    n = http_mod.MAX_IDLE + 40
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(n)]  # connect, say nothing
    try:
        wait_until = time.monotonic() + 3
        while server.refused < 40 and time.monotonic() < wait_until:
            time.sleep(0.01)
        assert server.refused == 40  # the oldest waiting ones made room; no thread per connection
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as r:
            assert r.status == 200 and r.headers["Connection"] == "close"
        assert time.monotonic() - t0 < 1.0
        assert threading.active_count() < 40
        for s in idle:  # every idle connection is closed by the server within its timeout
            s.settimeout(5)
            assert s.recv(1) == b""
    finally:
        for s in idle:
            s.close()
        server.stop()


SPIN_CHILD = """
import os, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from fsac.runtime.http import StatusServer
server = StatusServer("127.0.0.1", 0, metrics=lambda: "", ready=lambda: (True, ""))
server.start()
print(server.address[1], flush=True)
sys.stdin.readline()
fds = []
try:
    while True:
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
print("HOGGED", flush=True)
sys.stdin.readline()  # the test connects clients now: accept() fails with EMFILE
t0, c0 = time.monotonic(), time.process_time()
time.sleep(1.5)
print("CPU", time.process_time() - c0, time.monotonic() - t0, server.accept_failures, flush=True)
for fd in fds:
    os.close(fd)
sys.stdin.readline()
"""


def test_no_busy_loop_when_accept_hits_the_fd_limit():

    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", SPIN_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "HOGGED"
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        proc.stdin.write("\n")
        proc.stdin.flush()
        _, cpu, wall, failures = proc.stdout.readline().split()
        assert int(failures) >= 1  # accept() really failed for lack of descriptors
        assert float(cpu) < 0.3 * float(wall), f"{cpu} s CPU in {wall} s: the server spins"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200  # answers again once descriptors are free
        for c in clients:
            c.close()
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(10)


def _dribble(host: str, port: int, stop: threading.Event, closed: list) -> None:
    """A slowloris client: a request one byte at a time, each well inside the recv timeout."""
    c = socket.create_connection((host, port), timeout=10)
    try:
        for ch in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            if stop.is_set():
                return
            c.sendall(bytes([ch]))
            time.sleep(0.2)
    except OSError:
        closed.append(c)  # the server gave up on it
    finally:
        c.close()


def test_slow_clients_cannot_hold_every_worker(monkeypatch):
    from fsac.runtime import http as http_mod

    monkeypatch.setattr(http_mod, "CONN_TIMEOUT_S", 1.0)
    server = StatusServer("127.0.0.1", 0, metrics=lambda: "", ready=lambda: (True, ""))
    server.start()
    host, port = server.address
    stop, closed = threading.Event(), []
    slow = [threading.Thread(target=_dribble, args=(host, port, stop, closed), daemon=True)
            for _ in range(http_mod.WORKERS + 2)]
    try:
        for t in slow:
            t.start()
        time.sleep(0.5)  # every worker now holds a dribbling client
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as r:
            assert r.status == 200
        # Answered once the slow requests ran out of their 1 s for the whole request, not after
        # the 40 s they would take at one byte per 0.2 s.
        assert time.monotonic() - t0 < 3.0
        for t in slow:
            t.join(10)
        assert len(closed) == len(slow)  # the server closed every one of them
    finally:
        stop.set()
        server.stop()


class _BlockingApp:
    """A live-view stand-in whose GET /block holds its worker until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def handle(self, handler, method, path) -> bool:
        if path == "/block":
            self.release.wait(20)
        body = b"ok\n"
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))  # no Connection header, as webui
        handler.end_headers()
        handler.wfile.write(body)
        return True


def test_requests_waiting_for_a_worker_are_bounded():
    from fsac.runtime import http as http_mod

    app = _BlockingApp()
    server = StatusServer("127.0.0.1", 0, metrics=lambda: "", ready=lambda: (True, ""), app=app)
    server.start()
    host, port = server.address
    n = http_mod.WORKERS + http_mod.MAX_QUEUED + 10
    conns = []
    try:
        for _ in range(n):
            c = socket.create_connection((host, port), timeout=10)
            c.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            conns.append(c)
            time.sleep(0.01)  # in order: the first ones take the workers and the queue
        # The surplus is answered 503 at once instead of holding a descriptor behind busy workers.
        answers = []
        for c in conns[-10:]:
            answers.append(c.recv(200))
        assert all(a.startswith(b"HTTP/1.1 503") and b"busy" in a for a in answers)
        assert server.refused == 10
        app.release.set()
        for c in conns[:-10]:  # every accepted request is still answered
            assert c.recv(200).startswith(b"HTTP/1.1 200")
    finally:
        app.release.set()
        for c in conns:
            c.close()
        server.stop()


def test_every_response_closes_its_connection():
    server = StatusServer("127.0.0.1", 0, metrics=lambda: "", ready=lambda: (True, ""), app=_BlockingApp())
    server.start()
    host, port = server.address
    try:
        c = socket.create_connection((host, port), timeout=10)
        c.sendall(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")  # HTTP/1.1: keep-alive unless told
        t0, data = time.monotonic(), b""
        while chunk := c.recv(4096):
            data += chunk
        # Closed right after the answer: a kept-alive connection holds one of the few workers
        # for the whole socket timeout (5 s) while the client keeps it open.
        assert time.monotonic() - t0 < 1.0
        assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data
        c.close()
    finally:
        server.stop()
