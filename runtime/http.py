"""The daemon's status endpoints, on the standard library's HTTP server.

  /healthz  200 while the process answers (liveness: restart me if this fails)
  /readyz   200 once the model is loaded and the source is open, 503 with the reason
            otherwise (readiness: do not trust the line's verdicts yet)
  /metrics  Prometheus text format

Bound to 127.0.0.1 by default: the metrics name the model and the source, and nothing here
is authenticated. Expose it through the box's firewall or a reverse proxy on purpose.

Resource bounds (idle clients must not take the daemon's file descriptors, threads or a
core): one thread waits on the listening socket and on accepted connections that have not
sent anything yet (a selector, no thread each); a connection goes to the pool of WORKERS
threads only once its request arrives, and every response closes it (no keep-alive). At
most MAX_IDLE connections wait; one more closes the oldest waiting one, so a new client
always gets in. A waiting connection is closed after CONN_TIMEOUT_S, and a request must
arrive whole within CONN_TIMEOUT_S of a worker taking it (plus MIN_BODY_RATE for a body): a
per-recv timeout alone lets a client that sends one byte every few seconds hold a worker
forever. At most MAX_QUEUED requests wait for a worker; one more gets 503 at once, so
connections (file descriptors) cannot pile up behind busy workers. One request per
connection: every response closes it. The listen backlog is LISTEN_BACKLOG. When accept()
fails for lack of file descriptors (EMFILE / ENFILE) the server sleeps before trying again
instead of spinning on a listening socket that stays readable.
"""

from __future__ import annotations

import errno
import io
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from fsac.errors import FsacError

log = logging.getLogger("fsac.runtime")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WORKERS = 4
MAX_IDLE = 64
CONN_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 64
MAX_POST_BYTES = 48 * 1024 * 1024  # an inspection request with an image (base64) fits
MAX_QUEUED = 32  # requests waiting for a worker (trigger requests and event streams hold one)
MIN_BODY_RATE = 2 * 1024 * 1024  # bytes/s a body must at least arrive at (a 48 MB image: 24 s more)
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 28\r\n"
        b"Retry-After: 1\r\nConnection: close\r\n\r\nbusy: every worker is taken\n")


