"""The fused CUDA kernels of `kernels/*.cu`, wrapped as drop-in twins of the xp ops.

Each wrapper has the signature and return convention of the xp op it replaces (its twin,
and its oracle in tests/test_kernels.py); `KERNELS` at the end lists them by the names of
the op table (fused/dispatch.py: `Ops`), which puts them in a model's table:

    layernorm_forward(x, w, b=None, eps=1e-5) -> (y, cache)
    layernorm_backward(dy, cache) -> (dx, dw, db)
    attention_forward(qkv, n_head, dropout=0.0, rng=None, training=True) -> (y, cache)
    attention_backward(dy, cache) -> dqkv
    cross_entropy_forward(logits, targets) -> (loss, cache)
    cross_entropy_backward(dloss, cache) -> dlogits
    gelu_forward(x) -> (y, cache),  gelu_backward(dy, cache) -> dx
    embedding_backward(dout, cache) -> dW               (atomics, not bit-reproducible)
    FusedAdamW(params, ...)                             (optim.AdamW, one-launch step)

A wrapper takes only float32 CuPy arrays of sizes its kernel supports; the dispatch
decides that once, when a model is built (dtype, head size <= HS_MAX, no dropout inside
attention, no grouped-query attention), and no wrapper falls back per call. A forward's
cache is a dict that only its own backward reads (the two are always chosen together).

The sources are read from the `kernels/` folder beside the package in a repository
checkout (`Path(__file__).parents[1] / "kernels"`), or from `tinygrad_char/kernels/` when
installed as package data (pyproject maps kernels/ into the wheel), or from
$TINYGRAD_CHAR_KERNELS. Each file is compiled once per process with
NVRTC through `cupy.RawModule` (CuPy also caches the binary on disk). CuPy is imported
inside functions only: this module imports, and an xp model builds, without it.

Not here: the kernels themselves (kernels/*.cu), their experiments and timings
(benchmarks/kernel_lab/), and any autotuning: launch configurations are fixed, and each
.cu file's header says which.
"""

import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tinygrad_char.ops import cross_entropy, layernorm
from tinygrad_char import optim
from tinygrad_char.backend import get_array_module
from tinygrad_char.errors import UserError

FIX = "use --kernels xp"
NVRTC_OPTIONS = ("--std=c++14",)  # no fast math: the kernels must match their twins
HS_MAX = 128  # the attention kernels hold a head's row in 4 floats per lane (kernels/attention.cu)

# The entry points of each file, as the wrappers below launch them (a test checks that
# each .cu file defines exactly these as extern "C" __global__ functions).
KERNEL_FILES = {
    "layernorm.cu": ("layernorm_forward", "layernorm_backward_dx",
                     "layernorm_backward_dwdb_partial", "layernorm_backward_dwdb_reduce"),
    "attention.cu": ("attention_forward", "attention_backward_preprocess",
                     "attention_backward_dq", "attention_backward_dkdv"),
    "cross_entropy.cu": ("cross_entropy_forward",),
    "gelu.cu": ("gelu_bias_forward", "gelu_bias_backward"),
    "embedding_backward.cu": ("embedding_backward_atomic",),
    "adamw.cu": ("adamw_multi_tensor",),
}

# Launch constants that must agree with the #defines of the .cu files.
LN_ROWS_PER_BLOCK = 4  # layernorm.cu: 128 threads = 4 warps, one row each
LN_ROWS_PER_CHUNK = 64  # layernorm.cu LN_ROWS_PER_CHUNK
LN_ROW_LANES = 8  # layernorm.cu LN_ROW_LANES
ATT_FWD_ROWS = 16  # attention.cu FWD_ROWS
ATT_BWD_ROWS = 8  # attention.cu BWD_ROWS
CE_THREADS = 256  # cross_entropy.cu CE_THREADS
ADAMW_CHUNK = 4096  # adamw.cu ADAMW_CHUNK


class KernelError(UserError, RuntimeError):
    """A fused kernel could not be found, compiled or launched. The message names the
    .cu file and the fix."""


