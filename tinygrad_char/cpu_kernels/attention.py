"""Causal self-attention with its softmax passes as CPU kernels: twin of
tinygrad_char/attention.py.

The four matmuls per head stay with NumPy's stacked matmul (BLAS, which runs them on
every core it has); what runs here is everything between them, in one pass each way:

    forward:   S = q k^T                                   BLAS, (B, NH, T, T)
               P = softmax(S * s + causal mask)             _softmax_forward (+ A = P * drop)
               y = A v                                      BLAS, into y's merged layout
    backward:  dA = dy v^T,  dv = A^T dy                    BLAS
               dS = s * P * (dP - rowsum(dP * P)),  dP = dA * drop      _softmax_backward
               dq = dS k,  dk = dS^T q                      BLAS

Rows are queries (row t of P holds keys s <= t), so every reduction runs along a
contiguous row, and the scale s = 1/sqrt(hs) is applied inside the kernels (q is kept
unscaled). Entries above the diagonal are written as exact zeros. Dropout masks come from
the model's generator drawn exactly as the twin draws them (one uniform (B, NH, T, T) array
in the twin's transposed layout, read here as its transpose), so both implementations drop
the same entries for the same seed. float32 only (the exp is exp_into's method); other
dtypes go to the twin.

Why BLAS for the matmuls: a forward written as one numba loop per (b, h), computing only
the causal half of q k^T (half the FLOPs), took 0.65 ms against 0.43 ms for this version at
B=12, NH=4, T=64, hs=32 on one thread of a 2-core AMD EPYC (min of 50 calls); OpenBLAS's
small GEMMs run near the core's FMA peak, and numba's dot-product loops do not.
"""

import math

import numpy as np

from .. import attention as xp_attention
from ..dropout import uniform_dtype
from . import CpuCache, applies
from ._jit import EXP_MIN, LN2_HI, LN2_LO, LOG2E, exp_poly, kernel, prange, row_max_bits


@kernel
def _softmax_forward(S, scale, uniform_t, p_drop, A):
    """In place: S (BH, T, T) scores -> P, causal softmax of S * scale over each row's keys
    s <= t (zeros above). With p_drop > 0: A (BH, T, T) = P * (u^T >= p) / (1 - p), u^T
    read from uniform_t (BH, T, T) transposed; A is not touched when p_drop == 0."""
    BH, T, _ = S.shape
    keep_scale = np.float32(1.0 / (1.0 - p_drop)) if p_drop > 0.0 else np.float32(1.0)
    S_bits = S.view(np.int32)  # for the row max (see _jit.row_max_bits)
    for bh in prange(BH):
        bits = np.empty(T, np.int32)  # exp's 2^k, built as float32 exponent bits; first the max
        two_k = bits.view(np.float32)
        for t in range(T):
            row = S[bh, t]
            n = t + 1  # keys 0..t are visible
            bits[0] = row_max_bits(S_bits[bh, t], n)
            m = two_k[0] * scale
            # exp(row * scale - m) inline (see _jit.exp_into for the method and its error;
            # cross_entropy.py has the same two passes and says why they are not shared)
            for s in range(n):
                z = row[s] * scale - m
                z = np.float32(EXP_MIN) if z < np.float32(EXP_MIN) else z  # NaN stays
                kf = np.floor(z * np.float32(LOG2E) + np.float32(0.5))
                r = z - kf * np.float32(LN2_HI) - kf * np.float32(LN2_LO)
                row[s] = exp_poly(r)
                bits[s] = (np.int32(kf) + np.int32(127)) << 23
            total = np.float32(0.0)
            for s in range(n):
                e = row[s] * two_k[s]
                row[s] = e
                total += e
            inv = np.float32(1.0) / total
            for s in range(n):
                row[s] *= inv
            for s in range(n, T):
                row[s] = 0.0
            if p_drop > 0.0:
                arow = A[bh, t]
                for s in range(T):
                    keep = uniform_t[bh, s, t] >= p_drop
                    arow[s] = row[s] * keep_scale if keep else np.float32(0.0)