class _DeadlineReader(io.RawIOBase):
    """The request side of a connection with one deadline for the whole request: each recv
    waits at most what is left of it (the socket's own timeout, CONN_TIMEOUT_S, stays for
    the response's writes)."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self.deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def extend(self, seconds: float) -> None:
        self.deadline += seconds

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        timeout = self._sock.gettimeout()
        self._sock.settimeout(left if timeout is None else min(left, timeout))
        try:
            return self._sock.recv_into(buf)
        finally:
            self._sock.settimeout(timeout)


class StatusServer:
    def __init__(self, host: str, port: int, *, metrics: Callable[[], str],
                 ready: Callable[[], tuple[bool, str]], app: Any = None,
                 post: dict[str, Callable[[Any, bytes], tuple[int, str]]] | None = None) -> None:
        self._metrics = metrics
        self._app = app  # the live view (runtime/webui.py): serves / and its API when set
        self._post = dict(post or {})  # path -> handler(headers, body) -> (status, JSON text)
        self._ready = ready
        self._handler = self._handler_class()
        self._timeout = CONN_TIMEOUT_S
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(LISTEN_BACKLOG)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            raise FsacError(f"http.port: cannot listen on {host}:{port} ({e.strerror or e}); choose another "
                            "http.port or set http.enabled=false") from None
        sock.setblocking(False)
        self._sock = sock
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="fsac-http")
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = 0  # waiting connections closed to make room, or with every worker busy
        self.accept_failures = 0  # accept() without a free file descriptor
        self._queued = 0  # handed to the pool and not finished (running or waiting for a worker)
        self._queued_lock = threading.Lock()
        self.server_name, self.server_port = host, port  # what BaseHTTPRequestHandler may ask

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="fsac-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sock.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, None)
        waiting: OrderedDict[socket.socket, float] = OrderedDict()  # accepted, nothing received yet

        def drop(conn: socket.socket) -> None:
            sel.unregister(conn)
            waiting.pop(conn, None)
            conn.close()

        try:
            while not self._halt.is_set():
                for key, _ in sel.select(0.2):
                    if key.data is None:
                        self._accept(sel, waiting, drop)
                        continue
                    conn = key.fileobj
                    sel.unregister(conn)
                    waiting.pop(conn, None)
                    with self._queued_lock:
                        full = self._queued >= WORKERS + MAX_QUEUED
                        self._queued += not full
                    if full:
                        self.refused += 1
                        try:
                            conn.send(BUSY)  # non-blocking: a few bytes into an empty send buffer
                        except OSError:
                            pass
                        conn.close()
                        continue
                    conn.setblocking(True)
                    conn.settimeout(self._timeout)  # a client that stalls mid-request is dropped
                    try:
                        self._pool.submit(self._work, conn, key.data)
                    except RuntimeError:  # shutting down
                        self._done()
                        conn.close()
                limit = time.monotonic() - self._timeout
                while waiting and next(iter(waiting.values())) < limit:
                    drop(next(iter(waiting)))
        finally:
            for conn in list(waiting):
                drop(conn)
            sel.close()

    def _accept(self, sel, waiting, drop) -> None:
        try:
            conn, addr = self._sock.accept()
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.accept_failures += 1
                time.sleep(0.2)  # the client waits in the backlog; no busy loop
            return
        if len(waiting) >= MAX_IDLE:
            self.refused += 1
            drop(next(iter(waiting)))
        conn.setblocking(False)
        waiting[conn] = time.monotonic()
        sel.register(conn, selectors.EVENT_READ, addr)

    def _done(self) -> None:
        with self._queued_lock:
            self._queued -= 1

    def _work(self, conn: socket.socket, addr) -> None:
        try:
            self._handler(conn, addr, self)
        except Exception:
            log.debug("http: connection from %s failed", addr, exc_info=True)
        finally:
            self._done()
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "fsac-run"
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, server._timeout))

            def handle(self) -> None:
                # One request per connection: a kept-alive connection would hold a worker while
                # the client thinks (the live view's own responses do not all say close).
                self.handle_one_request()

            def end_headers(self) -> None:
                if not self.close_connection:
                    self.send_header("Connection", "close")  # also sets close_connection
                super().end_headers()

            def _send(self, code: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
                data = body.encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")  # no keep-alive: a worker is never held idle
                self.close_connection = True
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

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                route = server._post.get(path)
                try:
                    if route is None:  # not a trigger/recipe route: the live view's API, if any
                        if server._app is None or not server._app.handle(self, "POST", self.path):
                            self._send(404, "not found\n")
                        return
                    try:
                        n = int(self.headers.get("Content-Length", ""))
                    except ValueError:
                        self._send(411, "Content-Length required\n")
                        return
                    if n < 0 or n > MAX_POST_BYTES:
                        self._send(413, f"request body above {MAX_POST_BYTES} bytes\n")
                        return
                    self.rfile.raw.extend(n / MIN_BODY_RATE)
                    data = self.rfile.read(n)
                    if len(data) < n:  # the client closed early: not a request to act on
                        self._send(400, f"request body ended after {len(data)} of {n} bytes\n")
                        return
                    code, body = route(self.headers, data)
                    self._send(code, body, "application/json")
                except TimeoutError:  # the body did not arrive in time (_DeadlineReader)
                    try:
                        self._send(408, "request body not received in time\n")
                    except OSError:
                        pass
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except Exception as e:
                    log.exception("http POST %s failed", path)
                    try:
                        self._send(500, f"internal error: {type(e).__name__}\n")
                    except OSError:
                        pass

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
                log.debug("http %s - %s", self.address_string(), format % args)

        return Handler
