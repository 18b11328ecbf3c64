"""systemd notification (sd_notify) over a plain unix datagram socket, no dependency.

With `Type=notify` systemd waits for READY=1 before it counts the service as started, and
with `WatchdogSec=` it restarts the service when WATCHDOG=1 stops arriving. The daemon only
pings the watchdog while its scoring thread is making progress or waiting honestly for
journal room (runtime/lifecycle.py `alive`), so a hung inference call (a wedged GPU driver,
say) ends in a restart instead of a silent line, and a full disk does not.

Outside systemd NOTIFY_SOCKET is unset and every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("fsac.runtime")


def sd_notify(message: str) -> bool:
    """Send one notification ("READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=..."). True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            # Non-blocking: a supervisor that stops reading its socket (a full datagram queue,
            # net.unix.max_dgram_qlen is 10 on many systems) must not stall the daemon's main
            # loop; the message is dropped and the watchdog decides.
            sock.send(message.encode("utf-8"), socket.MSG_DONTWAIT)
        return True
    except OSError as e:
        # Never let a notification problem stop scoring; systemd will notice on its own.
        log.debug("sd_notify(%r) failed: %s", message, e)
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not os.environ.get("NOTIFY_SOCKET"):
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (e.g. a wrapper script)
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2e6
