"""The fused CUDA kernels (kernels/*.cu, wrapped by tinygrad_char/fused/cuda.py) against their
xp twins, in three layers that fail loudly:

1. Compile: every .cu compiles with nvcc for sm_80 and sm_90 (where nvcc exists) and with
   NVRTC, the compiler CuPy's RawModule uses (where libnvrtc is found: a CUDA toolkit, or
   `pip install nvidia-cuda-nvrtc`); a deliberately broken kernel fails the same checks.
   Each file declares exactly the entry points kernels.py launches.
2. Emulated: the wrappers run with their kernels executed on the CPU by
   benchmarks/kernel_lab/cuda_emulator (g++; threads as fibers), compared with the twins on
   NumPy. This checks indexing, tiling, masks, barriers and reductions without a GPU, not
   the GPU itself.
3. GPU (marked gpu, skipped without one): the same comparisons with the real kernels.

Plus the dispatch's choices for the CUDA path (`dispatch.select_ops`), which run anywhere.
"""

import ctypes
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_char.ops import activations, attention, cross_entropy, embedding, layernorm
from tinygrad_char.fused import cuda as kernels, dispatch
from tinygrad_char import optim
from tinygrad_char.backend import BackendError
from tinygrad_char.model import GPT, GPTConfig

from conftest import CUPY_MISSING, REPO, gpu, to_np

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the repository, not a package
from benchmarks.kernel_lab import cuda_emulator, embedding_sorted  # noqa: E402

KERNELS = kernels.kernels_dir()
CU_FILES = sorted(p.name for p in KERNELS.glob("*.cu"))

# float32 kernel vs float32 twin: the sums run in another order (warp trees, tiles), so
# results differ in the last few bits; 1e-4 relative is TOL["float32"], and 1e-6 absolute
# covers entries that are ~0 (masked probabilities, dlogits of far-off classes).
RTOL, ATOL = 1e-4, 1e-6


def assert_close(name, got, want, rtol=RTOL, atol=ATOL):
    got, want = to_np(got), to_np(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    err = float(np.max(np.abs(got - want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol,
                               err_msg=f"{name}: max abs error {err:.3e}")


# == 1. compile ============================================================================

def find_nvcc():
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", ""), "bin",
                                                         "nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def find_nvrtc():
    """Path of libnvrtc: $NVRTC_LIBRARY, the nvidia-cuda-nvrtc wheel, a CUDA toolkit, or None."""
    candidates = [Path(os.environ["NVRTC_LIBRARY"])] if os.environ.get("NVRTC_LIBRARY") else []
    spec = importlib.util.find_spec("nvidia")
    for folder in (spec.submodule_search_locations if spec else None) or []:
        candidates += sorted(Path(folder).glob("*/lib/libnvrtc.so*"))
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates += sorted(Path(home).glob("lib64/libnvrtc.so*"))
    for c in candidates:  # the library itself, not its -builtins or .alt companions
        if c.is_file() and re.fullmatch(r"libnvrtc\.so(\.\d+)*", c.name):
            return str(c)
    return None


NVCC = find_nvcc()
NVRTC = find_nvrtc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA toolkit here)")
needs_nvrtc = pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found: pip install "
                                 "nvidia-cuda-nvrtc, or set NVRTC_LIBRARY")
ARCHS = ("sm_80", "sm_90")


def nvcc_compile(path, out_dir):
    """Compile one .cu file for ARCHS with nvcc -c. Returns (ok, compiler output)."""
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    obj = Path(out_dir) / (Path(path).stem + ".o")
    done = subprocess.run([NVCC, *gencode, "-c", "-o", str(obj), str(path)],
                          capture_output=True, text=True)
    return done.returncode == 0, done.stdout + done.stderr


@functools.lru_cache(maxsize=1)
def _nvrtc_lib():
    folder = Path(NVRTC).resolve().parent
    for builtins in sorted(folder.glob("libnvrtc-builtins.so*")):  # NVRTC dlopens these
        if "alt" not in builtins.name:
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(NVRTC)


def nvrtc_compile(source, name, arch):
    """Compile CUDA source with NVRTC for `arch` and the options kernels.py uses.
    Returns (ok, log)."""
    lib = _nvrtc_lib()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                  None, None) == 0
    try:
        opts = [o.encode() for o in (*kernels.NVRTC_OPTIONS, f"--gpu-architecture={arch}")]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        return rc == 0, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def test_every_kernel_file_is_known():
    assert CU_FILES, f"no .cu files in {KERNELS}"
    assert set(CU_FILES) == set(kernels.KERNEL_FILES), \
        f"kernels/ holds {CU_FILES}, kernels.KERNEL_FILES lists {sorted(kernels.KERNEL_FILES)}"


