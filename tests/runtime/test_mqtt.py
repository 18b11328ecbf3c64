"""MqttSink against a real Mosquitto broker started by the tests, with a real paho subscriber.

The sink is fed the way fsac-run feeds it: records appended to a real journal, delivered by
the daemon's delivery thread from the sink's cursor (fsac_run_helpers.Feed).

Broker restarts that must keep the *subscriber's* session (so that no message is lost on
the subscriber's side while it reconnects) use Mosquitto persistence and a graceful SIGTERM;
for the sink under test that is the same dropped TCP connection as a crash.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fsac.errors import FsacError
from fsac.runtime.sinks.mqtt import MqttSink, validate_mqtt_config
from fsac.runtime.sinks.mqtt_config import MQTT_DEFAULTS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works with any pytest import mode
from fsac_run_helpers import Feed  # noqa: E402
from mosquitto_helper import (  # noqa: E402
    Collector,
    Mosquitto,
    find_mosquitto,
    find_mosquitto_passwd,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None,
    reason="mosquitto binary not found (apt-get install mosquitto mosquitto-clients)",
)

FAST = {"reconnect_min_delay": 0.05, "reconnect_max_delay": 0.2, "keepalive": 5}


def rec(i: int, verdict: str | None = None, error: str | None = None) -> dict:
    verdict = verdict or ("defective" if i % 3 == 0 else "good")
    return {
        "schema": "fsac.result/2",
        "run_id": "20240501T120000Z-0a1b2c3d",
        "seq": i,
        "time": f"2024-05-01T12:00:{i % 60:02d}.000Z",
        "source": "cam0",
        "frame_id": i,
        "score": None if error else 0.5 + (0.3 if verdict == "defective" else -0.3),
        "logit": None if error else (1.3863 if verdict == "defective" else -1.3863),
        "sim_normal": None if error else 0.30,
        "sim_anomalous": None if error else (0.31 if verdict == "defective" else 0.29),
        "threshold": 0.5,
        "logit_threshold": 0.0,
        "verdict": verdict,
        "latency_ms": 12.5,
        "model": "bottle",
        "model_sha256": "0" * 64,
        "error": error,
    }


def ids(payloads: list[bytes]) -> list[int]:
    return [json.loads(p)["frame_id"] for p in payloads]


def first_arrivals(seq: list[int]) -> tuple[list[int], int]:
    seen: set[int] = set()
    order = []
    for x in seq:
        if x not in seen:
            seen.add(x)
            order.append(x)
    return order, len(seq) - len(order)


@pytest.fixture
def cleanup():
    items: list = []
    yield items
    for item in reversed(items):
        try:
            if isinstance(item, (MqttSink, Feed)):
                item.close(timeout=1)
            elif isinstance(item, Collector):
                item.stop()
            elif isinstance(item, Mosquitto):
                item.stop(kill=True)
            elif isinstance(item, subprocess.Popen):
                item.kill()
                item.wait(5)
        except Exception:
            pass


@pytest.fixture
def broker(tmp_path, cleanup) -> Mosquitto:
    b = Mosquitto(tmp_path / "broker").start()
    cleanup.append(b)
    return b


def sink_cfg(tmp_path: Path, port: int, name: str = "s1", **over) -> dict:
    cfg = {"host": "127.0.0.1", "port": port, "client_id": name, **FAST}
    cfg.update(over)
    return cfg


def make_sink(cleanup, tmp_path, port, name="s1", journal_kw=None, **over) -> Feed:
    """An MqttSink fed from the journal <tmp_path>/journal-<name> (the same folder again: a restart)."""
    s = Feed(MqttSink(sink_cfg(tmp_path, port, name, **over)), tmp_path / f"journal-{name}", **(journal_kw or {}))
    cleanup.append(s)
    return s


def collector(cleanup, port, topics, **kw) -> Collector:
    c = Collector(port, topics, **kw).start()
    cleanup.append(c)
    return c


# ------------------------------------------------------------------ delivery, topics


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_results_in_order_anomalies_only_defective(tmp_path, cleanup, qos):
    # Mosquitto 2.0.x loses QoS 2 messages it has acknowledged when the subscriber's outgoing
    # window is full (see the mqtt module docstring); lift that window so that the test
    # checks the sink, not that broker bug.
    broker = Mosquitto(tmp_path / "broker",
                       extra_config="max_inflight_messages 0" if qos == 2 else "").start()
    cleanup.append(broker)
    col = collector(cleanup, broker.port, ["fsac/s1/#"])
    sink = make_sink(cleanup, tmp_path, broker.port, qos=qos, errors_topic="errors")
    records = [rec(i) for i in range(300)] + [rec(300, "error", error="decode failed")]
    t0 = time.monotonic()
    for r in records:
        sink.write(r)
    assert time.monotonic() - t0 < 2.0, "journaling must not wait for the network"

    results = col.wait_count("fsac/s1/results", 301)
    assert ids(results) == list(range(301))
    assert [json.loads(p) for p in results] == records
    defective = [r["frame_id"] for r in records if r["verdict"] == "defective"]
    anomalies = col.wait_count("fsac/s1/anomalies", len(defective))
    assert ids(anomalies) == defective
    assert all(json.loads(p)["verdict"] == "defective" for p in anomalies)
    assert ids(col.wait_count("fsac/s1/errors", 1)) == [300]

    wait_until(lambda: sink.stats()["published"] == 301, 5, what="published == 301")
    st = sink.stats()
    assert st["buffered"] == 0 and st["lost"] == 0 and st["connected"] == 1
    assert st["reconnects"] == 0 and st["delivery_errors"] == 0
    sink.close(timeout=5)
    assert sink.left == 0
    time.sleep(0.2)
    assert len(col.on("fsac/s1/results")) == 301  # nothing extra after close
    with pytest.raises(RuntimeError):
        sink.sink.deliver([b'{"verdict": "good"}\n'])


def test_topic_prefix_and_disabled_anomalies(broker, tmp_path, cleanup):
    col = collector(cleanup, broker.port, ["#"])
    sink = make_sink(cleanup, tmp_path, broker.port, name="line7",
                     topic_prefix="plant/{client_id}", anomalies_topic=None)
    for i in range(6):
        sink.write(rec(i))
    assert ids(col.wait_count("plant/line7/results", 6)) == list(range(6))
    sink.close(timeout=5)
    topics = {t for t, _, _ in col.messages}
    assert topics == {"plant/line7/results", "plant/line7/status"}


def test_a_damaged_journal_line_is_published_raw_on_results_only_and_delivery_goes_on(broker, tmp_path, cleanup,
                                                                                       caplog):
    col = collector(cleanup, broker.port, ["fsac/s1/#"])
    sink = MqttSink(sink_cfg(tmp_path, broker.port, errors_topic="errors"))
    cleanup.append(sink)
    wait_until(lambda: sink.stats()["connected"] == 1, 5, what="connected")
    damaged = b'{"frame_id": 1, "verdict": "defect\n'  # torn by hand or a failing disk
    with caplog.at_level(logging.ERROR, logger="fsac.runtime"):
        sink.deliver([json.dumps(rec(0)).encode() + b"\n", damaged, json.dumps(rec(3)).encode() + b"\n"])
    results = col.wait_count("fsac/s1/results", 3)
    assert results[1] == damaged.rstrip(b"\n") and ids([results[0], results[2]]) == [0, 3]
    assert ids(col.wait_count("fsac/s1/anomalies", 2)) == [0, 3]  # rec(0), rec(3): defective; not the raw line
    time.sleep(0.3)
    assert len(col.on("fsac/s1/anomalies")) == 2 and col.on("fsac/s1/errors") == []
    assert sink.stats()["published"] == 3
    assert "not JSON" in caplog.text


# ------------------------------------------------------------------ status and last will


def test_status_online_then_offline_retained(broker, tmp_path, cleanup):
    status = "fsac/s1/status"
    col = collector(cleanup, broker.port, [status])
    sink = make_sink(cleanup, tmp_path, broker.port)
    assert col.wait_count(status, 1)[0] == b"online"
    # A subscriber that comes later gets the retained "online".
    late = collector(cleanup, broker.port, [status])
    wait_until(lambda: late.with_retain(status), 5, what="retained status")
    assert late.with_retain(status)[0] == (b"online", True)

    sink.close(timeout=5)
    assert col.wait_count(status, 2) == [b"online", b"offline"]
    after = collector(cleanup, broker.port, [status])
    wait_until(lambda: after.with_retain(status), 5, what="retained status after close")
    assert after.with_retain(status) == [(b"offline", True)]


CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[4])
    from fsac_run_helpers import Feed
    from fsac.runtime.sinks.mqtt import MqttSink
    cfg, n, mode = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sink = Feed(MqttSink(cfg), Path(sys.argv[5]))
    if mode == "online":
        deadline = time.monotonic() + 10
        while not sink.stats()["connected"] and time.monotonic() < deadline:
            time.sleep(0.01)
        print("connected" if sink.stats()["connected"] else "not connected", flush=True)
        time.sleep(30)  # the test kills us
    else:
        for i in range(n):
            sink.write({"frame_id": i, "verdict": "defective" if i % 2 else "good", "error": None})
        sink.journal.sync()
        print("buffered", sink.stats()["buffered"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # crash: no close(), no flush
""")


