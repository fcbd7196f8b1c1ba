"""How every CPU kernel is compiled, and the vectorisable math they share.

    @kernel
    def f(...): ...     # numba.njit(cache=True, error_model="numpy", fastmath=FASTMATH),
                        # built twice: parallel=True, and serial for small calls (Kernel)

- cache=True: compiled machine code is kept on disk beside the source (__pycache__), so
  only the first run of a checkout pays the compile (12.6 s for a training step's kernels
  on a 2-core EPYC, less with warm.py's helper; a warm start 0.4 s: kernels/README.md).
- error_model="numpy": a division by zero gives inf/nan as NumPy does instead of raising;
  numba's default error model checks every division, which stops loops vectorising.
- FASTMATH: only the flags that let LLVM vectorise reductions and fuse multiply-adds
  (reassociation, contraction, reciprocals, signed zeros). Not "nnan"/"ninf": the causal
  mask and overflow checks rely on inf and NaN behaving as IEEE says, and a NaN gradient
  must stay NaN so that the training loop's divergence check sees it. Not "afn"
  (approximate library functions): the one approximation used is `tanh_approx`, stated.
- parallel=True: kernels loop over rows (heads, row blocks) with `prange`, on numba's
  thread pool, and the matmuls beside them run on the same pool (fused/cpu/linear.py,
  attention.py: one single-threaded BLAS call per block and thread), so one pool does all
  the work, as PyTorch's OpenMP pool does. Two pools would fight: with OpenBLAS on its own
  two threads beside numba's, a loop of matmuls and ReLUs took 68 ms against 7.3 ms
  (benchmarks/results/cpu_threads.md). `runtime.setup` (`runtime.set_threads`) sets BLAS
  to one thread and the pool to n; without it the kernels still hold the BLAS they call
  inside the pool at one thread (`Kernel`, blas=True).
- The threading layer is OpenMP where numba finds it (its idle threads spin briefly, so a
  kernel right after a matmul starts at once; sleeping threads cost tens of microseconds
  per kernel to wake on the machines measured), then TBB, then numba's workqueue. GNU
  OpenMP does not survive fork(): a process that forks after the kernels ran must not run
  them in the child (start children with spawn, as subprocess and mpiexec do).
- The disk cache is keyed on each kernel's own source file: after editing this file, delete
  tinygrad_char/fused/cpu/__pycache__/*.nb[ci] (or set NUMBA_CACHE_DIR to a fresh folder),
  or kernels that inline `exp_poly`/`tanh_approx` keep their old machine code.

No SVML on the machines measured, so `np.exp`/`np.tanh` inside a numba loop are scalar
library calls: `exp_into` and `tanh_approx` below are written to vectorise.
"""

import os
import types

import numba
import numpy as np

if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in \
        os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
OPTIONS = dict(cache=True, error_model="numpy", fastmath=FASTMATH)  # every build's
prange = numba.prange


# -- the per-call rules: the only choices made on each call, all by work size -------------
# The implementation of every op is chosen once, when a model is built (fused/dispatch.py).
# What remains per call is how much of the machine a call is worth, decided here alone:
#  1. A kernel's serial or parallel build (`Kernel.__call__`): a call whose work array holds
#     fewer than SERIAL_BELOW elements runs its serial build on the calling thread (waking
#     the pool costs ~2 us, more than such a call's work); every call runs serial while
#     SERIAL_ONLY is set (by `runtime.few_rows`, for generation's steps of a few rows).
#  2. `too_small(n)`: the linear layer's products under SMALL_MATMUL multiply-adds and the
#     embedding lookups under SERIAL_BELOW elements are handed to their xp twin (NumPy's own
#     matmul or take, as fast there, and no pool to wake): linear.py, embedding.py.
SERIAL_BELOW = 1 << 14  # elements of a kernel's work array below which it runs serial
SERIAL_ONLY = False  # every call serial (set by runtime.few_rows while BLAS has threads)
SMALL_MATMUL = 1 << 20  # multiply-adds below which a linear layer runs on NumPy's matmul
#   (cutting one row's (1, 128) x (128, 384) in blocks cost 5.5 us against 3.5 us; 63 tokens
#   of 8 rows took 36.9 ms with them cut, 29.9 ms not)


def applies(*arrays, dtypes=(np.float32,)):
    """True when every array is a NumPy array of one dtype among `dtypes`: what a kernel
    takes (the wrappers assert it; the dispatch decides it once, from the model's dtypes)."""
    if not arrays or not isinstance(arrays[0], np.ndarray):
        return False
    dtype = arrays[0].dtype
    if dtype.type not in dtypes:
        return False
    for a in arrays:  # a loop, not all(<generator>): called on every kernel call
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            return False
    return True