@pytest.mark.parametrize("file", CU_FILES)
def test_kernel_file_is_self_contained_and_documented(file):
    """What NVRTC and STYLE.md principle 6 need: no #include (NVRTC has no host headers),
    the entry points kernels.py launches, and a header with math, parallelisation, launch
    configuration and the benchmark figure."""
    src = (KERNELS / file).read_text()
    assert not re.search(r"^\s*#\s*include", src, re.M), f"{file}: #include breaks NVRTC"
    declared = tuple(sorted(cuda_emulator.kernel_signatures(src)))
    assert declared == tuple(sorted(kernels.KERNEL_FILES[file])), \
        f"{file} declares {declared}, kernels.py launches {kernels.KERNEL_FILES[file]}"
    header = src.split("*/", 1)[0].lower()
    for word in ("math", "parallelis", "launch", "benchmark figure"):
        assert word in header, f"{file}: the header comment does not mention {word!r}"


@needs_nvcc
@pytest.mark.parametrize("file", CU_FILES)
def test_kernel_compiles_with_nvcc(file, tmp_path):
    ok, log = nvcc_compile(KERNELS / file, tmp_path)
    assert ok, f"kernels/{file} does not compile with nvcc for {ARCHS}:\n{log}"


@needs_nvcc
def test_nvcc_check_catches_a_broken_kernel(tmp_path):
    broken = tmp_path / "layernorm.cu"
    broken.write_text((KERNELS / "layernorm.cu").read_text()
                      .replace("const float mean =", "const flaot mean =", 1))
    ok, log = nvcc_compile(broken, tmp_path)
    assert not ok and "flaot" in log, f"nvcc accepted a broken kernel:\n{log}"


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", CU_FILES)
def test_kernel_compiles_with_nvrtc(file, arch):
    ok, log = nvrtc_compile((KERNELS / file).read_text(), file, arch)
    assert ok, f"kernels/{file} does not compile with NVRTC ({arch}), as cupy.RawModule " \
               f"would compile it:\n{log}"


@needs_nvrtc
@pytest.mark.parametrize("bad", ["#include <cstdio>\n", "#define X INFINITY\nfloat y = X;\n"])
def test_nvrtc_check_catches_what_only_nvcc_accepts(bad):
    """Host headers and their macros compile with nvcc -c but not with NVRTC."""
    ok, log = nvrtc_compile(bad + (KERNELS / "gelu.cu").read_text(), "gelu.cu", ARCHS[0])
    assert not ok, f"NVRTC accepted {bad!r}:\n{log}"


# == 2./3. kernels against their twins: emulated on the CPU, and on the GPU ===============

needs_gxx = pytest.mark.skipif(cuda_emulator.compiler() is None,
                               reason="g++ not found: the CPU emulator of the kernels needs it")


@pytest.fixture(params=[pytest.param("emulated", marks=needs_gxx),
                        pytest.param("gpu", marks=[gpu, pytest.mark.gpu])])
def kxp(request, monkeypatch):
    """The array module the fused wrappers run on: NumPy with the kernels on the CPU
    emulator, or CuPy with the real kernels."""
    if request.param == "gpu":
        import cupy

        return cupy
    monkeypatch.setattr(kernels, "_on_device", lambda a: True)
    monkeypatch.setattr(kernels, "_launch", functools.partial(cuda_emulator.launch, KERNELS))
    return np


