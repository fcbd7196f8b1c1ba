"""Causal multi-head self-attention on the packed q, k, v of `c_attn`, batched over heads.

This op is the middle of the attention block: `c_attn` (a linear) produces qkv, this op
mixes positions, `c_proj` (a linear) follows. The (B, NH, T, T) attention matrix is kept
for the backward; the fused GPU kernel (issue: flash attention) is the one that avoids it.
"""

import math

from .backend import get_array_module


def causal_mask_bias(T, xp, dtype):
    """(T, T) additive mask: 0 on and below the diagonal, -inf above (the future)."""
    return xp.triu(xp.full((T, T), -xp.inf, dtype=dtype), k=1)


def attention_forward(qkv, n_head, dropout=0.0, rng=None, training=True):
    """y = merge_heads(softmax(mask(q k^T / sqrt(hs))) v)

    Args:
        qkv: (B, T, 3C), q, k and v stacked in that order along the last axis.
        n_head: NH; head size hs = C / NH.
        dropout, rng, training: dropout on the attention probabilities (as nanoGPT's
            attn_dropout), with the model's seeded generator.
    Returns:
        y: (B, T, C)
        cache: (q * scale, k^T, v, att, mask, scale) for the backward; att is the
            (B, NH, T, T) probabilities, mask the scaled dropout mask or None.
    """
    xp = get_array_module(qkv)
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    # Batched matmuls get C-contiguous operands only: NumPy's stacked matmul calls BLAS
    # only when each matrix's last axis is contiguous, and otherwise falls back to a slow
    # loop (measured for q @ k^T at B=16, T=128, hs=48: 14 ms on a transposed view,
    # 0.9 ms on a contiguous k^T). The copies are (B, NH, T, hs)-sized: cheap.
    heads = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, NH, T, hs)
    scale = 1.0 / math.sqrt(hs)
    q = heads[0] * scale  # (B, NH, T, hs), scaled here: q is smaller than the (T, T) scores
    k_t = xp.ascontiguousarray(heads[1].transpose(0, 1, 3, 2))  # (B, NH, hs, T)
    v = xp.ascontiguousarray(heads[2])  # (B, NH, T, hs)
    att = q @ k_t  # (B, NH, T, T) = q k^T / sqrt(hs)
    att += causal_mask_bias(T, xp, att.dtype)
    # stable softmax over the last axis: subtracting the row max changes nothing
    # mathematically but keeps exp() from overflowing; the diagonal is never masked,
    # so every row has a finite max.
    att -= att.max(axis=-1, keepdims=True)
    xp.exp(att, out=att)
    att *= 1.0 / att.sum(axis=-1, keepdims=True)  # one reciprocal per row, then multiply
    mask = None
    att_used = att
    if training and dropout > 0.0:
        mask = (rng.random(att.shape, dtype=att.dtype) >= dropout).astype(att.dtype)
        mask *= 1.0 / (1.0 - dropout)
        att_used = att * mask
    y = att_used @ v  # (B, NH, T, hs)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C)
    return y, (q, k_t, v, att, mask, scale)


def attention_backward(dy, cache):
    """Gradients with respect to qkv.

    Forward, per head:  S = q k^T * s,  P = softmax(S + mask),  A = P * drop,  y = A v.
        dA = dy v^T,    dv = A^T dy
        dP = dA * drop
        dS = P * (dP - rowsum(dP * P))     softmax backward: dS_ij = P_ij (dP_ij - sum_k dP_ik P_ik)
                                           (masked entries have P = 0, so they get no gradient)
        dq = dS k * s,  dk = dS^T q * s
    Args: dy (B, T, C). Returns dqkv (B, T, 3C).
    """
    q_scaled, k_t, v, att, mask, scale = cache
    xp = get_array_module(dy)
    B, NH, T, hs = q_scaled.shape
    dy_h = xp.ascontiguousarray(dy.reshape(B, T, NH, hs).transpose(0, 2, 1, 3))  # (B, NH, T, hs)
    att_used = att if mask is None else att * mask
    # as in the forward, every batched matmul operand is made C-contiguous first
    dqkv = xp.empty((3, B, NH, T, hs), dtype=dy.dtype)
    dqkv[2] = xp.ascontiguousarray(att_used.transpose(0, 1, 3, 2)) @ dy_h  # dv (B, NH, T, hs)
    datt = dy_h @ xp.ascontiguousarray(v.transpose(0, 1, 3, 2))  # (B, NH, T, T)
    if mask is not None:
        datt *= mask
    dscores = datt
    dscores -= (datt * att).sum(axis=-1, keepdims=True)
    dscores *= att  # dS, the gradient of the scaled scores S = q k^T * s
    dq = dscores @ xp.ascontiguousarray(k_t.transpose(0, 1, 3, 2))  # (B, NH, T, hs)
    dq *= scale  # dq = dS k * s
    dqkv[0] = dq
    # dk = dS^T (q * s): the cache holds q already scaled
    dqkv[1] = xp.ascontiguousarray(dscores.transpose(0, 1, 3, 2)) @ q_scaled  # (B, NH, T, hs)
    return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * NH * hs)  # (B, T, 3C)