def kernels_dir():
    """The folder holding the .cu sources (see the module docstring for the search order)."""
    here = Path(__file__).resolve()
    candidates = [here.parents[1] / "kernels", here.parents[2] / "kernels"]
    if os.environ.get("TINYGRAD_CHAR_KERNELS"):
        candidates.insert(0, Path(os.environ["TINYGRAD_CHAR_KERNELS"]))
    for folder in candidates:
        if (folder / "layernorm.cu").is_file():
            return folder
    raise KernelError(f"kernels/*.cu not found (looked in {', '.join(map(str, candidates))}); "
                      f"run from a repository checkout or set TINYGRAD_CHAR_KERNELS, or {FIX}")


def kernel_source(file):
    """The CUDA source of kernels/`file` as text."""
    path = kernels_dir() / file
    try:
        return path.read_text()
    except OSError as e:
        raise KernelError(f"kernels/{file}: cannot read {path} ({e}); {FIX}") from None


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


_MODULES = {}  # file -> cupy.RawModule, compiled lazily, once per process
_FUNCTIONS = {}  # (file, kernel) -> cupy.RawKernel


def _function(file, name):
    """The compiled kernel `name` of kernels/`file` (compiling the file on first use)."""
    key = (file, name)
    if key not in _FUNCTIONS:
        import cupy

        if file not in _MODULES:
            _MODULES[file] = cupy.RawModule(code=kernel_source(file), options=NVRTC_OPTIONS)
        try:
            _FUNCTIONS[key] = _MODULES[file].get_function(name)  # NVRTC compiles here
        except Exception as e:  # cupy.cuda.compiler.CompilationError, or a missing name
            raise KernelError(f"kernels/{file}: kernel {name!r} failed to compile or load "
                              f"({_first_line(e)}); fix the CUDA source, or {FIX}") from e
    return _FUNCTIONS[key]


def _launch(file, name, grid, block, args):
    """Launch kernel `name` of kernels/`file` on CuPy's current stream.

    Launches are asynchronous: a fault inside the kernel (an illegal address) surfaces at
    the next synchronising call, not here; run the GPU tests to find which kernel it was.
    """
    kernel = _function(file, name)
    try:
        kernel(grid, block, args)
    except Exception as e:  # a bad launch configuration, or an earlier asynchronous fault
        raise KernelError(f"kernels/{file}: launching {name!r} (grid {grid}, block {block}) "
                          f"failed ({_first_line(e)}); {FIX}") from e


def _on_device(a):
    """True for a CuPy array (the kernels read device memory)."""
    return type(a).__module__.startswith("cupy")


def _kernel_applies(*arrays):
    """True when every array is a float32 CuPy array: the only inputs the kernels take
    (the wrappers assert it)."""
    return all(_on_device(a) and a.dtype == np.float32 for a in arrays)


