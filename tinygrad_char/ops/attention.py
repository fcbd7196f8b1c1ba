"""Causal multi-head self-attention on the packed q, k, v of `c_attn`, batched over heads;
its grouped-query form (fewer key/value heads than query heads); and the forward of new
queries over cached keys and values (generation).

This op is the middle of the attention block: `c_attn` (a linear) produces qkv, this op
mixes positions, `c_proj` (a linear) follows. The (B, NH, T, T) attention matrix is kept
for the backward, so memory grows with T^2; the fused GPU kernel (kernels/attention.cu,
online softmax) is the one that avoids it.

Shapes: B batch, T time, NH query heads, NKV key/value heads (NH without grouped-query
attention), hs head size, C = NH hs. Every (T, T) matrix has queries t as rows and keys s
as columns. dtype: float32 (float64 for checks, float16 in mixed precision).
"""

import math

from tinygrad_char.backend import get_array_module
from tinygrad_char.ops.dropout import uniform_dtype


def split_heads(qkv, n_head, n_kv_head):
    """q, k, v of the packed qkv, as (B, H, T, hs) views (H = NH for q, NKV for k and v).

    qkv: (B, T, (NH + 2 NKV) hs), its rows q (NH hs), then k (NKV hs), then v (NKV hs)."""
    B, T, width = qkv.shape
    hs = width // (n_head + 2 * n_kv_head)
    heads = qkv.reshape(B, T, n_head + 2 * n_kv_head, hs).transpose(0, 2, 1, 3)  # (B,H,T,hs)
    return (heads[:, :n_head], heads[:, n_head:n_head + n_kv_head],
            heads[:, n_head + n_kv_head:])


def merge_heads(a):
    """The inverse of split_heads for one of q, k, v: (B, H, T, hs) -> (B, T, H hs), head h
    in columns h hs .. (h + 1) hs - 1. A new array."""
    B, H, T, hs = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B, T, H * hs)  # (B, T, H hs)


def causal_mask_bias(T, xp, dtype, window=None):
    """(T, T) additive mask, rows queries t, columns keys s: 0 where query t sees key s,
    -inf elsewhere. Causal: s <= t. With a window W (sliding-window attention) also
    s > t - W: the W most recent positions, t itself included."""
    t = xp.arange(T)[:, None]  # (T, 1) query positions
    s = xp.arange(T)[None, :]  # (1, T) key positions
    visible = s <= t  # (T, T)
    if window is not None:
        visible &= s > t - window
    return xp.where(visible, 0.0, -xp.inf).astype(dtype)  # (T, T)


def attention_forward(qkv, n_head, dropout=0.0, rng=None, training=True, window=None):
    """y = merge_heads(softmax(q k^T / sqrt(hs) + mask) v), per batch row and head.

        S = q k^T / sqrt(hs)           scores, (T, T) per head
        P = softmax(S + mask)          over the keys s (the last axis); mask: causal_mask_bias
        A = P * drop                   attention dropout (identity when off)
        y = A v                        (T, hs) per head, then the heads side by side

    Args:
        qkv: (B, T, 3C), q, k and v stacked in that order along the last axis.
        n_head: NH; head size hs = C / NH.
        dropout, rng, training: dropout on the attention probabilities (as nanoGPT's
            attn_dropout), with the model's seeded generator.
        window: None (causal), or W: sliding-window attention, a banded mask where query t
            sees the keys t - W < s <= t (the W most recent positions, itself included).
    Returns:
        y: (B, T, C), qkv's dtype.
        cache: (q, k, v, P, drop, scale) for the backward: q, k, v (B, NH, T, hs) views of
            qkv, P the (B, NH, T, T) probabilities, drop the scaled dropout mask (B, NH, T, T)
            or None, scale = 1 / sqrt(hs).
    """
    xp = get_array_module(qkv)
    B, T, C3 = qkv.shape
    hs = C3 // 3 // n_head
    scale = 1.0 / math.sqrt(hs)
    q, k, v = split_heads(qkv, n_head, n_head)  # (B, NH, T, hs) each
    att = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, NH, T, T): S
    att = att + causal_mask_bias(T, xp, att.dtype, window)  # (T, T), broadcast
    # stable softmax over the keys: subtracting the row max changes nothing mathematically
    # but keeps exp() from overflowing; a query always sees its own key, so the max is finite
    att = xp.exp(att - att.max(axis=-1, keepdims=True))
    att = att / att.sum(axis=-1, keepdims=True)  # P, (B, NH, T, T)
    drop = None
    att_used = att
    if training and dropout > 0.0:
        # the uniforms are drawn key-major, (B, NH, key s, query t), and read transposed: the
        # order the CPU kernel reads them in, so both drop the same entries for one seed
        uniform = rng.random(att.shape, dtype=uniform_dtype(att.dtype))
        uniform = uniform.transpose(0, 1, 3, 2)  # (B, NH, T, T), rows queries
        drop = (uniform >= dropout).astype(att.dtype) * (1.0 / (1.0 - dropout))
        att_used = att * drop  # A
    y = att_used @ v  # (B, NH, T, hs)
    return merge_heads(y), (q, k, v, att, drop, scale)  # (B, T, C)


