"""The one place that decides which implementation of each op runs, once, when a model is
built: the xp ops of tinygrad_char/ops/ (the reference), the CUDA kernels of fused/cuda.py
or the numba CPU kernels of fused/cpu/.

    ops = select_ops("auto", "numpy", config, "float32")  # an Ops table; GPT does this
    ops.layernorm_forward(x, w, b)                         # whichever was chosen
    describe(ops, ops_used(config))                        # {"layernorm_forward": "numba", ...}

`Ops` is the op table: one field per op, its default the xp op. A fast path is a dict of
overrides by field name (fused/cpu/__init__.py: `kernels()`, fused/cuda.py: `KERNELS`),
and `select_ops` keeps those that can take this model's inputs. What a fast path cannot take
is decided here, from the backend, the dtypes and the config, never per call:

- dtype: each op sees the parameters' dtype (embeddings, normalisation, cross-entropy,
  AdamW) or the compute dtype (float16 in mixed precision: the matmuls, attention, the
  activations, RoPE); dropout sees both. A kernel runs only if it takes what its op sees.
- CUDA attention: head size <= cuda.HS_MAX, and no dropout (the kernel has none).
- Grouped-query attention has a numba kernel, no CUDA one; sliding-window attention (past
  block_size) and the KV-cache path have their own entries and always run on the xp ops.

Forward and backward of an op are chosen together, by the same rules, so a backward never
needs to ask which forward made its cache. The only choices left per call are by work
size, in fused/cpu/_jit.py ("the per-call rules").

Also here: `AdamW` and `clip_grad_norm`, the public optimizer and clip
(tinygrad_char.AdamW): optim's with the fastest step that takes the parameters, chosen
once when the optimizer is made.
"""

import warnings
from dataclasses import dataclass, fields
from typing import Callable

from tinygrad_char import optim
from tinygrad_char.backend import BackendError
from tinygrad_char.ops import (activations, attention, cross_entropy, dropout, embedding,
                               layernorm, linear, rope, sampling)

KERNEL_MODES = ("auto", "xp", "fused", "cpu")
CPU_FIX = 'install numba (pip install numba, or reinstall tinygrad-char), or use --kernels xp'
CUDA_FIX = "use --kernels xp"


@dataclass(frozen=True)
class Ops:
    """A model's op table: the function each op name runs, in the order of the forward.
    The defaults are the xp ops (the readable reference); `select_ops` replaces fields with a
    fast path's kernels. Each kernel has its xp twin's signature."""
    embedding_forward: Callable = embedding.embedding_forward
    embedding_backward: Callable = embedding.embedding_backward
    position_embedding_forward: Callable = embedding.position_embedding_forward
    position_embedding_backward: Callable = embedding.position_embedding_backward
    dropout_forward: Callable = dropout.dropout_forward
    dropout_backward: Callable = dropout.dropout_backward
    layernorm_forward: Callable = layernorm.layernorm_forward
    layernorm_backward: Callable = layernorm.layernorm_backward
    rmsnorm_forward: Callable = layernorm.rmsnorm_forward
    rmsnorm_backward: Callable = layernorm.rmsnorm_backward
    linear_forward: Callable = linear.linear_forward
    linear_backward: Callable = linear.linear_backward
    rope_forward: Callable = rope.rope_forward
    rope_backward: Callable = rope.rope_backward
    attention_forward: Callable = attention.attention_forward  # NH key/value heads
    attention_backward: Callable = attention.attention_backward
    gqa_attention_forward: Callable = attention.gqa_attention_forward  # NKV < NH
    gqa_attention_backward: Callable = attention.gqa_attention_backward
    # a sequence past block_size (rope, sinusoidal): each query sees the block_size latest keys
    windowed_attention_forward: Callable = attention.gqa_attention_forward
    windowed_attention_backward: Callable = attention.gqa_attention_backward
    cached_attention_forward: Callable = attention.cached_attention_forward  # generation
    gelu_forward: Callable = activations.gelu_forward
    gelu_backward: Callable = activations.gelu_backward
    relu_forward: Callable = activations.relu_forward
    relu_backward: Callable = activations.relu_backward
    gelu_exact_forward: Callable = activations.gelu_exact_forward
    gelu_exact_backward: Callable = activations.gelu_exact_backward
    swiglu_forward: Callable = activations.swiglu_forward
    swiglu_backward: Callable = activations.swiglu_backward
    cross_entropy_forward: Callable = cross_entropy.cross_entropy_forward
    cross_entropy_backward: Callable = cross_entropy.cross_entropy_backward
    sample_from_uniforms: Callable = sampling.sample_from_uniforms  # generation's next token
    AdamW: type = optim.AdamW


OP_NAMES = tuple(f.name for f in fields(Ops))


def family(name):
    """An op's name without _forward / _backward ("layernorm_forward" -> "layernorm");
    "AdamW" -> "adamw"."""
    return name.lower().removesuffix("_forward").removesuffix("_backward")


# -- which ops a model runs, and what their inputs are ------------------------------------

