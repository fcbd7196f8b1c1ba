"""GELU (tanh approximation, optionally with the bias add fused) and ReLU as CPU kernels:
twins of tinygrad_char/ops/activations.py (and of kernels.gelu_bias_*_xp).

    forward:   z = x + b,  u = s (z + a z^3),  h = 0.5 (1 + tanh u),  y = z h
    backward:  dz = dy * (h + h (1 - h) z (2 s + 6 s a z^2))      (1 - tanh^2 u = 4 h (1 - h))
with s = sqrt(2/pi), a = 0.044715 (activations.GELU_SCALE, GELU_CUBIC). One pass each way:
the cache keeps only the input (and b); the backward recomputes h, which costs less than
reading a stored copy. tanh is `_jit.tanh_approx` (Eigen's rational form, vectorised; its
worst error against np.tanh is `_jit.TANH_MAX_ABS_ERROR`). Rows (GELU) and elements (ReLU)
are spread over the kernels' threads. GELU is float32 only; ReLU takes float32 and float64.
"""

import numpy as np

from tinygrad_char.ops import activations
from tinygrad_char.ops.linear import sum_rows
from tinygrad_char.fused.cpu import CpuCache, applies
from tinygrad_char.fused.cpu._jit import helper, kernel, prange, tanh_approx

S = activations.GELU_SCALE
A = activations.GELU_CUBIC
CHUNK = 1 << 14  # elements per prange chunk


@helper
def _h(z):
    return np.float32(0.5) * (np.float32(1.0) + tanh_approx(
        z * (np.float32(S) + np.float32(S * A) * z * z)))


@kernel
def _gelu_forward(x, b, has_bias, y):
    """x, y (N, F); b (F,) -> y = gelu(x + b)."""
    N, F = x.shape
    for i in prange(N):
        xr, yr = x[i], y[i]
        if has_bias:
            for j in range(F):
                z = xr[j] + b[j]
                yr[j] = z * _h(z)
        else:
            for j in range(F):
                z = xr[j]
                yr[j] = z * _h(z)


@kernel
def _gelu_backward(dy, x, b, has_bias, dx):
    """dy, x, dx (N, F); b (F,) -> dx = dy * gelu'(x + b)."""
    N, F = x.shape
    for i in prange(N):
        xr, dyr, dxr = x[i], dy[i], dx[i]
        for j in range(F):
            z = xr[j] + b[j] if has_bias else xr[j]
            h = _h(z)
            dxr[j] = dyr[j] * (h + h * (np.float32(1.0) - h) * z *
                               (np.float32(2.0 * S) + np.float32(6.0 * S * A) * z * z))


@kernel
def _relu_forward(x, y):
    for i in prange(x.size):
        y[i] = x[i] if x[i] > 0 else x.dtype.type(0.0)


@kernel
def _relu_backward(dy, y, dx):
    for i in prange(y.size):
        dx[i] = dy[i] if y[i] > 0 else y.dtype.type(0.0)


def _rows(a):
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def _gelu(x, b):
    x2 = _rows(x)  # (N, F)
    b_or_x = x2[0] if b is None else np.ascontiguousarray(b)  # not read without a bias
    y = np.empty_like(x2)
    _gelu_forward(x2, b_or_x, b is not None, y)
    return y.reshape(x.shape), CpuCache(x=x2, b=b_or_x, has_bias=b is not None, shape=x.shape)


def _gelu_grad(dy, cache):
    x2 = cache["x"]
    dy2 = np.ascontiguousarray(dy, dtype=np.float32).reshape(x2.shape)
    dx = np.empty_like(x2)
    _gelu_backward(dy2, x2, cache["b"], cache["has_bias"], dx)
    return dx


def gelu_forward(x):
    """Kernel twin of activations.gelu_forward. Returns y and a CpuCache of x."""
    if not applies(x):
        return activations.gelu_forward(x)
    return _gelu(x, None)


def gelu_backward(dy, cache):
    """Kernel twin of activations.gelu_backward. Returns dx."""
    if not isinstance(cache, CpuCache):
        return activations.gelu_backward(dy, cache)
    return _gelu_grad(dy, cache).reshape(cache["shape"])


def gelu_bias_forward(x, b):
    """y = gelu(x + b) in one pass. Args: x (..., F), b (F,). Returns (y, cache)."""
    if not applies(x, b):
        from tinygrad_char.fused.cuda import gelu_bias_forward_xp

        return gelu_bias_forward_xp(x, b)
    return _gelu(x, b)


def gelu_bias_backward(dy, cache):
    """Returns (dx, db): dx = dy * gelu'(x + b), db = sum of dx over all rows."""
    if not isinstance(cache, CpuCache):
        from tinygrad_char.fused.cuda import gelu_bias_backward_xp

        return gelu_bias_backward_xp(dy, cache)
    dx = _gelu_grad(dy, cache)
    return dx.reshape(cache["shape"]), sum_rows(dx)


def relu_forward(x):
    """Kernel twin of activations.relu_forward: y = max(x, 0); cache y."""
    if not applies(x, dtypes=(np.float32, np.float64)):
        return activations.relu_forward(x)
    y = np.empty_like(x, order="C")
    _relu_forward(np.ascontiguousarray(x).reshape(-1), y.reshape(-1))
    return y, y


def relu_backward(dy, cache):
    """Kernel twin of activations.relu_backward: dx = dy where y > 0, else 0."""
    if not applies(cache, dtypes=(np.float32, np.float64)) or not applies(dy, cache,
                                                                         dtypes=(dy.dtype,)):
        return activations.relu_backward(dy, cache)
    dx = np.empty_like(cache, order="C")
    _relu_backward(np.ascontiguousarray(dy).reshape(-1), cache.reshape(-1), dx.reshape(-1))
    return dx
