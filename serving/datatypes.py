"""The Open Inference Protocol's datatypes and their numpy and Triton counterparts: the
lookup tables every conversion uses (core code and protocol adapters alike)."""

from __future__ import annotations

import numpy as np

from serving.errors import InvalidRequest

# OIP datatype -> numpy dtype (explicitly little-endian: the wire format is little-endian).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype("object"),
}
# numpy kind+itemsize -> OIP datatype; strings and bytes arrays map to BYTES.
_BY_NUMPY: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"
}
# OIP datatype -> Triton model-config data_type (config.pbtxt, ModelConfig RPC).
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def numpy_dtype(datatype: str, *, tensor: str = "?") -> np.dtype:
    """The numpy dtype for an OIP datatype; unknown names raise :class:`InvalidRequest`."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise InvalidRequest(
            f"tensor '{tensor}': unsupported datatype '{datatype}' "
            f"(supported: {', '.join(DATATYPES)})"
        ) from None


def oip_datatype(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (object, str and bytes arrays are BYTES)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[(kind, array.dtype.itemsize)]
    except KeyError:
        raise InvalidRequest(f"numpy dtype {array.dtype} has no OIP datatype") from None
