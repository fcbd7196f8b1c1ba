"""Every op: backward against finite differences (float64), forward against a naive
independent implementation, invariants over random shapes (hypothesis), and stability."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygrad_char.ops.activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from tinygrad_char.ops.attention import (attention_backward, attention_forward,
                                         causal_mask_bias)
from tinygrad_char.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward
from tinygrad_char.ops.dropout import dropout_backward, dropout_forward
from tinygrad_char.ops.embedding import (embedding_backward, embedding_forward,
                                         position_embedding_backward, position_embedding_forward,
                                         sinusoidal_encoding)
from tinygrad_char.gradcheck import check_op
from tinygrad_char.ops.layernorm import layernorm_backward, layernorm_forward
from tinygrad_char.ops.linear import linear_backward, linear_forward

from conftest import HYP, assert_grads, randn, to_np

# -- naive references, written independently of the ops (loops, no tricks) ----------------

def naive_layernorm(x, w, b):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx]
        mu = sum(row) / len(row)
        var = sum((r - mu) ** 2 for r in row) / len(row)
        out[idx] = [(r - mu) / math.sqrt(var + 1e-5) * wi + bi for r, wi, bi in zip(row, w, b)]
    return out


def naive_attention(qkv, n_head):
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    y = np.zeros((B, T, C))
    for b in range(B):
        for h in range(n_head):
            q = qkv[b, :, h * hs:(h + 1) * hs]
            k = qkv[b, :, C + h * hs:C + (h + 1) * hs]
            v = qkv[b, :, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for t in range(T):
                scores = [q[t] @ k[s] / math.sqrt(hs) for s in range(t + 1)]
                m = max(scores)
                e = [math.exp(s - m) for s in scores]
                y[b, t, h * hs:(h + 1) * hs] = sum(e[s] / sum(e) * v[s] for s in range(t + 1))
    return y


def naive_gelu(x):
    return np.vectorize(lambda u: 0.5 * u * (1 + math.tanh(math.sqrt(2 / math.pi)
                                                            * (u + 0.044715 * u ** 3))))(x)


# -- linear --------------------------------------------------------------------------------

def test_linear_bias_gradient_accumulates_float16_in_float32(xp):
    """db sums 4096 rows: a float16 running sum would stop at 2048 (1 is below its spacing)."""
    x, W = xp.zeros((4096, 3), np.float16), xp.zeros((2, 3), np.float16)
    _, cache = linear_forward(x, W, xp.zeros(2, np.float16))
    db = linear_backward(xp.ones((4096, 2), np.float16), cache)[2]
    assert db.dtype == np.float16 and np.all(to_np(db) == 4096), to_np(db)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(xp, bias):
    rng = np.random.default_rng(0)
    x, W = randn(xp, rng, 2, 3, 5), randn(xp, rng, 4, 5)
    b = randn(xp, rng, 4) if bias else None
    y, _ = linear_forward(x, W, b)
    ref = np.einsum("bti,oi->bto", to_np(x), to_np(W)) + (to_np(b) if bias else 0)
    np.testing.assert_allclose(to_np(y), ref, rtol=1e-12)
    inputs = [x, W] + ([b] if bias else [])
    fwd = (lambda x, W, b: linear_forward(x, W, b)) if bias else (lambda x, W: linear_forward(x, W))
    assert_grads("linear", check_op(fwd, linear_backward, inputs))
    if not bias:
        assert linear_backward(y, linear_forward(x, W)[1])[2] is None


# -- embeddings -----------------------------------------------------------------------------

def test_embedding_repeated_ids(xp):
    rng = np.random.default_rng(1)
    W = randn(xp, rng, 7, 4)
    idx = xp.asarray([[1, 1, 1, 6], [0, 1, 6, 6]])  # repeats must all accumulate
    out, cache = embedding_forward(idx, W)
    np.testing.assert_array_equal(to_np(out), to_np(W)[to_np(idx)])
    dout = randn(xp, rng, 2, 4, 4)
    dW = to_np(embedding_backward(dout, cache))
    ref = np.zeros((7, 4))
    for (b, t), v in np.ndenumerate(to_np(idx)):
        ref[v] += to_np(dout)[b, t]
    np.testing.assert_allclose(dW, ref, rtol=1e-12, atol=1e-15)
    errs = check_op(lambda W: embedding_forward(idx, W), lambda d, c: embedding_backward(d, c),
                    [W])
    assert_grads("embedding", errs)


def test_position_embedding(xp):
    rng = np.random.default_rng(2)
    W = randn(xp, rng, 8, 3)
    tok = randn(xp, rng, 2, 5, 3)
    for start in (0, 2):
        out, _ = position_embedding_forward(tok, W, start)
        np.testing.assert_array_equal(to_np(out), to_np(tok) + to_np(W)[start:start + 5])
        errs = check_op(lambda tok, W: position_embedding_forward(tok, W, start),
                        lambda d, c: (d, position_embedding_backward(d, c)), [tok, W])
        assert_grads("position_embedding", errs)


def test_sinusoidal_matches_formula(xp):
    for C in (6, 7):
        pe = to_np(sinusoidal_encoding(10, C, xp, "float64"))
        for t in range(10):
            for i in range(C):
                angle = t / 10000 ** ((i - i % 2) / C)
                ref = math.sin(angle) if i % 2 == 0 else math.cos(angle)
                assert abs(pe[t, i] - ref) < 1e-12


# -- layernorm -------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_layernorm(xp, bias):
    rng = np.random.default_rng(3)
    x, w = randn(xp, rng, 2, 3, 6, scale=3.0), randn(xp, rng, 6)
    b = randn(xp, rng, 6) if bias else None
    y, _ = layernorm_forward(x, w, b)
    np.testing.assert_allclose(to_np(y), naive_layernorm(to_np(x), to_np(w),
                                                         to_np(b) if bias else np.zeros(6)),
                               rtol=1e-10, atol=1e-12)
    inputs = [x, w] + ([b] if bias else [])
    assert_grads("layernorm", check_op(layernorm_forward, layernorm_backward, inputs))


@HYP
@given(rows=st.integers(1, 6), C=st.integers(3, 24), seed=st.integers(0, 2**16))
def test_layernorm_properties(rows, C, seed):
    # C >= 3: with C = 2 the output is +-1 whatever x is, dx is ~eps-sized, and finite
    # differences measure only their own rounding noise.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, C)) * 5 + 3
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y, cache = layernorm_forward(x, np.ones(C), np.zeros(C))
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-10)
    var = y.var(axis=-1)
    np.testing.assert_allclose(var, x.var(axis=-1) / (x.var(axis=-1) + 1e-5), rtol=1e-10)
    assert_grads("layernorm", check_op(layernorm_forward, layernorm_backward, [x, w, b],
                                       seed=seed))


# -- attention -------------------------------------------------------------------------------

@pytest.mark.parametrize("B,T,NH,hs", [(2, 5, 2, 3), (1, 1, 1, 4), (3, 4, 4, 2)])
def test_attention(xp, B, T, NH, hs):
    rng = np.random.default_rng(4)
    qkv = randn(xp, rng, B, T, 3 * NH * hs)
    y, _ = attention_forward(qkv, NH)
    np.testing.assert_allclose(to_np(y), naive_attention(to_np(qkv), NH), rtol=1e-10,
                               atol=1e-12)
    errs = check_op(lambda a: attention_forward(a, NH), attention_backward, [qkv])
    assert_grads("attention", errs)


@HYP
@given(B=st.integers(1, 3), T=st.integers(1, 9), NH=st.integers(1, 3), hs=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_attention_properties(B, T, NH, hs, seed):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * NH * hs)) * 2
    y, cache = attention_forward(qkv, NH)
    att = cache[3]  # (B, NH, T, T) probabilities, rows queries
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(att[..., np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]] == 0)
    # causality: changing the last position changes nothing before it
    qkv2 = qkv.copy()
    qkv2[:, -1] += 10.0
    y2, _ = attention_forward(qkv2, NH)
    np.testing.assert_array_equal(y[:, :-1], y2[:, :-1])
    errs = check_op(lambda a: attention_forward(a, NH), attention_backward, [qkv], seed=seed)
    assert_grads("attention", errs)


def test_attention_large_scores_stable(xp):
    qkv = xp.zeros((1, 3, 6))
    qkv[0, :, 0] = 1000.0  # q
    qkv[0, :, 2] = xp.asarray([1.0, -1.0, 1.0])  # k: scores of +-1000/sqrt(2)
    y, cache = attention_forward(qkv, 1)
    assert np.all(np.isfinite(to_np(y))) and np.all(np.isfinite(to_np(cache[3])))  # P


def test_attention_dropout_backward(xp):
    rng = np.random.default_rng(5)
    qkv = randn(xp, rng, 2, 4, 12)

    def fwd(a):  # reseeded each call so finite differences see the same mask
        return attention_forward(a, 2, dropout=0.3, rng=xp.random.default_rng(0))

    assert_grads("attention+dropout", check_op(fwd, attention_backward, [qkv]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_attention_dropout_mask_is_the_key_major_draw(dtype):
    """The mask of query t and key s is uniform[b, h, s, t] >= p for one (B, NH, T, T)
    draw: the order the CPU kernel reads, so a seed gives the same dropped entries there,
    here, and in every earlier run of that seed."""
    B, NH, T, hs, p = 2, 3, 5, 4, 0.3
    qkv = np.random.default_rng(11).standard_normal((B, T, 3 * NH * hs)).astype(dtype)
    _, cache = attention_forward(qkv, NH, dropout=p, rng=np.random.default_rng(12))
    uniform = np.random.default_rng(12).random((B, NH, T, T), dtype=dtype)
    want = np.zeros((B, NH, T, T), dtype)
    for b, h, t, s in np.ndindex(B, NH, T, T):
        want[b, h, t, s] = (uniform[b, h, s, t] >= p) / (1 - p)
    np.testing.assert_array_equal(cache[4], want, err_msg="attention dropout mask moved")


@pytest.mark.parametrize("window", [None, 1, 3, 9])
def test_causal_mask_bias(xp, window):
    T = 6
    mask = to_np(causal_mask_bias(T, xp, "float32", window))
    assert mask.shape == (T, T) and mask.dtype == np.float32
    for t, s in np.ndindex(T, T):
        visible = s <= t and (window is None or t - s < window)
        assert mask[t, s] == (0.0 if visible else -np.inf), (window, t, s, mask[t, s])


# -- activations ----------------------------------------------------------------------------

def test_gelu(xp):
    rng = np.random.default_rng(6)
    x = randn(xp, rng, 3, 7, scale=2.0)
    y, _ = gelu_forward(x)
    np.testing.assert_allclose(to_np(y), naive_gelu(to_np(x)), rtol=1e-12, atol=1e-15)
    assert_grads("gelu", check_op(gelu_forward, gelu_backward, [x]))


def test_relu(xp):
    rng = np.random.default_rng(7)
    x = randn(xp, rng, 4, 5)
    x[xp.abs(x) < 1e-3] = 0.5  # keep finite differences away from the kink
    y, _ = relu_forward(x)
    np.testing.assert_array_equal(to_np(y), np.maximum(to_np(x), 0))
    assert_grads("relu", check_op(relu_forward, relu_backward, [x]))


# -- dropout ---------------------------------------------------------------------------------

def test_dropout(xp):
    x = xp.ones((200, 50))
    y, mask = dropout_forward(x, 0.25, xp.random.default_rng(0))
    kept = to_np(y) != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(to_np(y)[kept], 1 / 0.75)
    y2, _ = dropout_forward(x, 0.25, xp.random.default_rng(0))
    np.testing.assert_array_equal(to_np(y), to_np(y2))  # seeded
    y_eval, cache = dropout_forward(x, 0.25, xp.random.default_rng(0), training=False)
    assert y_eval is x and cache is None
    dy = xp.full(x.shape, 2.0)
    np.testing.assert_array_equal(to_np(dropout_backward(dy, mask)), 2.0 * to_np(y))
    rng = np.random.default_rng(8)
    xs = randn(xp, rng, 5, 6)
    errs = check_op(lambda a: dropout_forward(a, 0.4, xp.random.default_rng(1)),
                    dropout_backward, [xs])
    assert_grads("dropout", errs)


# -- cross-entropy -----------------------------------------------------------------------------

def test_cross_entropy(xp):
    rng = np.random.default_rng(9)
    logits = randn(xp, rng, 2, 4, 7, scale=3.0)
    targets = xp.asarray([[1, 6, -1, 0], [3, 3, -1, 2]])
    loss, _ = cross_entropy_forward(logits, targets)
    lg, tg = to_np(logits), to_np(targets)
    terms = [-math.log(math.exp(lg[b, t, tg[b, t]]) / sum(math.exp(v) for v in lg[b, t]))
             for b in range(2) for t in range(4) if tg[b, t] != -1]
    assert abs(float(loss) - sum(terms) / len(terms)) < 1e-12
    errs = check_op(lambda lo: cross_entropy_forward(lo, targets), cross_entropy_backward,
                    [logits], dout=xp.asarray(1.0))
    assert_grads("cross_entropy", errs)


def test_cross_entropy_extreme_logits(xp):
    logits = xp.asarray([[-1000.0, 1.0], [1000.0, -1000.0]])
    loss, cache = cross_entropy_forward(logits, xp.asarray([0, 0]))
    assert abs(float(loss) - 1001.0 / 2) < 1e-9  # row 1: -log softmax = 1001; row 2: 0
    d = to_np(cross_entropy_backward(1.0, cache))
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d, [[-0.5, 0.5], [0.0, 0.0]], atol=1e-12)


def test_cross_entropy_all_ignored(xp):
    loss, cache = cross_entropy_forward(xp.zeros((3, 4)), xp.asarray([-1, -1, -1]))
    assert float(loss) == 0.0
    assert not np.any(to_np(cross_entropy_backward(1.0, cache)))


@HYP
@given(N=st.integers(1, 8), V=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_cross_entropy_properties(N, V, seed):
    rng = np.random.default_rng(seed)
    # |logit gaps| <= 6 keeps every probability >= e^-6: with a saturated softmax the
    # gradient is ~1e-7 and central differences measure only rounding (the stability of
    # extreme logits is the test above)
    logits = rng.uniform(-3.0, 3.0, size=(N, V))
    targets = rng.integers(-1, V, size=N)
    loss, _ = cross_entropy_forward(logits, targets)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    valid = targets != -1
    ref = -np.log(p[np.arange(N), np.where(valid, targets, 0)])[valid].mean() if valid.any() \
        else 0.0
    assert abs(float(loss) - ref) < 1e-10
    # ignored targets: changing their logits changes nothing
    logits2 = logits.copy()
    logits2[~valid] += 100.0
    assert float(cross_entropy_forward(logits2, targets)[0]) == float(loss)
    errs = check_op(lambda lo: cross_entropy_forward(lo, targets), cross_entropy_backward,
                    [logits], dout=np.asarray(1.0))
    if valid.any():
        assert_grads("cross_entropy", errs)


# -- purity ------------------------------------------------------------------------------------

def test_ops_do_not_modify_inputs(xp):
    rng = np.random.default_rng(10)
    x, W, b = randn(xp, rng, 2, 3, 6), randn(xp, rng, 6, 6), randn(xp, rng, 6)
    qkv = randn(xp, rng, 2, 3, 18)
    logits, targets = randn(xp, rng, 4, 5), xp.asarray([0, 1, -1, 4])
    idx = xp.asarray([[0, 5, 5], [1, 0, 5]])
    cases = [
        (lambda: embedding_forward(idx, W), embedding_backward),
        (lambda: position_embedding_forward(x, W, 1), position_embedding_backward),
        (lambda: dropout_forward(x, 0.5, xp.random.default_rng(0)), dropout_backward),
        (lambda: attention_forward(qkv, 2, dropout=0.5, rng=xp.random.default_rng(0)),
         attention_backward),
        (lambda: linear_forward(x, W, b), linear_backward),
        (lambda: layernorm_forward(x, W[0], b), layernorm_backward),
        (lambda: attention_forward(qkv, 2), attention_backward),
        (lambda: gelu_forward(x), gelu_backward),
        (lambda: relu_forward(x), relu_backward),
        (lambda: cross_entropy_forward(logits, targets), cross_entropy_backward),
    ]
    for fwd, bwd in cases:
        before = [to_np(a).copy() for a in (x, W, b, qkv, logits, targets, idx)]
        out, cache = fwd()
        dout = xp.ones_like(out)
        dout_before = to_np(dout).copy()
        bwd(dout, cache)
        for a, ref in zip((x, W, b, qkv, logits, targets, idx), before):
            np.testing.assert_array_equal(to_np(a), ref)
        np.testing.assert_array_equal(to_np(dout), dout_before)
