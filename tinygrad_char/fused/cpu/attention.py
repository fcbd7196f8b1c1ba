"""Causal self-attention as CPU kernels: twin of tinygrad_char/ops/attention.py.

One loop over the B * NH heads (`prange`: a head per thread at a time), each head done
start to end while its (T, T) scores are in cache; its four matmuls are single-threaded
BLAS calls (numba's np.dot), so the heads share the kernels' one thread pool:

    forward:   S = q k^T                                    BLAS, (T, T) per head
               P = softmax(S * s + causal mask)              rows in place (+ A = P * drop)
               y = A v                                       BLAS, written into y's merged
                                                             (B, T, C) layout
    backward:  dA = dy v^T,  dv = A^T dy                     BLAS
               dS = s * P * (dP - rowsum(dP * P)),  dP = dA * drop
               dq = dS k,  dk = dS^T q                       BLAS, into dqkv's layout

Rows are queries (row t of P holds keys s <= t), so every reduction runs along a
contiguous row, and the scale s = 1/sqrt(hs) is applied inside the kernels (q is kept
unscaled). Entries above the diagonal are written as exact zeros. Dropout masks come from
the model's generator drawn exactly as the twin draws them (one uniform (B, NH, T, T) array
in the twin's transposed layout, read here as its transpose), so both implementations drop
the same entries for the same seed. float32 only (the exp is exp_into's method).

Why BLAS for the matmuls: a forward written as one numba loop per (b, h), computing only
the causal half of q k^T (half the FLOPs), took 0.65 ms against 0.43 ms for BLAS at
B=12, NH=4, T=64, hs=32 on one thread of a 2-core AMD EPYC (min of 50 calls); OpenBLAS's
small GEMMs run near the core's FMA peak, and numba's dot-product loops do not. Why one
loop over heads rather than NumPy's stacked matmuls around a softmax kernel: the stacked
matmuls would need BLAS's own threads, which fight the pool's (see _jit.py).
"""

import math

import numpy as np

from tinygrad_char.ops import attention as xp_attention
from tinygrad_char.ops.dropout import uniform_dtype
from tinygrad_char.fused.cpu._jit import (EXP_MIN, LN2_HI, LN2_LO, LOG2E, applies, exp_poly,
                                          kernel, prange, row_max_bits)


@kernel(blas=True)
def _forward_heads(q, k_t, v, scale, uniform_t, p_drop, P, A, y):
    """Per head bh of q, v (BH, T, hs) and k_t (BH, hs, T), k transposed: P[bh] (T, T) =
    causal softmax of q k^T * scale
    over each row's keys s <= t (zeros above); with p_drop > 0, A[bh] = P * (u^T >= p) /
    (1 - p), u^T read from uniform_t (BH, T, T) transposed (A is not touched when p_drop
    == 0); y (B, T, NH * hs) gets A v in its merged layout, head h in columns h*hs..."""
    BH, T, hs = q.shape
    NH = BH // y.shape[0]
    keep_scale = np.float32(1.0 / (1.0 - p_drop)) if p_drop > 0.0 else np.float32(1.0)
    for bh in prange(BH):
        S = P[bh]
        np.dot(q[bh], k_t[bh], S)  # (T, T) scores
        S_bits = S.view(np.int32)  # for the row max (see _jit.row_max_bits)
        bits = np.empty(T, np.int32)  # exp's 2^k, built as float32 exponent bits; first the max
        two_k = bits.view(np.float32)
        for t in range(T):
            row = S[t]
            n = t + 1  # keys 0..t are visible
            bits[0] = row_max_bits(S_bits[t], n)
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
        used = A[bh] if p_drop > 0.0 else S
        yh = np.empty((T, hs), np.float32)
        np.dot(used, v[bh], yh)  # (T, hs)
        b, h = bh // NH, bh % NH
        for t in range(T):
            out = y[b, t]
            for j in range(hs):
                out[h * hs + j] = yh[t, j]


@kernel(blas=True)
def _backward_heads(q, k, v_t, P, A, dy, scale, uniform_t, p_drop, dqkv):
    """Per head bh: dqkv (B, T, 3, NH, hs) gets dq, dk, dv of the forward above, given
    q, k (BH, T, hs), v_t (BH, hs, T) (v transposed), dy (B, T, NH * hs) in y's merged
    layout, P and A (BH, T, T) from the forward:
    dS = scale * P * (dP - rowsum(dP * P)), dP = dy v^T * drop (zeros above the diagonal)."""
    BH, T, hs = q.shape
    NH = BH // dy.shape[0]
    keep_scale = np.float32(1.0 / (1.0 - p_drop)) if p_drop > 0.0 else np.float32(1.0)
    for bh in prange(BH):
        b, h = bh // NH, bh % NH
        dyh = np.empty((T, hs), np.float32)  # this head's dy, gathered contiguous
        for t in range(T):
            src = dy[b, t]
            for j in range(hs):
                dyh[t, j] = src[h * hs + j]
        grad = np.empty((T, hs), np.float32)
        np.dot(A[bh].T, dyh, grad)  # dv = A^T dy
        for t in range(T):
            dqkv[b, t, 2, h, :] = grad[t]
        dS = np.empty((T, T), np.float32)
        np.dot(dyh, v_t[bh], dS)  # dA = dy v^T
        for t in range(T):
            p = P[bh, t]
            d = dS[t]
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
        np.dot(dS, k[bh], grad)  # dq = dS k (dS carries the scale)
        for t in range(T):
            dqkv[b, t, 0, h, :] = grad[t]
        np.dot(dS.T, q[bh], grad)  # dk = dS^T q
        for t in range(T):
            dqkv[b, t, 1, h, :] = grad[t]


