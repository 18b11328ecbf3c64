"""The live view: fsac-run's operator page at `/`, its JSON API and its event stream.

    GET  /                       the page (runtime/static/index.html, app.js, style.css)
    GET  /events                 server-sent events: one JSON snapshot per change, <= PUSH_HZ a second
    GET  /api/state              the same snapshot, once
    GET  /frame/<key>.jpg?w=640  a recent frame, JPEG, at most w pixels wide
    POST /api/pause, /api/resume, /api/feedback {key, label}, /api/recalibrate, /api/activate {model}

Access: the HTTP server is bound to loopback by default. When http.host is anything else, the
token in the environment variable FSAC_RUN_TOKEN is required (fsac-run refuses to start
without it): `Authorization: Bearer <token>`, or open the page once as `/?token=<token>`,
which sets a cookie for the rest. /healthz, /readyz and /metrics stay as they were (probes
and Prometheus). POSTs also need the header `X-Fsac: 1`, which a page from another origin
cannot send without the browser asking first (no cross-site clicks on "activate").

Nothing here runs on the scoring path: snapshots are built on the HTTP threads from the
daemon's counters and the journal-following LiveState (runtime/liveview.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import threading
import time
from collections import deque
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fsac.errors import FsacError
from fsac.feedback import counts as feedback_counts

from .feedback import save_feedback
from .liveview import PUSH_HZ, FrameRing, LiveState, alarms, encode_jpeg, expected_false_alarms, frame_key
from .recalibrate import RecalJob

log = logging.getLogger("fsac.runtime")

TOKEN_ENV = "FSAC_RUN_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
MAX_STREAMS = 2  # of the status server's 4 workers
STREAM_S = 120.0
MAX_BODY = 65536  # the API's bodies are a key, a label or a model path
_FRAME = re.compile(r"^/frame/([A-Za-z0-9TZ_-]+)\.jpg$")


def check_access(host: str, environ: dict[str, str] | None = None) -> str | None:
    """The token the page requires (None: none, loopback only). Refuses a non-loopback bind
    without one: the page can pause the line and swap its model."""
    token = (environ if environ is not None else os.environ).get(TOKEN_ENV) or None
    if host not in LOOPBACK and token is None:
        raise FsacError(f"http.host is {host}: the live view then needs a token; set the environment variable "
                        f"{TOKEN_ENV} (e.g. in the systemd unit's Environment=), bind http.host to 127.0.0.1, or "
                        "set live.enabled=false")
    return token


def _finite(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def dumps(obj: Any) -> bytes:
    """JSON for the browser: JSON.parse refuses NaN and Infinity, so they become null."""
    try:
        return json.dumps(obj, allow_nan=False, default=str).encode()
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False, default=str).encode()


def _same_token(given: str, token: str) -> bool:
    """Constant-time comparison; as bytes, because compare_digest refuses non-ASCII text (a
    wrong token with an accent must be a 401, not an exception)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))


