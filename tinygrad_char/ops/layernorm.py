"""Layer normalisation over the last axis (eps 1e-5), as `torch.nn.LayerNorm`, and RMSNorm
(the same eps, no mean and no bias), as `torch.nn.RMSNorm`."""

from tinygrad_char.backend import get_array_module
from tinygrad_char.ops.linear import sum_rows

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
    C = x.shape[-1]
    xc = x - row_mean(x)  # (..., C)
    # biased variance, as PyTorch: the row dot products xc . xc / C, which einsum runs in
    # one pass without a temporary (768 rows of 128: 14 us, against 27 us for xc * xc)
    var = xp.einsum("...c,...c->...", xc, xc)[..., None]  # (..., 1)
    var *= 1.0 / C
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
    dy2, norm2 = dy.reshape(-1, C), norm.reshape(-1, C)  # (N, C)
    dy_norm = dy2 * norm2  # (N, C)
    dw = sum_rows(dy_norm)  # (C,)
    db = sum_rows(dy2) if has_bias else None  # (C,)
    # the two row means of the formula, with dn = dy * w, as matrix-vector products:
    # mean(dn) = dy . w / C and mean(dn * n) = (dy * n) . w / C (dy * n is dw's product)
    w_over_c = w / C  # (C,)
    mean_dnorm = (dy2 @ w_over_c)[:, None]  # (N, 1)
    mean_dnorm_norm = (dy_norm @ w_over_c)[:, None]  # (N, 1)
    dx = dy2 * w  # dn (N, C)
    dx -= mean_dnorm
    dx -= norm2 * mean_dnorm_norm
    dx *= rstd.reshape(-1, 1)
    return dx.reshape(dy.shape), dw, db


def rmsnorm_forward(x, w, eps=LN_EPS):
    """y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps), per row over the last axis
    (RMSNorm, as Llama: no mean subtracted, no bias).

    Args:
        x: (..., C), e.g. (B, T, C).
        w: (C,) gain (`ln_*.weight`).
    Returns:
        y: (..., C)
        cache: (norm, rstd, w): norm = x * rstd, saved as LayerNorm saves it.
    """
    xp = get_array_module(x)
    C = x.shape[-1]
    ms = xp.einsum("...c,...c->...", x, x)[..., None]  # (..., 1) sum of squares
    ms *= 1.0 / C
    ms += eps
    rstd = xp.sqrt(ms, out=ms)
    xp.divide(1.0, rstd, out=rstd)  # (..., 1)
    norm = x * rstd  # (..., C)
    return norm * w, (norm, rstd, w)


def rmsnorm_backward(dy, cache):
    """Gradients of RMSNorm.

    With n = x * rstd, rstd = (mean(x^2) + eps)^(-1/2) and dn = dy * w:
        dw = sum over rows of dy * n
        dx = rstd * (dn - n * mean(dn * n))
    The last line: dn_i/dx_j = rstd (delta_ij - x_i x_j rstd^2 / C)
    (d rstd / d x_j = -rstd^3 x_j / C), so dx_j = rstd dn_j - rstd n_j sum_i(dn_i n_i) / C.
    LayerNorm's formula without its -mean(dn) term, since no mean is subtracted.
    Returns (dx, dw), in the forward's input order.
    """
    norm, rstd, w = cache
    C = dy.shape[-1]
    dy2, norm2 = dy.reshape(-1, C), norm.reshape(-1, C)  # (N, C)
    dy_norm = dy2 * norm2  # (N, C)
    dw = sum_rows(dy_norm)  # (C,)
    mean_dnorm_norm = (dy_norm @ (w / C))[:, None]  # (N, 1) mean(dn * n)
    dx = dy2 * w  # dn (N, C)
    dx -= norm2 * mean_dnorm_norm
    dx *= rstd.reshape(-1, 1)
    return dx.reshape(dy.shape), dw
