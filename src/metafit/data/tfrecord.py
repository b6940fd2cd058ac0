"""TFRecord files and ``tf.train.Example`` protos without TensorFlow.

TFRecord framing (one record)::

    uint64 length            (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with ``masked_crc32c(b) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2**32)`` for
``c = crc32c(b)`` (CRC-32C, Castagnoli polynomial, reflected ``0x82F63B78``). Every CRC is
verified on read; a mismatch raises ValueError naming the file and the record.

``tf.train.Example`` (protobuf, proto3 wire format) is::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }      // entries: { string key = 1; Feature value = 2; }
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }    // float32
    Int64List { repeated int64 value = 1 [packed]; }

:func:`decode_example` accepts packed and unpacked repeated scalars and skips unknown fields;
:func:`encode_example` writes the packed form, as TensorFlow does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from metafit.atomic import atomic_file

__all__ = [
    "Feature",
    "crc32c",
    "decode_example",
    "encode_example",
    "masked_crc32c",
    "read_tfrecords",
    "write_tfrecords",
]

Feature = list[bytes] | list[int] | list[float]

_POLY = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def _crc32c_py(data: bytes, crc: int = 0) -> int:
    c = crc ^ 0xFFFFFFFF
    t = _TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


try:  # optional accelerated implementations (same results); the pure-Python table is the fallback
    import google_crc32c as _gcrc  # type: ignore[import-not-found]

    def _crc32c_fast(data: bytes) -> int:
        return int(_gcrc.value(bytes(data)))
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import crc32c as _crcmod  # type: ignore[import-not-found]

        def _crc32c_fast(data: bytes) -> int:
            return int(_crcmod.crc32c(bytes(data)))
    except ImportError:
        _crc32c_fast = None  # type: ignore[assignment]


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    if _crc32c_fast is not None:
        return _crc32c_fast(data)
    return _crc32c_py(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: ``((c >> 15) | (c << 17)) + 0xa282ead8`` modulo ``2**32``."""
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: str | Path) -> Iterator[bytes]:
    """Yields the records of a TFRecord file, verifying both CRCs of each.

    Raises:
        ValueError: a truncated record or a CRC mismatch (naming the file and record index).
        FileNotFoundError: a missing file.
    """
    p = Path(path)
    with open(p, "rb") as f:
        i = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise ValueError(f"TFRecord file {p}: record {i} is truncated (header of {len(head)} of 12 bytes)")
            (length,) = struct.unpack("<Q", head[:8])
            (len_crc,) = struct.unpack("<I", head[8:])
            if masked_crc32c(head[:8]) != len_crc:
                raise ValueError(f"TFRecord file {p}: record {i} has a bad length CRC (corrupt file)")
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                raise ValueError(f"TFRecord file {p}: record {i} is truncated ({len(data)} of {length} data bytes)")
            if masked_crc32c(data) != struct.unpack("<I", tail)[0]:
                raise ValueError(f"TFRecord file {p}: record {i} has a bad data CRC (corrupt file)")
            yield data
            i += 1


def write_tfrecords(path: str | Path, records: Iterable[bytes]) -> int:
    """Writes records as a TFRecord file atomically (temporary file + ``os.replace``).

    Returns:
        The number of records written.
    """
    n = 0
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        for rec in records:
            head = struct.pack("<Q", len(rec))
            f.write(head + struct.pack("<I", masked_crc32c(head)) + rec + struct.pack("<I", masked_crc32c(rec)))
            n += 1
    return n


# -- protobuf wire format --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("malformed protobuf: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("malformed protobuf: varint longer than 10 bytes")


def _field(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)``: ints for varint/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("malformed protobuf: truncated 64-bit field")
            yield number, wire, buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("malformed protobuf: truncated length-delimited field")
            yield number, wire, buf[pos : pos + n]
            pos += n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError("malformed protobuf: truncated 32-bit field")
            yield number, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"malformed protobuf: unsupported wire type {wire} (field {number})")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def encode_example(
    features: Mapping[str, bytes | str | int | float | Sequence[bytes] | Sequence[int] | Sequence[float]],
) -> bytes:
    """Serializes a ``tf.train.Example``.

    Args:
        features: name -> value. ``bytes``/``str`` (UTF-8) or a sequence of them -> BytesList;
            ``int`` or ints -> Int64List; ``float`` or floats -> FloatList (float32). Keys are
            written in sorted order (deterministic output).

    Returns:
        The serialized proto.
    """
    entries = bytearray()
    for key in sorted(features):
        value = features[key]
        items = [value] if isinstance(value, (bytes, bytearray, str, int, float)) else list(value)
        if items and all(isinstance(v, (bytes, bytearray, str)) for v in items):
            payload = b"".join(_delimited(1, v.encode() if isinstance(v, str) else bytes(v)) for v in items)
            feature = _delimited(1, payload)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            packed = b"".join(_varint(int(v)) for v in items)
            feature = _delimited(3, _delimited(1, packed) if items else b"")
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            packed = struct.pack(f"<{len(items)}f", *items)
            feature = _delimited(2, _delimited(1, packed))
        else:
            raise TypeError(
                f"feature {key!r}: expected bytes/str, int or float values, got {[type(v).__name__ for v in items][:3]}"
            )
        entry = _delimited(1, key.encode()) + _delimited(2, feature)
        entries += _delimited(1, entry)
    return _delimited(1, bytes(entries))


def _decode_feature(buf: bytes) -> Feature:
    out: Feature = []
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        assert isinstance(value, bytes)
        if number == 1:  # BytesList
            return [bytes(v) for n, w, v in _fields(value) if n == 1 and w == 2]  # type: ignore[misc]
        if number == 2:  # FloatList
            floats: list[float] = []
            for n, w, v in _fields(value):
                if n != 1:
                    continue
                if w == 2:  # packed
                    assert isinstance(v, bytes)
                    if len(v) % 4:
                        raise ValueError("malformed FloatList: packed length is not a multiple of 4")
                    floats.extend(struct.unpack(f"<{len(v) // 4}f", v))
                elif w == 5:
                    floats.append(struct.unpack("<f", v)[0])  # type: ignore[arg-type]
            return floats
        if number == 3:  # Int64List
            ints: list[int] = []
            for n, w, v in _fields(value):
                if n != 1:
                    continue
                if w == 2:
                    assert isinstance(v, bytes)
                    pos = 0
                    while pos < len(v):
                        x, pos = _read_varint(v, pos)
                        ints.append(_signed64(x))
                elif w == 0:
                    ints.append(_signed64(v))  # type: ignore[arg-type]
            return ints
    return out


def decode_example(data: bytes) -> dict[str, Feature]:
    """Parses a serialized ``tf.train.Example`` into ``{name: list of values}``.

    Raises:
        ValueError: malformed protobuf bytes.
    """
    out: dict[str, Feature] = {}
    for number, wire, features in _fields(data):
        if number != 1 or wire != 2:
            continue
        assert isinstance(features, bytes)
        for n, w, entry in _fields(features):
            if n != 1 or w != 2:
                continue
            assert isinstance(entry, bytes)
            key, value = None, b""
            for en, ew, ev in _fields(entry):
                if en == 1 and ew == 2:
                    key = bytes(ev).decode()  # type: ignore[arg-type]
                elif en == 2 and ew == 2:
                    value = ev  # type: ignore[assignment]
            if key is None:
                raise ValueError("malformed Example: a feature map entry without a key")
            out[key] = _decode_feature(value)  # type: ignore[arg-type]
    return out
