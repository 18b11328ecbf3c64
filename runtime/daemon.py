"""The fsac-run pipeline: read -> decode/resize -> batch inference -> sinks, for weeks.

The `Daemon` holds one run's state and starts its threads; what each thread does lives in
its own module, as functions of the daemon:

  reader, decode pool, scorer   runtime/scorer.py
  main                          runtime/lifecycle.py (signals, watchdog, drain, close)
  journal     (runtime/commit.py, runtime/journal.py) fdatasyncs what the scorer appended,
              then acknowledges the inputs (a watched file moved to done/, a frame counted
              as done), saves the sinks' cursors and trims the journal: all off the scoring
              path.
  deliveries  one thread per durable sink (runtime/delivery.py) reads the journal from the
              sink's cursor and delivers; a failing sink retries and recovers on its own.
  http        /healthz /readyz /metrics (runtime/http.py, runtime/status.py), the live
              page, the trigger API.

Records are written in frame order with no gaps: a frame that cannot be scored (corrupt
file, wrong size or channel count, an inference error) gets an error record, so
"frame_id k has a record" holds for every frame read (latest-frame mode drops are counted,
not recorded). Every record carries the run's `run_id` and its `seq` (0, 1, ... per run),
so a consumer can tell a record delivered again after a restart from a new one.

Exit status: 0 when every frame read has its record in the journal and nothing was lost;
1 after a failure, a record lost (journal bound in drop-oldest mode, abandoned at the
shutdown deadline) or, at the end of a folder or video source, records still undelivered
after daemon.drain_timeout_s. Records still pending at a SIGTERM stay in the journal and are
delivered on the next start (logged; not a loss).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import lifecycle, scorer, status
from .backends import ModelHandle
from .commit import journal_loop, journal_records
from .config import RuntimeConfig, sink_section_enabled
from .sink_set import accepts_raw_bytes, batch_flusher, build_sinks
from .throttle import Throttle
from .delivery import Delivery
from .framequeue import FrameQueue
from .http import StatusServer
from .journal import BLOCK, DROP_OLDEST, Journal
from .metrics import RuntimeMetrics
from .notify import sd_notify
from .record import new_run_id
from .sources import STREAM_KINDS, Frame, Source, make_source

__all__ = ["Daemon", "build_sinks"]  # build_sinks: tests build a daemon's sinks the same way

log = logging.getLogger("fsac.runtime")


class Daemon:
    """One run of fsac-run. `run()` blocks until the source ends or a stop is requested and
    returns the exit code (see the module docstring)."""

    def __init__(self, cfg: RuntimeConfig, *, handle: ModelHandle | None = None, source: Source | None = None,
                 sinks: list[Any] | None = None, install_signals: bool = True) -> None:
        self.cfg = cfg
        self.metrics = RuntimeMetrics()
        self.handle = handle if handle is not None else ModelHandle(cfg.model)
        self.sinks: list[Any] = []
        self.journal: Journal | None = None
        try:
            self.source = source if source is not None or not cfg.source.uri else make_source(cfg.source)
            if self.source is not None and cfg.journal.dir:
                self.source.use_state_dir(cfg.journal.dir)  # a watch folder's memory of scored files
            self.trigger = None
            if cfg.source.mode == "trigger":  # one frame per inspection request (runtime/trigger.py)
                from .trigger_io import attach_trigger

                self.trigger, self.source = attach_trigger(self, self.source)
            self.sinks = list(sinks) if sinks is not None else build_sinks(cfg.sinks)
            self.durable = [s for s in self.sinks if getattr(s, "durable", False)]
            self.live = [s for s in self.sinks if not getattr(s, "durable", False)]
            jc = cfg.journal
            when_full = jc.when_full
            if when_full == "auto":
                when_full = DROP_OLDEST if self.source.kind in STREAM_KINDS else BLOCK
            self.journal = Journal(jc.dir, [s.name for s in self.durable], max_bytes=jc.max_bytes,
                                   max_records=jc.max_records, sync=jc.sync, when_full=when_full,
                                   cursor_interval_s=jc.cursor_interval_s)
            self.webui = self._make_webui(cfg)
        except BaseException:
            lifecycle.close_sinks(self, time.monotonic() + 1.0)
            lifecycle.close_backend(self)
            raise
        self.deliveries = [Delivery(s, self.journal) for s in self.durable]
        self.run_id = new_run_id()
        self._seq = 0
        from .recipes import RecipeBook

        self.recipes = RecipeBook(self)
        from .health import HealthMonitor

        self.health = HealthMonitor()
        self._health_pub = None
        if sink_section_enabled(cfg.sinks.mqtt):  # alarms as retained MQTT status events
            from .health_mqtt import HealthPublisher

            self._health_pub = self.health.on_change = HealthPublisher(cfg.sinks.mqtt)
        self.station = (cfg.station.site, cfg.station.line, cfg.station.station)
        self._append_lock = threading.Lock()  # seq order == journal order (the trigger deadline appends too)
        # Decoded pixels are kept only if some sink saves them (memory: queue_size frames).
        self.keep_rgb = any(getattr(s, "needs_images", False) for s in self.sinks)
        # Durable sinks that want pixels (saved frames) get them staged before the record is
        # journaled, so their cursor finds them when it reaches the record.
        self._stagers = [s for s in self.durable if callable(getattr(s, "stage", None))]
        self._flushers = [batch_flusher(s) for s in self.live]
        self._takes_raw = [accepts_raw_bytes(s) for s in self.live]
        self.queue = FrameQueue(cfg.source.queue_size, drop_oldest=cfg.source.mode == "latest-frame")
        self.install_signals = install_signals
        self.http: StatusServer | None = None
        self.opcua: Any = None  # runtime/opcua.py, when opcua.enabled
        self._pool = ThreadPoolExecutor(max_workers=cfg.source.decode_workers, thread_name_prefix="fsac-prep")
        self._stop = threading.Event()  # tells the reader (and the source) to stop reading
        self._hard_stop = threading.Event()  # past the drain deadline: a blocked journal append gives up
        self._sig_stop = False  # set from signal handlers: plain flags only, no locks there
        self._sig_reload = False
        self._failure: str | None = None
        self._timed_out = False
        self._heartbeat = time.monotonic()  # the scorer's last step (runtime/lifecycle.py `alive`)
        self._wait_beat = 0.0  # the scorer's last round of waiting for the journal
        self._jbeat = time.monotonic()  # the journal thread's last round
        self._reload_thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._scorer: threading.Thread | None = None
        self._jthread: threading.Thread | None = None
        self._jstop = threading.Event()
        self._jwake = threading.Event()
        self._acks: deque[tuple[int, list[tuple[Frame, dict[str, Any]]]]] = deque()
        self._ack_lock = threading.Lock()
        self.acked = 0
        self.abandoned = 0  # records that could not be journaled before the shutdown deadline
        self.journal_error: str | None = None
        self._started = False
        self._stopping = False
        self._frame_errors = Throttle()
        self._sink_errors = Throttle()
        self._infer_errors = Throttle()
        self._journal_errors = Throttle(10.0)
        self.first_read: float | None = None
        self.last_written: float | None = None

    # ---------------------------------------------------------------- control

    def request_stop(self) -> None:
        """Stop reading, drain, flush, return from run() (what SIGTERM does)."""
        self._sig_stop = True

    def request_reload(self) -> None:
        """Reload the model file (what SIGHUP does)."""
        self._sig_reload = True

    def _make_webui(self, cfg: RuntimeConfig) -> Any:
        """The live view (runtime/webui.py), a live sink that follows the journal; None if off."""
        self.paused = threading.Event()  # the operator paused scoring from the page
        if not (cfg.http.enabled and cfg.live.enabled):
            return None
        from .webui import WebUI, check_access

        if not cfg.live.feedback_dir:
            cfg.live.feedback_dir = os.path.join(os.path.dirname(os.path.abspath(cfg.journal.dir)), "fsac-feedback")
        webui = WebUI(self, cfg.live, check_access(cfg.http.host))
        self.sinks.append(webui.state)
        self.live.append(webui.state)
        return webui

    def pause(self, on: bool) -> None:
        """Pause or resume scoring (the page's buttons). Paused, frames wait in the queue: the
        reader then blocks (every-frame) or drops the oldest (latest-frame), as under load."""
        if on != self.paused.is_set():
            log.warning("scoring %s by the operator", "paused" if on else "resumed")
        (self.paused.set if on else self.paused.clear)()

    def ready(self) -> tuple[bool, str]:
        return status.ready(self)

    def sink_stats(self) -> dict[str, dict[str, float]]:
        return status.sink_stats(self)

    def render_metrics(self) -> str:
        return status.render_metrics(self)

    # ---------------------------------------------------------------- run

    def run(self) -> int:
        previous = self._install_signal_handlers()
        try:
            try:
                self._start()
            except BaseException:
                lifecycle.close_all(self, deadline=time.monotonic() + 5.0)
                raise
            deadline = lifecycle.main_loop(self)
            return lifecycle.finish(self, deadline)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self) -> None:
        self.source.open()
        if self.cfg.http.enabled:
            self.http = StatusServer(self.cfg.http.host, self.cfg.http.port, metrics=self.render_metrics,
                                     ready=self.ready, app=self.webui, post=self._post_routes())
            self.http.start()
            host, port = self.http.address
            if self.webui is not None:
                self.webui.start()
                log.info("live view: http://%s:%d/%s", host, port, " (token: FSAC_RUN_TOKEN)" if self.webui.token else "")
            if self.cfg.http.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("http endpoints listen on %s, not only on this machine", self.cfg.http.host)
            log.info("http: /healthz /readyz /metrics on http://%s:%d", host, port)
        for d in self.deliveries:
            d.start()
        from .opcua_settings import parse_opcua

        if (opcua := parse_opcua(self.cfg.opcua)) is not None:
            from .opcua import OpcuaServer

            self.opcua = OpcuaServer(self, opcua)
            self.opcua.start()
        if self.trigger is not None:
            self.trigger.start()
        self._jthread = threading.Thread(target=journal_loop, args=(self,), name="fsac-journal", daemon=True)
        self._jthread.start()
        self._reader = threading.Thread(target=scorer.read_loop, args=(self,), name="fsac-reader", daemon=True)
        self._scorer = threading.Thread(target=scorer.score_loop, args=(self,), name="fsac-scorer", daemon=True)
        self._scorer.start()
        self._reader.start()
        self._started = True
        model = self.handle.current
        names = ", ".join(getattr(s, "name", type(s).__name__) for s in self.sinks) or "none"
        log.info("model: %s", model.describe())
        log.info("source: %s %s, %s, queue %d; sinks: %s", self.source.kind, self.source.label, self.cfg.source.mode,
                 self.cfg.source.queue_size, names)
        j = self.journal
        backlog = {d.name: d.pending() for d in self.deliveries if d.pending()}
        log.info("journal: %s, run %s, %d records kept (%s when full)%s", j.folder, self.run_id, j.end - j.first,
                 j.when_full, "; replaying " + ", ".join(f"{n} to {k}" for k, n in backlog.items()) if backlog else "")
        sd_notify(f"READY=1\nSTATUS=scoring {self.source.kind} {self.source.label}")

    def _post_routes(self) -> dict[str, Any]:
        routes = {"/v1/recipe": self.recipes.http_switch}
        if self.trigger is None:
            return routes
        from .trigger_io import http_inspect

        return {**routes, "/v1/inspect": lambda headers, body: http_inspect(self.trigger, self.cfg, headers, body)}

    def _install_signal_handlers(self) -> dict[int, Any]:
        if not self.install_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def on_stop(signum: int, _frame: Any) -> None:
            if self._sig_stop:
                # Second signal: the operator insists. Records still queued are lost.
                os.write(2, b"fsac-run: second stop signal, exiting without draining\n")
                os._exit(128 + signum)
            self._sig_stop = True

        def on_hup(_signum: int, _frame: Any) -> None:
            self._sig_reload = True

        for sig, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup)):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def journal_records(self, pairs: list[tuple[Frame, dict[str, Any]]]) -> bool:
        """Number, append and queue for acknowledgement (after fdatasync) a batch of records."""
        return journal_records(self, pairs)
