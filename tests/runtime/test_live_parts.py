"""The live view's parts without a browser: feedback folder bounds, frame ring bounds, alarms,
the token rule, the live config section, and the bench's page client."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsac.errors import FsacError
from fsac.feedback import CONFIRMED_DEFECT, FALSE_ALARM, counts, good_images
from fsac.runtime.feedback import save_feedback
from fsac.runtime.liveview import FrameRing, alarms
from fsac.runtime.webui import TOKEN_ENV, check_access


def _record(seq: int, verdict: str = "defective", **kw) -> dict:
    return {"run_id": "20260101T000000Z-00000000", "seq": seq, "verdict": verdict, "name": f"f{seq}.png", **kw}


def test_feedback_is_bounded_and_keeps_pixels_exact(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    for i in range(5):
        save_feedback(tmp_path, FALSE_ALARM, _record(i), rgb, max_files=3)
    save_feedback(tmp_path, CONFIRMED_DEFECT, _record(9), b"\x89PNG not really", max_files=3)
    metas = sorted((tmp_path / FALSE_ALARM).glob("*.json"))
    assert [json.loads(m.read_text())["record"]["seq"] for m in metas] == [2, 3, 4]  # oldest deleted
    assert len(list((tmp_path / FALSE_ALARM).glob("*.png"))) == 3
    assert counts(tmp_path) == {FALSE_ALARM: 3, CONFIRMED_DEFECT: 1}
    images = good_images(tmp_path)
    assert len(images) == 3 and np.array_equal(np.asarray(Image.open(images[0])), rgb)
    raw = next((tmp_path / CONFIRMED_DEFECT).glob("*.png"))  # raw bytes kept as they came
    assert raw.read_bytes() == b"\x89PNG not really"
    (tmp_path / FALSE_ALARM / "orphan.png").write_bytes(b"x")  # no JSON: not a complete pair
    assert len(good_images(tmp_path)) == 3
    with pytest.raises(FsacError, match="label"):
        save_feedback(tmp_path, "maybe", _record(1), rgb, 3)
    with pytest.raises(FsacError, match="no longer in memory"):
        save_feedback(tmp_path, FALSE_ALARM, _record(1), None, 3)


def test_frame_ring_bounds_count_and_bytes():
    ring = FrameRing(latest=3, defective=2, max_bytes=10_000)
    big = np.zeros((40, 40, 3), np.uint8)  # 4800 bytes
    for i in range(5):
        ring.put(_record(i, "good"), big)
    assert ring.get("20260101T000000Z-00000000-4") is not None
    assert ring.get("20260101T000000Z-00000000-2") is None  # two fit in 10 kB
    assert ring.nbytes <= 10_000
    for i in range(10, 14):
        ring.put(_record(i, "defective"), np.zeros((4, 4, 3), np.uint8))
    assert ring.get("20260101T000000Z-00000000-13") and not ring.get("20260101T000000Z-00000000-11")


def test_alarms_name_what_they_saw():
    good = [_record(i, "good", logit=-1.0) for i in range(60)]
    assert alarms(good, 0.01, True, 0) == []
    drifting = good[:30] + [_record(i, "defective", logit=1.0) for i in range(30)]
    (a,) = alarms(drifting, 0.01, True, 0)
    assert a["kind"] == "drift" and "50%" in a["text"] and "1.0%" in a["text"]
    broken = good[:50] + [_record(i, "error", error="cannot decode x.png") for i in range(10)]
    kinds = [x["kind"] for x in alarms(broken, 0.01, False, 7)]
    assert kinds == ["input", "input", "input"]
    assert "cannot decode x.png" in alarms(broken, 0.01, True, 0)[0]["text"]
    assert alarms(good[:10] + drifting[40:], 0.01, True, 0) == []  # under 50 scored frames: no verdict yet
    # The daemon's own input-health alarms in force come first, in words.
    health = alarms(good, 0.01, True, 0, ["lens_blocked", "reject_rate_high"])
    assert [a["kind"] for a in health] == ["input", "drift"] and health[0]["text"].startswith("lens blocked")


def test_token_required_off_loopback_only():
    assert check_access("127.0.0.1", {}) is None
    assert check_access("127.0.0.1", {TOKEN_ENV: "t"}) == "t"
    with pytest.raises(FsacError, match=TOKEN_ENV):
        check_access("0.0.0.0", {})
    assert check_access("0.0.0.0", {TOKEN_ENV: "t"}) == "t"


def test_live_config_section(tmp_path):
    from fsac.runtime.config import load_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: {path: m.onnx}\nsource: {uri: in}\nsinks: {jsonl: {path: r.jsonl}}\n"
                        "live: {calibration_images: [calib, /abs/good], feedback_dir: fb, alpha: 0.02}\n")
    cfg = load_config(cfg_file)
    assert cfg.live.calibration_images == [str(tmp_path / "calib"), "/abs/good"]
    assert cfg.live.feedback_dir == str(tmp_path / "fb") and cfg.live.alpha == 0.02 and cfg.live.enabled
    cfg_file.write_text("model: {path: m.onnx}\nsource: {uri: in}\nsinks: {jsonl: {path: r.jsonl}}\n"
                        "live: {feedback_max_file: 3}\n")
    with pytest.raises(FsacError, match="feedback_max_file"):
        load_config(cfg_file)


def test_bench_with_a_page_client(tmp_path, model_file, image_folder):
    from fsac.runtime.bench import bench_runtime, format_table

    r = bench_runtime(model_file, image_folder, n_frames=24, batch_size=2, measure_rss=False, rounds=1,
                      page_client=True, paced_seconds=0)
    assert r["daemon_frames"] == 24 and r["page_fps"] > 0 and r["page_client"]["snapshots"] >= 1
    assert r["page_client"]["errors"] == 0
    assert "page connected" in format_table(r)


def test_calibrate_with_feedback_is_torch_free(tmp_path, model_file):
    """The edge box's re-calibration path: `fsac calibrate --feedback` adds the frames marked
    False alarm to the normal images, and neither torch nor open_clip is imported."""
    import subprocess
    import sys

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        Image.fromarray(rng.integers(20, 100, (64, 64, 3), dtype=np.uint8)).save(calib / f"g{i}.png")
    bright = rng.integers(150, 250, (64, 64, 3), dtype=np.uint8)  # a good part the model flagged
    save_feedback(tmp_path / "fb", FALSE_ALARM, _record(1), bright, 10)
    out, report = tmp_path / "new.onnx", tmp_path / "report.json"
    code = ("import sys; from fsac.cli import main; rc = main(sys.argv[1:]); "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip')]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "calibrate", str(model_file), "--normal", str(calib),
                           "--feedback", str(tmp_path / "fb"), "--alpha", "0.05", "--out", str(out), "--force",
                           "--report", str(report), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    rep = json.loads(report.read_text())
    assert rep["result"]["n_normal"] == 21 and any("1 frame(s) marked False alarm" in n for n in rep["notes"])
    z_marked = 2 * float(np.asarray(bright, np.float64).mean()) / 255 - 1  # the fixture model's logit
    assert z_marked < rep["logit_threshold"] < z_marked + 1e-3  # k = n: just above the marked frame


def test_activation_verifies_first_and_keeps_the_old_model(tmp_path, make_model):
    """What "Activate" does (ModelHandle.switch): a file that fails its seal is refused and the
    old model keeps serving; a valid one is served and later reloads read it."""
    from fsac.runtime.backends import ModelHandle
    from fsac.runtime.config import ModelConfig
    from fsac.runtime.recalibrate import RecalJob

    old = make_model("old.fsac.onnx")
    new = make_model("new.fsac.onnx", threshold="0.25")
    bad = tmp_path / "bad.onnx"
    data = bytearray(new.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    handle = ModelHandle(ModelConfig(path=str(old)))
    assert not handle.switch(str(bad))
    assert handle.current.name == "old.fsac.onnx" and handle.cfg.path == str(old)
    job = RecalJob([], str(tmp_path / "fb"), None)
    with pytest.raises(FsacError, match="not a model this daemon re-calibrated"):
        job.activate(handle, str(new))
    job.outputs.add(str(bad))
    with pytest.raises(FsacError, match="refused"):
        job.activate(handle, str(bad))
    job.outputs.add(str(new))
    job.activate(handle, str(new))
    assert handle.current.name == "new.fsac.onnx" and handle.current.logit_threshold == 0.25
    assert handle.reload() and handle.current.name == "new.fsac.onnx"  # SIGHUP now reads the new file
    pinned = ModelHandle(ModelConfig(path=str(old), logit_threshold=1.0))
    with pytest.raises(FsacError, match="model.logit_threshold"):
        job.activate(pinned, str(new))


def test_check_refuses_a_public_live_view_without_token(model_file, image_folder, tmp_path):
    import fsac_run_helpers as h

    args = ("--model", str(model_file), "--source", str(image_folder), "--jsonl", str(tmp_path / "r.jsonl"),
            "--set", "http.host=0.0.0.0", "--check")
    proc = h.fsac_run(*args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and TOKEN_ENV in err
    proc = h.fsac_run(*args, env={TOKEN_ENV: "t0ken"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "live view: http://0.0.0.0:9108/ (token: FSAC_RUN_TOKEN)" in out + err
