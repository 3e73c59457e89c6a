"""Merging requests into batches and splitting outputs back exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.batching.merge import group_compatible, merge, split


def _request(rows: int, width: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((rows, width)).astype(np.float32)}


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_split_inverts_merge_exactly(counts: list[int]) -> None:
    requests = [_request(n, seed=i) for i, n in enumerate(counts)]
    merged, rows = merge(requests)
    assert rows == counts and merged["x"].shape[0] == sum(counts)
    # An "identity model": outputs are the inputs, so each request must get its own rows back.
    for request, piece in zip(requests, split({"y": merged["x"]}, rows), strict=True):
        np.testing.assert_array_equal(piece["y"], request["x"])


def test_group_separates_incompatible_trailing_shapes() -> None:
    batch = [_request(1, 3), _request(1, 4), _request(2, 3), _request(1, 4)]
    assert group_compatible(batch, max_rows=16) == [[0, 2], [1, 3]]


def test_group_respects_max_rows() -> None:
    batch = [_request(3), _request(3), _request(3)]
    assert group_compatible(batch, max_rows=6) == [[0, 1], [2]]
