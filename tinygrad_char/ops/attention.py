"""Causal multi-head self-attention on the packed q, k, v of `c_attn`, batched over heads;
its grouped-query form (fewer key/value heads than query heads); and the forward of new
queries over cached keys and values (generation).

This op is the middle of the attention block: `c_attn` (a linear) produces qkv, this op
mixes positions, `c_proj` (a linear) follows. The (B, NH, T, T) attention matrix is kept
for the backward, so memory grows with T^2; the fused GPU kernel (kernels/attention.cu,
online softmax) is the one that avoids it.
"""

import math

from tinygrad_char.backend import get_array_module
from tinygrad_char.ops.dropout import uniform_dtype


def column_sum(a):
    """Sums over axis -2, keeping it: (..., S, T) -> (..., 1, T).

    A batched matrix-vector product with a row of ones: BLAS gemv is much faster than
    NumPy's reduction over a strided axis ((12, 4, 64, 64) float32: a.sum(axis=-2) 66 us,
    ones @ a 10 us). Same numbers up to rounding.
    """
    xp = get_array_module(a)
    return xp.ones((1, a.shape[-2]), dtype=a.dtype) @ a


def causal_mask_bias(T, xp, dtype):
    """(T, T) additive mask: 0 on and below the diagonal, -inf above (the future)."""
    return xp.triu(xp.full((T, T), -xp.inf, dtype=dtype), k=1)


def attention_forward(qkv, n_head, dropout=0.0, rng=None, training=True, window=None):
    """y = merge_heads(softmax(mask(q k^T / sqrt(hs))) v)

    The probabilities are computed and kept transposed, P^T[s, t] = P[t, s] (key s, query
    t), so that every softmax reduction runs over axis -2, and the backward needs no copy of
    a (T, T) matrix. Both are NumPy speed facts, measured at B=12, NH=4, T=64, hs=32:
    a max over the last axis of (B, NH, T, T) takes 0.31 ms, over axis -2 0.07 ms; and the
    stacked matmul calls BLAS only when its *second* operand has a contiguous last axis
    (q @ k^T on a transposed view: 14 ms at T=128, on a contiguous copy 0.9 ms), while a
    transposed view as the *first* operand costs nothing extra.

    Args:
        qkv: (B, T, 3C), q, k and v stacked in that order along the last axis.
        n_head: NH; head size hs = C / NH.
        dropout, rng, training: dropout on the attention probabilities (as nanoGPT's
            attn_dropout), with the model's seeded generator.
        window: None (causal), or W: sliding-window attention, a banded mask where query t
            sees the keys t - W < s <= t (the W most recent positions, itself included).
    Returns:
        y: (B, T, C)
        cache: (q * scale, k, v, P^T, mask^T, scale) for the backward: q, k, v are
            (B, NH, T, hs), P^T the (B, NH, T, T) transposed probabilities, mask^T the
            scaled dropout mask (same layout) or None.
    """
    xp = get_array_module(qkv)
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    scale = 1.0 / math.sqrt(hs)
    # (B, NH, T, hs) each, contiguous copies
    q, k, v = (xp.ascontiguousarray(a) for a in split_heads(qkv, n_head, n_head))
    q *= scale  # scaled here: q is smaller than the (T, T) scores
    att_t = k @ xp.ascontiguousarray(q.transpose(0, 1, 3, 2))  # (B, NH, T, T): S^T = k q^T s
    # the mask in the same transposed layout, built contiguous: adding a transposed view
    # instead took 1.2 ms against 0.25 ms at B=16, NH=6, T=128
    att_t += xp.tril(xp.full((T, T), -xp.inf, dtype=att_t.dtype), k=-1)  # key s > query t
    if window is not None and window < T:
        att_t += xp.triu(xp.full((T, T), -xp.inf, dtype=att_t.dtype), k=window)  # s <= t - W
    # stable softmax over the keys (axis -2): subtracting the max changes nothing
    # mathematically but keeps exp() from overflowing; a query always sees its own key,
    # so every max is finite.
    att_t -= att_t.max(axis=-2, keepdims=True)
    xp.exp(att_t, out=att_t)
    att_t *= 1.0 / column_sum(att_t)  # one reciprocal per query
    mask_t = None
    att_used_t = att_t
    if training and dropout > 0.0:
        uniform = rng.random(att_t.shape, dtype=uniform_dtype(att_t.dtype))
        mask_t = (uniform >= dropout).astype(att_t.dtype)
        mask_t *= 1.0 / (1.0 - dropout)
        att_used_t = att_t * mask_t
    # y = P v, written straight into the merged-heads layout (B, T, NH, hs) through a
    # transposed view: BLAS accepts the strided output, and no merge copy follows
    y = xp.empty((B, T, n_head, hs), dtype=qkv.dtype)
    xp.matmul(att_used_t.transpose(0, 1, 3, 2), v, out=y.transpose(0, 2, 1, 3))
    return y.reshape(B, T, C), (q, k, v, att_t, mask_t, scale)


