"""Inverted dropout as CPU kernels: twins of tinygrad_char/ops/dropout.py.

The mask comes from the model's generator drawn exactly as the twin draws it (one uniform
array of x's shape), so both implementations drop the same entries for the same seed and
a run resumes identically in either mode; the kernels only fuse what follows the draw:

    forward:   mask = (u >= p) / (1 - p),  y = x * mask        one pass (the twin: three)
    backward:  dx = dy * mask                                  on the kernels' threads

The cache is the twin's (the scaled mask), so either backward takes either forward's.
float32 and float64.
"""

import numpy as np

from tinygrad_char.ops import dropout as xp_dropout
from tinygrad_char.fused.cpu._jit import applies, kernel, prange


@kernel
def _forward(x, u, p, keep_scale, y, mask):
    """mask = keep_scale where u >= p else 0, y = x * mask (all 1-d, one length)."""
    zero = x.dtype.type(0.0)
    for i in prange(x.size):
        m = keep_scale if u[i] >= p else zero
        mask[i] = m
        y[i] = x[i] * m


@kernel
def _backward(dy, mask, dx):
    """dx = dy * mask (1-d)."""
    for i in prange(dy.size):
        dx[i] = dy[i] * mask[i]


def dropout_forward(x, p, rng, training=True):
    """Kernel twin of dropout.dropout_forward (same draw, same mask, same cache); outside
    training or with p = 0 it is the identity, as the twin (which it calls then)."""
    if not training or p == 0.0:
        return xp_dropout.dropout_forward(x, p, rng, training)
    assert applies(x, dtypes=(np.float32, np.float64)), "dropout kernel: float32/64 NumPy x"
    u = rng.random(x.shape, dtype=xp_dropout.uniform_dtype(x.dtype))  # the twin's draw
    dtype = x.dtype.type
    y = np.empty(x.shape, dtype=x.dtype)
    mask = np.empty(x.shape, dtype=x.dtype)
    _forward(np.ascontiguousarray(x).reshape(-1), u.reshape(-1), dtype(p),
             dtype(1.0 / (1.0 - p)), y.reshape(-1), mask.reshape(-1))
    return y, mask


def dropout_backward(dy, cache):
    """Kernel twin of dropout.dropout_backward: dx = dy * mask."""
    if cache is None:  # the forward was the identity
        return xp_dropout.dropout_backward(dy, cache)
    dx = np.empty(cache.shape, dtype=cache.dtype)
    _backward(np.ascontiguousarray(dy, dtype=cache.dtype).reshape(-1), cache.reshape(-1),
              dx.reshape(-1))
    return dx
