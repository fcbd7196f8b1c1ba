"""Sampling: the cached forward against model.forward for every architecture variant,
cached vs uncached generation (greedy and seeded sampling, past the window, batched),
prompt cropping, temperature / top-k / top-p, seeding, argument checks, mode restoring,
generate_text and streaming."""

import itertools

import numpy as np
import pytest

from tinygrad_char import GPT, GPTConfig
from tinygrad_char.ops.attention import cached_attention_forward
from tinygrad_char.inference.sampling import KVCache, generate, generate_text, sample_next
from tinygrad_char.training.tokenizer import CharTokenizer

from conftest import TOL, gpu, to_np

VARIANTS = list(itertools.product([True, False], ["learned", "sinusoidal"], ["pre", "post"],
                                  ["gelu", "relu"], [True, False]))
BLOCK = 16


def random_model(tie=True, pos="learned", norm="pre", act="gelu", bias=True, dtype="float64",
                 backend="numpy", seed=0, **kw):
    """A small GPT with large random weights and nonzero biases, so that every parameter
    matters and greedy outputs are varied (the GPT-2 init gives near-uniform logits)."""
    base = dict(vocab_size=13, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16, mlp_ratio=2)
    base.update(kw)
    cfg = GPTConfig(**base, tie_weights=tie, pos_encoding=pos, norm=norm, activation=act,
                    bias=bias)
    model = GPT(cfg, backend=backend, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.params.items():
        value = rng.normal(0.0, 0.5, size=p.shape)
        if ".ln_" in name and name.endswith("weight"):
            value += 1.0  # gains around 1
        model.params[name] = model.xp.asarray(value, dtype=dtype)
    return model


def prompt_ids(B, T, V=13, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(B, T))


def forward_cached(model, idx_new, cache):
    """The logits of the model's own forward on only the new positions, given the cache."""
    return model.forward(idx_new, kv_cache=cache)[0]


# -- forward_cached == model.forward ---------------------------------------------------------
@pytest.mark.parametrize("tie,pos,norm,act,bias", VARIANTS)
def test_forward_cached_matches_forward_prefill_then_steps(tie, pos, norm, act, bias):
    model = random_model(tie, pos, norm, act, bias).eval()
    idx = prompt_ids(3, BLOCK)
    expected, _ = model.forward(idx)  # (B, T, V)
    cache = KVCache(model, 3)
    chunks = [forward_cached(model, idx[:, :5], cache)]  # prefill 5 positions
    chunks += [forward_cached(model, idx[:, t:t + 1], cache) for t in range(5, BLOCK)]
    got = np.concatenate(chunks, axis=1)
    err = np.abs(got - expected).max() / np.abs(expected).max()
    assert cache.length == BLOCK
    assert err < TOL["float64"], f"forward_cached vs forward ({tie, pos, norm, act, bias}): {err}"


@pytest.mark.parametrize("pos,norm,kw", [
    ("learned", "pre", {}), ("learned", "post", dict(tie=False)),
    ("sinusoidal", "pre", {}), ("rope", "pre", dict(normalization="rmsnorm", n_kv_head=1))])
def test_last_only_gives_the_last_column_and_caches_every_position(pos, norm, kw):
    """last_only=True: logits (B, 1, V) equal the full forward's last column, from an empty
    cache and after a cached prefix; the keys and values of every position still enter the
    cache (the next steps equal the full forward)."""
    model = random_model(pos=pos, norm=norm, **kw).eval()
    idx = prompt_ids(3, BLOCK, seed=2)
    expected, _ = model.forward(idx)  # (B, T, V)
    cache = KVCache(model, 3)
    got = [model.forward(idx[:, :6], kv_cache=cache, last_only=True)[0],
           model.forward(idx[:, 6:10], kv_cache=cache, last_only=True)[0]]
    assert [g.shape for g in got] == [(3, 1, 13), (3, 1, 13)]
    got += [forward_cached(model, idx[:, t:t + 1], cache) for t in range(10, BLOCK)]
    want = np.concatenate([expected[:, 5:6], expected[:, 9:10], expected[:, 10:]], axis=1)
    err = np.abs(np.concatenate(got, axis=1) - want).max() / np.abs(want).max()
    assert err < TOL["float64"], f"last_only ({pos}, {norm}): {err}"
    # without a cache (nanoGPT's sampling forward): this forward's own keys; past
    # block_size (sinusoidal, rope) the last query sees the block_size latest, as forward
    longer = prompt_ids(3, BLOCK + 5, seed=3)
    cases = [idx[:, :1], idx[:, :7], idx] + ([] if pos == "learned" else [longer])
    for x in cases:
        full, _ = model.forward(x)
        got, loss = model.train().forward(x, last_only=True)  # eval semantics regardless
        assert model.training and loss is None and got.shape == (3, 1, 13)
        err = np.abs(got - full[:, -1:]).max() / np.abs(full[:, -1:]).max()
        assert err < TOL["float64"], f"last_only, no cache, T={x.shape[1]} ({pos}): {err}"
        with pytest.raises(RuntimeError, match="needs a forward"):
            model.backward()  # nothing was kept for one
        model.eval()
    with pytest.raises(ValueError, match="takes no targets"):
        model.forward(idx, idx, last_only=True)


def test_forward_cached_chunks_of_several_new_positions():
    """A chunk of 4 after a cached prefix: causal within the chunk, sees the whole prefix."""
    model = random_model(pos="sinusoidal", norm="post").eval()
    idx = prompt_ids(2, 11)
    expected, _ = model.forward(idx)
    cache = KVCache(model, 2)
    got = np.concatenate([forward_cached(model, idx[:, :3], cache),
                          forward_cached(model, idx[:, 3:7], cache),
                          forward_cached(model, idx[:, 7:11], cache)], axis=1)
    assert np.abs(got - expected).max() < TOL["float64"]


def test_cached_attention_with_empty_prefix_is_causal_attention():
    """Tq == Tk: the naive per-query loop over the visible keys."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 3, 5, 4)) for _ in range(3))
    y = cached_attention_forward(q, k.transpose(0, 1, 3, 2).copy(), v, 0, 0, window=5)
    for i in range(5):
        scores = q[:, :, i:i + 1] @ k[:, :, :i + 1].transpose(0, 1, 3, 2) / 2.0  # sqrt(hs=4)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        assert np.abs(y[:, :, i:i + 1] - p @ v[:, :, :i + 1]).max() < 1e-12, f"query {i}"


def test_forward_cached_refuses_to_pass_the_window():
    model = random_model()
    cache = KVCache(model, 1)
    forward_cached(model, prompt_ids(1, BLOCK), cache)
    with pytest.raises(ValueError, match="block_size"):
        forward_cached(model, prompt_ids(1, 1), cache)
    with pytest.raises(ValueError, match="batch"):
        forward_cached(model, prompt_ids(2, 1), KVCache(model, 1))


# -- generate: cache == no cache -------------------------------------------------------------
# seeds picked so that greedy decoding does not collapse onto one repeated token
@pytest.mark.parametrize("pos,norm,seed", [("learned", "pre", 7), ("learned", "post", 5)])
def test_greedy_cache_equals_no_cache_past_the_window(pos, norm, seed):
    model = random_model(pos=pos, norm=norm, seed=seed)
    idx = prompt_ids(3, 5)
    with_cache = generate(model, idx, 40, temperature=0, use_cache=True)  # 45 > 16
    without = generate(model, idx, 40, temperature=0, use_cache=False)
    assert with_cache.shape == (3, 45)
    assert (with_cache[:, :5] == idx).all()
    assert (with_cache == without).all(), f"first difference at column " \
        f"{np.flatnonzero((with_cache != without).any(axis=0))[0]}"
    past_window = with_cache[:, BLOCK + 1:]
    assert len(np.unique(past_window)) >= 3, "greedy output too trivial to test anything"


# seeds picked so that greedy decoding does not collapse onto one or two tokens
@pytest.mark.parametrize("pos,norm,kw,seed", [
    ("sinusoidal", "post", {}, 2), ("sinusoidal", "pre", {}, 2),
    ("rope", "pre", dict(normalization="rmsnorm", act="swiglu", n_kv_head=1), 2),
    ("rope", "post", dict(act="gelu_exact", n_head=4, n_kv_head=2), 5)])
def test_sliding_cache_past_the_window_equals_banded_attention_on_the_whole_sequence(
        pos, norm, kw, seed):
    """With sinusoidal or rope positions the cache slides (never rebuilt): every generated
    token is the argmax of model.forward on the whole sequence so far, which runs
    sliding-window attention with a banded mask (each position sees the block_size most
    recent, itself included). A prompt longer than the window is prefilled whole."""
    for T0 in (5, 2 * BLOCK + 3):
        model = random_model(pos=pos, norm=norm, seed=seed, **kw)
        idx = prompt_ids(2, T0, seed=seed)
        out = to_np(generate(model, idx, 3 * BLOCK, temperature=0, use_cache=True))
        assert out.shape == (2, T0 + 3 * BLOCK) and (out[:, :T0] == idx).all()
        logits, _ = model.forward(out[:, :-1])  # the reference, one pass, banded mask
        expected = logits[:, T0 - 1:].argmax(axis=-1)  # (B, 3 BLOCK)
        assert (out[:, T0:] == expected).all(), f"{pos}-{norm}-{kw} T0={T0}: first " \
            f"difference at {np.flatnonzero((out[:, T0:] != expected).any(axis=0))[0]}"
        assert len(np.unique(out[:, T0 + BLOCK:])) >= 3, "greedy output too trivial"


def test_sliding_cache_logits_equal_the_banded_reference_in_chunks():
    """Chunks of several positions past the window (the prefill path) give the banded
    reference's logits to float64 rounding, through more than one slide of the buffer."""
    model = random_model(pos="rope", normalization="rmsnorm", act="swiglu", n_kv_head=1)
    idx = prompt_ids(2, 5 * BLOCK + 3)
    expected, _ = model.forward(idx)
    cache = KVCache(model, 2)
    got, t = [], 0
    for n in (3, BLOCK, 1, 7, BLOCK, BLOCK, 5, BLOCK, 3):  # 83 = 5 BLOCK + 3 positions
        got.append(forward_cached(model, idx[:, t:t + n], cache))
        t += n
    got = np.concatenate(got, axis=1)
    assert t == idx.shape[1] and cache.length == t
    err = np.abs(got - expected).max() / np.abs(expected).max()
    assert err < TOL["float64"], f"sliding cache vs banded forward: {err:.2e}"
    with pytest.raises(ValueError, match="chunks of at most"):
        forward_cached(model, prompt_ids(2, BLOCK + 1), cache)


def test_generation_never_emits_the_unknown_id():
    """The reserved <unk> id has a row in the embedding but is masked to -inf before
    sampling: even when the model puts almost all its mass on it."""
    tokenizer = CharTokenizer("abc", unk=True)  # ids a b c, unk = 3
    model = random_model(vocab_size=4, tie=False)
    model.params["lm_head.weight"][:] = 0.0
    model.params["lm_head.weight"][tokenizer.unk_id] = 50.0  # unk's logit dominates
    assert int(model.forward(np.array([[0]]))[0][0, -1].argmax()) == tokenizer.unk_id
    for temperature in (0, 1.0):
        for use_cache in (True, False):
            texts = generate_text(model, tokenizer, "ab", 30, temperature=temperature,
                                  seed=0, num_samples=3, use_cache=use_cache)
            assert all(set(t) <= set("abc") for t in texts), texts
    out = generate(model, np.array([[0]]), 5, temperature=0)  # no tokenizer: not banned
    assert int(to_np(out)[0, 1]) == tokenizer.unk_id


def test_sampled_cache_equals_no_cache_with_the_same_seed():
    """Same draws, same logits up to rounding: every sampled token agrees, past the window."""
    model = random_model(tie=False, act="relu")
    idx = prompt_ids(2, 3)
    a = generate(model, idx, 40, temperature=1.0, seed=7, use_cache=True)
    b = generate(model, idx, 40, temperature=1.0, seed=7, use_cache=False)
    assert (a == b).all()


def test_greedy_cache_equals_no_cache_float32():
    model = random_model(dtype="float32")
    idx = prompt_ids(2, 4)
    a = generate(model, idx, 30, temperature=0, use_cache=True)
    b = generate(model, idx, 30, temperature=0, use_cache=False)
    assert (a == b).all()


def test_prompt_longer_than_the_window_is_cropped():
    model = random_model()
    idx = prompt_ids(2, 25)
    for use_cache in (True, False):
        out = generate(model, idx, 10, temperature=0, use_cache=use_cache)
        cropped = generate(model, idx[:, -BLOCK:], 10, temperature=0, use_cache=use_cache)
        assert out.shape == (2, 35)
        assert (out[:, :25] == idx).all()
        assert (out[:, 25:] == cropped[:, BLOCK:]).all(), f"use_cache={use_cache}"


def test_prompt_of_exactly_block_size_and_one_token():
    model = random_model()
    for T0 in (1, BLOCK):
        idx = prompt_ids(1, T0)
        a = generate(model, idx, 5, temperature=0, use_cache=True)
        b = generate(model, idx, 5, temperature=0, use_cache=False)
        assert (a == b).all(), f"T0={T0}"


def test_generation_is_eval_mode_and_restores_the_mode():
    """With dropout in the config, generation must not drop anything; mode restored after."""
    model = random_model(dropout=0.5).train()
    idx = prompt_ids(2, 4)
    a = generate(model, idx, 20, temperature=0, use_cache=True)
    assert model.training
    b = generate(model, idx, 20, temperature=0, use_cache=False)  # model.forward: no dropout?
    assert model.training
    c = generate(model.eval(), idx, 20, temperature=0, use_cache=False)
    assert not model.training
    assert (a == c).all() and (b == c).all()

    def fail(ids):
        raise RuntimeError("stop")

    model.train()
    with pytest.raises(RuntimeError, match="stop"):
        generate(model, idx, 3, on_token=fail)
    assert model.training, "mode not restored after an exception"


def test_on_token_called_once_per_token_with_the_new_ids():
    model = random_model()
    seen = []
    out = generate(model, prompt_ids(3, 2), 20, seed=1, on_token=lambda ids: seen.append(ids))
    assert len(seen) == 20
    assert all(ids.shape == (3,) for ids in seen)
    assert (np.stack(seen, axis=1) == out[:, 2:]).all()


# -- sample_next ---------------------------------------------------------------------------
def test_top_k_1_and_tiny_top_p_equal_greedy():
    model = random_model()
    idx = prompt_ids(2, 3)
    greedy = generate(model, idx, 30, temperature=0)
    assert (generate(model, idx, 30, temperature=1.5, top_k=1, seed=3) == greedy).all()
    assert (generate(model, idx, 30, temperature=1.5, top_p=1e-9, seed=3) == greedy).all()


def counts_of(logits_row, n, seed=0, **kw):
    """Sample n times from one (V,) row (as a batch of n identical rows); return counts."""
    logits = np.tile(np.asarray(logits_row, dtype=np.float64)[None, :], (n, 1))  # (n, V)
    ids = sample_next(logits, np.random.default_rng(seed), **kw)
    return np.bincount(ids, minlength=len(logits_row))


def assert_matches(counts, probs, what):
    """Pearson chi-square over the tokens with nonzero probability, and none elsewhere.
    With V-1 <= 12 degrees of freedom, 45 is far in the tail (p < 1e-5) for a seeded draw."""
    n = counts.sum()
    assert (counts[probs == 0] == 0).all(), f"{what}: sampled a token of probability 0"
    kept = probs > 0
    expected = n * probs[kept]
    chi2 = (((counts[kept] - expected) ** 2) / expected).sum()
    assert chi2 < 45, f"{what}: chi-square {chi2:.1f} over {kept.sum()} tokens"


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_temperature_1_samples_the_softmax():
    logits = np.random.default_rng(0).normal(0.0, 1.5, size=13)
    assert_matches(counts_of(logits, 20000), softmax(logits), "temperature 1")


def test_temperature_scales_the_logits():
    logits = np.random.default_rng(1).normal(0.0, 1.0, size=13)
    for t in (0.5, 2.0):
        assert_matches(counts_of(logits, 20000, temperature=t), softmax(logits / t),
                       f"temperature {t}")


def test_top_k_keeps_the_k_largest_renormalised():
    logits = np.array([0.1, 2.0, -1.0, 1.5, 0.3, 1.9])
    probs = softmax(logits)
    probs[[0, 2, 4]] = 0.0  # the three smallest
    assert_matches(counts_of(logits, 20000, top_k=3), probs / probs.sum(), "top_k=3")
    assert_matches(counts_of(logits, 20000, top_k=100), softmax(logits), "top_k > V")


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3 (0.8), 0.15 (0.95), 0.05
    logits = np.log(probs)
    expect = {0.4: [0, 1, 0, 0], 0.75: [0, 0.5, 0, 0.3], 0.9: [0, 0.5, 0.15, 0.3],
              1.0: probs}
    for p, kept in expect.items():
        kept = np.asarray(kept, dtype=np.float64)
        assert_matches(counts_of(logits, 20000, top_p=p), kept / kept.sum(), f"top_p={p}")


def test_top_p_boundary_stops_once_p_is_reached():
    """Four equal tokens: 0.25 + 0.25 reaches 0.5 exactly, so exactly two are kept."""
    ids = sample_next(np.zeros((2000, 4)), np.random.default_rng(0), top_p=0.5)
    assert len(np.unique(ids)) == 2


def test_top_k_then_top_p():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    # top_k=3 renormalises to 4/9, 3/9, 2/9; top_p=0.5 then keeps 4/9 (< 0.5) and 3/9
    counts = counts_of(np.log(probs), 20000, top_k=3, top_p=0.5)
    assert_matches(counts, np.array([4, 3, 0, 0]) / 7, "top_k=3, top_p=0.5")


def test_extreme_and_masked_logits():
    logits = np.array([[-1000.0, 1000.0, -np.inf, 999.0],
                       [-np.inf, -np.inf, 0.0, -np.inf]])
    ids = sample_next(np.tile(logits, (500, 1)), np.random.default_rng(0))  # alternating
    assert set(ids[0::2].tolist()) <= {1, 3} and set(ids[1::2].tolist()) == {2}
    assert sample_next(logits, None, temperature=0).tolist() == [1, 2]


def test_same_seed_same_output_different_seed_differs():
    model = random_model()
    idx = prompt_ids(2, 3)
    a = generate(model, idx, 40, seed=5)
    assert (generate(model, idx, 40, seed=5) == a).all()
    assert (generate(model, idx, 40, rng=np.random.default_rng(5)) == a).all()
    assert not (generate(model, idx, 40, seed=6) == a).all()


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-0.1), "temperature"), (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")])
def test_invalid_sampling_arguments_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        sample_next(np.zeros((1, 5)), np.random.default_rng(0), **kw)
    with pytest.raises(ValueError, match=match):
        generate(random_model(), prompt_ids(1, 2), 0, **kw)  # even with nothing to generate


def test_invalid_generate_arguments_raise():
    model = random_model()
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt_ids(1, 2), -1)
    with pytest.raises(ValueError, match="T0"):
        generate(model, np.zeros((1, 0), dtype=np.int64), 3)
    with pytest.raises(ValueError, match=r"\(B, T0\)"):
        generate(model, np.zeros(4, dtype=np.int64), 3)
    with pytest.raises(ValueError, match=r"\[0, 13\)"):
        generate(model, np.array([[1, 13]]), 3)


