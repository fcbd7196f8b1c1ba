"""Sampling from a trained GPT: next-token choice, a key/value cache, and the generate loops.

    ids = generate(model, idx, max_new_tokens=200, temperature=0.8, top_k=40, seed=0)
    texts = generate_text(model, tokenizer, "ROMEO:", 200, temperature=0.8, seed=0)

`sample_next` turns the last position's logits into ids (greedy, temperature, top-k,
nucleus/top-p). A `KVCache` holds the keys and values of the positions already run;
`model.forward(idx_new, kv_cache=cache)` runs only the new positions against it and gives
the logits of `model.forward` on the whole sequence. `generate` is nanoGPT's loop, with or
without the cache.

What this file deliberately is not: a batched server (every row of a batch has the same
length), a beam search, or a second copy of the model: the cached forward is the model's
own forward (one block definition), this file only chooses tokens and keeps the cache.
"""

import contextlib

import numpy as np

from tinygrad_char.backend import get_array_module
from tinygrad_char.runtime import few_rows


# -- choosing the next token ---------------------------------------------------------------
def check_sampling_args(temperature, top_k, top_p):
    """Raise a one-line ValueError for a temperature, top_k or top_p that cannot be used."""
    if not 0 <= temperature < float("inf"):  # also refuses NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), "
                         f"got {temperature}")
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


