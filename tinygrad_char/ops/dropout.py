"""Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

Shapes: any, e.g. (B, T, C) on the residual stream; the mask has x's shape and dtype.
The mask is one uniform draw of x's shape from the model's generator, so the same
generator state drops the same elements.
"""


def uniform_dtype(dtype):
    """The dtype the generator draws in: x's own, float32 for float16 (which it lacks)."""
    return "float64" if dtype == "float64" else "float32"


def dropout_forward(x, p, rng, training=True):
    """y = x * mask / (1 - p), mask ~ Bernoulli(1 - p); identity in eval mode or when p = 0.

    Args:
        x: any shape.
        p: drop probability in [0, 1).
        rng: a seeded `xp.random.Generator` (the model's), so runs are repeatable.
        training: False gives the identity (eval mode).
    Returns:
        y: same shape as x.
        cache: the scaled mask (same shape as x), or None when nothing was dropped.
    """
    if not training or p == 0.0:
        return x, None
    keep = rng.random(x.shape, dtype=uniform_dtype(x.dtype)) >= p
    scaled_mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))
    return x * scaled_mask, scaled_mask


def dropout_backward(dy, cache):
    """dx = dy * mask / (1 - p): the same mask the forward used. Args: dy, x's shape.
    Returns dx, same shape (dy itself when nothing was dropped)."""
    return dy if cache is None else dy * cache
