"""Sampling from a trained GPT: next-token choice, a key/value cache, and the generate loops.

    ids = generate(model, idx, max_new_tokens=200, temperature=0.8, top_k=40, seed=0)
    texts = generate_text(model, tokenizer, "ROMEO:", 200, temperature=0.8, seed=0)

`sample_next` turns the last position's logits into ids (greedy, temperature, top-k,
nucleus/top-p). A `KVCache` holds the keys and values of the positions already run;
`model.forward(idx_new, kv_cache=cache)` runs only the new positions against it and gives
the logits of `model.forward` on the whole sequence. `generate` is nanoGPT's loop, with or
without the cache.

The cache's rows may sit at different positions (`KVCache.rows`, `lengths`): that is what
the serving engine (engine.py) batches over; `generate` itself runs rows of one length.

What this file deliberately is not: a server (engine.py, serve.py), a beam search, or a
second copy of the model: the cached forward is the model's own forward (one block
definition), this file only chooses tokens and keeps the cache.
"""

import contextlib

import numpy as np

from tinygrad_char.ops.sampling import sample_from_uniforms
from tinygrad_char.runtime import few_rows
from tinygrad_char.training.cli import MAX_SEED, range_error


# -- choosing the next token ---------------------------------------------------------------
MAX_TEMPERATURE = 100.0  # far past uniform sampling already; bounds a meaningless input

# The sampling arguments' bounds, written once: check_sampling_args reads them, the
# server's request schema publishes them (serve.py), the command line parses with them
# (examples/generate.py). low_open: the low bound itself is refused.
SAMPLING_BOUNDS = {
    "temperature": dict(low=0.0, high=MAX_TEMPERATURE),  # 0 is greedy
    "top_k": dict(low=1, high=None),  # None (no limit) is allowed too
    "top_p": dict(low=0.0, high=1.0, low_open=True),  # None (no limit) is allowed too
    "seed": dict(low=0, high=MAX_SEED),  # fits a signed 64-bit integer, every client sends it
}


def check_sampling_args(temperature, top_k, top_p, seed=None):
    """Raise a one-line ValueError for a temperature, top_k, top_p or seed outside
    SAMPLING_BOUNDS; None is "no limit" for top_k and top_p, "draw one" for seed."""
    for name, value, hint in (("temperature", temperature, " (0 means greedy)"),
                              ("top_k", top_k, " (or None for no limit)"),
                              ("top_p", top_p, " (or None for no limit)"),
                              ("seed", seed, " (or None to draw one)")):
        if value is None and name != "temperature":
            continue
        problem = range_error(value, **SAMPLING_BOUNDS[name])
        if problem:
            raise ValueError(f"{name} {problem}, got {value}{hint}")


def prompt_ids(tokenizer, prompt):
    """The ids generation starts from: the prompt's (ValueError naming characters outside
    the vocabulary), or for an empty prompt "\\n" when it is in the vocabulary, else id 0."""
    if prompt:
        return tokenizer.encode(prompt, errors="raise", what="prompt")
    try:
        return tokenizer.encode("\n", errors="raise")
    except ValueError:  # no newline in this vocabulary
        return [0]


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None,
                sampler=sample_from_uniforms):
    """Draw one token id per row from the last position's logits: one uniform draw per row
    from rng, then `sampler(logits, draws, temperature, top_k, top_p)`, the op of
    ops/sampling.py (softmax at a temperature, top-k, top-p, inverse CDF in most-likely-
    first order; its docstring has the math) or a model's implementation of it
    (`model.ops.sample_from_uniforms`: the numba kernel on the CPU). temperature == 0 is
    greedy: argmax(logits), no draw.

    Args:
        logits: (B, V) float array (NumPy or CuPy) of the last position.
        rng: a seeded Generator of the same array module (`xp.random.default_rng(seed)`).
        temperature: >= 0; < 1 sharpens, > 1 flattens.
        top_k: int >= 1 or None.  top_p: float in (0, 1] or None.
    Returns:
        ids: (B,) int64 array of the same module.
    """
    check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(axis=-1)
    return sampler(logits, rng.random((logits.shape[0], 1)), temperature, top_k, top_p)


