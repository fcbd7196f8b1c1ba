"""Layer normalisation over the last axis (eps 1e-5), as `torch.nn.LayerNorm`, and RMSNorm
(the same eps, no mean and no bias), as `torch.nn.RMSNorm`.

Shapes: x and y (..., C), e.g. (B, T, C); the weight and bias (C,); the saved statistics
(..., 1). dtype: float32 (float64 for checks); the model keeps both norms in float32 in
mixed precision.
"""

from tinygrad_char.backend import get_array_module

LN_EPS = 1e-5


def layernorm_forward(x, w, b=None, eps=LN_EPS):
    """y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps), per row over the last
    axis (var the biased variance, as PyTorch).

    Args:
        x: (..., C), e.g. (B, T, C).
        w: (C,) gain (`ln_*.weight`).
        b: (C,) bias, or None when the model has no biases.
    Returns:
        y: (..., C)
        cache: (norm, rstd, w, has_bias): norm = (x - mean) * rstd (..., C) and rstd
            (..., 1), saved as llm.c does so the backward needs no second pass over x.
    """
    xp = get_array_module(x)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    norm = xc * rstd  # (..., C)
    y = norm * w
    if b is not None:
        y = y + b
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
    Args: dy (..., C). Returns (dx (..., C), dw (C,), db (C,)); db is None without bias.
    """
    norm, rstd, w, has_bias = cache
    C = dy.shape[-1]
    dw = (dy * norm).reshape(-1, C).sum(axis=0)  # (C,)
    db = dy.reshape(-1, C).sum(axis=0) if has_bias else None  # (C,)
    dnorm = dy * w  # (..., C)
    dx = rstd * (dnorm - dnorm.mean(axis=-1, keepdims=True)
                 - norm * (dnorm * norm).mean(axis=-1, keepdims=True))  # (..., C)
    return dx, dw, db


def rmsnorm_forward(x, w, eps=LN_EPS):
    """y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps), per row over the last axis
    (RMSNorm, as Llama: no mean subtracted, no bias).

    Args:
        x: (..., C), e.g. (B, T, C).
        w: (C,) gain (`ln_*.weight`).
    Returns:
        y: (..., C)
        cache: (norm, rstd, w): norm = x * rstd (..., C) and rstd (..., 1), saved as
            LayerNorm saves them.
    """
    xp = get_array_module(x)
    rstd = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
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
    Args: dy (..., C). Returns (dx (..., C), dw (C,)), in the forward's input order.
    """
    norm, rstd, w = cache
    C = dy.shape[-1]
    dw = (dy * norm).reshape(-1, C).sum(axis=0)  # (C,)
    dnorm = dy * w  # (..., C)
    dx = rstd * (dnorm - norm * (dnorm * norm).mean(axis=-1, keepdims=True))  # (..., C)
    return dx, dw
