"""GigE Vision / GenICam cameras through Aravis (source.kind: gige, source.uri: the camera id).

Aravis is the open-source GenICam library on Linux; its Python binding is GObject
introspection (`gi`), which Debian/Ubuntu/JetPack ship as packages (`gir1.2-aravis-0.8`,
`python3-gi`), not as a pip wheel: pip's `pygobject` compiles against the GObject
introspection headers. `import_aravis` finds the OS's `gi` when the virtualenv has none.

Frames leave this module as `CameraImage`s (bytes + pixel format); the conversion to RGB
(Mono8/Mono16/Bayer/RGB8/BGR8) is `fsac.pixel_formats.camera_image_to_rgb`, run by the daemon's
decode workers like every other decode.

Acquisition (source.gige.acquisition):
  free-run  the camera streams at its frame rate; in source.mode trigger the trigger
            source skips frames captured before the request (frame time = the buffer's
            capture time, not the time we read it);
  software  one software trigger each time the reader asks for a frame, fired after
            draining buffers that arrived late: in source.mode trigger that is one trigger
            per inspection request, so the frame is captured after the request;
  hardware  one frame per pulse on trigger_source; waiting has no timeout (the line may
            stop), a dead camera is noticed by the GigE Vision heartbeat ("control-lost").

A lost camera (no frame within timeout_s, control lost, a failing register access) is
closed and reopened with exponential backoff between source.reconnect_min_s and
reconnect_max_s, each attempt counted in `reconnects`, as StreamSource does.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Iterator

from fsac.errors import FsacError
from fsac.pixel_formats import CameraImage

from ..config import SourceConfig
from ..gige_settings import validate_gige_settings
from .base import RAW, Frame, Source

log = logging.getLogger("fsac.runtime")

# Where Debian/Ubuntu's python3-gi lives; its C extension has the ABI of the system Python
# (3.11 on Debian 12), which a pyenv or venv Python of the same minor version can load.
SYSTEM_DIST_PACKAGES = f"/usr/lib/python{sys.version_info.major}/dist-packages"
# PFNC pixel format codes (what a GigE Vision buffer reports) -> names fsac.preprocess knows.
PIXEL_FORMAT_CODES = {0x01080001: "Mono8", 0x01100007: "Mono16", 0x01080008: "BayerGR8", 0x01080009: "BayerRG8",
                      0x0108000A: "BayerGB8", 0x0108000B: "BayerBG8", 0x02180014: "RGB8", 0x02180015: "BGR8"}
_POLL_S = 0.1  # buffer waits are sliced so a stop request is seen within this long


def import_aravis() -> tuple[Any, Any]:
    """(Aravis, GLib) from gi.repository; FsacError saying what to install when absent.

    A virtualenv without its own `gi` gets the system one: the dist-packages folder is put at
    the END of sys.path only while `gi` is imported and removed again, so it never shadows a
    pip package and nothing else is ever imported from it."""
    added = False
    try:
        try:
            import gi
        except ImportError:
            if not os.path.isdir(os.path.join(SYSTEM_DIST_PACKAGES, "gi")):
                raise
            sys.path.append(SYSTEM_DIST_PACKAGES)
            added = True
            import gi
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as e:
        raise FsacError("source.kind=gige needs Aravis 0.8 and PyGObject: apt-get install gir1.2-aravis-0.8 "
                        f"python3-gi aravis-tools (Debian/Ubuntu/JetPack) ({type(e).__name__}: {e})") from None
    finally:
        if added and SYSTEM_DIST_PACKAGES in sys.path:
            sys.path.remove(SYSTEM_DIST_PACKAGES)
    return Aravis, GLib


def list_cameras() -> list[dict[str, str]]:
    """The GenICam cameras Aravis finds (GigE Vision discovery broadcast, USB3 Vision)."""
    Aravis, _ = import_aravis()
    Aravis.update_device_list()
    return [{"id": Aravis.get_device_id(i), "address": Aravis.get_device_address(i) or "",
             "model": Aravis.get_device_model(i) or "", "serial": Aravis.get_device_serial_nbr(i) or "",
             "protocol": Aravis.get_device_protocol(i) or ""} for i in range(Aravis.get_n_devices())]


class _Lost(Exception):
    """The camera stopped answering or streaming: close it and reconnect."""


class GigeSource(Source):
    kind = "gige"

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__(cfg)
        self.settings = validate_gige_settings(cfg.gige)
        self.camera_id = cfg.uri.strip()
        self.incomplete = 0  # buffers that arrived with missing packets (skipped in free-run)
        self.triggers = 0  # software triggers fired
        self._aravis: Any = None
        self._glib: Any = None
        self._cam: Any = None
        self._stream: Any = None
        self._control_lost = threading.Event()
        self.description = ""

    # ------------------------------------------------------------- connect and configure

    def open(self) -> None:
        self._aravis, self._glib = import_aravis()
        # A camera that is not up when the box boots is not fatal: frames() keeps trying. A
        # camera that answers and refuses a setting is a configuration error (FsacError).
        try:
            self._connect()
        except _Lost as e:
            log.warning("cannot open gige camera %s yet (%s); retrying in the background", self.label, e)

    def check(self) -> str:
        self.open()
        if self._cam is None:
            raise FsacError(f"source.uri: cannot open gige camera {self.label}")
        if self.settings.acquisition == "hardware":  # a frame needs a pulse on the line: don't wait for one
            self._disconnect()
            return f"gige {self.label} ({self.description} on {self.settings.trigger_source})"
        frames = self._acquire(threading.Event())
        try:
            frame = next(frames)
        except _Lost as e:
            raise FsacError(f"source.uri: opened gige camera {self.label} but got no frame ({e})") from None
        finally:
            frames.close()  # its references to the camera go before _disconnect drops ours
            self._disconnect()
        extra = f", first frame: {frame.error}" if frame.error else ""
        return f"gige {self.label} ({self.description}{extra})"

    def _connect(self) -> None:
        Aravis, GLib = self._aravis, self._glib
        s = self.settings
        try:
            name = None if self.camera_id.lower() == "auto" else self.camera_id
            cam = Aravis.Camera.new(name)
        except GLib.Error as e:
            raise _Lost(e.message) from None
        try:
            self._control_lost.clear()
            device = cam.get_device()
            if isinstance(device, Aravis.GvDevice):
                device.connect("control-lost", lambda *_: self._on_control_lost())
                loopback = device.get_device_address().get_address().get_is_loopback()
                if not (s.packet_socket if s.packet_socket is not None else not loopback):
                    device.set_stream_options(Aravis.GvStreamOption.PACKET_SOCKET_DISABLED)
                if s.packet_size is not None:
                    self._set("packet_size", lambda: cam.gv_set_packet_size(s.packet_size))
            self._configure(cam)
            payload = cam.get_payload()
            stream = cam.create_stream(None, None)
            if isinstance(stream, Aravis.GvStream):
                # Room for a few frames in the receive buffer: with the kernel's default (~200 KB)
                # the packets of a large frame, arriving at once, overflow it and frames come
                # incomplete. (Aravis's "auto" sets one payload, too small once the kernel counts
                # its per-packet overhead. The kernel caps the size at net.core.rmem_max.)
                stream.set_property("socket-buffer", Aravis.GvStreamSocketBuffer.FIXED)
                stream.set_property("socket-buffer-size", max(4 * payload, 1 << 20))
            for _ in range(s.buffers):
                stream.push_buffer(Aravis.Buffer.new_allocate(payload))
            cam.start_acquisition()
        except GLib.Error as e:
            raise _Lost(e.message) from None
        _, _, w, h = cam.get_region()
        self.description = (f"{cam.get_vendor_name()} {cam.get_model_name()} {cam.get_device_id()}, "
                            f"{cam.get_pixel_format_as_string()} {w}x{h}, {s.acquisition}")
        self._cam, self._stream = cam, stream
        self.connected = True
        log.info("gige camera %s opened: %s", self.label, self.description)

    def _set(self, name: str, fn: Any) -> None:
        """Apply one setting; the camera's refusal becomes an error naming the setting."""
        Aravis, GLib = self._aravis, self._glib
        try:
            fn()
        except GLib.Error as e:
            # The link or the camera's state (a timeout, gone, another controller): retry. The
            # rest is about the feature itself (unknown, wrong type, not an entry, read-only).
            transient = (Aravis.DeviceError.NOT_CONNECTED, Aravis.DeviceError.TRANSFER_ERROR,
                         Aravis.DeviceError.TIMEOUT, Aravis.DeviceError.NOT_FOUND, Aravis.DeviceError.NOT_CONTROLLER,
                         Aravis.DeviceError.PROTOCOL_ERROR_BUSY)
            if e.domain == "arv-device-error-quark" and e.code in {int(c) for c in transient}:
                raise _Lost(e.message) from None
            raise FsacError(f"source.gige.{name}: the camera refused it ({e.message})") from None

    def _require_offered(self, name: str, value: str, offered: Any, what: str = "") -> None:
        offered = list(offered)
        if value not in offered:
            raise FsacError(f"source.gige.{name}: camera {self.label} has no {what}{value} "
                            f"(it offers {', '.join(offered)})")

    def _configure(self, cam: Any) -> None:
        Aravis, s = self._aravis, self.settings
        if s.pixel_format is not None:
            self._require_offered("pixel_format", s.pixel_format, cam.dup_available_pixel_formats_as_strings())
            self._set("pixel_format", lambda: cam.set_pixel_format_from_string(s.pixel_format))
        if s.region is not None:
            self._set("region", lambda: cam.set_region(*s.region))
        if s.exposure_us is not None:
            if cam.is_exposure_auto_available():
                self._set("exposure_us", lambda: cam.set_exposure_time_auto(Aravis.Auto.OFF))
            self._set("exposure_us", lambda: cam.set_exposure_time(s.exposure_us))
        if s.gain_db is not None:
            if cam.is_gain_auto_available():
                self._set("gain_db", lambda: cam.set_gain_auto(Aravis.Auto.OFF))
            self._set("gain_db", lambda: cam.set_gain(s.gain_db))
        self._set("acquisition", lambda: cam.set_acquisition_mode(Aravis.AcquisitionMode.CONTINUOUS))
        if s.acquisition == "free-run":
            self._set("acquisition", cam.clear_triggers)
            if s.frame_rate is not None:
                self._set("frame_rate", lambda: cam.set_frame_rate(s.frame_rate))
        elif s.acquisition == "software":
            self._set("acquisition", lambda: cam.set_trigger("Software"))
        else:
            self._require_offered("trigger_source", s.trigger_source, cam.dup_available_trigger_sources(),
                                  "trigger source ")
            self._set("trigger_source", lambda: cam.set_trigger(s.trigger_source))
            if s.trigger_activation is not None:
                self._set("trigger_activation", lambda: cam.set_string("TriggerActivation", s.trigger_activation))
        for key, value in s.features.items():
            setter = {bool: cam.set_boolean, int: cam.set_integer, float: cam.set_float}.get(type(value),
                                                                                            cam.set_string)
            self._set(f"features.{key}", lambda: setter(key, value))
        fmt = cam.get_pixel_format_as_string()
        if fmt not in PIXEL_FORMAT_CODES.values():
            raise FsacError(f"source.gige.pixel_format: camera {self.label} sends {fmt}, which fsac cannot convert; "
                            f"set one of {', '.join(PIXEL_FORMAT_CODES.values())}")

    def _on_control_lost(self) -> None:  # from Aravis's heartbeat thread
        self._control_lost.set()
        self.connected = False

    def _disconnect(self) -> None:
        cam, self._cam, self._stream = self._cam, None, None
        self.connected = False
        if cam is not None:
            try:
                cam.stop_acquisition()
            except self._glib.Error:
                pass  # the camera is gone; dropping our references releases the stream and control
        # Both objects go now (not at some later garbage collection): a half-dead device object
        # keeps its heartbeat thread and could take control of the restarted camera from us.
        del cam

    # ------------------------------------------------------------- frames

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        backoff = self.cfg.reconnect_min_s
        try:
            while not stop.is_set():
                if self._cam is None:
                    try:
                        self._connect()
                    except _Lost as e:
                        self.connected = False
                        self.reconnects += 1
                        log.warning("cannot open gige camera %s (attempt %d: %s); next try in %.1fs", self.label,
                                    self.reconnects, e, backoff)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                        continue
                    except FsacError as e:  # refused a setting after a reconnect: say so, keep trying
                        log.error("%s", e)
                        self._disconnect()
                        self.reconnects += 1
                        stop.wait(backoff)
                        backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                        continue
                try:
                    for frame in self._acquire(stop):
                        backoff = self.cfg.reconnect_min_s  # healthy again: the next loss starts small
                        yield frame
                except _Lost as e:
                    log.warning("lost gige camera %s (%s); reconnect #%d in %.1fs", self.label, e,
                                self.reconnects + 1, backoff)
                self._disconnect()
                if stop.is_set():
                    return
                self.reconnects += 1
                stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)
        finally:
            self._disconnect()

    def _acquire(self, stop: threading.Event) -> Iterator[Frame]:
        """Frames from the open camera until it is lost (_Lost) or stop is set."""
        s, GLib = self.settings, self._glib
        cam, stream = self._cam, self._stream
        last_good = time.monotonic()  # free-run: a stream of incomplete frames is a lost camera too
        retried = False
        while not stop.is_set():
            t_fire = None
            if s.acquisition == "software":
                self._drain(stream)  # a frame of an earlier, timed-out trigger must not answer this one
                try:
                    cam.software_trigger()
                except GLib.Error as e:
                    raise _Lost(f"software trigger failed: {e.message}") from None
                self.triggers += 1
                t_fire = time.monotonic()
            wait = {"hardware": None, "software": s.timeout_s}.get(s.acquisition,
                                                                   last_good + s.timeout_s - time.monotonic())
            buf = self._pop(stream, stop, wait)
            if buf is None:
                if stop.is_set():
                    return
                if s.acquisition == "software":  # answer the request now rather than at its deadline
                    yield self._error_frame(f"no frame from gige camera {self.label} within "
                                            f"source.gige.timeout_s={s.timeout_s:g}s after the software trigger")
                    raise _Lost("no frame after a software trigger")
                raise _Lost(f"no complete frame within source.gige.timeout_s={s.timeout_s:g}s")
            if s.acquisition == "software" and not retried and buf.get_status() != self._aravis.BufferStatus.SUCCESS:
                # Packets lost (seen on the first frame after the stream starts): the part is
                # still in front of the camera, so trigger once more before reporting an error.
                self.incomplete += 1
                stream.push_buffer(buf)
                retried = True
                continue
            retried = False
            try:
                frame = self._to_frame(buf, t_fire)
            finally:
                stream.push_buffer(buf)
            if frame is not None:
                last_good = time.monotonic()
                yield frame

    def _pop(self, stream: Any, stop: threading.Event, timeout_s: float | None) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not stop.is_set():
            if self._control_lost.is_set():
                raise _Lost("control lost (no GigE Vision heartbeat answer)")
            left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            if left <= 0:
                return None
            buf = stream.timeout_pop_buffer(int(left * 1e6))
            if buf is not None:
                return buf
        return None

    def _drain(self, stream: Any) -> None:
        while True:
            buf = stream.try_pop_buffer()
            if buf is None:
                return
            stream.push_buffer(buf)

    def _to_frame(self, buf: Any, t_fire: float | None) -> Frame | None:
        Aravis = self._aravis
        status = buf.get_status()
        block = buf.get_frame_id()
        if status != Aravis.BufferStatus.SUCCESS:
            self.incomplete += 1
            if self.settings.acquisition == "free-run":
                return None  # the next frame comes in 1/fps; a triggered frame is one part: report it
            return self._error_frame(f"gige camera {self.label} frame {block} incomplete ({status.value_nick})")
        code = buf.get_image_pixel_format()
        fmt = PIXEL_FORMAT_CODES.get(code)
        if fmt is None:
            return self._error_frame(f"gige camera {self.label} sent pixel format 0x{code:08x}, not one fsac "
                                     "converts")
        image = CameraImage(bytes(buf.get_data()), buf.get_image_width(), buf.get_image_height(), fmt)
        frame = self._frame(image, f"{self.camera_id}#{block}", RAW)
        # The capture time, not the time we popped it: a free-run frame that waited in the
        # stream's queue is as old as it looks, so trigger mode can skip it.
        captured = buf.get_system_timestamp() / 1e9
        if captured > 0:
            frame.t_captured = captured
            frame.t_mono = min(frame.t_mono, frame.t_mono - (time.time() - captured))
        if t_fire is not None:  # captured after the trigger, whatever the two clocks say
            frame.t_mono = max(frame.t_mono, t_fire)
        return frame

    def _error_frame(self, error: str) -> Frame:
        return self._frame(None, None, RAW, error=error)

    def close(self) -> None:
        self._disconnect()
