"""Trigger mode (source.mode=trigger): one inspection request -> one frame -> one result.

A PLC (through HTTP `POST /v1/inspect` or an MQTT command topic) says "part P-1234 is in
front of the camera". The request gets a frame id at once and waits in `TriggerHub`; the
reader (TriggerSource) takes requests in order and yields, for each, the image sent with
the request or the next frame of the configured source captured after the request arrived.
The frame then goes through the daemon's ordinary pipeline (decode pool, batch inference,
journal) and the request is answered from the journal thread's acknowledgement hook, i.e.
only once its record is durable.

Exactly one result per request, within trigger.deadline_s:
  - the scorer `claim`s a request when its record is ready; a claim after the deadline
    turns the record into verdict error ("deadline exceeded"), the line's reject;
  - the deadline watcher answers a request nobody claimed in time (camera lost, model hung,
    queue stuck) with an error record that it journals itself (Daemon.journal_extra); the
    frame, if it is scored later, gets no second record (the daemon counts it as written:
    its record is that error record);
  - a request id seen before returns the same request object: answered once.
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from fsac.errors import FsacError

from .config import TriggerConfig
from .metrics import histogram
from .sources import ENCODED, STREAM_KINDS, Frame, Source

log = logging.getLogger("fsac.runtime")

PENDING, CLAIMED, TIMED_OUT, ANSWERED = "pending", "claimed", "timed-out", "answered"
# Request-to-answer seconds: a PLC's window is typically 50 ms .. a few seconds.
TRIGGER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Stopping(FsacError):
    """A request that arrives once the daemon has begun to stop (HTTP answers 503)."""


@dataclass
class Request:
    request_id: str
    part_id: str
    image: bytes | None
    frame_id: int
    t_mono: float
    t_wall: float
    deadline: float  # monotonic
    recipe: str | None = None  # scored with this recipe's model instead of the active one
    state: str = PENDING
    record: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    after_answer: list[Callable[[], None]] = field(default_factory=list)  # run once the answer is durable


@dataclass
class TriggerFrame(Frame):
    """A frame scored for one request: make_record echoes part_id and request_id."""

    part_id: str | None = None
    request_id: str | None = None
    recipe: str | None = None
    request: Request | None = None
    inner: Frame | None = None  # the source's own frame (its on_result hook acknowledges it)


# Refused in ids: control characters (C0, DEL, C1 such as U+0085), line and paragraph
# separators (they break log lines and str.splitlines readers of the JSONL), and lone
# surrogates: JSON's "\ud800" decodes to one, and it cannot be encoded as UTF-8, so the
# record could never be journaled (it stopped the daemon).
_BAD_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")


def _text(value: Any, name: str, limit: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or any(
            unicodedata.category(c) in _BAD_CATEGORIES for c in value):
        raise FsacError(f"{name}: expected non-empty text without control characters, at most {limit} "
                        f"characters, got {value!r:.80}")
    return value


class TriggerHub:
    """Requests waiting for a frame, their deadlines, and the answers."""

    def __init__(self, cfg: TriggerConfig, source_label: str,
                 on_timeout: Callable[[Request, str], None]) -> None:
        self.cfg = cfg
        self.source_label = source_label
        self._on_timeout = on_timeout  # journals the fail-safe record, then answers (daemon)
        self._lock = threading.Condition()
        self._queue: deque[Request] = deque()  # waiting for the reader, in arrival order
        self._open: dict[str, Request] = {}  # not answered yet (deadline watch)
        self._seen: OrderedDict[str, Request] = OrderedDict()  # dedup: the last cfg.remember ids
        self._next_frame = 0
        self.latency = histogram("fsac_trigger_latency_seconds", "Seconds from inspection request to answer (record "
                                 "durable).", TRIGGER_BUCKETS)
        self.requests = 0
        self.duplicates = 0
        self.timeouts = 0
        self.late = 0  # claimed past the deadline: answered with verdict error
        self.refused = 0  # max_pending reached
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="fsac-trigger", daemon=True)
        self.source_state: Callable[[], str] = lambda: ""
        self.resolve_recipe: Callable[[str], Any] = lambda name: None  # raises FsacError if unusable
        self.switch_recipe: Callable[[str], Any] = lambda name: None  # an MQTT {"recipe": NAME} command
        self.inputs: list[Any] = []  # request inputs started and stopped with the hub (MQTT commands)
        self.accepting = True  # False from the start of a shutdown (refuse_new)

    def start(self) -> None:
        self._watcher.start()
        for inp in self.inputs:
            inp.start()

    def refuse_new(self) -> None:
        """From the start of a shutdown on: no new request is accepted (`Stopping`), so none can
        arrive after the journal thread that would answer it has stopped."""
        with self._lock:
            self.accepting = False

    def stop(self) -> None:
        self.refuse_new()
        for inp in self.inputs:
            try:
                inp.stop()
            except Exception as e:
                log.warning("trigger: stopping %s failed: %s", type(inp).__name__, e)
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    # ------------------------------------------------------------- requests in

    def submit(self, part_id: Any, request_id: Any = None, image: bytes | None = None,
               recipe: Any = None) -> tuple[Request, bool]:
        """Accept a request; returns (request, duplicate). Raises FsacError for a bad request."""
        part_id = _text(part_id, "part_id")
        if recipe is not None:
            recipe = _text(recipe, "recipe")
            self.resolve_recipe(recipe)  # loaded and verified now, not on the scoring path
        request_id = _text(request_id, "request_id") if request_id is not None else uuid.uuid4().hex
        if image is not None and len(image) > self.cfg.max_image_bytes:
            raise FsacError(f"image: {len(image)} bytes, above trigger.max_image_bytes={self.cfg.max_image_bytes}")
        now = time.monotonic()
        with self._lock:
            old = self._seen.get(request_id)
            if old is not None:
                self.duplicates += 1
                return old, True
            if not self.accepting:
                raise Stopping("fsac-run is stopping: no new inspection requests (send it to the restarted daemon)")
            req = Request(request_id, part_id, image, self._next_frame, now, time.time(), now + self.cfg.deadline_s,
                          recipe)
            self._next_frame += 1
            self.requests += 1
            self._seen[request_id] = req
            while len(self._seen) > self.cfg.remember:
                self._seen.popitem(last=False)
            self._open[request_id] = req
            if len(self._queue) >= self.cfg.max_pending:
                full = True
            else:
                full = False
                self._queue.append(req)
                self._lock.notify_all()
        if full:
            self.refused += 1
            self._expire(req, f"{self.cfg.max_pending} requests already wait for a frame (trigger.max_pending)")
        return req, False

    def wait(self, req: Request, grace: float = 5.0) -> dict[str, Any] | None:
        """The answer; None if even the fail-safe record could not be journaled in time."""
        req.done.wait(max(0.0, req.deadline - time.monotonic()) + grace)
        return req.record

    # ------------------------------------------------------------- reader side

    def next_request(self, stop: threading.Event) -> Request | None:
        with self._lock:
            while not self._queue:
                if stop.is_set() or self._stop.is_set():
                    return None
                self._lock.wait(0.1)
            return self._queue.popleft()

    def still_open(self, req: Request) -> bool:
        with self._lock:
            return req.state == PENDING

    # ------------------------------------------------------------- scorer and journal side

    def claim(self, req: Request) -> bool:
        """The scorer's record will answer this request (False: the deadline already did)."""
        with self._lock:
            if req.state != PENDING:
                return False
            req.state = CLAIMED
            return True

    def answer(self, req: Request, record: dict[str, Any]) -> None:
        """Called once the request's record is durable in the journal."""
        with self._lock:
            if req.state == ANSWERED:
                return
            req.state = ANSWERED
            req.record = record
            # The request stays in _seen (trigger.remember of them) to answer a duplicate; its
            # image is not needed for that, and 10000 kept images of a few MB each is no bound.
            req.image = None
            self._open.pop(req.request_id, None)
            then, req.after_answer = req.after_answer, []
        self.latency.observe(time.monotonic() - req.t_mono)
        req.done.set()
        for ack in then:
            try:
                ack()
            except Exception:
                log.exception("trigger: acknowledging the input of request %s failed", req.request_id)

    def after_answer(self, req: Request, ack: Callable[[], None]) -> None:
        """Run `ack` once the request's answer is durable: now if it is, else when it is."""
        with self._lock:
            if req.state != ANSWERED:
                req.after_answer.append(ack)
                return
        ack()

    def _expire(self, req: Request, reason: str) -> None:
        with self._lock:
            if req.state != PENDING:
                return
            req.state = TIMED_OUT
        self.timeouts += 1
        try:
            self._on_timeout(req, reason)
        except Exception:
            log.exception("trigger: the fail-safe record of request %s could not be journaled", req.request_id)

    def _watch(self) -> None:
        """Answer requests at their deadline. Sleeps until the earliest open deadline (submit and
        stop wake it): it had polled every 5 ms, and on 2 cores a thread waking 200 times a
        second while a request was scored slowed the inference itself (OpenVINO int8 on all
        threads, measured: p50 115-137 ms with it, 102-104 without, 103 bare)."""
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                pending = [r for r in self._open.values() if r.state == PENDING]
                due = [r for r in pending if r.deadline <= now]
                if not due:
                    if not self._stop.is_set():  # stop() sets it, then notifies under this lock
                        nearest = min((r.deadline for r in pending), default=now + 1.0)
                        self._lock.wait(min(1.0, max(0.001, nearest - now)))
                    continue
            for req in due:
                where = self.source_state()
                self._expire(req, f"deadline exceeded: no result within trigger.deadline_s={self.cfg.deadline_s:g}s"
                             + (f" ({where})" if where else ""))

    def fail(self, req: Request, reason: str) -> None:
        """A request that cannot get a frame (source ended): the fail-safe answer now."""
        self._expire(req, reason)


