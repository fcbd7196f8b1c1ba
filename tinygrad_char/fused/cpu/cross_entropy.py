"""Softmax cross-entropy, forward and backward in one pass over the logits, as a CPU
kernel: twin of tinygrad_char/ops/cross_entropy.py.

Per row n with target t (t = -1: ignored), z = logits[n] - max(logits[n]):
    loss_n   = log(sum_j exp z_j) - z_t
    dlogits  = (softmax(z) - onehot(t)) / n_valid,   zero on ignored rows
The forward writes dlogits for dloss = 1 while the row is in cache, and the backward
scales it by dloss (no copy when dloss is 1, the training loop's case): call the backward
once per forward. float32 only (exp is `_jit.exp_poly`); other dtypes go to the twin.
"""


import numpy as np

from tinygrad_char.fused.cpu._jit import (EXP_MIN, LN2_HI, LN2_LO, LOG2E, applies, exp_poly,
                                          kernel, prange, row_max_bits)


ROWS_PER_CHUNK = 64  # rows per prange chunk (each chunk allocates its exp scratch once)


@kernel
def _forward(z, targets, losses, dz):
    """z (N, V) float32, targets (N,) int64 -> losses (N,), dz (N, V) for dloss = 1.
    Returns (n_valid, sum of losses) as (int, float64); n_valid = -1 when a target is
    outside [-1, V) (nothing else is computed then)."""
    N, V = z.shape
    n_valid = 0
    for n in range(N):
        t = targets[n]
        if t < -1 or t >= V:
            return -1, 0.0
        n_valid += 1 if t >= 0 else 0
    inv_n_valid = np.float32(1.0 / max(n_valid, 1))
    n_chunks = (N + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        z_bits = z.view(np.int32)  # for the row max (see _jit.row_max_bits)
        bits = np.empty(V, np.int32)  # exp's 2^k as float32 exponent bits; first the max
        two_k = bits.view(np.float32)
        for n in range(c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, N)):
            row, drow = z[n], dz[n]
            t = targets[n]
            if t < 0:  # ignored: no loss, no gradient
                losses[n] = 0.0
                drow[:] = 0.0
                continue
            bits[0] = row_max_bits(z_bits[n], V)
            m = two_k[0]
            # exp(row - m) into drow, then the sum: the same two passes as attention's
            # _softmax_forward, written out in both on purpose: one shared helper (inlined
            # by numba, or called) took this kernel from 27 to 51 / 36 us at (768, 65)
            for j in range(V):  # (method and error: _jit.exp_into)
                x = row[j] - m
                x = np.float32(EXP_MIN) if x < np.float32(EXP_MIN) else x  # NaN stays
                kf = np.floor(x * np.float32(LOG2E) + np.float32(0.5))
                r = x - kf * np.float32(LN2_HI) - kf * np.float32(LN2_LO)
                drow[j] = exp_poly(r)
                bits[j] = (np.int32(kf) + np.int32(127)) << 23
            total = np.float32(0.0)
            for j in range(V):
                e = drow[j] * two_k[j]
                drow[j] = e
                total += e
            losses[n] = np.log(total) - (row[t] - m)
            w = inv_n_valid / total
            for j in range(V):
                drow[j] *= w
            drow[t] -= inv_n_valid
    loss_sum = 0.0  # float64, in row order
    for n in range(N):
        loss_sum += losses[n]
    return n_valid, loss_sum


def cross_entropy_forward(logits, targets):
    """Kernel twin of cross_entropy.cross_entropy_forward: mean softmax cross-entropy over
    valid targets (-1 ignored). Args: logits (N, V) or (B, T, V) float32, targets (N,) or
    (B, T). Returns loss (0-d) and a cache (a dict) holding dlogits for dloss = 1."""
    assert applies(logits), "cross-entropy kernel: float32 NumPy logits"
    V = logits.shape[-1]
    z = np.ascontiguousarray(logits).reshape(-1, V)  # (N, V)
    flat_t = np.ascontiguousarray(np.asarray(targets).reshape(-1), dtype=np.int64)  # (N,)
    if flat_t.shape[0] != z.shape[0]:
        raise ValueError(f"cross-entropy: {flat_t.shape[0]} targets for {z.shape[0]} rows")
    losses = np.empty(z.shape[0], dtype=np.float32)
    dlogits = np.empty_like(z)
    n_valid, loss_sum = _forward(z, flat_t, losses, dlogits) if z.shape[0] else (0, 0.0)
    if n_valid < 0:
        raise IndexError(f"cross-entropy: targets must be in [0, {V}) or -1 (ignored), got "
                         f"values in [{flat_t.min()}, {flat_t.max()}]")
    loss = np.asarray(loss_sum / max(n_valid, 1), dtype=np.float32)
    return loss, dict(dlogits=dlogits, shape=logits.shape)


def cross_entropy_backward(dloss, cache):
    """Kernel twin of cross_entropy.cross_entropy_backward: the forward's dlogits * dloss
    (handed over without a copy when dloss is 1)."""
    dlogits = cache["dlogits"]
    if not (isinstance(dloss, (int, float)) and dloss == 1.0):
        dlogits = dlogits * np.float32(dloss)
    return dlogits.reshape(cache["shape"])


