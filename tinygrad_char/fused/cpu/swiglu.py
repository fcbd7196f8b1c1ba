"""SwiGLU, the gated activation of Llama's MLP, as CPU kernels: twins of swiglu_forward /
swiglu_backward in tinygrad_char/ops/activations.py (their oracle in
tests/test_cpu_kernels_llama.py).

With g = gate = c_gate(x), u = up = c_fc(x), e = exp(-g) and s = sigmoid(g) = 1 / (1 + e):

    forward:   y = silu(g) * u = g s u
    backward:  du = dy * g s
               dg = dy * u * silu'(g),   silu'(g) = s + g s (1 - s) = s (1 + g e s)
(s' = s (1 - s), and 1 - s = e / (1 + e) = e s: written so, 1 - s loses no digits where s
is near 1). The cache keeps gate and up only; the backward recomputes e and s, which costs
less than reading a stored (N, F) copy (as gelu.py does for GELU).

exp is written to vectorise, by `_jit`'s method (exp(x) = 2^k exp(r), k = round(x / ln 2),
exp(r) by `_jit.exp_poly`, 2^k built in the exponent bits of an int32 scratch row), with
-g clamped to [EXP_MIN, EXP_MAX] (88): s is exactly 1 for g >= 87.33, and set to exactly 0
for g < -88 (where the clamped exp would leave s = 6e-39, and silu(g) = g s would grow
with |g|). Error: SILU_MAX_REL_ERROR below, the worst relative error of silu(g) against
float64 over g in [-88, 88] (tests/test_cpu_kernels_llama.py measures it on a dense grid;
the worst is near -88, where s is a subnormal float32). The twin writes
s = 0.5 (1 + tanh(g / 2)), the same function, whose float32 tanh rounds s to 0 from
g ~ -17 on: for negative g the kernel is the more accurate of the two.

Parallelises over chunks of ROWS_PER_CHUNK rows (`prange`), each chunk allocating its exp
scratch once. float32 NumPy arrays only (the exp method is float32's).

Not here: choosing this kernel over the twin (the dispatch decides once, when the model is
built; this wrapper only checks that its inputs are what it takes), the two linear layers
around it, other gated activations (GeGLU).
"""

import numpy as np

from tinygrad_char.fused.cpu._jit import (EXP_MAX, EXP_MIN, LN2_HI, LN2_LO, LOG2E, exp_poly,
                                          helper, kernel, prange)

ROWS_PER_CHUNK = 64  # rows per prange chunk (each chunk allocates its exp scratch once)
SILU_MAX_REL_ERROR = 5e-7  # measured 3.5e-7 on [-88, 88], float32 (tested)


@helper
def _exp_minus_parts(g, poly, bits):
    """The two factors of exp(-g[j]) for a float32 row g: poly[j] = exp(r) and bits[j] the
    int32 exponent bits of 2^k (read as float32 through a view), exp(-g) = poly * 2^k."""
    for j in range(g.size):
        x = -g[j]
        x = np.float32(EXP_MIN) if x < np.float32(EXP_MIN) else x  # NaN passes both
        x = np.float32(EXP_MAX) if x > np.float32(EXP_MAX) else x
        kf = np.floor(x * np.float32(LOG2E) + np.float32(0.5))
        r = x - kf * np.float32(LN2_HI) - kf * np.float32(LN2_LO)
        poly[j] = exp_poly(r)
        bits[j] = (np.int32(kf) + np.int32(127)) << 23


@kernel
def _forward(gate, up, y):
    """gate, up, y (N, F) float32 -> y = g sigmoid(g) u."""
    N, F = gate.shape
    n_chunks = (N + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        poly = np.empty(F, np.float32)
        bits = np.empty(F, np.int32)
        two_k = bits.view(np.float32)
        for i in range(c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, N)):
            g, u, yr = gate[i], up[i], y[i]
            _exp_minus_parts(g, poly, bits)
            for j in range(F):
                s = np.float32(1.0) / (np.float32(1.0) + poly[j] * two_k[j])  # sigmoid(g)
                s = np.float32(0.0) if g[j] < np.float32(-EXP_MAX) else s  # NaN stays
                yr[j] = g[j] * s * u[j]


@kernel
def _backward(dy, gate, up, dgate, dup):
    """dy, gate, up (N, F) float32 -> dgate = dy u silu'(g), dup = dy silu(g), (N, F)."""
    N, F = gate.shape
    n_chunks = (N + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        poly = np.empty(F, np.float32)
        bits = np.empty(F, np.int32)
        two_k = bits.view(np.float32)
        for i in range(c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, N)):
            g, u, dyr, dgr, dur = gate[i], up[i], dy[i], dgate[i], dup[i]
            _exp_minus_parts(g, poly, bits)
            for j in range(F):
                e = poly[j] * two_k[j]  # exp(-g)
                s = np.float32(1.0) / (np.float32(1.0) + e)  # sigmoid(g)
                s = np.float32(0.0) if g[j] < np.float32(-EXP_MAX) else s  # NaN stays
                dur[j] = dyr[j] * (g[j] * s)
                dgr[j] = dyr[j] * u[j] * (s * (np.float32(1.0) + g[j] * (e * s)))


def swiglu_forward(gate, up):
    """Kernel twin of activations.swiglu_forward: y = silu(gate) * up.

    Args:
        gate, up: float32 NumPy arrays of one shape (..., F), e.g. (B, T, F).
    Returns:
        y: (..., F), a new array.
        cache: (gate as (N, F), up as (N, F), the shape), for swiglu_backward below.
    """
    if not (isinstance(gate, np.ndarray) and isinstance(up, np.ndarray) and
            gate.dtype == np.float32 and up.dtype == np.float32 and gate.ndim >= 1):
        raise TypeError(f"swiglu kernel: takes float32 NumPy gate and up, got "
                        f"{type(gate).__name__} {getattr(gate, 'dtype', '')} and "
                        f"{type(up).__name__} {getattr(up, 'dtype', '')}; the xp op takes "
                        f"the others")
    if up.shape != gate.shape:
        raise ValueError(f"swiglu kernel: gate {gate.shape} and up {up.shape} differ in shape")
    F = gate.shape[-1]
    g2 = np.ascontiguousarray(gate).reshape(-1, F)  # (N, F), a view when contiguous
    u2 = np.ascontiguousarray(up).reshape(-1, F)  # (N, F)
    y = np.empty_like(g2)
    _forward(g2, u2, y)
    return y.reshape(gate.shape), (g2, u2, gate.shape)


def swiglu_backward(dy, cache):
    """Kernel twin of activations.swiglu_backward (the derivation is in this module's
    docstring). Args: dy (..., F); cache from swiglu_forward. Returns (dgate, dup), in the
    forward's input order, each (..., F)."""
    g2, u2, shape = cache
    dy2 = np.ascontiguousarray(dy, dtype=np.float32).reshape(g2.shape)  # (N, F)
    dgate = np.empty_like(g2)
    dup = np.empty_like(g2)
    _backward(dy2, g2, u2, dgate, dup)
    return dgate.reshape(shape), dup.reshape(shape)
