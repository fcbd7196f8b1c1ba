"""The CPU kernels of the Llama block (tinygrad_char/fused/cpu/rope.py, rmsnorm.py,
swiglu.py) against their xp twins (ops/rope.py, ops/layernorm.py's rmsnorm_*,
ops/activations.py's swiglu_*), and a Llama-style model run with them against the xp model.

Each kernel runs forward and backward on awkward sizes: T = 1, odd C, head size 2,
grouped-query layouts (NKV < NH) for RoPE, positions that do not start at 0 (generation),
1-d inputs, saturated and NaN gates for SwiGLU, and work arrays below and above
_jit.SERIAL_BELOW. Every test runs twice (the `kernel_builds` fixture): with the library's
rule (calls below SERIAL_BELOW take a kernel's serial build) on one thread, and with every
call through the parallel builds on a pool of two threads.

Errors are normwise, max|got - want| / max|want|, against the tolerances of conftest.TOL
(float32 1e-4; float64 1e-10 for RoPE and RMSNorm, the kernels that take float64). Measured
errors are ~1e-7 to 1e-6 in float32. SwiGLU's sigmoid has its own test: its exp is a
polynomial (swiglu.SILU_MAX_REL_ERROR, checked on a dense grid against float64).
"""

from collections import Counter

import dataclasses

import numpy as np
import pytest

from tinygrad_char.ops import activations, layernorm, rope
from tinygrad_char.fused.cpu import numba_available
from tinygrad_char.model import GPT, GPTConfig

from conftest import TOL

pytestmark = pytest.mark.skipif(not numba_available(),
                                reason="numba does not import here (the CPU kernels need it)")

BLOCK_SIZE = 64  # T = block_size, as the llama_cpu preset


def kernels():
    """The three kernel modules and _jit (imported here: they import numba)."""
    from tinygrad_char.fused.cpu import _jit, rmsnorm as k_rms, rope as k_rope, swiglu as k_sw

    return _jit, k_rope, k_rms, k_sw


@pytest.fixture(autouse=True, params=["as-called", "all-parallel"])
def kernel_builds(request, monkeypatch):
    """Every test twice: "as-called", on one thread with the library's rule (work below
    _jit.SERIAL_BELOW takes the serial build); "all-parallel", every call through the
    parallel builds on a pool of two threads. The pool is put back as it was."""
    import numba

    _jit = kernels()[0]
    before = numba.get_num_threads()
    if request.param == "all-parallel":
        monkeypatch.setattr(_jit, "SERIAL_BELOW", 0)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    else:
        numba.set_num_threads(1)
    yield request.param
    numba.set_num_threads(before)