def _address(a):
    """The device address of a CuPy array (the host address of a NumPy one: the CPU
    emulator of the kernel tests runs the kernels on NumPy arrays)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def _i32(v):
    return np.int32(v)


def _f32(v):
    return np.float32(v)


def _blocks(n, per_block):
    return max(1, -(-n // per_block))


# -- layernorm (kernels/layernorm.cu) -------------------------------------------------------

def layernorm_forward(x, w, b=None, eps=layernorm.LN_EPS):
    """Fused twin of layernorm.layernorm_forward: y = (x - mean) * rstd * w + b per row.

    Args: x (..., C), w (C,), b (C,) or None. Returns y (..., C) and a cache (a dict) of
    x as (N, C), w, mean (N,) and rstd (N,): the backward recomputes the normalised row
    from x instead of storing it.
    """
    assert _kernel_applies(x, w, *([] if b is None else [b])), "layernorm kernel: float32 CuPy"
    xp = get_array_module(x)
    C = x.shape[-1]
    x2 = xp.ascontiguousarray(x).reshape(-1, C)  # (N, C)
    N = x2.shape[0]
    w = xp.ascontiguousarray(w)
    b_or_w = w if b is None else xp.ascontiguousarray(b)  # not read when there is no bias
    y = xp.empty_like(x2)  # (N, C)
    mean = xp.empty(N, dtype=np.float32)
    rstd = xp.empty(N, dtype=np.float32)
    _launch("layernorm.cu", "layernorm_forward", (_blocks(N, LN_ROWS_PER_BLOCK),),
            (32 * LN_ROWS_PER_BLOCK,),
            (x2, w, b_or_w, _i32(b is not None), y, mean, rstd, _i32(N), _i32(C), _f32(eps)))
    cache = dict(x=x2, w=w, mean=mean, rstd=rstd, has_bias=b is not None, shape=x.shape)
    return y.reshape(x.shape), cache


def layernorm_backward(dy, cache):
    """Fused twin of layernorm.layernorm_backward. Returns (dx, dw, db); db is None
    without bias. Deterministic: dw and db are summed in a fixed order (no atomics)."""
    xp = get_array_module(dy)
    x2, w, mean, rstd = cache["x"], cache["w"], cache["mean"], cache["rstd"]
    N, C = x2.shape
    dy2 = xp.ascontiguousarray(dy, dtype=np.float32).reshape(N, C)  # (N, C)
    dx = xp.empty_like(dy2)
    _launch("layernorm.cu", "layernorm_backward_dx", (_blocks(N, LN_ROWS_PER_BLOCK),),
            (32 * LN_ROWS_PER_BLOCK,), (dy2, x2, w, mean, rstd, dx, _i32(N), _i32(C)))
    n_chunks = _blocks(N, LN_ROWS_PER_CHUNK)
    dw_part = xp.empty((n_chunks, C), dtype=np.float32)
    db_part = xp.empty((n_chunks, C), dtype=np.float32)
    _launch("layernorm.cu", "layernorm_backward_dwdb_partial", (_blocks(C, 32), n_chunks),
            (32, LN_ROW_LANES), (dy2, x2, mean, rstd, dw_part, db_part, _i32(N), _i32(C)))
    dw = xp.empty(C, dtype=np.float32)
    db = xp.empty(C, dtype=np.float32)
    _launch("layernorm.cu", "layernorm_backward_dwdb_reduce", (_blocks(C, 256),), (256,),
            (dw_part, db_part, dw, db, _i32(n_chunks), _i32(C)))
    return dx.reshape(cache["shape"]), dw, (db if cache["has_bias"] else None)


# -- attention (kernels/attention.cu) -------------------------------------------------------

def attention_forward(qkv, n_head, dropout=0.0, rng=None, training=True):
    """Fused twin of attention.attention_forward: causal softmax(q k^T / sqrt(hs)) v
    without the (B, NH, T, T) matrix.

    Args: qkv (B, T, 3C) float32, n_head with hs <= HS_MAX; no dropout in training (the
    kernel has none: the dispatch gives a model with dropout the twin). Returns y (B, T, C)
    and a cache (a dict) of qkv, y and lse (B, NH, T), the per-row logsumexp. The cache
    holds y itself, not a copy: the backward reads it (D = rowsum(dy * y)), so do not
    modify y in place.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    assert _kernel_applies(qkv) and hs <= HS_MAX and not (training and dropout > 0.0), \
        "attention kernel: float32 CuPy qkv, hs <= HS_MAX, no dropout"
    xp = get_array_module(qkv)
    qkv = xp.ascontiguousarray(qkv)
    y = xp.empty((B, T, C), dtype=np.float32)
    lse = xp.empty((B, n_head, T), dtype=np.float32)
    _launch("attention.cu", "attention_forward", (_blocks(T, ATT_FWD_ROWS), n_head, B), (128,),
            (qkv, y, lse, _i32(T), _i32(n_head), _i32(hs), _f32(1.0 / math.sqrt(hs))))
    return y, dict(qkv=qkv, y=y, lse=lse, n_head=n_head)


