"""The `opcua` section of the fsac-run config (runtime/opcua.py serves it).

A section of the config tree (runtime/config_model.py), validated at start: an unknown key
or a wrong type fails with one line naming `opcua.<setting>`, and binding off loopback without credentials is refused
before anything listens (an OPC UA server that anyone on the plant network may call
Inspect or SelectRecipe on is a line-stopper, not a convenience).
"""

from __future__ import annotations

import os
from typing import Any, List, Literal, Optional

from pydantic import Field, model_validator

from fsac.errors import FsacError

from .settings_base import EnvName, Settings, check, setting_error

LOOPBACK = ("127.0.0.1", "localhost", "::1")
Policy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt", "Aes128Sha256RsaOaep_Sign",
                 "Aes128Sha256RsaOaep_SignAndEncrypt"]
POLICIES = Policy.__args__


class OpcuaSettings(Settings):
    """opcua: the station's OPC UA server (runtime/opcua.py)."""

    enabled: bool = Field(True, description="serve the station over OPC UA")
    host: str = Field("127.0.0.1", description="bind address; off loopback, credentials are required")
    port: int = Field(4840, ge=1, le=65535, description="TCP port (4840: the OPC UA default)")
    namespace: str = Field("urn:fsac:station", description="namespace URI of the station's nodes")
    username_env: EnvName = Field(None, description="NAME of the environment variable holding the user name "
                                  "clients must log in with")
    password_env: EnvName = Field(None, description="NAME of the environment variable holding the password")
    allow_anonymous: Optional[bool] = Field(None, description="default: true on loopback without credentials, "
                                            "else false; true off loopback is explicit consent")
    certificate: Optional[str] = Field(None, description="server certificate (DER or PEM) for signed / "
                                       "encrypted endpoints")
    private_key: Optional[str] = Field(None, description="its private key (PEM)")
    security_policies: List[Policy] = Field(default_factory=lambda: ["None"], description="endpoints offered")
    path_settings = ("certificate", "private_key")

    @model_validator(mode="after")
    def _access(self) -> "OpcuaSettings":
        if any(p != "None" for p in self.security_policies) and not (self.certificate and self.private_key):
            raise setting_error("certificate", "signed or encrypted security policies need opcua.certificate "
                                "and opcua.private_key")
        if bool(self.username_env) != bool(self.password_env):
            raise setting_error("username_env", "set both opcua.username_env and opcua.password_env, or neither")
        if self.allow_anonymous is None:
            self.allow_anonymous = self.host in LOOPBACK and not self.username_env
        if self.enabled and not self.allow_anonymous and not self.username_env:  # off: it listens nowhere
            raise setting_error("host", f"{self.host} is not loopback; set opcua.username_env and "
                                "opcua.password_env (names of environment variables holding the credentials), "
                                "or opcua.allow_anonymous: true if a firewall guards the port")
        return self


def parse_opcua(section: Any) -> Optional[OpcuaSettings]:
    """The validated settings, or None when the section is absent or disabled."""
    if section is None:
        return None
    s = section if isinstance(section, OpcuaSettings) else check(OpcuaSettings, section, "opcua")
    return s if s.enabled else None


def credentials(s: Any) -> tuple[str, str] | None:
    """(user, password) from the environment, or None; a named variable that is unset is an error."""
    if not s.username_env:
        return None
    for name in (s.username_env, s.password_env):
        if not os.environ.get(name):
            raise FsacError(f"opcua.{'username_env' if name == s.username_env else 'password_env'}: the "
                            f"environment variable {name} is not set (or empty)")
    return os.environ[s.username_env], os.environ[s.password_env]


def validate_opcua(section: Any) -> None:
    """runtime/config.py's check: settings, and the credential variables when named."""
    s = parse_opcua(section)
    if s is not None:
        credentials(s)