def randn(xp, rng, *shape, scale=1.0):
    return xp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))


def assert_unchanged(name, arrays, copies):
    for i, (a, c) in enumerate(zip(arrays, copies)):
        assert np.array_equal(to_np(a), to_np(c)), f"{name} modified its input #{i} in place"


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 7), (2, 3, 32), (2, 5, 33), (3, 70),
                                   (2, 100, 48), (1, 64, 300)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_layernorm_kernel(kxp, shape, bias):
    rng = np.random.default_rng(1)
    x = randn(kxp, rng, *shape, scale=3.0) + 0.5
    w, b = randn(kxp, rng, shape[-1]), (randn(kxp, rng, shape[-1]) if bias else None)
    dy = randn(kxp, rng, *shape)
    inputs = [x, w, dy] + ([b] if bias else [])
    copies = [a.copy() for a in inputs]
    y, cache = kernels.layernorm_forward(x, w, b)
    y_ref, cache_ref = layernorm.layernorm_forward(x, w, b)
    assert_close("layernorm y", y, y_ref)
    grads = kernels.layernorm_backward(dy, cache)
    grads_ref = layernorm.layernorm_backward(dy, cache_ref)
    for name, g, g_ref in zip(("dx", "dw", "db"), grads, grads_ref):
        if g_ref is None:
            assert g is None, f"layernorm {name}: expected None without bias"
        else:
            assert_close(f"layernorm {name}", g, g_ref, atol=1e-5)
    assert_unchanged("layernorm", inputs, copies)
    again = kernels.layernorm_backward(dy, cache)
    for g, g2 in zip(grads, again):  # no atomics: bit-reproducible
        assert g is None or np.array_equal(to_np(g), to_np(g2)), "layernorm backward varies"


ATTENTION_CASES = [  # (B, T, NH, hs)
    (1, 1, 1, 1),     # T = 1, hs = 1
    (2, 1, 2, 4),     # T = 1, several heads
    (2, 37, 3, 5),    # T not a multiple of any tile, odd hs
    (1, 64, 2, 32),   # T = block_size of the tests' toy configs, full tiles
    (2, 33, 4, 1),    # hs = 1, one row past a key tile
    (1, 40, 1, 128),  # hs = 128, the largest the kernel takes
    (1, 17, 2, 96),   # hs between 64 and 128: lanes with 3 of their 4 dims
]


@pytest.mark.parametrize("B,T,NH,hs", ATTENTION_CASES, ids=lambda v: str(v))
def test_attention_kernel(kxp, B, T, NH, hs):
    rng = np.random.default_rng(2)
    qkv = randn(kxp, rng, B, T, 3 * NH * hs, scale=1.5)
    dy = randn(kxp, rng, B, T, NH * hs)
    copies = [qkv.copy(), dy.copy()]
    y, cache = kernels.attention_forward(qkv, NH)
    assert cache["lse"].shape == (B, NH, T), "lse is (B, NH, T): no (T, T) matrix is kept"
    y_ref, cache_ref = attention.attention_forward(qkv, NH)
    assert_close(f"attention y {B, T, NH, hs}", y, y_ref)
    dqkv = kernels.attention_backward(dy, cache)
    dqkv_ref = attention.attention_backward(dy, cache_ref)
    C = NH * hs
    for i, part in enumerate(("dq", "dk", "dv")):
        assert_close(f"attention {part} {B, T, NH, hs}", dqkv[..., i * C:(i + 1) * C],
                     dqkv_ref[..., i * C:(i + 1) * C], atol=1e-5)
    assert_unchanged("attention", [qkv, dy], copies)
    assert np.array_equal(to_np(dqkv), to_np(kernels.attention_backward(dy, cache))), \
        "attention backward is not bit-reproducible"


@pytest.mark.parametrize("shape,V", [((1,), 1), ((5,), 65), ((2, 3), 257), ((4, 8), 1001)],
                         ids=lambda v: str(v))
