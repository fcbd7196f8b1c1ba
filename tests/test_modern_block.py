"""The modern block (RoPE, RMSNorm, SwiGLU, the exact GELU, grouped-query attention and
sliding-window attention): every new op against float64 central differences on awkward
shapes (hs = 2, T = 1, NKV = 1) and against a naive forward written independently;
hypothesis properties; whole-model gradients for the new options crossed with the old;
the PyTorch oracle; the KV cache against the full forward for every variant; the
parameter tables and the fused-kernel fallback."""

import itertools
import math
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygrad_char import GPT, GPTConfig
from tinygrad_char.ops.activations import (erf, gelu_exact_backward, gelu_exact_forward,
                                           swiglu_backward, swiglu_forward)
from tinygrad_char.ops.attention import (attention_forward, cached_attention_forward,
                                         gqa_attention_backward, gqa_attention_forward,
                                         split_heads)
from tinygrad_char.gradcheck import check_model, check_op
from tinygrad_char.ops.layernorm import rmsnorm_backward, rmsnorm_forward
from tinygrad_char.fused import dispatch
from tinygrad_char.model import param_shapes
from tinygrad_char.ops.rope import rope_backward, rope_forward, rope_tables
from tinygrad_char.inference.sampling import KVCache

from conftest import HYP, REPO, TOL, assert_grads, randn, to_np

def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# -- naive references, written independently of the ops (loops, the formulas as stated) --

