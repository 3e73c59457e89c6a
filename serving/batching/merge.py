"""Merge many requests' rows into batches and split outputs back, exactly.

Requests can only share one execution when every input has the same trailing (non-batch)
shape; :func:`group_compatible` partitions a batch accordingly (e.g. MiniLM requests with
different sequence lengths run as separate sub-batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.types import Tensors


def rows(request: Tensors) -> int:
    """Rows (first dim) of one request, counted as at least 1; all its inputs share it."""
    return max(next(iter(request.values())).shape[0], 1) if request else 1


def group_compatible(batch: Sequence[Tensors], max_rows: int) -> list[list[int]]:
    """Indices of ``batch`` grouped so each group can be concatenated, at most ``max_rows`` rows.

    A single request larger than ``max_rows`` forms its own group (callers reject those
    earlier). Order within and across groups follows the input order.
    """
    groups: list[list[int]] = []
    open_groups: dict[tuple, tuple[list[int], int]] = {}
    for index, request in enumerate(batch):
        key = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(request.items()))
        n = rows(request)
        current = open_groups.get(key)
        if current is None or current[1] + n > max_rows:
            members: list[int] = []
            groups.append(members)
            open_groups[key] = (members, 0)
            current = open_groups[key]
        current[0].append(index)
        open_groups[key] = (current[0], current[1] + n)
    return groups


def merge(requests: Sequence[Tensors]) -> tuple[Tensors, list[int]]:
    """Concatenate compatible requests along the batch dim; return the merged inputs and rows."""
    counts = [rows(r) for r in requests]
    if len(requests) == 1:
        return dict(requests[0]), counts
    merged = {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}
    return merged, counts


def split(outputs: Tensors, counts: Sequence[int]) -> list[Tensors]:
    """Inverse of :func:`merge`: slice every output back into per-request row ranges."""
    if len(counts) == 1:
        return [outputs]
    bounds = np.cumsum(counts)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(counts))]
