"""OIP <-> numpy conversions: every datatype, JSON and binary, round trips and bad payloads."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serving.errors import InvalidRequest
from serving.protocol import tensors

NUMERIC = [name for name in tensors.DATATYPES if name != "BYTES"]


def arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    dtype = tensors.DATATYPES[datatype]
    elements = None
    if dtype.kind == "f":
        elements = {"allow_nan": False, "allow_infinity": False}
    return hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                      elements=elements)


bytes_arrays = hnp.array_shapes(min_dims=1, max_dims=3, max_side=4).flatmap(
    lambda shape: st.lists(
        st.binary(max_size=12), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))
    ).map(lambda items: np.array(items + [b""], dtype=object)[:-1].reshape(shape))
)


@pytest.mark.parametrize("datatype", NUMERIC)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_binary_round_trip_every_numeric_datatype(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype))
    blob = tensors.encode_binary(array)
    back = tensors.decode_binary("x", datatype, array.shape, blob)
    assert back.dtype == tensors.DATATYPES[datatype]
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("datatype", NUMERIC)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_json_round_trip_every_numeric_datatype(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype))
    assert tensors.oip_datatype(array) == datatype
    back = tensors.decode_json("x", datatype, array.shape, tensors.encode_json(array))
    np.testing.assert_array_equal(back, array)


@settings(max_examples=50, deadline=None)
@given(array=bytes_arrays)
def test_bytes_round_trip_binary(array: np.ndarray) -> None:
    back = tensors.decode_binary("s", "BYTES", array.shape, tensors.encode_binary(array))
    assert back.shape == array.shape
    assert back.ravel().tolist() == array.ravel().tolist()


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.text(max_size=10), min_size=1, max_size=6))
def test_bytes_round_trip_json_as_strings(texts: list[str]) -> None:
    array = tensors.decode_json("s", "BYTES", [len(texts)], texts)
    assert array.ravel().tolist() == [t.encode() for t in texts]
    assert tensors.encode_json(array) == texts


def test_bytes_wire_format_is_little_endian_length_prefixed() -> None:
    array = np.array([b"ab", b""], dtype=object)
    assert tensors.encode_binary(array) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_nested_and_flat_json_data_decode_alike() -> None:
    nested = tensors.decode_json("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    flat = tensors.decode_json("x", "FP32", [2, 2], [1, 2, 3, 4])
    np.testing.assert_array_equal(nested, flat)
    assert nested.dtype == np.float32


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [2, 3], [1, 2, 3], "needs 6 elements, data has 3"),
        ("INT64", [2], [1.5, 2], "must be integers"),
        ("INT8", [1], [300], "not valid INT8"),
        ("BOOL", [2], [1, 0], "true/false"),
        ("BYTES", [1], [5], "must be strings"),
        ("FP32", [1], ["x"], "not valid FP32"),
        ("BF16", [1], [1.0], "unsupported datatype 'BF16'"),
    ],
)
def test_json_decode_errors_name_the_tensor(datatype, shape, data, message) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        tensors.decode_json("pixels", datatype, shape, data)
    assert "'pixels'" in info.value.message


def test_binary_decode_rejects_wrong_length() -> None:
    with pytest.raises(InvalidRequest, match="needs 16 bytes, got 12"):
        tensors.decode_binary("x", "FP32", [4], b"\x00" * 12)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x05\x00\x00\x00abc", "declares 5 bytes, only 3 remain"),
        (b"\x01\x00", "truncated BYTES length prefix"),
        (struct.pack("<I", 1) + b"a", "needs 2 BYTES elements, got 1"),
    ],
)
def test_binary_bytes_decode_rejects_truncation(blob: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        tensors.decode_binary("s", "BYTES", [2], blob)


def test_oip_datatype_of_strings_is_bytes() -> None:
    assert tensors.oip_datatype(np.array(["a", "b"])) == "BYTES"
    assert tensors.oip_datatype(np.array([b"a"], dtype=object)) == "BYTES"


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([0, 4611686018427387904], "is too large"),  # used to raise numpy's "array is too big"
        ([2**33], "is too large"),
        ([1] * 33, "33 dimensions"),
        ([2, -1], "negative dimension"),
    ],
    ids=["zero-elements-huge-dim", "too-many-elements", "too-many-dims", "negative"],
)
@pytest.mark.parametrize("decoder", ["json", "binary"])
def test_regression_impossible_shapes_are_a_bad_request(shape, message, decoder) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        if decoder == "json":
            tensors.decode_json("x", "FP32", shape, [])
        else:
            tensors.decode_binary("x", "FP32", shape, b"")
    assert "'x'" in info.value.message
