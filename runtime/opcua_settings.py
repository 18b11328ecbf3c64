"""The `opcua` section of the fsac-run config (runtime/opcua.py serves it).

A pydantic model, validated once at start: an unknown key or a wrong type fails with one
line naming `opcua.<setting>`, and binding off loopback without credentials is refused
before anything listens (an OPC UA server that anyone on the plant network may call
Inspect or SelectRecipe on is a line-stopper, not a convenience).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, List, Optional

from fsac.errors import FsacError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
POLICIES = ("None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt",
            "Aes128Sha256RsaOaep_Sign", "Aes128Sha256RsaOaep_SignAndEncrypt")


def _model() -> Any:
    # pydantic is imported only when an opcua section exists: the bare runtime does without it.
    from pydantic import BaseModel, ConfigDict, Field

    class OpcuaSettings(BaseModel):
        model_config = ConfigDict(extra="forbid")

        enabled: bool = Field(True, description="serve the station over OPC UA")
        host: str = Field("127.0.0.1", description="bind address; off loopback, credentials are required")
        port: int = Field(4840, ge=1, le=65535, description="TCP port (4840: the OPC UA default)")
        namespace: str = Field("urn:fsac:station", description="namespace URI of the station's nodes")
        username_env: Optional[str] = Field(None, description="NAME of the environment variable holding the "
                                            "user name clients must log in with")
        password_env: Optional[str] = Field(None, description="NAME of the environment variable holding the "
                                            "password")
        allow_anonymous: Optional[bool] = Field(None, description="default: true on loopback without "
                                                "credentials, else false; true off loopback is explicit consent")
        certificate: Optional[str] = Field(None, description="server certificate (DER or PEM) for signed / "
                                           "encrypted endpoints")
        private_key: Optional[str] = Field(None, description="its private key (PEM)")
        security_policies: List[str] = Field(default_factory=lambda: ["None"],
                                             description=f"endpoints offered, of {', '.join(POLICIES)}")

    return OpcuaSettings


def _one_line(err: Any, fields: list[str]) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e.get("loc", ())) or "?"
    if e.get("type") == "extra_forbidden":
        hint = difflib.get_close_matches(where, fields, n=1)
        return f"opcua.{where}: unknown setting" + (f" (did you mean {hint[0]}?)" if hint else "")
    return f"opcua.{where}: {e.get('msg', 'invalid')} (got {e.get('input')!r})"


def parse_opcua(section: dict[str, Any] | None) -> Any:
    """The validated settings, or None when the section is absent or disabled."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise FsacError(f"opcua: expected a table of settings, got {type(section).__name__}")
    from pydantic import ValidationError

    cls = _model()
    try:
        s = cls.model_validate(section)
    except ValidationError as e:
        raise FsacError(_one_line(e, list(cls.model_fields))) from None
    if not s.enabled:
        return None
    for p in s.security_policies:
        if p not in POLICIES:
            hint = difflib.get_close_matches(p, POLICIES, n=1)
            raise FsacError(f"opcua.security_policies: unknown policy {p!r}"
                            + (f" (did you mean {hint[0]}?)" if hint else f"; one of {', '.join(POLICIES)}"))
    if any(p != "None" for p in s.security_policies) and not (s.certificate and s.private_key):
        raise FsacError("opcua.certificate: signed or encrypted security policies need opcua.certificate "
                        "and opcua.private_key")
    if bool(s.username_env) != bool(s.password_env):
        raise FsacError("opcua.username_env: set both opcua.username_env and opcua.password_env, or neither")
    if s.allow_anonymous is None:
        s.allow_anonymous = s.host in LOOPBACK and not s.username_env
    if not s.allow_anonymous and not s.username_env:
        raise FsacError(f"opcua.host: {s.host} is not loopback; set opcua.username_env and opcua.password_env "
                        "(names of environment variables holding the credentials), or opcua.allow_anonymous: "
                        "true if a firewall guards the port")
    return s


def credentials(s: Any) -> tuple[str, str] | None:
    """(user, password) from the environment, or None; a named variable that is unset is an error."""
    if not s.username_env:
        return None
    for name in (s.username_env, s.password_env):
        if not os.environ.get(name):
            raise FsacError(f"opcua.{'username_env' if name == s.username_env else 'password_env'}: the "
                            f"environment variable {name} is not set (or empty)")
    return os.environ[s.username_env], os.environ[s.password_env]


def validate_opcua(section: dict[str, Any] | None) -> None:
    """runtime/config.py's check: settings, and the credential variables when named."""
    s = parse_opcua(section)
    if s is not None:
        credentials(s)
