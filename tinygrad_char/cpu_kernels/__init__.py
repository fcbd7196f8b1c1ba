"""Fused CPU kernels: numba-compiled twins of the xp ops, the CPU side of kernels/*.cu.

Each wrapper here has the signature and return convention of the xp op it replaces (its
twin, and its oracle in tests/test_cpu_kernels.py); `kernels.select_ops("cpu")` (and
"auto" on NumPy) puts them in the model's op table:

    layernorm.py      layernorm_forward / layernorm_backward
    attention.py      attention_forward / attention_backward (softmax, mask, dropout fused;
                      the matmuls stay with NumPy's BLAS)
    gelu.py           gelu_forward / gelu_backward, gelu_bias_*, relu_forward / relu_backward
    cross_entropy.py  cross_entropy_forward / cross_entropy_backward (one pass over logits)
    embedding.py      embedding_backward (a serial scatter-add: deterministic)
    adamw.py          CpuAdamW (optim.AdamW with one fused loop per tensor)

A wrapper runs its kernel only for NumPy arrays of a dtype the kernel takes (float32; the
LayerNorm, ReLU, embedding and AdamW kernels take float64 too) and otherwise calls its
xp twin, so a model with these ops runs everywhere and stays correct where no kernel
applies (CuPy arrays, float16 mixed precision, float64 checks of the other ops). A kernel
forward's cache is a `CpuCache` (a dict); the twins' caches are tuples, which is how a
backward knows which forward ran.

numba is optional: this file does not import it (`numba_available` says whether it
imports); the kernel modules do, and `kernels.select_ops` imports them only when numba
is there. How the kernels are compiled, threaded and chosen: `_jit.py` and
kernels/README.md.

Not here: dispatch (kernels.select_ops decides), the matmuls (NumPy's BLAS), and kernel
experiments (benchmarks/).
"""

import os

import numpy as np

_NUMBA = None  # None: not checked yet; then True / False


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


class CpuCache(dict):
    """What a CPU kernel's forward saves for its backward (a dict). The xp twins' caches
    are tuples, so `isinstance(cache, CpuCache)` tells a backward which forward ran."""


def applies(*arrays, dtypes=(np.float32,)):
    """True when every array is a NumPy array of one dtype among `dtypes`: the only inputs
    the kernel takes (CuPy arrays and other dtypes go to the twin)."""
    if not arrays:
        return False
    first = arrays[0]
    return all(isinstance(a, np.ndarray) and a.dtype == first.dtype for a in arrays) and \
        first.dtype in dtypes


def set_threads(n=0):
    """Use n threads (0: every core this process may run on) for NumPy's BLAS and the
    numba kernels; returns n.

    The kernels are compiled serial (`_jit.PARALLEL` is False, see there why), so on
    these sizes the threads are BLAS's: the matmuls run on n threads while the fused
    passes between them run on the calling thread, and the two never compete. Set through
    threadpoolctl (OpenBLAS, MKL or BLIS, whichever NumPy loaded) and numba.set_num_threads
    when numba imports.
    """
    if n is None or n <= 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # without threadpoolctl BLAS keeps its own setting
        pass
    if numba_available() and os.environ.get("TINYGRAD_CHAR_CPU_PARALLEL") == "1":
        import numba  # only the parallel build has threads of its own (starting them is
        #               not free, so the serial default leaves numba's pool alone)

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return n


def ops():
    """The kernel wrappers by the names `kernels.select_ops` uses for their twins.
    Imports numba (through the kernel modules): call only when `numba_available()`."""
    from . import adamw, attention, cross_entropy, embedding, gelu, layernorm

    return dict(
        embedding_backward=embedding.embedding_backward,
        layernorm_forward=layernorm.layernorm_forward,
        layernorm_backward=layernorm.layernorm_backward,
        attention_forward=attention.attention_forward,
        attention_backward=attention.attention_backward,
        gelu_forward=gelu.gelu_forward,
        gelu_backward=gelu.gelu_backward,
        gelu_bias_forward=gelu.gelu_bias_forward,
        gelu_bias_backward=gelu.gelu_bias_backward,
        relu_forward=gelu.relu_forward,
        relu_backward=gelu.relu_backward,
        cross_entropy_forward=cross_entropy.cross_entropy_forward,
        cross_entropy_backward=cross_entropy.cross_entropy_backward,
        AdamW=adamw.CpuAdamW,
    )