def ops_used(config):
    """The op-table names a GPT of this config calls (training and generation), in the
    order of its forward."""
    C = ["embedding"]
    if config.pos_encoding == "learned":
        C.append("position_embedding")
    C += ["dropout", "rmsnorm" if config.normalization == "rmsnorm" else "layernorm",
          "linear"]
    if config.pos_encoding == "rope":
        C.append("rope")
    C.append("attention" if config.kv_heads == config.n_head else "gqa_attention")
    if config.pos_encoding != "learned":
        C.append("windowed_attention")  # only sequences past block_size
    C += ["cached_attention", config.activation, "cross_entropy"]
    names = [n for c in C for n in (f"{c}_forward", f"{c}_backward") if n in OP_NAMES]
    return names + ["sample_from_uniforms", "AdamW"]


# The families whose inputs are in the parameters' dtype; the rest see the compute dtype
# (float16 in mixed precision: model.GPT._low), and dropout sees both (the embeddings'
# output in the parameters' dtype, each branch's in the compute dtype).
PARAM_DTYPE = ("embedding", "position_embedding", "layernorm", "rmsnorm", "cross_entropy",
               "sample_from_uniforms", "adamw")


def _dtypes_seen(name, dtype, compute_dtype):
    compute = compute_dtype or dtype
    fam = family(name)
    if fam == "dropout":
        return {dtype, compute}
    return {dtype} if fam in PARAM_DTYPE else {compute}


def _cannot_take(path, name, dtypes, config, dtype, compute_dtype):
    """Why the kernel of fast path `path` for op `name` cannot run this model, or None."""
    seen = _dtypes_seen(name, dtype, compute_dtype) - set(dtypes)
    if seen:
        return f"{'/'.join(sorted(seen))} inputs"
    if path == "cuda" and family(name) == "attention" and config is not None:
        from tinygrad_char.fused.cuda import HS_MAX

        hs = config.n_embd // config.n_head
        if hs > HS_MAX:
            return f"head size {hs} > {HS_MAX}"
        if config.dropout > 0:
            return "dropout inside attention"
    return None


# -- the fast paths ---------------------------------------------------------------------------

