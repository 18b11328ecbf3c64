"""The scoring path of fsac-run: the reader thread, the decode pool's work, and the scorer.

  reader      pulls frames from the source and hands each to the decode pool at once, then
              puts (frame, future) on the bounded queue. every-frame mode: the put blocks
              when the queue is full (back-pressure, nothing skipped). latest-frame mode:
              the oldest waiting frame is dropped and counted instead.
  decode pool decodes and resizes frames (`fsac.preprocess`, the one implementation) while
              the model works on earlier frames; PIL, OpenCV and onnxruntime release the GIL,
              so this overlaps for real even on two cores.
  scorer      takes the oldest frame, waits for its preprocessing, adds whatever further
              frames are already prepared (up to model.batch_size; it never waits for more),
              runs one inference call, journals the records (runtime/commit.py), then hands
              them to the live sinks in frame order and flushes them. Only this thread
              touches the live sinks.

Functions of the daemon (`d`, runtime/daemon.py), which holds the state they share, as
runtime/commit.py's are.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import LoadedModel
from .framequeue import CLOSED
from .prepare import Prepared, prepare
from .record import make_record
from .sources import Frame

log = logging.getLogger("fsac.runtime")


@dataclass
class Pending:
    frame: Frame
    future: Future


def raw_bytes(frame: Frame) -> bytes | None:
    """An undecodable frame's file bytes, which the saved-frames sink keeps for error records."""
    return frame.data if isinstance(frame.data, (bytes, bytearray)) else None


def read_loop(d: Any) -> None:
    order = d.cfg.source.channel_order
    size = d.cfg.source.frame_size
    try:
        for frame in d.source.frames(d._stop):
            spec = d.handle.current.info.preprocess
            try:
                future = d._pool.submit(prepare, frame, spec, order, size, d.keep_rgb,
                                           d.cfg.source.max_frame_pixels)
            except RuntimeError:  # pool shut down: we are past the shutdown deadline
                break
            accepted, dropped = d.queue.put(Pending(frame, future))
            if dropped is not None:
                dropped.future.cancel()
                d.metrics.dropped.inc()
            if not accepted:
                future.cancel()
                break
            d.metrics.frames_read.inc()
            if d.first_read is None:
                d.first_read = time.monotonic()
            if d._stop.is_set():
                break
    except Exception as e:
        log.exception("source %s failed", d.source.label)
        d._failure = f"source failed: {type(e).__name__}: {e}"
    finally:
        d.queue.close()  # the scorer drains what is queued, then ends


def score_loop(d: Any) -> None:
    try:
        while True:
            d._heartbeat = time.monotonic()
            if d.paused.is_set() and not d._stop.is_set():  # a stop request ends a pause
                time.sleep(0.1)
                continue
            item = d.queue.get(timeout=0.5)
            if item is CLOSED:
                return
            if item is None:
                continue
            handle = handle_for(d, item)  # one model per batch: reloads and recipe switches land
            model = handle.current            # between batches
            prepared(item)  # the oldest frame first: waiting for it is unavoidable
            more = d.queue.take_ready(model.backend.max_batch - 1, lambda p: p.future.done() and handle_for(d, p) is handle)
            score_batch(d, [item, *more], model)
    except Exception as e:
        log.exception("scoring failed")
        d._failure = f"scoring failed: {type(e).__name__}: {e}"
        d._stop.set()
        d.queue.close()


def handle_for(d: Any, item: Pending) -> Any:
    """The model a frame is scored with: its request's recipe (trigger mode), else the active one."""
    recipe = getattr(item.frame, "recipe", None)
    return d.recipes.handle(recipe) if recipe else d.handle


def prepared(item: Pending) -> Prepared:
    try:
        return item.future.result()
    except CancelledError:
        return Prepared(None, None, None, "frame abandoned at shutdown")


