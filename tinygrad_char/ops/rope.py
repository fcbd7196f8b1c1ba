"""Rotary position embedding (RoPE) of the queries and keys in the packed output of `c_attn`.

Rotate-half convention (Hugging Face Llama): for head size hs (even), i in [0, hs/2),

    theta_i = base^(-2i / hs),   angle = t * theta_i   (t: absolute position, from 0)
    x'[i]        = x[i] cos - x[i + hs/2] sin
    x'[i + hs/2] = x[i + hs/2] cos + x[i] sin

Each pair (x[i], x[i + hs/2]) is turned by its angle, so a query at t and a key at s score
q'.k' = q . R(s - t) k: the scores depend on the offset t - s only. There are no
parameters; the values v are not rotated.

Not here: the attention itself (attention.py), or interleaved-pair layouts (GPT-J).

Shapes: B batch, T time, NH query heads, NKV key/value heads, hs head size (even); the
tables (T, hs/2). dtype: float32 (float64 for checks, float16 in mixed precision); the
tables are computed in float64 and cast.
"""

from tinygrad_char.backend import get_array_module


def rope_tables(start, stop, head_size, base, xp, dtype="float32"):
    """cos and sin of the angles of positions start .. stop - 1.

    Computed in float64, then cast. Returns (cos, sin), each (stop - start, hs / 2).
    """
    if head_size % 2:
        raise ValueError(f"rope needs an even head size, got {head_size}")
    pos = xp.arange(start, stop, dtype="float64")[:, None]  # (T, 1)
    theta = base ** (-xp.arange(0, head_size, 2, dtype="float64") / head_size)  # (hs/2,)
    angles = pos * theta  # (T, hs/2)
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


def _rotate(qkv, cos, sin, n_head, n_kv_head):
    """qkv with its q and k heads turned by (cos, sin), per pair (x[i], x[i + hs/2]):
    x'[i] = x[i] cos - x[i + hs/2] sin,  x'[i + hs/2] = x[i + hs/2] cos + x[i] sin;
    the v heads unchanged. A new array, qkv's shape and dtype."""
    xp = get_array_module(qkv)
    B, T, width = qkv.shape
    n_rot = n_head + n_kv_head  # the q heads, then the k heads; the v heads follow
    hs = width // (n_rot + n_kv_head)
    half = hs // 2
    heads = qkv.reshape(B, T, n_rot + n_kv_head, hs)  # (B, T, NH + 2 NKV, hs)
    x1, x2 = heads[:, :, :n_rot, :half], heads[:, :, :n_rot, half:]  # (B, T, NH+NKV, hs/2)
    c = cos[:, None, :].astype(qkv.dtype, copy=False)  # (T, 1, hs/2), broadcast over heads
    s = sin[:, None, :].astype(qkv.dtype, copy=False)  # (T, 1, hs/2)
    rotated = xp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)  # (B,T,NH+NKV,hs)
    out = xp.concatenate([rotated, heads[:, :, n_rot:]], axis=2)  # (B, T, NH + 2 NKV, hs)
    return out.reshape(B, T, width)  # (B, T, (NH + 2 NKV) hs)


def rope_forward(qkv, cos, sin, n_head, n_kv_head):
    """Rotate the q and k heads of qkv by the angles of their positions.

    Args:
        qkv: (B, T, (NH + 2 NKV) hs), q (NH heads), k (NKV heads), v (NKV heads) stacked
            along the last axis, as `c_attn` produces them.
        cos, sin: (T, hs/2) from `rope_tables` for the positions of the T rows.
        n_head: NH; n_kv_head: NKV (NH without grouped-query attention).
    Returns:
        out: (B, T, (NH + 2 NKV) hs), a new array.
        cache: (cos, sin, n_head, n_kv_head): the rotation is linear, so its backward
            needs no input.
    """
    return _rotate(qkv, cos, sin, n_head, n_kv_head), (cos, sin, n_head, n_kv_head)


def rope_backward(dout, cache):
    """Gradient of the rotation: the transpose of a rotation by angle a is the rotation by
    -a (cos even, sin odd), so per pair

        dx[i]        =  dy[i] cos + dy[i + hs/2] sin
        dx[i + hs/2] = -dy[i] sin + dy[i + hs/2] cos
    and dv = dy on the v heads. Args: dout (B, T, (NH + 2 NKV) hs). Returns dqkv, same shape.
    """
    cos, sin, n_head, n_kv_head = cache
    return _rotate(dout, cos, -sin, n_head, n_kv_head)
