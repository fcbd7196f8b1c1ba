"""LayerNorm forward and backward as CPU kernels: twins of tinygrad_char/ops/layernorm.py.

Forward, per row (one pass to load, then in L1): mean, biased variance, rstd and y. The
cache keeps x, mean and rstd (N floats each, not the normalised (N, C) rows: the backward
recomputes norm = (x - mean) * rstd in the same pass that uses it).

Backward, per row, with n = norm and dn = dy * w:
    dx = rstd * (dn - mean(dn) - n * mean(dn * n))
and dw = sum over rows of dy * n, db = sum over rows of dy, summed per chunk of rows into
(n_chunks, C) partials and then in chunk order: deterministic whatever the thread count
(rows and chunks are spread over the kernels' threads).
float32 and float64.
"""

import numpy as np

from tinygrad_char.ops import layernorm as xp_layernorm
from tinygrad_char.fused.cpu._jit import applies, kernel, prange

ROWS_PER_CHUNK = 64  # backward: rows per (dw, db) partial sum


@kernel
def _forward(x, w, b, has_bias, eps, y, mean, rstd):
    """x (N, C), w (C,), b (C,) -> y (N, C), mean (N,), rstd (N,)."""
    N, C = x.shape
    one = x.dtype.type(1.0)
    inv_c = one / x.dtype.type(C)  # x's dtype: `s / C` would compute in float64
    for i in prange(N):
        row = x[i]
        s = row.dtype.type(0.0)
        for j in range(C):
            s += row[j]
        m = s * inv_c
        v = row.dtype.type(0.0)
        for j in range(C):
            d = row[j] - m
            v += d * d
        r = one / np.sqrt(v * inv_c + eps)
        mean[i] = m
        rstd[i] = r
        out = y[i]
        if has_bias:
            for j in range(C):
                out[j] = (row[j] - m) * r * w[j] + b[j]
        else:
            for j in range(C):
                out[j] = (row[j] - m) * r * w[j]


@kernel
def _backward(dy, x, w, mean, rstd, dx, dw_part, db_part):
    """dy, x (N, C), w (C,), mean, rstd (N,) -> dx (N, C), dw/db partials (n_chunks, C)."""
    N, C = x.shape
    n_chunks = dw_part.shape[0]
    inv_c = x.dtype.type(1.0) / x.dtype.type(C)  # x's dtype (see _forward)
    for c in prange(n_chunks):
        dwp = dw_part[c]
        dbp = db_part[c]
        dwp[:] = 0.0
        dbp[:] = 0.0
        for i in range(c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, N)):
            xr, dyr, dxr = x[i], dy[i], dx[i]
            m, r = mean[i], rstd[i]
            s_dn = dyr.dtype.type(0.0)
            s_dnn = dyr.dtype.type(0.0)
            for j in range(C):
                n = (xr[j] - m) * r
                dn = dyr[j] * w[j]
                s_dn += dn
                s_dnn += dn * n
                dwp[j] += dyr[j] * n
                dbp[j] += dyr[j]
            mean_dn = s_dn * inv_c
            mean_dnn = s_dnn * inv_c
            for j in range(C):
                n = (xr[j] - m) * r
                dxr[j] = r * (dyr[j] * w[j] - mean_dn - n * mean_dnn)


def layernorm_forward(x, w, b=None, eps=xp_layernorm.LN_EPS):
    """Kernel twin of layernorm.layernorm_forward: y = (x - mean) * rstd * w + b per row.

    Args: x (..., C), w (C,), b (C,) or None; float32 or float64 NumPy arrays.
    Returns y (..., C) and a cache (a dict) of x as (N, C), w, mean (N,), rstd (N,).
    """
    assert applies(x, w, *([] if b is None else [b]), dtypes=(np.float32, np.float64)), \
        "layernorm kernel: float32/64 NumPy inputs of one dtype"
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)  # (N, C), a view when x is contiguous
    N = x2.shape[0]
    w = np.ascontiguousarray(w)
    b_or_w = w if b is None else np.ascontiguousarray(b)  # not read without a bias
    y = np.empty_like(x2)
    mean = np.empty(N, dtype=x.dtype)
    rstd = np.empty(N, dtype=x.dtype)
    _forward(x2, w, b_or_w, b is not None, x.dtype.type(eps), y, mean, rstd)
    return y.reshape(x.shape), dict(x=x2, w=w, mean=mean, rstd=rstd, has_bias=b is not None,
                                    shape=x.shape)


def layernorm_backward(dy, cache):
    """Kernel twin of layernorm.layernorm_backward. Returns (dx, dw, db); db is None
    without bias."""
    x2, w = cache["x"], cache["w"]
    N, C = x2.shape
    dy2 = np.ascontiguousarray(dy, dtype=x2.dtype).reshape(N, C)  # (N, C)
    dx = np.empty_like(x2)
    n_chunks = max(1, -(-N // ROWS_PER_CHUNK))
    dw_part = np.empty((n_chunks, C), dtype=x2.dtype)
    db_part = np.empty((n_chunks, C), dtype=x2.dtype)
    _backward(dy2, x2, w, cache["mean"], cache["rstd"], dx, dw_part, db_part)
    dw = dw_part.sum(axis=0) if n_chunks > 1 else dw_part[0]
    db = (db_part.sum(axis=0) if n_chunks > 1 else db_part[0]) if cache["has_bias"] else None
    return dx.reshape(cache["shape"]), dw, db