def run_child(tmp_path, cfg, n, mode, cleanup) -> tuple[subprocess.Popen, str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg), str(n), mode,
                             str(Path(__file__).resolve().parent), str(tmp_path / f"journal-{cfg['client_id']}")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cleanup.append(proc)
    line = proc.stdout.readline().strip()  # bounded: the child gives up after 10 s
    return proc, line


def test_last_will_offline_when_process_dies(broker, tmp_path, cleanup):
    status = "fsac/child/status"
    col = collector(cleanup, broker.port, [status])
    cfg = sink_cfg(tmp_path, broker.port, "child")
    proc, line = run_child(tmp_path, cfg, 0, "online", cleanup)
    assert line == "connected", proc.stderr.read() if proc.poll() is not None else line
    assert col.wait_count(status, 1) == [b"online"]
    proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker publishes the last will
    proc.wait(5)
    assert col.wait_count(status, 2, timeout=10) == [b"online", b"offline"]
    after = collector(cleanup, broker.port, [status])
    wait_until(lambda: after.with_retain(status), 5, what="retained will")
    assert after.with_retain(status) == [(b"offline", True)]


# ------------------------------------------------------------------ outages


def test_broker_down_at_start_buffers_then_delivers(tmp_path, cleanup, caplog):
    caplog.set_level(logging.WARNING, logger="fsac.runtime.sinks.mqtt")
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    cleanup.append(broker)
    # The subscriber's persistent session makes delivery independent of who reconnects first.
    col = collector(cleanup, broker.port, ["fsac/s1/results"], client_id="col", clean_session=False)
    broker.stop()

    t0 = time.monotonic()
    sink = make_sink(cleanup, tmp_path, broker.port)
    for i in range(50):
        sink.write(rec(i))
    assert time.monotonic() - t0 < 2.0, "a dead broker must not block start or journaling"
    time.sleep(0.6)  # several reconnect attempts
    st = sink.stats()
    assert st["buffered"] == 50 and st["connected"] == 0 and st["published"] == 0
    assert st["delivery_errors"] >= 1 and sink.delivery.failing  # what /readyz reports
    unreachable = [r for r in caplog.records if "unreachable; results wait in the journal" in r.getMessage()]
    assert len(unreachable) == 1, [r.getMessage() for r in caplog.records]
    assert f"127.0.0.1:{broker.port}" in unreachable[0].getMessage()

    broker.start()
    assert ids(col.wait_count("fsac/s1/results", 50)) == list(range(50))
    wait_until(lambda: sink.stats()["buffered"] == 0, 10, what="journal delivered")
    assert sink.stats()["published"] == 50 and sink.stats()["connected"] == 1
    assert not sink.delivery.failing
    assert sink.stats()["reconnects"] == 0  # first connection, not a reconnect