def test_cross_entropy_kernel(kxp, shape, V):
    rng = np.random.default_rng(3)
    logits = randn(kxp, rng, *shape, V, scale=4.0)
    targets_np = rng.integers(0, V, size=shape)
    targets_np.reshape(-1)[::3] = cross_entropy.IGNORE_INDEX  # every third is ignored
    targets = kxp.asarray(targets_np)
    copies = [logits.copy(), targets.copy()]
    loss, cache = kernels.cross_entropy_forward(logits, targets)
    loss_ref, cache_ref = cross_entropy.cross_entropy_forward(logits, targets)
    assert_close("cross-entropy loss", loss, loss_ref)
    for dloss in (1.0, 0.5):
        assert_close(f"cross-entropy dlogits (dloss {dloss})",
                     kernels.cross_entropy_backward(dloss, cache),
                     cross_entropy.cross_entropy_backward(dloss, cache_ref))
    assert_unchanged("cross-entropy", [logits, targets], copies)


def test_cross_entropy_kernel_extremes(kxp):
    """Chainer's [[-1000, 1]] case, logits near +1000, and a batch with every target ignored."""
    logits = kxp.asarray(np.array([[-1000.0, 1.0, 0.0], [1000.0, 999.0, -1000.0],
                                   [5.0, 5.0, 5.0]], dtype=np.float32))
    targets = kxp.asarray(np.array([0, 1, 2]))
    loss, cache = kernels.cross_entropy_forward(logits, targets)
    loss_ref, cache_ref = cross_entropy.cross_entropy_forward(logits, targets)
    assert np.isfinite(to_np(loss)), "cross-entropy kernel overflowed at +-1000"
    assert_close("cross-entropy loss at +-1000", loss, loss_ref)
    assert_close("cross-entropy dlogits at +-1000", kernels.cross_entropy_backward(1.0, cache),
                 cross_entropy.cross_entropy_backward(1.0, cache_ref))
    ignored = kxp.asarray(np.array([-1, -1, -1]))
    loss, cache = kernels.cross_entropy_forward(logits, ignored)
    assert float(to_np(loss)) == 0.0, "all targets ignored: the loss is 0"
    assert not np.any(to_np(kernels.cross_entropy_backward(1.0, cache))), \
        "all targets ignored: dlogits must be 0"


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 33), (2, 5, 512), (4, 1000)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gelu_kernels(kxp, shape):
    rng = np.random.default_rng(4)
    x = randn(kxp, rng, *shape, scale=3.0)
    dy = randn(kxp, rng, *shape)
    copies = [x.copy(), dy.copy()]
    y, cache = kernels.gelu_forward(x)
    y_ref, cache_ref = activations.gelu_forward(x)
    assert_close("gelu y", y, y_ref)
    # GELU's slope for x << 0 is a difference of two terms of size ~|x| that nearly
    # cancel, so one ulp of tanh (the kernel's tanhf vs the twin's) moves it by ~1e-6
    # absolute: compare dx with an absolute tolerance of 1e-5 (dy is ~1).
    assert_close("gelu dx", kernels.gelu_backward(dy, cache),
                 activations.gelu_backward(dy, cache_ref), atol=1e-5)
    assert_unchanged("gelu", [x, dy], copies)


