"""What the live view page shows, kept off the scoring path.

Two inputs, both cheap for the line:

  the journal   a reader thread follows the journal (runtime/journal.py) from its end, like a
                sink but without a cursor: it never holds records back from trimming, and if
                it falls behind it skips ahead (the page shows the newest, it is no archive).
                Records reach the page only once they are in the journal, so the page never
                shows a verdict the line could still lose.
  the pixels    the view is also a *live* sink: the scorer hands it each scored frame's
                decoded pixels (or an undecodable file's bytes). `write` only puts a reference
                into a bounded ring (count and bytes); nothing is encoded until a page asks
                for that frame, on the HTTP thread.

Page clients get a JSON snapshot at most `PUSH_HZ` times a second whatever the frame rate,
so the cost of a connected page does not grow with the line's speed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("fsac.runtime")

CHART_POINTS = 300  # logits on the rolling chart
DEFECTS_SHOWN = 12  # thumbnails of the last defective frames
HISTORY = 500  # records read back from the journal at start (a restarted daemon shows its recent past)
ALARM_WINDOW = 200  # records the drift and input-health alarms look at
PUSH_HZ = 4.0


def frame_key(record: dict[str, Any]) -> str:
    return f"{record.get('run_id', '')}-{record.get('seq', 0)}"


@dataclass
class Kept:
    record: dict[str, Any]
    pixels: Any  # (H, W, 3) uint8 RGB, or the raw bytes of an undecodable file, or None
    nbytes: int
    jpeg: dict[int, bytes] | None = None  # encoded on demand, per width


def _nbytes(pixels: Any) -> int:
    if isinstance(pixels, np.ndarray):
        return int(pixels.nbytes)
    if isinstance(pixels, (bytes, bytearray)):
        return len(pixels)
    return 0


class FrameRing:
    """The latest frames' pixels (count and byte bound) plus the last defective ones, kept
    longer so their thumbnails stay clickable. Only references: no copy, no encoding."""

    def __init__(self, latest: int = 16, defective: int = DEFECTS_SHOWN,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self.latest_n, self.defective_n, self.max_bytes = latest, defective, max_bytes
        self._latest: OrderedDict[str, Kept] = OrderedDict()
        self._defective: OrderedDict[str, Kept] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def put(self, record: dict[str, Any], pixels: Any) -> None:
        key = frame_key(record)
        kept = Kept(record, pixels, _nbytes(pixels))
        with self._lock:
            ring = self._defective if record.get("verdict") == "defective" else self._latest
            ring[key] = kept
            self.nbytes += kept.nbytes
            self._evict(ring, self.defective_n if ring is self._defective else self.latest_n)
            while self.nbytes > self.max_bytes and (len(self._latest) > 1 or len(self._defective) > 1):
                self._evict_one(self._latest if len(self._latest) > 1 else self._defective)

    def _evict(self, ring: OrderedDict, n: int) -> None:
        while len(ring) > n:
            self._evict_one(ring)

    def _evict_one(self, ring: OrderedDict) -> None:
        _, old = ring.popitem(last=False)
        self.nbytes -= old.nbytes

    def get(self, key: str) -> Kept | None:
        with self._lock:
            return self._latest.get(key) or self._defective.get(key)


def encode_jpeg(kept: Kept, width: int) -> bytes | None:
    """JPEG of a kept frame, at most `width` pixels wide (cached). Runs on an HTTP thread;
    PIL releases the GIL while it encodes."""
    cache = kept.jpeg if kept.jpeg is not None else {}
    if width in cache:
        return cache[width]
    import io

    from PIL import Image

    if isinstance(kept.pixels, np.ndarray):
        img = Image.fromarray(kept.pixels)
    elif isinstance(kept.pixels, (bytes, bytearray)):
        try:  # an undecodable file: show it if PIL can, else there is nothing to show
            img = Image.open(io.BytesIO(kept.pixels)).convert("RGB")
        except Exception:
            return None
    else:
        return None
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    cache[width] = data = buf.getvalue()
    kept.jpeg = cache
    return data


def threshold_info(metadata: dict[str, str]) -> dict[str, Any]:
    try:
        info = json.loads(metadata.get("fsac.threshold_info", "") or "{}")
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def expected_false_alarms(metadata: dict[str, str]) -> float | None:
    info = threshold_info(metadata)
    for key in ("expected_fpr", "alpha", "fpr"):
        if isinstance(info.get(key), (int, float)):
            return float(info[key])
    return None


# The daemon's own input-health alarms (runtime/health.py: each frame against the calibration
# images' statistics), as the operator reads them.
HEALTH_TEXT = {
    "lens_blocked": ("input", "lens blocked or covered: the last frame is dark and flat compared with the "
                              "calibration images"),
    "lighting_changed": ("input", "lighting changed: the last frame's brightness is far from the calibration "
                                  "images'"),
    "focus_lost": ("input", "focus lost: the last frame is much less sharp than the calibration images"),
    "reject_rate_high": ("drift", "reject rate high: far more defective verdicts in the last frames than the "
                                  "threshold's false-alarm rate allows"),
}


def alarms(records: list[dict[str, Any]], expected_fpr: float | None, source_connected: bool,
           dropped_recent: int, health: list[str] | tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Drift and input-health alarms from the last records. Simple rules that say what they
    saw, so an operator can judge them:
      health  the daemon's input-health alarms in force (lens blocked, lighting, focus, reject rate)
      input   more than 10 % error records, the source closed, frames dropped in the last minute
      drift   the defect rate far above the false-alarm rate the threshold was set for (a light,
              camera or product change makes good parts look anomalous) once 50 frames are in
    """
    out = [dict(zip(("kind", "text"), HEALTH_TEXT.get(a, ("input", a)))) for a in health]
    if not source_connected:
        out.append({"kind": "input", "text": "source is not open (reconnecting)"})
    if dropped_recent:
        out.append({"kind": "input", "text": f"{dropped_recent} frames dropped in the last minute (the model "
                                             "cannot keep up with the source)"})
    if not records:
        return out
    errors = [r for r in records if r.get("verdict") == "error"]
    if len(errors) > 0.1 * len(records):
        out.append({"kind": "input", "text": f"{len(errors)} of the last {len(records)} frames could not be "
                                             f"scored; last: {errors[-1].get('error')}"})
    scored = [r for r in records if r.get("verdict") in ("good", "defective")]
    if len(scored) >= 50:
        rate = sum(r["verdict"] == "defective" for r in scored) / len(scored)
        expected = expected_fpr if expected_fpr is not None else 0.05
        if rate > max(0.2, 10 * expected):
            out.append({"kind": "drift", "text": f"{rate:.0%} of the last {len(scored)} frames are defective; the "
                                                 f"threshold expects {expected:.1%} false alarms on good parts. "
                                                 "Lighting, camera or product change?"})
    return out


