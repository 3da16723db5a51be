"""Index maps of XLA's gather / scatter (and dynamic slices) when the indices are known.

``gather_positions`` returns, for every output element, the flat index of the operand
element it copies (or -1 when it is filled with a constant); ``scatter_positions`` the
flat operand index every update element lands on (or -1 when it is dropped). Both
follow the XLA semantics jax lowers to (index vector on the last axis of the
indices; batching dims; CLIP / FILL_OR_DROP / PROMISE_IN_BOUNDS modes). They return
None when the semantics are implementation-defined (out-of-bounds indices under
PROMISE_IN_BOUNDS for scatter), so callers fall back to a conservative rule.

Numpy only: no XLA compilation inside the analysis.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["gather_positions", "scatter_positions", "dynamic_slice_starts", "promise_may_break", "MAX_INDEX_ELEMS"]

#: Index maps larger than this are not built (callers fall back to a conservative rule).
MAX_INDEX_ELEMS = 1 << 21


def _mode(mode: Any) -> str:
    s = str(mode).upper()
    if "FILL" in s:
        return "fill"
    if "CLIP" in s:
        return "clip"
    if "PROMISE" in s:
        return "promise"
    return "other"


def gather_positions(operand_shape: Sequence[int], indices: np.ndarray, dnums: Any, slice_sizes: Sequence[int],
                     mode: Any, out_shape: Sequence[int]) -> np.ndarray | None:
    out_shape = tuple(int(s) for s in out_shape)
    operand_shape = tuple(int(s) for s in operand_shape)
    n_out = int(np.prod(out_shape, dtype=np.int64))
    if n_out * (len(out_shape) + len(operand_shape) + 1) > MAX_INDEX_ELEMS:
        return None
    m = _mode(mode)
    if m == "other":
        return None
    indices = np.asarray(indices).astype(np.int64)
    offset_dims = tuple(dnums.offset_dims)
    collapsed = tuple(dnums.collapsed_slice_dims)
    start_map = tuple(dnums.start_index_map)
    obatch = tuple(getattr(dnums, "operand_batching_dims", ()) or ())
    ibatch = tuple(getattr(dnums, "start_indices_batching_dims", ()) or ())
    grid = np.indices(out_shape, dtype=np.int64) if out_shape else np.zeros((0,), np.int64)
    batch_out = [d for d in range(len(out_shape)) if d not in offset_dims]
    bcoords = [grid[d] for d in batch_out]
    idx = indices[tuple(bcoords)] if bcoords else indices.reshape(indices.shape[-1:])
    idx = np.broadcast_to(idx, out_shape + (indices.shape[-1],))
    rank = len(operand_shape)
    start = np.zeros((rank,) + out_shape, np.int64)
    for k, d in enumerate(start_map):
        start[d] = idx[..., k]
    for od, idim in zip(obatch, ibatch):
        start[od] = bcoords[idim]
    sizes = np.asarray(slice_sizes, np.int64).reshape((rank,) + (1,) * len(out_shape))
    hi = np.asarray(operand_shape, np.int64).reshape(sizes.shape) - sizes
    oob = np.zeros(out_shape, bool)
    if m == "fill":
        oob = ((start < 0) | (start > hi)).any(axis=0)
    start = np.clip(start, 0, np.maximum(hi, 0))  # XLA clamps gather starts
    window = [d for d in range(rank) if d not in collapsed and d not in obatch]
    coords = [start[d] for d in range(rank)]
    for k, d in enumerate(window):
        coords[d] = coords[d] + grid[offset_dims[k]]
    flat = np.ravel_multi_index(tuple(coords), operand_shape, mode="clip") if rank else np.zeros(out_shape, np.int64)
    return np.where(oob, -1, flat)


def scatter_positions(operand_shape: Sequence[int], indices: np.ndarray, dnums: Any, updates_shape: Sequence[int],
                      mode: Any) -> np.ndarray | None:
    updates_shape = tuple(int(s) for s in updates_shape)
    operand_shape = tuple(int(s) for s in operand_shape)
    n_up = int(np.prod(updates_shape, dtype=np.int64))
    if n_up * (len(updates_shape) + len(operand_shape) + 1) > MAX_INDEX_ELEMS:
        return None
    m = _mode(mode)
    if m == "other":
        return None
    indices = np.asarray(indices).astype(np.int64)
    uwin = tuple(dnums.update_window_dims)
    inserted = tuple(dnums.inserted_window_dims)
    smap = tuple(dnums.scatter_dims_to_operand_dims)
    obatch = tuple(getattr(dnums, "operand_batching_dims", ()) or ())
    ibatch = tuple(getattr(dnums, "scatter_indices_batching_dims", ()) or ())
    grid = np.indices(updates_shape, dtype=np.int64)
    sdims = [d for d in range(len(updates_shape)) if d not in uwin]
    bcoords = [grid[d] for d in sdims]
    idx = indices[tuple(bcoords)] if bcoords else indices.reshape(indices.shape[-1:])
    idx = np.broadcast_to(idx, updates_shape + (indices.shape[-1],))
    rank = len(operand_shape)
    start = np.zeros((rank,) + updates_shape, np.int64)
    for k, d in enumerate(smap):
        start[d] = idx[..., k]
    for od, idim in zip(obatch, ibatch):
        start[od] = bcoords[idim]
    window = [d for d in range(rank) if d not in inserted and d not in obatch]
    wsize = np.ones(rank, np.int64)
    for k, d in enumerate(window):
        wsize[d] = updates_shape[uwin[k]]
    hi = (np.asarray(operand_shape, np.int64) - wsize).reshape((rank,) + (1,) * len(updates_shape))
    oob_start = ((start < 0) | (start > hi)).any(axis=0)
    if m == "clip":
        start = np.clip(start, 0, np.maximum(hi, 0))
        oob_start = np.zeros(updates_shape, bool)
    elif m == "promise" and oob_start.any():
        return None
    coords = [start[d] for d in range(rank)]
    for k, d in enumerate(window):
        coords[d] = coords[d] + grid[uwin[k]]
    oob = oob_start | np.any([(c < 0) | (c >= n) for c, n in zip(coords, operand_shape)], axis=0) if rank else oob_start
    flat = np.ravel_multi_index(tuple(coords), operand_shape, mode="clip") if rank else np.zeros(updates_shape, np.int64)
    return np.where(oob, -1, flat)


def dynamic_slice_starts(operand_shape: Sequence[int], sizes: Sequence[int], starts: Sequence[Any]) -> list[int | None]:
    """XLA clamps dynamic-slice starts into [0, dim - size]; unknown starts stay None."""
    out = []
    for n, s, st in zip(operand_shape, sizes, starts):
        out.append(None if st is None else int(np.clip(int(np.asarray(st)), 0, max(int(n) - int(s), 0))))
    return out


def promise_may_break(eqn: Any, indices: np.ndarray | None) -> bool:
    """Whether a gather / scatter under ``PROMISE_IN_BOUNDS`` may see an out-of-bounds index:
    True unless ``indices`` (the known index operand, None if unknown) are all in bounds.

    A broken promise is where JAX's derivatives stop being one linear map: XLA clamps the
    gather (and its JVP) but drops the out-of-bounds part of the transposed scatter-add, so
    forward and reverse mode disagree (and a scatter's rules disagree likewise). Any other mode
    is consistent in both directions."""
    if _mode(eqn.params.get("mode")) != "promise":
        return False
    if indices is None:
        return True
    dnums = eqn.params["dimension_numbers"]
    idx = np.asarray(indices).astype(np.int64)
    operand = tuple(int(s) for s in eqn.invars[0].aval.shape)
    rank = len(operand)
    if idx.size == 0:
        return False
    if hasattr(dnums, "start_index_map"):  # gather
        dims = tuple(dnums.start_index_map)
        sizes = [int(s) for s in eqn.params["slice_sizes"]]
        hi = [operand[d] - sizes[d] for d in dims]
    else:  # scatter family
        upd = tuple(int(s) for s in eqn.invars[2].aval.shape)
        uwin = tuple(dnums.update_window_dims)
        skip = set(dnums.inserted_window_dims) | set(getattr(dnums, "operand_batching_dims", ()) or ())
        window = [d for d in range(rank) if d not in skip]
        wsize = [1] * rank
        for k, d in enumerate(window):
            wsize[d] = upd[uwin[k]]
        dims = tuple(dnums.scatter_dims_to_operand_dims)
        hi = [operand[d] - wsize[d] for d in dims]
    vec = idx.reshape(-1, idx.shape[-1]) if idx.ndim else idx.reshape(1, 1)
    if vec.shape[-1] != len(dims):
        return True
    return bool(((vec < 0) | (vec > np.asarray(hi, np.int64))).any())