def assert_close(name, got, want, dtype=np.float32):
    """Normwise: max|got - want| <= TOL[dtype] * max|want|, same shape and dtype."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
    tol = TOL[np.dtype(dtype).name]
    err = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    scale = float(np.max(np.abs(want), initial=0.0))
    assert err <= tol * scale, \
        f"{name}: max abs error {err:.3e} is {err / max(scale, 1e-300):.2e} of max |want| " \
        f"{scale:.3e} (tolerance {tol:g})"


def randn(rng, shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def unchanged(name, *pairs):
    """Each (array, copy taken before the call) is still equal: inputs are not modified."""
    for i, (a, before) in enumerate(pairs):
        np.testing.assert_array_equal(a, before, err_msg=f"{name} modified its input {i}")


# == RoPE ======================================================================================

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, T, NH, NKV, hs, start", [
    (1, 1, 1, 1, 2, 0),  # T = 1, hs = 2: one pair per head
    (2, 7, 4, 2, 6, 0),  # grouped-query (the llama_cpu preset's head ratio), odd hs / 2
    (3, 5, 4, 1, 2, 9),  # one k/v head for four q heads; positions from 9 (generation)
    (1, 3, 2, 2, 8, 0),  # without grouping (NKV = NH)
    (2, BLOCK_SIZE, 4, 2, 32, 0),  # the preset's layer: 32768 elements, above SERIAL_BELOW
])
def test_rope_kernel(B, T, NH, NKV, hs, start, dtype):
    k_rope = kernels()[1]
    rng = np.random.default_rng(1)
    qkv = randn(rng, (B, T, (NH + 2 * NKV) * hs), dtype, 2.0)
    dy = randn(rng, qkv.shape, dtype)
    cos, sin = rope.rope_tables(start, start + T, hs, 10000.0, np, "float32")  # as the model
    copies = [(a, a.copy()) for a in (qkv, cos, sin, dy)]
    out, cache = k_rope.rope_forward(qkv, cos, sin, NH, NKV)
    out0, cache0 = rope.rope_forward(qkv, cos, sin, NH, NKV)
    case = f"rope B={B} T={T} NH={NH} NKV={NKV} hs={hs} start={start} {np.dtype(dtype).name}"
    assert_close(f"{case}: out", out, out0, dtype)
    n_v = NKV * hs * B * T  # v passes through untouched
    np.testing.assert_array_equal(out[..., (NH + NKV) * hs:], qkv[..., (NH + NKV) * hs:],
                                  err_msg=f"{case}: v changed ({n_v} values)")
    assert_close(f"{case}: dqkv", k_rope.rope_backward(dy, cache),
                 rope.rope_backward(dy, cache0), dtype)
    unchanged(case, *copies)


def test_rope_kernel_takes_a_strided_qkv_and_rejects_tables_that_do_not_fit():
    k_rope = kernels()[1]
    rng = np.random.default_rng(2)
    qkv = randn(rng, (5, 3, 16)).transpose(1, 0, 2)  # (3, 5, 16), not contiguous
    cos, sin = rope.rope_tables(0, 5, 4, 10000.0, np)
    assert_close("rope out, strided qkv", k_rope.rope_forward(qkv, cos, sin, 2, 1)[0],
                 rope.rope_forward(qkv, cos, sin, 2, 1)[0])
    with pytest.raises(ValueError, match=r"rope kernel: qkv \(3, 5, 16\) must be"):
        k_rope.rope_forward(qkv, cos[:4], sin[:4], 2, 1)  # tables for 4 positions, T = 5
    with pytest.raises(TypeError, match="float32/float64 NumPy qkv"):
        k_rope.rope_forward(qkv.astype(np.float16), cos, sin, 2, 1)


# == RMSNorm ===================================================================================

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 5), (3, 7, 33), (4, 2), (9,),
                                   (4, BLOCK_SIZE, 128)])  # the last above SERIAL_BELOW
def test_rmsnorm_kernel(shape, dtype):
    k_rms = kernels()[2]
    rng = np.random.default_rng(3)
    C = shape[-1]
    x = randn(rng, shape, dtype, 3.0) + dtype(0.5)
    w, dy = randn(rng, (C,), dtype), randn(rng, shape, dtype)
    copies = [(a, a.copy()) for a in (x, w, dy)]
    y, cache = k_rms.rmsnorm_forward(x, w)
    y0, cache0 = layernorm.rmsnorm_forward(x, w)
    case = f"rmsnorm {shape} {np.dtype(dtype).name}"
    assert_close(f"{case}: y", y, y0, dtype)
    (dx, dw), (dx0, dw0) = k_rms.rmsnorm_backward(dy, cache), layernorm.rmsnorm_backward(dy,
                                                                                        cache0)
    assert_close(f"{case}: dx", dx, dx0, dtype)
    assert_close(f"{case}: dw", dw, dw0, dtype)
    unchanged(case, *copies)


def test_rmsnorm_kernel_takes_a_strided_x_and_rejects_mixed_dtypes():
    k_rms = kernels()[2]
    rng = np.random.default_rng(4)
    x, w = randn(rng, (3, 10, 8)).transpose(1, 0, 2), randn(rng, (8,))  # x not contiguous
    assert_close("rmsnorm y, strided x", k_rms.rmsnorm_forward(x, w)[0],
                 layernorm.rmsnorm_forward(x, w)[0])
    with pytest.raises(TypeError, match="rmsnorm kernel: takes float32/float64 NumPy x and w"):
        k_rms.rmsnorm_forward(x, w.astype(np.float64))
    with pytest.raises(ValueError, match=r"w must be \(8,\)"):
        k_rms.rmsnorm_forward(x, w[:4])


# == SwiGLU ====================================================================================

def test_silu_approximation_worst_error_is_as_stated():
    """silu(g) = g sigmoid(g) from the forward with up = 1, against float64 on a dense grid
    of [-88, 88] (the exp's range), and exactly at the saturations and specials."""
    k_sw = kernels()[3]
    g = np.linspace(-88.0, 88.0, 1_000_001, dtype=np.float32)
    g = np.concatenate([g, np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3])])
    y, _ = k_sw.swiglu_forward(g, np.ones_like(g))
    g64 = g.astype(np.float64)
    want = g64 / (1.0 + np.exp(-g64))
    rel = np.abs(y - want) / np.where(want == 0.0, 1.0, np.abs(want))
    worst = float(rel.max())
    assert worst <= k_sw.SILU_MAX_REL_ERROR, \
        f"swiglu kernel: silu's worst relative error {worst:.2e} at g={g[rel.argmax()]}, " \
        f"stated {k_sw.SILU_MAX_REL_ERROR:.1e}"
    special = np.float32([87.5, 100.0, 1e30, np.inf, -88.5, -1000.0, -1e30])
    y, _ = k_sw.swiglu_forward(special, np.ones_like(special))
    np.testing.assert_array_equal(y[:4], special[:4], err_msg="silu(g) != g where s = 1")
    assert np.all(y[4:] == 0.0), f"silu(g) below -88 is not 0: {y[4:]}"