@pytest.mark.parametrize("version", ["atomic", "sorted"])
@pytest.mark.parametrize("B,T,V,C,ids", [
    (1, 1, 1, 1, "random"),
    (2, 9, 65, 33, "random"),
    (3, 16, 7, 300, "repeated"),   # every position the same id; C > one block of 256
    (2, 50, 201, 64, "random"),    # odd V, most ids unused
], ids=lambda v: str(v))
def test_embedding_backward_kernels(kxp, version, B, T, V, C, ids):
    rng = np.random.default_rng(5)
    idx_np = np.full((B, T), V // 2) if ids == "repeated" else rng.integers(0, V, size=(B, T))
    idx = kxp.asarray(idx_np)
    W = randn(kxp, rng, V, C)
    _, cache = embedding.embedding_forward(idx, W)
    dout = randn(kxp, rng, B, T, C)
    if version == "atomic":
        fused = kernels.embedding_backward
    else:  # the kernel lab's deterministic version (benchmarks/kernel_lab/)
        lab = Path(embedding_sorted.__file__).parent
        launch = functools.partial(cuda_emulator.launch, lab) if kxp is np else \
            embedding_sorted.launch
        fused = functools.partial(embedding_sorted.embedding_backward_sorted, launch=launch)
    assert_close(f"embedding dW ({version})", fused(dout, cache),
                 embedding.embedding_backward(dout, cache), atol=1e-5)
    if version == "sorted":
        assert np.array_equal(to_np(fused(dout, cache)), to_np(fused(dout, cache))), \
            "the sorted embedding backward is not bit-reproducible"


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_adamw(kxp, weight_decay):
    """FusedAdamW against optim.AdamW over steps that change lr, clip with a grad_scale
    that is a number or a 0-d float64 array (clip_scale's, which the kernel reads from
    device memory), and pass a skip flag as precision.LossScaler.step does: a step whose
    gradients overflowed (inf, NaN) is skipped by the kernel, and the twin, which never
    saw it, stays equal in parameters, moments and step count (the bias corrections use
    the count of updates applied). A checkpoint's count resumes the count on the device."""
    rng = np.random.default_rng(6)
    shapes = {"wte": (65, 33), "ln.weight": (33,), "ln.bias": (33,), "c_fc": (70, 90),
              "tiny": (1, 1)}  # 6300 elements: two chunks of 4096; odd sizes everywhere
    params = {k: randn(kxp, rng, *s) for k, s in shapes.items()}
    params_ref = {k: p.copy() for k, p in params.items()}
    opt = kernels.FusedAdamW(params, lr=1e-2, weight_decay=weight_decay)
    opt_ref = optim.AdamW(params_ref, lr=1e-2, weight_decay=weight_decay)
    # (lr, grad_scale, skip): skip None is the plain step, a 0-d bool the float16 one
    steps = [(None, 1.0, None), (3e-3, kxp.asarray(0.37), None), (None, 1.0, True),
             (None, kxp.asarray(0.5), kxp.asarray(False)), (2e-3, 0.8, kxp.asarray(True)),
             (None, kxp.asarray(1.0), kxp.asarray(False))]
    applied = 0
    for step, (lr, scale, skip) in enumerate(steps):
        grads = {k: randn(kxp, rng, *s) for k, s in shapes.items()}
        if skip is True:
            skip = kxp.asarray(True)
            grads["c_fc"][3, 4] = np.inf
            grads["ln.bias"][0] = np.nan
        opt.step(grads, lr=lr, grad_scale=scale, skip=skip)
        if skip is None or not bool(skip):
            opt_ref.step(grads, lr=lr, grad_scale=scale)
            applied += 1
        for k in shapes:
            where = f"AdamW step {step + 1} (skip={None if skip is None else bool(skip)})"
            assert_close(f"{where} {k}", params[k], params_ref[k], atol=1e-6)
            assert_close(f"{where} m[{k}]", opt.m[k], opt_ref.m[k])
            assert_close(f"{where} v[{k}]", opt.v[k], opt_ref.v[k])
        assert opt.step_count == opt_ref.step_count == applied, f"step {step + 1}: count"
    assert applied == 4
    resumed = kernels.FusedAdamW({k: p.copy() for k, p in params.items()}, lr=1e-2,
                                 weight_decay=weight_decay)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.state_dict()["step"] == 4
    grads = {k: randn(kxp, rng, *s) for k, s in shapes.items()}
    resumed.step(grads)
    opt_ref.step(grads)
    for k in shapes:
        assert_close(f"AdamW step 5 after load_state_dict {k}", resumed.params[k],
                     params_ref[k], atol=1e-6)
    assert resumed.step_count == 5


# == dispatch and fallbacks (anywhere) =====================================================

def test_kernels_module_imports_without_cupy():
    code = "import sys, tinygrad_char.fused.cuda; sys.exit('cupy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"importing tinygrad_char.fused.cuda imported CuPy: {done.stderr}"


def test_xp_table_is_the_op_modules():
    ops = dispatch.select_ops("xp", "numpy", GPTConfig(vocab_size=5, block_size=4, n_layer=1,
                                                       n_head=1, n_embd=4))
    assert ops == dispatch.Ops(), "kernels 'xp' must be the default table"
    assert ops.layernorm_forward is layernorm.layernorm_forward
    assert ops.attention_backward is attention.attention_backward
    assert ops.cross_entropy_forward is cross_entropy.cross_entropy_forward
    assert ops.embedding_backward is embedding.embedding_backward
    assert ops.AdamW is optim.AdamW
    assert set(kernels.KERNELS) <= set(dispatch.OP_NAMES), "a CUDA kernel has no table entry"


def test_xp_table_runs_on_numpy():
    """A tiny attention block through the table, forward and backward, on NumPy."""
    ops = dispatch.Ops()
    rng = np.random.default_rng(7)
    B, T, C, NH, V = 2, 5, 8, 2, 11
    idx, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    p = {"wte": rng.standard_normal((V, C)), "ln.w": np.ones(C), "ln.b": np.zeros(C),
         "attn": rng.standard_normal((3 * C, C)) * 0.1}
    x, c_emb = ops.embedding_forward(idx, p["wte"])
    h, c_ln = ops.layernorm_forward(x, p["ln.w"], p["ln.b"])
    qkv, c_lin = ops.linear_forward(h, p["attn"])
    a, c_att = ops.attention_forward(qkv, NH)
    g, c_gelu = ops.gelu_forward(a)
    loss, c_ce = ops.cross_entropy_forward(g @ p["wte"].T, targets)
    assert np.isfinite(loss)
    dg = ops.cross_entropy_backward(1.0, c_ce) @ p["wte"]
    da = ops.gelu_backward(dg, c_gelu)
    dh, dW_attn, _ = ops.linear_backward(ops.attention_backward(da, c_att), c_lin)
    dx, dln_w, dln_b = ops.layernorm_backward(dh, c_ln)
    dwte = ops.embedding_backward(dx, c_emb)
    assert dwte.shape == (V, C) and dW_attn.shape == (3 * C, C)
    opt = ops.AdamW(p, lr=1e-3)
    opt.step({"wte": dwte, "ln.w": dln_w, "ln.b": dln_b, "attn": dW_attn})


@pytest.mark.skipif(CUPY_MISSING is None, reason="a GPU works here: 'fused' is available")
def test_kernels_fused_without_gpu_names_the_fix():
    with pytest.raises(BackendError, match="--kernels xp"):
        dispatch.select_ops("fused", "cupy")
    with pytest.raises(BackendError, match="--kernels xp"):
        GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4),
            kernels="fused")


