"""Linear (fully connected) layer: y = x @ W.T + b, with PyTorch's weight layout.

Forward/backward pair only; the parameters live in the model's flat dict.
Shapes: x (..., in), e.g. (B, T, C); W (out, in); b (out,); y (..., out). dtype: float32
(float64 for checks, float16 in mixed precision).
"""

from tinygrad_char.backend import get_array_module


def sum_rows(a):
    """Sum over the rows of a 2-D array: (N, C) -> (C,), a's dtype.

    Accumulated in at least float32: a float16 sum over the rows would round at every add
    (N float16 ones sum to 2048 at most)."""
    xp = get_array_module(a)
    total = a.sum(axis=0, dtype=xp.promote_types(a.dtype, xp.float32))  # (C,)
    return total.astype(a.dtype, copy=False)


def linear_forward(x, W, b=None):
    """y = x @ W.T + b

    Args:
        x: (..., in) input, e.g. (B, T, C).
        W: (out, in) weight, PyTorch's `Linear.weight` layout.
        b: (out,) bias, or None.
    Returns:
        y: (..., out)
        cache: (x, W, has_bias) for the backward.
    """
    y = x @ W.T  # (..., out)
    if b is not None:
        y = y + b
    return y, (x, W, b is not None)


def linear_backward(dy, cache):
    """Gradients of y = x @ W.T + b.

    With x2 = x reshaped to (N, in) and dy2 = dy reshaped to (N, out), N the positions:
        dx = dy @ W                (..., in)
        dW = dy2.T @ x2            (out, in)   sum over every position
        db = sum_n dy2[n]          (out,)
    Args: dy (..., out). Returns (dx, dW, db); db is None when the forward had no bias.
    """
    x, W, has_bias = cache
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    dx = dy @ W  # (..., in)
    dW = dy2.T @ x2  # (out, in)
    db = sum_rows(dy2) if has_bias else None  # (out,)
    return dx, dW, db