def attention_backward(dy, cache):
    """Gradients with respect to qkv.

    Forward, per head:  S = q k^T * s,  P = softmax(S + mask),  A = P * drop,  y = A v.
        dA = dy v^T,    dv = A^T dy
        dP = dA * drop
        dS = P * (dP - rowsum(dP * P))     softmax backward: dS_ij = P_ij (dP_ij - sum_k dP_ik P_ik)
                                           (masked entries have P = 0, so they get no gradient)
        dq = dS k * s,  dk = dS^T q * s
    Computed in the forward's transposed layout (dP^T, dS^T; the row sums become sums
    over axis -2). Args: dy (B, T, C). Returns dqkv (B, T, 3C).
    """
    q_scaled, k, v, att_t, mask_t, scale = cache
    xp = get_array_module(dy)
    B, NH, T, hs = q_scaled.shape
    dy_h = xp.ascontiguousarray(dy.reshape(B, T, NH, hs).transpose(0, 2, 1, 3))  # (B, NH, T, hs)
    att_used_t = att_t if mask_t is None else att_t * mask_t
    # the gradients are written through a (3, B, NH, T, hs) view of a (B, T, 3, NH, hs)
    # buffer, which is dqkv's own layout: no final transpose copy
    dqkv = xp.empty((B, T, 3, NH, hs), dtype=dy.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)  # each (B, NH, T, hs), strided views
    xp.matmul(att_used_t, dy_h, out=dv)  # dv = A^T dy
    datt_t = v @ xp.ascontiguousarray(dy_h.transpose(0, 1, 3, 2))  # (B, NH, T, T): dA^T = v dy^T
    if mask_t is not None:
        datt_t *= mask_t  # dP^T
    dscores_t = datt_t
    dscores_t -= column_sum(datt_t * att_t)  # rowsum(dP * P), in the transposed layout
    dscores_t *= att_t  # dS^T, the gradient of the scaled scores S = q k^T * s
    xp.matmul(dscores_t.transpose(0, 1, 3, 2), k, out=dq)  # dS k
    dq *= scale  # dq = dS k * s
    xp.matmul(dscores_t, q_scaled, out=dk)  # dk = dS^T (q * s)
    return dqkv.reshape(B, T, 3 * NH * hs)  # (B, T, 3C)


# -- grouped-query attention -----------------------------------------------------------------

def split_heads(qkv, n_head, n_kv_head):
    """q, k, v of the packed qkv, as (B, H, T, hs) views (H = NH for q, NKV for k and v).

    qkv: (B, T, (NH + 2 NKV) hs), its rows q (NH hs), then k (NKV hs), then v (NKV hs)."""
    B, T, width = qkv.shape
    hs = width // (n_head + 2 * n_kv_head)
    heads = qkv.reshape(B, T, n_head + 2 * n_kv_head, hs).transpose(0, 2, 1, 3)  # (B,H,T,hs)
    return (heads[:, :n_head], heads[:, n_head:n_head + n_kv_head],
            heads[:, n_head + n_kv_head:])


def gqa_attention_forward(qkv, n_head, n_kv_head, dropout=0.0, rng=None, training=True,
                          window=None):
    """Grouped-query attention: query head h reads key/value head h // G, G = NH / NKV.

        k_h = k_{h // G},  v_h = v_{h // G},  then attention_forward on (q, k_h, v_h).
    Written as that: the NKV key and value heads are repeated G times into the packed
    (B, T, 3C) layout of multi-head attention, which runs unchanged. With NKV = NH the
    repeat is the identity and this is exactly attention_forward.

    Args:
        qkv: (B, T, (NH + 2 NKV) hs): q (NH heads), k (NKV heads), v (NKV heads).
        n_head: NH; n_kv_head: NKV, dividing NH. The rest as attention_forward.
    Returns:
        y: (B, T, C), C = NH hs
        cache: (attention_forward's cache, n_kv_head)
    """
    y, cache = attention_forward(repeat_kv_heads(qkv, n_head, n_kv_head), n_head, dropout,
                                 rng, training, window)
    return y, (cache, n_kv_head)


def gqa_attention_backward(dy, cache):
    """Gradients with respect to the grouped qkv: attention_backward's, with the repeated
    key and value heads summed back (sum_repeated_kv_grads). Args: dy (B, T, C). Returns
    dqkv (B, T, (NH + 2 NKV) hs)."""
    mha_cache, n_kv_head = cache
    n_head = mha_cache[0].shape[1]  # q: (B, NH, T, hs)
    return sum_repeated_kv_grads(attention_backward(dy, mha_cache), n_head, n_kv_head)