@gpu
@pytest.mark.gpu
def test_kernels_fused_on_gpu():
    cfg = GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)
    ops = dispatch.select_ops("fused", "cupy", cfg)
    assert ops.layernorm_forward is kernels.layernorm_forward
    model = GPT(cfg, backend="cupy", kernels="fused")
    assert model.describe_ops()["attention_forward"] == "cuda", model.ops_summary()


def test_kernels_rejects_unknown_mode():
    with pytest.raises(ValueError, match="xp"):
        dispatch.select_ops("cuda")


def cuda_table(**config):
    """The op table "auto" builds for a CuPy model of this config (no GPU needed: the
    choice reads only the config and dtypes)."""
    dtype, compute = config.pop("dtype", "float32"), config.pop("compute_dtype", None)
    cfg = GPTConfig(**{**dict(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=8),
                       **config})
    return dispatch.describe(dispatch.select_ops("auto", "cupy", cfg, dtype, compute),
                             dispatch.ops_used(cfg))


def test_cuda_path_is_chosen_once_by_dtype_head_size_dropout_and_gqa():
    plain = cuda_table()
    for name in ("layernorm_forward", "layernorm_backward", "attention_forward",
                 "attention_backward", "gelu_forward", "gelu_backward",
                 "cross_entropy_forward", "cross_entropy_backward", "embedding_backward",
                 "AdamW"):
        assert plain[name] == "cuda", (name, plain)
    for name in ("embedding_forward", "linear_forward", "dropout_forward",
                 "cached_attention_forward"):
        assert plain[name] == "xp", (name, plain)
    assert set(cuda_table(dtype="float64").values()) == {"xp"}, "float64 has no kernel"
    mixed = cuda_table(compute_dtype="float16")  # the matmul side in float16
    assert mixed["attention_forward"] == mixed["gelu_forward"] == "xp", mixed
    assert mixed["layernorm_forward"] == mixed["cross_entropy_forward"] == "cuda", mixed
    wide = cuda_table(n_head=1, n_embd=kernels.HS_MAX + 4)  # hs = 132
    assert wide["attention_forward"] == wide["attention_backward"] == "xp", wide
    assert wide["layernorm_forward"] == "cuda"
    with_dropout = cuda_table(dropout=0.1)
    assert with_dropout["attention_forward"] == with_dropout["attention_backward"] == "xp"
    gqa = cuda_table(n_kv_head=1)
    assert gqa["gqa_attention_forward"] == gqa["gqa_attention_backward"] == "xp", gqa
    windowed = cuda_table(pos_encoding="rope")
    assert windowed["windowed_attention_forward"] == "xp"


