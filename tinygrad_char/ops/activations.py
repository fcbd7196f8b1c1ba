"""Elementwise activations: GELU (tanh approximation, as GPT-2), ReLU, the exact (erf)
GELU, and SwiGLU (the gated MLP activation of Llama)."""

import math

from tinygrad_char.backend import get_array_module, row_blocks

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

    Args: x, any shape, e.g. (B, T, F). Returns y (same shape) and cache (x, Phi).
    """
    cdf = erf(x * SQRT_HALF)
    cdf += 1.0
    cdf *= 0.5  # Phi(x)
    return x * cdf, (x, cdf)


def gelu_exact_backward(dy, cache):
    """dy/dx of x Phi(x): the product rule, with Phi' = phi the standard normal density:

        y' = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    Returns dx (same shape as dy).
    """
    x, cdf = cache
    xp = get_array_module(dy)
    pdf = xp.exp(-0.5 * x * x)
    pdf *= INV_SQRT_2PI  # phi(x)
    dx = x * pdf
    dx += cdf  # y'
    dx *= dy
    return dx


# -- SwiGLU ----------------------------------------------------------------------------------

def swiglu_forward(gate, up):
    """y = silu(gate) * up,  silu(g) = g sigmoid(g)  (the gated MLP of Llama: gate is
    c_gate(x), up is c_fc(x)).

    sigmoid(g) is written 0.5 (1 + tanh(g / 2)): the same function, and it cannot
    overflow for large |g| (1 / (1 + exp(-g)) overflows exp at g < -709).
    Args: gate, up: the same shape, e.g. (B, T, F). Returns y and cache (gate, up, sig).
    """
    xp = get_array_module(gate)
    sig = xp.tanh(0.5 * gate)
    sig += 1.0
    sig *= 0.5  # sigmoid(gate)
    y = gate * sig
    y *= up
    return y, (gate, up, sig)


def swiglu_backward(dy, cache):
    """Gradients of y = silu(g) * u, s = sigmoid(g), s' = s (1 - s):

        du = dy * silu(g) = dy * g s
        dg = dy * u * silu'(g),   silu'(g) = s + g s (1 - s) = s (1 + g (1 - s))
    Returns (dgate, dup), in the forward's input order.
    """
    gate, up, sig = cache
    silu = gate * sig
    dup = dy * silu
    dsilu = 1.0 - sig
    dsilu *= gate
    dsilu += 1.0
    dsilu *= sig  # silu'(g)
    dgate = dy * up
    dgate *= dsilu
    return dgate, dup
