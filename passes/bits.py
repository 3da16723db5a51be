"""Packed bitsets: the sparsity domain's value representation.

A value of shape S that may depend on state elements carries a ``uint64`` array of
shape ``S + (W,)`` with ``W = ceil(D / 64)``: bit ``j % 64`` of word ``j // 64`` is set
when the element may depend on state element ``j``. Sets combine with ``|``, unions
over axes with ``np.bitwise_or.reduce``. Compared with one bool per (element, j) this
is 8× smaller and the word-wide ``|`` is 64× fewer operations, so a 64×64 matrix state
(D = 4096) costs 512 bytes per element instead of 4 KiB.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["words", "eye", "zeros", "union", "reduce_axes", "to_bool", "from_bool", "broadcast", "popcount_any"]

WORD = np.uint64


def words(D: int) -> int:
    return max(1, -(-D // 64))


def zeros(shape: Sequence[int], D: int) -> np.ndarray:
    return np.zeros(tuple(shape) + (words(D),), WORD)


def eye(D: int) -> np.ndarray:
    """(D, W): element i depends on state element i only."""
    out = np.zeros((D, words(D)), WORD)
    i = np.arange(D)
    out[i, i // 64] = np.left_shift(np.ones(D, WORD), (i % 64).astype(WORD))
    return out


def union(*vals):
    """Union of several packed values (``None`` = no dependency), broadcasting leading axes."""
    acc = None
    for v in vals:
        if v is None:
            continue
        acc = v if acc is None else (acc | v)
    return acc


def reduce_axes(v: np.ndarray, axes: Sequence[int], keepdims: bool = False) -> np.ndarray:
    axes = tuple(int(a) for a in axes)
    if not axes:
        return v
    return np.bitwise_or.reduce(v, axis=axes, keepdims=keepdims)


def broadcast(v: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Read-only view of ``v`` broadcast to ``shape + (W,)``."""
    return np.broadcast_to(v, tuple(shape) + (v.shape[-1],))


def to_bool(v: np.ndarray | None, shape: Sequence[int], D: int) -> np.ndarray:
    """Packed (S + (W,)) -> bool (S + (D,))."""
    if v is None:
        return np.zeros(tuple(shape) + (D,), bool)
    v = np.ascontiguousarray(np.broadcast_to(v, tuple(shape) + (v.shape[-1],)))
    b = np.unpackbits(v.view(np.uint8), axis=-1, bitorder="little")
    return b[..., :D].astype(bool)


def from_bool(b: np.ndarray, D: int) -> np.ndarray | None:
    """bool (S + (D,)) -> packed (S + (W,)); None when nothing is set."""
    b = np.asarray(b, bool)
    if not b.any():
        return None
    W = words(D)
    pad = np.zeros(b.shape[:-1] + (W * 64 - D,), bool)
    full = np.concatenate([b, pad], axis=-1) if W * 64 != D else b
    packed = np.packbits(full, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(WORD).reshape(b.shape[:-1] + (W,))


def popcount_any(v: np.ndarray | None) -> bool:
    return v is not None and bool(np.any(v))
