"""The fsac model file: one ONNX graph, self-describing and sealed (torch-free, onnx-free).

Contract between `fsac export`, `fsac calibrate` and `fsac-run`:

  input   "image"          uint8  [N, S, S, 3]  RGB pixels from `fsac.preprocess.resize_crop`
  outputs "score"          float32 [N]   anomaly score AS = sigmoid(logit) in [0, 1], for people
          "logit"          float32 [N]   anomaly logit z = (sim_anomalous - sim_normal) / tau:
                                         the number that ranks and decides (`fsac.score`)
          "sim_normal"     float32 [N]   cosine s(CF, AT+), AT+ from the normal prompts
          "sim_anomalous"  float32 [N]   cosine s(CF, AT-), AT- from the anomalous prompts

The decision threshold is stored in logit units ("fsac.logit_threshold"), with its score-unit
twin ("fsac.threshold") for display only. Format version 1 (outputs score / sim_pos /
sim_neg, a threshold in saturating score units) is refused with a line that says to re-export.

Normalisation by mean/std is inside the graph. Everything else the runtime needs is in the
graph's `metadata_props`, keys prefixed "fsac." (see `REQUIRED_KEYS`). Values are strings;
structured values are JSON.

Reading the metadata without onnx: fsac/onnx_wire.py.

Sealing: the key "fsac.seal" holds the sha256 of the whole file computed with the seal's own
64 bytes replaced by `SEAL_PLACEHOLDER`. Any changed byte (weights, graph, metadata such as
the threshold) breaks the seal, and the runtime refuses the file. The check works on the raw
bytes, so the edge box needs neither onnx nor torch to do it.

TensorRT engines carry no metadata: they get a JSON sidecar `<engine>.json` with the same
metadata plus the engine's sha256 (`write_engine_sidecar` / `load_engine_file`). The sidecar
is sealed too ("sidecar_seal": sha256 of its canonical JSON without that key), so editing
its threshold by hand is refused like editing a model file.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsac.errors import FsacError
from fsac.io import atomic_write_bytes, atomic_write_json, sha256_bytes
from fsac.onnx_wire import read_metadata_bytes, scan_metadata  # noqa: F401 - read_metadata_bytes: part of this API
from fsac.preprocess import PreprocessSpec
from fsac.score import score_from_logit

FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (2,)
PREFIX = "fsac."
SEAL_KEY = "fsac.seal"
SEAL_PLACEHOLDER = b"0" * 64
SIDECAR_SEAL_KEY = "sidecar_seal"
INPUT_NAME = "image"
OUTPUT_NAMES = ("score", "logit", "sim_normal", "sim_anomalous")

REQUIRED_KEYS = (
    "fsac.format_version",
    "fsac.version",
    "fsac.arch",
    "fsac.weights_id",
    "fsac.object",
    "fsac.preprocess",
    "fsac.inputs",
    "fsac.outputs",
    "fsac.checkpoint_sha256",
    "fsac.precision",
)

# protobuf wire encoding of the StringStringEntryProto {key: "fsac.seal", value: <64 bytes>}:
# field 1 (key), length 9, "fsac.seal", field 2 (value), length 64.
_SEAL_PREFIX = b"\x0a\x09" + SEAL_KEY.encode() + b"\x12\x40"


# --------------------------------------------------------------------------- sealing


def _seal_offset(data: bytes, source: str) -> int:
    first = data.find(_SEAL_PREFIX)
    if first < 0:
        raise FsacError(f"{source}: not a sealed fsac model file (no {SEAL_KEY} entry); re-export it with `fsac export`")
    if data.find(_SEAL_PREFIX, first + 1) >= 0:
        raise FsacError(f"{source}: model file has more than one {SEAL_KEY} entry; refusing it")
    return first + len(_SEAL_PREFIX)


def seal_bytes(data: bytes, source: str = "<model>") -> bytes:
    """Fill in the seal of a serialized model whose "fsac.seal" value is the placeholder."""
    off = _seal_offset(data, source)
    unsealed = data[:off] + SEAL_PLACEHOLDER + data[off + 64 :]
    digest = sha256_bytes(unsealed).encode("ascii")
    return unsealed[:off] + digest + unsealed[off + 64 :]


def _seal_mismatch(source: str, recorded: bytes, actual: bytes) -> FsacError:
    return FsacError(
        f"{source}: model file is damaged or was modified after export (content hash "
        f"{actual[:12].decode()}... does not match the recorded {recorded[:12].decode(errors='replace')}...); "
        "re-export or re-calibrate it with fsac"
    )


def verify_seal(data: bytes, source: str = "<model>") -> str:
    """Return the file's seal (its content hash) or raise FsacError if any byte changed."""
    return _stream_seal(io.BytesIO(data), source)


