"""The daemon pipeline in-process: records, error frames, back-pressure, dropping, batching,
reload, failing sinks, and the wiring of the MQTT and saved-frames sinks."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from fsac.modelfile import write_model_file
from fsac.runtime.backends import ModelHandle, load_model
from fsac.runtime.config import load_config
from fsac.runtime.daemon import Daemon, build_sinks
from fsac.runtime.sources import RAW, Source
from fsac_run_helpers import build_model_bytes, expected_logit, expected_score, metric_value, read_jsonl
from fsac.score import score_from_logit

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "runtime" / "schema" / "result.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def config(model: Path, source: str, out: Path, *extra: str):
    return load_config(None, ["http.enabled=false", *extra], model=str(model), source=source, jsonl=str(out))


class ListSource(Source):
    """Yields prepared frames, optionally paced; stands in for a camera."""

    kind = "camera"

    def __init__(self, cfg, arrays, interval: float = 0.0):
        super().__init__(cfg)
        self.arrays = arrays
        self.interval = interval

    def open(self):
        self.connected = True

    def frames(self, stop):
        for a in self.arrays:
            if stop.is_set():
                return
            yield self._frame(a, None, RAW)
            if self.interval:
                time.sleep(self.interval)


class SlowBackend:
    """Wraps a real backend and adds a fixed cost per call, like a big model would."""

    name = "slow"

    def __init__(self, inner, delay: float, fail_calls=()):
        self.inner, self.delay, self.fail_calls = inner, delay, set(fail_calls)
        self.providers, self.max_batch = inner.providers, inner.max_batch
        self.calls, self.sizes = 0, []

    def infer(self, batch):
        self.calls += 1
        self.sizes.append(batch.shape[0])
        time.sleep(self.delay)
        if self.calls in self.fail_calls:
            raise RuntimeError("simulated device error")
        return self.inner.infer(batch)

    def close(self):
        pass


def slow_handle(cfg, delay, **kw):
    model = load_model(cfg.model)
    return ModelHandle(cfg.model, replace(model, backend=SlowBackend(model.backend, delay, **kw)))


def test_folder_run_scores_every_image_and_reports_bad_files(tmp_path, image_folder, model_file, bottle_images):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in image_folder.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "img_004b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    data = bottle_images[0].read_bytes()
    (folder / "img_007b.png").write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "r.jsonl"
    daemon = Daemon(config(model_file, str(folder), out))
    assert daemon.run() == 0
    records = read_jsonl(out)
    names = sorted(p.name for p in folder.iterdir())
    assert [r["name"] for r in records] == names
    assert [r["frame_id"] for r in records] == list(range(len(names)))
    for r in records:
        VALIDATOR.validate(r)
    by_name = {r["name"]: r for r in records}
    for i, src in enumerate(bottle_images):
        r = by_name[f"img_{i:03d}.png"]
        rgb = __import__("fsac.preprocess").preprocess.load_image(src)
        assert r["logit"] == pytest.approx(expected_logit(rgb), rel=1e-5, abs=1e-6)
        assert r["score"] == pytest.approx(expected_score(rgb), rel=1e-5)
        assert r["score"] == score_from_logit(r["logit"])  # derived from the logit, in float64
        assert r["sim_anomalous"] - r["sim_normal"] == pytest.approx(r["logit"], abs=1e-6)
        assert r["verdict"] == ("defective" if r["logit"] >= 0.0 else "good")
        assert r["logit_threshold"] == 0.0 and r["threshold"] == 0.5
        assert r["model"] == model_file.name and r["error"] is None
    for bad in ("img_004b.png", "img_007b.png"):
        assert by_name[bad]["verdict"] == "error" and by_name[bad]["score"] is None
        assert by_name[bad]["logit"] is None and by_name[bad]["sim_normal"] is None
        assert bad in by_name[bad]["error"]
    m = daemon.metrics
    assert m.frames.value == len(names) and m.errors.value == 2 and m.frames_read.value == len(names)
    text = daemon.render_metrics()
    assert metric_value(text, "fsac_frames_total") == len(names) and metric_value(text, "fsac_errors_total") == 2
    assert f'sha256="{records[0]["model_sha256"]}"' in text
    assert metric_value(text, "fsac_sink_written_total", sink="jsonl") == 14


def test_bad_camera_frames_become_error_records(tmp_path, model_file):
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    arrays = [good, good[..., :2], good.astype(np.float32), good[:60], np.zeros((0, 0, 3), np.uint8),
              good[..., 0], np.dstack([good, good[..., :1]]), good]
    out = tmp_path / "r.jsonl"
    cfg = config(model_file, "0", out, "source.frame_size=[160, 120]")
    daemon = Daemon(cfg, source=ListSource(cfg.source, arrays), install_signals=False)
    assert daemon.run() == 0
    records = read_jsonl(out)
    verdicts = [r["verdict"] != "error" for r in records]
    assert verdicts == [True, False, False, False, False, True, True, True]
    assert "2 channels" in records[1]["error"]
    assert "dtype float32" in records[2]["error"]
    assert "160x60, expected 160x120" in records[3]["error"]
    # BGR camera frame: the model sees it as RGB
    rgb = good[..., ::-1]
    assert records[0]["score"] == pytest.approx(expected_score(np.ascontiguousarray(rgb)), rel=1e-5)
    assert records[0]["logit"] == pytest.approx(expected_logit(np.ascontiguousarray(rgb)), rel=1e-5, abs=1e-6)
    for r in records:
        VALIDATOR.validate(r)


def test_every_frame_back_pressure_and_batching(tmp_path, model_file):
    arrays = [np.full((80, 80, 3), i, np.uint8) for i in range(40)]
    out = tmp_path / "r.jsonl"
    cfg = config(model_file, "0", out, "source.queue_size=3", "model.batch_size=4")
    handle = slow_handle(cfg, 0.03)
    daemon = Daemon(cfg, handle=handle, source=ListSource(cfg.source, arrays), install_signals=False)
    depths = []
    sampler_stop = threading.Event()

    def sample():
        while not sampler_stop.is_set():
            depths.append(len(daemon.queue))
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    assert daemon.run() == 0
    sampler_stop.set()
    records = read_jsonl(out)
    assert [r["frame_id"] for r in records] == list(range(40))  # nothing skipped
    assert daemon.metrics.dropped.value == 0
    assert max(depths) <= 3  # bounded queue
    backend = handle.current.backend
    assert max(backend.sizes) <= 4 and backend.calls < 40  # frames that waited were batched
    np.testing.assert_allclose([r["logit"] for r in records], [2 * i / 255 - 1 for i in range(40)], rtol=1e-5)


def test_latest_frame_mode_drops_stale_frames_and_counts_them(tmp_path, model_file):
    arrays = [np.full((80, 80, 3), i, np.uint8) for i in range(60)]
    out = tmp_path / "r.jsonl"
    cfg = config(model_file, "0", out, "source.mode=latest-frame", "source.queue_size=2", "model.batch_size=1")
    daemon = Daemon(cfg, handle=slow_handle(cfg, 0.03), source=ListSource(cfg.source, arrays, 0.002),
                    install_signals=False)
    assert daemon.run() == 0
    records = read_jsonl(out)
    ids = [r["frame_id"] for r in records]
    assert ids == sorted(ids) and ids[-1] == 59  # fresh frames win, order kept
    dropped = daemon.metrics.dropped.value
    assert dropped > 0 and dropped + len(records) == 60
    assert metric_value(daemon.render_metrics(), "fsac_dropped_frames_total") == dropped


def test_inference_failure_becomes_error_records_and_the_daemon_goes_on(tmp_path, model_file):
    arrays = [np.full((64, 64, 3), 100, np.uint8) for _ in range(6)]
    out = tmp_path / "r.jsonl"
    cfg = config(model_file, "0", out, "model.batch_size=1")
    daemon = Daemon(cfg, handle=slow_handle(cfg, 0.0, fail_calls={2}), source=ListSource(cfg.source, arrays),
                    install_signals=False)
    assert daemon.run() == 0
    verdicts = [r["verdict"] for r in read_jsonl(out)]
    assert verdicts == ["good", "error", "good", "good", "good", "good"]
    assert "simulated device error" in read_jsonl(out)[1]["error"]


class FlakySink:
    """A durable sink whose destination fails the first `fail` deliveries (or all, fail=-1)."""

    durable = True

    def __init__(self, name="flaky", fail=-1):
        self.name, self.fail, self.calls, self.got = name, fail, 0, []

    def deliver(self, lines):
        self.calls += 1
        if self.fail < 0 or self.calls <= self.fail:
            raise OSError(28, "No space left on device")
        self.got += [json.loads(x) for x in lines]

    def close(self, timeout=10.0):
        pass

    def stats(self):
        return {"written": len(self.got)}


def test_failing_sink_does_not_stop_other_sinks(tmp_path, model_file, image_folder, caplog):
    from fsac.runtime.sinks.jsonl import JsonlSink

    out = tmp_path / "r.jsonl"
    cfg = config(model_file, str(image_folder), out, "daemon.drain_timeout_s=1.5")
    broken, flaky = FlakySink("broken"), FlakySink("flaky", fail=2)
    daemon = Daemon(cfg, sinks=[broken, JsonlSink(out), flaky], install_signals=False)
    assert daemon.run() == 1  # a durable sink never delivered: the job is not done
    assert len(read_jsonl(out)) == 12
    assert [r["seq"] for r in flaky.got] == list(range(12))  # recovered on its own, from its cursor
    assert broken.got == [] and broken.calls >= 2
    assert {d.name: d.pending() for d in daemon.deliveries} == {"broken": 12, "jsonl": 0, "flaky": 0}
    text = caplog.text
    assert "not delivered within daemon.drain_timeout_s=1.5s: broken 12 records" in text
    assert "sink flaky: 2 failed delivery attempts during the run; it recovered" in text
    # The next start replays the journal to the sink that missed it (here: it works again).
    fixed = FlakySink("broken", fail=0)
    cfg = config(model_file, str(tmp_path / "empty"), out, f"journal.dir={daemon.journal.folder}")
    (tmp_path / "empty").mkdir()
    again = Daemon(cfg, sinks=[fixed, JsonlSink(out), FlakySink("flaky", fail=0)], install_signals=False)
    assert again.run() == 0
    assert [(r["run_id"], r["seq"]) for r in fixed.got] == [(daemon.run_id, i) for i in range(12)]
    assert len(read_jsonl(out)) == 12  # jsonl and flaky had everything: nothing sent twice


def test_live_stream_journal_full_drops_oldest_with_exact_counts(tmp_path, model_file, caplog):
    arrays = [np.full((64, 64, 3), i, np.uint8) for i in range(60)]
    out = tmp_path / "r.jsonl"
    cfg = config(model_file, "0", out, "journal.max_records=16", "journal.cursor_interval_s=0.05",
                 "daemon.drain_timeout_s=0.5", "model.batch_size=1")
    broken = FlakySink("broken")
    daemon = Daemon(cfg, sinks=[broken], source=ListSource(cfg.source, arrays), install_signals=False)
    assert daemon.journal.when_full == "drop-oldest"  # auto, for a camera
    assert daemon.run() == 1
    lost = daemon.journal.lost["broken"]
    pending = daemon.deliveries[0].pending()
    assert lost > 0 and lost + pending == 60  # every record is either still kept or counted lost
    assert daemon.metrics.frames.value == 60 and daemon.acked == 60
    assert f"records lost: deleted from the full journal before delivery (journal.when_full=drop-oldest): " \
           f"broken {lost}" in caplog.text
    assert metric_value(daemon.render_metrics(), "fsac_records_lost_total", sink="broken") == lost
    # the batch the broken sink held when it stopped was counted lost then: nothing is left at risk
    assert daemon.journal.at_risk["broken"] == 0
    assert metric_value(daemon.render_metrics(), "fsac_sink_at_risk", sink="broken") == 0


def test_reload_mid_run_changes_model_between_batches_without_losing_frames(tmp_path):
    model_path = tmp_path / "live.onnx"
    write_model_file(model_path, build_model_bytes(threshold="0"))
    arrays = [np.full((64, 64, 3), 120, np.uint8) for _ in range(50)]
    out = tmp_path / "r.jsonl"
    cfg = config(model_path, "0", out, "model.batch_size=2")
    daemon = Daemon(cfg, source=ListSource(cfg.source, arrays, 0.02), install_signals=False)

    def swap():
        time.sleep(0.15)
        # A new export with another input size and threshold: frames already preprocessed for the
        # old model are redone for the new one.
        write_model_file(model_path, build_model_bytes(image_size=32, threshold="0.8", scale=2.0), force=True)
        daemon.request_reload()

    threading.Thread(target=swap, daemon=True).start()
    assert daemon.run() == 0
    records = read_jsonl(out)
    assert [r["frame_id"] for r in records] == list(range(50))
    shas = [r["model_sha256"] for r in records]
    first, last = shas[0], shas[-1]
    assert first != last
    switch = shas.index(last)
    assert all(s == first for s in shas[:switch]) and all(s == last for s in shas[switch:])
    assert records[0]["logit"] == pytest.approx(2 * 120 / 255 - 1, rel=1e-5) and records[0]["logit_threshold"] == 0.0
    assert records[0]["verdict"] == "good"
    assert records[-1]["logit"] == pytest.approx(4 * 120 / 255 - 1, rel=1e-5) and records[-1]["logit_threshold"] == 0.8
    assert records[-1]["threshold"] == score_from_logit(0.8) and records[-1]["verdict"] == "defective"
    assert daemon.metrics.reloads.value == 1


def test_frames_and_mqtt_sinks_are_wired_in_by_config(tmp_path, model_file, image_folder):
    pytest.importorskip("fsac.runtime.sinks.frames")
    out = tmp_path / "r.jsonl"
    cfg = config(model_file, str(image_folder), out, f"sinks.frames.dir={tmp_path / 'saved'}",
                 "sinks.frames.format=png")
    daemon = Daemon(cfg, install_signals=False)
    assert [s.name for s in daemon.sinks] == ["jsonl", "frames"]
    assert [d.name for d in daemon.deliveries] == ["jsonl", "frames"]  # both are cursors over the journal
    assert daemon.keep_rgb
    assert daemon.run() == 0
    defective = [r for r in read_jsonl(out) if r["verdict"] == "defective"]
    saved = sorted((tmp_path / "saved").glob("*.png"))
    assert len(saved) == len(defective) > 0
    saved_records = [json.loads(p.with_suffix(".json").read_text()) for p in saved]
    assert sorted(r["seq"] for r in saved_records) == sorted(r["seq"] for r in defective)  # the journaled records
    cursors = json.loads((Path(cfg.journal.dir) / "cursors.json").read_text())
    assert cursors["frames"] == cursors["jsonl"] == len(read_jsonl(out))
    pytest.importorskip("fsac.runtime.sinks.mqtt")
    pytest.importorskip("paho.mqtt.client")
    cfg = config(model_file, str(image_folder), out, "sinks.mqtt.host=127.0.0.1", "sinks.mqtt.port=9")
    sinks = build_sinks(cfg.sinks)
    try:
        assert [s.name for s in sinks] == ["jsonl", "mqtt"]
        assert [s.durable for s in sinks] == [True, True]  # both deliver from the journal
    finally:
        for s in sinks:
            s.close(timeout=1.0)


class StuckSource(ListSource):
    """Delivers its frames, then hangs in a read that ignores the stop request (a dead
    network camera inside a blocking driver call)."""

    def frames(self, stop):
        yield from super().frames(stop)
        threading.Event().wait(60)


def test_stop_is_bounded_when_the_source_hangs(tmp_path, model_file):
    arrays = [np.full((64, 64, 3), 50, np.uint8) for _ in range(5)]
    out = tmp_path / "r.jsonl"
    cfg = config(model_file, "0", out, "daemon.shutdown_timeout_s=2")
    daemon = Daemon(cfg, source=StuckSource(cfg.source, arrays), install_signals=False)
    threading.Timer(0.5, daemon.request_stop).start()
    t0 = time.monotonic()
    assert daemon.run() == 0  # every frame read has its record
    assert time.monotonic() - t0 < 0.5 + 2 + 1
    assert [r["frame_id"] for r in read_jsonl(out)] == list(range(5))


def test_stop_gives_up_on_a_hung_model_within_the_timeout(tmp_path, model_file):
    arrays = [np.full((64, 64, 3), 50, np.uint8) for _ in range(6)]
    out = tmp_path / "r.jsonl"
    cfg = config(model_file, "0", out, "daemon.shutdown_timeout_s=1", "model.batch_size=1")
    daemon = Daemon(cfg, handle=slow_handle(cfg, 3.0), source=ListSource(cfg.source, arrays), install_signals=False)
    threading.Timer(0.3, daemon.request_stop).start()
    t0 = time.monotonic()
    assert daemon.run() == 1  # frames were read that have no record: not a clean stop
    assert time.monotonic() - t0 < 0.3 + 1 + 1.5
