"""The token and learned position embeddings as CPU kernels: twins of
embedding.embedding_forward / _backward and embedding.position_embedding_forward / _backward.

Forward: out[n] = W[idx[n]], the rows copied on the kernels' threads (a row per position;
ids outside [0, V) go to the twin, which raises as NumPy does, or wraps negative ones).
Backward: dW[v] = sum of dout[n] over the positions n with idx[n] == v: one serial pass over
the N rows adding each into its id's row (repeated ids add up correctly; the order is fixed,
so the result is bit-reproducible). Positions: out[b, t] = x[b, t] + W[start + t], a batch
row per thread (the position rows added as one contiguous T C loop); backward dW[start + t]
= sum over b of dout[b, t], a position per thread, summed in batch order. Few rows (under
_jit.SERIAL_BELOW elements: `_jit.too_small`, the per-call rule by size) go to the twins:
NumPy's take and add are as fast there. float32 and float64.
"""

import numpy as np

from tinygrad_char.ops import embedding as xp_embedding
from tinygrad_char.fused.cpu._jit import applies, kernel, prange, serial_kernel, too_small


@kernel(work=2)
def _gather(idx, W, out):
    """out (N, C) = W[idx] for idx (N,) ints; returns the count of ids outside [0, V) (their
    rows are left unwritten)."""
    V = W.shape[0]
    bad = 0
    for n in prange(idx.size):
        i = idx[n]
        if i < 0 or i >= V:
            bad += 1
        else:
            out[n, :] = W[i]
    return bad


@serial_kernel
def _scatter_add(idx, dout, dW):
    """idx (N,) int64, dout (N, C) -> dW (V, C) += dout rows by id (dW zeroed by caller)."""
    N, C = dout.shape
    for n in range(N):
        row = dW[idx[n]]
        src = dout[n]
        for j in range(C):
            row[j] += src[j]


def embedding_forward(idx, W):
    """Kernel twin of embedding.embedding_forward: out[b, t] = W[idx[b, t]]. Args: idx
    (B, T) ints, W (V, C). Returns out (B, T, C) and the twin's cache (idx, V)."""
    assert applies(W, dtypes=(np.float32, np.float64)), "embedding kernel: float32/64 W"
    if not isinstance(idx, np.ndarray) or idx.dtype.kind not in "iu" or \
            too_small(idx.size * W.shape[-1]):
        return xp_embedding.embedding_forward(idx, W)  # checks idx; few rows: as fast
    out = np.empty((idx.size, W.shape[1]), dtype=W.dtype)
    if _gather(np.ascontiguousarray(idx).reshape(-1), np.ascontiguousarray(W), out):
        return xp_embedding.embedding_forward(idx, W)  # raises (or wraps negative ids)
    return out.reshape(*idx.shape, W.shape[1]), (idx, W.shape[0])


def embedding_backward(dout, cache):
    """Kernel twin of embedding.embedding_backward. Args: dout (B, T, C), cache (idx, V)
    from embedding_forward. Returns dW (V, C)."""
    assert applies(dout, dtypes=(np.float32, np.float64)), "embedding kernel: float32/64 dout"
    idx, V = cache
    C = dout.shape[-1]
    flat_idx = np.ascontiguousarray(np.asarray(idx).reshape(-1), dtype=np.int64)  # (N,)
    if flat_idx.size and (flat_idx.min() < 0 or flat_idx.max() >= V):
        raise IndexError(f"embedding: ids must be in [0, {V}), got values in "
                         f"[{flat_idx.min()}, {flat_idx.max()}]")
    dW = np.zeros((V, C), dtype=dout.dtype)
    _scatter_add(flat_idx, np.ascontiguousarray(dout).reshape(-1, C), dW)
    return dW


@kernel
def _add_positions(x, W, out):
    """out (B, T C) = x (B, T C) + W (T C): the position rows used, flattened, added to
    each row of the batch (one long contiguous loop per row)."""
    B, n = x.shape
    for b in prange(B):
        src, dst = x[b], out[b]
        for j in range(n):
            dst[j] = src[j] + W[j]


@kernel
def _sum_over_batch(dout, start, dW):
    """dW[start + t] (P, C) = sum over b of dout[b, t] (B, T, C); dW's other rows untouched."""
    B, T, C = dout.shape
    for t in prange(T):
        dst = dW[start + t]
        dst[:] = dout[0, t]
        for b in range(1, B):
            src = dout[b, t]
            for j in range(C):
                dst[j] += src[j]


def position_embedding_forward(x, W, start=0):
    """Kernel twin of embedding.position_embedding_forward: out[b, t] = x[b, t] + W[start + t].
    Args: x (B, T, C), W (block_size, C). Returns out (B, T, C) and the twin's cache."""
    assert applies(x, W, dtypes=(np.float32, np.float64)), \
        "position embedding kernel: float32/64 NumPy inputs of one dtype"
    if too_small(x.size) or x.ndim != 3 or start + x.shape[1] > W.shape[0]:
        return xp_embedding.position_embedding_forward(x, W, start)  # checks; few rows
    B, T, C = x.shape
    out = np.empty(x.shape, dtype=x.dtype)
    _add_positions(np.ascontiguousarray(x).reshape(B, T * C),
                   np.ascontiguousarray(W[start:start + T]).reshape(T * C), out.reshape(B, T * C))
    return out, (W.shape, start)


def position_embedding_backward(dout, cache):
    """Kernel twin of embedding.position_embedding_backward. Args: dout (B, T, C). Returns
    dW (block_size, C)."""
    shape, start = cache
    if dout.ndim != 3 or dout.shape[0] == 0:
        return xp_embedding.position_embedding_backward(dout, cache)
    dW = np.zeros(shape, dtype=dout.dtype)
    _sum_over_batch(np.ascontiguousarray(dout), start, dW)
    return dW