def repeat_kv_heads(qkv, n_head, n_kv_head):
    """The grouped qkv (B, T, (NH + 2 NKV) hs) in multi-head attention's packed (B, T, 3C)
    layout, C = NH hs: query head h keeps its place, key/value head j is repeated for the
    G = NH / NKV query heads h = j G .. j G + G - 1 of its group."""
    xp = get_array_module(qkv)
    B, T, width = qkv.shape
    hs = width // (n_head + 2 * n_kv_head)
    G = n_head // n_kv_head
    C, Ckv = n_head * hs, n_kv_head * hs
    packed = xp.empty((B, T, 3, n_kv_head, G, hs), dtype=qkv.dtype)  # the (B, T, 3C) layout
    packed[:, :, 0] = qkv[:, :, :C].reshape(B, T, n_kv_head, G, hs)  # q: head h = j G + g
    # k and v: kv head j, broadcast over the G query heads g of its group
    packed[:, :, 1] = qkv[:, :, C:C + Ckv].reshape(B, T, n_kv_head, 1, hs)
    packed[:, :, 2] = qkv[:, :, C + Ckv:].reshape(B, T, n_kv_head, 1, hs)
    return packed.reshape(B, T, 3 * C)


def sum_repeated_kv_grads(dpacked, n_head, n_kv_head):
    """Backward of repeat_kv_heads: the repeat k_h = k_{h // G} is a copy, so dk_j is the sum
    of dk_h over the G query heads h of group j (v alike); dq passes through.
    Args: dpacked (B, T, 3C), C = NH hs. Returns dqkv (B, T, (NH + 2 NKV) hs)."""
    xp = get_array_module(dpacked)
    B, T, C3 = dpacked.shape
    C = C3 // 3
    hs, G = C // n_head, n_head // n_kv_head
    dpacked = dpacked.reshape(B, T, 3, n_kv_head, G, hs)
    dqkv = xp.empty((B, T, C + 2 * n_kv_head * hs), dtype=dpacked.dtype)
    dqkv[:, :, :C] = dpacked[:, :, 0].reshape(B, T, C)
    dqkv[:, :, C:] = dpacked[:, :, 1:].sum(axis=4).reshape(B, T, 2 * n_kv_head * hs)
    return dqkv


# -- new queries over cached keys (generation; forward only) ----------------------------------

def cached_attention_forward(q, k_t, v, q_start, k_start, window, return_probs=False):
    """Attention of Tq new queries over Tk cached keys (the new ones included), grouped.

        y = softmax(q k^T / sqrt(hs) + mask) v
    Query t (an absolute position) sees key s when t - window < s <= t and s >= 0 (causal,
    at most the `window` most recent positions, itself included: the banded mask of
    attention_forward's `window`; a negative s marks an empty column). Positions are given
    per row, so the rows of a batch may sit at different positions (a server's sequences),
    or as the first position of a run (every row alike). Query head h reads key/value head
    h // G: the G query heads of a group are stacked as G Tq rows of one matmul against
    their shared keys. Nothing is saved (no backward).

    Args:
        q: (B, NH, Tq, hs) queries of the new positions.
        k_t: (B, NKV, hs, Tk) keys, transposed (C-contiguous rows for the matmul).
        v: (B, NKV, Tk, hs) their values.
        q_start: (B, Tq) absolute positions of the queries, or an int: q_start + i for row i.
        k_start: (B, Tk) absolute positions of the key columns, or an int as q_start.
        window: W, the longest span a query sees.
        return_probs: also return the probabilities P.
    Returns:
        y: (B, NH, Tq, hs); with return_probs (y, P), P: (B, NH, Tq, Tk).
    """
    xp = get_array_module(q)
    B, NH, Tq, hs = q.shape
    NKV, Tk = k_t.shape[1], k_t.shape[3]
    G = NH // NKV

    def positions(start, n):  # (B|1, n): start itself when an array, else start + i
        if getattr(start, "ndim", 0) == 0:
            return xp.arange(int(start), int(start) + n)[None, :]
        return xp.asarray(start)

    t = positions(q_start, Tq)[:, :, None]  # (B|1, Tq, 1) query positions
    s = positions(k_start, Tk)[:, None, :]  # (B|1, 1, Tk) key positions
    visible = (s <= t) & (s > t - window) & (s >= 0)  # (B|1, Tq, Tk)
    att = q.reshape(B, NKV, G * Tq, hs) @ k_t  # (B, NKV, G Tq, Tk)
    att *= 1.0 / math.sqrt(hs)
    att = att.reshape(B, NKV, G, Tq, Tk)  # (B, NKV, G, Tq, Tk)
    att += xp.where(visible, 0.0, -xp.inf).astype(att.dtype)[:, None, None]  # over NKV, G
    # stable softmax over the keys, as attention_forward: subtract the row max (finite,
    # since each query sees at least its own key), exponentiate, normalise
    att -= att.max(axis=-1, keepdims=True)
    xp.exp(att, out=att)
    att /= att.sum(axis=-1, keepdims=True)
    y = (att.reshape(B, NKV, G * Tq, Tk) @ v).reshape(B, NH, Tq, hs)  # (B, NH, Tq, hs)
    if return_probs:
        return y, att.reshape(B, NH, Tq, Tk)
    return y

