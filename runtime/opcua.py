"""An OPC UA server in fsac-run (asyncua): the station as nodes a PLC or SCADA reads, an
Inspect method (a trigger request) and SelectRecipe.

Address space, under Objects (plain browse names in the `opcua.namespace` namespace):

    <site>_<line>_<station>        (the names that are set; `Station` when none is)
      PartId RequestId Verdict Score Logit Threshold Error Time Recipe Model ModelHash
      FrameId Seq RunId            the last result, exactly as journaled (Threshold: logit units)
      State                        starting, running, paused, stopping
      ActiveRecipe                 the recipe new frames are scored with
      Counters/ Frames Good Defective Errors   results journaled in this run
      Health/ Alarms (string array) lens_blocked lighting_changed focus_lost reject_rate_high
      Inspect(PartId, RequestId) -> Verdict, Score, Logit, Error
      SelectRecipe(Name) -> Recipe, ModelHash

The server runs in its own thread and asyncio loop. The daemon hands it records only once
they are durable (the journal thread, after fdatasync): a result is on disk before a client
can read it, as for every other output. `publish` never blocks the caller; the values are
written on the server's loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
from typing import Any

from fsac.errors import FsacError

from .health import ALARMS
from .opcua_settings import LOOPBACK, credentials

log = logging.getLogger("fsac.runtime")

# (browse name, record field, OPC UA type name, value for an absent field)
RESULT_NODES = (("PartId", "part_id", "String", ""), ("RequestId", "request_id", "String", ""),
                ("Verdict", "verdict", "String", ""), ("Score", "score", "Double", math.nan),
                ("Logit", "logit", "Double", math.nan), ("Threshold", "logit_threshold", "Double", math.nan),
                ("Error", "error", "String", ""), ("Time", "time", "String", ""),
                ("Recipe", "recipe", "String", ""), ("Model", "model", "String", ""),
                ("ModelHash", "model_sha256", "String", ""), ("FrameId", "frame_id", "Int64", -1),
                ("Seq", "seq", "Int64", -1), ("RunId", "run_id", "String", ""))
COUNTERS = ("Frames", "Good", "Defective", "Errors")


def station_name(station: tuple[str, str, str]) -> str:
    # Not "." or "/": those separate the elements of an OPC UA relative path (browse paths).
    return "_".join(p for p in station if p) or "Station"


class OpcuaServer:
    def __init__(self, daemon: Any, settings: Any) -> None:
        self.daemon = daemon
        self.s = settings
        self.creds = credentials(settings)  # checked again here: the environment may differ from --check's
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: Any = None
        self._nodes: dict[str, Any] = {}
        self._counts = {c: 0 for c in COUNTERS}
        self.address = (settings.host, settings.port)

    # ------------------------------------------------------------ daemon side

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._run, name="fsac-opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise FsacError(f"opcua: the server did not start within {timeout:.0f} s")
        if self._error is not None:
            e = self._error
            if isinstance(e, OSError):
                raise FsacError(f"opcua.port: cannot listen on {self.s.host}:{self.s.port}: "
                                f"{e.strerror or e}") from None
            raise FsacError(f"opcua: the server did not start: {type(e).__name__}: {e}") from None
        if self.creds and self.s.security_policies == ["None"] and self.s.host not in LOOPBACK:
            log.warning("opcua: without a signed and encrypted security policy (opcua.certificate, "
                        "opcua.security_policies) the password crosses the network in plain text")
        log.info("opcua: opc.tcp://%s:%d/fsac/ (station %s, %s)", self.s.host, self.s.port,
                 station_name(self.daemon.station), "anonymous allowed" if self.s.allow_anonymous else
                 "user name and password required")

    def publish(self, records: list[dict[str, Any]]) -> None:
        """Durable records, in journal order (journal thread); returns at once."""
        loop = self.loop
        if not records or loop is None or loop.is_closed():
            return
        for r in records:
            v = r.get("verdict")
            self._counts["Frames"] += 1
            key = {"good": "Good", "defective": "Defective", "error": "Errors"}.get(v)
            if key:
                self._counts[key] += 1
        snapshot = (dict(records[-1]), dict(self._counts))
        try:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._write_result(*snapshot)))
        except RuntimeError:  # loop closed meanwhile (shutdown)
            pass

    def stop(self, timeout: float = 5.0) -> None:
        loop, t = self.loop, self._thread
        if loop is None or t is None or not t.is_alive():
            return
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            return
        t.join(max(0.1, timeout))
        if t.is_alive():
            log.warning("opcua: the server did not stop within %.1f s", timeout)

    # ------------------------------------------------------------ server loop

    def _run(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            loop.run_until_complete(self._close_server())
            loop.close()
            return
        self._ready.set()
        ticker = loop.create_task(self._tick())
        loop.run_forever()
        ticker.cancel()
        loop.run_until_complete(self._close_server())
        loop.close()

    async def _close_server(self) -> None:
        if self._server is None:
            return
        try:
            await asyncio.wait_for(self._server.stop(), 3.0)
        except Exception as e:
            log.debug("opcua: stop: %s", e)
        self._server = None

    async def _setup(self) -> None:
        from asyncua import Server, ua

        from .opcua_nodes import build_address_space, user_manager

        server = Server(user_manager=user_manager(self.s.allow_anonymous, self.creds, hmac.compare_digest))
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.s.host}:{self.s.port}/fsac/")
        server.set_server_name(f"fsac-run {station_name(self.daemon.station)}")
        # Offer only the identity tokens that can succeed: a client then sees at once that it needs a login.
        if hasattr(server, "set_identity_tokens"):  # asyncua 2.x
            tokens = [ua.UserNameIdentityToken] if self.creds else []
            server.set_identity_tokens(tokens + ([ua.AnonymousIdentityToken] if self.s.allow_anonymous else []))
        else:  # asyncua 1.x
            server.set_security_IDs((["Username"] if self.creds else []) + (["Anonymous"] if self.s.allow_anonymous
                                                                             else []))
        server.set_security_policy([getattr(ua.SecurityPolicyType, "NoSecurity" if p == "None" else p)
                                    for p in self.s.security_policies])
        if self.s.certificate:
            await server.load_certificate(self.s.certificate)
            await server.load_private_key(self.s.private_key)
        self._server = server
        self._nodes = await build_address_space(server, self, self.s.namespace, station_name(self.daemon.station))
        await server.start()

    async def _tick(self) -> None:
        """State and the active recipe change without a record (pause, stop, a switch)."""
        while True:
            try:
                await self._set("State", self.state(), "String")
                await self._set("ActiveRecipe", self.daemon.recipes.active or "", "String")
            except Exception as e:  # a value that cannot be written must not end the ticker
                log.debug("opcua: state update failed: %s", e)
            await asyncio.sleep(0.2)

    def state(self) -> str:
        d = self.daemon
        if getattr(d, "_stopping", False):
            return "stopping"
        if not getattr(d, "_started", False):
            return "starting"
        return "paused" if d.paused.is_set() else "running"

    async def _set(self, name: str, value: Any, type_name: str) -> None:
        from asyncua import ua

        await self._server.write_attribute_value(
            self._nodes[name].nodeid, ua.DataValue(ua.Variant(value, getattr(ua.VariantType, type_name))))

    async def _write_result(self, record: dict[str, Any], counts: dict[str, int]) -> None:
        try:
            for name, key, type_name, absent in RESULT_NODES:
                value = record.get(key)
                await self._set(name, absent if value is None else value, type_name)
            for name in COUNTERS:
                await self._set(name, counts[name], "UInt64")
            if "health" in record:  # a fail-safe record (deadline) saw no image: the alarms stand
                alarms = list(record["health"] or [])
                await self._set("Alarms", alarms, "String")
                for a in ALARMS:
                    await self._set(a, a in alarms, "Boolean")
        except Exception as e:
            log.warning("opcua: updating the result nodes failed: %s", e)

    # ------------------------------------------------------------ methods (server loop)

    async def inspect(self, part_id: Any, request_id: Any) -> Any:
        """A trigger request, answered as POST /v1/inspect answers it."""
        from asyncua import ua

        hub = self.daemon.trigger
        if hub is None:
            log.error("opcua: Inspect refused: fsac-run is not in source.mode: trigger")
            return ua.StatusCode(ua.StatusCodes.BadInvalidState)
        try:
            req, _dup = hub.submit(part_id, request_id or None)
        except FsacError as e:
            log.error("opcua: Inspect refused: %s", e)
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        record = await asyncio.get_running_loop().run_in_executor(None, hub.wait, req)
        if record is None:  # not even the fail-safe record reached the journal: still a reject
            record = {"verdict": "error", "error": "no result: the journal did not take the record in time"}
        nan = math.nan
        return [ua.Variant(record.get("verdict") or "error", ua.VariantType.String),
                ua.Variant(nan if record.get("score") is None else record["score"], ua.VariantType.Double),
                ua.Variant(nan if record.get("logit") is None else record["logit"], ua.VariantType.Double),
                ua.Variant(record.get("error") or "", ua.VariantType.String)]

    async def select_recipe(self, name: Any) -> Any:
        """Switch the active recipe; an unusable one is refused and the old one keeps serving."""
        from asyncua import ua

        if not isinstance(name, str) or not name:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        t0 = time.monotonic()
        try:  # loads and verifies the model file: not on the server loop
            model = (await asyncio.get_running_loop().run_in_executor(None, self.daemon.recipes.switch, name)).current
        except FsacError as e:
            log.error("opcua: SelectRecipe %r refused: %s", name, e)
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        log.info("opcua: recipe %s selected (%.2f s)", name, time.monotonic() - t0)
        await self._set("ActiveRecipe", name, "String")
        return [ua.Variant(name, ua.VariantType.String), ua.Variant(model.sha256, ua.VariantType.String)]