# --------------------------------------------------------------------------- model info


@dataclass
class ModelInfo:
    """What the runtime needs to know about a model file, parsed and validated."""

    source: str
    format_version: int
    fsac_version: str
    arch: str
    weights_id: str
    object_name: str
    preprocess: PreprocessSpec
    precision: str
    checkpoint_sha256: str
    logit_threshold: float | None  # the decision threshold (fsac.score.is_defective)
    seal: str
    metadata: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    @property
    def threshold(self) -> float | None:
        """The threshold in score units (sigmoid of the logit threshold), for display."""
        return None if self.logit_threshold is None else score_from_logit(self.logit_threshold)

    @property
    def name(self) -> str:
        return Path(self.source).name


def parse_model_info(meta: dict[str, str], source: str, seal: str) -> ModelInfo:
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise FsacError(f"{source}: not an fsac model file (metadata lacks {', '.join(missing)})")
    try:
        version = int(meta["fsac.format_version"])
    except ValueError:
        raise FsacError(f"{source}: bad fsac.format_version {meta['fsac.format_version']!r}") from None
    if version < min(SUPPORTED_FORMAT_VERSIONS):
        raise FsacError(
            f"{source}: model format version {version} was written by an older fsac (outputs score/sim_pos/"
            f"sim_neg, threshold in saturating score units); this fsac reads format {FORMAT_VERSION}. "
            "Re-export it with `fsac export` and re-run `fsac calibrate`"
        )
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise FsacError(
            f"{source}: model format version {version} is not supported by this fsac "
            f"(supports {list(SUPPORTED_FORMAT_VERSIONS)}); upgrade fsac or re-export the model"
        )
    try:
        spec = PreprocessSpec.from_dict(json.loads(meta["fsac.preprocess"]))
    except (json.JSONDecodeError, TypeError, FsacError) as e:
        raise FsacError(f"{source}: bad fsac.preprocess metadata ({e})") from None
    thr_text = meta.get("fsac.logit_threshold", "")
    logit_threshold = None
    if thr_text:
        try:
            logit_threshold = float(thr_text)
        except (TypeError, ValueError):
            raise FsacError(f"{source}: bad fsac.logit_threshold {thr_text!r}") from None
        if not math.isfinite(logit_threshold):
            raise FsacError(f"{source}: fsac.logit_threshold {thr_text!r} is not a finite number; "
                            "re-run `fsac calibrate`")
    return ModelInfo(
        source=source,
        format_version=version,
        fsac_version=meta["fsac.version"],
        arch=meta["fsac.arch"],
        weights_id=meta["fsac.weights_id"],
        object_name=meta["fsac.object"],
        preprocess=spec,
        precision=meta["fsac.precision"],
        checkpoint_sha256=meta["fsac.checkpoint_sha256"],
        logit_threshold=logit_threshold,
        seal=seal,
        metadata=dict(meta),
    )


def load_model_file(path: str | os.PathLike) -> tuple[bytes, ModelInfo]:
    """Read, verify and describe a sealed ONNX model file. Raises FsacError naming the file."""
    path = _existing_file(path, str(path))
    data = path.read_bytes()
    return data, _inspect(io.BytesIO(data), len(data), str(path))


def _stream_seal(f, source: str, chunk: int = 1 << 20) -> str:
    """verify_seal without reading the whole file into memory: hash it in chunks with the
    seal's 64 bytes replaced by the placeholder, refusing a missing or repeated seal entry."""
    import hashlib

    h = hashlib.sha256()
    f.seek(0)
    carry = b""  # the tail of the previous chunk, so a seal entry split across chunks is found
    pos = 0  # file offset of carry[0]
    found: list[int] = []
    keep = len(_SEAL_PREFIX) + 64
    while True:
        block = f.read(chunk)
        buf = carry + block
        i = buf.find(_SEAL_PREFIX)
        while i >= 0:
            off = pos + i + len(_SEAL_PREFIX)
            if off not in found:
                found.append(off)
            i = buf.find(_SEAL_PREFIX, i + 1)
        if len(found) > 1:
            raise FsacError(f"{source}: model file has more than one {SEAL_KEY} entry; refusing it")
        done = not block
        # Hash everything except the last `keep` bytes, which may still hold a split seal value.
        cut = len(buf) if done else max(0, len(buf) - keep)
        part = bytearray(buf[:cut])
        if found and found[0] < pos + cut and found[0] + 64 > pos:
            recorded_lo = max(found[0] - pos, 0)
            recorded_hi = min(found[0] + 64 - pos, cut)
            part[recorded_lo:recorded_hi] = SEAL_PLACEHOLDER[: recorded_hi - recorded_lo]
        h.update(part)
        carry, pos = buf[cut:], pos + cut
        if done:
            break
    if not found:
        raise FsacError(f"{source}: not a sealed fsac model file (no {SEAL_KEY} entry); re-export it with `fsac export`")
    f.seek(found[0])
    recorded = f.read(64)
    actual = h.hexdigest().encode("ascii")
    if recorded != actual:
        raise _seal_mismatch(source, recorded, actual)
    return actual.decode("ascii")


