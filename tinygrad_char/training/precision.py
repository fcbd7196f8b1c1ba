"""Training precisions: float32, tf32, float16 mixed precision with dynamic loss scaling.

    float32   every array float32 (the default).
    tf32      float32 arrays; the GPU's 2-D matmuls (the linear layers) run on tensor cores
              with their inputs rounded to TF32 (10-bit mantissa, float32 accumulation).
              GPU only (compute capability 8.0 or later).
    float16   mixed precision, as PyTorch's autocast + GradScaler: float32 master weights
              and AdamW moments; the matmuls and the ops between them (attention, GELU) run
              in float16 on a float16 copy of the weights, while the residual stream, the
              embeddings, LayerNorm and the softmax cross-entropy stay float32 (their sums
              lose too much in float16). The loss gradient is multiplied by a loss scale so
              that small float16 gradients do not flush to zero; the float32 gradients are
              divided by it before clipping, and a step whose gradients overflowed is
              skipped (LossScaler).
    float64   every array float64 (gradient checks).

On CuPy, 2-D float16 matmuls go to cuBLAS's GemmEx in float16 (tensor cores); CuPy runs
batched (3-D and up) float16 matmuls, the attention's, as float32 GEMMs on upcast copies.
"""

import numpy as np

from tinygrad_char.backend import BackendError, get_array_module

PRECISIONS = ("float32", "tf32", "float16", "float64")


def dtypes(precision):
    """(parameter dtype, compute dtype or None) of a precision name.

    The parameter dtype is what the model stores and AdamW updates; the compute dtype, when
    not None, is what the matmuls run in.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {PRECISIONS}")
    if precision == "float16":
        return "float32", "float16"
    if precision == "tf32":
        return "float32", None
    return precision, None


def set_tf32(xp, enabled=True):
    """Let (or stop) float32 2-D matmuls on CuPy use TF32 tensor cores.

    CuPy decides its cuBLAS compute type per dtype once (from the CUPY_TF32 environment
    variable, at the first matmul); this sets it explicitly for float32. Enabling raises
    BackendError on NumPy; disabling there is a no-op.
    """
    if xp is np:
        if enabled:
            raise BackendError("--dtype tf32 needs --backend cupy: TF32 is a tensor-core "
                               "format of NVIDIA GPUs (compute capability 8.0+); on the CPU "
                               "use --dtype float32")
        return
    import os

    os.environ["CUPY_TF32"] = "1" if enabled else "0"  # for a process not yet decided
    from cupy._core import _routines_linalg as linalg

    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled
                            else linalg.COMPUTE_TYPE_DEFAULT)


class LossScaler:
    """Dynamic loss scaling for float16 gradients (the rule of torch.amp.GradScaler).

    Each step the loss gradient is multiplied by `scale` before the backward. Then:
        grads32 = float32(grads) / scale                       (unscale)
        overflow (a non-finite gradient norm): skip the update, scale *= backoff, count it
        otherwise: apply the update; after growth_interval updates in a row, scale *= growth
    A skipped step still advances the learning-rate schedule, as in PyTorch.

    Where the state lives: on the host (Python numbers) while the gradient norm is a NumPy
    value. Once `update` meets a norm on the GPU, `scale`, `good_steps` and `skipped_steps`
    become 0-d arrays there (scale in float32, exact for the powers of two it takes by
    default) and are updated by array ops, so a float16 step reads nothing back: the
    overflow decision is a device flag that `step` hands to an optimizer that skips on the
    device (FusedAdamW). state_dict() reads the three back (checkpoints, logs).
    """

    def __init__(self, init_scale=2.0 ** 16, growth=2.0, backoff=0.5, growth_interval=2000,
                 min_scale=1.0):
        self.scale = float(init_scale)
        self.growth, self.backoff = float(growth), float(backoff)
        self.growth_interval = int(growth_interval)
        self.min_scale = float(min_scale)
        self.good_steps = 0  # updates applied since the scale last changed
        self.skipped_steps = 0  # updates skipped for overflow, over the whole run

    def unscale(self, grads):
        """float32 copies of `grads` divided by the scale (a dict with the same keys)."""
        inv_scale = 1.0 / self.scale  # a device scalar once the state is on the GPU
        out = {}
        for name, g in grads.items():
            g32 = g.astype("float32")  # a new array for float16 and float32 alike
            g32 *= inv_scale
            out[name] = g32
        return out

    def update(self, grad_norm):
        """After unscale and clipping: whether the step's update should be applied.

        A NumPy norm: a Python bool (one host check, free on the CPU). A norm on the GPU:
        a 0-d bool array on the device, the state updated there (update_arrays)."""
        xp = get_array_module(grad_norm)
        if xp is not np:
            return self.update_arrays(grad_norm, xp)
        finite = bool(np.isfinite(float(grad_norm)))
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= self.growth
                self.good_steps = 0
        else:
            self.skipped_steps += 1
            self.scale = max(self.scale * self.backoff, self.min_scale)
            self.good_steps = 0
        return finite

    def update_arrays(self, grad_norm, xp):
        """update()'s rule as array ops on module xp, with no branch on a value: the GPU's
        path (about ten tiny launches instead of a read-back). Moves the state into xp
        arrays on first use; returns `finite` as a 0-d bool array. Works on NumPy too,
        which is how the CPU tests compare it with update()."""
        scale = xp.asarray(self.scale, dtype=np.float32)
        good = xp.asarray(self.good_steps, dtype=np.int64)
        skipped = xp.asarray(self.skipped_steps, dtype=np.int64)
        finite = xp.isfinite(grad_norm)
        good = xp.where(finite, good + 1, 0)
        grow = good >= self.growth_interval
        backed_off = xp.maximum(scale * np.float32(self.backoff), np.float32(self.min_scale))
        self.scale = xp.where(grow, scale * np.float32(self.growth),
                              xp.where(finite, scale, backed_off))
        self.good_steps = xp.where(grow, 0, good)
        self.skipped_steps = skipped + ~finite
        return finite

    def step(self, optimizer, grads, lr, grad_norm, grad_scale=1.0):
        """update(grad_norm), then optimizer.step(grads, lr, grad_scale=grad_scale) unless
        the gradients overflowed (torch's GradScaler.step). On the host the decision is a
        Python branch. On the GPU it stays a device flag: an optimizer that skips on the
        device (`skips_on_device`, FusedAdamW) gets it as skip= and nothing is read back;
        any other (optim.AdamW, the xp reference, for --kernels xp) branches in Python, so
        the flag is read back there, one small read per step."""
        finite = self.update(grad_norm)
        if isinstance(finite, bool):
            if finite:
                optimizer.step(grads, lr, grad_scale=grad_scale)
        elif getattr(optimizer, "skips_on_device", False):
            optimizer.step(grads, lr, grad_scale=grad_scale, skip=~finite)
        elif bool(finite):
            optimizer.step(grads, lr, grad_scale=grad_scale)
        return finite

    def state_dict(self):
        """The state as Python numbers (read back from the GPU when it lives there)."""
        return {"scale": float(self.scale), "good_steps": int(self.good_steps),
                "skipped_steps": int(self.skipped_steps)}

    def load_state_dict(self, state):
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state["skipped_steps"])
