"""The GPT: parameter table, initialisation, config validation, whole-model gradients for
every architecture variant, causality, and CuPy vs NumPy."""

import itertools
import math

import numpy as np
import pytest

from tinygrad_char import GPT, ConfigError, GPTConfig
from tinygrad_char.gradcheck import check_model
from tinygrad_char.model import param_shapes

from conftest import TOL, gpu, to_np

VARIANTS = list(itertools.product([True, False], ["learned", "sinusoidal"], ["pre", "post"],
                                  ["gelu", "relu"], [True, False]))


def tiny_config(tie=True, pos="learned", norm="pre", act="gelu", bias=True, **kw):
    base = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2)
    base.update(kw)
    return GPTConfig(**base, tie_weights=tie, pos_encoding=pos, norm=norm, activation=act,
                     bias=bias)


def batch(cfg, B=2, T=None, seed=0):
    rng = np.random.default_rng(seed)
    T = T or cfg.block_size
    idx = rng.integers(0, cfg.vocab_size, size=(B, T))
    idx[0, :3] = 4  # repeated ids
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets[1, 2] = -1
    return idx, targets


def test_parameter_names_and_shapes_are_nanogpts():
    cfg = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=16)
    shapes = {k: tuple(v.shape) for k, v in GPT(cfg).params.items()}
    expected = {"transformer.wte.weight": (65, 16), "transformer.wpe.weight": (32, 16),
                "transformer.ln_f.weight": (16,), "transformer.ln_f.bias": (16,)}
    for i in range(2):
        h = f"transformer.h.{i}."
        expected.update({h + "ln_1.weight": (16,), h + "ln_1.bias": (16,),
                         h + "attn.c_attn.weight": (48, 16), h + "attn.c_attn.bias": (48,),
                         h + "attn.c_proj.weight": (16, 16), h + "attn.c_proj.bias": (16,),
                         h + "ln_2.weight": (16,), h + "ln_2.bias": (16,),
                         h + "mlp.c_fc.weight": (64, 16), h + "mlp.c_fc.bias": (64,),
                         h + "mlp.c_proj.weight": (16, 64), h + "mlp.c_proj.bias": (16,)})
    assert shapes == expected


def test_variant_parameter_tables():
    no_bias = param_shapes(tiny_config(bias=False))
    assert not any(k.endswith(".bias") for k in no_bias)
    assert "transformer.ln_f.weight" in no_bias
    post = param_shapes(tiny_config(norm="post", pos="sinusoidal", tie=False))
    assert "transformer.ln_f.weight" not in post and "transformer.wpe.weight" not in post
    assert post["lm_head.weight"] == (11, 8)


def test_initialisation_statistics():
    cfg = GPTConfig(vocab_size=64, block_size=64, n_layer=4, n_head=4, n_embd=128)
    p = GPT(cfg, seed=1).params
    assert abs(p["transformer.wte.weight"].std() - 0.02) < 0.001
    assert abs(p["transformer.h.0.mlp.c_fc.weight"].std() - 0.02) < 0.001
    proj_std = 0.02 / math.sqrt(2 * 4)
    assert abs(p["transformer.h.3.attn.c_proj.weight"].std() - proj_std) < 0.0005
    assert abs(p["transformer.h.3.mlp.c_proj.weight"].std() - proj_std) < 0.0005
    assert np.all(p["transformer.h.0.ln_1.weight"] == 1)
    assert np.all(p["transformer.h.0.attn.c_attn.bias"] == 0)
    assert p["transformer.wte.weight"].dtype == np.float32
    same = GPT(cfg, seed=1).params
    assert all(np.array_equal(p[k], same[k]) for k in p)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_embd=10, n_head=3), "divisible by n_head"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(vocab_size=-5), "vocab_size must be a positive integer"),
    (dict(block_size=2.5), "block_size must be a positive integer"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(norm="mid"), "norm must be one of"),
    (dict(pos_encoding="alibi"), "pos_encoding must be one of"),
    (dict(normalization="batchnorm"), "normalization must be one of"),
    (dict(n_kv_head=3, n_head=2), "n_kv_head must be a positive divisor"),
    (dict(n_kv_head=0), "n_kv_head must be a positive divisor"),
    (dict(rope_base=1.0), "rope_base must be a number > 1"),
    (dict(pos_encoding="rope", n_embd=6, n_head=2), "rope needs an even head size"),
    (dict(bias="yes"), "bias must be true or false"),
])
def test_config_validation(kwargs, match):
    base = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**base)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown field"):
        GPTConfig.from_dict(dict(vocab_size=3, block_size=4, n_layer=1, n_head=1, n_embd=4,
                                 n_embed=4))