class TriggerSource(Source):
    """Frames on request: wraps the configured source (or none: images come with requests)."""

    def __init__(self, inner: Source | None, hub: TriggerHub, label: str) -> None:
        self.inner = inner
        self.hub = hub
        self.kind = inner.kind if inner is not None else "trigger"
        self.label = inner.label if inner is not None else label
        self._connected = inner is None
        self._it: Iterator[Frame] | None = None

    @property
    def connected(self) -> bool:
        return self.inner.connected if self.inner is not None else self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        self._connected = value

    @property
    def reconnects(self) -> int:
        return self.inner.reconnects if self.inner is not None else 0

    def open(self) -> None:
        if self.inner is not None:
            self.inner.open()

    def check(self) -> str:
        return self.inner.check() if self.inner is not None else "images sent with the requests"

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        while not stop.is_set():
            req = self.hub.next_request(stop)
            if req is None:
                return
            image = req.image  # before still_open: answer() drops it once the request is answered
            if not self.hub.still_open(req):  # the deadline answered it while it waited
                continue
            if image is not None:
                yield self._for(req, ENCODED, image, None)
                continue
            inner = self._inner_frame(req, stop)
            if inner is not None:
                yield self._for(req, inner.kind, inner.data, inner)

    def _inner_frame(self, req: Request, stop: threading.Event) -> Frame | None:
        if self.inner is None:
            self.hub.fail(req, "no source configured (source.uri) and no image sent with the request")
            return None
        if self._it is None:
            self._it = iter(self.inner.frames(stop))
        live = self.inner.kind in STREAM_KINDS
        while not stop.is_set():
            try:
                frame = next(self._it)
            except StopIteration:
                self.hub.fail(req, f"source {self.label} has no more frames")
                return None
            # A live camera's frame from before the trigger shows the previous part.
            if live and frame.t_mono < req.t_mono and frame.error is None:
                continue
            return frame
        return None

    def _for(self, req: Request, kind: str, data: Any, inner: Frame | None) -> TriggerFrame:
        return TriggerFrame(frame_id=req.frame_id, source=self.label, data=data,
                            t_captured=inner.t_captured if inner else time.time(),
                            name=inner.name if inner else None, error=inner.error if inner else None, kind=kind,
                            path=inner.path if inner else None, t_mono=req.t_mono, part_id=req.part_id,
                            request_id=req.request_id, recipe=req.recipe, request=req, inner=inner)

    def on_result(self, frame: Frame, record: dict[str, Any]) -> None:
        inner = getattr(frame, "inner", None)
        if inner is not None and self.inner is not None:
            self.inner.on_result(inner, record)
        req = getattr(frame, "request", None)
        if req is not None:
            self.hub.answer(req, record)
