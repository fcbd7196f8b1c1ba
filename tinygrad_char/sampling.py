"""Sampling from a trained GPT: next-token choice, a key/value cache, and the generate loops.

    ids = generate(model, idx, max_new_tokens=200, temperature=0.8, top_k=40, seed=0)
    texts = generate_text(model, tokenizer, "ROMEO:", 200, temperature=0.8, seed=0)

`sample_next` turns the last position's logits into ids (greedy, temperature, top-k,
nucleus/top-p). `forward_cached` runs the model on only the new positions, reading the
keys and values of earlier positions from a `KVCache`, and gives the same logits as
`model.forward` on the whole sequence. `generate` is nanoGPT's loop, with or without the
cache; the two give identical greedy tokens.

What this file deliberately is not: a batched server (every row of a batch has the same
length), a beam search, or a second copy of the model. The cached forward is written
with the model's own op forwards (`layernorm_forward`, `linear_forward`, the
activations); only the attention over cached keys is new here. It is inference only:
no backward, no dropout (always eval semantics).
"""

import math

import numpy as np

from .activations import gelu_forward, relu_forward
from .attention import causal_mask_bias
from .backend import get_array_module
from .embedding import embedding_forward
from .layernorm import layernorm_forward
from .linear import linear_forward


# -- choosing the next token ---------------------------------------------------------------
def check_sampling_args(temperature, top_k, top_p):
    """Raise a one-line ValueError for a temperature, top_k or top_p that cannot be used."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for no limit), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p}")


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Draw one token id per row from the last position's logits.

    p = softmax(logits / temperature), restricted to
        top_k: the k most likely tokens (k > V means all of them);
        top_p: the smallest set of most likely tokens whose probability (after top_k,
               renormalised) reaches top_p; the most likely token is always kept;
    renormalised, then sampled by inverse CDF: with u ~ U[0, 1) * sum(p), the first token,
    in most-likely-first order, whose cumulative probability exceeds u.
    temperature == 0 is greedy: argmax(logits), no draw.

    Both cuts act on the tokens sorted by probability, so each keeps a prefix of that
    order: exactly k tokens for top_k (ties at the k-th logit are broken by the sort).

    Args:
        logits: (B, V) float array (NumPy or CuPy) of the last position.
        rng: a seeded Generator of the same array module (`xp.random.default_rng(seed)`).
        temperature: >= 0; < 1 sharpens, > 1 flattens.
        top_k: int >= 1 or None.  top_p: float in (0, 1] or None.
    Returns:
        ids: (B,) int64 array of the same module.
    """
    check_sampling_args(temperature, top_k, top_p)
    xp = get_array_module(logits)
    if temperature == 0:
        return logits.argmax(axis=-1)
    B, V = logits.shape
    scaled = logits.astype(xp.float64) / temperature  # (B, V), float64: cumsum over V
    order = xp.argsort(-scaled, axis=-1)  # (B, V) token ids, most likely first
    sorted_logits = xp.take_along_axis(scaled, order, axis=-1)  # (B, V), descending
    probs = xp.exp(sorted_logits - sorted_logits[:, :1])  # (B, V), the row max is column 0
    if top_k is not None:
        probs[:, min(top_k, V):] = 0.0
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:  # (1.0 keeps all, even where rounding says 1)
        mass_before = xp.cumsum(probs, axis=-1) - probs  # (B, V) of the more likely tokens
        probs = xp.where(mass_before < top_p, probs, 0.0)  # column 0 has 0 before: kept
    cdf = xp.cumsum(probs, axis=-1)  # (B, V), unnormalised: the last column is the total
    u = rng.random((B, 1)) * cdf[:, -1:]  # (B, 1), in [0, total)
    choice = (cdf <= u).sum(axis=-1)  # (B,) first column whose cdf exceeds u
    # rounding can put u at the total; the kept tokens are a prefix, so clamp to its end
    n_kept = (probs > 0).sum(axis=-1)  # (B,)
    choice = xp.minimum(choice, n_kept - 1)
    return xp.take_along_axis(order, choice[:, None], axis=-1)[:, 0]  # (B,)


