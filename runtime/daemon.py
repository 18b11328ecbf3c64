"""The fsac-run pipeline: read -> decode/resize -> batch inference -> sinks, for weeks.

Threads and why:

  reader      pulls frames from the source and hands each to the decode pool at once, then
              puts (frame, future) on the bounded queue. every-frame mode: the put blocks
              when the queue is full (back-pressure, nothing skipped). latest-frame mode:
              the oldest waiting frame is dropped and counted instead.
  decode pool decodes and resizes frames (`fsac.preprocess`, the one implementation) while
              the model works on earlier frames; PIL, OpenCV and onnxruntime release the GIL,
              so this overlaps for real even on two cores.
  scorer      takes the oldest frame, waits for its preprocessing, adds whatever further
              frames are already prepared (up to model.batch_size; it never waits for more),
              runs one inference call, then writes the records to every sink in frame order
              and flushes them. Only this thread touches the sinks.
  main        handles signals (SIGTERM/SIGINT: stop, drain, flush, exit 0; SIGHUP: reload the
              model), pings the systemd watchdog while the scorer makes progress, and serves
              nothing else; the HTTP endpoints run on their own thread.

  journal     (runtime/journal.py) fdatasyncs what the scorer appended, then acknowledges
              the inputs (a watched file moved to done/, a frame counted as done), saves
              the sinks' cursors and trims the journal: all off the scoring path.
  deliveries  one thread per durable sink (runtime/delivery.py) reads the journal from the
              sink's cursor and delivers; a failing sink retries and recovers on its own.

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
import math
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


from .backends import LoadedModel, ModelHandle
from .commit import journal_loop, journal_records
from .config import RuntimeConfig, sink_section_enabled
from .exit_report import exit_report
from .prepare import Prepared, prepare
from .sink_set import accepts_raw_bytes, batch_flusher, build_sinks
from .throttle import Throttle
from .delivery import Delivery
from .framequeue import CLOSED, FrameQueue
from .http import StatusServer
from .journal import BLOCK, DROP_OLDEST, Journal
from .metrics import RuntimeMetrics
from .notify import sd_notify, watchdog_interval
from .record import make_record, new_run_id
from .sources import STREAM_KINDS, Frame, Source, make_source

log = logging.getLogger("fsac.runtime")


@dataclass
class Pending:
    frame: Frame
    future: Future


# --------------------------------------------------------------------------- daemon


def _raw_bytes(frame: Frame) -> bytes | None:
    """An undecodable frame's file bytes, which the saved-frames sink keeps for error records."""
    return frame.data if isinstance(frame.data, (bytes, bytearray)) else None


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
            self._close_sinks(time.monotonic() + 1.0)
            self._close_backend()
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
        self._heartbeat = time.monotonic()
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
        if self._stopping:
            return False, "stopping"
        if self.paused.is_set():
            return False, "paused by the operator (live view)"
        if not self._started:
            return False, "starting"
        if not self.source.connected:
            return False, f"source {self.source.label} is not open"
        if self.journal_error:
            return False, f"journal {self.journal.folder} cannot be written: {self.journal_error}"
        for d in self.deliveries:
            if d.failing:
                return False, f"sink {d.name} is failing ({d.last_error}); {d.pending()} records wait in the journal"
        fill = self.journal.fill()
        if fill >= 0.9:
            return False, f"journal {self.journal.folder} is {fill:.0%} full"
        return True, ""

    def sink_stats(self) -> dict[str, dict[str, float]]:
        stats = {d.name: d.stats() for d in self.deliveries}
        for sink in self.live:
            try:
                stats[getattr(sink, "name", type(sink).__name__)] = dict(sink.stats())
            except Exception:
                continue
        return stats

    def render_metrics(self) -> str:
        model = self.handle.current
        info = {"name": model.name, "sha256": model.sha256, "arch": model.info.arch,
                "object": model.info.object_name, "logit_threshold": f"{model.logit_threshold:.6g}",
                "backend": model.backend.name, "image_size": model.info.image_size,
                "precision": getattr(model.backend, "precision", model.info.precision),
                "backend_chosen_by": "auto (measured)" if model.selection is not None else "config"}
        ok, _ = self.ready()
        j = self.journal

        def journal_metrics(e: Any) -> None:
            e.scalar("fsac_journal_records", "gauge", "Records kept in the journal.", j.end - j.first)
            e.scalar("fsac_journal_bytes", "gauge", "Bytes of the journal's segments.", j.nbytes)
            e.scalar("fsac_journal_fill_ratio", "gauge", "Journal size / its bound (bytes or records).", j.fill())
            e.scalar("fsac_journal_blocked_seconds_total", "counter", "Time the scorer waited for journal room "
                     "(back-pressure).", j.blocked_s)
            e.scalar("fsac_records_abandoned_total", "counter", "Records never journaled (shutdown deadline).",
                     self.abandoned)
            e.scalar("fsac_inputs_acknowledged_total", "counter", "Inputs acknowledged after their record was "
                     "durable.", self.acked)
            e.family("fsac_records_lost_total", "counter", "Records a durable sink will never deliver (deleted "
                     "from the full journal first, journal.when_full=drop-oldest).")
            for name, n in sorted(j.lost.items()):
                e.sample("fsac_records_lost_total", n, {"sink": name})

        return self.metrics.render(queue_depth=len(self.queue), reconnects=self.source.reconnects, ready=ok,
                                   source_connected=bool(self.source.connected), model_info=info,
                                   sink_stats=self.sink_stats(), extra=self._extra_metrics(journal_metrics))

    def _extra_metrics(self, journal_metrics: Any) -> Any:
        from .trigger_io import trigger_metrics

        return lambda e: (journal_metrics(e), self.health.metrics(e),
                          trigger_metrics(e, self.trigger) if self.trigger is not None else None)

    # ---------------------------------------------------------------- run

    def run(self) -> int:
        previous = self._install_signal_handlers()
        try:
            try:
                self._start()
            except BaseException:
                self._close_all(deadline=time.monotonic() + 5.0)
                raise
            deadline = self._main_loop()
            return self._finish(deadline)
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
        self._jthread = threading.Thread(target=self._journal_loop, name="fsac-journal", daemon=True)
        self._jthread.start()
        self._reader = threading.Thread(target=self._read_loop, name="fsac-reader", daemon=True)
        self._scorer = threading.Thread(target=self._score_loop, name="fsac-scorer", daemon=True)
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

    def _main_loop(self) -> float:
        """Returns the monotonic deadline by which sinks must be closed."""
        timeout = self.cfg.daemon.shutdown_timeout_s
        wd = watchdog_interval()
        next_ping = 0.0
        drain_deadline = reader_deadline = None
        while self._scorer is not None and self._scorer.is_alive():
            now = time.monotonic()
            if self._sig_reload:
                self._sig_reload = False
                self._reload()
            if self._sig_stop and drain_deadline is None:
                self._begin_stop(now)
                drain_deadline = now + timeout * 0.75  # the rest is for closing the sinks
                reader_deadline = now + min(timeout * 0.3, 3.0)
            if drain_deadline is not None:
                if self._reader is not None and self._reader.is_alive() and now > reader_deadline \
                        and not self.queue.closed:
                    # The source is stuck in a read (a dead network camera): stop waiting for it.
                    log.warning("source did not stop within %.1fs; draining without it", min(timeout * 0.3, 3.0))
                    self.queue.close()
                if now > drain_deadline:
                    self._timed_out = True
                    self._hard_stop.set()
                    log.error("shutdown: %d frames still queued after %.1fs; giving up on them", len(self.queue),
                              timeout * 0.75)
                    break
            if wd is not None and now >= next_ping:
                # Ping only while the scorer makes progress: a hung inference gets us restarted.
                if now - self._heartbeat < max(2 * wd, 5.0):
                    sd_notify("WATCHDOG=1")
                next_ping = now + wd
            time.sleep(0.05)
        if drain_deadline is None:  # the source ended (or something failed): still bounded
            self._begin_stop(time.monotonic())
            return time.monotonic() + timeout * 0.25 + 1.0
        return drain_deadline + timeout * 0.25

    def _begin_stop(self, now: float) -> None:
        if self.trigger is not None:  # requests accepted now could outlive the journal thread
            self.trigger.refuse_new()
        if not self._stopping:
            self._stopping = True
            if self._sig_stop:
                log.info("stop requested: finishing queued frames (%d) and flushing sinks", len(self.queue))
            sd_notify("STOPPING=1")
        self._stop.set()

    def _reload(self) -> None:
        log.info("reloading model %s", self.cfg.model.path)
        if self.handle.reload():
            self.metrics.reloads.inc()
        else:
            self.metrics.reload_failures.inc()

    def _finish(self, deadline: float) -> int:
        self._stop.set()
        self.queue.close()
        lost = len(self.queue.clear()) if self._timed_out else 0
        if self._scorer is not None:
            self._scorer.join(timeout=max(0.0, deadline - time.monotonic()))
        self._stop_journal_thread(deadline)
        # Wait for the durable sinks: at the end of a file source for drain_timeout_s (the job is
        # only done once its results are delivered), at a stop signal within the shutdown time.
        ended = not self._sig_stop and self._failure is None
        wait_until = time.monotonic() + self.cfg.daemon.drain_timeout_s if ended else deadline
        for d in self.deliveries:
            d.wait_delivered(wait_until)
        for d in self.deliveries:
            d.stop(timeout=max(0.1, deadline - time.monotonic()))
        pending = {d.name: d.pending() for d in self.deliveries}
        self._close_all(max(deadline, time.monotonic() + 1.0))
        return exit_report(self, pending, lost, ended)

    def _close_all(self, deadline: float) -> None:
        self._stop.set()
        self._hard_stop.set()
        self.queue.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._reader is not None:
            self._reader.join(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        self._stop_journal_thread(deadline)
        for d in self.deliveries:
            d.stop(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        self._close_sinks(deadline)
        if self.journal is not None:
            try:
                self.journal.close()
            except OSError as e:
                log.error("closing the journal %s failed: %s", self.journal.folder, e)
        if self.webui is not None:
            self.webui.close()
        if self.http is not None:
            self.http.stop()
        if self.opcua is not None:
            self.opcua.stop(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        if self.trigger is not None:
            self.trigger.stop()
        if self._health_pub is not None:
            self._health_pub.close(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        try:
            self.source.close()
        except Exception:
            pass
        self._close_backend()

    def _close_sinks(self, deadline: float) -> None:
        for sink in self.sinks:
            try:
                sink.close(timeout=max(0.5, deadline - time.monotonic()))
            except Exception as e:
                log.error("closing sink %s failed: %s", getattr(sink, "name", sink), e)

    def _close_backend(self) -> None:
        try:
            self.handle.current.backend.close()
        except Exception:
            pass

    def _stop_journal_thread(self, deadline: float) -> None:
        self._jstop.set()
        self._jwake.set()
        if self._jthread is not None and self._jthread.is_alive():
            self._jthread.join(timeout=max(0.5, deadline - time.monotonic()))

    # ---------------------------------------------------------------- threads

    def _read_loop(self) -> None:
        order = self.cfg.source.channel_order
        size = self.cfg.source.frame_size
        try:
            for frame in self.source.frames(self._stop):
                spec = self.handle.current.info.preprocess
                try:
                    future = self._pool.submit(prepare, frame, spec, order, size, self.keep_rgb,
                                               self.cfg.source.max_frame_pixels)
                except RuntimeError:  # pool shut down: we are past the shutdown deadline
                    break
                accepted, dropped = self.queue.put(Pending(frame, future))
                if dropped is not None:
                    dropped.future.cancel()
                    self.metrics.dropped.inc()
                if not accepted:
                    future.cancel()
                    break
                self.metrics.frames_read.inc()
                if self.first_read is None:
                    self.first_read = time.monotonic()
                if self._stop.is_set():
                    break
        except Exception as e:
            log.exception("source %s failed", self.source.label)
            self._failure = f"source failed: {type(e).__name__}: {e}"
        finally:
            self.queue.close()  # the scorer drains what is queued, then ends

    def _score_loop(self) -> None:
        try:
            while True:
                self._heartbeat = time.monotonic()
                if self.paused.is_set() and not self._stop.is_set():  # a stop request ends a pause
                    time.sleep(0.1)
                    continue
                item = self.queue.get(timeout=0.5)
                if item is CLOSED:
                    return
                if item is None:
                    continue
                handle = self._handle_for(item)  # one model per batch: reloads and recipe switches land
                model = handle.current            # between batches
                self._prepared(item)  # the oldest frame first: waiting for it is unavoidable
                more = self.queue.take_ready(model.backend.max_batch - 1, lambda p: p.future.done() and self._handle_for(p) is handle)
                self._score_batch([item, *more], model)
        except Exception as e:
            log.exception("scoring failed")
            self._failure = f"scoring failed: {type(e).__name__}: {e}"
            self._stop.set()
            self.queue.close()

    def _handle_for(self, item: Pending) -> Any:
        """The model a frame is scored with: its request's recipe (trigger mode), else the active one."""
        recipe = getattr(item.frame, "recipe", None)
        return self.recipes.handle(recipe) if recipe else self.handle

    @staticmethod
    def _prepared(item: Pending) -> Prepared:
        try:
            return item.future.result()
        except CancelledError:
            return Prepared(None, None, None, "frame abandoned at shutdown")

    def _score_batch(self, batch: list[Pending], model: LoadedModel) -> None:
        spec = model.info.preprocess
        preps = [self._prepared(it) for it in batch]
        errors: list[str | None] = [p.error for p in preps]
        inputs, rows = [], []
        for i, (item, prep) in enumerate(zip(batch, preps)):
            if prep.error is not None:
                continue
            if prep.spec != spec:
                # Prepared for the model before a reload that changed the preprocessing.
                prep = preps[i] = prepare(item.frame, spec, self.cfg.source.channel_order, self.cfg.source.frame_size,
                                          self.keep_rgb, self.cfg.source.max_frame_pixels)
                if prep.error is not None:
                    errors[i] = prep.error
                    continue
            inputs.append(prep.x)
            rows.append(i)
        results: dict[int, dict[str, float]] = {}
        if inputs:
            t0 = time.monotonic()
            try:
                out = model.backend.infer(np.stack(inputs))
                for k, i in enumerate(rows):
                    results[i] = {name: float(values[k]) for name, values in out.items()}
            except Exception as e:
                msg = f"inference failed: {type(e).__name__}: {e}"
                self._infer_errors(logging.ERROR, "%s", msg)
                for i in rows:
                    errors[i] = msg
            self.metrics.inference_seconds.observe(time.monotonic() - t0)
            self.metrics.batches.inc()
        t_done = time.monotonic()
        records = []
        for i, item in enumerate(batch):
            frame = item.frame
            latency = t_done - frame.t_mono
            seq = 0  # numbered when appended
            if i in results and all(math.isfinite(results[i][k]) for k in ("logit", "sim_normal", "sim_anomalous")):
                record = make_record(frame, model, latency, results[i], run_id=self.run_id, seq=seq,
                                     station=self.station)
            else:
                error = errors[i] or "model returned a non-finite score"
                self._frame_errors(logging.WARNING, "frame %d (%s): %s", frame.frame_id, frame.name or frame.source,
                                   error)
                record = make_record(frame, model, latency, error=error, run_id=self.run_id, seq=seq,
                                     station=self.station)
            records.append(record)
        recipe = self.recipes.name_of(model)
        for record in records:
            record["recipe"] = recipe
        self.health.annotate(records, preps, model)
        if self.trigger is not None:  # exactly one result per request: drop those the deadline answered
            from .trigger_io import settle_batch

            batch, records, preps = settle_batch(self, batch, records, preps)
        self._stage(batch, records, preps)
        # Durable first: the journal holds the batch before any input is acknowledged.
        if records and not self.journal_records([(item.frame, r) for item, r in zip(batch, records)]):
            return
        for i, (item, record) in enumerate(zip(batch, records)):
            frame = item.frame
            if self.live:
                if record["verdict"] != "error":
                    self._emit(record, preps[i].rgb)
                else:
                    self._emit(record, None, _raw_bytes(frame))
            self.metrics.frames.inc()
            if record["verdict"] == "defective":
                self.metrics.anomalies.inc()
            elif record["verdict"] == "error":
                self.metrics.errors.inc()
            self.metrics.latency.observe(t_done - frame.t_mono)
            # The pixels are done with (staged, scored, shown); the frame itself waits for its
            # acknowledgement up to journal.commit_interval_s, and at 30 fps of 5 MP frames the
            # pixels would be ~15 MB each of that wait.
            frame.data = None
        for sink, flush in zip(self.live, self._flushers):
            try:
                flush()
            except Exception as e:
                self.metrics.sink_error(getattr(sink, "name", "?"))
                self._sink_errors(logging.ERROR, "sink %s flush failed: %s", getattr(sink, "name", sink), e)
        self.last_written = time.monotonic()

    def _stage(self, batch: list[Pending], records: list[dict[str, Any]], preps: list[Prepared]) -> None:
        """Hand the pixels to the durable sinks that save them, before the records are journaled."""
        for sink in self._stagers:
            for item, record, prep in zip(batch, records, preps):
                try:
                    sink.stage(record, prep.rgb if record["verdict"] != "error" else _raw_bytes(item.frame))
                except Exception as e:
                    self.metrics.sink_error(sink.name)
                    self._sink_errors(logging.ERROR, "sink %s cannot stage frame %d: %s", sink.name,
                                      record["frame_id"], e)

    def journal_records(self, pairs: list[tuple[Frame, dict[str, Any]]]) -> bool:
        """Number, append and queue for acknowledgement (after fdatasync) a batch of records."""
        return journal_records(self, pairs)

    def _journal_loop(self) -> None:
        journal_loop(self)

    def _emit(self, record: dict[str, Any], image: np.ndarray | None, raw: bytes | None = None) -> None:
        """Hand a record to the live (non-journal) sinks: saved frames, which need the pixels."""
        for sink, takes_raw in zip(self.live, self._takes_raw):
            try:
                # A copy per sink: one sink decorating its record must not change the next one's.
                sink.write(dict(record), raw if image is None and takes_raw else image)
            except Exception as e:
                self.metrics.sink_error(getattr(sink, "name", "?"))
                self._sink_errors(logging.ERROR, "sink %s failed to take frame %d: %s", getattr(sink, "name", sink),
                                  record["frame_id"], e)
