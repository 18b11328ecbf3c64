"""Reading ONNX's protobuf wire format without onnx (the edge box has neither onnx nor torch):
the top-level fields of a message, and a ModelProto's metadata_props (field 14), from bytes
in memory or from a file read field by field, seeking past the graph."""

from __future__ import annotations

from fsac.errors import FsacError

METADATA_FIELD = 14  # ModelProto.metadata_props


def varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes):
    """Yield (field_number, wire_type, value) for the top level of a protobuf message."""
    pos = 0
    n = len(data)
    while pos < n:
        key, pos = varint(data, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = varint(data, pos)
        elif wt in (1, 2, 5):
            if wt == 2:
                ln, pos = varint(data, pos)
            else:
                ln = 8 if wt == 1 else 4
            if pos + ln > n:
                raise ValueError("truncated field")
            val, pos = data[pos : pos + ln], pos + ln
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, val


def read_metadata_bytes(data: bytes, source: str = "<model>") -> dict[str, str]:
    """metadata_props of a serialized ONNX ModelProto (field 14), without importing onnx.

    A key that occurs twice is refused (onnx's checker refuses it too): which of the two
    values a reader would take is not defined, and for "fsac.threshold" that matters.
    """
    meta: dict[str, str] = {}
    try:
        for num, wt, val in _fields(data):
            if num == METADATA_FIELD and wt == 2:
                key = value = ""
                for n2, w2, v2 in _fields(val):
                    if n2 == 1 and w2 == 2:
                        key = v2.decode("utf-8")
                    elif n2 == 2 and w2 == 2:
                        value = v2.decode("utf-8")
                if key in meta:
                    raise FsacError(f"{source}: metadata key {key!r} occurs more than once; refusing the file")
                meta[key] = value
    except (ValueError, UnicodeDecodeError) as e:
        raise FsacError(f"{source}: not a valid ONNX model file ({e})") from None
    return meta


def _read_varint(f) -> int | None:
    """A protobuf varint from a binary file; None at a clean end of file."""
    result = shift = 0
    while True:
        b = f.read(1)
        if not b:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def scan_metadata(f, size: int, source: str) -> dict[str, str]:
    """metadata_props of an ONNX file, reading only the top-level fields and seeking past the
    graph, so a 500 MB model is never held in memory."""
    meta: dict[str, str] = {}
    f.seek(0)
    while True:
        key = _read_varint(f)
        if key is None:
            return meta
        num, wt = key >> 3, key & 7
        if wt == 0:
            _read_varint(f)
            continue
        if wt == 2:
            length = _read_varint(f)
            if length is None:
                raise ValueError("truncated field")
        elif wt in (1, 5):
            length = 8 if wt == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        start = f.tell()
        if start + length > size:
            raise ValueError("truncated field")
        if num == METADATA_FIELD and wt == 2:
            entry = read_metadata_bytes(b"\x72" + encode_varint(length) + f.read(length))
            for k, v in entry.items():
                if k in meta:
                    raise FsacError(f"{source}: metadata key {k!r} occurs more than once; refusing the file")
                meta[k] = v
        f.seek(start + length)


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_spans(data: bytes):
    """Yield (field_number, start, end) for each top-level field; data[start:end] is the
    field's complete encoding (tag included), so it can be copied verbatim."""
    pos, n = 0, len(data)
    while pos < n:
        start = pos
        key, pos = varint(data, pos)
        wt = key & 7
        if wt == 0:
            _, pos = varint(data, pos)
        elif wt == 1:
            pos += 8
        elif wt == 2:
            ln, pos = varint(data, pos)
            pos += ln
        elif wt == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if pos > n:
            raise ValueError("truncated field")
        yield key >> 3, start, pos


def encode_metadata_entry(key: str, value: str | bytes) -> bytes:
    k = key.encode("utf-8")
    v = value if isinstance(value, bytes) else value.encode("utf-8")
    body = b"\x0a" + encode_varint(len(k)) + k + b"\x12" + encode_varint(len(v)) + v
    return bytes([(METADATA_FIELD << 3) | 2]) + encode_varint(len(body)) + body
