"""Token embedding, learned positional embedding, and fixed sinusoidal positions.

The token embedding's backward is a scatter-add of rows. `dW[idx] += dout` would
silently drop repeated ids, so it is written as a one-hot matmul,
dW = onehot(idx).T @ dout: one line that sums repeated ids, deterministic on the GPU (no
atomics). Other scatter-adds (np.add.at, bincount, sort + reduceat) are compared in
benchmarks/bench_embedding_backward.py (benchmarks/results/embedding_backward.md).

Shapes: idx (B, T) integer ids in [0, V); W (V, C) for tokens, (block_size, C) for
positions; activations (B, T, C). dtype: float32 (float64 for checks).
"""

import math

from tinygrad_char.backend import get_array_module


def embedding_forward(idx, W):
    """out[b, t] = W[idx[b, t]]

    Args:
        idx: (B, T) integer token ids in [0, V).
        W: (V, C) embedding table (`transformer.wte.weight`).
    Returns:
        out: (B, T, C)
        cache: (idx, V)
    """
    return W[idx], (idx, W.shape[0])  # (B, T, C)


def embedding_backward(dout, cache):
    """dW[v] = sum of dout[b, t] over every (b, t) with idx[b, t] == v.

    Written as onehot(idx).T @ dout, which sums repeated ids correctly.
    Args: dout (B, T, C). Returns dW (V, C), dout's dtype.
    """
    idx, V = cache
    xp = get_array_module(dout)
    flat_idx = idx.reshape(-1)  # (N,), N = B T
    onehot = (flat_idx[:, None] == xp.arange(V)).astype(dout.dtype)  # (N, V): [idx[n] == v]
    return onehot.T @ dout.reshape(-1, dout.shape[-1])  # (V, C)


def position_embedding_forward(x, W, start=0):
    """out[b, t] = x[b, t] + W[start + t]: the learned positions (`transformer.wpe.weight`)
    of absolute positions start .. start + T - 1 (start > 0: new positions after a cache),
    added to x, the token embeddings.

    Args: x (B, T, C), W (block_size, C), start + T <= block_size. Returns out (B, T, C)
    and cache (W.shape, start).
    """
    T = x.shape[1]
    return x + W[start:start + T], (W.shape, start)  # W's rows broadcast over the batch


def position_embedding_backward(dout, cache):
    """dW[start + t] = sum over the batch of dout[b, t], zero for the positions not used
    (dx = dout: the add passes the gradient through, and the caller has it already).

    Args: dout (B, T, C). Returns dW (block_size, C).
    """
    shape, start = cache
    xp = get_array_module(dout)
    dW = xp.zeros(shape, dtype=dout.dtype)  # (block_size, C)
    dW[start:start + dout.shape[1]] = dout.sum(axis=0)  # (T, C)
    return dW


def sinusoidal_encoding(T, C, xp, dtype="float32", start=0):
    """Fixed positions of "Attention Is All You Need" (no parameters, so no backward):

        PE[t, 2i]   = sin(t / 10000^(2i/C))
        PE[t, 2i+1] = cos(t / 10000^(2i/C))
    for t = start .. start + T - 1. Returns (T, C). Odd C is allowed (the last column is
    a sine).
    """
    pos = xp.arange(start, start + T, dtype="float64")[:, None]  # (T, 1)
    freq = xp.exp(-math.log(10000.0) * xp.arange(0, C, 2, dtype="float64") / C)  # (ceil(C/2),)
    angles = pos * freq  # (T, ceil(C/2))
    pe = xp.zeros((T, C), dtype="float64")
    pe[:, 0::2] = xp.sin(angles)
    pe[:, 1::2] = xp.cos(angles[:, : C // 2])
    return pe.astype(dtype)
