"""The linear layer with its matmuls cut in row blocks over the kernels' threads: twin of
tinygrad_char/ops/linear.py.

The CPU kernels and the matmuls share one pool of threads (numba's, see `_jit.py` and
`runtime.set_threads`): BLAS runs one thread, and each matmul here is cut into as many
row blocks as the pool has threads, one single-threaded BLAS call per block and thread. With
x2 = x as (N, in), dy2 = dy as (N, out), and rows c the c-th block of rows:

    forward:   y[rows c]  = x2[rows c] @ W.T  (+ b)
    backward:  dx[rows c] = dy2[rows c] @ W
               dW = sum_c dy2[rows c].T @ x2[rows c]      one (out, in) partial per block,
               db = sum_c sum_{n in rows c} dy2[n]        summed in block order

The partials are summed in a fixed order, so a result depends on the thread count (float
rounding) but never on timing. float32 and float64 (BLAS sgemm / dgemm through numba's
np.dot). Products too small to share out (a token of generation) run on the twin, NumPy's
matmul: `_jit.too_small`, the per-call rule by size.
"""

import numba
import numpy as np

from tinygrad_char.ops import linear as xp_linear
from tinygrad_char.fused.cpu._jit import applies, helper, kernel, prange, too_small


@helper
def _block(c, n_blocks, n):
    """Rows lo..hi of block c when n rows are cut in n_blocks blocks (the last may be
    short, or empty)."""
    size = (n + n_blocks - 1) // n_blocks
    lo = c * size
    return lo, (n if lo + size > n else lo + size)


@helper
def _add_into(dst, src):
    """dst += src, two 1-d rows of one length."""
    for j in range(dst.size):
        dst[j] += src[j]


@kernel(blas=True)
def _matmul_rows(a, b, bias, has_bias, n_blocks, out):
    """out (M, N) = a (M, K) @ b (K, N) (+ bias (N,) on every row), a's rows cut in
    n_blocks blocks (one per thread); the bias is added to a block while it is in cache."""
    for c in prange(n_blocks):
        lo, hi = _block(c, n_blocks, a.shape[0])
        if lo < hi:
            np.dot(a[lo:hi], b, out[lo:hi])
            if has_bias:
                for i in range(lo, hi):
                    _add_into(out[i], bias)


@kernel(blas=True)
def _weight_grad(dy, x, has_bias, dW_part, db_part):
    """dW_part[c] (out, in) = dy[rows c].T @ x[rows c], db_part[c] (out,) = the rows' sum of
    dy, for dy (N, out), x (N, in) and one block c per thread (the caller sums them)."""
    n_blocks = dW_part.shape[0]
    for c in prange(n_blocks):
        lo, hi = _block(c, n_blocks, dy.shape[0])
        if lo < hi:
            np.dot(dy[lo:hi].T, x[lo:hi], dW_part[c])
        else:
            dW_part[c][:] = 0.0
        dbp = db_part[c]
        dbp[:] = 0.0
        if has_bias:
            for n in range(lo, hi):
                _add_into(dbp, dy[n])


@kernel
def _sum_blocks(part, out):
    """out = sum of part (n_blocks, M) over its first axis, in block order."""
    n_blocks, M = part.shape
    for j in prange(M):
        s = part[0, j]
        for c in range(1, n_blocks):
            s += part[c, j]
        out[j] = s


def _as_rows(a):
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def linear_forward(x, W, b=None):
    """Kernel twin of linear.linear_forward: y = x @ W.T + b. Args: x (..., in), W (out, in),
    b (out,) or None. Returns y (..., out) and the twin's cache (x, W, has_bias)."""
    assert applies(x, W, *(() if b is None else (b,)), dtypes=(np.float32, np.float64)), \
        "linear kernel: float32/64 NumPy inputs of one dtype"
    if too_small(x.size * W.shape[0], matmul=True):
        return xp_linear.linear_forward(x, W, b)
    x2 = _as_rows(x)  # (N, in)
    y = np.empty((x2.shape[0], W.shape[0]), dtype=x.dtype)  # (N, out)
    W = np.ascontiguousarray(W)
    bias = W[0] if b is None else np.ascontiguousarray(b)  # not read without a bias
    # W.T: BLAS reads it transposed
    _matmul_rows(x2, W.T, bias, b is not None, numba.get_num_threads(), y)
    return y.reshape(*x.shape[:-1], W.shape[0]), (x, W, b is not None)


def linear_backward(dy, cache):
    """Kernel twin of linear.linear_backward. Returns (dx, dW, db); db is None when the
    forward had no bias."""
    x, W, has_bias = cache
    if too_small(x.size * W.shape[0], matmul=True):
        return xp_linear.linear_backward(dy, cache)
    dy2, x2 = _as_rows(dy), _as_rows(x)  # (N, out), (N, in)
    W = np.ascontiguousarray(W)
    dx = np.empty((dy2.shape[0], W.shape[1]), dtype=dy.dtype)  # (N, in)
    n_blocks = numba.get_num_threads()
    _matmul_rows(dy2, W, W[0], False, n_blocks, dx)
    out_f, in_f = W.shape
    dW_part = np.empty((n_blocks, out_f, in_f), dtype=dy.dtype)
    db_part = np.empty((n_blocks, out_f), dtype=dy.dtype)
    _weight_grad(dy2, x2, has_bias, dW_part, db_part)
    if n_blocks == 1:
        dW, db = dW_part[0], db_part[0]
    else:
        dW = np.empty((out_f, in_f), dtype=dy.dtype)
        _sum_blocks(dW_part.reshape(n_blocks, -1), dW.reshape(-1))
        db = np.empty(out_f, dtype=dy.dtype)
        _sum_blocks(db_part, db)
    return dx.reshape(x.shape), dW, (db if has_bias else None)
