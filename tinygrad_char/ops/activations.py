"""Elementwise activations: GELU (tanh approximation, as GPT-2), ReLU, the exact (erf)
GELU, and SwiGLU (the gated MLP activation of Llama).

Each is written as its formula, one array expression a line. Not here: the matmuls around
them (linear.py), or a fused GELU kernel (the fast paths in tinygrad_char/fused/).

Shapes: every activation works elementwise on any shape, e.g. (B, T, 4C) for the MLP's
hidden layer; results have the input's shape and dtype.
"""

import math

from tinygrad_char.backend import get_array_module

GELU_SCALE = math.sqrt(2.0 / math.pi)  # sqrt(2/pi), from the tanh approximation of erf
GELU_CUBIC = 0.044715  # the cubic coefficient of that approximation (Hendrycks & Gimpel)


def gelu_forward(x):
    """y = x * h,  h = 0.5 (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3)

    Args:
        x: any shape, e.g. (B, T, 4C); float32 (float64 for checks, float16 in mixed
            precision).
    Returns:
        y: same shape and dtype as x.
        cache: (x, h), both x's shape; h is saved so the backward needs no tanh.
    """
    xp = get_array_module(x)
    # u = s (x + a x^3), written s x (1 + a x^2): no x^3 to overflow float16 at |x| > 40
    u = GELU_SCALE * x * (1.0 + GELU_CUBIC * x * x)
    h = 0.5 * (1.0 + xp.tanh(u))
    return x * h, (x, h)


def gelu_backward(dy, cache):
    """dx = dy * y'(x) for the tanh GELU, from the forward's h = 0.5 (1 + tanh u):

        y  = x h,   u = s (x + a x^3),   s = sqrt(2/pi), a = 0.044715
        u' = s (1 + 3 a x^2)
        h' = 0.5 (1 - tanh^2 u) u' = 2 h (1 - h) u'      (1 - tanh^2 u = 4 h (1 - h))
        y' = h + x h'
    Args: dy, x's shape. Returns dx, same shape and dtype.
    """
    x, h = cache
    du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)  # u'
    dh = 2.0 * h * (1.0 - h) * du  # h'
    return dy * (h + x * dh)  # dy * y'


def relu_forward(x):
    """y = max(x, 0). Args: x, any shape. Returns (y, cache=y): y > 0 exactly where x > 0."""
    y = get_array_module(x).maximum(x, 0)
    return y, y


def relu_backward(dy, cache):
    """dx = dy where x > 0, else 0 (the derivative at exactly 0 is taken as 0).
    Args: dy, x's shape. Returns dx, same shape."""
    return dy * (cache > 0)


# -- exact GELU (erf) ----------------------------------------------------------------------

SQRT_HALF = math.sqrt(0.5)  # 1/sqrt(2): Phi(x) = 0.5 (1 + erf(x / sqrt(2)))
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # phi(x) = exp(-x^2 / 2) / sqrt(2 pi)


def erf(x):
    """The error function, elementwise, to float64 rounding: scipy.special.erf on NumPy
    arrays, cupyx.scipy.special.erf on CuPy arrays (NumPy has no erf). Same dtype as x."""
    xp = get_array_module(x)
    if xp.__name__ == "cupy":
        from cupyx.scipy.special import erf as device_erf

        return device_erf(x)
    try:
        from scipy.special import erf as host_erf
    except ImportError as e:
        raise ImportError(f"activation 'gelu_exact' needs scipy for erf ({e}); "
                          f"pip install scipy, or use activation 'gelu'") from None
    return host_erf(x).astype(x.dtype, copy=False)


def gelu_exact_forward(x):
    """y = x Phi(x),  Phi(x) = 0.5 (1 + erf(x / sqrt(2))): the exact GELU, as PyTorch's
    default nn.GELU() (and nanoGPT).

    Args: x, any shape, e.g. (B, T, 4C). Returns y (same shape and dtype) and cache
    (x, Phi(x)).
    """
    cdf = 0.5 * (1.0 + erf(x * SQRT_HALF))  # Phi(x)
    return x * cdf, (x, cdf)


def gelu_exact_backward(dy, cache):
    """dy/dx of x Phi(x): the product rule, with Phi' = phi the standard normal density:

        y' = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    Args: dy, x's shape. Returns dx, same shape and dtype.
    """
    x, cdf = cache
    xp = get_array_module(dy)
    pdf = INV_SQRT_2PI * xp.exp(-0.5 * x * x)  # phi(x)
    return dy * (cdf + x * pdf)


# -- SwiGLU ----------------------------------------------------------------------------------

def swiglu_forward(gate, up):
    """y = silu(gate) * up,  silu(g) = g sigmoid(g)  (the gated MLP of Llama: gate is
    c_gate(x), up is c_fc(x)).

    sigmoid(g) is written 0.5 (1 + tanh(g / 2)): the same function, and it cannot
    overflow for large |g| (1 / (1 + exp(-g)) overflows exp at g < -709).
    Args: gate, up: the same shape, e.g. (B, T, F), F the hidden width. Returns y (that
    shape) and cache (gate, up, sigmoid(gate)).
    """
    xp = get_array_module(gate)
    sig = 0.5 * (1.0 + xp.tanh(0.5 * gate))  # sigmoid(gate)
    return gate * sig * up, (gate, up, sig)


def swiglu_backward(dy, cache):
    """Gradients of y = silu(g) * u, s = sigmoid(g), s' = s (1 - s):

        du = dy * silu(g) = dy * g s
        dg = dy * u * silu'(g),   silu'(g) = s + g s (1 - s) = s (1 + g (1 - s))
    Args: dy, the forward's shape. Returns (dgate, dup), in the forward's input order.
    """
    gate, up, sig = cache
    dup = dy * gate * sig
    dgate = dy * up * sig * (1.0 + gate * (1.0 - sig))
    return dgate, dup
