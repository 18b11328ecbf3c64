"""Webhook sink through the real daemon and journal, against a real HTTP server on loopback
that fails the first POSTs: retried with backoff, every record delivered, in order."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fsac.errors import FsacError
from fsac.runtime.daemon import Daemon
from fsac.runtime.sinks.webhook import validate_webhook_config
from test_daemon import config


class Receiver:
    def __init__(self, fail_first: int) -> None:
        self.fail_left = fail_first
        self.records: list[dict] = []
        self.auth: list[str] = []
        self.attempts = 0
        me = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                me.attempts += 1
                me.auth.append(self.headers.get("Authorization", ""))
                if me.fail_left > 0:
                    me.fail_left -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                assert self.headers["Content-Type"] == "application/x-ndjson"
                me.records += [json.loads(line) for line in body.splitlines()]
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def test_webhook_retries_and_delivers_every_record_once_in_order(tmp_path, model_file, image_folder, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    rx = Receiver(fail_first=2)
    try:
        cfg = config(model_file, str(image_folder), tmp_path / "r.jsonl", f"sinks.webhook.url={rx.url}",
                     "sinks.webhook.token_env=HOOK_TOKEN", "daemon.drain_timeout_s=20")
        assert Daemon(cfg, install_signals=False).run() == 0
        assert rx.attempts >= 3 and set(rx.auth) == {"Bearer s3cret"}
        assert [r["name"] for r in rx.records] == [f"img_{i:03d}.png" for i in range(12)]
        assert [r["seq"] for r in rx.records] == list(range(12))
    finally:
        rx.server.shutdown()


def test_webhook_settings_are_checked():
    with pytest.raises(FsacError, match=r"sinks\.webhook\.url: 10\.0\.0\.5 is not this machine"):
        validate_webhook_config({"url": "http://10.0.0.5/hook"})
    with pytest.raises(FsacError, match=r"sinks\.webhook\.timout: unknown setting \(did you mean timeout\?\)"):
        validate_webhook_config({"url": "http://127.0.0.1/h", "timout": 3})


def test_a_redirect_is_a_failed_delivery_not_a_get_that_loses_the_batch(monkeypatch):
    """A real server answering POST with 302 to a URL that answers GET with 200: urllib's
    default would follow with a GET (no body, the bearer token still on) and count the batch
    as delivered. The sink raises instead, naming where the redirect points."""
    from fsac.runtime.sinks.webhook import WebhookSink

    seen: list[tuple[str, str]] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(("POST", self.path))
            self.send_response(302)
            self.send_header("Location", "/moved")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):  # noqa: N802
            seen.append(("GET", self.path))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HOOK_TOKEN", "s3cret")
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        sink = WebhookSink({"url": url, "token_env": "HOOK_TOKEN"})
        with pytest.raises(FsacError, match=r"answered 302 .*to /moved; set sinks.webhook.url"):
            sink.deliver([b'{"seq": 0}\n'])
        assert seen == [("POST", "/hook")] and sink.posted == 0 and sink.failures == 1
    finally:
        server.shutdown()
