"""The numba CPU kernels (tinygrad_char/fused/cpu/) against their xp twins, the op table
dispatch.select_ops builds for modes "cpu" and "auto", runtime's thread policy, the public
AdamW and clip, and the package without numba.

Every kernel runs on awkward shapes (T = 1, T = block_size, C not a multiple of the 8-float
vector width, V = 1 and a large V, ignored targets, logits near +-1000), forward and
backward. Errors are measured normwise, max|got - want| / max|want|, so that entries
near zero (masked probabilities, far-off classes) do not need an absolute tolerance:

- float32: 1e-5. The kernels sum in another order than NumPy/BLAS and use the
  approximations of fused/cpu/_jit.py (exp 3e-7, tanh 3e-7 worst error); measured errors
  are 1e-7 to 3e-6 (GELU's backward is the largest: h (1 - h) amplifies tanh's error).
- float64 (linear, LayerNorm, ReLU, embedding, dropout, AdamW): 1e-12, the same math in
  another order.

Every test runs twice (the `kernel_builds` fixture): with the library's rules for small
work on one thread (serial builds, twins for small products), and with every call through
the parallel builds on a pool of two threads.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tinygrad_char.ops import activations, attention, cross_entropy, embedding, layernorm
from tinygrad_char.fused import dispatch
from tinygrad_char import optim, runtime
from tinygrad_char.fused.cpu import numba_available
from tinygrad_char.model import GPT, GPTConfig

from conftest import REPO

pytestmark = pytest.mark.skipif(not numba_available(),
                                reason="numba does not import here (the CPU kernels need it)")

TOL = {np.float32: 1e-5, np.float64: 1e-12}
BLOCK_SIZE = 64  # the T = block_size case of the tests below


def cpu():
    from tinygrad_char.fused.cpu import _jit, adamw, attention as k_att  # noqa: F401
    from tinygrad_char.fused.cpu import cross_entropy as k_ce, embedding as k_emb
    from tinygrad_char.fused.cpu import gelu as k_gelu, layernorm as k_ln
    return _jit, adamw, k_att, k_ce, k_emb, k_gelu, k_ln


def cpu_more():
    from tinygrad_char.fused.cpu import dropout as k_drop, linear as k_lin
    return k_lin, k_drop


@pytest.fixture(autouse=True, params=["as-called", "all-parallel"])
def kernel_builds(request, monkeypatch):
    """Every test twice: "as-called", on one thread with the library's small-work rules
    (calls below _jit.SERIAL_BELOW take a kernel's serial build, small products and
    lookups the twin); "all-parallel", every call through the parallel builds on a pool of
    two threads (the row blocks and partial sums change with the count). The pool is put
    back as it was."""
    _jit = cpu()[0]
    before = runtime.threads()
    if request.param == "all-parallel":
        for name in ("SERIAL_BELOW", "SMALL_MATMUL"):  # _jit's per-call rules
            monkeypatch.setattr(_jit, name, 0)
        runtime.set_threads(2)
    else:
        runtime.set_threads(1)
    yield request.param
    runtime.set_threads(before or 0)


def assert_close(name, got, want, dtype=np.float32, floor=1e-30):
    """Normwise: max|got - want| <= TOL * max(max|want|, floor); floor for results that
    are zero in exact arithmetic (LayerNorm's dx when C = 1)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    err = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    scale = max(float(np.max(np.abs(want), initial=0.0)), floor)
    assert err <= TOL[dtype] * scale, \
        f"{name}: max abs error {err:.3e} is {err / scale:.2e} of max |want| " \
        f"{scale:.3e} (tolerance {TOL[dtype]:g})"


def randn(rng, shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# == the vectorised math =======================================================================

def _math_kernels():
    """exp_into, row_max_bits and tanh_approx over whole arrays, compiled here (they are
    helpers inlined into the kernels; the library has no array versions of them)."""
    import numba

    _jit = cpu()[0]

    @numba.njit(error_model="numpy", fastmath=_jit.FASTMATH)
    def exp_array(x, out):
        bits = np.empty(x.size, np.int32)
        _jit.exp_into(x, out, bits)

    @numba.njit(error_model="numpy", fastmath=_jit.FASTMATH)
    def row_max_array(x, n, out):
        for i in range(x.shape[0]):
            bits = np.empty(1, np.int32)
            bits[0] = _jit.row_max_bits(x[i].view(np.int32), n)
            out[i] = bits.view(np.float32)[0]

    @numba.njit(error_model="numpy", fastmath=_jit.FASTMATH)
    def tanh_array(x, out):
        for i in range(x.size):
            out[i] = _jit.tanh_approx(x[i])

    return exp_array, row_max_array, tanh_array


MATH = {}


def math_kernel(name):
    if not MATH:
        MATH.update(zip(("exp_array", "row_max_array", "tanh_array"), _math_kernels()))
    return MATH[name]


def test_tanh_approximation_worst_error_is_as_stated():
    _jit = cpu()[0]
    x = np.linspace(-20.0, 20.0, 400_001, dtype=np.float32)
    x = np.concatenate([x, np.float32([0.0, -0.0, 1e-30, _jit.TANH_CLAMP, -_jit.TANH_CLAMP])])
    out = np.empty_like(x)
    math_kernel("tanh_array")(x, out)
    err = np.abs(out.astype(np.float64) - np.tanh(x.astype(np.float64)))
    worst = float(err.max())
    assert worst <= _jit.TANH_MAX_ABS_ERROR, \
        f"tanh_approx: worst abs error {worst:.3e} at x={x[err.argmax()]}, stated " \
        f"{_jit.TANH_MAX_ABS_ERROR:.1e}"
    assert np.all(np.abs(out) <= 1.0), "tanh_approx: |tanh| exceeds 1"
    assert out[x >= _jit.TANH_CLAMP].min() == 1.0, "tanh_approx: not exactly 1 when saturated"
    # near 0 the error is relative (tanh x ~ x): GELU's small activations keep their digits
    small = (np.abs(x) < 0.1) & (x != 0)
    rel = err[small] / np.abs(np.tanh(x[small].astype(np.float64)))
    assert rel.max() < 1e-6, f"tanh_approx: relative error {rel.max():.2e} near 0"


def test_exp_approximation_error():
    x = np.linspace(-87.0, 0.0, 400_001, dtype=np.float32)
    out = np.empty_like(x)
    math_kernel("exp_array")(x, out)
    want = np.exp(x.astype(np.float64))
    rel = float((np.abs(out - want) / want).max())
    assert rel < 5e-7, f"exp_into: worst relative error {rel:.2e} on [-87, 0]"
    special = np.float32([-np.inf, -1000.0, -88.0, 0.0])
    math_kernel("exp_array")(special, out[:4])
    assert list(out[:4]) == [0.0, 0.0, 0.0, 1.0], f"exp_into at -inf/-1000/-88/0: {out[:4]}"
    math_kernel("exp_array")(np.float32([np.nan, -np.nan]), out[:2])
    assert np.isnan(out[:2]).all(), f"exp_into lost a NaN: exp(nan), exp(-nan) = {out[:2]}"


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 64, 283])
def test_row_max_is_the_exact_max_of_the_first_n(n):
    rng = np.random.default_rng(n)
    rows = randn(rng, (6, n + 3), scale=1000.0)  # the 3 past n must be ignored
    rows[:, n:] = 1e30
    rows[1, :n] = -np.inf
    rows[2, :n] = -rows[2, :n] ** 2 - 1.0  # all negative
    rows[3, :n] = 0.0
    rows[3, 0] = -0.0
    rows[4, n - 1] = np.inf
    rows[5, :n] = np.float32(1e-42)  # subnormals
    out = np.empty(6, np.float32)
    math_kernel("row_max_array")(rows, n, out)
    np.testing.assert_array_equal(out, rows[:, :n].max(axis=1), err_msg=f"row_max, n={n}")
    rows[0, n // 2] = np.nan
    math_kernel("row_max_array")(rows, n, out)
    assert np.isnan(out[0]), f"row_max, n={n}: a NaN in the row gave {out[0]}"


# == LayerNorm =================================================================================

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 5), (2, BLOCK_SIZE, 33), (3, 7, 128), (4, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_kernel(shape, bias, dtype):
    k_ln = cpu()[6]
    rng = np.random.default_rng(1)
    C = shape[-1]
    x = randn(rng, shape, dtype, 3.0) + dtype(2.0)
    w, b = randn(rng, (C,), dtype), (randn(rng, (C,), dtype) if bias else None)
    dy = randn(rng, shape, dtype)
    x0 = x.copy()
    y, cache = k_ln.layernorm_forward(x, w, b)
    y0, cache0 = layernorm.layernorm_forward(x, w, b)
    assert_close("layernorm y", y, y0, dtype)
    dx, dw, db = k_ln.layernorm_backward(dy, cache)
    dx0, dw0, db0 = layernorm.layernorm_backward(dy, cache0)
    assert_close("layernorm dx", dx, dx0, dtype, floor=1.0 if C == 1 else 1e-30)
    assert_close("layernorm dw", dw, dw0, dtype)
    assert (db is None) == (not bias)
    if bias:
        assert_close("layernorm db", db, db0, dtype)
    np.testing.assert_array_equal(x, x0, err_msg="layernorm_forward modified its input")


def test_layernorm_kernel_takes_a_non_contiguous_input():
    k_ln = cpu()[6]
    rng = np.random.default_rng(2)
    x = randn(rng, (3, 10, 8)).transpose(1, 0, 2)  # (10, 3, 8), not contiguous
    w, b = randn(rng, (8,)), randn(rng, (8,))
    y, cache = k_ln.layernorm_forward(x, w, b)
    assert_close("layernorm y (strided x)", y, layernorm.layernorm_forward(x, w, b)[0])


# == attention =================================================================================

@pytest.mark.parametrize("B, T, NH, hs", [(2, 1, 2, 4), (1, 5, 1, 3), (3, 17, 2, 5),
                                          (2, BLOCK_SIZE, 4, 32)])
@pytest.mark.parametrize("dropout, training", [(0.0, True), (0.25, True), (0.25, False)])
def test_attention_kernel(B, T, NH, hs, dropout, training):
    k_att = cpu()[2]
    rng = np.random.default_rng(3)
    qkv = randn(rng, (B, T, 3 * NH * hs), scale=2.0)
    dy = randn(rng, (B, T, NH * hs))
    qkv0 = qkv.copy()
    # the same seed for both: the kernel must draw (and apply) the twin's dropout mask
    y, cache = k_att.attention_forward(qkv, NH, dropout, np.random.default_rng(7), training)
    y0, cache0 = attention.attention_forward(qkv, NH, dropout, np.random.default_rng(7),
                                             training)
    assert_close(f"attention y (dropout {dropout}, training {training})", y, y0)
    assert_close("attention dqkv", k_att.attention_backward(dy, cache),
                 attention.attention_backward(dy, cache0))
    np.testing.assert_array_equal(qkv, qkv0, err_msg="attention_forward modified its input")


def test_attention_kernel_probabilities_are_causal_and_stable():
    k_att = cpu()[2]
    rng = np.random.default_rng(4)
    qkv = randn(rng, (1, 9, 3 * 8), scale=300.0)  # scores in the thousands: exp must not overflow
    y, cache = k_att.attention_forward(qkv, 2)
    P = cache["P"]
    assert np.all(np.isfinite(y)), "attention with huge scores gave non-finite y"
    assert np.all(np.triu(P[0, 0], k=1) == 0.0), "attention: a query saw a future key"
    np.testing.assert_allclose(P.sum(axis=-1), 1.0, rtol=1e-6, err_msg="rows do not sum to 1")
    assert_close("attention y, huge scores", y, attention.attention_forward(qkv, 2)[0])


# == GELU, ReLU ===================================================================

SHAPES = [(1, 1, 7), (3, 5, 33), (2, BLOCK_SIZE, 512)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_kernel(shape):
    k_gelu = cpu()[5]
    rng = np.random.default_rng(5)
    x = randn(rng, shape, scale=4.0)
    x.reshape(-1)[:3] = [20.0, -20.0, 0.0]  # saturated both ways, and 0
    dy = randn(rng, shape)
    y, cache = k_gelu.gelu_forward(x)
    y0, cache0 = activations.gelu_forward(x)
    assert_close("gelu y", y, y0)
    assert_close("gelu dx", k_gelu.gelu_backward(dy, cache), activations.gelu_backward(dy, cache0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernel(dtype):
    k_gelu = cpu()[5]
    rng = np.random.default_rng(7)
    x, dy = randn(rng, (3, 5, 33), dtype), randn(rng, (3, 5, 33), dtype)
    x.reshape(-1)[0] = 0.0
    y, cache = k_gelu.relu_forward(x)
    y0, cache0 = activations.relu_forward(x)
    np.testing.assert_array_equal(y, y0, err_msg="relu y")
    np.testing.assert_array_equal(k_gelu.relu_backward(dy, cache),
                                  activations.relu_backward(dy, cache0), err_msg="relu dx")


# == cross-entropy =============================================================================

@pytest.mark.parametrize("N, V", [(1, 1), (7, 1), (5, 65), (2 * BLOCK_SIZE, 65), (3, 50_000)])
@pytest.mark.parametrize("dloss", [1.0, 0.5])
def test_cross_entropy_kernel(N, V, dloss):
    k_ce = cpu()[3]
    rng = np.random.default_rng(8)
    logits = randn(rng, (N, V), scale=4.0)
    targets = rng.integers(0, V, size=N)
    if N > 2:
        targets[1] = -1  # ignored
    y, cache = k_ce.cross_entropy_forward(logits, targets)
    y0, cache0 = cross_entropy.cross_entropy_forward(logits, targets)
    assert_close(f"cross-entropy loss N={N} V={V}", y, y0)
    assert_close("cross-entropy dlogits", k_ce.cross_entropy_backward(dloss, cache),
                 cross_entropy.cross_entropy_backward(dloss, cache0))


def test_cross_entropy_kernel_extremes():
    k_ce = cpu()[3]
    logits = np.float32([[-1000.0, 1.0, 1000.0], [1000.0, 1000.0, -1000.0],
                         [0.0, 0.0, 0.0], [5.0, -1000.0, 2.0]]).reshape(2, 2, 3)
    for targets in (np.array([[0, 2], [1, -1]]), np.array([[2, 0], [-1, 1]]),
                    np.full((2, 2), -1)):
        y, cache = k_ce.cross_entropy_forward(logits, targets)
        y0, cache0 = cross_entropy.cross_entropy_forward(logits, targets)
        assert_close(f"cross-entropy loss, logits +-1000, targets {targets.tolist()}", y, y0)
        assert_close("cross-entropy dlogits, logits +-1000",
                     k_ce.cross_entropy_backward(1.0, cache),
                     cross_entropy.cross_entropy_backward(1.0, cache0))


@pytest.mark.parametrize("nan", [np.nan, -np.nan])
def test_cross_entropy_and_attention_kernels_keep_a_nan(nan):
    """A NaN logit or score (a diverged run) must reach the loss, as it does in the twins,
    whatever its sign bit: the training loop's divergence check looks for it there."""
    k_att, k_ce = cpu()[2:4]
    logits = np.zeros((3, 40), np.float32)
    logits[1, 7] = nan
    loss, _ = k_ce.cross_entropy_forward(logits, np.array([0, 0, 0]))
    assert np.isnan(loss), f"cross-entropy kernel: a NaN logit ({nan}) gave loss {loss}"
    qkv = np.ones((1, 5, 3 * 4), np.float32)
    qkv[0, 3, 0] = nan  # a query: its scores are NaN
    y, _ = k_att.attention_forward(qkv, 1)
    assert np.isnan(y[0, 3]).all(), f"attention kernel: a NaN score ({nan}) was dropped"


def test_cross_entropy_kernel_rejects_out_of_range_targets():
    k_ce = cpu()[3]
    with pytest.raises(IndexError, match=r"targets must be in \[0, 4\)"):
        k_ce.cross_entropy_forward(np.zeros((2, 4), np.float32), np.array([0, 4]))


# == sampling ==================================================================================

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("top_k, top_p", [(None, None), (1, None), (5, None), (100, None),
                                          (None, 0.3), (None, 1.0), (10, 0.9)])
@pytest.mark.parametrize("B, V", [(1, 1), (3, 2), (400, 65), (8, 1000)])
def test_sampling_kernel(B, V, top_k, top_p, dtype):
    """The same ids as the twin for the same draws, with tied logits (a stable sort: both
    keep id order) and a banned -inf id; an id may differ only where its draw lies within
    rounding of a CDF boundary (the kernel normalises with a sum in another order)."""
    from tinygrad_char.fused.cpu import sampling as k_sampling
    from tinygrad_char.ops import sampling

    rng = np.random.default_rng(B * V)
    logits = (rng.standard_normal((B, V)) * 3).astype(dtype)
    logits[:, ::7] = logits[:, :1]  # exact ties
    if V > 4:
        logits[:, 3] = -np.inf  # a banned id
    uniforms = rng.random((B, 1))
    got = k_sampling.sample_from_uniforms(logits, uniforms, 0.7, top_k, top_p)
    want = sampling.sample_from_uniforms(logits, uniforms, 0.7, top_k, top_p)
    assert got.dtype == np.int64 and got.shape == (B,)
    for b in np.flatnonzero(got != want):
        scaled = np.sort(logits[b].astype(np.float64) / 0.7)[::-1]
        cdf = np.cumsum(np.exp(scaled - scaled[0]))
        u = uniforms[b, 0] * cdf[-1]
        assert np.abs(cdf - u).min() < 1e-12 * cdf[-1], \
            f"row {b}: kernel id {got[b]}, twin {want[b]}, draw not at a CDF boundary"
    assert (got != want).mean() < 0.01, "more ids differ than rounding explains"
    if V > 4:
        assert (got != 3).all(), "the banned (-inf) id was sampled"


def test_sampling_kernel_keeps_tied_logits_in_id_order():
    """All logits equal: top_k = 2 keeps ids 0 and 1 (the stable order), as the twin."""
    from tinygrad_char.fused.cpu import sampling as k_sampling
    from tinygrad_char.ops import sampling

    logits = np.zeros((200, 9), np.float32)
    uniforms = np.random.default_rng(0).random((200, 1))
    for sample in (k_sampling.sample_from_uniforms, sampling.sample_from_uniforms):
        ids = sample(logits, uniforms, 1.0, 2, None)
        assert sorted(set(ids.tolist())) == [0, 1], (sample.__module__, ids[:10])
        assert ids.tolist() == (uniforms[:, 0] >= 0.5).astype(int).tolist()


# == embedding backward ========================================================================

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, T, V, C", [(1, 1, 1, 5), (2, BLOCK_SIZE, 65, 33), (3, 9, 300, 16)])
def test_embedding_backward_kernel(B, T, V, C, dtype):
    k_emb = cpu()[4]
    rng = np.random.default_rng(9)
    idx = rng.integers(0, min(V, 4), size=(B, T))  # few ids: many repeats
    dout = randn(rng, (B, T, C), dtype)
    got = k_emb.embedding_backward(dout, (idx, V))
    assert_close("embedding dW", got, embedding.embedding_backward(dout, (idx, V)), dtype)
    np.testing.assert_array_equal(got, k_emb.embedding_backward(dout, (idx, V)),
                                  err_msg="embedding backward is not bit-reproducible")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, T, V, C", [(1, 1, 1, 5), (2, BLOCK_SIZE, 65, 33), (3, 9, 300, 16)])
def test_embedding_forward_kernel(B, T, V, C, dtype):
    k_emb = cpu()[4]
    rng = np.random.default_rng(10)
    idx = rng.integers(0, V, size=(B, T))
    W = randn(rng, (V, C), dtype)
    out, cache = k_emb.embedding_forward(idx, W)
    want, want_cache = embedding.embedding_forward(idx, W)
    np.testing.assert_array_equal(out, want)  # a copy: exact
    assert out.dtype == want.dtype and cache[1] == want_cache[1]


def test_embedding_forward_kernel_out_of_range_ids_behave_as_numpy():
    k_emb = cpu()[4]
    W = np.arange(12, dtype=np.float32).reshape(4, 3)
    for bad in (4, 100):
        with pytest.raises(IndexError, match="out of bounds"):
            k_emb.embedding_forward(np.array([[0, bad]]), W)
    out, _ = k_emb.embedding_forward(np.array([[-1, 0]]), W)  # NumPy's take wraps -1
    np.testing.assert_array_equal(out, embedding.embedding_forward(np.array([[-1, 0]]), W)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, T, C, start", [(1, 1, 5, 0), (2, BLOCK_SIZE, 33, 0),
                                            (3, 7, 16, 5)])
def test_position_embedding_kernel(B, T, C, start, dtype):
    k_emb = cpu()[4]
    rng = np.random.default_rng(11)
    tok, W = randn(rng, (B, T, C), dtype), randn(rng, (BLOCK_SIZE + 8, C), dtype)
    out, cache = k_emb.position_embedding_forward(tok, W, start)
    want, want_cache = embedding.position_embedding_forward(tok, W, start)
    np.testing.assert_array_equal(out, want)  # one add per element: exact
    assert cache == want_cache
    dout = randn(rng, (B, T, C), dtype)
    assert_close("position dW", k_emb.position_embedding_backward(dout, cache),
                 embedding.position_embedding_backward(dout, want_cache), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7, 33), (2, BLOCK_SIZE, 128)])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_dropout_kernel_draws_and_applies_the_twins_mask(shape, p, dtype):
    from tinygrad_char.ops import dropout

    k_drop = cpu_more()[1]
    x = randn(np.random.default_rng(12), shape, dtype)
    y, mask = k_drop.dropout_forward(x, p, np.random.default_rng(5))
    y0, mask0 = dropout.dropout_forward(x, p, np.random.default_rng(5))
    np.testing.assert_array_equal(y, y0)  # the same draw and the same float ops: exact
    if p == 0.0:
        assert mask is None and mask0 is None
    else:
        np.testing.assert_array_equal(mask, mask0)
    dy = randn(np.random.default_rng(13), shape, dtype)
    np.testing.assert_array_equal(k_drop.dropout_backward(dy, mask),
                                  dropout.dropout_backward(dy, mask0))
    y_eval, cache = k_drop.dropout_forward(x, p, np.random.default_rng(5), training=False)
    assert y_eval is x and cache is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape_in, n_out", [((1, 1, 5), 3), ((2, BLOCK_SIZE, 33), 65),
                                             ((3, 7, 128), 512), ((5, 16), 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_kernel(shape_in, n_out, bias, dtype, monkeypatch):
    from tinygrad_char.ops import linear

    k_lin = cpu_more()[0]
    monkeypatch.setattr(cpu()[0], "SMALL_MATMUL", 0)  # the kernel on the tiny shapes too
    rng = np.random.default_rng(14)
    x = randn(rng, shape_in, dtype)
    W = randn(rng, (n_out, shape_in[-1]), dtype)
    b = randn(rng, (n_out,), dtype) if bias else None
    y, cache = k_lin.linear_forward(x, W, b)
    y0, cache0 = linear.linear_forward(x, W, b)
    assert_close("linear y", y, y0, dtype)
    dy = randn(rng, y.shape, dtype)
    for name, got, want in zip(("dx", "dW", "db"), k_lin.linear_backward(dy, cache),
                               linear.linear_backward(dy, cache0)):
        if want is None:
            assert got is None, f"linear {name}: expected None without a bias"
        else:
            assert_close(f"linear {name}", got, want, dtype)


def test_linear_kernel_small_products_go_to_the_twin(kernel_builds):
    if kernel_builds == "all-parallel":
        pytest.skip("the small-work rule is off in this variant (every call parallel)")
    k_lin = cpu_more()[0]
    x, W = np.ones((1, 1, 8), np.float32), np.ones((4, 8), np.float32)
    assert cpu()[0].too_small(x.size * W.shape[0], matmul=True)
    y, cache = k_lin.linear_forward(x, W)
    np.testing.assert_array_equal(y, np.full((1, 1, 4), 8.0, np.float32))


def test_linear_kernel_is_deterministic_for_a_thread_count():
    k_lin = cpu_more()[0]
    rng = np.random.default_rng(15)
    x, W, dy = randn(rng, (4, 33, 40)), randn(rng, (24, 40)), randn(rng, (4, 33, 24))
    first = k_lin.linear_backward(dy, k_lin.linear_forward(x, W, W[0, :24])[1])
    for _ in range(3):
        again = k_lin.linear_backward(dy, k_lin.linear_forward(x, W, W[0, :24])[1])
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("NH, NKV", [(4, 2), (4, 1), (2, 2)])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_gqa_attention_kernel(NH, NKV, dropout):
    k_att = cpu()[2]
    rng = np.random.default_rng(16)
    B, T, hs = 2, 9, 4
    qkv = randn(rng, (B, T, (NH + 2 * NKV) * hs), scale=2.0)
    dy = randn(rng, (B, T, NH * hs))
    y, cache = k_att.gqa_attention_forward(qkv, NH, NKV, dropout, np.random.default_rng(7))
    y0, cache0 = attention.gqa_attention_forward(qkv, NH, NKV, dropout,
                                                 np.random.default_rng(7))
    assert_close("gqa y", y, y0)
    assert_close("gqa dqkv", k_att.gqa_attention_backward(dy, cache),
                 attention.gqa_attention_backward(dy, cache0))
    # a sliding window shorter than T is the op table's windowed entry, never the kernel
    with pytest.raises(AssertionError):
        k_att.gqa_attention_forward(qkv, NH, NKV, 0.0, None, True, 4)


def test_attention_kernel_on_one_and_two_threads():
    k_att = cpu()[2]
    rng = np.random.default_rng(17)
    qkv = randn(rng, (3, 17, 3 * 2 * 5), scale=2.0)
    y, cache = k_att.attention_forward(qkv, 2, 0.2, np.random.default_rng(1))
    y0, cache0 = attention.attention_forward(qkv, 2, 0.2, np.random.default_rng(1))
    assert_close("attention y", y, y0)
    dy = randn(rng, y.shape)
    assert_close("attention dqkv", k_att.attention_backward(dy, cache),
                 attention.attention_backward(dy, cache0))


def test_set_threads_gives_the_pool_the_cores_and_blas_one_thread():
    from threadpoolctl import threadpool_info

    import numba

    before = runtime.threads()
    try:
        assert runtime.set_threads(1) == 1 and numba.get_num_threads() == 1
        n = runtime.set_threads(0)
        assert n == min(runtime.cores(), numba.config.NUMBA_NUM_THREADS)
        assert numba.get_num_threads() == n == runtime.threads()
        blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert blas and all(lib["num_threads"] == 1 for lib in blas), blas
        # SciPy's BLAS (numba's np.dot calls it) is loaded before the limit, so it has it too
        assert any("scipy" in os.path.basename(os.path.dirname(lib["filepath"]))
                   for lib in blas), [lib["filepath"] for lib in blas]
        runtime.set_threads(2, cpu_kernels=False)  # the xp ops alone: BLAS gets the threads
        blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert all(lib["num_threads"] == min(2, runtime.cores()) for lib in blas), blas
    finally:
        runtime.set_threads(before or 0)


def test_few_rows_gives_blas_the_threads_and_the_kernels_one_for_a_block():
    from threadpoolctl import threadpool_info

    import numba

    if runtime.cores() < 2 or numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 cores: with one there is nothing to move between the pools")

    def blas():  # {library file: threads}
        return {os.path.basename(lib["filepath"]): lib["num_threads"]
                for lib in threadpool_info() if lib["user_api"] == "blas"}

    runtime.set_threads(2)
    numpy_blas = [os.path.basename(lib.filepath)
                  for lib in runtime._numpy_blas().lib_controllers]
    assert numpy_blas, "NumPy's BLAS not found among the loaded ones"
    with runtime.few_rows():
        assert numba.get_num_threads() == 1
        # NumPy's BLAS gets the threads, SciPy's (the kernels' np.dot) keeps one
        assert {lib: n for lib, n in blas().items()} == \
            {lib: (2 if lib in numpy_blas else 1) for lib in blas()}, blas()
    assert numba.get_num_threads() == 2 and set(blas().values()) == {1}, blas()
    runtime.set_threads(1)
    with runtime.few_rows():  # a pool of one: nothing moves
        assert numba.get_num_threads() == 1 and set(blas().values()) == {1}


# == AdamW =====================================================================================

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_cpu_adamw_matches_optim_adamw(dtype, weight_decay):
    adamw = cpu()[1]
    rng = np.random.default_rng(10)
    shapes = {"w": (33, 7), "b": (7,), "e": (1, 1)}
    mine = {k: randn(rng, s, dtype) for k, s in shapes.items()}
    ref = {k: v.copy() for k, v in mine.items()}
    opt = adamw.CpuAdamW(mine, 3e-2, (0.9, 0.99), weight_decay=weight_decay)
    opt0 = optim.AdamW(ref, 3e-2, (0.9, 0.99), weight_decay=weight_decay)
    for step in range(4):
        grads = {k: randn(rng, s, dtype) for k, s in shapes.items()}
        grads0 = {k: g.copy() for k, g in grads.items()}
        norm, norm0 = opt.grad_norm(grads), opt0.grad_norm(grads0)
        # the kernel squares in float64, the twin in the grads' dtype, both sum in float64
        tol = 1e-6 if dtype == np.float32 else 1e-12
        assert abs(norm - norm0) <= tol * norm0, f"grad_norm {norm} against {norm0}"
        scale = optim.clip_scale(norm0, 2.0 if step % 2 else 0.0)  # clipped, then not
        opt.step(grads, lr=None if step < 2 else 1e-2, grad_scale=scale)
        opt0.step(grads0, lr=None if step < 2 else 1e-2, grad_scale=scale)
        np.testing.assert_array_equal(grads["w"], grads0["w"], err_msg="step modified grads")
    for k in shapes:
        assert_close(f"AdamW param {k}", mine[k], ref[k], dtype)
        assert_close(f"AdamW m {k}", opt.m[k], opt0.m[k], dtype)
        assert_close(f"AdamW v {k}", opt.v[k], opt0.v[k], dtype)
    # the state round-trips through optim.AdamW's format (what checkpoints hold)
    state = opt.state_dict()
    again = adamw.CpuAdamW({k: v.copy() for k, v in mine.items()}, 3e-2, (0.9, 0.99),
                           weight_decay=weight_decay)
    again.load_state_dict(state)
    assert again.step_count == 4
    for k in shapes:
        np.testing.assert_array_equal(again.m[k], opt.m[k], err_msg=f"restored m {k}")


# == dispatch ==================================================================================

CFG = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


def test_cpu_table_uses_the_kernels():
    from tinygrad_char.fused import cpu as cpu_kernels

    ops = dispatch.select_ops("cpu", "numpy", CFG)
    for name, (op, _) in cpu_kernels.kernels().items():
        assert getattr(ops, name) is op, f"select_ops('cpu').{name} is not the CPU kernel"
    assert ops.gelu_exact_forward is dispatch.Ops().gelu_exact_forward  # no kernel
    assert dispatch.select_ops("auto", "numpy", CFG) == ops, "auto on NumPy is 'cpu'"


@pytest.mark.filterwarnings("ignore:kernels 'cpu'")  # the fallbacks, listed once (below)
def test_cpu_table_is_chosen_once_by_dtype():
    f64 = dispatch.describe(dispatch.select_ops("cpu", "numpy", CFG, "float64"))
    assert f64["linear_forward"] == f64["layernorm_backward"] == f64["AdamW"] == "numba"
    assert f64["attention_forward"] == f64["gelu_forward"] == "xp", "float32-only kernels"
    assert f64["cross_entropy_forward"] == "xp"
    mixed = dispatch.describe(dispatch.select_ops("cpu", "numpy", CFG, "float32", "float16"))
    assert mixed["layernorm_forward"] == mixed["cross_entropy_forward"] == "numba", mixed
    for name in ("linear_forward", "attention_forward", "gelu_forward", "dropout_forward"):
        assert mixed[name] == "xp", (name, "sees float16 in mixed precision")
    # forward and backward always together
    for described in (f64, mixed):
        for name, impl in described.items():
            if name.endswith("_forward") and name[:-8] + "_backward" in described:
                assert described[name[:-8] + "_backward"] == impl, name


def xp_fallbacks(model):
    """The op families a model runs on the xp ops that its fast path does not mean to."""
    from tinygrad_char.fused.cpu import XP_BY_DESIGN

    return list(dict.fromkeys(dispatch.family(name) for name, impl in
                              model.describe_ops().items() if impl == "xp" and
                              dispatch.family(name) not in XP_BY_DESIGN))


def test_requested_kernels_say_once_what_falls_back(recwarn):
    llama = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8,
                      pos_encoding="rope", normalization="rmsnorm", activation="swiglu",
                      n_kv_head=1)
    for cfg in (llama, CFG, GPTConfig(**{**CFG.to_dict(), "activation": "gelu_exact"})):
        recwarn.clear()
        model = GPT(cfg, kernels="cpu")
        said = [str(w.message) for w in recwarn if "kernels" in str(w.message)]
        missing = xp_fallbacks(model)
        if not missing:  # GPT-2's block: every op has a kernel, nothing to say
            assert said == [], said
            continue
        assert len(said) == 1 and said[0].startswith("kernels 'cpu': no numba kernel for "), \
            said
        assert all(f in said[0] for f in missing), (missing, said)
        assert model.describe_ops()["gqa_attention_forward" if cfg is llama else
                                    "attention_forward"] == "numba"
    assert xp_fallbacks(GPT(CFG, kernels="cpu")) == []
    assert "gelu_exact" in xp_fallbacks(model)  # no kernel for it: said above
    recwarn.clear()
    GPT(llama, kernels="auto")  # "auto" does not warn: the entry points print the summary
    assert not [w for w in recwarn if "kernels" in str(w.message)]
    assert GPT(CFG).ops_summary() == ("kernels: numba (embedding, position_embedding, "
                                      "dropout, layernorm, linear, attention, gelu, "
                                      "cross_entropy, sample_from_uniforms, adamw), xp "
                                      "(cached_attention)")
    line = GPT(llama).ops_summary()
    assert line.startswith("kernels: numba (embedding, dropout, ") and "gqa_attention" in \
        line.split("xp (")[0] and "windowed_attention, cached_attention" in line, line


def test_public_adamw_and_clip_run_the_kernels():
    from tinygrad_char.fused.cpu.adamw import CpuAdamW
    import tinygrad_char

    rng = np.random.default_rng(3)
    params = {"w": randn(rng, (9, 5)), "b": randn(rng, (5,))}
    assert isinstance(tinygrad_char.AdamW(params), CpuAdamW)
    assert type(tinygrad_char.AdamW({"w": np.ones((2, 2), np.float16)})) is optim.AdamW
    grads = {k: randn(rng, v.shape) * 10 for k, v in params.items()}
    ref = {k: g.copy() for k, g in grads.items()}
    norm, norm0 = tinygrad_char.clip_grad_norm(grads, 1.0), optim.clip_grad_norm(ref, 1.0)
    assert abs(norm - norm0) <= 1e-6 * norm0
    for k in grads:
        assert_close(f"clipped grad {k}", grads[k], ref[k])


def test_train_config_defaults_to_auto_and_accepts_cpu():
    from tinygrad_char.training.config import TrainConfig
    from tinygrad_char.model import ConfigError

    assert TrainConfig().kernels == "auto"
    TrainConfig(kernels="cpu").validate()
    with pytest.raises(ConfigError, match="kernels"):
        TrainConfig(kernels="numba").validate()


# == the whole model ===========================================================================

@pytest.mark.parametrize("variant", [dict(), dict(dropout=0.2), dict(bias=False, tie_weights=False),
                                     dict(activation="relu", norm="post")])
def test_model_gradients_with_default_kernels_match_xp(variant):
    cfg = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=20, **variant)
    rng = np.random.default_rng(11)
    idx, targets = rng.integers(0, 11, (3, 16)), rng.integers(0, 11, (3, 16))
    targets[0, :4] = -1
    results = {}
    for mode in ("xp", None):  # None: GPT's default, "auto"
        model = GPT(cfg, seed=5) if mode is None else GPT(cfg, seed=5, kernels=mode)
        logits, loss = model.forward(idx, targets)
        results[model.kernels] = (logits, loss, model.backward())
    assert set(results) == {"xp", "auto"}, f"GPT's default kernels: {set(results)}"
    (lx, lossx, gx), (la, lossa, ga) = results["xp"], results["auto"]
    assert_close(f"model logits {variant}", la, lx)
    assert_close(f"model loss {variant}", lossa, lossx)
    for name in gx:
        assert_close(f"model grad {name} {variant}", ga[name], gx[name])


