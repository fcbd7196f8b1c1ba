"""Choosing the next token from the last position's logits: the one op of generation that
is not part of the model (no backward: a choice is not differentiable). The generate loops,
the argument checks and the random draws are in inference/sampling.py (`sample_next`)."""

from tinygrad_char.backend import get_array_module


def sample_from_uniforms(logits, uniforms, temperature, top_k, top_p):
    """One token id per row, given one uniform draw per row:

        p = softmax(logits / temperature), in most-likely-first order (a stable sort, so
            tied logits keep id order on NumPy and CuPy alike), restricted to
        top_k: the k most likely tokens (k > V means all of them);
        top_p: the smallest set of most likely tokens whose probability (after top_k,
               renormalised) reaches top_p; the most likely token is always kept;
    renormalised, then sampled by inverse CDF: with u = uniform * sum(p), the first token,
    in that order, whose cumulative probability exceeds u. Each row's id depends on its own
    logits and draw alone, so rows of different sequences, each with a draw from its own
    generator, can be sampled in one call.

    Args:
        logits: (B, V) float array (NumPy or CuPy) of the last position.
        uniforms: (B, 1) float64 draws in [0, 1), of the same module.
        temperature: > 0 (greedy, 0, draws nothing: `sample_next`).
        top_k: int >= 1 or None.  top_p: float in (0, 1] or None.
    Returns:
        ids: (B,) int64 array of the same module.
    """
    xp = get_array_module(logits)
    B, V = logits.shape
    scaled = logits.astype(xp.float64) / temperature  # (B, V), float64: cumsum over V
    order = xp.argsort(-scaled, axis=-1, kind="stable")  # (B, V) ids, most likely first
    rows = xp.arange(B)[:, None]  # (B, 1)
    sorted_logits = scaled[rows, order]  # (B, V), descending
    probs = xp.exp(sorted_logits - sorted_logits[:, :1])  # (B, V), the row max is column 0
    if top_k is not None:
        probs[:, min(top_k, V):] = 0.0
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:  # (1.0 keeps all, even where rounding says 1)
        mass_before = xp.cumsum(probs, axis=-1) - probs  # (B, V) of the more likely tokens
        probs = xp.where(mass_before < top_p, probs, 0.0)  # column 0 has 0 before: kept
    cdf = xp.cumsum(probs, axis=-1)  # (B, V), unnormalised: the last column is the total
    u = uniforms * cdf[:, -1:]  # (B, 1), in [0, total)
    choice = (cdf <= u).sum(axis=-1)  # (B,) first column whose cdf exceeds u
    # rounding can put u at the total; the kept tokens are a prefix, so clamp to its end
    n_kept = (probs > 0).sum(axis=-1)  # (B,)
    choice = xp.minimum(choice, n_kept - 1)
    return order[rows[:, 0], choice]  # (B,)
