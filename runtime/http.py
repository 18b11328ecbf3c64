"""The daemon's status endpoints, on the standard library's HTTP server.

  /healthz  200 while the process answers (liveness: restart me if this fails)
  /readyz   200 once the model is loaded and the source is open, 503 with the reason
            otherwise (readiness: do not trust the line's verdicts yet)
  /metrics  Prometheus text format

Bound to 127.0.0.1 by default: the metrics name the model and the source, and nothing here
is authenticated. Expose it through the box's firewall or a reverse proxy on purpose.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from fsac.errors import FsacError

log = logging.getLogger("fsac.runtime")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatusServer:
    def __init__(self, host: str, port: int, *, metrics: Callable[[], str],
                 ready: Callable[[], tuple[bool, str]], app: Any = None) -> None:
        self._metrics = metrics
        self._app = app  # the live view (runtime/webui.py): serves / and its API when set
        self._ready = ready
        handler = self._handler_class()
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise FsacError(f"http.port: cannot listen on {host}:{port} ({e.strerror or e}); choose another "
                            "http.port or set http.enabled=false") from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fsac-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2)
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "fsac-run"
            protocol_version = "HTTP/1.1"

            def _send(self, code: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
                data = body.encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/healthz":
                        self._send(200, "ok\n")
                    elif path == "/readyz":
                        ok, why = server._ready()
                        self._send(200 if ok else 503, ("ready\n" if ok else f"not ready: {why}\n"))
                    elif path == "/metrics":
                        self._send(200, server._metrics(), PROMETHEUS_CONTENT_TYPE)
                    elif server._app is not None and server._app.handle(self, self.command, self.path):
                        pass
                    else:
                        self._send(404, "not found: try /healthz, /readyz or /metrics\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except Exception as e:  # a bug in a metric must not kill the endpoint thread quietly
                    log.exception("http %s failed", path)
                    try:
                        self._send(500, f"internal error: {type(e).__name__}\n")
                    except OSError:
                        pass

            do_HEAD = do_GET

            def do_POST(self) -> None:  # noqa: N802
                try:
                    if server._app is None or not server._app.handle(self, "POST", self.path):
                        self._send(404, "not found\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except Exception as e:
                    log.exception("http POST %s failed", self.path)
                    try:
                        self._send(500, f"internal error: {type(e).__name__}\n")
                    except OSError:
                        pass

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
                log.debug("http %s - %s", self.address_string(), format % args)

        return Handler
