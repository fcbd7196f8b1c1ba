"""RMSNorm forward and backward as CPU kernels: twins of rmsnorm_forward / rmsnorm_backward
in tinygrad_char/ops/layernorm.py (their oracle in tests/test_cpu_kernels_llama.py).

Per row of C (eps 1e-5, layernorm.LN_EPS, as the twin):

    forward:   rstd = 1 / sqrt(mean(x^2) + eps),   y = x * rstd * w
    backward:  with n = x * rstd and dn = dy * w,
               dw = sum over rows of dy * n
               dx = rstd * (dn - n * mean(dn * n))
The last line: d rstd / d x_j = -rstd^3 x_j / C, so dn_i / dx_j contributes
rstd (delta_ij - n_i n_j / C), and dx_j = rstd dn_j - rstd n_j sum_i(dn_i n_i) / C
(LayerNorm's formula without its -mean(dn) term: no mean is subtracted).

The forward reads each row once into L1 for its sum of squares and writes y in a second
pass over it; the cache keeps x, w and rstd (N floats, not the normalised (N, C) rows: the
backward recomputes n = x * rstd in the pass that uses it). The backward's dw is summed per
chunk of ROWS_PER_CHUNK rows into (n_chunks, C) partials, then over chunks in order: the
same result whatever the thread count.

Parallelises over rows (forward) and chunks of rows (backward) with `prange`. Takes float32
and float64 NumPy arrays; sums accumulate in the input's dtype, as the twin's.

Not here: choosing this kernel over the twin (the dispatch decides once, when the model is
built; this wrapper only checks that its inputs are what it takes), LayerNorm
(layernorm.py).
"""

import numpy as np

from tinygrad_char.ops.layernorm import LN_EPS
from tinygrad_char.fused.cpu._jit import kernel, prange

DTYPES = (np.float32, np.float64)
ROWS_PER_CHUNK = 64  # backward: rows per dw partial sum


@kernel
def _forward(x, w, eps, y, rstd):
    """x (N, C), w (C,) -> y (N, C), rstd (N,)."""
    N, C = x.shape
    one = x.dtype.type(1.0)
    inv_c = one / x.dtype.type(C)  # x's dtype: `ss / C` would compute in float64
    for i in prange(N):
        row = x[i]
        ss = row.dtype.type(0.0)
        for j in range(C):
            ss += row[j] * row[j]
        r = one / np.sqrt(ss * inv_c + eps)
        rstd[i] = r
        out = y[i]
        for j in range(C):
            out[j] = row[j] * r * w[j]  # norm * w, the twin's order


@kernel
def _backward(dy, x, w, rstd, dx, dw_part):
    """dy, x (N, C), w (C,), rstd (N,) -> dx (N, C), dw partials (n_chunks, C)."""
    N, C = x.shape
    n_chunks = dw_part.shape[0]
    inv_c = x.dtype.type(1.0) / x.dtype.type(C)  # x's dtype (see _forward)
    for c in prange(n_chunks):
        dwp = dw_part[c]
        dwp[:] = 0.0
        for i in range(c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, N)):
            xr, dyr, dxr = x[i], dy[i], dx[i]
            r = rstd[i]
            s_dnn = dyr.dtype.type(0.0)
            for j in range(C):
                dy_n = dyr[j] * (xr[j] * r)  # dy * n
                s_dnn += dy_n * w[j]  # dn * n
                dwp[j] += dy_n
            mean_dnn = s_dnn * inv_c
            for j in range(C):
                dxr[j] = r * (dyr[j] * w[j] - (xr[j] * r) * mean_dnn)


def rmsnorm_forward(x, w, eps=LN_EPS):
    """Kernel twin of layernorm.rmsnorm_forward: y = x * rstd * w per row over the last axis.

    Args:
        x: (..., C) float32 or float64 NumPy array, e.g. (B, T, C).
        w: (C,) gain (`ln_*.weight`), x's dtype.
    Returns:
        y: (..., C), a new array.
        cache: (x as (N, C), w, rstd (N,), x's shape), for rmsnorm_backward below.
    """
    if not (isinstance(x, np.ndarray) and isinstance(w, np.ndarray) and x.dtype in DTYPES
            and w.dtype == x.dtype):
        raise TypeError(f"rmsnorm kernel: takes float32/float64 NumPy x and w of one dtype, "
                        f"got {type(x).__name__} {getattr(x, 'dtype', '')} and "
                        f"{type(w).__name__} {getattr(w, 'dtype', '')}; the xp op takes the "
                        f"others")
    C = x.shape[-1]
    if w.shape != (C,):
        raise ValueError(f"rmsnorm kernel: w must be ({C},) for x {x.shape}, got {w.shape}")
    x2 = np.ascontiguousarray(x).reshape(-1, C)  # (N, C), a view when x is contiguous
    w = np.ascontiguousarray(w)
    y = np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)  # (N,)
    _forward(x2, w, x.dtype.type(eps), y, rstd)
    return y.reshape(x.shape), (x2, w, rstd, x.shape)


def rmsnorm_backward(dy, cache):
    """Kernel twin of layernorm.rmsnorm_backward (the derivation is in this module's
    docstring). Args: dy (..., C); cache from rmsnorm_forward. Returns (dx, dw), in the
    forward's input order: dx (..., C), dw (C,)."""
    x2, w, rstd, shape = cache
    N, C = x2.shape
    dy2 = np.ascontiguousarray(dy, dtype=x2.dtype).reshape(N, C)  # (N, C)
    dx = np.empty_like(x2)
    n_chunks = max(1, -(-N // ROWS_PER_CHUNK))
    dw_part = np.empty((n_chunks, C), dtype=x2.dtype)
    _backward(dy2, x2, w, rstd, dx, dw_part)
    dw = dw_part.sum(axis=0) if n_chunks > 1 else dw_part[0]
    return dx.reshape(shape), dw
