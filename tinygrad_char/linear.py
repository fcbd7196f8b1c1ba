"""Linear (fully connected) layer: y = x @ W.T + b, with PyTorch's weight layout.

Forward/backward pair only; the parameters live in the model's flat dict.
"""


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
        y += b
    return y, (x, W, b is not None)


def linear_backward(dy, cache):
    """Gradients of y = x @ W.T + b.

    With x2 = x reshaped to (N, in) and dy2 = dy reshaped to (N, out):
        dx = dy @ W                (..., in)
        dW = dy2.T @ x2            (out, in)   sum over every position
        db = sum_n dy2[n]          (out,)
    Returns (dx, dW, db); db is None when the forward had no bias.
    """
    x, W, has_bias = cache
    dx = dy @ W  # (..., in)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    dW = dy2.T @ x2  # (out, in)
    db = dy2.sum(axis=0) if has_bias else None  # (out,)
    return dx, dW, db
