"""Webhook sink (`sinks.webhook`): records POSTed to an HTTP(S) endpoint, at least once.

A journal consumer like JSONL and MQTT (runtime/delivery.py): `deliver(lines)` POSTs one
batch as newline-delimited JSON (`application/x-ndjson`, the journal's lines verbatim, oldest
first) and returns only on a 2xx answer; anything else raises, the daemon retries the same
batch with backoff (0.2 s doubling to 5 s) and the records wait in the journal. A consumer
drops the duplicates a retry may cause by (run_id, seq).

Secrets never sit in the config file: `token_env` names the environment variable holding a
bearer token, `headers_env` maps header names to environment variables. A URL whose host is
not this machine needs https or a token.
"""

from __future__ import annotations

import difflib
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from fsac.errors import FsacError

SECTION = "sinks.webhook"
DEFAULTS: dict[str, Any] = {"url": None, "token_env": None, "headers_env": {}, "timeout": 5.0, "batch_max": 100}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def validate_webhook_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(DEFAULTS), n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(DEFAULTS)}"
        raise FsacError(f"{SECTION}.{unknown[0]}: unknown setting ({hint})")
    out = {**DEFAULTS, **cfg}
    url = out["url"]
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise FsacError(f"{SECTION}.url: expected an http:// or https:// URL, got {url!r}")
    if parts.hostname not in LOOPBACK and parts.scheme != "https" and not out["token_env"]:
        raise FsacError(f"{SECTION}.url: {parts.hostname} is not this machine; use https or set token_env")
    for key in ("token_env",):
        v = out[key]
        if v is not None and (not isinstance(v, str) or not v or "=" in v):
            raise FsacError(f"{SECTION}.{key}: must be the NAME of an environment variable, got {v!r}")
    if not isinstance(out["headers_env"], dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in out["headers_env"].items()):
        raise FsacError(f"{SECTION}.headers_env: expected {{Header-Name: ENV_VAR_NAME}}")
    t = out["timeout"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 600:
        raise FsacError(f"{SECTION}.timeout: expected seconds in (0, 600], got {t!r}")
    b = out["batch_max"]
    if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 10000:
        raise FsacError(f"{SECTION}.batch_max: expected an integer 1..10000, got {b!r}")
    return out


class WebhookSink:
    name = "webhook"
    durable = True
    needs_images = False
    accepts_raw_bytes = False

    def __init__(self, cfg: dict[str, Any] | None) -> None:
        c = validate_webhook_config(cfg)
        self.url, self.timeout, self.batch_max = c["url"], float(c["timeout"]), c["batch_max"]
        self.headers = {"Content-Type": "application/x-ndjson"}
        for header, env in c["headers_env"].items():
            if env not in os.environ:
                raise FsacError(f"{SECTION}.headers_env.{header}: environment variable {env} is not set")
            self.headers[header] = os.environ[env]
        if c["token_env"]:
            token = os.environ.get(c["token_env"], "")
            if not token:
                raise FsacError(f"{SECTION}.token_env: environment variable {c['token_env']} holds no token")
            self.headers["Authorization"] = f"Bearer {token}"
        self.posted = 0
        self.failures = 0

    def deliver(self, lines: list[bytes]) -> None:
        body = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                r.read()
        except urllib.error.HTTPError as e:
            self.failures += 1
            raise FsacError(f"{SECTION}: {self.url} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            self.failures += 1
            raise FsacError(f"{SECTION}: cannot POST to {self.url} ({getattr(e, 'reason', e)})") from None
        self.posted += len(lines)

    def flush(self) -> None:
        pass

    def close(self, timeout: float = 10.0) -> None:
        pass

    def stats(self) -> dict[str, float]:
        return {"posted": self.posted, "post_failures": self.failures}
