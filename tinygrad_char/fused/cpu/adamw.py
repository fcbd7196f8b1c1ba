"""AdamW as a CPU kernel: optim.AdamW whose step runs one fused loop per tensor.

Same constructor, state, state_dict and math as optim.AdamW (its step is the oracle):
    m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + lr * wd * p   (wd: 2-d only)
Each tensor is read and written once (optim.AdamW makes eight NumPy passes and two
temporaries per tensor). The moments m and v live in one flat buffer each (`self.m` and
`self.v` are dicts of views into them, so checkpoints see the usual per-tensor arrays);
the parameters stay where the model keeps them (they may move, e.g. to shared memory), so
the kernel runs once per tensor on flat views: ~50 calls of a few microseconds a step.
The gradient-norm clip is beside it and in it: `grad_norm` sums g^2 per tensor in one
vectorised float64 loop (the twin, optim.grad_norm, squares into a temporary first), and
the clip's factor (optim.clip_scale) enters the update loop as `grad_scale`, so clipping
costs no pass of its own. float32 and float64 NumPy arrays, C-contiguous (`takes` says
whether a dict of parameters qualifies; the dispatch and tinygrad_char.AdamW ask it).
"""

import numpy as np

from tinygrad_char import optim
from tinygrad_char.fused.cpu._jit import applies, kernel, prange


@kernel
def _adamw(p, g, grad_scale, m, v, beta1, beta2, eps, inv_sqrt_bias2, step_size, decay):
    """One AdamW update of 1-d p, m, v in place from g * grad_scale; decay = 1 - lr * wd
    (1: none). One flat loop: splitting it into chunks of rows stopped LLVM vectorising it
    (1.35 ms against 0.12 ms for the 0.8 M parameters of tiny-cpu)."""
    one = p.dtype.type(1.0)
    for i in prange(p.size):
        gi = g[i] * grad_scale
        mi = beta1 * m[i] + (one - beta1) * gi
        vi = beta2 * v[i] + (one - beta2) * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (np.sqrt(vi) * inv_sqrt_bias2 + eps)


@kernel
def _sum_squares(g):
    """sum(g^2) of a 1-d array, accumulated in float64 (vectorised: 4 lanes a vector; a
    partial sum per thread, added in thread order)."""
    total = 0.0
    for i in prange(g.size):
        x = np.float64(g[i])
        total += x * x
    return total


@kernel
def _scale_into(g, scale):
    """g *= scale, a 1-d array in place (the clip's pass, for tinygrad_char.clip_grad_norm;
    the training loop folds it into _adamw's grad_scale instead)."""
    for i in prange(g.size):
        g[i] = g[i] * scale


def scale_grads(grads, scale):
    """Kernel twin of optim.clip_grad_norm's pass: every g *= scale in place, the scale
    rounded to the grads' dtype first as the twin rounds it."""
    arrays = list(grads.values())
    assert applies(*arrays, dtypes=(np.float32, np.float64)) and \
        all(a.flags.c_contiguous for a in arrays), "scale_grads kernel: C-contiguous NumPy grads"
    for g in arrays:
        _scale_into(g.reshape(-1), g.dtype.type(scale))


def takes(params):
    """True when CpuAdamW can step these parameters: NumPy float32 or float64 arrays of one
    dtype, each C-contiguous (the kernel updates them through flat views)."""
    arrays = list(params.values())
    return bool(arrays) and applies(*arrays, dtypes=(np.float32, np.float64)) and \
        all(a.flags.c_contiguous for a in arrays)


def grad_norm(grads):
    """Kernel twin of optim.grad_norm for NumPy float32/float64 grads: sqrt of the float64
    sum of every g^2 (squared in float64 too, where the twin squares in the grads' dtype:
    float32 grads differ from it by ~1e-8 relative). A 0-d float64 array."""
    arrays = list(grads.values())
    assert applies(*arrays, dtypes=(np.float32, np.float64)), "grad_norm kernel: NumPy grads"
    return np.sqrt(np.float64(sum(_sum_squares(np.ascontiguousarray(g).reshape(-1))
                                  for g in arrays)))


class CpuAdamW(optim.AdamW):
    """optim.AdamW whose step is one kernel call per tensor, for parameters `takes`
    accepts (the caller chooses it only for those)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        assert takes(params), "CpuAdamW: NumPy float32/64 C-contiguous parameters"
        super().__init__(params, lr, betas, eps, weight_decay)
        # the moments in two flat buffers; the dicts hold views of them
        arrays = list(params.values())
        total = sum(a.size for a in arrays)
        self._m_flat = np.zeros(total, dtype=arrays[0].dtype)
        self._v_flat = np.zeros(total, dtype=arrays[0].dtype)
        start = 0
        for name, p in params.items():
            self.m[name] = self._m_flat[start:start + p.size].reshape(p.shape)
            self.v[name] = self._v_flat[start:start + p.size].reshape(p.shape)
            start += p.size

    def grad_norm(self, grads):
        """The global L2 norm of `grads` by the kernel (module function grad_norm)."""
        return grad_norm(grads)

    def step(self, grads, lr=None, grad_scale=1.0):
        """One AdamW update of every parameter from grads * grad_scale (see
        optim.AdamW.step for the math); the grads are not modified."""
        params = list(self.params.values())
        lr = self.lr if lr is None else lr
        self.step_count += 1
        t = self.step_count
        dtype = params[0].dtype.type
        beta1, beta2, eps = dtype(self.beta1), dtype(self.beta2), dtype(self.eps)
        inv_sqrt_bias2 = dtype(1.0 / np.sqrt(1.0 - self.beta2 ** t))
        step_size = dtype(lr / (1.0 - self.beta1 ** t))
        decay_on = dtype(1.0 - lr * (self.weight_decay or 0.0))
        scale = dtype(grad_scale)  # rounded to the grads' dtype, as g *= scale would be
        for name, p in self.params.items():
            g = grads[name]
            if g.shape != p.shape:
                raise ValueError(f"grad {name!r} has shape {g.shape}, param has {p.shape}")
            g = np.ascontiguousarray(g, dtype=p.dtype)
            _adamw(p.reshape(-1), g.reshape(-1), scale, self.m[name].reshape(-1),
                   self.v[name].reshape(-1), beta1, beta2, eps, inv_sqrt_bias2, step_size,
                   decay_on if optim.decays(name, p) else dtype(1.0))
