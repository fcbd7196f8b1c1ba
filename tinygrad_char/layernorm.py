"""Layer normalisation over the last axis (eps 1e-5), as `torch.nn.LayerNorm`."""

from .backend import get_array_module

LN_EPS = 1e-5


def row_mean(a):
    """Mean over the last axis, keeping it: (..., C) -> (..., 1).

    Written as a matrix-vector product with a (C, 1) column of 1/C: NumPy's reductions
    over a short contiguous last axis are slow, BLAS's gemv is not (rows of 128 float32,
    768 rows: a.mean(axis=-1) 30 us, a @ ones / C 6 us). Same numbers up to rounding.
    """
    xp = get_array_module(a)
    C = a.shape[-1]
    return a @ xp.full((C, 1), 1.0 / C, dtype=a.dtype)


def layernorm_forward(x, w, b=None, eps=LN_EPS):
    """y = (x - mean) * rstd * w + b, per row over the last axis.

    Args:
        x: (..., C), e.g. (B, T, C).
        w: (C,) gain (`ln_*.weight`).
        b: (C,) bias, or None when the model has no biases.
    Returns:
        y: (..., C)
        cache: (norm, rstd, w, has_bias): the normalised input and 1/std, saved as llm.c
            does so the backward needs no second pass over x.
    """
    xp = get_array_module(x)
    xc = x - row_mean(x)  # (..., C)
    var = row_mean(xc * xc)  # (..., 1), biased, as PyTorch
    var += eps
    rstd = xp.sqrt(var, out=var)
    xp.divide(1.0, rstd, out=rstd)  # (..., 1) 1 / sqrt(var + eps), in var's buffer
    norm = xc
    norm *= rstd  # (..., C), reuses xc's buffer
    y = norm * w
    if b is not None:
        y += b
    return y, (norm, rstd, w, b is not None)


def layernorm_backward(dy, cache):
    """Gradients of LayerNorm.

    With n = norm = (x - mean) * rstd and dn = dy * w (C is the row length):
        dw = sum over rows of dy * n
        db = sum over rows of dy
        dx = rstd * (dn - mean(dn) - n * mean(dn * n))
    The last line: n depends on x directly, through the mean (the -mean(dn) term: every
    x_j shifts the mean by 1/C) and through rstd (d rstd / d x_j = -rstd^3 (x_j - mean) / C,
    which after substituting n gives the -n * mean(dn * n) term).
    Returns (dx, dw, db); db is None without bias.
    """
    norm, rstd, w, has_bias = cache
    C = dy.shape[-1]
    dy2 = dy.reshape(-1, C)  # (N, C)
    dw = (dy2 * norm.reshape(-1, C)).sum(axis=0)  # (C,)
    db = dy2.sum(axis=0) if has_bias else None  # (C,)
    dnorm = dy * w  # (..., C)
    dx = dnorm - row_mean(dnorm)
    dx -= norm * row_mean(dnorm * norm)
    dx *= rstd
    return dx, dw, db