class LiveState:
    """Follows the journal; serves snapshots. One per daemon."""

    name = "live-view"
    durable = False
    needs_images = True  # the daemon then keeps each frame's decoded pixels until it is scored
    accepts_raw_bytes = True

    def __init__(self, journal: Any, ring: FrameRing) -> None:
        self.journal = journal
        self.ring = ring
        self.chart: deque[tuple[int, float | None, str]] = deque(maxlen=CHART_POINTS)
        self.defects: deque[dict[str, Any]] = deque(maxlen=DEFECTS_SHOWN)
        self.window: deque[dict[str, Any]] = deque(maxlen=ALARM_WINDOW)
        self.latest: dict[str, Any] | None = None
        self.latest_index = -1
        self.skipped = 0  # records the reader jumped over because it fell behind
        self.cond = threading.Condition()
        self.version = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="fsac-liveview", daemon=True)

    # ---------------------------------------------------------------- sink side (scorer thread)

    def write(self, record: dict[str, Any], image: Any = None) -> None:
        self.ring.put(record, image)  # a dict insert under a lock: never blocks the scorer

    def flush(self) -> None:
        pass

    def stats(self) -> dict[str, float]:
        return {}

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        self._stop.set()
        with self.cond:
            self.cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    # ---------------------------------------------------------------- journal reader

    def _follow(self) -> None:
        j = self.journal
        pos = max(j.first, j.end - HISTORY)
        while not self._stop.is_set():
            try:
                if j.end - pos > 4 * HISTORY:  # far behind (the page thread was starved): jump ahead
                    self.skipped += j.end - HISTORY - pos
                    pos = j.end - HISTORY
                pos, lines = j.read(self.name, pos, 256, 0.5)
            except Exception as e:  # a segment trimmed under us, EIO: never take the daemon down
                log.debug("live view: journal read failed: %s", e)
                self._stop.wait(0.5)
                continue
            if not lines:
                continue
            with self.cond:
                for k, line in enumerate(lines):
                    try:
                        self._add(pos + k, json.loads(line))
                    except ValueError:
                        continue
                self.version += 1
                self.cond.notify_all()
            pos += len(lines)

    def _add(self, index: int, r: dict[str, Any]) -> None:
        self.chart.append((index, r.get("logit"), r.get("verdict", "")))
        self.window.append(r)
        if r.get("verdict") == "defective":
            self.defects.append(r)
        self.latest, self.latest_index = r, index

    def wait_change(self, version: int, timeout: float) -> int:
        with self.cond:
            if self.version == version and not self._stop.is_set():
                self.cond.wait(timeout)
            return self.version

    def view(self, since_index: int) -> dict[str, Any]:
        """Chart points after `since_index`, the latest record, the defect list, the alarm window."""
        with self.cond:
            points = [p for p in self.chart if p[0] > since_index]
            return {"latest": self.latest, "latest_index": self.latest_index,
                    "points": [[i, z, v] for i, z, v in points],
                    "defects": [{"key": frame_key(r), "record": r, "has_image": self.ring.get(frame_key(r)) is not None}
                                for r in reversed(self.defects)],
                    "window": list(self.window), "skipped": self.skipped}