def attention_backward(dy, cache):
    """Fused twin of attention.attention_backward. Args: dy (B, T, C). Returns dqkv
    (B, T, 3C). Scores are recomputed from q, k and lse; deterministic (no atomics)."""
    xp = get_array_module(dy)
    qkv, y, lse, n_head = cache["qkv"], cache["y"], cache["lse"], cache["n_head"]
    B, T, C3 = qkv.shape
    hs = C3 // 3 // n_head
    dy = xp.ascontiguousarray(dy, dtype=np.float32)
    D = xp.empty((B, n_head, T), dtype=np.float32)  # rowsum(dy * y) per head
    _launch("attention.cu", "attention_backward_preprocess", (_blocks(B * T * n_head, 4),),
            (128,), (dy, y, D, _i32(B), _i32(T), _i32(n_head), _i32(hs)))
    dqkv = xp.empty_like(qkv)  # (B, T, 3C): every element is written by dq or dkdv
    args = (qkv, dy, lse, D, dqkv, _i32(T), _i32(n_head), _i32(hs), _f32(1.0 / math.sqrt(hs)))
    grid = (_blocks(T, ATT_BWD_ROWS), n_head, B)
    _launch("attention.cu", "attention_backward_dq", grid, (128,), args)
    _launch("attention.cu", "attention_backward_dkdv", grid, (128,), args)
    return dqkv


# -- cross-entropy (kernels/cross_entropy.cu) -----------------------------------------------

def cross_entropy_forward(logits, targets):
    """Fused twin of cross_entropy.cross_entropy_forward: mean softmax cross-entropy over
    valid targets (-1 ignored). Args: logits (N, V) or (B, T, V), targets (N,) or (B, T).

    Returns loss (0-d) and a cache (a dict) holding dlogits for dloss = 1, computed in the
    same launch (there is no probs buffer to keep).
    """
    assert _kernel_applies(logits), "cross-entropy kernel: float32 CuPy logits"
    xp = get_array_module(logits)
    V = logits.shape[-1]
    z = xp.ascontiguousarray(logits).reshape(-1, V)  # (N, V)
    N = z.shape[0]
    flat_t = xp.ascontiguousarray(targets.reshape(-1), dtype=np.int64)  # (N,)
    n_valid = xp.maximum((flat_t != cross_entropy.IGNORE_INDEX).sum(), 1)  # no host sync
    inv_n_valid = xp.asarray(1.0 / n_valid, dtype=np.float32).reshape(1)
    losses = xp.empty(N, dtype=np.float32)
    dlogits = xp.empty_like(z)
    if N > 0:
        _launch("cross_entropy.cu", "cross_entropy_forward", (N,), (CE_THREADS,),
                (z, flat_t, inv_n_valid, losses, dlogits, _i32(V)))
    loss = losses.sum() / xp.asarray(n_valid, dtype=np.float32)
    return loss, dict(dlogits=dlogits, shape=logits.shape)


def cross_entropy_backward(dloss, cache):
    """Fused twin of cross_entropy.cross_entropy_backward: dlogits * dloss.

    With dloss == 1 (the training loop's case) the cache's buffer is handed over without
    a copy: call the backward once per forward.
    """
    dlogits = cache["dlogits"]
    if not (isinstance(dloss, (int, float)) and dloss == 1.0):
        dlogits = dlogits * dloss
    return dlogits.reshape(cache["shape"])


# -- GELU (kernels/gelu.cu, whose kernels take an optional bias: launched without one) ------

def gelu_forward(x):
    """Fused twin of activations.gelu_forward (tanh GELU). Returns y and a cache (a dict)
    of x (the backward recomputes tanh instead of storing it)."""
    assert _kernel_applies(x), "gelu kernel: float32 CuPy x"
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    _launch("gelu.cu", "gelu_bias_forward", (min(_blocks(x.size, 256), 65535),), (256,),
            (x, x, _i32(0), y, np.int64(x.size), _i32(x.shape[-1])))  # x as the unread bias
    return y, dict(x=x)


def gelu_backward(dy, cache):
    """Fused twin of activations.gelu_backward. Returns dx."""
    xp = get_array_module(dy)
    x = cache["x"]
    dy = xp.ascontiguousarray(dy, dtype=np.float32)
    dx = xp.empty_like(x)
    _launch("gelu.cu", "gelu_bias_backward", (min(_blocks(x.size, 256), 65535),), (256,),
            (dy, x, x, _i32(0), dx, np.int64(x.size), _i32(x.shape[-1])))
    return dx


