"""The protobuf wire format for the few small control messages the package
sends by hand (``omnirelay.mesh.v1.Control``: Promote, Rebalance,
SetShardBudget; proto/omnirelay/mesh/v1/control.proto). They are a handful of
scalar fields, so the package encodes them here instead of shipping generated
Python code."""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Tuple


def varint(n: int) -> bytes:
    """An unsigned LEB128 varint; negative ints as their 64-bit two's complement."""
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return varint(number << 3 | wire) + payload


def encode(fields: List[Tuple[int, Any]]) -> bytes:
    """(number, value) pairs: str/bytes -> length-delimited, bool/int -> varint,
    float -> 64-bit double. Defaults (empty, 0, False) are left out, as proto3 does."""
    out = b""
    for number, value in fields:
        if isinstance(value, bool):
            if value:
                out += _field(number, 0, varint(1))
        elif isinstance(value, int):
            if value:
                out += _field(number, 0, varint(value))
        elif isinstance(value, float):
            if value:
                out += _field(number, 1, struct.pack("<d", value))
        else:
            data = value.encode() if isinstance(value, str) else bytes(value)
            if data:
                out += _field(number, 2, varint(len(data)) + data)
    return out


def decode(data: bytes) -> Dict[int, List[Any]]:
    """{field number: [raw values]}: varints as int, fixed64 as float (only
    doubles are sent), fixed32 as float, length-delimited as bytes."""
    out: Dict[int, List[Any]] = {}
    i = 0

    def read_varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = read_varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = read_varint()
        elif wire == 1:
            value = struct.unpack("<d", data[i:i + 8])[0]
            i += 8
        elif wire == 2:
            length = read_varint()
            value = data[i:i + length]
            i += length
        elif wire == 5:
            value = struct.unpack("<f", data[i:i + 4])[0]
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def one(fields: Dict[int, List[Any]], number: int, default: Any) -> Any:
    """The last value of field ``number`` typed like ``default`` (str, bool,
    signed int64, float), or ``default`` when absent."""
    values = fields.get(number)
    if not values:
        return default
    value = values[-1]
    if isinstance(default, str):
        return value.decode()
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int) and value >= 1 << 63:
        return value - (1 << 64)
    return value
