"""Tensor conversions between the Open Inference Protocol and numpy.

One lookup table (:data:`serving.datatypes.DATATYPES`) drives every conversion. JSON tensors
carry ``data`` as a flat or nested list (BYTES as strings); the binary tensor extension carries
raw little-endian bytes, BYTES elements each prefixed by a 4-byte little-endian length. Every
decoder checks the element count against the declared shape and raises :class:`InvalidRequest`
naming the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.datatypes import DATATYPES, numpy_dtype, oip_datatype
from serving.errors import InvalidRequest

_LENGTH = struct.Struct("<I")
# Bounds on a declared shape, checked before numpy sees it: numpy cannot even describe a
# shape whose size overflows (a zero-element [0, 2**62] raises "array is too big"), and no
# request within a sane body limit carries more elements than this.
MAX_DIMS = 32
MAX_ELEMENTS = 2**32
def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def check_shape(name: str, shape: Sequence[int]) -> None:
    """Raise :class:`InvalidRequest` for a shape no tensor can have (negative, too many dims,
    or more than :data:`MAX_ELEMENTS` elements, zero dims aside)."""
    if len(shape) > MAX_DIMS:
        raise InvalidRequest(
            f"tensor '{name}': shape has {len(shape)} dimensions (at most {MAX_DIMS})"
        )
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"tensor '{name}': shape {list(shape)} has a negative dimension")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InvalidRequest(
            f"tensor '{name}': shape {list(shape)} is too large (over {MAX_ELEMENTS} elements)"
        )


def _to_bytes(value: Any, tensor: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidRequest(f"tensor '{tensor}': BYTES elements must be strings, got {value!r:.40}")


def _flatten(data: list[Any]) -> list[Any]:
    # Nested JSON data (row-major) -> flat list; flat lists pass through untouched.
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def decode_json(name: str, datatype: str, shape: Sequence[int], data: list[Any]) -> np.ndarray:
    """Decode a JSON tensor's ``data`` (flat or nested) into an array of ``shape``."""
    dtype = numpy_dtype(datatype, tensor=name)
    check_shape(name, shape)
    flat = _flatten(data)
    expected = element_count(shape)
    if len(flat) != expected:
        raise InvalidRequest(
            f"tensor '{name}': shape {list(shape)} needs {expected} elements, data has {len(flat)}"
        )
    if datatype == "BYTES":
        array = np.empty(expected, dtype=object)
        array[:] = [_to_bytes(v, name) for v in flat]
        return array.reshape(shape)
    if datatype == "BOOL" and not all(isinstance(v, bool) for v in flat):
        raise InvalidRequest(f"tensor '{name}': BOOL data must be true/false")
    try:
        array = np.asarray(flat, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(f"tensor '{name}': data is not valid {datatype}: {exc}") from None
    if dtype.kind in "iu" and any(isinstance(v, float) for v in flat):
        raise InvalidRequest(f"tensor '{name}': {datatype} data must be integers")
    return array.reshape(shape)


def encode_json(array: np.ndarray) -> list[Any]:
    """Flat JSON ``data`` for an array (BYTES decoded as UTF-8 strings)."""
    if oip_datatype(array) == "BYTES":
        return [
            v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
            for v in array.ravel()
        ]
    return array.ravel().tolist()


def decode_binary(
    name: str, datatype: str, shape: Sequence[int], buffer: bytes | memoryview
) -> np.ndarray:
    """Decode one tensor of the binary extension (raw bytes, length-prefixed BYTES)."""
    dtype = numpy_dtype(datatype, tensor=name)
    check_shape(name, shape)
    expected = element_count(shape)
    if datatype == "BYTES":
        return _decode_bytes_elements(name, shape, expected, memoryview(buffer))
    if len(buffer) != expected * dtype.itemsize:
        raise InvalidRequest(
            f"tensor '{name}': shape {list(shape)} of {datatype} needs "
            f"{expected * dtype.itemsize} bytes, got {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _decode_bytes_elements(
    name: str, shape: Sequence[int], expected: int, view: memoryview
) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidRequest(f"tensor '{name}': truncated BYTES length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRequest(
                f"tensor '{name}': BYTES element {len(items)} declares {length} bytes, "
                f"only {len(view) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != expected:
        raise InvalidRequest(
            f"tensor '{name}': shape {list(shape)} needs {expected} BYTES elements, "
            f"got {len(items)}"
        )
    array = np.empty(expected, dtype=object)
    array[:] = items
    return array.reshape(shape)


def encode_binary(array: np.ndarray) -> bytes:
    """Raw bytes of an array for the binary extension."""
    datatype = oip_datatype(array)
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.ravel():
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
