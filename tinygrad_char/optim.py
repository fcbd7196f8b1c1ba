"""AdamW, global gradient-norm clipping, and the warm-up + cosine learning-rate schedule.

All three work on the model's flat dicts (name -> array); nothing here knows about layers.
"""

import math

from tinygrad_char.backend import get_array_module


def decays(name, param):
    """nanoGPT's rule: tensors of 2 or more dimensions decay (matmul weights and
    embeddings); biases and LayerNorm parameters (1-d) do not."""
    return param.ndim >= 2


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), updating params in place.

    For each parameter p with gradient g, at step t = 1, 2, ...:
        m = b1 m + (1 - b1) g
        v = b2 v + (1 - b2) g^2
        m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)
        p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)      (wd only where `decays`)
    The decay term uses p before the Adam update, as torch.optim.AdamW.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.params = params
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.step_count = 0
        self.m = {k: get_array_module(p).zeros_like(p) for k, p in params.items()}
        self.v = {k: get_array_module(p).zeros_like(p) for k, p in params.items()}

    def grad_norm(self, grads):
        """The global L2 norm of `grads` (optim.grad_norm; CpuAdamW has a kernel for it)."""
        return grad_norm(grads)

    def step(self, grads, lr=None, grad_scale=1.0):
        """Apply one update with `grads` (same keys as params) times `grad_scale` (a number
        or a 0-d array: the gradient clip's clip_scale); `lr` overrides self.lr. The grads
        are not modified."""
        lr = self.lr if lr is None else lr
        self.step_count += 1
        t = self.step_count
        bias1 = 1.0 - self.beta1 ** t
        bias2 = 1.0 - self.beta2 ** t
        step_size = lr / bias1
        inv_sqrt_bias2 = 1.0 / math.sqrt(bias2)
        for name, p in self.params.items():
            xp = get_array_module(p)
            g, m, v = grads[name], self.m[name], self.v[name]
            if not (isinstance(grad_scale, float) and grad_scale == 1.0):
                g = g * _as_dtype(grad_scale, g.dtype)  # the clip, rounded as g *= scale
            # two temporaries per tensor (three when clipping); every other line updates a
            # buffer in place
            m *= self.beta1
            m += (1.0 - self.beta1) * g  # m = b1 m + (1 - b1) g
            g2 = g * g
            g2 *= 1.0 - self.beta2
            v *= self.beta2
            v += g2  # v = b2 v + (1 - b2) g^2
            if self.weight_decay and decays(name, p):
                p *= 1.0 - lr * self.weight_decay  # decoupled decay, on p before the update
            denom = xp.sqrt(v, out=g2)  # reuses g2's buffer
            denom *= inv_sqrt_bias2
            denom += self.eps  # sqrt(v_hat) + eps
            update = xp.divide(m, denom, out=denom)
            update *= step_size  # lr * m_hat / (sqrt(v_hat) + eps)
            p -= update

    def state_dict(self):
        """Everything needed to resume exactly: hyperparameters, step and both moments."""
        return {"step": self.step_count, "lr": self.lr, "betas": (self.beta1, self.beta2),
                "eps": self.eps, "weight_decay": self.weight_decay,
                "m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state):
        """Restore from `state_dict()`; moments are copied into the existing arrays."""
        missing = set(self.params) - set(state["m"])
        if missing:
            raise ValueError(f"optimizer state lacks moments for {sorted(missing)[:3]}...")
        self.step_count = int(state["step"])
        self.lr = float(state["lr"])
        self.beta1, self.beta2 = (float(b) for b in state["betas"])
        self.eps = float(state["eps"])
        self.weight_decay = float(state["weight_decay"])
        for name in self.params:
            xp = get_array_module(self.params[name])
            self.m[name][...] = xp.asarray(state["m"][name])
            self.v[name][...] = xp.asarray(state["v"][name])


def grad_norm(grads):
    """norm = sqrt(sum over tensors of sum(g^2)), accumulated in float64 (the sum runs over
    every parameter) without a float64 copy. A 0-d float64 array (no host sync on the GPU)."""
    arrays = list(grads.values())
    xp = get_array_module(*arrays)
    return xp.sqrt(sum((g * g).sum(dtype="float64") for g in arrays))


def clip_scale(norm, max_norm):
    """The factor that clips gradients of global norm `norm` to at most max_norm:
    min(1, max_norm / (norm + 1e-6)) (a 0-d array like norm); 1.0 when max_norm is None or
    <= 0 (no clipping). The training loop hands it to the optimizer's step (grad_scale),
    which applies it in the same pass as the update."""
    if max_norm is None or max_norm <= 0:
        return 1.0
    return get_array_module(norm).minimum(1.0, max_norm / (norm + 1e-6))


def _as_dtype(scale, dtype):
    return scale.astype(dtype) if hasattr(scale, "astype") else dtype.type(scale)


def clip_grad_norm(grads, max_norm, norm=grad_norm):
    """Scale all gradients in place so their global L2 norm is at most max_norm:
    g *= clip_scale(norm(grads), max_norm). Returns the norm before clipping. `norm`:
    how the norm is computed (tinygrad_char.clip_grad_norm passes a kernel's)."""
    total = norm(grads)
    if max_norm is not None and max_norm > 0:
        scale = clip_scale(total, max_norm)
        for g in grads.values():
            g *= _as_dtype(scale, g.dtype)
    return total


def cosine_lr(step, learning_rate, min_lr, warmup_steps, max_steps):
    """nanoGPT's schedule. step counts from 0.

        step < warmup:          lr * (step + 1) / (warmup + 1)       linear warm-up
        warmup <= step <= max:  min_lr + 0.5 (1 + cos(pi r)) (lr - min_lr),
                                r = (step - warmup) / (max - warmup)  cosine decay
        step > max:             min_lr
    """
    if step < warmup_steps:
        return learning_rate * (step + 1) / (warmup_steps + 1)
    if step > max_steps or max_steps <= warmup_steps:
        return min_lr
    ratio = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)