def test_broker_restart_mid_run_no_loss_order_kept(tmp_path, cleanup):
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    cleanup.append(broker)
    col = collector(cleanup, broker.port, ["fsac/s1/results"], client_id="col", clean_session=False)
    sink = make_sink(cleanup, tmp_path, broker.port, max_inflight=8)
    wait_until(lambda: sink.stats()["connected"], 5, what="sink connected")

    n = 300
    written = threading.Event()
    progress = [0]

    def writer():
        for i in range(n):
            sink.write(rec(i))
            progress[0] = i + 1
            time.sleep(0.004)
        written.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_until(lambda: progress[0] >= 60, 10, what="first records written")
        broker.stop()  # mid-run, while records are being written and in flight
        wait_until(lambda: sink.stats()["connected"] == 0, 10, what="sink noticing the outage")
        at_outage = progress[0]
        wait_until(lambda: progress[0] >= at_outage + 60, 10, what="records written during the outage")
        assert sink.stats()["buffered"] >= 50
        assert sink.delivery.failing
        broker.start()
    finally:
        assert written.wait(15)
        t.join(5)

    wait_until(lambda: len(set(ids(col.on("fsac/s1/results")))) >= n, 15,
               what=f"all {n} records at the subscriber")
    order, duplicates = first_arrivals(ids(col.on("fsac/s1/results")))
    assert order == list(range(n))  # no loss, order of first arrivals kept
    print(f"mid-run broker restart: {n} records, {duplicates} duplicates (QoS 1 allows them)")
    wait_until(lambda: sink.stats()["buffered"] == 0, 10, what="journal delivered")
    st = sink.stats()
    assert st["published"] >= n and st["reconnects"] >= 1 and st["lost"] == 0


