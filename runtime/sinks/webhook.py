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

import os
import urllib.error
import urllib.request
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from fsac.errors import FsacError

from ..settings_base import EnvName, Settings, section_dict, setting_error

SECTION = "sinks.webhook"
LOOPBACK = ("127.0.0.1", "localhost", "::1")



class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: urllib would follow a 301/302/303 with a GET without
    the body (and with the bearer token), and a 200 to that GET would count the batch as
    delivered while the records went nowhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(code) for the 3xx


_OPENER = urllib.request.build_opener(_NoRedirect)

class WebhookSettings(Settings):
    """sinks.webhook: POST each batch of records (JSON lines) to a URL, at least once."""

    enabled: bool = Field(True, description="false: the section stays in the file but the sink is off")
    url: Optional[str] = Field(None, description="http(s) URL; plain http only to this machine or with token_env")
    token_env: EnvName = Field(None, description="NAME of the environment variable holding the bearer token")
    headers_env: Dict[str, str] = Field(default_factory=dict, description="{Header-Name: ENV_VAR_NAME}: more "
                                        "headers, their values read from the environment")
    timeout: float = Field(5.0, gt=0, le=600, description="seconds per POST")
    batch_max: int = Field(100, ge=1, le=10000, description="records per POST")

    @model_validator(mode="after")
    def _url(self) -> "WebhookSettings":
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise setting_error("url", f"expected an http:// or https:// URL, got {self.url!r}")
        if parts.hostname not in LOOPBACK and parts.scheme != "https" and not self.token_env:
            raise setting_error("url", f"{parts.hostname} is not this machine; use https or set token_env")
        if not all(k and v for k, v in self.headers_env.items()):
            raise setting_error("headers_env", "expected {Header-Name: ENV_VAR_NAME}")
        return self


def validate_webhook_config(cfg: Any) -> dict[str, Any]:
    return section_dict(WebhookSettings, cfg, SECTION)


def build(settings: WebhookSettings) -> "WebhookSink":
    return WebhookSink(settings)


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
            with _OPENER.open(req, timeout=self.timeout) as r:
                r.read()
        except urllib.error.HTTPError as e:
            self.failures += 1
            where = f" (to {e.headers.get('Location')}; set {SECTION}.url to where it points)" \
                if 300 <= e.code < 400 and e.headers.get("Location") else ""
            raise FsacError(f"{SECTION}: {self.url} answered {e.code} {e.reason}{where}") from None
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
