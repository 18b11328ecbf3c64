"""source.kind gige against Aravis's real fake GigE Vision camera on loopback.

The fake camera (`arv-fake-gv-camera-0.8 -i 127.0.0.1`) speaks real GVCP/GVSP. Its Mono8
test image is known exactly: pixel (x, y) of the frame with GVSP block id b is
(x + y + b) % 255 at gain 0 and exposure 10000 us, so each record's logit can be checked
against the block id the source put in the frame's name. Its GVCP port is fixed (3956 on
the interface), so the tests that start one hold a lock file and run one at a time.
"""

from __future__ import annotations

import fcntl
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from fsac.errors import FsacError
from fsac.runtime.config import load_config
from fsac_run_helpers import expected_logit, free_port, fsac_run, read_jsonl, wait_for

FAKE = "arv-fake-gv-camera-0.8"
SIZE = 64  # the test model's input size: frames go in unresized
CAMERA = {"pixel_format": "Mono8", "region": [0, 0, SIZE, SIZE], "exposure_us": 10000, "gain_db": 0}


def ramp(block_id: int) -> np.ndarray:
    y, x = np.indices((SIZE, SIZE))
    gray = ((x + y + block_id) % 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def block_of(record: dict) -> int:
    return int(record["name"].rsplit("#", 1)[1])


def _aravis_missing() -> str | None:
    if shutil.which(FAKE) is None:
        return f"{FAKE} is not installed (apt-get install aravis-tools); .ci/run installs it"
    try:
        from fsac.runtime.sources.gige import import_aravis

        import_aravis()
    except FsacError as e:
        return str(e)
    return None


class FakeCamera:
    def __init__(self, serial: str):
        self.serial = serial
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FakeCamera":
        from fsac.runtime.sources.gige import list_cameras

        self.proc = subprocess.Popen([FAKE, "-i", "127.0.0.1", "-s", self.serial], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None or any(c["serial"] == self.serial for c in list_cameras()),
                 timeout=15, interval=0.2, what="the fake camera answering discovery")
        assert self.proc.poll() is None, "the fake camera exited at start"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def fake_camera(tmp_path_factory):
    missing = _aravis_missing()
    if missing:
        pytest.skip(missing)
    with open("/tmp/fsac-fake-gige-camera.lock", "w") as lock:  # one fake camera on 127.0.0.1:3956 at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        from fsac.runtime.sources.gige import list_cameras

        other = [c["id"] for c in list_cameras() if c["address"] == "127.0.0.1"]
        assert not other, f"a camera not started by these tests answers on 127.0.0.1 ({other}); stop it first"
        cam = FakeCamera(f"FSAC{tmp_path_factory.getbasetemp().name[-6:]}")
        try:
            yield cam.start()
        finally:
            cam.kill()


def config_with(tmp_path: Path, model: Path, *extra: str, gige: dict | None = None, mode: str = "every-frame"):
    path = tmp_path / "fsac-run.yaml"
    path.write_text(yaml.safe_dump({"source": {"kind": "gige", "uri": "127.0.0.1", "mode": mode,
                                               "gige": {**CAMERA, **(gige or {})}}}))
    return load_config(path, ["http.enabled=false", *extra], model=str(model), jsonl=str(tmp_path / "r.jsonl"))


# --------------------------------------------------------------------------- settings (no camera)


def test_gige_settings_errors_name_the_setting(tmp_path, model_file):
    pytest.importorskip("pydantic")
    cfg = config_with(tmp_path, model_file, gige={"acquisition": "software"})
    assert cfg.source.uri == "127.0.0.1"  # a camera id in a config file is not made a path
    cases = [({"exposur": 5}, "source.gige.exposur: unknown setting (did you mean exposure_us?)"),
             ({"pixel_format": "Mono12"}, "source.gige.pixel_format: must be one of Mono8, Mono16, BayerRG8, "
              "BayerGR8, BayerGB8, BayerBG8, RGB8, BGR8; got 'Mono12' (did you mean Mono16?)"),
             ({"exposure_us": -1}, "source.gige.exposure_us: must be > 0.0, got -1"),
             ({"exposure_us": "5"}, "source.gige.exposure_us: expected a number, got '5'"),
             ({"region": [0, 0, 64]}, "source.gige.region: expected [x, y, width, height]"),
             ({"acquisition": "hw"}, "source.gige.acquisition: must be one of free-run, software, hardware; "
              "got 'hw'")]
    for gige, message in cases:
        with pytest.raises(FsacError) as e:
            config_with(tmp_path, model_file, gige=gige)
        assert str(e.value).startswith(message), str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(FsacError, match="source.gige: camera settings given, but source.kind is folder"):
        load_config(None, ["source.kind=folder", "source.gige.buffers=4"], model=str(model_file),
                    source=str(tmp_path), jsonl=str(tmp_path / "r.jsonl"))


# --------------------------------------------------------------------------- the fake camera


def test_fake_camera_is_listed_and_checked(fake_camera, tmp_path, model_file):
    from fsac.runtime.sources import make_source
    from fsac.runtime.sources.gige import list_cameras

    found = [c for c in list_cameras() if c["serial"] == fake_camera.serial]
    assert found and found[0]["id"] == f"Aravis-Fake-{fake_camera.serial}" and found[0]["address"] == "127.0.0.1"
    cfg = config_with(tmp_path, model_file)
    described = f"gige 127.0.0.1 (Aravis Fake {fake_camera.serial}, Mono8 64x64, free-run)"
    assert make_source(cfg.source).check() == described
    # A setting the camera refuses stops the start, naming the setting.
    refusals = [({"features": {"NoSuchFeature": 1}}, "source.gige.features.NoSuchFeature: the camera refused it"),
                ({"features": {"TriggerActivation": "Sideways"}}, "source.gige.features.TriggerActivation: the camera"),
                ({"pixel_format": "BGR8"}, "source.gige.pixel_format: camera 127.0.0.1 has no BGR8 (it offers "),
                ({"acquisition": "hardware", "trigger_source": "Line7"}, "source.gige.trigger_source: camera "
                 "127.0.0.1 has no trigger source Line7 (it offers Line0, Software)")]
    for gige, message in refusals:
        with pytest.raises(FsacError) as e:
            make_source(config_with(tmp_path, model_file, gige=gige).source).check()
        assert str(e.value).startswith(message), str(e.value)


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_fsac_run_scores_the_camera_through_a_drop_and_a_restart(fake_camera, tmp_path, model_file):
    port = free_port()
    config_with(tmp_path, model_file)  # validates the file written below
    args = ["--config", str(tmp_path / "fsac-run.yaml"), "--model", str(model_file), "--jsonl",
            str(tmp_path / "r.jsonl"), "--set", "http.enabled=true", "--set", f"http.port={port}",
            "--set", "source.reconnect_min_s=0.2", "--set", "source.reconnect_max_s=1",
            "--set", "source.gige.timeout_s=1", "--set", "source.gige.frame_rate=20"]
    proc = fsac_run(*args)
    out = tmp_path / "r.jsonl"
    try:
        wait_for(lambda: len(read_jsonl(out)) >= 10, timeout=30, what="10 records from the camera")
        assert _metric(port, "fsac_reconnects_total") == 0
        fake_camera.kill()
        wait_for(lambda: _metric(port, "fsac_reconnects_total") >= 1, timeout=20, what="the loss noticed")
        assert _metric(port, "fsac_source_connected") == 0
        before = len(read_jsonl(out))
        fake_camera.start()
        wait_for(lambda: len(read_jsonl(out)) >= before + 10, timeout=30, what="10 records after the restart")
        reconnects = _metric(port, "fsac_reconnects_total")
        assert _metric(port, "fsac_source_connected") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "lost gige camera 127.0.0.1" in err and "gige camera 127.0.0.1 opened" in err
    records = read_jsonl(out)
    assert reconnects >= 1 and len(records) >= before + 10
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert all(r["error"] is None for r in records)  # a lost free-run camera makes no error records
    for r in records:  # every frame, before and after the restart, is the camera's exact test image
        assert r["source"] == "127.0.0.1" and abs(r["logit"] - expected_logit(ramp(block_of(r)))) < 1e-4
    blocks = [block_of(r) for r in records]
    assert blocks[before] < blocks[before - 1]  # the restarted camera counts its frames from the start


def test_trigger_mode_fires_one_software_trigger_per_request(fake_camera, tmp_path, model_file):
    from test_trigger import post, start, stop

    port = free_port()
    cfg = config_with(tmp_path, model_file, "http.enabled=true", f"http.port={port}", "trigger.deadline_s=5",
                      gige={"acquisition": "software"}, mode="trigger")
    daemon, t, result = start(cfg)
    camera = daemon.source.inner
    answers = [post(port, {"part_id": f"P-{i}", "request_id": f"r{i}"}) for i in range(5)]
    code, again = post(port, {"part_id": "P-2", "request_id": "r2"})  # a duplicate takes no frame
    assert code == 200 and again == answers[2][1]
    # One trigger per request; a buffer that came incomplete is triggered once more (counted).
    assert camera.triggers == 5 + camera.incomplete and camera.reconnects == 0 and camera.incomplete <= 1
    assert stop(daemon, t, result) == 0
    for i, (code, rec) in enumerate(answers):
        assert code == 200 and rec["part_id"] == f"P-{i}" and rec["error"] is None
        assert abs(rec["logit"] - expected_logit(ramp(block_of(rec)))) < 1e-4
    blocks = [block_of(rec) for _, rec in answers]
    # One frame per trigger, none captured in between (the camera numbers every frame it sends).
    assert blocks == sorted(set(blocks)) and blocks[-1] - blocks[0] in (4, 4 + camera.incomplete)
    records = read_jsonl(tmp_path / "r.jsonl")
    assert [r["part_id"] for r in records] == [f"P-{i}" for i in range(5)]


def test_hardware_trigger_waits_for_pulses_and_notices_a_dead_camera_by_its_heartbeat(fake_camera, tmp_path,
                                                                                        model_file):
    from fsac.runtime.sources import make_source

    cfg = config_with(tmp_path, model_file, "source.reconnect_min_s=0.2", "source.reconnect_max_s=1",
                      gige={"acquisition": "hardware", "trigger_source": "Line0", "timeout_s": 0.5})
    source = make_source(cfg.source)
    # The fake camera sends nothing without a pulse on Line0, and --check does not wait for one.
    assert source.check().endswith(", Mono8 64x64, hardware on Line0)")
    source.open()
    stop, frames = threading.Event(), []
    reader = threading.Thread(target=lambda: frames.extend(source.frames(stop)), daemon=True)
    reader.start()
    try:
        wait_for(lambda: source.connected, what="the camera open")
        time.sleep(1.0)  # twice timeout_s: waiting for a pulse is no reason to reconnect
        assert source.reconnects == 0 and source.connected
        fake_camera.kill()
        wait_for(lambda: source.reconnects >= 1, timeout=30, what="the lost heartbeat noticed")
        fake_camera.start()
        wait_for(lambda: source.connected, timeout=20, what="the camera open again")
    finally:
        stop.set()
        reader.join(10)
    assert frames == [] and not reader.is_alive()