def attention_backward(dy, cache):
    """Gradients with respect to qkv.

    Forward, per head:  S = q k^T * scale,  P = softmax(S + mask),  A = P * drop,  y = A v.
        dA = dy v^T,    dv = A^T dy
        dP = dA * drop
        dS = P * (dP - rowsum(dP * P))     softmax backward: dS_ij = P_ij (dP_ij - sum_k dP_ik P_ik)
                                           (masked entries have P = 0, so they get no gradient)
        dq = dS k * scale,  dk = dS^T q * scale
    Args: dy (B, T, C). Returns dqkv (B, T, 3C): dq, dk, dv stacked as qkv.
    """
    q, k, v, att, drop, scale = cache
    xp = get_array_module(dy)
    B, NH, T, hs = q.shape
    dy_h = dy.reshape(B, T, NH, hs).transpose(0, 2, 1, 3)  # (B, NH, T, hs)
    att_used = att if drop is None else att * drop  # A, recomputed rather than cached
    dv = att_used.transpose(0, 1, 3, 2) @ dy_h  # (B, NH, T, hs): A^T dy
    datt = dy_h @ v.transpose(0, 1, 3, 2)  # (B, NH, T, T): dA = dy v^T
    if drop is not None:
        datt = datt * drop  # dP
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))  # dS, (B, NH, T, T)
    dq = (dscores @ k) * scale  # (B, NH, T, hs)
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale  # (B, NH, T, hs): dS^T q * scale
    return xp.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)],
                          axis=-1)  # (B, T, 3C)


# -- grouped-query attention -----------------------------------------------------------------

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
    G = n_head // n_kv_head
    q, k, v = split_heads(qkv, n_head, n_kv_head)  # (B, NH, T, hs), (B, NKV, T, hs) twice
    k = xp.repeat(k, G, axis=1)  # (B, NH, T, hs): head h is k head h // G
    v = xp.repeat(v, G, axis=1)  # (B, NH, T, hs)
    return xp.concatenate([merge_heads(q), merge_heads(k), merge_heads(v)],
                          axis=-1)  # (B, T, 3C)


def sum_repeated_kv_grads(dpacked, n_head, n_kv_head):
    """Backward of repeat_kv_heads: the repeat k_h = k_{h // G} is a copy, so dk_j is the sum
    of dk_h over the G query heads h of group j (v alike); dq passes through.
    Args: dpacked (B, T, 3C), C = NH hs. Returns dqkv (B, T, (NH + 2 NKV) hs)."""
    xp = get_array_module(dpacked)
    G = n_head // n_kv_head
    dq, dk, dv = split_heads(dpacked, n_head, n_head)  # (B, NH, T, hs) each
    B, _, T, hs = dq.shape
    dk = dk.reshape(B, n_kv_head, G, T, hs).sum(axis=2)  # (B, NKV, T, hs)
    dv = dv.reshape(B, n_kv_head, G, T, hs).sum(axis=2)  # (B, NKV, T, hs)
    return xp.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)],
                          axis=-1)  # (B, T, (NH + 2 NKV) hs)


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