SWIGLU_SHAPES = [(1, 1, 7), (3, 5, 33), (9,), (2, BLOCK_SIZE, 384)]  # the last: F = 3 C of
#                                                                      the preset, 49152 values


@pytest.mark.parametrize("shape", SWIGLU_SHAPES)
def test_swiglu_kernel(shape):
    k_sw = kernels()[3]
    rng = np.random.default_rng(5)
    gate, up, dy = randn(rng, shape, scale=4.0), randn(rng, shape), randn(rng, shape)
    gate.reshape(-1)[:5] = [20.0, -20.0, 0.0, 100.0, -100.0]  # saturated both ways, and 0
    copies = [(a, a.copy()) for a in (gate, up, dy)]
    y, cache = k_sw.swiglu_forward(gate, up)
    y0, cache0 = activations.swiglu_forward(gate, up)
    assert_close(f"swiglu {shape}: y", y, y0)
    (dg, du), (dg0, du0) = k_sw.swiglu_backward(dy, cache), activations.swiglu_backward(dy,
                                                                                       cache0)
    assert_close(f"swiglu {shape}: dgate", dg, dg0)
    assert_close(f"swiglu {shape}: dup", du, du0)
    unchanged(f"swiglu {shape}", *copies)


def test_swiglu_kernel_keeps_a_nan_and_takes_float32_only():
    """A NaN gate (a diverged run) must reach y and both gradients, as in the twin."""
    k_sw = kernels()[3]
    gate = np.zeros((2, 9), np.float32)
    gate[1, 4] = np.nan
    y, cache = k_sw.swiglu_forward(gate, np.ones_like(gate))
    dg, du = k_sw.swiglu_backward(np.ones_like(gate), cache)
    for name, a in (("y", y), ("dgate", dg), ("dup", du)):
        assert np.isnan(a[1, 4]) and np.isfinite(np.delete(a.reshape(-1), 13)).all(), \
            f"swiglu kernel: a NaN gate gave {name} {a}"
    with pytest.raises(TypeError, match="swiglu kernel: takes float32 NumPy gate and up"):
        k_sw.swiglu_forward(gate.astype(np.float64), gate.astype(np.float64))
    with pytest.raises(ValueError, match="differ in shape"):
        k_sw.swiglu_forward(gate, gate[:, :3])


# == which build runs ==========================================================================