def test_daemon_crash_then_restart_delivers_from_the_journal(tmp_path, cleanup):
    port = free_port()  # nothing listens there yet
    cfg = sink_cfg(tmp_path, port, "s1")
    proc, line = run_child(tmp_path, cfg, 40, "crash", cleanup)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert line == "buffered 40", proc.stderr.read()
    segs = sorted((tmp_path / "journal-s1").glob("seg-*.jsonl"))
    assert sum(len(p.read_bytes().splitlines()) for p in segs) == 40

    broker = Mosquitto(tmp_path / "broker", port=port).start()
    cleanup.append(broker)
    col = collector(cleanup, port, ["fsac/s1/#"])
    sink = make_sink(cleanup, tmp_path, port)  # same journal: resumes from the cursor
    assert ids(col.wait_count("fsac/s1/results", 40)) == list(range(40))
    assert ids(col.wait_count("fsac/s1/anomalies", 20)) == list(range(1, 40, 2))
    sink.write(rec(40))
    assert ids(col.wait_count("fsac/s1/results", 41))[-1] == 40
    wait_until(lambda: sink.stats()["buffered"] == 0, 5, what="journal delivered")
    sink.close()
    # A third start finds the cursor saved: nothing is sent again.
    sink = make_sink(cleanup, tmp_path, port)
    assert sink.stats()["buffered"] == 0
    time.sleep(0.3)
    assert len(col.on("fsac/s1/results")) == 41


def test_close_while_broker_down_keeps_records_for_next_start(tmp_path, cleanup, caplog):
    port = free_port()
    # A journal bounded to 10 records that drops the oldest (a live stream's setting): one
    # record per segment, so exactly the newest 10 survive and exactly 15 are counted lost.
    bound = {"max_records": 10, "when_full": "drop-oldest", "segment_bytes": 1, "cursor_interval_s": 0.1}
    sink = make_sink(cleanup, tmp_path, port, journal_kw=bound)
    for i in range(25):
        sink.write(rec(i))
    time.sleep(0.5)  # housekeeping logs the loss
    st = sink.stats()
    # The batch the sink read and keeps retrying is in its memory: at risk, not yet lost.
    assert st["buffered"] == 10 and st["at_risk"] >= 1 and st["lost"] + st["at_risk"] == 15
    t0 = time.monotonic()
    sink.close(timeout=0.5)
    assert time.monotonic() - t0 < 3, "close() must not wait for a broker that is down"
    # Closed without delivering it: now those are lost too, and the count only ever grew.
    assert sink.left == 10 and sink.journal.lost["mqtt"] == 15 and sink.journal.at_risk["mqtt"] == 0
    totals = [int(m.group(1)) for r in caplog.records
              if (m := re.search(r"sink mqtt lost (\d+) records in total", r.getMessage()))]
    assert totals[-1] == 15 and totals == sorted(set(totals))  # loud, exact, each total once, never down
    assert all(r.levelno == logging.ERROR for r in caplog.records if "records in total" in r.getMessage())

    broker = Mosquitto(tmp_path / "broker", port=port).start()
    cleanup.append(broker)
    col = collector(cleanup, port, ["fsac/s1/results"])
    sink2 = make_sink(cleanup, tmp_path, port, journal_kw=bound)
    assert ids(col.wait_count("fsac/s1/results", 10)) == list(range(15, 25))  # the newest 10
    assert sink2.wait_delivered(5) and sink2.stats()["published"] == 10


