"""Elementwise activations: GELU (tanh approximation, as GPT-2) and ReLU."""

import math

from .backend import get_array_module

GELU_SCALE = math.sqrt(2.0 / math.pi)  # sqrt(2/pi), from the tanh approximation of erf
GELU_CUBIC = 0.044715  # the cubic coefficient of that approximation (Hendrycks & Gimpel)


def gelu_forward(x):
    """y = 0.5 * x * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3)

    Args:
        x: any shape, e.g. (B, T, 4C).
    Returns:
        y: same shape as x.
        cache: (x, tanh(u)); tanh is saved so the backward does not recompute it.
    """
    xp = get_array_module(x)
    u = x * x * x
    u *= GELU_CUBIC
    u += x
    u *= GELU_SCALE
    tanh_u = xp.tanh(u, out=u)  # reuses u's buffer
    y = tanh_u + 1.0
    y *= x
    y *= 0.5
    return y, (x, tanh_u)


def gelu_backward(dy, cache):
    """dy/dx of the tanh GELU.

        y  = 0.5 x (1 + tanh u),   u = s (x + a x^3),  s = sqrt(2/pi), a = 0.044715
        y' = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) s (1 + 3 a x^2)
    Returns dx (same shape as dy).
    """
    x, tanh_u = cache
    xp = get_array_module(dy)
    # computed in two buffers with in-place ops (each line one pass, no temporaries)
    inner = x * x  # x^2
    inner *= 3.0 * GELU_CUBIC * GELU_SCALE
    inner += GELU_SCALE  # s (1 + 3 a x^2)
    inner *= x
    sech2 = tanh_u * tanh_u
    xp.subtract(1.0, sech2, out=sech2)  # 1 - tanh^2 u
    inner *= sech2  # x (1 - tanh^2 u) s (1 + 3 a x^2)
    inner += tanh_u
    inner += 1.0
    inner *= 0.5  # y'
    inner *= dy
    return inner


def relu_forward(x):
    """y = max(x, 0). Returns (y, cache=y): y > 0 is exactly where x > 0."""
    y = get_array_module(x).maximum(x, 0)
    return y, y


def relu_backward(dy, cache):
    """dx = dy where x > 0, else 0 (the derivative at exactly 0 is taken as 0)."""
    return dy * (cache > 0)