# -- the key/value cache ---------------------------------------------------------------------
class KVCache:
    """Keys and values of the positions already run, per layer, preallocated; the model's
    forward reads and extends it (`model.forward(idx_new, kv_cache=cache)`).

    k_t[i]: (B, NKV, hs, capacity) keys of layer i, stored transposed so that q @ k^T is
    a matmul of C-contiguous rows (NumPy's stacked matmul skips BLAS on transposed views);
    v[i]: (B, NKV, capacity, hs) values; in the model's array module and dtype. NKV is the
    model's key/value heads (n_head without grouped-query attention).

    `length` is the number of positions run so far (the absolute position of the next
    token); slot j holds absolute position `start + j`. With learned positions the cache
    stops at block_size (capacity block_size, start 0). With sinusoidal or rope positions
    it slides: a query sees the block_size most recent positions (itself included), so
    only the last block_size - 1 keys before a chunk are needed; when a chunk would run
    past the end of the buffer (capacity 2 block_size) those are moved to its front, an
    amortised copy of about one window every block_size tokens. `reset` empties the cache
    without freeing it.
    """

    def __init__(self, model, batch_size):
        cfg = model.config
        self.slides = cfg.pos_encoding != "learned"
        self.window = cfg.block_size
        capacity = 2 * cfg.block_size if self.slides else cfg.block_size
        shape = (batch_size, cfg.kv_heads, capacity, cfg.n_embd // cfg.n_head)
        shape_t = shape[:2] + (shape[3], shape[2])
        self.k_t = [model.xp.zeros(shape_t, dtype=model.dtype) for _ in range(cfg.n_layer)]
        self.v = [model.xp.zeros(shape, dtype=model.dtype) for _ in range(cfg.n_layer)]
        self.batch_size = batch_size
        self.block_size = cfg.block_size
        self.capacity = capacity
        self.length = 0
        self.start = 0

    def reset(self):
        self.length = 0
        self.start = 0

    def _oldest_needed(self):
        """The absolute position of the oldest key the next chunk's queries can see."""
        return max(0, self.length - self.window + 1)

    def reserve(self, batch_size, n_new):
        """Check that n_new positions of this batch size fit, and make room for them."""
        if batch_size != self.batch_size:
            raise ValueError(f"idx has batch {batch_size}, but the cache was made for batch "
                             f"{self.batch_size}")
        if not self.slides and self.length + n_new > self.block_size:
            raise ValueError(f"cache length {self.length} + {n_new} new positions exceeds "
                             f"block_size {self.block_size}; reset the cache and prefill "
                             f"the last {self.block_size} tokens")
        if n_new > self.window:
            raise ValueError(f"{n_new} new positions in one call exceed block_size "
                             f"{self.window}; feed them in chunks of at most {self.window}")
        if self.length + n_new - self.start > self.capacity:  # slide: keep what is visible
            lo = self._oldest_needed()
            keep = slice(lo - self.start, self.length - self.start)
            for k_t, v in zip(self.k_t, self.v):
                n = keep.stop - keep.start
                k_t[:, :, :, :n] = k_t[:, :, :, keep].copy()  # copy: the ranges overlap
                v[:, :, :n] = v[:, :, keep].copy()
            self.start = lo

    def append(self, layer, k, v):
        """Store the new positions' keys and values of `layer` (k, v: (B, NKV, Tn, hs)).

        Returns (k_t, v, k_start): views of every key and value the new queries may see,
        (B, NKV, hs, Tk) and (B, NKV, Tk, hs), and the absolute position of the first."""
        lo, stop = self._oldest_needed() - self.start, self.length + k.shape[2] - self.start
        self.k_t[layer][:, :, :, self.length - self.start:stop] = k.transpose(0, 1, 3, 2)
        self.v[layer][:, :, self.length - self.start:stop] = v
        return (self.k_t[layer][:, :, :, lo:stop], self.v[layer][:, :, lo:stop],
                self.start + lo)

    def advance(self, n_new):
        """After every layer has appended: the n_new positions are now cached."""
        self.length += n_new


# -- the generate loops ---------------------------------------------------------------------
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None,
             seed=None, use_cache=True, on_token=None, banned_ids=None):
    """Extend each row of idx by max_new_tokens sampled tokens (nanoGPT's `generate`).

    use_cache=False runs model.forward on the last block_size tokens every step (nanoGPT:
    the context is cropped): O(block_size) positions per step.

    use_cache=True with learned positions prefills a KVCache with the (cropped) prompt,
    then runs one position per step while the sequence fits in block_size: the same
    tokens as use_cache=False. Past the window the cropped context slides by one token
    per step, which moves every kept token to a new absolute position and changes all of
    its keys and values: to stay exact the cache is rebuilt every step by a prefill of the
    last block_size tokens, as slow as no cache.

    use_cache=True with sinusoidal or rope positions never rebuilds: the whole prompt is
    prefilled at its absolute positions (in chunks of block_size), then each step runs
    one position against a sliding window of the last block_size cached keys and values
    (KVCache), at cache speed however long the text. This is sliding-window attention:
    each position sees the block_size most recent ones, itself included, exactly what
    `model.forward` computes on the whole sequence (the reference); within block_size it
    equals use_cache=False, past it the two differ (cropping forgets what the window
    still carries through the layers). With rope the cached keys were rotated at their
    absolute positions, which is consistent since scores depend only on t - s.

    In float32 a near-tie between two logits could break differently between paths whose
    logits agree only to rounding.

    Args:
        model: a GPT; put in eval mode for the call, its previous mode restored after.
        idx: (B, T0) integer ids, T0 >= 1, NumPy or the model's module (copied to it).
        max_new_tokens: number of tokens to append (>= 0).
        temperature, top_k, top_p: as `sample_next`.
        rng: a Generator of the model's array module; when None, one seeded with `seed`.
        on_token: called as on_token(ids) with the (B,) ids after each new token.
        banned_ids: ids never generated (their logits are set to -inf before sampling),
            e.g. the tokenizer's reserved unknown id; None: none.
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
    banned = None if not banned_ids else xp.asarray(list(banned_ids), dtype=xp.int64)

    was_training = model.training
    model.eval()
    # a few rows a step: BLAS's threads for the small matmuls, the CPU kernels serial
    few = few_rows() if xp is np else contextlib.nullcontext()
    try:
        with few:
            for n in range(T0, T0 + max_new_tokens):  # n: index of the token to sample
                window_start = max(0, n - block_size)
                if not use_cache:
                    logits, _ = model.forward(out[:, window_start:n])  # (B, Tw, V)
                elif cache.length == 0 and cache.slides:
                    # first step of a sliding cache: the whole prompt, in block_size chunks
                    for c in range(0, n, block_size):
                        logits, _ = model.forward(out[:, c:min(c + block_size, n)],
                                                  kv_cache=cache)
                elif cache.length == 0 or (window_start != cache_offset and not cache.slides):
                    # first step, or the learned positions' window slid: rebuild from it
                    cache.reset()
                    cache_offset = window_start
                    logits, _ = model.forward(out[:, window_start:n],
                                              kv_cache=cache)  # (B, Tw, V)
                else:
                    # the cache holds everything before n - 1: feed only last step's token
                    logits, _ = model.forward(out[:, n - 1:n], kv_cache=cache)  # (B, 1, V)
                last = logits[:, -1, :]  # (B, V)
                if banned is not None:
                    last = last.copy()
                    last[:, banned] = -xp.inf
                next_ids = sample_next(last, rng, temperature, top_k, top_p)  # (B,)
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
        tokenizer: a CharTokenizer (`encode(text, errors="raise")`, `decode(ids)`); its
            reserved unknown id, if any, is never generated.
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

    banned = [tokenizer.unk_id] if tokenizer.unk_id is not None else None  # never <unk>
    out = generate(model, idx, max_new_tokens, temperature, top_k, top_p, seed=seed,
                   use_cache=use_cache, on_token=on_token, banned_ids=banned)
    new_ids = model.backend.to_numpy(out)[:, idx.shape[1]:]  # (num_samples, max_new_tokens)
    return [tokenizer.decode([int(i) for i in row]) for row in new_ids]