def test_wrappers_assert_what_their_kernel_takes():
    """No wrapper falls back per call: inputs its kernel does not take are refused."""
    rng = np.random.default_rng(8)
    with pytest.raises(AssertionError):
        kernels.layernorm_forward(rng.standard_normal((2, 3, 4)), rng.standard_normal(4))
    with pytest.raises(AssertionError):
        kernels.attention_forward(rng.standard_normal((1, 3, 3 * 129)).astype(np.float32), 1)


def test_missing_kernel_source_names_file_and_fix():
    with pytest.raises(kernels.KernelError, match=r"kernels/nope\.cu.*--kernels xp"):
        kernels.kernel_source("nope.cu")


@needs_gxx
def test_emulator_reports_a_barrier_in_divergent_code(tmp_path):
    """The emulator's own check: a shuffle that only some lanes reach is an error, not a hang."""
    src = (KERNELS / "attention.cu").read_text().replace(
        "if (t >= T || k0 > t) continue;  /* warp-uniform */",
        "if (t >= T || k0 > t || lane == 3) continue;", 1)
    (tmp_path / "attention.cu").write_text(src)
    mod = cuda_emulator.EmulatedModule(tmp_path / "attention.cu", build_dir=tmp_path)
    T, NH, hs = 4, 1, 2
    args = (np.zeros((1, T, 3 * NH * hs), np.float32), np.zeros((1, T, NH * hs), np.float32),
            np.zeros((1, NH, T), np.float32), np.zeros((1, NH, T), np.float32),
            np.zeros((1, T, 3 * NH * hs), np.float32), np.int32(T), np.int32(NH), np.int32(hs),
            np.float32(1.0))
    with pytest.raises(cuda_emulator.EmulatorError, match="part of warp"):
        mod.launch("attention_backward_dq", (1, NH, 1), (128,), args)


def test_bench_kernels_imports_and_refuses_without_gpu(tmp_path):
    """The kernel benchmark is a script, not a test: here it only has to import, and to
    exit 2 with one line naming the problem when there is no GPU."""
    from benchmarks.kernel_lab import bench_kernels

    assert set(bench_kernels.OPS) >= {"layernorm", "attention", "cross_entropy", "adamw"}
    if CUPY_MISSING is not None:
        assert bench_kernels.main(["--out", str(tmp_path / "k.jsonl")]) == 2
        assert not (tmp_path / "k.jsonl").exists(), "nothing may be written without a GPU"