# -- token embedding backward (kernels/embedding_backward.cu) -------------------------------

def embedding_rows(dout, cache):
    """What an embedding-backward kernel reads: (xp, dout as contiguous (N, C) rows, the ids
    as contiguous int64 (N,), V), from dout (B, T, C) and the gather's cache (idx, V)."""
    xp = get_array_module(dout)
    idx, V = cache
    dout2 = xp.ascontiguousarray(dout).reshape(-1, dout.shape[-1])  # (N, C)
    flat_idx = xp.ascontiguousarray(xp.asarray(idx).reshape(-1), dtype=np.int64)  # (N,)
    return xp, dout2, flat_idx, V


def embedding_backward(dout, cache):
    """Fused twin of embedding.embedding_backward with atomicAdd: dW[v] = sum of dout
    over positions with idx == v. NOT bit-reproducible when ids repeat (the order of the
    float additions varies; benchmarks/kernel_lab/ keeps a deterministic sorted version).
    Takes the twin's cache (idx, V): the forward is the twin's gather. Returns dW (V, C).
    """
    assert _kernel_applies(dout), "embedding kernel: float32 CuPy dout"
    xp, dout2, flat_idx, V = embedding_rows(dout, cache)
    N, C = dout2.shape
    dW = xp.zeros((V, C), dtype=np.float32)
    if N > 0:
        _launch("embedding_backward.cu", "embedding_backward_atomic", (N,),
                (min(256, 32 * _blocks(C, 32)),), (flat_idx, dout2, dW, _i32(N), _i32(C)))
    return dW


# -- AdamW (kernels/adamw.cu) ---------------------------------------------------------------

