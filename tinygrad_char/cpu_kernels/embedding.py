"""The token embedding's backward as a CPU kernel: twin of embedding.embedding_backward.

dW[v] = sum of dout[n] over the positions n with idx[n] == v: one serial pass over the N
rows adding each into its id's row (repeated ids add up correctly; the order is fixed, so
the result is bit-reproducible). The forward stays the twin's gather (W[idx]).
float32 and float64.
"""

import numpy as np

from .. import embedding as xp_embedding
from . import applies
from ._jit import serial_kernel


@serial_kernel
def _scatter_add(idx, dout, dW):
    """idx (N,) int64, dout (N, C) -> dW (V, C) += dout rows by id (dW zeroed by caller)."""
    N, C = dout.shape
    for n in range(N):
        row = dW[idx[n]]
        src = dout[n]
        for j in range(C):
            row[j] += src[j]


def embedding_backward(dout, cache):
    """Kernel twin of embedding.embedding_backward. Args: dout (B, T, C), cache (idx, V)
    from embedding_forward. Returns dW (V, C)."""
    if not applies(dout, dtypes=(np.float32, np.float64)):
        return xp_embedding.embedding_backward(dout, cache)
    idx, V = cache
    C = dout.shape[-1]
    flat_idx = np.ascontiguousarray(np.asarray(idx).reshape(-1), dtype=np.int64)  # (N,)
    if flat_idx.size and (flat_idx.min() < 0 or flat_idx.max() >= V):
        raise IndexError(f"embedding: ids must be in [0, {V}), got values in "
                         f"[{flat_idx.min()}, {flat_idx.max()}]")
    dW = np.zeros((V, C), dtype=dout.dtype)
    _scatter_add(flat_idx, np.ascontiguousarray(dout).reshape(-1, C), dW)
    return dW
