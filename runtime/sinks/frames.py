"""Saved-frames sink: keeps the pictures behind the verdicts, for people to look at later.

What is saved (each as an image plus a JSON file beside it holding the record):
- frames with verdict "defective" (`save_defective`, default on);
- a seeded random sample of the other frames (`sample_normal`, a probability, e.g. 0.01;
  `seed`): one draw per non-defective, non-error record, so the same stream of records
  with the same seed picks the same frames;
- frames of error records (`save_errors`, default off): pass the frame's raw bytes (or the
  decoded array, if there is one) as `image`; raw bytes are stored as they came, with an
  extension guessed from their magic number (.png/.jpg/.bmp/.tif, else .bin).

Files: `<dir>/<UTC time>_<frame id>_<verdict>.<png|jpg>` and `... .json`, e.g.
`20240501T120304.123456Z_cam0-000123_defective.png`; the time is the sink's clock when the
record was written (so names sort oldest first), the frame id is reduced to
`[A-Za-z0-9._-]`, at most 64 characters. Every file is written atomically (`fsac.io`):
image first, then the JSON.

Retention: `max_files` (image+JSON pairs) and/or `max_bytes` (both files counted); the
oldest pairs are deleted first. The sink scans the folder at start, so the bounds hold
across restarts. The newest pair is never deleted, even if it alone exceeds `max_bytes`.

In fsac-run the sink is a cursor over the journal like JSONL and MQTT: the daemon stages the
pixels of each wanted frame (`stage`) before its record is journaled, and `deliver` saves
them when the sink's cursor reaches the record; a failing folder (full disk, gone) makes the
delivery fail and retry from the cursor, and nothing staged is lost while it recovers.
The pixels live in memory only: after a restart the journal replays records whose pixels are
gone; those are counted in `stats()["images_missing"]` (the records themselves are in the
journal and every other sink).

Overload: at most `queue_size` frames wait staged (or, used on its own through `write`, in
the writer thread's queue). If the disk cannot keep up, the oldest staged (or newest written)
frames are SKIPPED, as a sample store, not an archive, and counted in `stats()["dropped"]`.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import re
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.io import atomic_write_bytes
from fsac.runtime.sinks.base import json_default

from .frames_config import SECTION, FramesSettings, validate_frames_config

log = logging.getLogger("fsac.runtime.sinks.frames")

_STEM_RE = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z_[A-Za-z0-9._-]+)\.(png|jpg|json|bmp|tif|bin)$")
_TMP_RE = re.compile(r"^\.\d{8}T\d{6}\.\d{6}Z_.*\.tmp$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def build(settings: FramesSettings) -> "FramesSink":
    return FramesSink(settings)


def _safe_id(frame_id: Any) -> str:
    s = _UNSAFE.sub("-", str(frame_id if frame_id is not None else "")).strip("._-")
    return s[:64].rstrip("._-") or "frame"


def _safe_verdict(verdict: Any) -> str:
    s = _UNSAFE.sub("-", str(verdict or "unknown")).strip("._-")
    return s[:16] or "unknown"


def _raw_ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tif"
    return "bin"





def _remember(keys: OrderedDict, key: Any, most: int = 4096) -> None:
    """Add `key` to a bounded set of recent frame keys (the oldest forgotten past `most`)."""
    keys[key] = None
    while len(keys) > most:
        keys.popitem(last=False)

class FramesSink:
    name = "frames"
    durable = True  # in fsac-run: a cursor over the journal (deliver); the pixels are staged first
    needs_images = True  # it saves the decoded frame
    accepts_raw_bytes = True  # and, for undecodable frames, the raw file bytes

    def __init__(self, cfg: dict[str, Any] | None):
        import cv2  # runtime extra; imported here so the config loader works without it

        self._cv2 = cv2
        self.cfg = c = validate_frames_config(cfg)
        self.dir = Path(c["dir"])
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FsacError(f"{SECTION}.dir: cannot create {self.dir}: {e}") from e
        self._rng = random.Random(c["seed"])
        self._lock = threading.Lock()
        self._written = 0
        self._dropped = 0
        self._deleted = 0
        self._save_failures = 0
        self._last_drop_log: float | None = None
        self._last_error_log: float | None = None
        self._closed = False
        self._abort = threading.Event()
        # stem -> (bytes, [files]); oldest first. Touched by the worker thread only.
        self._index: OrderedDict[str, tuple[int, list[Path]]] = OrderedDict()
        self._total_bytes = 0
        self._scan()
        self._enforce_retention(keep=None)
        # (run_id, frame_id) -> pixels of a wanted frame, staged by the daemon before the record
        # is journaled; deliver() saves them when the record comes through its cursor.
        self._staged: OrderedDict[tuple[Any, Any], Any] = OrderedDict()
        self._missing = 0  # wanted records delivered with no pixels staged (replay after a restart)
        self._unsaveable = 0  # frames (or damaged lines) that no retry could ever save
        self._evicted: OrderedDict = OrderedDict()  # keys skipped by the staging bound (counted in dropped)
        self._saved_keys: OrderedDict[tuple[Any, Any], None] = OrderedDict()  # a retried batch: not missing
        self._queue: queue.Queue = queue.Queue(maxsize=c["queue_size"])
        self._worker = threading.Thread(target=self._worker_main, name="fsac-frames", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- index

    def _scan(self) -> None:
        groups: dict[str, tuple[int, list[Path]]] = {}
        for entry in self.dir.iterdir():
            if _TMP_RE.match(entry.name):  # left by a crash in the middle of a write
                entry.unlink(missing_ok=True)
                continue
            m = _STEM_RE.match(entry.name)
            if not m or not entry.is_file():
                continue
            size = entry.stat().st_size
            nbytes, files = groups.get(m.group(1), (0, []))
            groups[m.group(1)] = (nbytes + size, files + [entry])
        for stem in sorted(groups):
            self._index[stem] = groups[stem]
            self._total_bytes += groups[stem][0]
        if self._index:
            log.info("frames sink: %d saved frames (%d bytes) already in %s",
                     len(self._index), self._total_bytes, self.dir)

    def _enforce_retention(self, keep: str | None) -> None:
        max_files, max_bytes = self.cfg["max_files"], self.cfg["max_bytes"]
        while self._index:
            over = ((max_files is not None and len(self._index) > max_files)
                    or (max_bytes is not None and self._total_bytes > max_bytes))
            if not over:
                return
            stem = next(iter(self._index))
            if stem == keep:
                return
            nbytes, files = self._index.pop(stem)
            for f in files:
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("frames sink: cannot delete %s: %s", f, e)
            self._total_bytes -= nbytes
            with self._lock:
                self._deleted += 1

    # ----------------------------------------------------------------- worker

    def _worker_main(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closed:
                    return
                continue
            try:
                if not self._abort.is_set():
                    self._save(*item)
            except Exception as e:  # one bad frame (or a full disk) must not stop the sink
                now = time.monotonic()
                with self._lock:
                    self._save_failures += 1
                    errors = self._save_failures
                    loud = self._last_error_log is None or now - self._last_error_log >= 60.0
                    if loud:
                        self._last_error_log = now
                if loud:  # at most once a minute: a full disk must not flood the log too
                    log.warning("frames sink: cannot save frame %r in %s: %s (%d failures so far)",
                                item[0].get("frame_id"), self.dir, e, errors)
            finally:
                self._queue.task_done()

    def _stem(self, record: dict[str, Any], when: float) -> str:
        t = datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        stem = f"{t}_{_safe_id(record.get('frame_id'))}_{_safe_verdict(record.get('verdict'))}"
        base, n = stem, 1
        while stem in self._index:  # same microsecond, same frame id
            n += 1
            stem = f"{base}-{n}"
        return stem

    def _save(self, record: dict[str, Any], image: Any, when: float) -> None:
        cv2 = self._cv2
        if isinstance(image, np.ndarray):
            img = image
            if img.dtype != np.uint8:
                raise ValueError(f"image dtype {img.dtype}, expected uint8")
            if img.ndim == 3 and img.shape[2] == 3:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            elif img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            elif img.ndim != 2:
                raise ValueError(f"image shape {img.shape}, expected (H, W, 3) RGB")
            if self.cfg["format"] == "png":
                ext = "png"
                params = [cv2.IMWRITE_PNG_COMPRESSION, self.cfg["png_compression"]]
            else:
                ext = "jpg"
                params = [cv2.IMWRITE_JPEG_QUALITY, self.cfg["jpeg_quality"]]
            ok, buf = cv2.imencode("." + ext, np.ascontiguousarray(img), params)
            if not ok:
                raise ValueError("cv2.imencode failed")
            data = buf.tobytes()
        else:
            data = bytes(image)
            ext = _raw_ext(data)
        stem = self._stem(record, when)
        meta = json.dumps(record, indent=2, default=json_default).encode("utf-8") + b"\n"
        img_path = atomic_write_bytes(self.dir / f"{stem}.{ext}", data)
        json_path = atomic_write_bytes(self.dir / f"{stem}.json", meta)
        nbytes = len(data) + len(meta)
        self._index[stem] = (nbytes, [img_path, json_path])
        self._total_bytes += nbytes
        with self._lock:
            self._written += 1
        self._enforce_retention(keep=stem)

    # ----------------------------------------------------------------- Sink API

    def _wanted(self, record: dict[str, Any], image: Any) -> bool:
        verdict = record.get("verdict")
        if record.get("error") or verdict == "error":
            return self.cfg["save_errors"] and image is not None
        if verdict == "defective":
            return self.cfg["save_defective"] and image is not None
        p = self.cfg["sample_normal"]
        if p <= 0.0:
            return False
        picked = self._rng.random() < p  # one draw per normal record: deterministic per seed
        return picked and image is not None

    def write(self, record: dict[str, Any], image: np.ndarray | bytes | None = None) -> None:
        """Queue the frame for saving if it is wanted; never blocks on disk I/O."""
        if self._closed:
            raise RuntimeError("FramesSink is closed")
        if not self._wanted(record, image):
            return
        if isinstance(image, np.ndarray):
            image = image.copy()  # the caller may reuse its frame buffer
        elif isinstance(image, (bytes, bytearray, memoryview)):
            image = bytes(image)
        else:
            raise TypeError(f"image must be a numpy array or bytes, got {type(image).__name__}")
        try:
            self._queue.put_nowait((dict(record), image, time.time()))
        except queue.Full:
            now = time.monotonic()
            with self._lock:
                self._dropped += 1
                dropped = self._dropped
                loud = self._last_drop_log is None or now - self._last_drop_log >= 60.0
                if loud:
                    self._last_drop_log = now
            if loud:
                log.warning("frames sink: disk too slow, skipped frame %r (%d skipped so far; "
                            "queue_size=%d)", record.get("frame_id"), dropped, self.cfg["queue_size"])

    # ----------------------------------------------------------------- journal consumer

    def stage(self, record: dict[str, Any], image: np.ndarray | bytes | None) -> None:
        """fsac-run, before the record is journaled: keep the pixels of a wanted frame until
        deliver() reaches its record. Bounded by queue_size frames: past it the oldest staged
        frame is skipped and counted (a sample store, not an archive; the record itself is in
        the journal and reaches every sink)."""
        if not self._wanted(record, image):
            return
        data = image.copy() if isinstance(image, np.ndarray) else bytes(image)
        with self._lock:
            self._staged[(record.get("run_id"), record.get("frame_id"))] = data
            while len(self._staged) > self.cfg["queue_size"]:
                evicted, _ = self._staged.popitem(last=False)
                self._dropped += 1
                _remember(self._evicted, evicted)  # counted once, here: not again as missing at delivery

    def deliver(self, lines: list[bytes]) -> None:
        """Save the staged frames of these journal lines; returns once they are on disk
        (atomic writes), raises otherwise, and the delivery retries from the cursor. A frame
        saved before a failure in the same batch is not saved twice: it is no longer staged."""
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # a damaged journal line: retrying it would stop this sink for good
                with self._lock:
                    self._unsaveable += 1
                log.error("frames: a journal line is not JSON; skipped (%.80r)", line)
                continue
            key = (record.get("run_id"), record.get("frame_id"))
            with self._lock:
                image = self._staged.get(key)
                again = key in self._saved_keys
            if again:
                continue
            if image is None:
                with self._lock:
                    counted = self._evicted.pop(key, "no") is None  # already counted in dropped
                    if not counted and record.get("verdict") == "defective" and self.cfg["save_defective"]:
                        self._missing += 1  # replayed after a restart: its pixels died with the process
                continue
            try:
                self._save(record, image, time.time())
            except OSError:
                raise  # the disk: retried from the cursor, as every delivery failure
            except Exception as e:  # this frame can never be saved (e.g. too large to encode): count, go on
                with self._lock:
                    self._unsaveable += 1
                    self._staged.pop(key, None)
                log.error("frames: frame %s cannot be saved (%s: %s); skipped, counted in unsaveable",
                          record.get("frame_id"), type(e).__name__, e)
                continue
            with self._lock:
                self._staged.pop(key, None)
                _remember(self._saved_keys, key)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait (up to `timeout` s) until every queued frame is on disk."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self, timeout: float = 10.0) -> None:
        """Save what is queued within `timeout` s; frames still queued then are skipped."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        left = self._queue.unfinished_tasks
        if left:
            self._abort.set()
            with self._lock:
                self._dropped += left
            log.warning("frames sink: closed with %d frames not saved (timeout %.1f s)", left, timeout)
        self._worker.join(max(0.5, timeout))

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {
                "written": self._written,
                "dropped": self._dropped,
                "deleted": self._deleted,
                "save_failures": self._save_failures,
                "queued": self._queue.unfinished_tasks + len(self._staged),
                "images_missing": self._missing,
                "unsaveable": self._unsaveable,
                "files": len(self._index),
                "bytes": self._total_bytes,
            }

    def __enter__(self) -> "FramesSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