class FusedAdamW(optim.AdamW):
    """optim.AdamW whose step updates every parameter in one kernel launch.

    Same constructor, state and state_dict as optim.AdamW (its step is the oracle), for
    float32 CuPy parameters (`_kernel_applies`: the dispatch and tinygrad_char.AdamW
    choose it only for those).
    """

    _tables = None  # (key, device tables) built on the first fused step
    _step_dev = None  # (1,) int32 beside the parameters: the step count the kernel reads
    _host_steps = 0  # the step count while _step_dev is None
    _constants = None  # (1,) device arrays: the factor 1.0 and the flag "do not skip"
    skips_on_device = True  # step() takes skip=, a flag on the device (LossScaler.step)

    def _device_tables(self, xp):
        """Pointer and block tables for the current parameters, rebuilt if they changed."""
        names = list(self.params)
        key = tuple((n, self.params[n].size, _address(self.params[n]), _address(self.m[n]),
                     _address(self.v[n])) for n in names)
        if self._tables is None or self._tables[0] != key:
            sizes = [self.params[n].size for n in names]
            block_tensor, block_start = [], []
            for k, size in enumerate(sizes):
                for start in range(0, size, ADAMW_CHUNK):
                    block_tensor.append(k)
                    block_start.append(start)

            def table(values, dtype):
                return xp.asarray(np.asarray(values, dtype=dtype))

            tables = SimpleNamespace(
                names=names,
                params=table([_address(self.params[n]) for n in names], np.uint64),
                exp_avg=table([_address(self.m[n]) for n in names], np.uint64),
                exp_avg_sq=table([_address(self.v[n]) for n in names], np.uint64),
                sizes=table(sizes, np.int64),
                decay=table([int(optim.decays(n, self.params[n])) for n in names], np.int32),
                block_tensor=table(block_tensor, np.int32),
                block_start=table(block_start, np.int64),
            )
            self._tables = (key, tables)
        return self._tables[1]

    @property
    def step_count(self):
        """Updates applied so far. Once the kernel has run, the count lives on the device
        beside the parameters (a float16 step skipped there leaves it unchanged without the
        host knowing), and reading it is one device read: checkpoints and tests read it,
        steps do not."""
        return self._host_steps if self._step_dev is None else int(self._step_dev[0])

    @step_count.setter
    def step_count(self, value):  # optim.AdamW's __init__, load_state_dict and step set it
        self._host_steps = int(value)
        self._step_dev = None  # put on the device again at the next kernel step

    def step(self, grads, lr=None, grad_scale=1.0, skip=None):
        """One AdamW update of every parameter from grads * grad_scale (see
        optim.AdamW.step for the math); the grads are not modified.

        grad_scale: a number or a 0-d array (the clip's factor, optim.clip_scale), which the
        kernel reads from device memory, so a factor computed on the GPU is not read back.
        skip: None, or a 0-d flag on the device (precision.LossScaler.step: the float16
        gradients overflowed); where it is set, the kernel leaves parameters, moments and
        the step count as they are, again without a read-back.
        """
        params = list(self.params.values())
        assert params and _kernel_applies(*params, *self.m.values(), *self.v.values()), \
            "FusedAdamW: float32 CuPy parameters"
        xp = get_array_module(params[0])
        lr = self.lr if lr is None else lr
        tab = self._device_tables(xp)
        g_list = []  # keeps the gradient buffers alive until the launch is queued
        for name in tab.names:
            g = xp.ascontiguousarray(grads[name], dtype=np.float32)
            if g.shape != self.params[name].shape:
                raise ValueError(f"grad {name!r} has shape {g.shape}, "
                                 f"param has {self.params[name].shape}")
            g_list.append(g)
        g_ptrs = xp.asarray(np.asarray([_address(g) for g in g_list], dtype=np.uint64))
        if self._constants is None:
            self._constants = (xp.ones(1, dtype=np.float32), xp.zeros(1, dtype=np.int32))
        one, no_skip = self._constants
        if isinstance(grad_scale, float) and grad_scale == 1.0:
            scale = one
        else:  # rounded to float32 as optim.AdamW rounds it (g * scale.astype(g.dtype))
            scale = xp.asarray(grad_scale, dtype=np.float32).reshape(1)
        if self._step_dev is None:
            self._step_dev = xp.full(1, self._host_steps, dtype=np.int32)
        t = self._step_dev  # advanced to this update's number before the launch
        if skip is None:
            skip = no_skip
            t += 1
        else:
            skip = xp.asarray(skip, dtype=np.int32).reshape(1)
            t += 1 - skip  # unchanged where the step is skipped
        wd = self.weight_decay or 0.0
        _launch("adamw.cu", "adamw_multi_tensor", (len(tab.block_tensor),), (256,),
                (tab.params, g_ptrs, tab.exp_avg, tab.exp_avg_sq, tab.sizes, tab.decay,
                 tab.block_tensor, tab.block_start,
                 np.float64(self.beta1), np.float64(self.beta2), _f32(self.eps),
                 np.float64(lr), _f32(1.0 - lr * wd), scale, skip, t))
        del g_list


# -- the CUDA fast path, by the op-table names it replaces (fused/dispatch.py) --------------
# Every kernel takes float32 only. The ops not listed run the xp ops on CuPy, which is not a
# fallback for these (XP_BY_DESIGN: no warning): the linear layers (cuBLAS through CuPy
# already), the embedding gather and learned positions, dropout and ReLU (one CuPy
# elementwise kernel each), the KV-cache path, sliding-window attention and the sampler (a
# few CuPy calls on (B, V) logits a step, with no host round trip).
KERNELS = {
    "embedding_backward": embedding_backward,
    "layernorm_forward": layernorm_forward,
    "layernorm_backward": layernorm_backward,
    "attention_forward": attention_forward,
    "attention_backward": attention_backward,
    "gelu_forward": gelu_forward,
    "gelu_backward": gelu_backward,
    "cross_entropy_forward": cross_entropy_forward,
    "cross_entropy_backward": cross_entropy_backward,
    "AdamW": FusedAdamW,
}
XP_BY_DESIGN = ("linear", "embedding_forward", "position_embedding", "dropout", "relu",
                "cached_attention", "windowed_attention", "sample_from_uniforms")