def test_a_frozen_broker_times_out_and_is_retried(tmp_path, cleanup):
    """SIGSTOP: the TCP connection stays up but nothing is acknowledged."""
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    cleanup.append(broker)
    col = collector(cleanup, broker.port, ["fsac/s1/results"], client_id="col", clean_session=False)
    sink = make_sink(cleanup, tmp_path, broker.port, publish_timeout=0.3)
    wait_until(lambda: sink.stats()["connected"], 5, what="sink connected")
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        for i in range(20):
            sink.write(rec(i))
        wait_until(lambda: sink.stats()["delivery_errors"] >= 1, 5, what="an acknowledgement timeout")
        assert sink.delivery.failing and "publish_timeout" in sink.delivery.last_error
        assert sink.stats()["buffered"] == 20
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    wait_until(lambda: sink.stats()["buffered"] == 0, 15, what="delivered after the broker thawed")
    order, _ = first_arrivals(ids(col.wait_count("fsac/s1/results", 20)))
    assert order == list(range(20))


# ------------------------------------------------------------------ credentials, TLS


@pytest.fixture
def auth_broker(tmp_path, cleanup) -> Mosquitto:
    tool = find_mosquitto_passwd()
    if tool is None:
        pytest.skip("mosquitto_passwd not found (apt-get install mosquitto)")
    pwfile = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(pwfile), "fsac", "s3cret"], check=True,
                   capture_output=True, timeout=10)
    b = Mosquitto(tmp_path / "broker", password_file=pwfile).start()
    cleanup.append(b)
    return b


def test_credentials_from_environment(auth_broker, tmp_path, cleanup, monkeypatch):
    monkeypatch.setenv("FSAC_TEST_MQTT_USER", "fsac")
    monkeypatch.setenv("FSAC_TEST_MQTT_PASS", "s3cret")
    col = collector(cleanup, auth_broker.port, ["fsac/s1/results"], username="fsac", password="s3cret")
    sink = make_sink(cleanup, tmp_path, auth_broker.port,
                     username_env="FSAC_TEST_MQTT_USER", password_env="FSAC_TEST_MQTT_PASS")
    for i in range(5):
        sink.write(rec(i))
    assert ids(col.wait_count("fsac/s1/results", 5)) == list(range(5))
    assert "s3cret" not in json.dumps(sink.sink.cfg)  # only the variable names are in the config


def test_wrong_password_reported_clearly(auth_broker, tmp_path, cleanup, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="fsac.runtime.sinks.mqtt")
    monkeypatch.setenv("FSAC_TEST_MQTT_USER", "fsac")
    monkeypatch.setenv("FSAC_TEST_MQTT_PASS", "wrong")
    sink = make_sink(cleanup, tmp_path, auth_broker.port,
                     username_env="FSAC_TEST_MQTT_USER", password_env="FSAC_TEST_MQTT_PASS")
    sink.write(rec(0))
    mq = sink.sink
    wait_until(lambda: mq.last_error and "refused" in mq.last_error, 5, what="refusal")
    time.sleep(0.5)  # several retries
    msg = mq.last_error.lower()
    assert "not authorized" in msg or "bad user name or password" in msg
    assert "FSAC_TEST_MQTT_USER" in mq.last_error and "FSAC_TEST_MQTT_PASS" in mq.last_error
    errors = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    by_sink = [r for r in errors if r.name == "fsac.runtime.sinks.mqtt"]
    by_delivery = [r for r in caplog.records if "sink mqtt: delivery failed" in r.getMessage()]
    assert len(by_sink) == 1 and by_sink[0].levelno == logging.ERROR  # once, not per retry
    # The retry loop reports at most every 10 s (its first failure may predate the refusal).
    assert len(by_delivery) == 1 and sink.stats()["delivery_errors"] >= 2
    assert sink.stats()["connected"] == 0 and sink.stats()["buffered"] == 1


