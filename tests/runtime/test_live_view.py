"""The live view in a real browser: headless Chromium (system package) driven by selenium,
against the real fsac-run in a subprocess, on real image files dropped one by one into a
watched folder (the line is as slow as the test makes it).

The fixture model's logit is 2 * mean pixel - 1 (fsac_run_helpers): dark images are good,
bright ones defective, so every verdict the page shows can be predicted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import fsac_run_helpers as h

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)


def _start(cfg: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    code = "import sys; from fsac.runtime.cli import main; sys.exit(main())"
    full = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "FSAC_RUN_TOKEN")}
    full.update(env or {})
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-c", code, "--config", str(cfg)], env=full, stdout=out, stderr=out)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    """(status, body, headers); status 0 while nothing listens."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
    except urllib.error.URLError:
        return 0, b"", {}


def _image(path: Path, lo: int, hi: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(lo, hi, (96, 128, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium / chromium-driver are not installed (apt-get install chromium chromium-driver; "
                    ".ci/run does it)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    import tempfile

    profile = tempfile.mkdtemp(prefix="fsac-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def line(tmp_path_factory, make_model):
    """fsac-run on a watched folder with the live view on loopback; yields its paths and URL."""
    root = tmp_path_factory.mktemp("live")
    models = root / "models"
    models.mkdir()
    model = models / "bottle.fsac.onnx"
    shutil.copyfile(make_model("live.fsac.onnx"), model)
    calib = root / "calib"
    calib.mkdir()
    for i in range(20):  # the original calibration set: good parts, mean pixel 0.1 .. 0.45
        _image(calib / f"good_{i:02d}.png", 20 + 3 * i, 80 + 3 * i, seed=i)
    watch = root / "in"
    watch.mkdir()
    port = h.free_port()
    cfg = root / "fsac-run.yaml"
    # alpha 0.05 with 20 normal images: k = n, the new threshold lies just above the largest
    # normal logit. The frame the operator marks False alarm and then Confirmed defect is not
    # one of them (fsac.feedback.good_images).
    cfg.write_text(yaml.safe_dump({
        "model": {"path": str(model)},
        "source": {"kind": "watch", "uri": str(watch), "settle_s": 0.05, "poll_s": 0.05, "give_up_s": 0.3},
        "sinks": {"jsonl": {"path": str(root / "out" / "results.jsonl")}},
        "http": {"port": port},
        "live": {"calibration_images": [str(calib)], "alpha": 0.05, "feedback_dir": str(root / "feedback")},
    }))
    log = root / "fsac-run.log"
    proc = _start(cfg, log)
    url = f"http://127.0.0.1:{port}"
    try:
        h.wait_for(lambda: _get(url + "/readyz")[0] == 200 if proc.poll() is None else True, 30,
                   what="fsac-run ready")
        assert proc.poll() is None, log.read_text()
        yield {"url": url, "root": root, "watch": watch, "model": model, "proc": proc, "log": log,
               "jsonl": root / "out" / "results.jsonl", "feedback": root / "feedback"}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, log.read_text()


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _wait_text(driver, element_id: str, predicate, what: str, timeout: float = 15.0) -> str:
    return h.wait_for(lambda: (lambda t: t if predicate(t) else None)(_text(driver, element_id)), timeout,
                      what=f"{what} (#{element_id} is {_text(driver, element_id)!r})")


def _points(driver) -> int:
    return int(driver.find_element("id", "chart").get_attribute("data-points") or 0)


def _drop(line, name: str, lo: int, hi: int, seed: int) -> Path:
    tmp = _image(line["root"] / ("." + name), lo, hi, seed)
    return Path(shutil.move(tmp, line["watch"] / name))  # appears whole: a rename


def test_live_view_follows_the_line_marks_recalibrates_and_activates(browser, line, tmp_path):
    d = browser
    d.get(line["url"] + "/")
    _wait_text(d, "conn", lambda t: t == "live", "the event stream")
    assert _points(d) == 0 and "bottle.fsac.onnx" in _text(d, "model")

    # Frames scored one by one: the verdict and the chart follow.
    _drop(line, "p001.png", 20, 100, 1)
    _wait_text(d, "verdict", lambda t: t == "GOOD", "first verdict")
    assert _text(d, "part") == "p001.png" and _points(d) == 1
    _drop(line, "p002.png", 160, 250, 2)
    _wait_text(d, "verdict", lambda t: t == "DEFECTIVE", "defective verdict")
    h.wait_for(lambda: _points(d) == 2, 5, what="second chart point")
    assert float(_text(d, "logit")) > 0 and "threshold 0" in d.find_element("id", "threshold-label").text
    h.wait_for(lambda: len(h.read_jsonl(line["jsonl"])) == 2, 10, what="two records delivered")
    rec = h.read_jsonl(line["jsonl"])[-1]
    assert rec["name"] == "p002.png" and rec["verdict"] == "defective"
    h.wait_for(lambda: d.find_element("id", "latest-img").get_attribute("naturalWidth") not in (None, "0"), 5,
               what="latest frame image")

    # The thumbnail opens the full frame with its record; "False alarm" files it.
    thumb = h.wait_for(lambda: d.find_elements("css selector", "#defects figure"), 5, what="defect thumbnail")[0]
    thumb.click()
    h.wait_for(lambda: '"p002.png"' in _text(d, "detail-record"), 5, what="record in the detail view")
    d.find_element("css selector", '#detail button[data-label="false_alarm"]').click()
    saved = Path(h.wait_for(lambda: d.find_element("id", "message").get_attribute("data-saved"), 5,
                            what="feedback saved"))
    d.find_element("id", "detail-close").click()
    meta = json.loads(saved.read_text())
    assert saved.parent == line["feedback"] / "false_alarm"
    assert meta["label"] == "false_alarm" and meta["record"]["name"] == "p002.png"
    assert meta["record"]["seq"] == rec["seq"] and meta["record"]["run_id"] == rec["run_id"]
    png = saved.parent / meta["image"]
    # The saved frame is the frame the model scored: scoring it again gives the record's logit.
    assert h.expected_logit(np.asarray(Image.open(png).convert("RGB"))) == pytest.approx(rec["logit"], abs=1e-5)
    _wait_text(d, "feedback-counts", lambda t: t.startswith("1 false alarm"), "feedback count")
    d.find_element("css selector", '#latest button[data-label="confirmed_defect"]').click()  # the latest frame
    _wait_text(d, "feedback-counts", lambda t: t.endswith("1 confirmed defect(s)"), "confirmed defect count")
    (confirmed,) = (line["feedback"] / "confirmed_defect").glob("*.json")
    assert json.loads(confirmed.read_text())["record"]["name"] == "p002.png"

    # Re-calibration on the box: old and new thresholds and the expected false-alarm rate. The
    # frame was marked False alarm, then Confirmed defect: it is no normal image any more.
    d.find_element("id", "btn-recalibrate").click()
    _wait_text(d, "recal-status", lambda t: t.startswith("done"), "re-calibration", timeout=60)
    new_path = Path(_text(d, "recal-status").split("done: ", 1)[1])
    assert new_path.parent == line["model"].parent and new_path != line["model"] and new_path.is_file()
    from fsac.modelfile import load_model_file

    _, new_info = load_model_file(new_path)  # sealed and valid
    _, old_info = load_model_file(line["model"])
    assert old_info.logit_threshold == 0.0  # the old file is untouched
    new_t = new_info.logit_threshold
    z_max = max(h.expected_logit(np.asarray(Image.open(p).convert("RGB")))
                for p in (line["root"] / "calib").iterdir())
    assert z_max < new_t < z_max + 1e-6 < rec["logit"]  # just above the calibration images (k = n)
    assert float(_text(d, "recal-new")) == pytest.approx(new_t, rel=1e-5)
    assert float(_text(d, "recal-old")) == 0.0
    assert _text(d, "recal-fpr") == "4.8 % (n = 20)"  # (n + 1 - k) / (n + 1) = 1 / 21
    assert _text(d, "recal-old-fpr") == "–"  # the file in use was never calibrated: no rate to show
    # Activate: the daemon now serves the new file; the confirmed defect is still one under it.
    d.find_element("id", "btn-activate").click()
    _wait_text(d, "model", lambda t: new_path.name in t, "new model shown as active")
    _wait_text(d, "recal-status", lambda t: t.startswith("activated"), "activated")
    shutil.copyfile(png, line["root"] / "again.png")
    shutil.move(line["root"] / "again.png", line["watch"] / "p003.png")
    _wait_text(d, "part", lambda t: t == "p003.png", "third frame")
    assert _text(d, "verdict") == "DEFECTIVE"
    h.wait_for(lambda: len(h.read_jsonl(line["jsonl"])) == 3, 10, what="third record")
    third = h.read_jsonl(line["jsonl"])[-1]
    assert third["model"] == new_path.name and third["logit_threshold"] == pytest.approx(new_t)
    assert third["logit"] == pytest.approx(rec["logit"], abs=1e-6) and third["verdict"] == "defective"

    # Pause: frames wait (not scored, /readyz says why); resume: they are scored.
    d.find_element("id", "btn-pause").click()
    h.wait_for(lambda: d.find_element("id", "paused-banner").is_displayed(), 5, what="paused banner")
    code, body, _ = _get(line["url"] + "/readyz")
    assert code == 503 and b"paused" in body
    _drop(line, "p004.png", 20, 100, 4)
    time.sleep(1.0)
    assert _text(d, "part") == "p003.png" and len(h.read_jsonl(line["jsonl"])) == 3
    d.find_element("id", "btn-resume").click()
    _wait_text(d, "part", lambda t: t == "p004.png", "frame scored after resume")

    # Under load (60 frames at once, a backlog for the scorer): the page keeps up and its
    # counts match the journal's records.
    burst = line["root"] / "burst"
    burst.mkdir()
    for i in range(60):
        _image(burst / f"q{i:03d}.png", 20, 100, 100 + i)
    for f in sorted(burst.iterdir()):
        shutil.move(f, line["watch"] / f.name)
    _wait_text(d, "part", lambda t: t == "q059.png", "last frame of the burst", timeout=30)
    h.wait_for(lambda: _text(d, "counts").startswith("frames 64\n"), 5, what="count of 4 + 60 frames")
    h.wait_for(lambda: len(h.read_jsonl(line["jsonl"])) == 64, 10, what="64 records")
    assert _points(d) == 64
    assert _text(d, "alarms") == ""
    health, model_table = _text(d, "health"), _text(d, "model")
    assert re.search(r"sink jsonl ok, \d+ pending", health) and "source state open" in health, health
    assert "recipe default" in model_table and re.search(r"dropped 0 \(0\.00 % of read\)", _text(d, "counts"))
    # Corrupt files: error records, an input-health alarm naming the file's problem.
    for i in range(8):
        (line["root"] / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        shutil.move(line["root"] / f"bad{i}.png", line["watch"] / f"r{i}.png")
    alarm = _wait_text(d, "alarms", lambda t: "could not be scored" in t, "input-health alarm", timeout=30)
    assert "8 of the last 72 frames" in alarm and "r7.png" in alarm
    assert _text(d, "verdict") == "ERROR"

    # Screenshots, desktop and phone-sized: not blank, and nothing wider than the phone.
    shot = tmp_path / "desktop.png"
    d.save_screenshot(str(shot))
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert px.std() > 20 and len(np.unique(px.reshape(-1, 3)[::97], axis=0)) > 20, "screenshot looks blank"
    d.set_window_size(390, 844)
    try:
        time.sleep(0.3)
        assert d.execute_script("return document.documentElement.scrollWidth") <= \
            d.execute_script("return window.innerWidth") + 1
        assert d.find_element("id", "verdict").is_displayed()
        d.save_screenshot(str(tmp_path / "phone.png"))
        assert np.asarray(Image.open(tmp_path / "phone.png").convert("L"), dtype=np.float64).std() > 20
    finally:
        d.set_window_size(1280, 1000)
    shutil.copyfile(shot, line["root"] / "desktop.png")  # kept with the run's files for a look


def test_event_streams_are_bounded_and_probes_still_answer(line):
    """Each event stream holds one of the status server's 4 workers: at most 2 are served,
    the next gets 503 (the page retries), and /healthz and /metrics still answer."""
    import http.client

    host, port = line["url"][len("http://"):].split(":")
    streams, refused = [], None
    try:
        for _ in range(4):
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", "/events")
            resp = conn.getresponse()
            if resp.status != 200:
                refused = resp.status
                conn.close()
                break
            assert resp.fp.readline().startswith(b"retry:")
            streams.append(conn)
        assert refused == 503 and 1 <= len(streams) <= 2  # the browser of the other test may hold one
        assert _get(line["url"] + "/healthz")[0] == 200
        assert b"fsac_frames_total" in _get(line["url"] + "/metrics")[1]
    finally:
        for conn in streams:
            conn.close()


def test_posts_need_the_header_and_frames_expire(line):
    code, body, _ = _get(line["url"] + "/frame/nope-1.jpg")
    assert code == 404
    req = urllib.request.Request(line["url"] + "/api/pause", data=b"{}", method="POST")  # no X-Fsac header
    with pytest.raises(urllib.error.HTTPError) as e:
        _OPENER.open(req, timeout=5)
    assert e.value.code == 403
    assert _get(line["url"] + "/readyz")[0] == 200  # not paused


def test_malformed_requests_get_a_4xx_with_the_reason(line):
    def post(path: str, data: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(line["url"] + path, data=data, method="POST", headers={"X-Fsac": "1"})
        try:
            with _OPENER.open(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    # Each was a 500 "internal error" (ValueError, AttributeError): the client's mistake, not ours.
    code, body, _ = _get(line["url"] + "/frame/nope-1.jpg?w=wide")
    assert code == 400 and b"w: expected a width" in body
    code, out = post("/api/feedback", b'["key", "false_alarm"]')
    assert code == 400 and out["error"] == "request body: expected a JSON object"
    code, out = post("/api/feedback", b'{"key": ')
    assert code == 400 and out["error"].startswith("request body: not JSON")
    # A body above the API's bound is refused, not ignored: it used to pause the line as if empty.
    code, out = post("/api/pause", b"{}" + b" " * 70000)
    assert code == 413 and "above 65536 bytes" in out["error"]
    assert _get(line["url"] + "/readyz")[0] == 200  # not paused; still serving


def test_token_required_off_loopback(browser, tmp_path, make_model):
    model = make_model("token.fsac.onnx")
    watch = tmp_path / "in"
    watch.mkdir()
    port = h.free_port()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"path": str(model)}, "source": {"kind": "watch", "uri": str(watch),
                                   "settle_s": 0.05, "poll_s": 0.05},
                                   "sinks": {"jsonl": {"path": str(tmp_path / "r.jsonl")}},
                                   "http": {"host": "0.0.0.0", "port": port}}))
    proc = _start(cfg, tmp_path / "no-token.log")
    assert proc.wait(30) == 2
    assert "FSAC_RUN_TOKEN" in (tmp_path / "no-token.log").read_text()

    token = "s3cret-" + os.urandom(8).hex()
    proc = _start(cfg, tmp_path / "token.log", env={"FSAC_RUN_TOKEN": token})
    url = f"http://127.0.0.1:{port}"
    try:
        h.wait_for(lambda: proc.poll() is not None or _get(url + "/readyz")[0] == 200, 30, what="ready")
        assert proc.poll() is None, (tmp_path / "token.log").read_text()
        assert _get(url + "/")[0] == 401 and _get(url + "/api/state")[0] == 401
        assert _get(url + "/?token=wrong")[0] == 401
        assert _get(url + "/?token=%C3%A9t%C3%A9")[0] == 401  # a non-ASCII guess is refused, not an error
        assert _get(url + "/api/state", {"Authorization": f"Bearer {token}"})[0] == 200
        code, _, headers = _get(url + f"/?token={token}")
        assert code == 200 and "fsac_token=" in headers.get("Set-Cookie", "")
        # The browser opens the link once; the cookie carries the token to the event stream.
        browser.get(url + f"/?token={token}")
        _wait_text(browser, "conn", lambda t: t == "live", "event stream with the token cookie")
        _image(watch / "x.png", 160, 250, 9)
        _wait_text(browser, "verdict", lambda t: t == "DEFECTIVE", "verdict behind the token")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0, (tmp_path / "token.log").read_text()