# -- generate_text ---------------------------------------------------------------------------
def text_model(chars="\nabcdefgh ", seed=0, **kw):
    tokenizer = CharTokenizer(chars)
    return random_model(vocab_size=tokenizer.vocab_size, seed=seed, **kw), tokenizer


def test_generate_text_raises_naming_unknown_characters():
    model, tokenizer = text_model()
    with pytest.raises(ValueError) as info:
        generate_text(model, tokenizer, "ab%cQ", 5)
    assert "'%'" in str(info.value) and "'Q'" in str(info.value)


def test_generate_text_streams_sample_0_and_returns_continuations():
    model, tokenizer = text_model()
    streamed = []
    texts = generate_text(model, tokenizer, "abc", 25, temperature=0.9, top_k=5, seed=2,
                          num_samples=3, stream=streamed.append)
    assert len(texts) == 3 and all(len(t) == 25 for t in texts)
    assert len(streamed) == 25 and all(len(s) == 1 for s in streamed)
    assert "".join(streamed) == texts[0]
    ids = generate(model, np.tile(tokenizer.encode("abc")[None], (3, 1)), 25, temperature=0.9,
                   top_k=5, seed=2, banned_ids=[tokenizer.unk_id])  # generate_text bans <unk>
    assert texts == [tokenizer.decode(row[3:]) for row in ids]
    no_cache = generate_text(model, tokenizer, "abc", 25, temperature=0.9, top_k=5, seed=2,
                             num_samples=3, use_cache=False)
    assert no_cache == texts


