"""The daemon's status endpoints, on the standard library's HTTP server.

  /healthz  200 while the process answers (liveness: restart me if this fails)
  /readyz   200 once the model is loaded and the source is open, 503 with the reason
            otherwise (readiness: do not trust the line's verdicts yet)
  /metrics  Prometheus text format

Bound to 127.0.0.1 by default: the metrics name the model and the source, and nothing here
is authenticated. Expose it through the box's firewall or a reverse proxy on purpose.

Resource bounds (idle clients must not take the daemon's file descriptors or a core): a
fixed pool of WORKERS threads serves connections, at most WORKERS + BACKLOG_WAITING are
accepted at a time (more are closed at once and counted), each connection is closed after
CONN_TIMEOUT_S of silence, the listen backlog is LISTEN_BACKLOG, and when accept() fails
for lack of file descriptors (EMFILE/ENFILE) the server sleeps before trying again instead
of spinning on a listening socket that stays readable.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable

from fsac.errors import FsacError

log = logging.getLogger("fsac.runtime")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WORKERS = 4
BACKLOG_WAITING = 16  # accepted connections waiting for a worker
CONN_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 64


class _BoundedServer(HTTPServer):
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args, **kw) -> None:
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="fsac-http")
        self._slots = threading.BoundedSemaphore(WORKERS + BACKLOG_WAITING)
        self.refused = 0  # connections closed at once because every slot was taken
        self.accept_failures = 0  # accept() without a free file descriptor
        super().__init__(*args, **kw)

    def get_request(self):
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.accept_failures += 1
                time.sleep(0.2)  # the connection waits in the backlog; no busy loop
            raise

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            self._pool.submit(self._work, request, client_address)
        except RuntimeError:  # pool shut down
            self._slots.release()
            self.shutdown_request(request)

    def _work(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.debug("http: connection from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class StatusServer:
    def __init__(self, host: str, port: int, *, metrics: Callable[[], str],
                 ready: Callable[[], tuple[bool, str]]) -> None:
        self._metrics = metrics
        self._ready = ready
        handler = self._handler_class()
        try:
            self._server = _BoundedServer((host, port), handler)
        except OSError as e:
            raise FsacError(f"http.port: cannot listen on {host}:{port} ({e.strerror or e}); choose another "
                            "http.port or set http.enabled=false") from None
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
            timeout = CONN_TIMEOUT_S  # socket timeout: an idle or slow client is dropped

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

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
                log.debug("http %s - %s", self.address_string(), format % args)

        return Handler
