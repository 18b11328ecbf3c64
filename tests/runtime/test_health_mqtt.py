"""The health-alarm publisher against a real Mosquitto: delivery counted from the broker's
acknowledgements, a bounded queue through an outage (the oldest dropped and counted), and a
clean close with the broker gone."""

from __future__ import annotations

import json
import threading
import time

import pytest

from fsac.runtime.health_mqtt import HealthPublisher
from fsac.runtime.metrics import RuntimeMetrics
from fsac_run_helpers import metric_value
from mosquitto_helper import Collector, Mosquitto, find_mosquitto, free_port, wait_until
from test_daemon import config

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (apt-get install "
                                "mosquitto); .ci/run installs it")

TOPIC = "fsac/s/l/st/health"


def settings(tmp_path, port):
    cfg = config(tmp_path / "m.onnx", "0", tmp_path / "r.jsonl", "sinks.mqtt.host=127.0.0.1",
                 f"sinks.mqtt.port={port}", "sinks.mqtt.topic_prefix=fsac/s/l/st",
                 "sinks.mqtt.reconnect_min_delay=1", "sinks.mqtt.reconnect_max_delay=1")
    return cfg.sinks.mqtt


def event(pub, i):
    pub(["lens_blocked"] if i % 2 else [], {"time": f"t{i}", "frame_id": i, "part_id": None})


def test_an_outage_keeps_only_the_newest_events_and_counts_the_rest(tmp_path):
    broker = Mosquitto(tmp_path / "broker", port=free_port(), persistence=True).start()
    # A dashboard with a persistent session: the broker keeps what it misses while it is away,
    # so it sees every event the publisher sends once the broker is back, and nothing else.
    Collector(broker.port, [TOPIC], client_id="dashboard", clean_session=False).start().stop()
    broker.stop()  # the outage
    pub = HealthPublisher(settings(tmp_path, broker.port))
    try:
        n = pub.max_queued + 25
        for i in range(n):
            event(pub, i)
        time.sleep(0.3)
        assert pub.published == 0  # nothing reached a broker, so nothing counts as published
        assert pub.dropped == 25 and pub.pending() == pub.max_queued
        broker.start()
        sub = Collector(broker.port, [TOPIC], client_id="dashboard", clean_session=False).start()
        wait_until(lambda: pub.published == pub.max_queued, 15, what="the queued events acknowledged")
        got = [json.loads(p)["frame_id"] for p in sub.wait_count(TOPIC, pub.max_queued)]
        time.sleep(0.3)
        assert [json.loads(p)["frame_id"] for p in sub.on(TOPIC)] == list(range(25, n)) == got  # oldest dropped
        assert pub.pending() == 0 and pub.dropped == 25
        event(pub, n)  # connected: straight through, acknowledged
        wait_until(lambda: pub.published == pub.max_queued + 1, 10, what="one more acknowledged")
        m = RuntimeMetrics()
        text = m.render(queue_depth=0, reconnects=0, ready=True, source_connected=True, model_info={},
                        sink_stats={}, extra=pub.metrics)
        assert metric_value(text, "fsac_health_events_published_total") == pub.max_queued + 1
        assert metric_value(text, "fsac_health_events_dropped_total") == 25
        assert metric_value(text, "fsac_health_events_pending") == 0
        sub.stop()
    finally:
        t0 = time.monotonic()
        pub.close(timeout=2.0)
        assert time.monotonic() - t0 < 2.5
        broker.stop(kill=True)


def test_close_with_the_broker_gone_is_prompt_and_counts_what_was_never_sent(tmp_path, caplog):
    broker = Mosquitto(tmp_path / "broker", port=free_port()).start()
    pub = HealthPublisher(settings(tmp_path, broker.port))
    event(pub, 0)
    wait_until(lambda: pub.published == 1, 10, what="the first event acknowledged")
    broker.stop(kill=True)  # the outage starts and does not end
    for i in range(1, 4):
        event(pub, i)
    t0 = time.monotonic()
    pub.close(timeout=1.0)
    assert time.monotonic() - t0 < 2.0  # bounded by the timeout, not by paho's reconnect backoff
    assert not [th for th in threading.enumerate() if th.name.endswith("-health") and th.is_alive()]
    assert pub.published == 1 and pub.unsent == 3
    assert "3 health status events not delivered" in caplog.text
    pub.close(timeout=1.0)  # twice is harmless


def test_the_exit_report_names_the_health_events_never_delivered(tmp_path, model_file, bottle_images, bottle,
                                                                 caplog):
    from fsac.runtime.daemon import Daemon
    from test_health import make_inputs

    model, folder = make_inputs(tmp_path, model_file, bottle_images, bottle)
    cfg = config(model, str(folder), tmp_path / "r.jsonl", "sinks.mqtt.host=127.0.0.1",
                 f"sinks.mqtt.port={free_port()}", "daemon.drain_timeout_s=0.5", "daemon.shutdown_timeout_s=2")
    daemon = Daemon(cfg, install_signals=False)
    caplog.set_level("INFO", logger="fsac.runtime")
    assert daemon.run() == 1  # the MQTT sink never delivered: records wait in the journal
    assert daemon._health_pub.published == 0 and daemon._health_pub.unsent == 3
    assert "health events: 0 published, 0 dropped, 3 not delivered at shutdown" in caplog.text
