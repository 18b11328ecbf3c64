"""The systemd watchdog with a real notify socket (a unix datagram socket the test reads, as
systemd's is): WATCHDOG=1 keeps coming while the daemon waits honestly (journal back-pressure,
a slow SIGHUP reload) and stops when it is truly stuck (a hung inference, a hung journal
thread that would have to make the room)."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from fsac.modelfile import write_model_file
from fsac.runtime.daemon import Daemon
from fsac_run_helpers import build_model_bytes, wait_for
from test_daemon import FlakySink, ListSource, config, slow_handle

STALE_S = 5.0  # runtime/lifecycle.py: no progress for max(2 x interval, 5 s) means stuck


class NotifySocket:
    """What systemd listens on: every datagram with the time it arrived."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                continue

    def pings(self, since: float) -> list[float]:
        return [t for t, m in list(self.got) if t >= since and "WATCHDOG=1" in m]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def start(daemon):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), daemon=True)
    t.start()
    return t, result


def largest_gap(times: list[float], since: float, until: float) -> float:
    points = [since, *[t for t in times if since <= t <= until], until]
    return max(b - a for a, b in zip(points, points[1:]))


def frames(n):
    return [np.full((64, 64, 3), i % 256, np.uint8) for i in range(n)]


def blocked_daemon(tmp_path, model_file, source_cls=ListSource, sink=None):
    """A camera daemon with journal.when_full=block whose journal fills at 16 records (by
    default its only durable sink never delivers), so that the scorer waits for room."""
    cfg = config(model_file, "0", tmp_path / "r.jsonl", "journal.max_records=16", "journal.when_full=block",
                 "model.batch_size=1", "daemon.shutdown_timeout_s=2", "daemon.drain_timeout_s=0.2")
    return Daemon(cfg, sinks=[sink or FlakySink("broken")], source=source_cls(cfg.source, frames(60)),
                  install_signals=False)


def test_pings_go_on_while_the_scorer_waits_for_journal_room(tmp_path, model_file, notify):
    daemon = blocked_daemon(tmp_path, model_file)
    t, result = start(daemon)
    try:
        wait_for(lambda: daemon.journal.waiting, 20, what="the scorer waiting for journal room")
        since = time.monotonic()
        time.sleep(STALE_S + 2.5)
        assert daemon.journal.waiting and daemon.metrics.frames.value <= 16  # still blocked, honestly
        assert largest_gap(notify.pings(since), since, time.monotonic()) < 1.5
    finally:
        daemon.request_stop()
        t.join(20)
    assert result["code"] == 1  # frames read without a record, undelivered records: not a clean run


class AckHangsSource(ListSource):
    """Its acknowledgement (what the journal thread calls once a record is durable) never
    returns: a watch folder on a dead network mount, say. The journal thread is stuck."""

    hang = threading.Event()

    def on_result(self, frame, record):
        self.hang.wait(60)


def test_pings_stop_when_the_journal_thread_that_makes_room_is_stuck(tmp_path, model_file, notify):
    # The sink delivers everything; only the journal thread's trimming could make room.
    daemon = blocked_daemon(tmp_path, model_file, AckHangsSource, FlakySink("working", fail=0))
    t, result = start(daemon)
    try:
        wait_for(lambda: daemon.journal.waiting, 20, what="the scorer waiting for journal room")
        time.sleep(STALE_S + daemon.cfg.journal.commit_interval_s + 1.5)
        since = time.monotonic()
        time.sleep(1.5)
        assert notify.pings(since) == []
    finally:
        AckHangsSource.hang.set()
        daemon.request_stop()
        t.join(20)


def test_pings_stop_when_inference_hangs(tmp_path, model_file, notify):
    cfg = config(model_file, "0", tmp_path / "r.jsonl", "model.batch_size=1", "daemon.shutdown_timeout_s=1")
    daemon = Daemon(cfg, handle=slow_handle(cfg, STALE_S + 4.0), source=ListSource(cfg.source, frames(3)),
                    install_signals=False)
    t, result = start(daemon)
    try:
        wait_for(lambda: notify.pings(0), 10, what="a first ping")
        time.sleep(STALE_S + 1.5)
        since = time.monotonic()
        time.sleep(1.5)
        assert notify.pings(since) == []
    finally:
        daemon.request_stop()
        t.join(20)


def feed_fifo(path) -> bool:
    """Whoever reads the FIFO now (each open of it waits for a writer) gets a few bytes and
    the end of the file: the blocked load goes on, whatever the outcome of the test."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # only succeeds while a reader has it open
    except OSError:
        return True
    try:
        os.write(fd, b"not a model")
    finally:
        os.close(fd)
    return True


def test_a_slow_sighup_reload_does_not_starve_the_pings(tmp_path, notify):
    """The new file is read from a path that blocks (a FIFO: a model on a hung network mount)
    for longer than the watchdog allows; the scorer is idle and healthy meanwhile."""
    model = tmp_path / "live.onnx"
    write_model_file(model, build_model_bytes())
    cfg = config(model, "0", tmp_path / "r.jsonl", "daemon.shutdown_timeout_s=2")

    class Idle(ListSource):
        def frames(self, stop):
            yield from super().frames(stop)
            stop.wait(60)

    daemon = Daemon(cfg, source=Idle(cfg.source, frames(2)), install_signals=False)
    t, result = start(daemon)
    try:
        wait_for(lambda: daemon.metrics.frames.value == 2, 20, what="2 frames")
        model.unlink()
        os.mkfifo(model)
        daemon.request_reload()
        since = time.monotonic()
        time.sleep(STALE_S + 2.0)
        assert largest_gap(notify.pings(since), since, time.monotonic()) < 1.5
    finally:
        wait_for(lambda: feed_fifo(model) and daemon.metrics.reload_failures.value == 1, 20,
                 what="the reload refused")
        daemon.request_stop()
        t.join(20)
    assert result["code"] == 0