# -- the key/value cache and the cached forward --------------------------------------------
class KVCache:
    """Keys and values of the positions already run, per layer, preallocated.

    k_t[i]: (B, NH, hs, block_size) keys of layer i, stored transposed so that q @ k^T is
    a matmul of C-contiguous rows (NumPy's stacked matmul skips BLAS on transposed views);
    v[i]: (B, NH, block_size, hs) values; in the model's array module and dtype;
    positions [0, length) are filled. `forward_cached` appends to them; `reset` empties
    the cache without freeing it (the positions are overwritten by the next prefill).
    """

    def __init__(self, model, batch_size):
        cfg = model.config
        shape = (batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        shape_t = shape[:2] + (shape[3], shape[2])
        self.k_t = [model.xp.zeros(shape_t, dtype=model.dtype) for _ in range(cfg.n_layer)]
        self.v = [model.xp.zeros(shape, dtype=model.dtype) for _ in range(cfg.n_layer)]
        self.batch_size = batch_size
        self.block_size = cfg.block_size
        self.length = 0

    def reset(self):
        self.length = 0


def cached_attention_forward(q, k_t, v):
    """Attention of Tq new queries over Tk >= Tq keys, the last Tq of which are the new ones.

        y = softmax(q k^T / sqrt(hs) + mask) v
    Query i is at absolute position P + i, P = Tk - Tq (the cached length), and sees the
    keys j <= P + i: every cached position, and the new chunk causally. The mask is
    therefore the last Tq rows of the (Tk, Tk) causal mask. With P = 0 this is exactly
    `attention_forward` (without dropout); forward only, nothing is saved.

    Args:
        q: (B, NH, Tq, hs) queries of the new positions.
        k_t: (B, NH, hs, Tk) keys of all positions so far (cached + new), transposed.
        v: (B, NH, Tk, hs) their values.
    Returns:
        y: (B, NH, Tq, hs)
    """
    xp = get_array_module(q)
    Tq, Tk, hs = q.shape[2], k_t.shape[3], q.shape[3]
    att = q @ k_t  # (B, NH, Tq, Tk)
    att *= 1.0 / math.sqrt(hs)
    att += causal_mask_bias(Tk, xp, att.dtype)[Tk - Tq:]  # (Tq, Tk): the last Tq rows
    # stable softmax over the keys, as attention_forward: subtract the row max (finite,
    # since each query sees at least its own key), exponentiate, normalise
    att -= att.max(axis=-1, keepdims=True)
    xp.exp(att, out=att)
    att /= att.sum(axis=-1, keepdims=True)
    return att @ v  # (B, NH, Tq, hs)


def _cached_attn_branch(model, x, h, layer, cache):
    """c_attn -> append k, v to the cache -> cached attention -> c_proj. x (B, Tn, C)."""
    p, NH = model.params, model.config.n_head
    B, Tn, C = x.shape
    start, stop = cache.length, cache.length + Tn
    qkv, _ = linear_forward(x, p[h + "attn.c_attn.weight"], p.get(h + "attn.c_attn.bias"))
    heads = qkv.reshape(B, Tn, 3, NH, C // NH).transpose(2, 0, 3, 1, 4)  # (3, B, NH, Tn, hs)
    cache.k_t[layer][:, :, :, start:stop] = heads[1].transpose(0, 1, 3, 2)
    cache.v[layer][:, :, start:stop] = heads[2]
    y = cached_attention_forward(heads[0], cache.k_t[layer][:, :, :, :stop],
                                 cache.v[layer][:, :, :stop])  # (B, NH, Tn, hs)
    y = y.transpose(0, 2, 1, 3).reshape(B, Tn, C)  # (B, Tn, C)
    out, _ = linear_forward(y, p[h + "attn.c_proj.weight"], p.get(h + "attn.c_proj.bias"))
    return out


def _mlp_branch(model, x, h):
    """c_fc -> activation -> c_proj. x (B, Tn, C)."""
    p = model.params
    hid, _ = linear_forward(x, p[h + "mlp.c_fc.weight"], p.get(h + "mlp.c_fc.bias"))
    act_forward = gelu_forward if model.config.activation == "gelu" else relu_forward
    hid, _ = act_forward(hid)  # (B, Tn, F)
    out, _ = linear_forward(hid, p[h + "mlp.c_proj.weight"], p.get(h + "mlp.c_proj.bias"))
    return out


def _ln(model, x, name):
    """LayerNorm `name` of the model applied to x (..., C); the forward's cache is dropped."""
    y, _ = layernorm_forward(x, model.params[name + ".weight"], model.params.get(name + ".bias"))
    return y


def forward_cached(model, idx_new, cache):
    """The model's forward on only the new positions, given the cache of the earlier ones.

    The new tokens sit at positions cache.length .. cache.length + Tn - 1; their keys and
    values are appended to the cache (cache.length grows by Tn). Same straight-line code as
    `GPT.forward` (pre- or post-norm, learned or sinusoidal positions, tied or separate
    head) in eval mode: no dropout, whatever model.training says. Logits equal those of
    `model.forward` on the whole sequence up to float rounding.

    Args:
        model: a GPT.
        idx_new: (B, Tn) integer ids of the model's array module; cache.length + Tn must
            not exceed block_size.
        cache: a KVCache for this model and batch size B.
    Returns:
        logits: (B, Tn, V) of the new positions.
    """
    cfg, p = model.config, model.params
    B, Tn = idx_new.shape
    start, stop = cache.length, cache.length + Tn
    if B != cache.batch_size:
        raise ValueError(f"idx_new has batch {B}, but the cache was made for batch "
                         f"{cache.batch_size}")
    if stop > cfg.block_size:
        raise ValueError(f"cache length {start} + {Tn} new positions exceeds block_size "
                         f"{cfg.block_size}; reset the cache and prefill the last "
                         f"{cfg.block_size} tokens")
    tok, _ = embedding_forward(idx_new, p["transformer.wte.weight"])  # (B, Tn, C)
    if cfg.pos_encoding == "learned":
        pos = p["transformer.wpe.weight"][start:stop]  # (Tn, C): rows of the new positions
    else:
        pos = model._pos_table[start:stop]  # (Tn, C), fixed
    x = tok + pos  # (B, Tn, C)

    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        if cfg.norm == "pre":  # x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))
            x = x + _cached_attn_branch(model, _ln(model, x, h + "ln_1"), h, i, cache)
            x = x + _mlp_branch(model, _ln(model, x, h + "ln_2"), h)
        else:  # x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))
            x = _ln(model, x + _cached_attn_branch(model, x, h, i, cache), h + "ln_1")
            x = _ln(model, x + _mlp_branch(model, x, h), h + "ln_2")
    cache.length = stop

    if cfg.norm == "pre":
        x = _ln(model, x, "transformer.ln_f")
    head = p["transformer.wte.weight"] if cfg.tie_weights else p["lm_head.weight"]
    logits, _ = linear_forward(x, head)  # (B, Tn, V)
    return logits


# -- the generate loops ---------------------------------------------------------------------
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None,
             seed=None, use_cache=True, on_token=None):
    """Extend each row of idx by max_new_tokens sampled tokens (nanoGPT's `generate`).

    Each step conditions on the last block_size tokens at most (the model has absolute
    positions 0 .. block_size - 1) and samples with `sample_next`.

    use_cache=False runs model.forward on the cropped context every step: O(T) positions
    per step.
    use_cache=True prefills a KVCache with the (cropped) prompt, then runs one position
    per step while the sequence fits in block_size. Once it passes the window, the context
    slides by one token per step, which moves every kept token to a new absolute position
    and so changes all of its keys and values in every layer: nothing cached stays valid.
    To stay exact, the cache is then rebuilt every step by a prefill of the last
    block_size tokens, so past the window a step costs as much as the no-cache path (a
    full block_size forward); the cache only saves work for the first block_size tokens.
    Greedy tokens of the two paths are identical (their logits agree to float rounding;
    in float32 a near-tie between two logits could in principle break differently).

    Args:
        model: a GPT; put in eval mode for the call, its previous mode restored after.
        idx: (B, T0) integer ids, T0 >= 1, NumPy or the model's module (copied to it).
        max_new_tokens: number of tokens to append (>= 0).
        temperature, top_k, top_p: as `sample_next`.
        rng: a Generator of the model's array module; when None, one seeded with `seed`.
        on_token: called as on_token(ids) with the (B,) ids after each new token.
    Returns:
        (B, T0 + max_new_tokens) int64 array of the model's module: the prompt, then the
        new tokens.
    """
    check_sampling_args(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    xp, block_size = model.xp, model.config.block_size
    idx = xp.asarray(idx)
    if idx.ndim != 2 or idx.shape[1] < 1 or idx.dtype.kind not in "iu":
        raise ValueError(f"idx must be a (B, T0) integer array with T0 >= 1, got shape "
                         f"{tuple(idx.shape)} and dtype {idx.dtype}")
    if int(idx.min()) < 0 or int(idx.max()) >= model.config.vocab_size:
        raise ValueError(f"token ids must be in [0, {model.config.vocab_size}), got "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    if rng is None:
        rng = xp.random.default_rng(seed)
    B, T0 = idx.shape
    out = xp.empty((B, T0 + max_new_tokens), dtype=xp.int64)  # (B, T0 + max_new_tokens)
    out[:, :T0] = idx
    cache = KVCache(model, B) if use_cache else None
    cache_offset = 0  # index in `out` of the token at cache position 0

    was_training = model.training
    model.eval()
    try:
        for n in range(T0, T0 + max_new_tokens):  # n: index of the token to sample
            window_start = max(0, n - block_size)
            if not use_cache:
                logits, _ = model.forward(out[:, window_start:n])  # (B, Tw, V)
            elif cache.length == 0 or window_start != cache_offset:
                # first step, or the window slid: rebuild from the whole window
                cache.reset()
                cache_offset = window_start
                logits = forward_cached(model, out[:, window_start:n], cache)  # (B, Tw, V)
            else:
                # the cache holds out[:, cache_offset:n-1]: feed only last step's token
                logits = forward_cached(model, out[:, n - 1:n], cache)  # (B, 1, V)
            next_ids = sample_next(logits[:, -1, :], rng, temperature, top_k, top_p)  # (B,)
            out[:, n] = next_ids
            if on_token is not None:
                on_token(next_ids)
    finally:
        model.training = was_training
    return out


def generate_text(model, tokenizer, prompt, max_new_tokens, temperature=1.0, top_k=None,
                  top_p=None, seed=None, num_samples=1, use_cache=True, stream=None):
    """Continue `prompt` num_samples times; return the continuations (prompt not included).

    Args:
        tokenizer: a CharTokenizer (`encode(text, errors="raise")`, `decode(ids)`).
        prompt: str; characters outside the vocabulary raise ValueError naming them. An
            empty prompt starts from "\\n" when it is in the vocabulary, else from id 0.
        stream: optional callable receiving the text of sample 0 as it is produced, one
            character (one token) per call.
        The rest as `generate`.
    Returns:
        list of num_samples strings, each max_new_tokens characters.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if prompt:
        prompt_ids = tokenizer.encode(prompt, errors="raise", what="prompt")
    else:
        try:
            prompt_ids = tokenizer.encode("\n", errors="raise")
        except ValueError:  # no newline in this vocabulary
            prompt_ids = [0]
    idx = np.tile(np.asarray(prompt_ids, dtype=np.int64)[None, :], (num_samples, 1))

    def stream_first_row(ids):
        stream(tokenizer.decode([int(ids[0])]))

    on_token = stream_first_row if stream is not None else None

    out = generate(model, idx, max_new_tokens, temperature, top_k, top_p, seed=seed,
                   use_cache=use_cache, on_token=on_token)
    new_ids = model.backend.to_numpy(out)[:, idx.shape[1]:]  # (num_samples, max_new_tokens)
    return [tokenizer.decode([int(i) for i in row]) for row in new_ids]
