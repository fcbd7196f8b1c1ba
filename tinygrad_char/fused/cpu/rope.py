"""Rotary position embedding (RoPE) of the q and k heads of `c_attn`'s output, as a CPU
kernel: twin of tinygrad_char/ops/rope.py (its oracle in tests/test_cpu_kernels_llama.py).

Rotate-half convention, as the twin: per row (b, t), per q or k head, for i in [0, hs/2)

    forward:   x'[i]        = x[i] cos_ti - x[i + hs/2] sin_ti
               x'[i + hs/2] = x[i + hs/2] cos_ti + x[i] sin_ti
    backward:  the transpose of a rotation by a is the rotation by -a (cos even, sin odd):
               dx[i]        =  dy[i] cos_ti + dy[i + hs/2] sin_ti
               dx[i + hs/2] = -dy[i] sin_ti + dy[i + hs/2] cos_ti
and the v heads are copied (forward) or passed through (backward), so both directions are
one kernel, `_rotate`, given sin or -sin. cos and sin are the model's tables
(rope.rope_tables, (T, hs/2)); the cache holds them (in qkv's dtype) and the head counts:
the rotation is linear, so the backward needs no input.

Parallelises over the B * T rows (`prange`), each row's heads in order; the inner loop runs
along a contiguous half head. Takes float32 and float64 NumPy arrays, grouped-query layouts
(NKV < NH) included.

Not here: choosing this kernel over the twin (the dispatch decides once, when the model is
built; this wrapper only checks that its inputs are what it takes), the attention itself
(attention.py), interleaved-pair layouts (GPT-J).
"""

import numpy as np

from tinygrad_char.fused.cpu._jit import kernel, prange

DTYPES = (np.float32, np.float64)


@kernel
def _rotate(x, cos, sin, n_rot, out):
    """x, out (B, T, H, hs), H = NH + 2 NKV heads; cos, sin (T, hs/2) in x's dtype.
    Heads 0 .. n_rot - 1 (q, then k) of row (b, t) turned by (cos[t], sin[t]); the others
    (v) copied."""
    B, T, H, hs = x.shape
    half = hs // 2
    for r in prange(B * T):
        b = r // T
        t = r - b * T
        c, s = cos[t], sin[t]  # (hs/2,)
        xr, outr = x[b, t], out[b, t]  # (H, hs)
        for h in range(n_rot):
            xh, oh = xr[h], outr[h]
            for i in range(half):
                x1 = xh[i]
                x2 = xh[half + i]
                oh[i] = x1 * c[i] - x2 * s[i]
                oh[half + i] = x2 * c[i] + x1 * s[i]
        for h in range(n_rot, H):
            outr[h, :] = xr[h, :]


def _heads(a, n_heads, cos, sin):
    """a (B, T, H hs) as a contiguous (B, T, H, hs) array, after checking that the tables
    fit (the kernel does not check its indices)."""
    B, T, width = a.shape
    hs = width // n_heads
    if hs * n_heads != width or hs % 2 or not cos.shape == sin.shape == (T, hs // 2):
        raise ValueError(f"rope kernel: qkv {a.shape} must be (B, T, H hs) with H = NH + 2 NKV "
                         f"= {n_heads}, hs even, and cos, sin (T, hs/2); got cos {cos.shape}, "
                         f"sin {sin.shape}")
    return np.ascontiguousarray(a).reshape(B, T, n_heads, hs)  # (B, T, H, hs)


def rope_forward(qkv, cos, sin, n_head, n_kv_head):
    """Kernel twin of rope.rope_forward: the q and k heads of qkv turned by the angles of
    their positions.

    Args:
        qkv: (B, T, (NH + 2 NKV) hs) float32 or float64 NumPy array: q (NH heads), k (NKV
            heads), v (NKV heads) along the last axis, as `c_attn` produces them.
        cos, sin: (T, hs/2) from rope.rope_tables (cast to qkv's dtype here, as the twin
            does).
        n_head: NH; n_kv_head: NKV (NH without grouped-query attention).
    Returns:
        out: (B, T, (NH + 2 NKV) hs), a new array.
        cache: (cos, sin, n_head, n_kv_head), cos and sin contiguous in qkv's dtype.
    """
    if not (isinstance(qkv, np.ndarray) and qkv.dtype in DTYPES and qkv.ndim == 3):
        raise TypeError(f"rope kernel: takes a (B, T, width) float32/float64 NumPy qkv, got "
                        f"{type(qkv).__name__} {getattr(qkv, 'dtype', '')}; the xp op takes "
                        f"the others")
    cos = np.ascontiguousarray(cos, dtype=qkv.dtype)  # (T, hs/2)
    sin = np.ascontiguousarray(sin, dtype=qkv.dtype)
    x = _heads(qkv, n_head + 2 * n_kv_head, cos, sin)  # (B, T, H, hs)
    out = np.empty_like(x)
    _rotate(x, cos, sin, n_head + n_kv_head, out)
    return out.reshape(qkv.shape), (cos, sin, n_head, n_kv_head)


def rope_backward(dout, cache):
    """Kernel twin of rope.rope_backward: dqkv = dout turned back by -angle (the transpose
    of the rotation) on the q and k heads, dv = dout on the v heads.

    Args: dout (B, T, (NH + 2 NKV) hs); cache from rope_forward. Returns dqkv, same shape.
    """
    cos, sin, n_head, n_kv_head = cache
    dy = _heads(np.asarray(dout, dtype=cos.dtype), n_head + 2 * n_kv_head, cos, sin)
    dx = np.empty_like(dy)
    _rotate(dy, cos, -sin, n_head + n_kv_head, dx)
    return dx.reshape(dout.shape)
