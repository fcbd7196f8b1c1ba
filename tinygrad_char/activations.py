"""Elementwise activations: GELU (tanh approximation, as GPT-2) and ReLU."""

import math

from .backend import get_array_module, row_blocks

GELU_SCALE = math.sqrt(2.0 / math.pi)  # sqrt(2/pi), from the tanh approximation of erf
GELU_CUBIC = 0.044715  # the cubic coefficient of that approximation (Hendrycks & Gimpel)


def gelu_forward(x):
    """y = x * h,  h = 0.5 (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3)

    Args:
        x: any shape, e.g. (B, T, 4C).
    Returns:
        y: same shape as x.
        cache: (x, h); h is saved so the backward needs no tanh (and, written as h rather
            than tanh(u), its derivative costs fewer passes: see gelu_backward).
    Each line below is one in-place pass over a block of rows (`row_blocks`: blocks that
    fit in the CPU's L2 cache, the whole array on the GPU); 8 passes, no temporaries.
    """
    xp = get_array_module(x)
    x2 = x.reshape(-1, x.shape[-1])  # (N, F)
    y, h = xp.empty_like(x2), xp.empty_like(x2)
    for rows in row_blocks(x2):
        xb, hb, yb = x2[rows], h[rows], y[rows]
        xp.multiply(xb, xb, out=hb)  # x^2
        hb *= GELU_SCALE * GELU_CUBIC
        hb += GELU_SCALE
        hb *= xb  # u = s (x + a x^3) = x (s + s a x^2)
        xp.tanh(hb, out=hb)
        hb += 1.0
        hb *= 0.5  # h = 0.5 (1 + tanh u)
        xp.multiply(xb, hb, out=yb)  # y = x h
    return y.reshape(x.shape), (x, h.reshape(x.shape))


def gelu_backward(dy, cache):
    """dy/dx of the tanh GELU, from the forward's h = 0.5 (1 + tanh u).

        y  = x h,   u = s (x + a x^3),   s = sqrt(2/pi), a = 0.044715
        h' = 0.5 (1 - tanh^2 u) u' = 2 h (1 - h) s (1 + 3 a x^2)     (1 - tanh^2 = 4 h (1 - h))
        y' = h + x h' = h + h (1 - h) x (2 s + 6 s a x^2)
    Returns dx (same shape as dy). 9 in-place passes per block of rows.
    """
    x, h = cache
    xp = get_array_module(dy)
    x2 = x.reshape(-1, x.shape[-1])  # (N, F)
    h2, dy2 = h.reshape(x2.shape), dy.reshape(x2.shape)
    dx = xp.empty_like(x2)
    blocks = row_blocks(x2)
    block_rows = blocks[0].stop if blocks else 0  # the first block is the largest
    scratch = xp.empty((block_rows, x2.shape[1]), dtype=x2.dtype)
    for rows in blocks:
        xb, hb, db = x2[rows], h2[rows], dx[rows]
        wb = scratch[:db.shape[0]]
        xp.multiply(xb, xb, out=db)  # x^2
        db *= 6.0 * GELU_SCALE * GELU_CUBIC
        db += 2.0 * GELU_SCALE
        db *= xb  # x (2 s + 6 s a x^2)
        xp.subtract(1.0, hb, out=wb)
        wb *= hb  # h (1 - h)
        db *= wb
        db += hb  # y'
        db *= dy2[rows]
    return dx.reshape(dy.shape)


def relu_forward(x):
    """y = max(x, 0). Returns (y, cache=y): y > 0 is exactly where x > 0."""
    y = get_array_module(x).maximum(x, 0)
    return y, y


def relu_backward(dy, cache):
    """dx = dy where x > 0, else 0 (the derivative at exactly 0 is taken as 0)."""
    return dy * (cache > 0)