def too_small(n, matmul=False):
    """Rule 2 above: True when work of n elements (n multiply-adds with matmul=True) is too
    small to share over the pool."""
    return n < (SMALL_MATMUL if matmul else SERIAL_BELOW)


# -- the BLAS inside the pool ---------------------------------------------------------------
# Kernels that call np.dot inside a prange loop (linear.py, attention.py) run SciPy's BLAS
# (numba's np.dot calls it) on the pool's threads, and it must run one thread there: an
# OpenBLAS on threads called from inside an OpenMP loop oversubscribes the cores and prints
# "OpenBLAS Warning : Detect OpenMP Loop and this application may hang". `runtime.setup`
# sets it to one thread for the whole run; a kernel built with `blas=True` also reads its
# count on each parallel call (~1 us) and, if something gave it more (a library user
# without setup, threadpoolctl elsewhere), holds it at one for the call and puts it back.
_POOL_BLAS = None  # threadpoolctl controllers of the BLAS numba calls (None: not looked up)


def _pool_blas():
    """The BLAS libraries numba's np.dot may call, as threadpoolctl lib controllers: every
    loaded BLAS but NumPy's own when NumPy brings its own (pip wheels), else all of them.
    Empty without threadpoolctl."""
    global _POOL_BLAS
    if _POOL_BLAS is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (load it, so that it is listed)
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _POOL_BLAS = []
            return _POOL_BLAS
        libs = ThreadpoolController().select(user_api="blas").lib_controllers
        numpy_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
        own = [lib for lib in libs if os.path.dirname(lib.filepath) in
               (os.path.join(numpy_dir, "numpy.libs"), os.path.join(numpy_dir, "numpy"))]
        _POOL_BLAS = [lib for lib in libs if lib not in own] or libs
    return _POOL_BLAS


class Kernel:
    """A CPU kernel compiled twice, parallel (its `prange` loops on the pool) and serial (the
    same loops on the calling thread), called as the function it wraps. Which build a call
    takes is rule 1 above: calls whose work array (argument `work`, default the first) holds
    fewer than SERIAL_BELOW elements take the serial build (generation, a row at a time: 63
    tokens took 18.9 ms with every call parallel, 16.5 ms with this rule, 2-core AMD EPYC).
    blas=True: the kernel calls np.dot inside its prange loops, so its parallel calls hold
    that BLAS at one thread (`_pool_blas`). Both builds are cached on disk, the serial one
    under the name `<name>_serial` (numba's cache key holds the function's name and bytecode,
    not its options)."""

    def __init__(self, fn, work=0, blas=False):
        self.parallel = numba.njit(parallel=True, **OPTIONS)(fn)
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                  fn.__defaults__, fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_serial"
        self.serial = serial_kernel(twin)
        self.work, self.blas = work, blas
        self.__name__, self.__doc__, self.__wrapped__ = fn.__name__, fn.__doc__, fn

    def __call__(self, *args):
        if SERIAL_ONLY or args[self.work].size < SERIAL_BELOW:
            return self.serial(*args)
        if not self.blas:
            return self.parallel(*args)
        raised = [(lib, n) for lib in _pool_blas() if (n := lib.get_num_threads()) > 1]
        for lib, _ in raised:
            lib.set_num_threads(1)
        try:
            return self.parallel(*args)
        finally:
            for lib, n in raised:
                lib.set_num_threads(n)


def kernel(fn=None, work=0, blas=False):
    """Compile `fn` as a CPU kernel (see the module docstring for the options and Kernel for
    the two builds); `@kernel(work=i)` when argument i, not the first, measures the work;
    `@kernel(blas=True)` when it calls np.dot inside its prange loops."""
    if fn is None:
        return lambda f: Kernel(f, work, blas)
    return Kernel(fn, work, blas)


def serial_kernel(fn):
    """Compile `fn` as a CPU kernel that is serial by design (no prange: a scatter-add whose
    order must be fixed), with the options of `kernel` but never
    parallel."""
    return numba.njit(**OPTIONS)(fn)


def helper(fn):
    """Compile a small function called from kernels (inlined by LLVM)."""
    return numba.njit(inline="always", **OPTIONS)(fn)