def attention_forward(qkv, n_head, dropout=0.0, rng=None, training=True):
    """Kernel twin of attention.attention_forward: y = merge_heads(softmax(mask(q k^T s)) v).

    Args: qkv (B, T, 3C) float32 NumPy; n_head; dropout, rng, training as the twin (the
    mask is drawn from rng exactly as the twin draws it). Returns y (B, T, C) and a cache
    (a dict) of q, k, v (B, NH, T, hs), P (B, NH, T, T), A (P with dropout applied, or P
    itself), the uniform draws (or None), p and the scale.
    """
    assert applies(qkv), "attention kernel: float32 NumPy qkv"
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    BH = B * n_head
    scale = 1.0 / math.sqrt(hs)
    # (B, NH, T, hs) each, contiguous copies
    q, k, v = (np.ascontiguousarray(a) for a in xp_attention.split_heads(qkv, n_head, n_head))
    p_drop = float(dropout) if training and dropout > 0.0 else 0.0
    att = np.empty((B, n_head, T, T), dtype=np.float32)  # P
    uniform = None
    att_used = att
    if p_drop > 0.0:
        # the twin's draw: same call, same shape, read transposed
        uniform = rng.random(att.shape, dtype=uniform_dtype(att.dtype))  # (B, NH, T, T)
        att_used = np.empty_like(att)
    y = np.empty((B, T, C), dtype=np.float32)
    # k^T as a contiguous copy: BLAS's product with a transposed second operand of
    # inner size hs ran 1.7x slower (88 against 52 us for 48 heads of 64 x 32, one thread)
    k_t = np.ascontiguousarray(k.reshape(BH, T, hs).transpose(0, 2, 1))  # (BH, hs, T)
    _forward_heads(q.reshape(BH, T, hs), k_t, v.reshape(BH, T, hs),
                   np.float32(scale), (uniform if uniform is not None else att).reshape(BH, T, T),
                   np.float32(p_drop), att.reshape(BH, T, T), att_used.reshape(BH, T, T), y)
    return y, dict(q=q, k=k, v=v, P=att, A=att_used, uniform=uniform, p_drop=p_drop,
                   scale=scale)


def attention_backward(dy, cache):
    """Kernel twin of attention.attention_backward. Args: dy (B, T, C). Returns dqkv
    (B, T, 3C)."""
    q, k, v, P, A = cache["q"], cache["k"], cache["v"], cache["P"], cache["A"]
    B, NH, T, hs = q.shape
    BH = B * NH
    uniform = cache["uniform"]
    dqkv = np.empty((B, T, 3, NH, hs), dtype=np.float32)  # dqkv's own layout
    # v^T (BH, hs, T) as a contiguous copy, for dy v^T: as k^T in the forward
    v_t = np.ascontiguousarray(v.reshape(BH, T, hs).transpose(0, 2, 1))
    _backward_heads(q.reshape(BH, T, hs), k.reshape(BH, T, hs), v_t,
                    P.reshape(BH, T, T), A.reshape(BH, T, T),
                    np.ascontiguousarray(dy, dtype=np.float32).reshape(B, T, NH * hs),
                    np.float32(cache["scale"]),
                    (uniform if uniform is not None else P).reshape(BH, T, T),
                    np.float32(cache["p_drop"]), dqkv)
    return dqkv.reshape(B, T, 3 * NH * hs)  # (B, T, 3C)


def gqa_attention_forward(qkv, n_head, n_kv_head, dropout=0.0, rng=None, training=True,
                          window=None):
    """Kernel twin of attention.gqa_attention_forward, the same way: the key and value
    heads repeated into the multi-head layout (attention.repeat_kv_heads), then the kernel
    above. No sliding window (window < T): that is the op table's windowed_attention,
    always the twin."""
    assert window is None or window >= qkv.shape[1], "gqa kernel: no sliding window"
    packed = xp_attention.repeat_kv_heads(qkv, n_head, n_kv_head)
    y, cache = attention_forward(packed, n_head, dropout, rng, training)
    return y, (cache, n_kv_head)


def gqa_attention_backward(dy, cache):
    """Kernel twin of attention.gqa_attention_backward."""
    mha_cache, n_kv_head = cache
    n_head = mha_cache["q"].shape[1]
    return xp_attention.sum_repeated_kv_grads(attention_backward(dy, mha_cache), n_head,
                                              n_kv_head)