def test_missing_credentials_variable_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("FSAC_TEST_MQTT_NOPE", raising=False)
    with pytest.raises(FsacError, match=r"sinks\.mqtt\.username_env.*FSAC_TEST_MQTT_NOPE"):
        MqttSink(sink_cfg(tmp_path, 1883, username_env="FSAC_TEST_MQTT_NOPE"))


def _make_certs(d: Path) -> tuple[Path, Path, Path]:
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fsac-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return d / "ca.pem", d / "server.pem", d / "server.key"


@pytest.mark.skipif(not any(os.access(os.path.join(p, "openssl"), os.X_OK)
                            for p in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="openssl CLI not found (needed to make test certificates)")
def test_tls_connection(tmp_path, cleanup):
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = _make_certs(certs)
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "broker", extra_config=(
        f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")).start()
    cleanup.append(broker)
    col = collector(cleanup, broker.port, ["fsac/s1/results"])  # plain listener
    sink = make_sink(cleanup, tmp_path, tls_port, tls=True, ca_certs=str(ca))
    for i in range(3):
        sink.write(rec(i))
    assert ids(col.wait_count("fsac/s1/results", 3)) == [0, 1, 2]

    with pytest.raises(FsacError, match=r"sinks\.mqtt\.ca_certs"):
        MqttSink(sink_cfg(tmp_path, tls_port, "s2", tls=True, ca_certs=str(tmp_path / "nope.pem")))


# ------------------------------------------------------------------ configuration


def test_defaults_and_validation_is_pure():
    out = validate_mqtt_config({})
    assert out == MQTT_DEFAULTS and out is not MQTT_DEFAULTS
    assert validate_mqtt_config(None)["port"] == 1883
    assert validate_mqtt_config({"qos": 0, "port": 8883})["qos"] == 0


@pytest.mark.parametrize("cfg, setting", [
    ({"qos": 3}, "qos"),
    ({"qos": "1"}, "qos"),
    ({"qos": True}, "qos"),
    ({"port": 0}, "port"),
    ({"port": "1883"}, "port"),
    ({"hostname": "broker"}, "hostname"),
    ({"host": ""}, "host"),
    ({"keepalive": 1}, "keepalive"),
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"reconnect_min_delay": 2, "reconnect_max_delay": 1}, "reconnect_max_delay"),
    ({"max_inflight": 0}, "max_inflight"),
    ({"publish_timeout": 0}, "publish_timeout"),
    ({"batch_max": 0}, "batch_max"),
    ({"topic_prefix": "fsac/#"}, "topic_prefix"),
    ({"topic_prefix": "fsac/"}, "topic_prefix"),
    ({"results_topic": ""}, "results_topic"),
    ({"anomalies_topic": "a/+"}, "anomalies_topic"),
    ({"status_topic": None}, "status_topic"),
    ({"client_id": "a/b"}, "client_id"),
    ({"tls_insecure": "yes"}, "tls_insecure"),
    ({"tls_insecure": True}, "tls_insecure"),
    ({"certfile": "/etc/client.pem"}, "certfile"),
    ({"tls": True, "keyfile": "/etc/k.pem"}, "keyfile"),
    ({"password_env": "FSAC_MQTT_PASSWORD"}, "password_env"),
    ({"username_env": "USER=fsac"}, "username_env"),
])
def test_bad_config_names_the_setting(cfg, setting):
    with pytest.raises(FsacError, match=rf"^sinks\.mqtt\.{setting}\b"):
        validate_mqtt_config(cfg)
    with pytest.raises(FsacError, match=rf"^sinks\.mqtt\.{setting}\b"):
        MqttSink(cfg)


def test_config_not_a_mapping():
    with pytest.raises(FsacError, match=r"^sinks\.mqtt: expected a table of settings"):
        validate_mqtt_config(["host", "localhost"])


def test_removed_disk_queue_settings_point_to_the_journal():
    for key, instead in (("buffer_dir", "journal.dir"), ("buffer_max_bytes", "journal.max_bytes"),
                         ("buffer_max_records", "journal.max_records"), ("buffer_fsync", "journal.sync")):
        with pytest.raises(FsacError, match=rf"^sinks\.mqtt\.{key}: no longer used: .*set {instead} instead"):
            validate_mqtt_config({key: 1})
    with pytest.raises(FsacError, match=r"^sinks\.mqtt\.hots: unknown setting \(did you mean host\?\)"):
        validate_mqtt_config({"hots": "broker"})
