"""Fused CPU kernels: numba-compiled twins of the xp ops, the CPU side of kernels/*.cu.

Each wrapper here has the signature and return convention of the xp op it replaces (its
twin, and its oracle in tests/test_cpu_kernels.py); `kernels()` below lists them by the
names of the op table (fused/dispatch.py: `Ops`), which puts them in a model's table:

    linear.py         linear_forward / linear_backward (the matmuls cut in row blocks, one
                      single-threaded BLAS call per block and thread)
    layernorm.py      layernorm_forward / layernorm_backward
    rmsnorm.py        rmsnorm_forward / rmsnorm_backward (Llama's norm: no mean, no bias)
    rope.py           rope_forward / rope_backward (rotary positions on q and k of qkv)
    attention.py      attention_forward / attention_backward, gqa_attention_*: one loop over
                      heads, each head's matmuls (BLAS) and softmax (mask, dropout) together
    gelu.py           gelu_forward / gelu_backward, relu_forward / relu_backward
    swiglu.py         swiglu_forward / swiglu_backward (silu(gate) * up, float32)
    cross_entropy.py  cross_entropy_forward / cross_entropy_backward (one pass over logits)
    embedding.py      embedding_* (a gather; a serial scatter-add: deterministic),
                      position_embedding_* (the learned positions added; summed over the batch)
    dropout.py        dropout_forward / dropout_backward (the twin's draw, fused after it)
    sampling.py       sample_from_uniforms (generation's next-token choice, a row at a time)
    adamw.py          CpuAdamW (optim.AdamW with one fused loop per tensor), grad_norm
    warm.py           compiles them all ahead (python -m, or runtime.setup's helper)

A wrapper takes only what its kernel takes: NumPy arrays of one of the dtypes `kernels()`
lists for it (it asserts so, with `_jit.applies`). The dispatch decides that once, when a
model is built, from the model's dtypes; no wrapper falls back per call, and a forward's
cache is whatever its own backward reads (the two are always chosen together). The only
choices left per call are by work size, all in `_jit.py` ("the per-call rules").

numba is optional: this file does not import it (`numba_available` says whether it
imports); the kernel modules do, and `kernels()` imports them only when asked. How the
kernels are compiled, threaded and chosen: `_jit.py` and kernels/README.md. Threads are set
by `tinygrad_char.runtime.setup`, never here.

Not here: dispatch (fused/dispatch.py decides), thread policy (runtime.py) and kernel
experiments (benchmarks/).
"""

_NUMBA = None  # None: not checked yet; then True / False

F32 = ("float32",)
F32_F64 = ("float32", "float64")

# The ops with no numba kernel by design, which a "cpu" model runs on xp without a warning:
# the KV-cache path (a few rows a step: NumPy's own ops) and sliding-window attention.
XP_BY_DESIGN = ("cached_attention", "windowed_attention")


def numba_available():
    """True when numba imports (the CPU kernels need it; everything else runs without)."""
    global _NUMBA
    if _NUMBA is None:
        try:
            import numba

            _NUMBA = bool(numba.__version__)
        except Exception:  # ImportError, or a numba/NumPy version mismatch raising at import
            _NUMBA = False
    return _NUMBA


def kernels():
    """The numba kernels by the op-table names they replace: name -> (wrapper, the dtypes
    it takes). Imports numba (through the kernel modules): call only when
    `numba_available()`. A new kernel pair is one line per function here."""
    from tinygrad_char.fused.cpu import (adamw, attention, cross_entropy, dropout, embedding,
                                         gelu, layernorm, linear, rmsnorm, rope, sampling,
                                         swiglu)

    return {
        "embedding_forward": (embedding.embedding_forward, F32_F64),
        "embedding_backward": (embedding.embedding_backward, F32_F64),
        "position_embedding_forward": (embedding.position_embedding_forward, F32_F64),
        "position_embedding_backward": (embedding.position_embedding_backward, F32_F64),
        "dropout_forward": (dropout.dropout_forward, F32_F64),
        "dropout_backward": (dropout.dropout_backward, F32_F64),
        "linear_forward": (linear.linear_forward, F32_F64),
        "linear_backward": (linear.linear_backward, F32_F64),
        "layernorm_forward": (layernorm.layernorm_forward, F32_F64),
        "layernorm_backward": (layernorm.layernorm_backward, F32_F64),
        "rmsnorm_forward": (rmsnorm.rmsnorm_forward, F32_F64),
        "rmsnorm_backward": (rmsnorm.rmsnorm_backward, F32_F64),
        "rope_forward": (rope.rope_forward, F32_F64),
        "rope_backward": (rope.rope_backward, F32_F64),
        "attention_forward": (attention.attention_forward, F32),
        "attention_backward": (attention.attention_backward, F32),
        "gqa_attention_forward": (attention.gqa_attention_forward, F32),
        "gqa_attention_backward": (attention.gqa_attention_backward, F32),
        "gelu_forward": (gelu.gelu_forward, F32),
        "gelu_backward": (gelu.gelu_backward, F32),
        "swiglu_forward": (swiglu.swiglu_forward, F32),
        "swiglu_backward": (swiglu.swiglu_backward, F32),
        "relu_forward": (gelu.relu_forward, F32_F64),
        "relu_backward": (gelu.relu_backward, F32_F64),
        "cross_entropy_forward": (cross_entropy.cross_entropy_forward, F32),
        "cross_entropy_backward": (cross_entropy.cross_entropy_backward, F32),
        "sample_from_uniforms": (sampling.sample_from_uniforms, F32_F64),
        "AdamW": (adamw.CpuAdamW, F32_F64),
    }