def score_batch(d: Any, batch: list[Pending], model: LoadedModel) -> None:
    spec = model.info.preprocess
    preps = [prepared(it) for it in batch]
    errors: list[str | None] = [p.error for p in preps]
    inputs, rows = [], []
    for i, (item, prep) in enumerate(zip(batch, preps)):
        if prep.error is not None:
            continue
        if prep.spec != spec:
            # Prepared for the model before a reload that changed the preprocessing.
            prep = preps[i] = prepare(item.frame, spec, d.cfg.source.channel_order, d.cfg.source.frame_size,
                                      d.keep_rgb, d.cfg.source.max_frame_pixels)
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
            d._infer_errors(logging.ERROR, "%s", msg)
            for i in rows:
                errors[i] = msg
        d.metrics.inference_seconds.observe(time.monotonic() - t0)
        d.metrics.batches.inc()
    t_done = time.monotonic()
    records = []
    for i, item in enumerate(batch):
        frame = item.frame
        latency = t_done - frame.t_mono
        seq = 0  # numbered when appended
        if i in results and all(math.isfinite(results[i][k]) for k in ("logit", "sim_normal", "sim_anomalous")):
            record = make_record(frame, model, latency, results[i], run_id=d.run_id, seq=seq,
                                 station=d.station)
        else:
            error = errors[i] or "model returned a non-finite score"
            d._frame_errors(logging.WARNING, "frame %d (%s): %s", frame.frame_id, frame.name or frame.source,
                               error)
            record = make_record(frame, model, latency, error=error, run_id=d.run_id, seq=seq,
                                 station=d.station)
        records.append(record)
    recipe = d.recipes.name_of(model)
    for record in records:
        record["recipe"] = recipe
    d.health.annotate(records, preps, model)
    if d.trigger is not None:  # exactly one result per request: drop those the deadline answered
        from .trigger_io import settle_batch

        batch, records, preps = settle_batch(d, batch, records, preps)
    stage(d, batch, records, preps)
    # Durable first: the journal holds the batch before any input is acknowledged.
    if records and not d.journal_records([(item.frame, r) for item, r in zip(batch, records)]):
        return
    for i, (item, record) in enumerate(zip(batch, records)):
        frame = item.frame
        if d.live:
            if record["verdict"] != "error":
                emit(d, record, preps[i].rgb)
            else:
                emit(d, record, None, raw_bytes(frame))
        d.metrics.frames.inc()
        if record["verdict"] == "defective":
            d.metrics.anomalies.inc()
        elif record["verdict"] == "error":
            d.metrics.errors.inc()
        d.metrics.latency.observe(t_done - frame.t_mono)
        # The pixels are done with (staged, scored, shown); the frame itself waits for its
        # acknowledgement up to journal.commit_interval_s, and at 30 fps of 5 MP frames the
        # pixels would be ~15 MB each of that wait.
        frame.data = None
    for sink, flush in zip(d.live, d._flushers):
        try:
            flush()
        except Exception as e:
            d.metrics.sink_error(getattr(sink, "name", "?"))
            d._sink_errors(logging.ERROR, "sink %s flush failed: %s", getattr(sink, "name", sink), e)
    d.last_written = time.monotonic()


def stage(d: Any, batch: list[Pending], records: list[dict[str, Any]], preps: list[Prepared]) -> None:
    """Hand the pixels to the durable sinks that save them, before the records are journaled."""
    for sink in d._stagers:
        for item, record, prep in zip(batch, records, preps):
            try:
                sink.stage(record, prep.rgb if record["verdict"] != "error" else raw_bytes(item.frame))
            except Exception as e:
                d.metrics.sink_error(sink.name)
                d._sink_errors(logging.ERROR, "sink %s cannot stage frame %d: %s", sink.name,
                                  record["frame_id"], e)


def emit(d: Any, record: dict[str, Any], image: np.ndarray | None, raw: bytes | None = None) -> None:
    """Hand a record to the live (non-journal) sinks: saved frames, which need the pixels."""
    for sink, takes_raw in zip(d.live, d._takes_raw):
        try:
            # A copy per sink: one sink decorating its record must not change the next one's.
            sink.write(dict(record), raw if image is None and takes_raw else image)
        except Exception as e:
            d.metrics.sink_error(getattr(sink, "name", "?"))
            d._sink_errors(logging.ERROR, "sink %s failed to take frame %d: %s", getattr(sink, "name", sink),
                              record["frame_id"], e)