def test_model_trains_the_same_with_cpu_kernels():
    from tinygrad_char.training.train import clip_and_step

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
    rng = np.random.default_rng(12)
    idx, targets = rng.integers(0, 13, (4, 8)), rng.integers(0, 13, (4, 8))
    losses = {}
    for mode in ("xp", "cpu"):
        model = GPT(cfg, seed=1, kernels=mode)
        opt = model.ops.AdamW(model.params, 1e-2, (0.9, 0.99), weight_decay=0.1)
        for step in range(5):
            model.seed_dropout(step)
            _, loss = model.forward(idx, targets)
            clip_and_step(model.backward(), opt, None, 1.0)
        losses[mode] = float(loss)
    assert abs(losses["cpu"] - losses["xp"]) < 1e-4 * abs(losses["xp"]), losses


# == without numba =============================================================================

HIDE_NUMBA = """
import sys
sys.modules["numba"] = None  # import numba now raises ImportError
import numpy as np
import tinygrad_char
from tinygrad_char.fused import dispatch
from tinygrad_char.backend import BackendError
from tinygrad_char.model import GPT, GPTConfig
from tinygrad_char.training.train import clip_and_step
assert dispatch.select_ops("auto") == dispatch.Ops(), "auto without numba must run the xp ops"
try:
    dispatch.select_ops("cpu")
    raise SystemExit("select_ops('cpu') without numba did not raise")
except BackendError as e:
    assert "numba" in str(e) and "--kernels xp" in str(e), str(e)
model = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8))
opt = model.ops.AdamW(model.params, 1e-2)
first = None
for step in range(5):
    _, loss = model.forward(np.arange(16).reshape(2, 8) % 7, (np.arange(16).reshape(2, 8) + 1) % 7)
    first = float(loss) if first is None else first
    clip_and_step(model.backward(), opt, None, 1.0)
assert float(loss) < first, (first, float(loss))
assert type(tinygrad_char.AdamW(model.params)) is tinygrad_char.optim.AdamW
assert "numba" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok", model.kernels, set(model.describe_ops().values()))
"""


