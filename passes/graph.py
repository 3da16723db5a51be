"""Graph algorithms on a D × D dependency pattern (J[i, j] may be nonzero).

* ``components`` — connected components of the undirected graph i — j (J[i,j] or J[j,i]):
  the blocks of a block-diagonal J up to a permutation;
* ``triangular_blocks`` — strongly connected components of the directed graph j → i,
  in a topological order: permuted that way, J is block lower-triangular (stacked layers);
* ``greedy_colouring`` — columns that share no row get one colour (one JVP extracts all of
  them): greedy colouring of the column-intersection graph (networkx for small graphs, a
  vectorised numpy greedy for large ones).

scipy's csgraph is used when it is installed (C speed for D in the thousands); otherwise
networkx / numpy.
"""

from __future__ import annotations

import numpy as np

# the blocks of a block-diagonal J: one implementation, the kind's own
from autopar.kinds.block import _scipy_csgraph, components

__all__ = ["components", "triangular_blocks", "greedy_colouring", "MAX_NX_EDGES"]

#: Graphs with more edges than this avoid networkx (pure-Python per edge).
MAX_NX_EDGES = 200_000


def triangular_blocks(pattern: np.ndarray) -> list[list[int]] | None:
    """SCCs of j → i in topological order (inputs first), or None when too large to compute.

    With the state permuted block by block in this order, J is block lower-triangular
    (block (a, b) is zero for b after a).
    """
    import networkx as nx

    P = np.asarray(pattern, bool)
    D = P.shape[0]
    rows, cols = np.nonzero(P)
    sp = _scipy_csgraph()
    if sp is not None and len(rows) > 2000:
        csr, cc = sp
        n, labels = cc(csr(P.T), directed=True, connection="strong")  # edge j -> i
    elif len(rows) <= MAX_NX_EDGES:
        g = nx.DiGraph()
        g.add_nodes_from(range(D))
        g.add_edges_from(zip(cols.tolist(), rows.tolist()))
        labels = np.zeros(D, np.int64)
        for k, comp in enumerate(nx.strongly_connected_components(g)):
            labels[list(comp)] = k
        n = int(labels.max()) + 1 if D else 0
    else:
        return None
    # condensation in topological order
    cg = nx.DiGraph()
    cg.add_nodes_from(range(n))
    lc, lr = labels[cols], labels[rows]
    m = lc != lr
    cg.add_edges_from(set(zip(lc[m].tolist(), lr[m].tolist())))
    order = list(nx.lexicographical_topological_sort(cg, key=lambda c: int(np.argmax(labels == c))))
    groups = {c: [] for c in range(n)}
    for i, c in enumerate(labels.tolist()):
        groups[c].append(i)
    return [groups[c] for c in order]


def greedy_colouring(pattern: np.ndarray) -> np.ndarray:
    """Colour per column j such that columns sharing a row get different colours.

    The largest number of entries in a row is a lower bound on the colours. Shortcuts that
    reach it are taken first (no row with two entries: one colour; a dense pattern: D; dense
    blocks: the position within the block), then networkx's greedy colouring (largest
    first) of the column-intersection graph, or a numpy greedy for large graphs. (networkx is
    imported only when needed: importing it costs ~0.17 s of a first call.)
    """
    P = np.asarray(pattern, bool)
    D = P.shape[0]
    if D == 0:
        return np.zeros(0, np.int64)
    row_nnz = P.sum(axis=1).astype(np.int64)
    lower = int(row_nnz.max())
    if lower <= 1:
        return np.zeros(D, np.int64)
    if lower == D:
        return np.arange(D)
    comps = components(P)
    if max(len(c) for c in comps) == lower:
        col = np.zeros(D, np.int64)
        for c in comps:
            col[c] = np.arange(len(c))
        return col
    n_edges = int((row_nnz * (row_nnz - 1) // 2).sum())
    if n_edges <= MAX_NX_EDGES and D <= 4096:
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(D))
        rows, cols = np.nonzero(P)  # row-major: grouped by row
        start = np.concatenate([[0], np.cumsum(row_nnz)[:-1]])
        pos = np.arange(len(rows)) - start[rows]
        pad = np.full((D, lower), -1, np.int64)
        pad[rows, pos] = cols
        a, b = np.triu_indices(lower, 1)
        u, v = pad[:, a].reshape(-1), pad[:, b].reshape(-1)
        ok = (u >= 0) & (v >= 0)
        g.add_edges_from(zip(u[ok].tolist(), v[ok].tolist()))
        col = nx.greedy_color(g, strategy="largest_first")
        return np.asarray([col[j] for j in range(D)], np.int64)
    return _greedy_numpy(P)


def _greedy_numpy(P: np.ndarray) -> np.ndarray:
    D = P.shape[0]
    colour = np.full(D, -1, np.int64)
    max_c = int(P.sum(axis=0).max()) if D else 0
    max_c = max(max_c, int(P.sum(axis=1).max())) + 1
    used = np.zeros((D, min(D, max_c * 2) + 1), bool)  # used[row, colour]
    for j in np.argsort(-P.sum(axis=0), kind="stable"):
        rows = P[:, j]
        taken = used[rows].any(axis=0)
        free = np.flatnonzero(~taken)
        c = int(free[0]) if len(free) else used.shape[1]
        if c >= used.shape[1]:
            used = np.concatenate([used, np.zeros((D, used.shape[1]), bool)], axis=1)
        colour[j] = c
        used[rows, c] = True
    return colour
