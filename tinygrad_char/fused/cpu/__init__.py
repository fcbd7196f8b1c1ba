"""Fused CPU kernels: numba-compiled twins of the xp ops, the CPU side of kernels/*.cu.

Each wrapper here has the signature and return convention of the xp op it replaces (its
twin, and its oracle in tests/test_cpu_kernels.py); `dispatch.select_ops("cpu")` (and
"auto" on NumPy) puts them in the model's op table:

    linear.py         linear_forward / linear_backward (the matmuls cut in row blocks, one
                      single-threaded BLAS call per block and thread)
    layernorm.py      layernorm_forward / layernorm_backward
    attention.py      attention_forward / attention_backward, gqa_attention_*: one loop over
                      heads, each head's matmuls (BLAS) and softmax (mask, dropout) together
    gelu.py           gelu_forward / gelu_backward, gelu_bias_*, relu_forward / relu_backward
    cross_entropy.py  cross_entropy_forward / cross_entropy_backward (one pass over logits)
    embedding.py      embedding_* (a gather; a serial scatter-add: deterministic),
                      position_embedding_* (the learned positions added; summed over the batch)
    dropout.py        dropout_forward / dropout_backward (the twin's draw, fused after it)
    adamw.py          CpuAdamW (optim.AdamW with one fused loop per tensor)
    warm.py           compiles them all ahead (by hand, or in the background on a cold cache)

One pool of threads runs every pass, the matmuls included: BLAS runs one thread and the
kernels run on numba's pool (`set_threads`, below; _jit.py says why).

A wrapper runs its kernel only for NumPy arrays of a dtype the kernel takes (float32; the
linear, LayerNorm, ReLU, embedding, dropout and AdamW kernels take float64 too) and
otherwise calls its xp twin, so a model with these ops runs everywhere and stays correct
where no kernel applies (CuPy arrays, float16 mixed precision, float64 checks of the other
ops). A kernel forward's cache is a `CpuCache` (a dict) where it differs from the twin's
(a tuple), which is how a backward knows which forward ran.

numba is optional: this file does not import it (`numba_available` says whether it
imports); the kernel modules do, and `dispatch.select_ops` imports them only when numba
is there. How the kernels are compiled, threaded and chosen: `_jit.py` and
kernels/README.md.

Not here: dispatch (dispatch.select_ops decides) and kernel experiments (benchmarks/).
"""

import contextlib
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
    if not arrays or not isinstance(arrays[0], np.ndarray):
        return False
    dtype = arrays[0].dtype
    if dtype not in dtypes:
        return False
    for a in arrays:  # a loop: this runs on every call, and a generator costs ~1 us more
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            return False
    return True


_THREADS = None  # the pool's thread count once set_threads ran (None: not yet)


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


def set_threads(n=0):
    """Run the CPU work on n threads (0: every core this process may run on); returns n.

    With numba (the kernels): one pool of n threads does everything. NumPy's BLAS is set
    to one thread, and the kernels run their loops and their matmuls (cut in row blocks,
    one single-threaded BLAS call per block: linear.py, attention.py) on numba's pool, so
    no two thread pools compete for the cores. Without numba: BLAS gets the n threads.

    BLAS is set through threadpoolctl, for every BLAS loaded (NumPy's, and SciPy's, which
    numba's matmuls call: it is loaded first so that the limit reaches it); the pool through
    numba.set_num_threads, which holds for the calling thread (a thread started later gets
    numba's default, NUMBA_NUM_THREADS: call this in it too). Runs by itself, with n = 0,
    the first time the kernels are chosen (`ops()`), unless it ran before.
    """
    global _THREADS
    if n is None or n <= 0:
        n = cores()
    pool = numba_available()
    if pool:
        import numba
        import scipy.linalg.cython_blas  # noqa: F401  (numba's np.dot calls SciPy's BLAS)

        n = _pool_size(n)
        numba.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1 if pool else n, user_api="blas")
    except ImportError:  # without threadpoolctl BLAS keeps its own setting
        pass
    _THREADS = n
    return n


