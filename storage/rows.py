"""The stored form of a row: ``msgpack([version, [values in column order]])``.

The version is the commit-log position of the commit that last wrote the row: it only grows, is
unique per commit, and is what conditional writes compare. Values are stored in column order,
primary-key columns included, so a row decodes without its key.
"""

from __future__ import annotations

import msgpack

from storage.catalog import MAX_ROW_BYTES, Value
from storage.errors import Corrupt, InvalidInput

_VERSION_ROOM = 10  # msgpack: one byte of array header, at most nine of version


def encode_values(values: list[Value]) -> bytes:
    """The encoded values of a row, for ``with_version``.

    Raises:
        InvalidInput: the row would be larger than ``MAX_ROW_BYTES`` encoded.
    """
    data: bytes = msgpack.packb(values, use_bin_type=True)
    if len(data) + _VERSION_ROOM > MAX_ROW_BYTES:
        raise InvalidInput(f"row is {len(data) + _VERSION_ROOM} bytes encoded; the limit is "
                           f"{MAX_ROW_BYTES}")
    return data


def with_version(version: int, encoded_values: bytes) -> bytes:
    """Stored form of a row from its version and ``encode_values`` output."""
    return b"\x92" + msgpack.packb(version) + encoded_values


def encode(version: int, values: list[Value]) -> bytes:
    """Stored form of a row.

    Raises:
        InvalidInput: the encoded row is larger than ``MAX_ROW_BYTES``.
    """
    return with_version(version, encode_values(values))


def looks_stored(data: bytes) -> bool:
    """A cheap check that ``data`` is a stored row (a MessagePack array of two), for callers
    that pass stored rows on undecoded. NB: ``nodes/server.py`` sends stored rows as they are
    as the API's packed rows (``PackedRows``, the same layout): a change of this layout means
    transcoding there."""
    return data[:1] == b"\x92"


def decode(data: bytes) -> tuple[int, list[Value]]:
    """Version and values of a stored row.

    Raises:
        Corrupt: the bytes are not a row.
    """
    try:
        version, values = msgpack.unpackb(data, raw=False)
        if not isinstance(values, list) or not isinstance(version, int):
            raise TypeError("not a [version, values] pair")
        return version, values
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise Corrupt("unreadable row") from e
