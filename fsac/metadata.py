"""Rewrite the metadata of a sealed fsac model file, without torch and without onnx.

`fsac calibrate` has to write a threshold into a model file on whatever machine it runs
on, the edge box included, and must leave every other byte of the graph as it was. An ONNX
file is a protobuf `ModelProto`; its metadata is the repeated top-level field 14
(`metadata_props`, entries {1: key, 2: value}). Protobuf parsers accept fields in any
order, so we copy every other top-level field verbatim, drop the old field-14 entries and
append the new ones, with "fsac.seal" last holding the placeholder that is then replaced by
the file's hash (atomic write).

    data, info = load_model_file(path)                  # verifies the old seal
    write_with_metadata(path, data, {**info.metadata, "fsac.threshold": "0.73"}, force=True)

`update_model_metadata(path, updates)` does exactly that. `write_with_metadata` streams the
pieces to disk and seals on the way, so a large model never exists twice in memory;
`replace_metadata_bytes` gives the same bytes in memory, for `write_model_file`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterable

from fsac.errors import FsacError
from fsac.io import atomic_write_with
from fsac.modelfile import SEAL_KEY, SEAL_PLACEHOLDER, ModelInfo, load_model_file, parse_model_info
from fsac.onnx_wire import METADATA_FIELD, encode_metadata_entry, field_spans

def _metadata_parts(data: bytes, metadata: dict[str, str], source: str) -> list[memoryview | bytes]:
    """The new file as a list of pieces: views of `data` (no copies) for every top-level
    field but metadata_props, then `metadata`'s entries, then the seal placeholder entry."""
    view = memoryview(data)
    parts: list[memoryview | bytes] = []
    try:
        for num, start, end in field_spans(data):
            if num != METADATA_FIELD:
                parts.append(view[start:end])
    except ValueError as e:
        raise FsacError(f"{source}: not a valid ONNX model file ({e})") from None
    for key, value in metadata.items():
        if key == SEAL_KEY:
            continue
        if not isinstance(value, str):
            raise TypeError(f"metadata value for {key!r} must be a string, got {type(value).__name__}")
        parts.append(encode_metadata_entry(key, value))
    parts.append(encode_metadata_entry(SEAL_KEY, SEAL_PLACEHOLDER))
    return parts


def replace_metadata_bytes(data: bytes, metadata: dict[str, str], source: str = "<model>") -> bytes:
    """Serialized ModelProto -> the same bytes with metadata_props replaced by `metadata`
    plus a "fsac.seal" placeholder entry (last), ready for `write_model_file` to seal."""
    return b"".join(_metadata_parts(data, metadata, source))


def write_with_metadata(path: str | os.PathLike, data: bytes, metadata: dict[str, str], force: bool = False,
                        source: str | None = None) -> Path:
    """`write_model_file(path, replace_metadata_bytes(data, metadata))` without building the
    new file in memory: the pieces go straight to the temporary file and are hashed on the
    way, the seal is written at its place (the last 64 bytes: the seal entry comes last),
    and the temporary file's seal is verified by reading it back before it replaces `path`."""
    path = Path(path)
    if path.exists() and not force:
        raise FsacError(f"{path} exists; pass --force to overwrite it")
    return _write_sealed(path, _metadata_parts(data, metadata, source or str(path)))


def write_stream_with_metadata(path: str | os.PathLike, chunks: Iterable[bytes], metadata: dict[str, str],
                               force: bool = False) -> Path:
    """Like `write_with_metadata` for a model that arrives in pieces: `chunks` are a
    serialized ModelProto without metadata_props (e.g. `fsac.export.external.inline_model_parts`),
    so that a model assembled from several files is never whole in memory."""
    path = Path(path)
    if path.exists() and not force:
        raise FsacError(f"{path} exists; pass --force to overwrite it")
    return _write_sealed(path, itertools.chain(chunks, _metadata_parts(b"", metadata, str(path))))


def _write_sealed(path: Path, parts: Iterable[bytes | memoryview]) -> Path:
    import hashlib

    from fsac.modelfile import _stream_seal

    def write(f) -> None:
        h = hashlib.sha256()
        for p in parts:
            h.update(p)
            f.write(p)
        digest = h.hexdigest().encode("ascii")
        f.seek(-len(SEAL_PLACEHOLDER), os.SEEK_END)
        f.write(digest)
        f.flush()
        if _stream_seal(f, str(path)) != digest.decode():  # refuses a repeated seal entry, too
            raise FsacError(f"{path}: the written model file does not verify; nothing was replaced")

    return atomic_write_with(path, write)


def update_model_metadata(path: str | os.PathLike, updates: dict[str, str | None],
                          out: str | os.PathLike | None = None, force: bool = False) -> tuple[Path, ModelInfo]:
    """Verify `path`, apply `updates` (value None removes the key), re-seal and write.

    Writes to `out` when given (refused if it exists unless `force`), else in place
    (atomically: a crash leaves the old file). Returns (written path, its ModelInfo).
    """
    path = Path(path)
    data, info = load_model_file(path)
    meta = dict(info.metadata)
    for k, v in updates.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    target = Path(out) if out is not None else path
    parse_model_info(meta, str(target), seal="")  # refuse metadata the loader would refuse, before writing
    in_place = target.resolve() == path.resolve()
    write_with_metadata(target, data, meta, force=force or in_place, source=str(path))
    _, new_info = load_model_file(target)
    return target, new_info