def naive_rope_vector(x, t, base):
    """One head vector x (hs,) at position t, rotated pair by pair (Llama's rotate-half)."""
    hs = len(x)
    out = np.empty(hs)
    for i in range(hs // 2):
        angle = t * base ** (-2 * i / hs)
        c, s = math.cos(angle), math.sin(angle)
        out[i] = x[i] * c - x[i + hs // 2] * s
        out[i + hs // 2] = x[i + hs // 2] * c + x[i] * s
    return out


def naive_rope(qkv, NH, NKV, base, start=0):
    B, T, width = qkv.shape
    hs = width // (NH + 2 * NKV)
    out = qkv.copy()
    for b, t, h in itertools.product(range(B), range(T), range(NH + NKV)):  # q and k heads
        out[b, t, h * hs:(h + 1) * hs] = naive_rope_vector(qkv[b, t, h * hs:(h + 1) * hs],
                                                           start + t, base)
    return out


def naive_rmsnorm(x, w):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx]
        rms = math.sqrt(sum(r * r for r in row) / len(row) + 1e-5)
        out[idx] = [r / rms * wi for r, wi in zip(row, w)]
    return out


def naive_gqa_attention(qkv, NH, NKV, window=None):
    """Per batch, query head and position: softmax over the visible keys of its kv head."""
    B, T, width = qkv.shape
    hs = width // (NH + 2 * NKV)
    C = NH * hs
    y = np.zeros((B, T, C))
    for b, h in itertools.product(range(B), range(NH)):
        j = h // (NH // NKV)  # the kv head of query head h
        q = qkv[b, :, h * hs:(h + 1) * hs]
        k = qkv[b, :, C + j * hs:C + (j + 1) * hs]
        v = qkv[b, :, C + NKV * hs + j * hs:C + NKV * hs + (j + 1) * hs]
        for t in range(T):
            seen = [s for s in range(t + 1) if window is None or s > t - window]
            scores = [q[t] @ k[s] / math.sqrt(hs) for s in seen]
            m = max(scores)
            e = [math.exp(a - m) for a in scores]
            y[b, t, h * hs:(h + 1) * hs] = sum(e[n] / sum(e) * v[s] for n, s in enumerate(seen))
    return y


# -- erf, exact GELU, SwiGLU ------------------------------------------------------------------

def test_erf_is_float64_accurate():
    """Against math.erf (correctly rounded to about 1 ulp) over the range that matters,
    the tails included: within 2 ulp relative, and odd."""
    x = np.concatenate([np.linspace(-7, 7, 4001), [0.0, 1e-300, 1e-8, -1e-8, 0.5, 26.0]])
    ours = erf(x)
    ref = np.array([math.erf(v) for v in x])
    ulp = np.spacing(np.abs(ref))
    assert (np.abs(ours - ref) <= 2 * np.maximum(ulp, 1e-320)).all(), \
        f"erf: max error {np.abs(ours - ref).max():.2e}"
    assert erf(np.float32(0.5) * np.ones(3, dtype=np.float32)).dtype == np.float32


def test_gelu_exact(xp):
    rng = np.random.default_rng(0)
    x = randn(xp, rng, 2, 3, 5, scale=2.0)
    y, _ = gelu_exact_forward(x)
    naive = np.vectorize(lambda u: u * 0.5 * (1.0 + math.erf(u / math.sqrt(2.0))))(to_np(x))
    assert np.abs(to_np(y) - naive).max() < 1e-14
    assert_grads("gelu_exact", check_op(gelu_exact_forward, gelu_exact_backward, [x]))
    extreme = xp.asarray([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    y, _ = gelu_exact_forward(extreme)
    np.testing.assert_array_equal(to_np(y), [0.0, 0.0, 0.0, 40.0, 1000.0])


def test_swiglu(xp):
    rng = np.random.default_rng(1)
    g, u = randn(xp, rng, 2, 1, 6, scale=3.0), randn(xp, rng, 2, 1, 6)
    y, _ = swiglu_forward(g, u)
    naive = np.vectorize(lambda a, b: a / (1.0 + math.exp(-a)) * b)(to_np(g), to_np(u))
    assert np.abs(to_np(y) - naive).max() < 1e-14
    assert_grads("swiglu", check_op(swiglu_forward, swiglu_backward, [g, u]))
    y, _ = swiglu_forward(xp.asarray([-1000.0, 1000.0]), xp.asarray([2.0, 2.0]))  # no overflow
    np.testing.assert_array_equal(to_np(y), [-0.0, 2000.0])


# -- RMSNorm ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 2), (4, 1)])
def test_rmsnorm(xp, shape):
    rng = np.random.default_rng(2)
    x, w = randn(xp, rng, *shape, scale=3.0), randn(xp, rng, shape[-1])
    y, _ = rmsnorm_forward(x, w)
    assert np.abs(to_np(y) - naive_rmsnorm(to_np(x), to_np(w))).max() < 1e-12
    assert_grads(f"rmsnorm {shape}", check_op(rmsnorm_forward, rmsnorm_backward, [x, w]))


@HYP
@given(rows=st.integers(1, 5), C=st.integers(1, 9), seed=st.integers(0, 10_000),
       scale=st.sampled_from([1e-2, 1.0, 1e3]))
def test_rmsnorm_rows_have_unit_rms(rows, C, seed, scale):
    x = np.random.default_rng(seed).standard_normal((rows, C)) * scale
    y, _ = rmsnorm_forward(x, np.ones(C))
    rms = np.sqrt((y ** 2).mean(axis=-1))
    ms_x = (x ** 2).mean(axis=-1)
    expected = np.sqrt(ms_x / (ms_x + 1e-5))  # 1 up to eps
    assert np.abs(rms - expected).max() < 1e-12


# -- RoPE -----------------------------------------------------------------------------------

@pytest.mark.parametrize("B,T,NH,NKV,hs,start", [(2, 5, 2, 1, 4, 0), (1, 1, 1, 1, 2, 0),
                                                 (2, 3, 4, 2, 2, 7), (1, 4, 2, 2, 6, 100)])
def test_rope(xp, B, T, NH, NKV, hs, start):
    rng = np.random.default_rng(3)
    qkv = randn(xp, rng, B, T, (NH + 2 * NKV) * hs)
    cos, sin = rope_tables(start, start + T, hs, 10000.0, xp, "float64")
    out, _ = rope_forward(qkv, cos, sin, NH, NKV)
    assert np.abs(to_np(out) - naive_rope(to_np(qkv), NH, NKV, 10000.0, start)).max() < 1e-12
    errors = check_op(lambda a: rope_forward(a, cos, sin, NH, NKV), rope_backward, [qkv])
    assert_grads(f"rope B={B} T={T} NH={NH} NKV={NKV} hs={hs}", errors)


@HYP
@given(t=st.integers(0, 200), s=st.integers(0, 200), shift=st.integers(1, 300),
       hs=st.sampled_from([2, 4, 8]), seed=st.integers(0, 10_000))
def test_rope_scores_depend_only_on_the_offset(t, s, shift, hs, seed):
    """q'(t) . k'(s) == q'(t + d) . k'(s + d): rotating both by the same extra angle."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal(hs), rng.standard_normal(hs)
    cos, sin = rope_tables(0, 520, hs, 10000.0, np, "float64")

    def rotated(x, pos):  # one head of q (NH = 1, NKV = 1: the k slot is unused here)
        qkv = np.concatenate([x, x, x])[None, None, :]  # (1, 1, 3 hs)
        return rope_forward(qkv, cos[pos:pos + 1], sin[pos:pos + 1], 1, 1)[0][0, 0, :hs]

    score = rotated(q, t) @ rotated(k, s)
    shifted = rotated(q, t + shift) @ rotated(k, s + shift)
    assert abs(score - shifted) < 1e-9 * max(1.0, abs(score))


# -- grouped-query and sliding-window attention ---------------------------------------------

@pytest.mark.parametrize("B,T,NH,NKV,hs,window", [(2, 5, 4, 1, 2, None), (1, 1, 2, 1, 2, None),
                                                  (2, 6, 4, 2, 3, None), (1, 7, 2, 1, 2, 3),
                                                  (2, 5, 2, 2, 4, 1), (1, 4, 3, 3, 2, 2)])
def test_gqa_attention(xp, B, T, NH, NKV, hs, window):
    rng = np.random.default_rng(4)
    qkv = randn(xp, rng, B, T, (NH + 2 * NKV) * hs)
    y, _ = gqa_attention_forward(qkv, NH, NKV, window=window)
    assert np.abs(to_np(y) - naive_gqa_attention(to_np(qkv), NH, NKV, window)).max() < 1e-12
    errors = check_op(lambda a: gqa_attention_forward(a, NH, NKV, window=window),
                      gqa_attention_backward, [qkv])
    assert_grads(f"gqa B={B} T={T} NH={NH} NKV={NKV} hs={hs} window={window}", errors)


def test_gqa_attention_dropout_backward(xp):
    rng = np.random.default_rng(5)
    qkv = randn(xp, rng, 2, 4, (4 + 2 * 2) * 2)

    def fwd(a):  # reseeded each call so finite differences see the same mask
        return gqa_attention_forward(a, 4, 2, 0.3, xp.random.default_rng(9), True)

    assert_grads("gqa dropout", check_op(fwd, gqa_attention_backward, [qkv]))


@HYP
@given(B=st.integers(1, 2), T=st.integers(1, 6), NH=st.integers(1, 3), hs=st.integers(1, 4),
       seed=st.integers(0, 10_000))
def test_gqa_with_nkv_equal_nh_is_multi_head_attention(B, T, NH, hs, seed):
    qkv = np.random.default_rng(seed).standard_normal((B, T, 3 * NH * hs))
    y, _ = gqa_attention_forward(qkv, NH, NH)
    expected, _ = attention_forward(qkv, NH)
    np.testing.assert_array_equal(y, expected)


def test_cached_attention_is_the_banded_gqa_attention():
    """New queries over cached keys, with a window and groups, equal the rows of the full
    grouped attention with the banded mask (the positions far past any block)."""
    rng = np.random.default_rng(6)
    B, T, NH, NKV, hs, W = 2, 9, 4, 2, 3, 4
    qkv = rng.standard_normal((B, T, (NH + 2 * NKV) * hs))
    full, _ = gqa_attention_forward(qkv, NH, NKV, window=W)
    q, k, v = split_heads(qkv, NH, NKV)
    for q0, k0 in ((6, 3), (5, 2), (8, 5)):  # queries q0.. over keys k0.. (k0 <= q0 - W + 1)
        y = cached_attention_forward(q[:, :, q0:], k[:, :, k0:].transpose(0, 1, 3, 2),
                                     v[:, :, k0:], 1000 + q0, 1000 + k0, W)  # (B,NH,Tq,hs)
        got = y.transpose(0, 2, 1, 3).reshape(B, T - q0, NH * hs)
        assert np.abs(got - full[:, q0:]).max() < 1e-12, (q0, k0)


def test_new_ops_do_not_modify_inputs():
    rng = np.random.default_rng(7)
    qkv = rng.standard_normal((2, 3, (2 + 2) * 4))
    x, w = rng.standard_normal((2, 3, 4)), rng.standard_normal(4)
    cos, sin = rope_tables(0, 3, 4, 10000.0, np, "float64")
    calls = [(lambda a: rope_forward(a, cos, sin, 2, 1), rope_backward, [qkv]),
             (lambda a: gqa_attention_forward(a, 2, 1), gqa_attention_backward, [qkv]),
             (rmsnorm_forward, rmsnorm_backward, [x, w]),
             (swiglu_forward, swiglu_backward, [x, x.copy()]),
             (gelu_exact_forward, gelu_exact_backward, [x])]
    for fwd, bwd, inputs in calls:
        before = [a.copy() for a in inputs]
        out, cache = fwd(*inputs)
        dout = rng.standard_normal(out.shape)
        dout_before = dout.copy()
        bwd(dout, cache)
        for a, b in zip(inputs, before):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(dout, dout_before)


# -- the model: tables, config, gradients, oracle, cache --------------------------------------

NEW = [dict(pos_encoding="rope"), dict(normalization="rmsnorm"), dict(activation="swiglu"),
       dict(activation="gelu_exact"), dict(n_kv_head=1),
       dict(pos_encoding="rope", normalization="rmsnorm", activation="swiglu", n_kv_head=1)]
OLD = [dict(norm="pre", bias=True, tie_weights=True), dict(norm="post", bias=False,
                                                           tie_weights=False)]
GRID = [(n, o) for n in NEW for o in OLD]
GRID_IDS = ["-".join(f"{k}={v}" for k, v in {**n, **o}.items()) for n, o in GRID]


def config(**kw):
    base = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2)
    return GPTConfig(**{**base, **kw})


def perturbed(cfg, dtype="float64", seed=3, scale=0.1):
    model = GPT(cfg, dtype=dtype, seed=seed, kernels="xp")
    rng = np.random.default_rng(seed)
    for p in model.params.values():  # away from the symmetric init (norm gains 1, biases 0)
        p += rng.standard_normal(p.shape) * scale
    return model


def test_parameter_tables_of_the_new_options():
    cfg = config(n_head=4, n_kv_head=1, activation="swiglu", normalization="rmsnorm",
                 pos_encoding="rope", bias=True)
    shapes = param_shapes(cfg)
    hs = 2
    assert shapes["transformer.h.0.attn.c_attn.weight"] == ((4 + 2 * 1) * hs, 8)
    assert shapes["transformer.h.0.attn.c_attn.bias"] == ((4 + 2) * hs,)
    assert shapes["transformer.h.1.mlp.c_gate.weight"] == (16, 8)
    assert shapes["transformer.h.1.mlp.c_gate.bias"] == (16,)
    assert "transformer.wpe.weight" not in shapes  # rope has no position parameters
    norms = [k for k in shapes if ".ln_" in k]
    assert norms and all(k.endswith(".weight") for k in norms)  # rmsnorm: never a bias
    assert "transformer.ln_f.weight" in shapes and "transformer.ln_f.bias" not in shapes
    assert shapes["transformer.h.0.attn.c_proj.bias"] == (8,)  # the linears keep theirs
    assert list(shapes).index("transformer.h.0.mlp.c_gate.weight") < \
        list(shapes).index("transformer.h.0.mlp.c_proj.weight")
    # defaults unchanged: a GPT-2 config's table has none of the new parameters
    old = param_shapes(config())
    assert old["transformer.h.0.attn.c_attn.weight"] == (24, 8)
    assert not any("c_gate" in k for k in old) and "transformer.h.0.ln_1.bias" in old


def test_old_config_dicts_load_and_new_fields_round_trip():
    old = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2,
               dropout=0.0, bias=True, activation="gelu", pos_encoding="learned",
               norm="pre", tie_weights=True)  # a checkpoint written before these options
    cfg = GPTConfig.from_dict(old)
    assert (cfg.normalization, cfg.rope_base, cfg.n_kv_head) == ("layernorm", 10000.0, None)
    new = config(pos_encoding="rope", rope_base=500.0, normalization="rmsnorm",
                 activation="swiglu", n_head=4, n_kv_head=2)
    assert GPTConfig.from_dict(new.to_dict()) == new


@pytest.mark.parametrize("new,old", GRID, ids=GRID_IDS)
def test_whole_model_gradients(new, old):
    cfg = config(**new, **old)
    model = perturbed(cfg)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, size=(2, cfg.block_size))
    targets = rng.integers(0, cfg.vocab_size, size=(2, cfg.block_size))
    errors = check_model(model, idx, targets, max_entries=8)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL["gradcheck"], f"{new}-{old} {worst}: {errors[worst]:.2e}"
    assert set(errors) == set(model.params)


def test_whole_model_gradients_past_the_window_and_with_dropout():
    """Sliding-window attention (T > block_size, rope) and dropout through the GQA op."""
    cfg = config(pos_encoding="rope", n_head=4, n_kv_head=2, normalization="rmsnorm",
                 block_size=4)
    model = perturbed(cfg)
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 11, size=(2, 7)), rng.integers(0, 11, size=(2, 7))
    errors = check_model(model, idx, targets, max_entries=8)
    assert max(errors.values()) < TOL["gradcheck"], errors
    dropped = perturbed(config(n_kv_head=1, dropout=0.2, activation="swiglu"))
    idx, targets = rng.integers(0, 11, size=(2, 8)), rng.integers(0, 11, size=(2, 8))
    forward = dropped.forward

    def seeded_forward(*args):  # the same masks on every forward of the differences
        dropped.seed_dropout(11)
        return forward(*args)

    dropped.forward = seeded_forward
    errors = check_model(dropped, idx, targets, max_entries=8)
    assert max(errors.values()) < TOL["gradcheck"], errors


def test_rope_model_matches_its_sliding_window_definition_within_the_block():
    """Within block_size the banded mask is the causal one: forward(idx) is unchanged by
    allowing longer sequences, and the last block_size rows of a longer sequence see only
    the last block_size tokens in the first layer (checked by changing an older token)."""
    cfg = config(pos_encoding="rope", n_layer=1, block_size=4)
    model = perturbed(cfg, scale=0.5).eval()
    idx = np.random.default_rng(2).integers(0, 11, size=(1, 9))
    logits, _ = model.forward(idx)
    changed = idx.copy()
    changed[0, 4] = (changed[0, 4] + 1) % 11  # position 4: outside the window of 8
    logits2, _ = model.forward(changed)
    np.testing.assert_allclose(logits2[0, 8], logits[0, 8], rtol=0, atol=1e-12)
    assert np.abs(logits2[0, 7] - logits[0, 7]).max() > 1e-6  # inside the window of 7
    with pytest.raises(ValueError, match="exceeds block_size"):
        GPT(config()).forward(np.zeros((1, 9), dtype=np.int64))  # learned: refused


@pytest.mark.parametrize("new,old", GRID, ids=GRID_IDS)
def test_kv_cache_equals_the_full_forward(new, old):
    """Prefill, single steps and a chunk, for every new option: the logits of the cached
    forward equal model.forward on the whole sequence (float64 rounding)."""
    cfg = config(**new, **old, block_size=12, n_embd=16)
    model = perturbed(cfg, scale=0.5).eval()
    idx = np.random.default_rng(8).integers(0, 11, size=(3, 12))
    expected, _ = model.forward(idx)
    cache = KVCache(model, 3)
    chunks = [model.forward(idx[:, :4], kv_cache=cache)[0]]
    chunks += [model.forward(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(4, 8)]
    chunks.append(model.forward(idx[:, 8:], kv_cache=cache)[0])
    err = rel(np.concatenate(chunks, axis=1), expected)
    assert err < TOL["float64"], f"{new}-{old}: cached vs full forward {err:.2e}"
    assert cache.k_t[0].shape[1] == cfg.kv_heads  # the cache stores NKV heads


def test_fast_paths_run_the_new_parts_on_xp_and_say_so(recwarn):
    """The op table (chosen once, model.describe_ops) runs the parts no fast path has a
    kernel for on the xp ops; a requested fast path says so once, "auto" in the summary."""
    llama = config(pos_encoding="rope", normalization="rmsnorm", activation="swiglu",
                   n_head=2, n_kv_head=1)
    cuda = dispatch.describe(dispatch.select_ops("auto", "cupy", llama),
                             dispatch.ops_used(llama))
    for name in ("rmsnorm_forward", "rope_forward", "swiglu_forward",
                 "gqa_attention_forward", "windowed_attention_forward"):
        assert cuda[name] == "xp", (name, cuda)
    assert set(dispatch.describe(dispatch.select_ops("auto", "cupy", config()),
                                 ["layernorm_forward", "attention_forward"]).values()) == {"cuda"}
    model = GPT(llama, kernels="xp")  # nothing to say on xp
    assert not [w for w in recwarn if "kernels" in str(w.message)]
    assert model.ops_summary().startswith("kernels: xp (")
    from tinygrad_char.fused.cpu import numba_available

    if numba_available():  # what runs on xp (beyond the windowed and cached paths) is said
        from tinygrad_char.fused.cpu import XP_BY_DESIGN

        fast = GPT(llama, kernels="cpu")
        said = [str(w.message) for w in recwarn if "kernels" in str(w.message)]
        on_xp = {dispatch.family(n) for n, impl in fast.describe_ops().items()
                 if impl == "xp"} - set(XP_BY_DESIGN)
        assert len(said) == (1 if on_xp else 0), said
        assert all(f in said[0] and "xp ops" in said[0] for f in on_xp), (on_xp, said)
    # an "auto" model (fused or numba kernels where they apply) gives the xp model's
    # numbers: the new parts on xp ops, and rope's rotated qkv through the MHA kernel
    idx = np.random.default_rng(0).integers(0, 11, size=(2, 8))
    for cfg in (config(pos_encoding="rope", normalization="rmsnorm", activation="swiglu",
                       n_kv_head=1), config(pos_encoding="rope", activation="gelu_exact")):
        fast, ref = GPT(cfg, kernels="auto", seed=1), GPT(cfg, kernels="xp", seed=1)
        assert rel(fast.forward(idx, idx)[0], ref.forward(idx, idx)[0]) < TOL["float32"]
        g_fast, g_ref = fast.backward(), ref.backward()
        for name in g_ref:
            assert rel(g_fast[name], g_ref[name]) < TOL["float32"], name


# -- the PyTorch oracle ---------------------------------------------------------------------

@pytest.mark.parametrize("new,old", GRID, ids=GRID_IDS)
def test_matches_pytorch_autograd_float64(new, old):
    torch = pytest.importorskip("torch", reason="torch not installed: the PyTorch oracle "
                                                "needs it (pip install torch==2.13.0)")
    sys.path.insert(0, str(REPO))
    from benchmarks.torch_gpt import TorchGPT

    cfg = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=32,
                    **{**new, **old})
    ours = perturbed(cfg, seed=5, scale=0.05)
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 13, size=(3, 16)), rng.integers(0, 13, size=(3, 16))
    targets[0, :4] = -1
    logits, loss = ours.forward(idx, targets)
    grads = ours.backward()
    twin = TorchGPT(cfg, ours.params, dtype=torch.float64)
    t_logits, t_loss = twin(torch.as_tensor(idx), torch.as_tensor(targets))
    t_loss.backward()
    assert rel(logits, t_logits.detach().numpy()) < TOL["float64"]
    assert rel(loss, t_loss.item()) < TOL["float64"]
    for name, g in twin.named_grads().items():
        assert rel(grads[name], g.numpy()) < TOL["float64"], \
            f"{name}: {rel(grads[name], g.numpy()):.2e}"


# -- checkpoints and the command line -------------------------------------------------------

def test_checkpoint_carries_the_new_options(tmp_path):
    from tinygrad_char.training.checkpoint import load_checkpoint, save_checkpoint
    from tinygrad_char.training.tokenizer import CharTokenizer

    cfg = config(pos_encoding="rope", rope_base=500.0, normalization="rmsnorm",
                 activation="swiglu", n_head=4, n_kv_head=2, vocab_size=5)
    model = perturbed(cfg, dtype="float32")
    path = str(tmp_path / "llama.safetensors")
    save_checkpoint(path, model, CharTokenizer("abcd", unk=True), step=3)
    loaded, _, meta = load_checkpoint(path)
    assert loaded.config == cfg
    for name, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)
    idx = np.array([[0, 1, 2, 3, 4, 0]])
    loaded.ops = model.ops  # the same ops, so the same rounding (loaded runs "auto")
    np.testing.assert_array_equal(loaded.forward(idx)[0], model.eval().forward(idx)[0])


def test_train_flags_and_presets_reach_the_model_config():
    from tinygrad_char.training.config import ConfigError, build_parser, resolve_config

    presets = str(REPO / "examples" / "configs")
    parser = build_parser("t", presets)
    args = parser.parse_args(["--pos-encoding", "rope", "--rope-base", "500",
                              "--normalization", "rmsnorm", "--activation", "swiglu",
                              "--n-kv-head", "2", "--n-head", "4"])
    cfg = resolve_config(args, presets).model_config(vocab_size=7)
    assert (cfg.pos_encoding, cfg.rope_base, cfg.normalization, cfg.activation,
            cfg.n_kv_head) == ("rope", 500.0, "rmsnorm", "swiglu", 2)
    assert resolve_config(parser.parse_args([]), presets).model_config(7).n_kv_head is None
    llama = resolve_config(parser.parse_args(["--preset", "llama_cpu"]), presets)
    cpu = resolve_config(parser.parse_args(["--preset", "cpu"]), presets)
    model_cfg = llama.model_config(vocab_size=283)
    assert (model_cfg.pos_encoding, model_cfg.normalization, model_cfg.activation) == \
        ("rope", "rmsnorm", "swiglu")
    assert model_cfg.kv_heads < model_cfg.n_head  # grouped-query
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_steps"):
        assert getattr(llama, name) == getattr(cpu, name), name  # the CPU preset's size
    n_llama = sum(math.prod(s) for s in param_shapes(model_cfg).values())
    n_cpu = sum(math.prod(s) for s in param_shapes(cpu.model_config(283)).values())
    assert abs(n_llama - n_cpu) / n_cpu < 0.05, (n_llama, n_cpu)  # about as many weights
    with pytest.raises(ConfigError, match="n_kv_head"):
        resolve_config(parser.parse_args(["--n-head", "4", "--n-kv-head", "3"]), presets)
