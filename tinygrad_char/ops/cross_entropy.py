"""Softmax cross-entropy over the vocabulary, fused (softmax and log-loss in one op).

Shapes: logits (B, T, V) or (N, V), N = B T the positions; targets (B, T) or (N,) integer
ids. dtype: float32 logits (float64 for checks); the loss has the logits' dtype.
"""

from tinygrad_char.backend import get_array_module

IGNORE_INDEX = -1  # targets equal to this do not count (as PyTorch's ignore_index=-1)


def cross_entropy_forward(logits, targets):
    """loss = mean over valid positions n of  -log softmax(logits[n])[targets[n]].

    Computed stably as  logsumexp(z) - z[target]  with z = logits - max(logits): the
    shift changes nothing mathematically, and exp(z) <= 1 cannot overflow.
    Args:
        logits: (N, V) or (B, T, V) scores.
        targets: (N,) or (B, T) integer ids; -1 marks a position to ignore.
    Returns:
        loss: a 0-d array (0.0 when every target is ignored).
        cache: (probs (N, V), safe targets (N,) with ignored ones set to 0, valid (N,)
            bool, n_valid (0-d, at least 1), the logits' shape) for the backward.
    """
    xp = get_array_module(logits)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    z = z - z.max(axis=-1, keepdims=True)  # (N, V), every row's max is 0
    flat_t = targets.reshape(-1)  # (N,)
    valid = flat_t != IGNORE_INDEX  # (N,)
    safe_t = xp.where(valid, flat_t, 0)  # (N,), any in-range id; masked out below
    n_valid = xp.maximum(valid.sum(), 1)  # a 0-d array: no host sync on the GPU
    e = xp.exp(z)  # (N, V)
    sum_exp = e.sum(axis=-1)  # (N,)
    nll = xp.log(sum_exp) - z[xp.arange(z.shape[0]), safe_t]  # (N,): logsumexp(z) - z[t]
    loss = (nll * valid).sum() / n_valid.astype(nll.dtype)
    probs = e / sum_exp[:, None]  # (N, V) softmax(logits), for the backward
    return loss, (probs, safe_t, valid, n_valid, logits.shape)


def cross_entropy_backward(dloss, cache):
    """dlogits = dloss * (softmax(logits) - onehot(target)) / n_valid, zero on ignored rows.

    From loss_n = logsumexp(z) - z[t]:  d loss_n / d z_j = p_j - [j == t].
    Args: dloss, a scalar or 0-d array. Returns dlogits with the shape of the forward's
    logits.
    """
    probs, safe_t, valid, n_valid, shape = cache
    xp = get_array_module(probs)
    dz = probs.copy()  # (N, V)
    dz[xp.arange(probs.shape[0]), safe_t] -= 1.0  # p - onehot(t): one entry per row
    weight = (valid * (dloss / n_valid)).astype(probs.dtype)  # (N,), 0 on ignored rows
    return (dz * weight[:, None]).reshape(shape)  # (B, T, V) or (N, V)