def test_generate_text_empty_prompt_starts_from_newline_or_id_0():
    model, tokenizer = text_model()
    assert generate_text(model, tokenizer, "", 10, temperature=0) == \
        generate_text(model, tokenizer, "\n", 10, temperature=0)
    model, tokenizer = text_model(chars="abcdefgh")  # no newline in this vocabulary
    from_zero = generate(model, np.zeros((1, 1), dtype=np.int64), 10, temperature=0)
    assert generate_text(model, tokenizer, "", 10, temperature=0) == \
        [tokenizer.decode(from_zero[0, 1:])]


# -- CuPy --------------------------------------------------------------------------------------
@gpu
@pytest.mark.gpu
def test_cupy_forward_cached_and_generate_match():
    model = random_model(backend="cupy")
    idx = prompt_ids(2, BLOCK)
    expected, _ = model.eval().forward(model.xp.asarray(idx))
    cache = KVCache(model, 2)
    got = model.xp.concatenate([forward_cached(model, model.xp.asarray(idx[:, :4]), cache)] +
                               [forward_cached(model, model.xp.asarray(idx[:, t:t + 1]), cache)
                                for t in range(4, BLOCK)], axis=1)
    assert np.abs(to_np(got) - to_np(expected)).max() < TOL["float64"]
    a = generate(model, idx[:, :3], 40, temperature=0.8, top_p=0.9, seed=1, use_cache=True)
    b = generate(model, idx[:, :3], 40, temperature=0.8, top_p=0.9, seed=1, use_cache=False)
    assert type(a).__module__.startswith("cupy")
    assert (to_np(a) == to_np(b)).all()


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -0.5])
def test_sampling_refuses_a_temperature_it_cannot_use(temperature):
    from tinygrad_char.inference.sampling import check_sampling_args

    with pytest.raises(ValueError, match=r"temperature must be (a finite number )?in \[0, 100\]"):
        check_sampling_args(temperature, None, None)