def _fast_path(mode, backend_name):
    """(path, why_not): the path "numba", "cuda" or None (the xp ops) of a kernels mode on
    a backend; why_not, when a requested path cannot take this backend's arrays (the path
    is None then). Raises the one-line error of a mode that cannot run on this machine."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"unknown kernels mode {mode!r}: choose one of {KERNEL_MODES}")
    from tinygrad_char.fused.cpu import numba_available

    if mode == "cpu":
        if not numba_available():
            raise BackendError(f"kernels 'cpu' need numba, which does not import here; "
                               f"{CPU_FIX}")
        if backend_name != "numpy":
            return None, "the numba kernels take NumPy arrays and this model's are CuPy"
        return "numba", None
    if mode == "fused":
        from tinygrad_char.backend import _cupy_or_error

        try:
            _cupy_or_error()
        except BackendError as e:
            raise BackendError(f"kernels 'fused' need a CUDA GPU with CuPy ({e}); "
                               f"or {CUDA_FIX}") from None
        if backend_name != "cupy":
            return None, "the CUDA kernels take CuPy arrays and this model's are NumPy"
        return "cuda", None
    if mode == "auto" and backend_name == "numpy" and numba_available():
        return "numba", None
    if mode == "auto" and backend_name == "cupy":
        return "cuda", None
    return None, None


def check_mode(mode, backend_name="numpy"):
    """Raise the one-line error of a kernels mode this machine cannot run (the commands
    call this before reading any data); returns nothing."""
    _fast_path(mode, backend_name)


def _kernels(path):
    """The fast path's overrides: name -> (function, dtypes it takes), and the families it
    runs on the xp ops by design (not a fallback to warn about)."""
    if path == "numba":
        from tinygrad_char.fused import cpu

        return cpu.kernels(), cpu.XP_BY_DESIGN
    from tinygrad_char.fused import cuda

    return {name: (fn, ("float32",)) for name, fn in cuda.KERNELS.items()}, cuda.XP_BY_DESIGN


def select_ops(mode, backend_name="numpy", config=None, dtype="float32", compute_dtype=None):
    """The op table for a kernels mode ("auto", "xp", "cpu" or "fused") and a model: its
    backend ("numpy" or "cupy"), its GPTConfig, parameter dtype and compute dtype (None, or
    "float16" for mixed precision). config None: no config rule (every kernel whose dtype
    fits; benchmarks and tests of single ops).

    - "xp": the xp ops of tinygrad_char/ops/ everywhere.
    - "cpu": the numba kernels where they take the model's inputs; needs numba (BackendError
      naming the fix otherwise).
    - "fused": the CUDA kernels where they take the model's inputs; needs CuPy and a working
      GPU (BackendError naming the fix otherwise).
    - "auto" (the default): "cpu" on NumPy when numba imports, "fused" on CuPy, else "xp".
    A requested "cpu" or "fused" that leaves some op this model runs on the xp ops (no
    kernel, or one that cannot take the inputs) says which, once, as a warning; "auto" says
    nothing here (the entry points print `summary` instead).
    """
    path, not_here = _fast_path(mode, backend_name)
    chosen, fallbacks = {}, {}
    if path is not None:
        table, xp_by_design = _kernels(path)
        for name, (fn, dtypes) in table.items():
            why = _cannot_take(path, name, dtypes, config, dtype, compute_dtype)
            if why is None:
                chosen[name] = fn
            else:
                fallbacks[family(name)] = why
    ops = Ops(**chosen)
    if mode in ("cpu", "fused") and config is not None:
        if not_here:
            warnings.warn(f"kernels {mode!r}: {not_here}; every op runs on the xp ops",
                          stacklevel=4)
        else:
            missing = []  # families this model runs on xp that the path does not mean to
            for name in ops_used(config):
                fam = family(name)
                if implementation(getattr(ops, name)) == "xp" and fam not in missing and \
                        fam not in xp_by_design and name not in xp_by_design:
                    missing.append(fam)
            if missing:
                named = ", ".join(f"{f} ({fallbacks[f]})" if f in fallbacks else f
                                  for f in missing)
                warnings.warn(f"kernels {mode!r}: no {path} kernel for {named} in this "
                              f"model; those run on the xp ops", stacklevel=4)
    return ops


# -- saying what was chosen -------------------------------------------------------------------

def implementation(fn):
    """"numba", "cuda" or "xp": where an op-table entry comes from."""
    module = fn.__module__
    if module.startswith("tinygrad_char.fused.cpu"):
        return "numba"
    if module.startswith("tinygrad_char.fused.cuda"):
        return "cuda"
    return "xp"


def describe(ops, names=OP_NAMES):
    """{op name: "numba" | "cuda" | "xp"} for these names of the table."""
    return {name: implementation(getattr(ops, name)) for name in names}


def summary(described):
    """One line from `describe`'s dict, fast paths first, families in the given order:
    `kernels: numba (embedding, layernorm, ...), xp (cached_attention)`. A family whose
    forward and backward run on different paths is listed by op name under each."""
    by_family = {}
    for name, impl in described.items():
        by_family.setdefault(family(name), {})[name] = impl
    groups = {}
    for fam, impls in by_family.items():
        if len(set(impls.values())) == 1:
            groups.setdefault(next(iter(impls.values())), []).append(fam)
        else:
            for name, impl in impls.items():
                groups.setdefault(impl, []).append(name)
    order = sorted(groups, key=lambda impl: impl == "xp")
    return "kernels: " + ", ".join(f"{impl} ({', '.join(groups[impl])})" for impl in order)


# -- the public optimizer and clip -------------------------------------------------------------

def adamw_class(params):
    """The AdamW class for these parameters: fused/cpu's CpuAdamW for NumPy float32/64
    arrays when numba imports, fused/cuda's FusedAdamW for float32 CuPy arrays, else
    optim.AdamW. All have optim.AdamW's constructor, math and state_dict."""
    arrays = list(params.values())
    if not arrays:
        return optim.AdamW
    module = type(arrays[0]).__module__
    from tinygrad_char.fused.cpu import numba_available

    if module == "numpy" and numba_available():
        from tinygrad_char.fused.cpu import adamw

        if adamw.takes(params):
            return adamw.CpuAdamW
    if module.startswith("cupy"):
        from tinygrad_char.fused import cuda

        if cuda._kernel_applies(*arrays):
            return cuda.FusedAdamW
    return optim.AdamW


def AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    """tinygrad_char.AdamW: optim.AdamW (see there for the math and arguments) with the
    fastest step that takes `params`, chosen here once (`adamw_class`). A function, not a
    class: its result is an optim.AdamW (subclass) instance."""
    return adamw_class(params)(params, lr, betas, eps, weight_decay)


def grad_norm(grads):
    """optim.grad_norm, by the numba kernel for NumPy float32/64 grads of one dtype when
    numba imports (decided per call: this function takes any dict of arrays)."""
    from tinygrad_char.fused.cpu import F32_F64, numba_available

    if numba_available():
        from tinygrad_char.fused.cpu import _jit, adamw

        if _jit.applies(*grads.values(), dtypes=F32_F64):
            return adamw.grad_norm(grads)
    return optim.grad_norm(grads)


def clip_grad_norm(grads, max_norm):
    """tinygrad_char.clip_grad_norm: optim.clip_grad_norm (the math and its reference), with
    the norm and the in-place scaling by the numba kernels for C-contiguous NumPy float32/64
    grads of one dtype when numba imports (decided per call: this takes any dict of arrays).
    Scales the grads in place; returns the norm before clipping."""
    from tinygrad_char.fused.cpu import numba_available

    if numba_available():
        from tinygrad_char.fused.cpu import adamw

        if adamw.takes(grads):  # the kernels' inputs: C-contiguous float32/64 NumPy arrays
            total = adamw.grad_norm(grads)
            if max_norm is not None and max_norm > 0:
                adamw.scale_grads(grads, optim.clip_scale(total, max_norm))
            return total
    return optim.clip_grad_norm(grads, max_norm, norm=grad_norm)