# -- the key/value cache ---------------------------------------------------------------------
class KVCache:
    """Keys and values of the positions already run, per layer and per row (slot),
    preallocated; the model's forward reads and extends it
    (`model.forward(idx_new, kv_cache=cache)`).

    k_t[i]: (B, NKV, hs, capacity) keys of layer i, stored transposed so that q @ k^T is
    a matmul of C-contiguous rows (NumPy's stacked matmul skips BLAS on transposed views);
    v[i]: (B, NKV, capacity, hs) values; in the model's array module and dtype. NKV is the
    model's key/value heads (n_head without grouped-query attention).

    Every row has its own length (`lengths`, (B,) int64 on the host): the number of
    positions it has run, so the absolute position of its next token. Rows at different
    lengths step together (a server's continuous batching): the forward gathers each row's
    positions, and attention masks each row to its own keys. Absolute position p of a row
    lives in column p % capacity (a ring). With learned positions a row stops at
    block_size (capacity block_size, no wrap). With sinusoidal or rope positions it
    slides: a query sees the block_size most recent positions (itself included), and a
    chunk holds at most block_size new ones, so a ring of 2 block_size columns always
    holds every key a chunk's queries can see.

    Attention always runs over the whole ring (masked columns weigh exactly 0): the same
    shapes per row whatever the other rows hold, so a row's numbers do not depend on
    what else is in the batch (sampled text with a fixed seed equals the text it gets
    alone), at the cost of attending over `capacity` columns early in a sequence.

    `rows(lo, hi)` is a view of rows lo .. hi - 1 sharing the buffers (a server runs a
    forward on the active rows, or prefills one row); `reset()` empties the view's rows
    without freeing them; `move(src, dst)` copies a row (compaction). With
    keep_attention=True each forward leaves its attention probabilities in `attention[i]`,
    (B, NH, T, capacity) per layer (column j: the key at absolute position
    `key_positions[b, j]`).
    """

    def __init__(self, model, batch_size, keep_attention=False):
        cfg = model.config
        self.xp = model.xp
        self.slides = cfg.pos_encoding != "learned"
        self.window = cfg.block_size
        capacity = 2 * cfg.block_size if self.slides else cfg.block_size
        shape = (batch_size, cfg.kv_heads, capacity, cfg.n_embd // cfg.n_head)
        shape_t = shape[:2] + (shape[3], shape[2])
        self.k_t = [model.xp.zeros(shape_t, dtype=model.dtype) for _ in range(cfg.n_layer)]
        self.v = [model.xp.zeros(shape, dtype=model.dtype) for _ in range(cfg.n_layer)]
        self.capacity = capacity
        self.block_size = cfg.block_size
        self.lengths = np.zeros(batch_size, dtype=np.int64)  # (B,) positions run per row
        self.keep_attention = keep_attention
        self.attention = [None] * cfg.n_layer
        self.key_positions = None
        self.lo, self.hi = 0, batch_size  # the rows this object reads and writes
        self._planned = None  # reserve's positions and columns for the forward under way

    @property
    def batch_size(self):
        return self.hi - self.lo

    def rows(self, lo, hi):
        """A view of rows lo .. hi - 1: same buffers and lengths, a forward on those rows."""
        if not 0 <= lo < hi <= self.lengths.size:
            raise ValueError(f"rows {lo}..{hi - 1} are not rows of a cache of "
                             f"{self.lengths.size}")
        view = object.__new__(KVCache)  # a shallow copy (copy.copy, without its overhead)
        view.__dict__.update(self.__dict__)
        view.lo, view.hi = lo, hi
        view.attention = [None] * len(self.attention)
        view._planned = None
        return view

    @property
    def length(self):
        """The common length of this view's rows (ValueError when they differ)."""
        mine = self.lengths[self.lo:self.hi]
        if (mine != mine[0]).any():
            raise ValueError(f"the rows have different lengths {mine.tolist()}; read "
                             f"`lengths` for each")
        return int(mine[0])

    @property
    def empty(self):
        """True while every row of this view holds no position (before a prefill's first
        append is counted: `advance` runs after every layer)."""
        return not self.lengths[self.lo:self.hi].any()

    def reset(self):
        """Empty this view's rows (their buffers are overwritten as they refill)."""
        self.lengths[self.lo:self.hi] = 0
        self._planned = None

    def move(self, src, dst):
        """Copy row src (keys, values, length) to row dst, of the whole cache."""
        for k_t, v in zip(self.k_t, self.v):
            k_t[dst] = k_t[src]
            v[dst] = v[src]
        self.lengths[dst] = self.lengths[src]

    def reserve(self, batch_size, n_new):
        """Check that n_new positions of this batch size fit in this view's rows, and work
        out their positions and ring columns (the same for every layer)."""
        if batch_size != self.batch_size:
            raise ValueError(f"idx has batch {batch_size}, but the cache was made for batch "
                             f"{self.batch_size}")
        longest = int(self.lengths[self.lo:self.hi].max())
        if not self.slides and longest + n_new > self.block_size:
            raise ValueError(f"cache length {longest} + {n_new} new positions exceeds "
                             f"block_size {self.block_size}; reset the cache and prefill "
                             f"the last {self.block_size} tokens")
        if n_new > self.window:
            raise ValueError(f"{n_new} new positions in one call exceed block_size "
                             f"{self.window}; feed them in chunks of at most {self.window}")
        # what every layer's append and attention use, worked out once per forward
        lengths = self.lengths[self.lo:self.hi]  # (B,)
        pos = lengths[:, None] + np.arange(n_new)  # (B, n_new) absolute positions
        last = pos[:, -1:]  # (B, 1) the newest position of each row
        key_pos = last - (last - np.arange(self.capacity)) % self.capacity  # (B, capacity)
        first_col = int(pos[0, 0]) % self.capacity
        same = (lengths == lengths[0]).all() and first_col + n_new <= self.capacity
        self._planned = (n_new, pos, pos % self.capacity, self.xp.asarray(pos),
                         self.xp.asarray(key_pos), first_col if same else None)

    def positions(self, n_new):
        """(B, n_new) absolute positions of the new tokens of each row (after `reserve`)."""
        if self._planned is None or self._planned[0] != n_new:
            self.reserve(self.batch_size, n_new)
        return self._planned[3]

    def append(self, layer, k, v):
        """Store the new positions' keys and values of `layer` (k, v: (B, NKV, Tn, hs)),
        each row at the columns of its own positions.

        Returns (k_t, v, key_pos): this view's whole ring, (B, NKV, hs, capacity) and
        (B, NKV, capacity, hs), and (B, capacity) the absolute position of each column
        (negative: empty)."""
        xp, Tn = self.xp, k.shape[2]
        if self._planned is None or self._planned[0] != Tn:
            self.reserve(self.batch_size, Tn)
        _, pos, cols, _, key_pos, first_col = self._planned
        k_t, v_all = self.k_t[layer][self.lo:self.hi], self.v[layer][self.lo:self.hi]
        if first_col is not None:  # every row at the same columns, no wrap: slices
            k_t[:, :, :, first_col:first_col + Tn] = k.transpose(0, 1, 3, 2)
            v_all[:, :, first_col:first_col + Tn] = v
        else:  # each row at its own ring columns cols (B, Tn)
            b = xp.asarray(np.arange(self.batch_size)[:, None])  # (B, 1)
            # advanced indices on axes 0 and 3 (or 2) put (B, Tn) first: (B, Tn, NKV, hs)
            k_t[b, :, :, xp.asarray(cols)] = k.transpose(0, 2, 1, 3)
            v_all[b, :, xp.asarray(cols)] = v.transpose(0, 2, 1, 3)
        self.key_positions = key_pos
        return k_t, v_all, key_pos

    def advance(self, n_new):
        """After every layer has appended: the n_new positions are now cached."""
        self.lengths[self.lo:self.hi] += n_new
        self._planned = None


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
    its keys and values: to stay exact each step then runs the last block_size tokens
    whole, as slow as no cache (without the cache: the next step slides again, so their
    keys would never be read).

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
                                                  kv_cache=cache, last_only=True)
                elif cache.length == 0:
                    # first step: the (cropped) prompt into the cache
                    cache_offset = window_start
                    logits, _ = model.forward(out[:, window_start:n], kv_cache=cache,
                                              last_only=True)  # (B, 1, V)
                elif window_start != cache_offset and not cache.slides:
                    # learned positions, the window slid: run it whole, without the cache
                    logits, _ = model.forward(out[:, window_start:n],
                                              last_only=True)  # (B, 1, V)
                else:
                    # the cache holds everything before n - 1: feed only last step's token
                    logits, _ = model.forward(out[:, n - 1:n], kv_cache=cache)  # (B, 1, V)
                last = logits[:, -1, :]  # (B, V)
                if banned is not None:
                    last = last.copy()
                    last[:, banned] = -xp.inf
                next_ids = sample_next(last, rng, temperature, top_k, top_p,
                                       sampler=model.ops.sample_from_uniforms)  # (B,)
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
    ids = prompt_ids(tokenizer, prompt)
    idx = np.tile(np.asarray(ids, dtype=np.int64)[None, :], (num_samples, 1))

    def stream_first_row(ids):
        stream(tokenizer.decode([int(ids[0])]))

    on_token = stream_first_row if stream is not None else None

    banned = [tokenizer.unk_id] if tokenizer.unk_id is not None else None  # never <unk>
    out = generate(model, idx, max_new_tokens, temperature, top_k, top_p, seed=seed,
                   use_cache=use_cache, on_token=on_token, banned_ids=banned)
    new_ids = model.backend.to_numpy(out)[:, idx.shape[1]:]  # (num_samples, max_new_tokens)
    return [tokenizer.decode([int(i) for i in row]) for row in new_ids]