def test_sequence_longer_than_block_size_is_a_clear_error():
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match="exceeds block_size 8"):
        model.forward(np.zeros((1, 9), dtype=np.int64))


@pytest.mark.parametrize("tie,pos,norm,act,bias", VARIANTS,
                         ids=["-".join(map(str, v)) for v in VARIANTS])
def test_whole_model_gradients(tie, pos, norm, act, bias):
    cfg = tiny_config(tie, pos, norm, act, bias)
    model = GPT(cfg, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    for p in model.params.values():  # move away from the symmetric init (LN w=1, b=0)
        p += rng.standard_normal(p.shape) * 0.1
    idx, targets = batch(cfg)
    errors = check_model(model, idx, targets, max_entries=12)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL["gradcheck"], f"{worst}: {errors[worst]:.2e}"
    assert set(errors) == set(model.params)


def test_tied_embedding_gets_both_uses():
    cfg = tiny_config(tie=True)
    model = GPT(cfg, dtype="float64")
    idx, targets = batch(cfg)
    model.forward(idx, targets)
    grads = model.backward()
    # the head's share alone: the gradient of sum(logits * dlogits) w.r.t. the head weight
    logits, _ = model.forward(idx, targets)
    from tinygrad_char.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward
    _, ce_cache = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(1.0, ce_cache)
    x_final = model._caches["head"][0]
    head_share = dlogits.reshape(-1, 11).T @ x_final.reshape(-1, 8)
    assert not np.allclose(grads["transformer.wte.weight"], head_share)  # input use adds
    rows_unused = np.setdiff1d(np.arange(11), idx)
    np.testing.assert_allclose(grads["transformer.wte.weight"][rows_unused],
                               head_share[rows_unused], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("norm,pos", [("pre", "learned"), ("post", "sinusoidal")])
def test_future_tokens_never_change_earlier_logits(norm, pos):
    cfg = tiny_config(norm=norm, pos=pos)
    model = GPT(cfg, dtype="float64").eval()
    idx, _ = batch(cfg)
    logits, _ = model.forward(idx)
    for t in range(1, cfg.block_size):
        changed = idx.copy()
        changed[:, t:] = (changed[:, t:] + 1) % cfg.vocab_size
        logits2, _ = model.forward(changed)
        np.testing.assert_array_equal(logits[:, :t], logits2[:, :t])
        assert not np.allclose(logits[:, t], logits2[:, t])


def test_dropout_train_and_eval_modes():
    cfg = tiny_config(dropout=0.3)
    model = GPT(cfg, dtype="float64")
    idx, targets = batch(cfg)
    model.eval()
    a, _ = model.forward(idx)
    b, _ = model.forward(idx)
    np.testing.assert_array_equal(a, b)  # eval: deterministic, no dropout
    model.train()
    model.seed_dropout(7)
    c, _ = model.forward(idx)
    model.seed_dropout(7)
    d, _ = model.forward(idx)
    np.testing.assert_array_equal(c, d)  # seeded masks
    assert not np.allclose(a, c)


def test_dropout_model_gradients():
    """Dropout in train mode: finite differences with the same masks (reseeded per call)."""
    cfg = tiny_config(dropout=0.2)
    model = GPT(cfg, dtype="float64", seed=2)
    idx, targets = batch(cfg)
    forward = model.forward

    def seeded_forward(*args):
        model.seed_dropout(11)
        return forward(*args)

    model.forward = seeded_forward
    errors = check_model(model, idx, targets, max_entries=8)
    assert max(errors.values()) < TOL["gradcheck"], errors


def test_backward_needs_forward():
    model = GPT(tiny_config())
    with pytest.raises(RuntimeError, match="forward"):
        model.backward()


def test_num_params():
    cfg = tiny_config(tie=True)
    n = sum(int(np.prod(s)) for s in param_shapes(cfg).values())
    assert GPT(cfg).num_params() == n
    untied = GPT(tiny_config(tie=False)).num_params()
    assert untied == n + 11 * 8


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("tie,pos,norm,act,bias", VARIANTS[::5])
def test_cupy_matches_numpy(tie, pos, norm, act, bias):
    """Same weights, same batch: logits, loss and every gradient CuPy vs NumPy (float64),
    and the float64 gradient check on the GPU."""
    cfg = tiny_config(tie, pos, norm, act, bias)
    cpu = GPT(cfg, backend="numpy", dtype="float64", seed=4)
    gpu_model = GPT(cfg, backend="cupy", dtype="float64", seed=4)
    idx, targets = batch(cfg)
    lc, losc = cpu.forward(idx, targets)
    gc = cpu.backward()
    xp = gpu_model.xp
    lg, losg = gpu_model.forward(xp.asarray(idx), xp.asarray(targets))
    gg = gpu_model.backward()
    np.testing.assert_allclose(to_np(lg), lc, rtol=1e-10, atol=1e-13)
    assert abs(float(losg) - float(losc)) < 1e-10
    for k in gc:
        np.testing.assert_allclose(to_np(gg[k]), gc[k], rtol=1e-9, atol=1e-13, err_msg=k)
    errors = check_model(gpu_model, xp.asarray(idx), xp.asarray(targets), max_entries=6)
    assert max(errors.values()) < TOL["gradcheck"], errors


# -- building and stepping a model changes nothing outside it ------------------------------------

LEAVES_THE_PROCESS = """
import ctypes
import ctypes.util
import os
# libgomp loaded first and global, as importing torch does: then an OpenBLAS on threads
# called inside the kernels' OpenMP loop sees the loop, and would print its warning
gomp = ctypes.util.find_library("gomp")
if gomp:
    ctypes.CDLL(gomp, mode=ctypes.RTLD_GLOBAL)
import scipy.linalg.cython_blas  # noqa: F401  (SciPy's BLAS, which numba calls, listed too)
import numpy as np
from threadpoolctl import threadpool_info

def blas():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas"}

before = blas()
from tinygrad_char import GPT, AdamW, GPTConfig, clip_grad_norm
from tinygrad_char.fused.cpu import numba_available
pool = None
if numba_available():
    import numba
    pool = numba.get_num_threads()
# big enough for the kernels' parallel builds and a threaded GEMM in each linear block
model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=1, n_head=4, n_embd=256))
opt = AdamW(model.params, 1e-3)
idx = np.random.default_rng(0).integers(0, 65, (32, 64))
for _ in range(2):
    model.forward(idx, idx)
    grads = model.backward()
    clip_grad_norm(grads, 1.0)
    opt.step(grads)
after = blas()
assert {k: after.get(k) for k in before} == before, (before, after)
assert pool is None or numba.get_num_threads() == pool, (pool, numba.get_num_threads())
children = [open(f"/proc/self/task/{t}/children").read().split()
            for t in os.listdir("/proc/self/task")]
assert not any(children), children
print("unchanged", sorted(before.values()), model.ops_summary())
"""


def test_building_and_stepping_a_model_leaves_blas_threads_and_no_child():
    """threadpoolctl sees every BLAS with the thread count it had before GPT(...), two
    steps and the public AdamW; numba's pool too; no child process; and the OpenBLAS
    warning of a BLAS on threads inside the kernels' OpenMP loop never prints."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    pytest.importorskip("threadpoolctl", reason="threadpoolctl reads the BLAS thread counts")
    env = {**os.environ, "TINYGRAD_CHAR_COMPILE_AHEAD": "1"}
    env.pop("OPENBLAS_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", LEAVES_THE_PROCESS], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0 and "unchanged" in done.stdout, done.stderr[-3000:]
    assert "OpenMP" not in done.stderr, done.stderr[-3000:]