class WebUI:
    def __init__(self, daemon: Any, cfg: Any, token: str | None) -> None:
        self.daemon = daemon
        self.cfg = cfg  # LiveConfig
        self.token = token
        self.state = LiveState(daemon.journal, FrameRing(cfg.frames_in_memory, max_bytes=cfg.max_frame_bytes))
        self.job = RecalJob(cfg.calibration_images, cfg.feedback_dir, cfg.alpha)
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=120)  # (t, frames written, dropped)
        self._sample_lock = threading.Lock()
        self._feedback = feedback_counts(cfg.feedback_dir)
        self.clients = 0  # open event streams
        self._clients_lock = threading.Lock()

    def start(self) -> None:
        self.state.start()

    def close(self) -> None:
        self.state.close()
        self.job.close()

    # ---------------------------------------------------------------- snapshot

    def _rates(self) -> tuple[float, int]:
        """Frames/s over the last ~10 s and frames dropped in the last minute."""
        m = self.daemon.metrics
        now, written, dropped = time.monotonic(), m.frames.value, m.dropped.value
        with self._sample_lock:
            if not self._samples or now - self._samples[-1][0] >= 1.0:
                self._samples.append((now, written, dropped))
            ten = next((s for s in self._samples if now - s[0] <= 10.0), self._samples[0])
            minute = next((s for s in self._samples if now - s[0] <= 60.0), self._samples[0])
        fps = (written - ten[1]) / (now - ten[0]) if now - ten[0] > 0.5 else 0.0
        return fps, dropped - minute[2]

    def snapshot(self, since: int = -1) -> dict[str, Any]:
        d = self.daemon
        view = self.state.view(since)
        model = d.handle.current
        meta = model.info.metadata
        m = d.metrics
        fps, dropped_recent = self._rates()
        ok, why = d.ready()
        written = m.frames.value
        sinks = [{"name": dl.name, "ok": not dl.failing, "pending": dl.pending(), "delivered": dl.delivered,
                  "error": dl.last_error} for dl in d.deliveries]
        for s in d.live:
            if s is not self.state:
                stats = {}
                try:
                    stats = dict(s.stats())
                except Exception:
                    pass
                sinks.append({"name": getattr(s, "name", "?"), "ok": True, "stats": stats})
        expected = expected_false_alarms(meta)
        return {
            "time": time.time(), "paused": d.paused.is_set(), "ready": ok, "not_ready": why,
            "latest": view["latest"], "latest_key": frame_key(view["latest"]) if view["latest"] else None,
            "latest_has_image": bool(view["latest"]) and self.state.ring.get(frame_key(view["latest"])) is not None,
            "latest_index": view["latest_index"], "points": view["points"], "defects": view["defects"],
            "counts": {"read": m.frames_read.value, "frames": written, "defects": m.anomalies.value,
                       "errors": m.errors.value, "dropped": m.dropped.value, "fps": fps,
                       "dropped_rate": m.dropped.value / m.frames_read.value if m.frames_read.value else 0.0,
                       "defect_rate": m.anomalies.value / written if written else 0.0,
                       "error_rate": m.errors.value / written if written else 0.0},
            "model": {"name": model.name, "sha256": model.sha256, "object": model.info.object_name,
                      "arch": model.info.arch, "precision": model.info.precision,
                      "recipe": d.recipes.active,  # the runtime recipe in force (runtime/recipes.py)
                      "preset": meta.get("fsac.train_preset") or meta.get("fsac.head") or "",
                      "logit_threshold": model.logit_threshold, "threshold": model.threshold,
                      "threshold_source": model.threshold_source, "expected_fpr": expected,
                      "backend": model.backend.name},
            "source": {"label": d.source.label, "kind": d.source.kind, "connected": bool(d.source.connected),
                       "reconnects": d.source.reconnects},
            "sinks": sinks, "journal_fill": d.journal.fill(),
            "alarms": alarms(view["window"], expected, bool(d.source.connected), dropped_recent,
                             d.health.current()),
            "feedback": dict(self._feedback), "recalibration": self.job.snapshot(),
            "can_recalibrate": bool(self.cfg.calibration_images),
        }

    # ---------------------------------------------------------------- HTTP

    def authorized(self, handler: Any, query: dict[str, list[str]]) -> tuple[bool, bool]:
        """(allowed, set_cookie)."""
        if self.token is None:
            return True, False
        given = (query.get("token") or [""])[0]
        if given and _same_token(given, self.token):
            return True, True
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and _same_token(auth[7:].strip(), self.token):
            return True, False
        for part in handler.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "fsac_token" and _same_token(value, self.token):
                return True, False
        return False, False

    def handle(self, handler: Any, method: str, raw_path: str) -> bool:
        """Serve a live-view route; False when the path is not one (the caller answers 404)."""
        path, _, qs = raw_path.partition("?")
        query = parse_qs(qs)
        if not (path == "/" or path.startswith(("/static/", "/api/", "/frame/")) or path == "/events"):
            return False
        allowed, set_cookie = self.authorized(handler, query)
        if not allowed:
            self._send(handler, 401, b"live view: token required (FSAC_RUN_TOKEN); open /?token=...\n")
            return True
        if method == "POST":
            if handler.headers.get("X-Fsac") != "1":
                self._send(handler, 403, b"POST needs the header X-Fsac: 1\n")
                return True
            self._post(handler, path)
            return True
        if path == "/" or path.startswith("/static/"):
            name = "index.html" if path == "/" else path[len("/static/"):]
            if name not in STATIC:
                self._send(handler, 404, b"not found\n")
                return True
            body = resources.files("fsac.runtime").joinpath("static", name).read_bytes()
            cookie = f"fsac_token={self.token}; HttpOnly; SameSite=Strict; Path=/" if set_cookie else None
            self._send(handler, 200, body, STATIC[name], cookie)
        elif path == "/api/state":
            self._json(handler, 200, self.snapshot())
        elif path == "/events":
            self._events(handler)
        else:
            match = _FRAME.match(path)
            kept = self.state.ring.get(match.group(1)) if match else None
            try:
                width = min(max(int((query.get("w") or ["640"])[0] or 640), 32), 4096)
            except ValueError:  # ?w=abc: the client's mistake (a 400), not the server's (a 500)
                self._send(handler, 400, b"w: expected a width in pixels, e.g. ?w=640\n")
                return True
            data = encode_jpeg(kept, width) if kept is not None else None
            if data is None:
                self._send(handler, 404, b"frame no longer in memory\n")
            else:
                self._send(handler, 200, data, "image/jpeg")
        return True

    @staticmethod
    def _body(handler: Any) -> tuple[int, str] | dict[str, Any]:
        """The POST's JSON object, or (status, reason) for a body the API cannot take."""
        try:
            n = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            return 400, "Content-Length: expected a number of bytes"
        if n < 0 or n > MAX_BODY:
            return 413, f"request body above {MAX_BODY} bytes"
        try:
            body = json.loads(handler.rfile.read(n) or b"{}") if n else {}
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            return 400, f"request body: not JSON ({e})"
        if not isinstance(body, dict):
            return 400, "request body: expected a JSON object"
        return body

    def _post(self, handler: Any, path: str) -> None:
        body = self._body(handler)
        if isinstance(body, tuple):
            self._json(handler, body[0], {"error": body[1]})
            return
        try:
            d = self.daemon
            if path == "/api/pause":
                d.pause(True)
                out: dict[str, Any] = {"paused": True}
            elif path == "/api/resume":
                d.pause(False)
                out = {"paused": False}
            elif path == "/api/feedback":
                key, label = str(body.get("key", "")), str(body.get("label", ""))
                kept = self.state.ring.get(key)
                if kept is None:
                    raise FsacError(f"frame {key} is no longer in memory; mark a more recent frame")
                saved = save_feedback(self.cfg.feedback_dir, label, kept.record, kept.pixels,
                                      self.cfg.feedback_max_files)
                self._feedback = feedback_counts(self.cfg.feedback_dir)
                log.info("operator marked frame %s as %s: %s", key, label, saved)
                out = {"saved": str(saved), "feedback": self._feedback}
            elif path == "/api/recalibrate":
                out = self.job.start(d.handle.current)
            elif path == "/api/activate":
                out = self.job.activate(d.handle, str(body.get("model", "")))
                d.metrics.reloads.inc()
                log.info("operator activated %s", body.get("model"))
            else:
                self._send(handler, 404, b"not found\n")
                return
            self._json(handler, 200, out)
        except (FsacError, ValueError) as e:
            self._json(handler, 409, {"error": str(e)})

    def _events(self, handler: Any) -> None:
        # Each stream holds one of the status server's few workers (runtime/http.py), so at most
        # MAX_STREAMS pages at once (probes and /metrics keep the rest), and a stream ends after
        # STREAM_S: the browser reconnects by itself, and a vanished phone frees its worker.
        with self._clients_lock:
            if self.clients >= MAX_STREAMS:
                self._send(handler, 503, f"retry: 5000\ndata: {{\"busy\": {MAX_STREAMS}}}\n\n".encode(),
                           "text/event-stream")
                return
            self.clients += 1
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        since, version, period = -1, -1, 1.0 / PUSH_HZ
        end = time.monotonic() + STREAM_S
        try:
            handler.wfile.write(b"retry: 1000\n\n")
            while not self.state.closed and time.monotonic() < end:
                t0 = time.monotonic()
                snap = self.snapshot(since)
                since = max(since, snap["latest_index"])
                handler.wfile.write(b"data: " + dumps(snap) + b"\n\n")
                handler.wfile.flush()
                # Coalesce: at most PUSH_HZ snapshots a second however fast frames come; one a
                # second at least, so counts and health stay fresh when the line is idle.
                time.sleep(max(0.0, period - (time.monotonic() - t0)))
                version = self.state.wait_change(version, 1.0)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            with self._clients_lock:
                self.clients -= 1

    @staticmethod
    def _json(handler: Any, code: int, obj: Any) -> None:
        WebUI._send(handler, code, dumps(obj), "application/json")

    @staticmethod
    def _send(handler: Any, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              cookie: str | None = None) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Cache-Control", "no-store")
        if cookie:
            handler.send_header("Set-Cookie", cookie)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
