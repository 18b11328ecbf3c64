"""A real Mosquitto broker and a real paho subscriber for the MQTT sink tests.

`Mosquitto` writes a minimal config file, starts the `mosquitto` binary on a free loopback
port, waits until the port accepts connections, and stops it again (SIGTERM by default, or
SIGKILL). It can be restarted on the same port, optionally with persistence on (so that a
subscriber's session and queued QoS 1 messages survive a broker restart) and with a
password file.

`Collector` is a paho client subscribed at QoS 1 that records every message it gets.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt


def find_mosquitto() -> str | None:
    # Debian installs the broker in /usr/sbin, which is not on every user's PATH.
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_mosquitto_passwd() -> str | None:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for candidate in ("/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A free loopback port BELOW the kernel's ephemeral range.

    A client that connects to a loopback port nobody listens on can be given that very port
    as its own source port and connect to itself (TCP simultaneous open). With a broker that
    a test stops and restarts, the MQTT client's retries then occupy the broker's port
    ("Address already in use", paho reading its own CONNECT). Source ports come only from
    the ephemeral range, so a port below it can never be taken that way.
    """
    import random

    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail loudly after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        persistence: bool = False,
        password_file: Path | None = None,
        extra_config: str = "",
    ):
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto binary not found")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.password_file = password_file
        self.extra_config = extra_config
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path = self.workdir / "mosquitto.conf"

    def _write_config(self) -> None:
        lines = [f"listener {self.port} 127.0.0.1"]
        if os.geteuid() == 0:
            # Run as root: otherwise mosquitto drops to user "mosquitto", which cannot
            # read a password file or persistence folder inside pytest's tmp_path.
            lines.append("user root")
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            pdir = self.workdir / "persist"
            pdir.mkdir(exist_ok=True)
            lines += [
                "persistence true",
                f"persistence_location {pdir}/",
                "persistence_file mosquitto.db",
                "autosave_interval 3600",
            ]
        else:
            lines.append("persistence false")
        lines += [
            "max_queued_messages 100000",
            f"log_dest file {self.log_path}",
            "log_type all",
        ]
        if self.extra_config:
            lines.append(self.extra_config)
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        assert self.proc is None, "already running"
        self._write_config()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                self.proc = None
                raise RuntimeError(f"mosquitto exited at start:\n{err}\n{log}")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(f"mosquitto did not accept connections on {self.port}")
            time.sleep(0.02)
        return self

    def stop(self, kill: bool = False, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr:
            proc.stderr.close()
        # The port must be free again before a restart on the same port.
        wait_until(lambda: not port_open(self.port), timeout, what=f"port {self.port} to close")

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Collector:
    """A real paho subscriber (QoS 1) recording (topic, payload, retain) in arrival order."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        *,
        client_id: str = "",
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
    ):
        self.topics = list(topics)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.port = port

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            return
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._subscribed.clear()

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def start(self, timeout: float = 10.0) -> "Collector":
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise AssertionError(f"collector did not subscribe within {timeout} s")
        return self

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"collector did not (re)subscribe within {timeout} s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def with_retain(self, topic: str) -> list[tuple[bytes, bool]]:
        with self._lock:
            return [(p, r) for t, p, r in self.messages if t == topic]

    def wait_count(self, topic: str, n: int, timeout: float = 10.0) -> list[bytes]:
        wait_until(lambda: len(self.on(topic)) >= n, timeout,
                   what=f"{n} messages on {topic} (have {len(self.on(topic))})")
        return self.on(topic)
