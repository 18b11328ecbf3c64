"""A client that loads the live view the way the page does, for `fsac bench runtime --page-client`:
it holds the event stream /events open and, like app.js, fetches the latest frame's image
(640 px wide) at most twice a second when it changes. Plain http.client, one thread each.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any


class PageClient:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self._stop = threading.Event()
        self.snapshots = self.images = self.errors = 0
        self._latest: str | None = None
        self._threads = [threading.Thread(target=self._events, name="bench-page-events", daemon=True),
                         threading.Thread(target=self._frames, name="bench-page-frames", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=3)

    def counts(self) -> dict[str, int]:
        return {"snapshots": self.snapshots, "images": self.images, "errors": self.errors}

    def _address(self) -> tuple[str, int] | None:
        while not self._stop.is_set():
            http_server = self.daemon.http
            if http_server is not None:
                return http_server.address
            time.sleep(0.01)
        return None

    def _events(self) -> None:
        addr = self._address()
        while addr is not None and not self._stop.is_set():
            try:
                conn = http.client.HTTPConnection(*addr, timeout=5)
                conn.request("GET", "/events")
                resp = conn.getresponse()
                while not self._stop.is_set():
                    line = resp.fp.readline()
                    if not line:
                        break
                    if line.startswith(b"data: "):
                        snap = json.loads(line[6:])
                        self.snapshots += 1
                        self._latest = snap.get("latest_key") if snap.get("latest_has_image") else None
                conn.close()
            except (OSError, ValueError, http.client.HTTPException):
                if self._stop.is_set() or getattr(self.daemon, "_stopping", False):
                    return  # the daemon finished and closed its server: not a page error
                self.errors += 1
                time.sleep(0.2)

    def _frames(self) -> None:
        addr = self._address()
        shown = None
        while addr is not None and not self._stop.wait(0.5):
            key = self._latest
            if key is None or key == shown:
                continue
            try:
                conn = http.client.HTTPConnection(*addr, timeout=5)
                conn.request("GET", f"/frame/{key}.jpg?w=640")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    self.images += 1
                    shown = key
            except (OSError, http.client.HTTPException):
                self.errors += 1