def test_package_imports_and_trains_without_numba():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", HIDE_NUMBA], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)
    assert done.returncode == 0 and "ok auto {'xp'}" in done.stdout, \
        f"without numba: rc {done.returncode}\n{done.stdout}\n{done.stderr[-2000:]}"


# == the PyTorch oracle, on both CPU modes =======================================================

@pytest.mark.parametrize("kernels_mode", ["xp", "cpu"])
@pytest.mark.parametrize("variant", [dict(), dict(activation="relu", norm="post", bias=False),
                                     dict(tie_weights=False, pos_encoding="sinusoidal")])
def test_matches_pytorch_autograd_in_both_modes(kernels_mode, variant):
    torch = pytest.importorskip("torch", reason="torch not installed: the oracle needs it")
    sys.path.insert(0, str(REPO))
    from benchmarks.torch_gpt import TorchGPT

    cfg = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=32, **variant)
    ours = GPT(cfg, seed=5, kernels=kernels_mode)
    rng = np.random.default_rng(1)
    for p in ours.params.values():  # break the symmetric init of LayerNorm and biases
        p += (rng.standard_normal(p.shape) * 0.05).astype(p.dtype)
    idx, targets = rng.integers(0, 13, size=(3, 16)), rng.integers(0, 13, size=(3, 16))
    targets[0, :4] = -1
    logits, loss = ours.forward(idx, targets)
    grads = ours.backward()
    twin = TorchGPT(cfg, ours.params, dtype=torch.float32)
    t_logits, t_loss = twin(torch.as_tensor(idx), torch.as_tensor(targets))
    t_loss.backward()
    tol = 1e-4  # conftest.TOL["float32"]: two libraries, another summation order
    assert float(np.abs(logits - t_logits.detach().numpy()).max()) <= \
        tol * float(np.abs(t_logits.detach().numpy()).max()), f"{kernels_mode}: logits"
    assert abs(float(loss) - t_loss.item()) <= tol * abs(t_loss.item()), f"{kernels_mode}: loss"
    for name, g in twin.named_grads().items():
        err = float(np.abs(grads[name] - g.numpy()).max()) / float(np.abs(g.numpy()).max())
        assert err <= tol, f"{kernels_mode}: grad {name} off by {err:.2e} of its max"
