"""Order-preserving encoding of key tuples: byte order of the encoding equals tuple order.

Owns: the byte layout of primary keys (and key prefixes) for null, bool, int64, double, str and
bytes values. Does not own: which prefix a table's keys live under (``keys.py``) or which types a
column accepts (``catalog.py``).

Layout, per element, a one-byte type tag then the payload:

=========  =====  ==========================================================================
type       tag    payload
=========  =====  ==========================================================================
None       0x01   (none)
False      0x02   (none)
True       0x03   (none)
int64      0x04   8 bytes big-endian with the sign bit flipped
double     0x05   8 bytes IEEE-754 big-endian; sign bit flipped if positive, all bits
                  inverted if negative; -0.0 is stored as 0.0; NaN is refused
str        0x06   UTF-8 with every 0x00 escaped as 0x00 0xFF, then the terminator 0x00 0x00
bytes      0x07   as str, on the raw bytes
=========  =====  ==========================================================================

Invariants: ``encode(a) < encode(b)`` iff ``a < b`` for tuples of the same column types, a tuple
sorts before every longer tuple that it prefixes (as Python tuples do), and no tag is 0xFF, so
``prefix + b"\\xff"`` is above every key that starts with ``prefix`` (used for inclusive prefix
ends in scans). Values of different types order by tag (the table above).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

from storage.errors import InvalidInput

NULL, FALSE, TRUE, INT, DOUBLE, STR, BYTES = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
BOOL_OR_NULL_TAGS = frozenset({NULL, FALSE, TRUE})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_SIGN = 1 << 63
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")

KeyValue = None | bool | int | float | str | bytes
INT_TAG = b"\x04"
INT64_PACK = _U64.pack
INT64_BIAS = _SIGN
"""``INT_TAG + INT64_PACK(v + INT64_BIAS)`` is :func:`encode_int64` of ``v`` (in range), for
loops that encode many keys: a function call per key is a third of their cost."""


def _escape(raw: bytes) -> bytes:
    return raw.replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def encode_int64(value: int) -> bytes:
    """Encode one int64 key element known to be in range (the hot path of a lone int64
    primary key; :func:`encode_value` checks the range)."""
    return INT_TAG + _U64.pack(value + _SIGN)  # two's complement, sign bit flipped


def encode_value(value: KeyValue) -> bytes:
    """Encode one key element.

    Raises:
        InvalidInput: for NaN, an int outside int64, a str that is not valid Unicode, or an
            unsupported type.
    """
    if value is None:
        return b"\x01"
    if value is True:
        return b"\x03"
    if value is False:
        return b"\x02"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidInput(f"integer {value} is outside the int64 range")
        return encode_int64(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise InvalidInput("NaN cannot be part of a key")
        if value == 0.0:
            value = 0.0  # -0.0 == 0.0, so they must encode alike
        bits = _U64.unpack(_F64.pack(value))[0]
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits & _SIGN else bits | _SIGN
        return b"\x05" + _U64.pack(bits)
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidInput("string key is not valid Unicode") from e
        return b"\x06" + _escape(raw)
    if isinstance(value, bytes | bytearray | memoryview):
        return b"\x07" + _escape(bytes(value))
    raise InvalidInput(f"unsupported key type {type(value).__name__}")


def encode(values: Iterable[KeyValue]) -> bytes:
    """Encode a key tuple (or a key prefix)."""
    return b"".join(encode_value(v) for v in values)


def prefix_end(prefix: bytes) -> bytes:
    """Return the smallest byte string above every encoding that starts with ``prefix``."""
    return prefix + b"\xff"


def _unescape(data: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while True:
        i = data.find(b"\x00", pos)
        if i < 0 or i + 1 >= len(data):
            raise InvalidInput("truncated string in key")
        out += data[pos:i]
        nxt = data[i + 1]
        if nxt == 0x00:
            return bytes(out), i + 2
        if nxt != 0xFF:
            raise InvalidInput("bad escape in key")
        out.append(0)
        pos = i + 2


def decode(data: bytes) -> tuple[KeyValue, ...]:
    """Decode an encoding made by :func:`encode` back into its tuple.

    Raises:
        InvalidInput: the bytes are not such an encoding.
    """
    try:
        return _decode(data)
    except (struct.error, UnicodeDecodeError) as e:
        raise InvalidInput(f"malformed key encoding: {e}") from e


def _decode(data: bytes) -> tuple[KeyValue, ...]:
    out: list[KeyValue] = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag == NULL:
            out.append(None)
        elif tag in (FALSE, TRUE):
            out.append(tag == TRUE)
        elif tag == INT:
            (u,) = _U64.unpack_from(data, pos)
            pos += 8
            u ^= _SIGN
            out.append(u - (1 << 64) if u & _SIGN else u)
        elif tag == DOUBLE:
            (bits,) = _U64.unpack_from(data, pos)
            pos += 8
            bits = bits ^ _SIGN if bits & _SIGN else bits ^ 0xFFFFFFFFFFFFFFFF
            out.append(_F64.unpack(_U64.pack(bits))[0])
        elif tag in (STR, BYTES):
            raw, pos = _unescape(data, pos)
            out.append(raw.decode("utf-8") if tag == STR else raw)
        else:
            raise InvalidInput(f"unknown key tag 0x{tag:02x}")
    return tuple(out)
