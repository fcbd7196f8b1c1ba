"""GELU (tanh approximation) and ReLU as CPU kernels: twins of
tinygrad_char/ops/activations.py.

    forward:   u = s (x + a x^3),  h = 0.5 (1 + tanh u),  y = x h
    backward:  dx = dy * (h + h (1 - h) x (2 s + 6 s a x^2))      (1 - tanh^2 u = 4 h (1 - h))
with s = sqrt(2/pi), a = 0.044715 (activations.GELU_SCALE, GELU_CUBIC). One pass each way:
the cache keeps only the input; the backward recomputes h, which costs less than reading a
stored copy. tanh is `_jit.tanh_approx` (Eigen's rational form, vectorised; its worst error
against np.tanh is `_jit.TANH_MAX_ABS_ERROR`). Rows (GELU) and elements (ReLU) are spread
over the kernels' threads. GELU is float32 only; ReLU takes float32 and float64.
"""

import numpy as np

from tinygrad_char.ops import activations
from tinygrad_char.fused.cpu._jit import applies, helper, kernel, prange, tanh_approx

S = activations.GELU_SCALE
A = activations.GELU_CUBIC


@helper
def _h(z):
    return np.float32(0.5) * (np.float32(1.0) + tanh_approx(
        z * (np.float32(S) + np.float32(S * A) * z * z)))


@kernel
def _gelu_forward(x, y):
    """x, y (N, F) -> y = gelu(x)."""
    N, F = x.shape
    for i in prange(N):
        xr, yr = x[i], y[i]
        for j in range(F):
            z = xr[j]
            yr[j] = z * _h(z)


@kernel
def _gelu_backward(dy, x, dx):
    """dy, x, dx (N, F) -> dx = dy * gelu'(x)."""
    N, F = x.shape
    for i in prange(N):
        xr, dyr, dxr = x[i], dy[i], dx[i]
        for j in range(F):
            z = xr[j]
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


def gelu_forward(x):
    """Kernel twin of activations.gelu_forward. Args: x (..., F) float32. Returns y
    (..., F) and a cache of x as (N, F) and its shape."""
    assert applies(x), "gelu kernel: float32 NumPy input"
    x2 = _rows(x)  # (N, F)
    y = np.empty_like(x2)
    _gelu_forward(x2, y)
    return y.reshape(x.shape), {"x": x2, "shape": x.shape}


def gelu_backward(dy, cache):
    """Kernel twin of activations.gelu_backward. Returns dx."""
    x2 = cache["x"]
    dy2 = np.ascontiguousarray(dy, dtype=np.float32).reshape(x2.shape)
    dx = np.empty_like(x2)
    _gelu_backward(dy2, x2, dx)
    return dx.reshape(cache["shape"])


def relu_forward(x):
    """Kernel twin of activations.relu_forward: y = max(x, 0); cache y."""
    assert applies(x, dtypes=(np.float32, np.float64)), "relu kernel: float32/64 NumPy input"
    y = np.empty_like(x, order="C")
    _relu_forward(np.ascontiguousarray(x).reshape(-1), y.reshape(-1))
    return y, y


def relu_backward(dy, cache):
    """Kernel twin of activations.relu_backward: dx = dy where y > 0, else 0."""
    dx = np.empty_like(cache, order="C")
    _relu_backward(np.ascontiguousarray(dy, dtype=cache.dtype).reshape(-1), cache.reshape(-1),
                   dx.reshape(-1))
    return dx
