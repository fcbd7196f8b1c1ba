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

from tinygrad_char.backend import BackendError

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
    Reading the norm's finiteness is one host read-back per step (float16 runs only).
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
        inv_scale = 1.0 / self.scale
        out = {}
        for name, g in grads.items():
            g32 = g.astype("float32")  # a new array for float16 and float32 alike
            g32 *= inv_scale
            out[name] = g32
        return out

    def update(self, grad_norm):
        """After unscale and clipping: True when the step's update should be applied."""
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

    def state_dict(self):
        return {"scale": self.scale, "good_steps": self.good_steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state):
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state["skipped_steps"])
