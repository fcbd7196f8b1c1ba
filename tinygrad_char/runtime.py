"""The process-wide settings of a run, made in one explicit call: threads, allocator, and
compiling the CPU kernels ahead.

    import tinygrad_char.runtime as runtime
    runtime.setup(threads=0)      # every core; what training, generation and serving call

Nothing else in the package changes the process: building a GPT, stepping it or importing
a module leaves BLAS's thread counts, numba's pool, the allocator and the process's
children as they were. The entry points (training, examples/generate.py, examples/serve.py,
the benchmarks' step timer) call `setup`; a library user may, for the same speed:

- threads: with numba (the CPU kernels), one pool of n threads does everything: NumPy's
  and SciPy's BLAS run one thread each, and the kernels run their loops and their matmuls
  (cut in row blocks, one single-threaded BLAS call per block: fused/cpu/linear.py,
  attention.py) on numba's pool, so no two pools compete for the cores. Without numba:
  BLAS gets the n threads. (The kernels are correct without this: they hold the BLAS they
  call inside the pool at one thread themselves, fused/cpu/_jit.py.)
- allocator: glibc keeps freed large arrays in its heap (`keep_freed_memory_in_heap`).
- compile-ahead: on a cold numba cache with a spare core, a second process compiles the
  kernels while the run starts (fused/cpu/warm.py); it is reaped when it ends.

Also the thread policies of the parts that share the cores differently: `use_threads_here`
(a server's request threads), `few_rows` (generation's steps of a few rows), and
`set_threads` alone (each MPI rank's share of a node).

Not here: which implementation of an op runs (fused/dispatch.py decides, when a model is
built) and the per-call size rules of the kernels (fused/cpu/_jit.py).
"""

import contextlib
import os
import subprocess
import sys
import threading

import numpy as np

from tinygrad_char.fused.cpu import numba_available

_THREADS = None  # the pool's thread count once set_threads ran (None: not yet)
_HELPER = None  # the compile-ahead process (subprocess.Popen), once started


def setup(threads=0, cpu_kernels=True, allocator=True):
    """Set up this process for a run on the CPU. Returns the thread count set (None: left
    alone).

    threads: n threads for the CPU work (0: every core this process may run on; None:
        leave the thread counts alone), see `set_threads`.
    cpu_kernels: whether the numba kernels will run (kernels "auto" or "cpu" on NumPy):
        then their pool gets the threads and BLAS one (False, kernels "xp": BLAS gets
        them), and with a cold kernel cache they are compiled in a second process while
        the run starts (`start_compile_ahead`; off with TINYGRAD_CHAR_COMPILE_AHEAD=0).
    allocator: glibc keeps freed large arrays in its heap (`keep_freed_memory_in_heap`).
    """
    n = None if threads is None else set_threads(threads, cpu_kernels)
    if allocator:
        keep_freed_memory_in_heap()
    if cpu_kernels and numba_available():
        start_compile_ahead(n if n is not None else threads_now())
    return n


# -- threads ----------------------------------------------------------------------------------

def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


def set_threads(n=0, cpu_kernels=True):
    """Run the CPU work on n threads (0 or None: every core this process may run on);
    returns n.

    With numba and cpu_kernels (the numba kernels will run): numba's pool gets n threads
    (numba.set_num_threads, which holds for the calling thread: a thread started later gets
    NUMBA_NUM_THREADS, so call this, or `use_threads_here`, in it too) and every loaded BLAS
    one, through threadpoolctl (SciPy's, which numba's np.dot calls, is loaded first so that
    the limit reaches it). Without numba, or for the xp ops alone (cpu_kernels False): BLAS
    gets the n threads.
    """
    global _THREADS
    if n is None or n <= 0:
        n = cores()
    pool = cpu_kernels and numba_available()
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


def threads_now():
    """The threads the CPU kernels run on from this thread now (numba's pool; 1 without
    numba)."""
    if not numba_available():
        return 1
    import numba

    return numba.get_num_threads()


def use_threads_here(n):
    """The kernels called from this thread run on n threads (numba keeps the count per
    thread): a server's request threads, each on one, share the cores without competing.
    Does nothing without numba."""
    if numba_available():
        import numba

        numba.set_num_threads(_pool_size(n))


_BLAS = None  # threadpoolctl's controller of NumPy's BLAS (None: not made yet; False: none)


@contextlib.contextmanager
def few_rows():
    """For a block of work a few rows at a time (generation: one new token per row): its
    matmuls are too small to cut over the pool, so while the block runs NumPy's BLAS gets
    this thread's pool size (`_numpy_blas`: only NumPy's) and every kernel runs its serial
    build on the calling thread (fused/cpu/_jit.SERIAL_ONLY, one of the kernels' per-call
    rules, which _jit.py lists); all is put back after. A no-op without numba, or on a pool
    of one (a server's request threads). Measured on 2 cores, 63 tokens of 8 rows:
    29.7-31.4 ms, against 32.7 ms on the pool with BLAS on one thread."""
    global _BLAS
    n = threads_now()
    if n > 1 and _BLAS is None:
        _BLAS = _numpy_blas() or False
    if n == 1 or not _BLAS:
        yield
        return
    import numba

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


# -- allocator ----------------------------------------------------------------------------------

def keep_freed_memory_in_heap():
    """Ask glibc to serve large arrays from its heap instead of fresh mmap()s.

    By default glibc maps every allocation above 128 KiB (adjusting up to 32 MiB) with
    mmap and unmaps it on free, so each new activation array costs a page fault per 4 KiB
    on first touch. A training step allocates and frees the same sizes every step; keeping
    them in the heap made the tiny-cpu NumPy step ~10% faster here (GELU forward on
    (12, 64, 512) float32: 1.46 -> 0.74 ms). A no-op where mallopt does not exist.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
        libc.mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


# -- compiling the CPU kernels ahead ------------------------------------------------------------

def start_compile_ahead(threads):
    """Start `python -m tinygrad_char.fused.cpu.warm --reverse` in a second process when the
    kernel cache is cold, the process has a spare core (threads >= 2) and
    TINYGRAD_CHAR_COMPILE_AHEAD is not 0 (warm.py says what it compiles and what it saves).
    A thread waits for it, so it is reaped as soon as it ends (no zombie), and it is
    stopped when this process exits. Returns its Popen, or None (not needed, or started
    before)."""
    global _HELPER
    from tinygrad_char.fused.cpu import warm

    if _HELPER is not None or threads < 2 or \
            os.environ.get("TINYGRAD_CHAR_COMPILE_AHEAD", "1") == "0" or warm.cache_is_warm():
        return None
    env = {**os.environ, "TINYGRAD_CHAR_COMPILE_AHEAD": "0", "NUMBA_NUM_THREADS": "1"}
    _HELPER = subprocess.Popen([sys.executable, "-m", "tinygrad_char.fused.cpu.warm",
                                "--reverse"], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=_HELPER.wait, name="compile-ahead reaper", daemon=True).start()
    import atexit

    atexit.register(_stop_helper)
    return _HELPER


def _stop_helper():
    if _HELPER is not None and _HELPER.poll() is None:
        _HELPER.terminate()  # what it wrote is complete: numba replaces files atomically
        try:
            _HELPER.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _HELPER.kill()