# -- rows at their own positions (continuous batching) -----------------------------------------
@pytest.mark.parametrize("pos, kw", [("learned", {}), ("sinusoidal", {}),
                                     ("rope", dict(normalization="rmsnorm", n_kv_head=1))])
def test_rows_at_different_positions_step_together(pos, kw):
    """Rows prefilled one at a time to different lengths (KVCache.rows), then stepped
    together one token at a time, each at its own position: every row's logits equal the
    full forward on that row's sequence; past the window too for a sliding cache; a row
    moved to another (KVCache.move) carries on there."""
    model = random_model(pos=pos, **kw).eval()
    lengths = [3, 9, 1]
    steps = 6 if pos == "learned" else 2 * BLOCK + 5  # learned positions stop at BLOCK
    seqs = prompt_ids(3, max(lengths) + steps, seed=4)
    cache = KVCache(model, 4)  # one row spare
    for b, n in enumerate(lengths):
        cache.rows(b, b + 1).reset()
        model.forward(seqs[b:b + 1, :n], kv_cache=cache.rows(b, b + 1))
    assert cache.lengths.tolist() == lengths + [0]
    rows = [0, 1, 2]
    for step in range(steps):
        if step == 3:  # row 2 moves to the spare row 3, row 2 is freed
            cache.move(2, 3)
            cache.rows(2, 3).reset()
            rows = [0, 1, 3]
        idx = np.asarray([[seqs[b, lengths[b] + step]] for b in range(3)])  # (3, 1)
        if rows == [0, 1, 2]:
            got = model.forward(idx, kv_cache=cache.rows(0, 3))[0][:, 0]  # (3, V)
        else:
            got = np.concatenate([model.forward(idx[:2], kv_cache=cache.rows(0, 2))[0][:, 0],
                                  model.forward(idx[2:], kv_cache=cache.rows(3, 4))[0][:, 0]])
        for b in range(3):
            n = lengths[b] + step + 1
            expected = model.forward(seqs[b:b + 1, :n])[0][0, -1]  # banded past the window
            err = np.abs(got[b] - expected).max() / np.abs(expected).max()
            assert err < TOL["float64"], f"{pos} row {b} step {step}: {err:.2e}"
    with pytest.raises(ValueError, match="different lengths"):
        cache.rows(0, 2).length