@kernel
def _softmax_backward(P, dA, scale, uniform_t, p_drop):
    """In place: dA (BH, T, T) -> dS = scale * P * (dP - rowsum(dP * P)), with
    dP = dA * drop (the forward's mask) when p_drop > 0; zeros above the diagonal."""
    BH, T, _ = P.shape
    keep_scale = np.float32(1.0 / (1.0 - p_drop)) if p_drop > 0.0 else np.float32(1.0)
    for bh in prange(BH):
        for t in range(T):
            p = P[bh, t]
            d = dA[bh, t]
            n = t + 1
            if p_drop > 0.0:
                for s in range(n):
                    keep = uniform_t[bh, s, t] >= p_drop
                    d[s] = d[s] * keep_scale if keep else np.float32(0.0)
            dot = np.float32(0.0)
            for s in range(n):
                dot += d[s] * p[s]
            for s in range(n):
                d[s] = scale * p[s] * (d[s] - dot)
            for s in range(n, T):
                d[s] = 0.0


def attention_forward(qkv, n_head, dropout=0.0, rng=None, training=True):
    """Kernel twin of attention.attention_forward: y = merge_heads(softmax(mask(q k^T s)) v).

    Args: qkv (B, T, 3C) float32 NumPy; n_head; dropout, rng, training as the twin (the
    mask is drawn from rng exactly as the twin draws it). Returns y (B, T, C) and a CpuCache
    of q, k, v (B, NH, T, hs), P (B, NH, T, T), A (P with dropout applied, or P itself),
    the uniform draws (or None), p and the scale.
    """
    if not applies(qkv):
        return xp_attention.attention_forward(qkv, n_head, dropout, rng, training)
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    scale = 1.0 / math.sqrt(hs)
    # (B, NH, T, hs) each, contiguous copies
    q, k, v = (np.ascontiguousarray(a) for a in xp_attention.split_heads(qkv, n_head, n_head))
    # BLAS takes the stacked product fast only with a contiguous second operand: k^T copied
    att = q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2))  # (B, NH, T, T): S = q k^T
    p_drop = float(dropout) if training and dropout > 0.0 else 0.0
    uniform = None
    att_used = att
    if p_drop > 0.0:
        # the twin's draw: same call, same shape, read transposed
        uniform = rng.random(att.shape, dtype=uniform_dtype(att.dtype))  # (B, NH, T, T)
        att_used = np.empty_like(att)
    BH = B * n_head
    _softmax_forward(att.reshape(BH, T, T), np.float32(scale),
                     (uniform if uniform is not None else att).reshape(BH, T, T),
                     np.float32(p_drop), att_used.reshape(BH, T, T))
    y = np.empty((B, T, n_head, hs), dtype=qkv.dtype)
    np.matmul(att_used, v, out=y.transpose(0, 2, 1, 3))  # y = A v, in the merged layout
    return y.reshape(B, T, C), CpuCache(q=q, k=k, v=v, P=att, A=att_used, uniform=uniform,
                                        p_drop=p_drop, scale=scale)


def attention_backward(dy, cache):
    """Kernel twin of attention.attention_backward. Args: dy (B, T, C). Returns dqkv
    (B, T, 3C)."""
    if not isinstance(cache, CpuCache):
        return xp_attention.attention_backward(dy, cache)
    q, k, v, P, A = cache["q"], cache["k"], cache["v"], cache["P"], cache["A"]
    B, NH, T, hs = q.shape
    dy_h = np.ascontiguousarray(dy.reshape(B, T, NH, hs).transpose(0, 2, 1, 3),
                                dtype=np.float32)  # (B, NH, T, hs)
    dqkv = np.empty((B, T, 3, NH, hs), dtype=np.float32)  # dqkv's own layout
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)  # each (B, NH, T, hs), strided views
    np.matmul(A.transpose(0, 1, 3, 2), dy_h, out=dv)  # dv = A^T dy
    dA = dy_h @ np.ascontiguousarray(v.transpose(0, 1, 3, 2))  # (B, NH, T, T): dy v^T
    uniform = cache["uniform"]
    BH = B * NH
    _softmax_backward(P.reshape(BH, T, T), dA.reshape(BH, T, T), np.float32(cache["scale"]),
                      (uniform if uniform is not None else P).reshape(BH, T, T),
                      np.float32(cache["p_drop"]))
    np.matmul(dA, k, out=dq)  # dq = dS k (dS carries the scale)
    np.matmul(dA.transpose(0, 1, 3, 2), q, out=dk)  # dk = dS^T q
    return dqkv.reshape(B, T, 3 * NH * hs)  # (B, T, 3C)