def _pool_size(n):
    """n threads for numba's pool, at least 1 and at most the pool it started with."""
    import numba

    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


def threads():
    """The pool's thread count set by set_threads, or None before it ran."""
    return _THREADS


_BLAS = None  # threadpoolctl's controller of the loaded BLAS libraries (None: not made yet)


@contextlib.contextmanager
def few_rows():
    """For a block of work a few rows at a time (generation: one new token per row): its
    matmuls are too small to cut over the pool, so while the block runs NumPy's BLAS gets
    this thread's pool size (`_numpy_blas`: only NumPy's) and every kernel runs its serial
    build on the calling thread (the pool is down to one thread, so a parallel build would
    only pay its start); all is put back after. A no-op without numba, or on a pool of one
    (a server's request threads). Measured on 2 cores, 63 tokens of 8 rows: 29.7-31.4 ms,
    against 32.7 ms on the pool with BLAS on one thread."""
    global _BLAS
    n = 1
    if numba_available():
        import numba

        n = numba.get_num_threads()
    if n > 1 and _BLAS is None:
        _BLAS = _numpy_blas() or False
    if n == 1 or not _BLAS:
        yield
        return
    from tinygrad_char.fused.cpu import _jit

    numba.set_num_threads(1)
    _jit.SERIAL_ONLY = True
    try:
        with _BLAS.limit(limits=n):  # ~5 us in and out
            yield
    finally:
        _jit.SERIAL_ONLY = False
        numba.set_num_threads(n)


def _numpy_blas():
    """threadpoolctl's controller of the BLAS NumPy's matmuls call (~1 ms to make), or None.
    Only NumPy's: SciPy's (the kernels' np.dot) stays on one thread, because two OpenBLAS
    libraries each on threads spin against each other (63 steps of generation without the
    cache took 2.3 s with both on two threads, 46 ms with NumPy's alone). Where NumPy and
    SciPy share one BLAS (as in conda) it is that one; two that are not told apart: None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    controller = ThreadpoolController().select(user_api="blas")
    libs = controller.lib_controllers
    numpy_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    own = [lib for lib in libs if os.path.basename(os.path.dirname(lib.filepath)) ==
           "numpy.libs" or os.path.dirname(lib.filepath) == os.path.join(numpy_dir, "numpy")]
    chosen = own if own else (libs if len(libs) == 1 else [])
    if not chosen:
        return None
    controller.lib_controllers = chosen
    return controller


def use_threads_here(n):
    """The kernels called from this thread run on n threads (numba keeps the count per
    thread): a server's request threads, each on one, share the cores without competing.
    Does nothing without numba."""
    if numba_available():
        import numba

        numba.set_num_threads(_pool_size(n))


def ops():
    """The kernel wrappers by the names `dispatch.select_ops` uses for their twins.
    Imports numba (through the kernel modules): call only when `numba_available()`.
    Sets the threads (`set_threads()`, every core) unless they were set before, and with a
    cold cache starts compiling the kernels ahead in a second process (warm.py)."""
    from tinygrad_char.fused.cpu import (adamw, attention, cross_entropy, dropout, embedding, gelu,
                                         layernorm, linear)
    from tinygrad_char.fused.cpu import warm

    if _THREADS is None:
        set_threads()
    warm.start_in_background(_THREADS)

    return dict(
        linear_forward=linear.linear_forward,
        linear_backward=linear.linear_backward,
        embedding_forward=embedding.embedding_forward,
        embedding_backward=embedding.embedding_backward,
        position_embedding_forward=embedding.position_embedding_forward,
        position_embedding_backward=embedding.position_embedding_backward,
        dropout_forward=dropout.dropout_forward,
        dropout_backward=dropout.dropout_backward,
        layernorm_forward=layernorm.layernorm_forward,
        layernorm_backward=layernorm.layernorm_backward,
        attention_forward=attention.attention_forward,
        attention_backward=attention.attention_backward,
        gqa_attention_forward=attention.gqa_attention_forward,
        gqa_attention_backward=attention.gqa_attention_backward,
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