def test_small_work_runs_the_serial_build_and_large_work_the_parallel_one(kernel_builds,
                                                                         monkeypatch):
    """The kernels are compiled by _jit.kernel (two builds): below SERIAL_BELOW elements
    the serial build runs, from it on the parallel one (every call, in "all-parallel")."""
    _jit, k_rope, k_rms, k_sw = kernels()
    ran = Counter()

    def counted(key, fn):
        def build(*args):
            ran[key] += 1
            return fn(*args)
        return build

    for module in (k_rope, k_rms, k_sw):
        for name in ("_rotate", "_forward", "_backward"):
            k = getattr(module, name, None)
            for build in ("serial", "parallel") if k is not None else ():
                key = (f"{module.__name__}.{name}", build)
                monkeypatch.setattr(k, build, counted(key, getattr(k, build)))
    rng = np.random.default_rng(6)
    for size, big in ((4, False), (_jit.SERIAL_BELOW // 64 + 1, True)):  # rows of 64
        ran.clear()
        x = randn(rng, (size, 64))
        cos, sin = rope.rope_tables(0, size, 16, 10000.0, np)
        k_rope.rope_backward(x[None], k_rope.rope_forward(x[None], cos, sin, 2, 1)[1])
        k_rms.rmsnorm_backward(x, k_rms.rmsnorm_forward(x, x[0])[1])
        k_sw.swiglu_backward(x, k_sw.swiglu_forward(x, x)[1])
        want = "parallel" if big or kernel_builds == "all-parallel" else "serial"
        assert set(b for _, b in ran) == {want}, f"{size} x 64 ({kernel_builds}): ran {ran}"
        assert len(ran) == 5, f"not every kernel ran: {ran}"


# == the whole model ===========================================================================

def use_llama_kernels(model, impls):
    """Put `impls` (op name -> function) into the model's op table (a frozen dataclass,
    fused/dispatch.py's Ops: a new table with these entries replaced)."""
    model.ops = dataclasses.replace(model.ops, **impls)


@pytest.mark.parametrize("variant", [dict(bias=False), dict(bias=True, tie_weights=False)])
def test_llama_model_with_the_kernels_matches_xp(variant):
    """A Llama-style GPT (RoPE, RMSNorm, SwiGLU, 4 q heads on 2 k/v heads) on the CPU
    kernels, with rope / rmsnorm / swiglu from this file's modules, against the xp model:
    logits, loss and every gradient."""
    _, k_rope, k_rms, k_sw = kernels()
    cfg = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                    mlp_ratio=3, pos_encoding="rope", normalization="rmsnorm",
                    activation="swiglu", **variant)
    rng = np.random.default_rng(7)
    idx, targets = rng.integers(0, 13, (3, 16)), rng.integers(0, 13, (3, 16))
    targets[0, :4] = -1
    noise = None
    calls = Counter()

    def counted(name, fn):
        def op(*args):
            calls[name] += 1
            return fn(*args)
        return op

    results = {}
    for mode in ("xp", "cpu"):
        model = GPT(cfg, seed=5, kernels=mode)
        if noise is None:  # break the symmetric init (RMSNorm gains of 1)
            noise = {k: randn(rng, p.shape, p.dtype, 0.05) for k, p in model.params.items()}
        for k, p in model.params.items():
            p += noise[k]
        if mode == "cpu":
            use_llama_kernels(model, {f"{op}_{way}": counted(f"{op}_{way}",
                                                              getattr(module, f"{op}_{way}"))
                                      for op, module in (("rope", k_rope), ("rmsnorm", k_rms),
                                                         ("swiglu", k_sw))
                                      for way in ("forward", "backward")})
        logits, loss = model.forward(idx, targets)
        results[mode] = (logits, loss, model.backward())
    L = cfg.n_layer
    assert calls == {"rope_forward": L, "rope_backward": L, "rmsnorm_forward": 2 * L + 1,
                     "rmsnorm_backward": 2 * L + 1, "swiglu_forward": L,
                     "swiglu_backward": L}, f"the model did not run the kernels: {calls}"
    (lx, lossx, gx), (lk, lossk, gk) = results["xp"], results["cpu"]
    assert_close(f"llama model {variant}: logits", lk, lx)
    assert_close(f"llama model {variant}: loss", lossk, lossx)
    assert set(gk) == set(gx), f"gradient keys differ: {set(gk) ^ set(gx)}"
    for name in gx:
        assert_close(f"llama model {variant}: grad {name}", gk[name], gx[name])
