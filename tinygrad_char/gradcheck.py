"""Finite-difference gradient checks for any forward/backward pair, yours included.

    from tinygrad_char.gradcheck import check_op
    errors = check_op(my_forward, my_backward, [x, w], seed=0)   # float64 inputs
    assert max(errors.values()) < 1e-6

The fake loss is L = sum(out * dout) for a fixed random dout, so dL/dout = dout and the
backward under test is called with exactly that. Each input's analytic gradient is
compared with central differences  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)  on every
entry (or on `max_entries` sampled entries for big inputs), with the relative error

    rel = |a - n| / max(|a| + |n|, 1e-12)         (|.| is the L2 norm over the entries)

Use float64: in float32 the rounding of L swamps the difference. Not a test runner and
not an autograd: it only evaluates the functions you give it.
"""

import numpy as np

from tinygrad_char.backend import get_array_module


def rel_error(analytic, numeric):
    """|a - n| / max(|a| + |n|, 1e-12) with L2 norms, as a Python float."""
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), 1e-12))


def _to_host(a):
    xp = get_array_module(a)
    return xp.asnumpy(a) if xp is not np else np.asarray(a)


def numerical_gradient(loss_fn, x, eps=1e-5, entries=None):
    """Central differences of the scalar loss_fn() with respect to x, perturbed in place.

    Args:
        loss_fn: () -> float, reading x.
        x: a float64 array (NumPy or CuPy), restored after each probe.
        entries: flat indices to probe (None = all).
    Returns (flat indices, numeric gradient at those indices) as host arrays.
    """
    flat = x.reshape(-1)  # a view: perturbing it perturbs x
    entries = np.arange(flat.size) if entries is None else np.asarray(entries)
    grad = np.empty(len(entries))
    for j, i in enumerate(entries):
        orig = float(flat[i])
        flat[i] = orig + eps
        plus = float(loss_fn())
        flat[i] = orig - eps
        minus = float(loss_fn())
        flat[i] = orig
        grad[j] = (plus - minus) / (2 * eps)
    return entries, grad


def check_op(forward, backward, inputs, dout=None, eps=1e-5, max_entries=None, seed=0,
             wrt=None):
    """Compare backward against finite differences of forward.

    Args:
        forward: f(*inputs) -> (out, cache); out may be a 0-d array (a loss).
        backward: g(dout, cache) -> grad or tuple of grads in the order of `inputs`
            (None for an input without a gradient, e.g. integer ids).
        inputs: list of arrays; the float ones are checked (float64 recommended).
        dout: upstream gradient (default: standard normal, fixed by seed).
        max_entries: check at most this many sampled entries per input (None = all).
        wrt: indices of the inputs to check (default: every floating input).
    Returns: dict input index -> relative error.
    """
    out, cache = forward(*inputs)
    xp = get_array_module(out, *[a for a in inputs if hasattr(a, "dtype")])
    rng = np.random.default_rng(seed)
    if dout is None:
        dout = xp.asarray(rng.standard_normal(np.shape(out)), dtype=out.dtype)
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)

    def loss():
        o, _ = forward(*inputs)
        return float((o * dout).sum())

    if wrt is None:
        wrt = [i for i, a in enumerate(inputs)
               if hasattr(a, "dtype") and a.dtype.kind == "f"]
    errors = {}
    for i in wrt:
        x = inputs[i]
        if grads[i] is None:
            raise AssertionError(f"backward returned no gradient for input {i}")
        if grads[i].shape != x.shape:
            raise AssertionError(f"gradient for input {i} has shape {grads[i].shape}, "
                                 f"input has {x.shape}")
        entries = None
        if max_entries is not None and x.size > max_entries:
            entries = rng.choice(x.size, size=max_entries, replace=False)
        entries, numeric = numerical_gradient(loss, x, eps, entries)
        analytic = _to_host(grads[i]).reshape(-1)[entries]
        errors[i] = rel_error(analytic, numeric)
    return errors


def check_model(model, idx, targets, eps=1e-5, max_entries=24, seed=0):
    """Check every parameter tensor of a GPT (float64, dropout 0) against finite differences
    of its loss. Large tensors are checked on `max_entries` sampled entries.
    Returns dict name -> relative error.
    """
    model.forward(idx, targets)
    grads = model.backward()
    rng = np.random.default_rng(seed)

    def loss():
        return float(model.forward(idx, targets)[1])

    errors = {}
    for name, p in model.params.items():
        entries = None
        if p.size > max_entries:
            entries = rng.choice(p.size, size=max_entries, replace=False)
        entries, numeric = numerical_gradient(loss, p, eps, entries)
        analytic = _to_host(grads[name]).reshape(-1)[entries]
        errors[name] = rel_error(analytic, numeric)
    return errors
