"""Settings of the MQTT sink (`sinks.mqtt`): defaults and the pure validator.

Separate from the sink so that checking a config file needs neither paho nor a broker.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import AfterValidator, Field, field_validator, model_validator
from typing_extensions import Annotated

from fsac.errors import FsacError

from ..settings_base import EnvName, Settings, section_dict, setting_error

SECTION = "sinks.mqtt"


def _topic(value: Optional[str], *, allow_empty: bool = False) -> Optional[str]:
    if value is None:
        return None
    if not value and not allow_empty:
        raise ValueError("must not be empty")
    if "+" in value or "#" in value or "\x00" in value:
        raise ValueError(f"{value!r} must not contain the wildcards '+' or '#'")
    return value


Topic = Annotated[str, AfterValidator(_topic)]
OptionalTopic = Annotated[Optional[str], AfterValidator(_topic)]
Seconds = Annotated[float, Field(gt=0)]


class MqttSettings(Settings):
    """sinks.mqtt: where and how results are published (topics are under topic_prefix)."""

    enabled: bool = Field(True, description="false: the section stays in the file but the sink is off")
    host: str = Field("localhost", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535)
    client_id: Optional[str] = Field(None, min_length=1, description="null: fsac-<hostname>")
    topic_prefix: Annotated[str, AfterValidator(lambda v: _topic(v, allow_empty=True))] = Field(
        "fsac/{client_id}", description="'{client_id}' is replaced; '' = topics used verbatim; with station.site/"
        "line/station set the default is fsac/<site>/<line>/<station>")
    results_topic: Topic = Field("results", description="every record")
    anomalies_topic: OptionalTopic = Field("anomalies", description="verdict defective only; null disables")
    errors_topic: OptionalTopic = Field(None, description="records with an error; null (default) disables")
    status_topic: Topic = Field("status", description="retained online / offline (also the last will)")
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(30, ge=5, le=65535, description="seconds")
    connect_timeout: Seconds = 5.0
    reconnect_min_delay: Seconds = Field(1.0, description="seconds; doubles per failed attempt ...")
    reconnect_max_delay: Seconds = Field(30.0, description="... up to this")
    max_inflight: int = Field(20, ge=1, le=10000, description="messages handed to the client and not yet "
                              "acknowledged")
    tls: bool = False
    ca_certs: Optional[str] = Field(None, min_length=1, description="null with tls: the system CA store")
    certfile: Optional[str] = Field(None, min_length=1, description="client certificate (mutual TLS)")
    keyfile: Optional[str] = Field(None, min_length=1, description="its private key")
    tls_insecure: bool = Field(False, description="skip the broker host name check (never in production)")
    username_env: EnvName = Field(None, description="NAME of the environment variable holding the user name")
    password_env: EnvName = Field(None, description="NAME of the environment variable holding the password")
    publish_timeout: Seconds = Field(10.0, description="seconds a delivery waits for the broker's acknowledgements of "
                                     "one window of max_inflight messages")
    batch_max: int = Field(256, ge=1, le=100000, description="records per delivery")

    path_settings = ("ca_certs", "certfile", "keyfile")
    # Settings of the SQLite disk queue this sink had before the journal took its job.
    removed_settings = {k: f"records wait in fsac-run's journal; set {v} instead" for k, v in {
        "buffer_dir": "journal.dir", "buffer_max_bytes": "journal.max_bytes",
        "buffer_max_records": "journal.max_records", "buffer_fsync": "journal.sync"}.items()}

    @field_validator("qos", mode="before")
    @classmethod
    def _qos_not_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # True == 1 in Python; in a config file it is a mistake
            raise ValueError(f"must be one of 0, 1, 2; got {v!r}")
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and any(c in v for c in "/+#"):
            raise ValueError(f"{v!r} must not contain '/', '+' or '#'")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v.endswith("/"):
            raise ValueError(f"{v!r} must not end with '/'")
        return v

    @model_validator(mode="after")
    def _together(self) -> "MqttSettings":
        def fail(key: str, msg: str) -> None:
            raise setting_error(key, msg)

        if self.reconnect_max_delay < self.reconnect_min_delay:
            fail("reconnect_max_delay", "must be >= reconnect_min_delay")
        for key in ("ca_certs", "certfile", "keyfile"):
            if getattr(self, key) is not None and not self.tls:
                fail(key, "is set but tls is false (set sinks.mqtt.tls: true)")
        if self.keyfile is not None and self.certfile is None:
            fail("keyfile", "needs sinks.mqtt.certfile (the client certificate)")
        if self.tls_insecure and not self.tls:
            fail("tls_insecure", "only applies with tls: true")
        if self.password_env is not None and self.username_env is None:
            fail("password_env", "needs sinks.mqtt.username_env too")
        return self


MQTT_DEFAULTS: dict[str, Any] = MqttSettings().model_dump(exclude={"enabled"})


def validate_mqtt_config(cfg: Any) -> dict[str, Any]:
    """Check the `sinks.mqtt` section and return it as a dict with defaults filled in.

    Pure: reads neither disk nor environment (the sink does that when it starts). Raises
    FsacError naming the setting, e.g. "sinks.mqtt.qos: must be one of 0, 1, 2; got 3".
    """
    return section_dict(MqttSettings, cfg, SECTION)


def _check_topic(key: str, value: Any, allow_none: bool, allow_empty: bool = False) -> None:
    """For a topic built at run time (topic_prefix with {client_id} filled in)."""
    if value is None and not allow_none:
        raise FsacError(f"{SECTION}.{key}: must be set")
    try:
        _topic(value, allow_empty=allow_empty)
    except ValueError as e:
        raise FsacError(f"{SECTION}.{key}: {e}") from None


def _err(key: str, msg: str) -> FsacError:
    return FsacError(f"{SECTION}.{key}: {msg}")