def _existing_file(path: str | os.PathLike, source: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FsacError(f"model file not found: {source}")
    if not path.is_file():
        raise FsacError(f"model path is not a file: {source}")
    return path


def _inspect(f, size: int, source: str) -> ModelInfo:
    """Verify the seal and parse the metadata of a model file open as the binary file `f`."""
    seal = _stream_seal(f, source)
    try:
        meta = scan_metadata(f, size, source)
    except (ValueError, UnicodeDecodeError) as e:
        raise FsacError(f"{source}: not a valid ONNX model file ({e})") from None
    if meta.get(SEAL_KEY) != seal:
        # The seal bytes were found somewhere else than in the model's own metadata_props.
        raise FsacError(f"{source}: the model's metadata has no valid {SEAL_KEY} entry; re-export it with `fsac export`")
    return parse_model_info(meta, source, seal)


def inspect_model_file(path: str | os.PathLike, source: str | None = None) -> ModelInfo:
    """Like `load_model_file`, but streams the file instead of reading it whole: peak memory
    stays at a chunk, which matters for a 470 MB model on a small edge box. `source` names
    the file in messages (e.g. when `path` is /proc/self/fd/N)."""
    source = source or str(path)
    with open(_existing_file(path, source), "rb") as f:
        return _inspect(f, os.fstat(f.fileno()).st_size, source)


def write_model_file(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    """Seal and atomically write serialized model bytes. Refuses to overwrite without force."""
    path = Path(path)
    if path.exists() and not force:
        raise FsacError(f"{path} exists; pass --force to overwrite it")
    return atomic_write_bytes(path, seal_bytes(data, str(path)))


# --------------------------------------------------------------------------- TensorRT sidecar


def engine_sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(str(engine_path) + ".json")


def _sidecar_seal(sidecar: dict[str, Any]) -> str:
    body = {k: v for k, v in sidecar.items() if k != SIDECAR_SEAL_KEY}
    body = json.loads(json.dumps(body))  # what a reader will see (tuples -> lists, int keys -> str)
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii"))


def write_engine_sidecar(engine_path: str | os.PathLike, metadata: dict[str, str], extra: dict[str, Any]) -> Path:
    engine_path = Path(engine_path)
    reserved = {"metadata", "engine_sha256", SIDECAR_SEAL_KEY} & set(extra)
    if reserved:
        raise FsacError(f"engine sidecar: extra keys {sorted(reserved)} are reserved")
    data = engine_path.read_bytes()
    sidecar = {"metadata": metadata, "engine_sha256": sha256_bytes(data), **extra}
    sidecar[SIDECAR_SEAL_KEY] = _sidecar_seal(sidecar)
    return atomic_write_json(engine_sidecar_path(engine_path), sidecar)


def load_engine_file(path: str | os.PathLike) -> tuple[bytes, ModelInfo, dict[str, Any]]:
    """Read a TensorRT engine and its sidecar; verify the engine's hash against the sidecar."""
    path = Path(path)
    side = engine_sidecar_path(path)
    if not path.is_file():
        raise FsacError(f"engine file not found: {path}")
    if not side.is_file():
        raise FsacError(f"engine sidecar not found: {side} (written by `fsac export --engine`)")
    try:
        sidecar = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FsacError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(sidecar, dict):
        raise FsacError(f"{side}: not an fsac engine sidecar (expected a JSON object)")
    if sidecar.get(SIDECAR_SEAL_KEY) != _sidecar_seal(sidecar):
        raise FsacError(f"{side}: sidecar is damaged or was edited after export (its {SIDECAR_SEAL_KEY} does not "
                        "match its content); rebuild the engine with `fsac export --engine`")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if sidecar.get("engine_sha256") != actual:
        raise FsacError(f"{path}: engine bytes do not match the sha256 in {side.name}; rebuild the engine")
    meta = sidecar.get("metadata")
    if not isinstance(meta, dict):
        raise FsacError(f"{side}: sidecar has no metadata object")
    return data, parse_model_info(meta, str(path), actual), sidecar