# -- row max: a loop-carried float `m = x if x > m else m` does not vectorise (LLVM makes a
# vector max reduction of floats only under "nnan", which FASTMATH leaves out), but an
# integer one does. A float32's bits i, as int32, order like the floats once the negative
# ones are flipped: key = i ^ ((i >> 31) & 0x7fffffff) (an involution, so the max key maps
# back to the max float). Exact; -0.0 orders below 0.0, +NaN above everything (the max is
# NaN then; a -NaN is passed over, and the exp below keeps it NaN), -inf below every
# finite. Measured on (2048, 283) float32 rows: 27 us against 198 us for the float loop;
# the cross-entropy kernel went from 392 to 182 us there (views made once per call: a
# view per row cost 20 us of it at V = 65).
@helper
def row_max_bits(bits, n):
    """The int32 bits of max(row[:n]), given bits = the float32 row viewed as int32, 1 <= n
    <= bits.size (view the whole array once per prange iteration, `z.view(np.int32)`: a
    view made before the prange loop and written inside it lost its writes in numba
    0.68). Read the float back through a float32 view of an int32 buffer that holds it."""
    m = np.int32(-2147483648)
    for j in range(n):
        i = bits[j]
        key = i ^ ((i >> 31) & np.int32(0x7fffffff))
        m = key if key > m else m
    return m ^ ((m >> 31) & np.int32(0x7fffffff))


# -- exp: exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln 2 / 2 --------------------------
# exp(r) by its Taylor polynomial to degree 7 (|error| < 2e-8 relative on |r| <= 0.347, below
# float32 rounding), 2^k built in the exponent bits of an int32 buffer viewed as float32.
# Inputs below EXP_MIN (exp < smallest normal float32) give 0, -inf included, NaN gives NaN
# (the clamps are written so that a NaN passes them); inputs above
# EXP_MAX are clamped to it (no caller exceeds 0: every use subtracts the row max first).
LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125  # ln 2 split so that k * LN2_HI is exact for |k| < 2^11
LN2_LO = 1.428606765330187e-06
EXP_MIN = -87.33
EXP_MAX = 88.0


@helper
def exp_poly(r):
    """exp(r) for |r| <= ln 2 / 2, float32: Taylor to degree 7 in Horner form."""
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    return p * r + np.float32(1.0)


@helper
def exp_into(x, out, bits):
    """out[i] = exp(x[i]) for float32 1-d x, out (may be x itself); bits: int32 scratch of
    at least x.size. Worst relative error 3e-7 against float64 exp (measured on [-87, 0],
    and tested)."""
    n = x.size
    scale = bits[:n].view(np.float32)
    for i in range(n):
        xi = x[i]
        xi = np.float32(EXP_MIN) if xi < np.float32(EXP_MIN) else xi  # -inf too; NaN stays
        xi = np.float32(EXP_MAX) if xi > np.float32(EXP_MAX) else xi
        k = np.floor(xi * np.float32(LOG2E) + np.float32(0.5))
        r = xi - k * np.float32(LN2_HI) - k * np.float32(LN2_LO)
        bits[i] = (np.int32(k) + np.int32(127)) << 23
        out[i] = np.float32(0.0) if x[i] <= np.float32(EXP_MIN) else exp_poly(r)
    for i in range(n):
        out[i] *= scale[i]


# -- tanh: Eigen's rational approximation (generic_fast_tanh_float), as PyTorch's CPU ops use
# tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= TANH_CLAMP (beyond it tanh is 1 in float32).
# Worst error against np.tanh in float32: TANH_MAX_ABS_ERROR (measured and asserted by
# tests/test_cpu_kernels.py over a dense grid).
TANH_CLAMP = 7.90531110763549805
TANH_MAX_ABS_ERROR = 5e-7  # measured 3.0e-7 on [-20, 20]
_A1 = 4.89352455891786e-03
_A3 = 6.37261928875436e-04
_A5 = 1.48572235717979e-05
_A7 = 5.12229709037114e-08
_A9 = -8.60467152213735e-11
_A11 = 2.00018790482477e-13
_A13 = -2.76076847742355e-16
_B0 = 4.89352518554385e-03
_B2 = 2.26843463243900e-03
_B4 = 1.18534705686654e-04
_B6 = 1.19825839466702e-06


@helper
def tanh_approx(x):
    """tanh of a float32 scalar by the rational approximation above (vectorises); exactly
    +-1 beyond +-TANH_CLAMP, so that GELU's h (1 - h) is exactly 0 where it saturates."""
    big = x >= np.float32(TANH_CLAMP)
    small = x <= np.float32(-TANH_CLAMP)
    x = x if x < np.float32(TANH_CLAMP) else np.float32(TANH_CLAMP)
    x = x if x > np.float32(-TANH_CLAMP) else np.float32(-TANH_CLAMP)
    x2 = x * x
    p = np.float32(_A13)
    p = p * x2 + np.float32(_A11)
    p = p * x2 + np.float32(_A9)
    p = p * x2 + np.float32(_A7)
    p = p * x2 + np.float32(_A5)
    p = p * x2 + np.float32(_A3)
    p = p * x2 + np.float32(_A1)
    p = p * x
    q = np.float32(_B6)
    q = q * x2 + np.float32(_B4)
    q = q * x2 + np.float32(_B2)
    q = q * x2 + np.float32(_B0)
    t = p / q
    t = np.float32(1.0) if big else t
    return np.float32(-1.0) if small else t
