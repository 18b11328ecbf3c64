"""The base of every fsac-run settings model, and the one way their errors are reported.

Every section of the daemon's config (runtime/config_model.py), every sink's section
(runtime/sinks/*) and every source's or server's section is a pydantic model derived from
`Settings`: unknown keys are refused (`extra="forbid"`), values are checked strictly (a
quoted "1883" is not a port, 1 is not `true`), and the JSON Schema printed by
`fsac-run --config-schema` is generated from the same classes, so the schema cannot drift
from what the loader accepts.

`check(Model, data, "sinks.mqtt")` validates a section and turns pydantic's error list into
one line naming the setting, as a line engineer reads it at 3 am:

    sinks.mqtt.hots: unknown setting (did you mean host?)
    source.mode: must be one of every-frame, latest-frame, trigger; got 'latest' (did you mean latest-frame?)
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from typing import Any, ClassVar, Literal, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError
from typing_extensions import Annotated

from fsac.errors import FsacError


class CliValue(str):
    """A value typed on the command line: parsed as YAML for typed settings, kept verbatim
    for text settings (so `--source no` or `--model 0.onnx` stay strings)."""


def parse_scalar(text: str) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a runtime dependency
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def plain(value: Any) -> Any:
    """Free-form values (recipes): turn command-line strings into YAML values, recursively."""
    if isinstance(value, CliValue):
        return parse_scalar(str(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X, Annotated[X, ...] -> X (repeatedly)."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union:
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _for_field(value: CliValue, annotation: Any) -> Any:
    tp = _unwrap(annotation)
    if tp is str:
        return str(value)
    parsed = parse_scalar(str(value))
    if get_origin(tp) is list and isinstance(parsed, str):  # "cuda,cpu" from the command line
        return [v.strip() for v in parsed.split(",") if v.strip()]
    if get_origin(tp) is dict or tp is Any:
        return plain(parsed)
    return parsed


# --------------------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
               "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}


def parse_size(value: Any) -> Any:
    """"100MB" -> 100_000_000, "1GiB" -> 1073741824; other values pass on unchanged."""
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size in bytes like 100MB or 1GiB, got {value!r}")
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    return value


Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0},
              {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtT]i?)?[bB]?\s*$"}],
    "description": "bytes, or a size such as 100MB or 1GiB"})]
OptionalSize = Annotated[Optional[int], BeforeValidator(parse_size), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}, {"type": "null"}]})]


def _int_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# A text setting that also takes a bare number (a camera index: `uri: 0`).
TextOrIndex = Annotated[str, BeforeValidator(_int_as_text)]


def env_name(value: Optional[str]) -> Optional[str]:
    """A setting holding the NAME of an environment variable (never the secret itself)."""
    if value is not None and (not value or "=" in value or "\x00" in value):
        raise ValueError(f"must be the NAME of an environment variable (e.g. FSAC_MQTT_USERNAME), got {value!r}")
    return value


EnvName = Annotated[Optional[str], AfterValidator(env_name)]


# --------------------------------------------------------------------------- the base


class Settings(BaseModel):
    """A section of settings. Subclasses list their fields with defaults and descriptions."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # Settings holding file or folder paths: relative ones written in a config file are taken
    # relative to the file's folder (config.resolve_relative). `maybe_path_settings` only when
    # the value looks like a path (source.uri may be a URL or a camera index).
    path_settings: ClassVar[tuple[str, ...]] = ()
    maybe_path_settings: ClassVar[tuple[str, ...]] = ()
    # Keys that used to exist: {key: what to set instead}, reported instead of "unknown setting".
    removed_settings: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _command_line_values(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(isinstance(v, CliValue) for v in data.values()):
            return data
        fields = cls.model_fields
        return {k: (_for_field(v, fields[k].annotation) if isinstance(v, CliValue) and k in fields
                    else parse_scalar(str(v)) if isinstance(v, CliValue) else v)
                for k, v in data.items()}


def section_dict(model: type[BaseModel], section: Any, prefix: str) -> dict[str, Any]:
    """A section (its model, or raw data checked as `model`) as the plain dict a sink's
    constructor reads, without our `enabled` switch."""
    if not isinstance(section, model):
        section = check(model, section, prefix)
    return section.model_dump(exclude={"enabled"})


def sink_settings_active(section: Any) -> bool:
    """A sink section switches on by being present, unless it says `enabled: false`."""
    if section is None:
        return False
    active = getattr(section, "active", None)
    return bool(active()) if callable(active) else bool(getattr(section, "enabled", True))


# --------------------------------------------------------------------------- errors


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _walk(root: type, loc: tuple[Any, ...]) -> tuple[str, Any, Any]:
    """Follow an error location through the model classes.

    Returns (dotted setting name, the annotation at the end, the model class that holds the
    last key). Union-branch tags pydantic puts into locations are skipped."""
    parts: list[str] = []
    tp: Any = root
    holder: Any = root
    for key in loc:
        inner = _unwrap(tp)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            if isinstance(key, str) and key in inner.model_fields:
                holder, tp = inner, inner.model_fields[key].annotation
                parts.append(key)
                continue
            if isinstance(key, str):
                holder, tp = inner, None
                parts.append(key)
                continue
        if get_origin(inner) is list and isinstance(key, int):
            tp = (get_args(inner) or (Any,))[0]
            parts[-1:] = [f"{parts[-1]}[{key}]"] if parts else [f"[{key}]"]
            continue
        if get_origin(inner) is dict and isinstance(key, str):
            tp = (get_args(inner) or (Any, Any))[-1]
            parts.append(key)
            continue
        # a union tag such as 'str' or 'function-after[...]': not part of the setting's name
    return ".".join(parts), tp, holder


def _choices(tp: Any) -> list[str]:
    inner = _unwrap(tp)
    return [str(a) for a in get_args(inner)] if get_origin(inner) is Literal else []


def _message(err: dict[str, Any], tp: Any, holder: Any, name: str) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    got = _describe(value)
    if kind == "extra_forbidden":
        key = name.rsplit(".", 1)[-1]
        removed = getattr(holder, "removed_settings", {}) or {}
        if key in removed:
            return f"no longer used: {removed[key]}"
        known = list(getattr(holder, "model_fields", {}))
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        return f"unknown setting (did you mean {close[0]}?)" if close else f"unknown setting (known: {', '.join(known)})"
    if kind == "literal_error":
        choices = _choices(tp)
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"must be one of {', '.join(choices)}; got {got}{hint}"
    if kind == "missing":
        return "a value is required here"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"expected a number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind in ("string_type", "string_sub_type"):
        return f"expected text, got {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type", "dataclass_type"):
        return f"expected a table of settings, got {got}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {got}"
    if kind == "none_required" or (kind.endswith("_type") and value is None):
        return "a value is required here (got null)"
    for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if k in ctx and kind.startswith(("greater", "less")):
            return f"must be {op} {ctx[k]}, got {value}"
    if kind in ("too_short", "too_long"):
        return f"{err['msg'].lower()}, got {got}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return f"{err['msg']}, got {got}"


def setting_error(key: str, msg: str) -> PydanticCustomError:
    """For a model validator that checks several settings together: the error names `key`."""
    return PydanticCustomError("setting_error", "{key}: {msg}", {"key": key, "msg": msg})


def error_text(exc: ValidationError, root: type, prefix: str = "") -> str:
    """One line for the first error (and how many more there were)."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    name, tp, holder = _walk(root, tuple(err["loc"]))
    full = ".".join(p for p in (prefix, name) if p) or "config"
    more = f" (+{len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if err["type"] == "setting_error":
        return f"{full}.{err['ctx']['key']}: {err['ctx']['msg']}{more}"
    return f"{full}: {_message(err, tp, holder, full)}{more}"


T = typing.TypeVar("T", bound=BaseModel)


def check(model: type[T], data: Any, prefix: str = "") -> T:
    """Validate `data` as `model`; a FsacError naming the setting otherwise."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise FsacError(error_text(e, model, prefix)) from None
