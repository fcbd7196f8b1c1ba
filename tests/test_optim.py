"""AdamW against a hand computation, gradient clipping, and the learning-rate schedule."""

import math

import numpy as np
import pytest

from tinygrad_char import AdamW, clip_grad_norm, cosine_lr
from tinygrad_char.optim import clip_scale, grad_norm

from conftest import to_np


def hand_adamw(p, grads, lr, b1, b2, eps, wd):
    """Two (or more) AdamW steps written out scalar by scalar."""
    p = [float(v) for v in p]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        for i in range(len(p)):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            p[i] = p[i] - lr * wd * p[i] - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_two_steps_by_hand(xp, wd):
    W0 = np.array([[0.5, -1.0], [2.0, 0.25]])
    b0 = np.array([0.3, -0.7])
    params = {"w": xp.asarray(W0.copy()), "b": xp.asarray(b0.copy())}
    g_w = [np.array([[0.1, -0.2], [0.3, 0.05]]), np.array([[-0.4, 0.1], [0.0, 0.2]])]
    g_b = [np.array([1.0, -2.0]), np.array([0.5, 0.5])]
    opt = AdamW(params, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    for gw, gb in zip(g_w, g_b):
        opt.step({"w": xp.asarray(gw), "b": xp.asarray(gb)})
    ref_w = hand_adamw(W0.ravel(), [g.ravel() for g in g_w], 0.01, 0.9, 0.95, 1e-8, wd)
    ref_b = hand_adamw(b0, g_b, 0.01, 0.9, 0.95, 1e-8, 0.0)  # 1-d: never decays
    np.testing.assert_allclose(to_np(params["w"]).ravel(), ref_w, rtol=1e-12)
    np.testing.assert_allclose(to_np(params["b"]), ref_b, rtol=1e-12)
    assert opt.step_count == 2


def test_adamw_state_dict_resumes_exactly():
    rng = np.random.default_rng(0)
    p1 = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    p2 = {k: v.copy() for k, v in p1.items()}
    grads = [{k: rng.standard_normal(v.shape) for k, v in p1.items()} for _ in range(4)]
    a = AdamW(p1, lr=0.1, weight_decay=0.1)
    for g in grads:
        a.step(g)
    b = AdamW(p2, lr=0.1, weight_decay=0.1)
    for g in grads[:2]:
        b.step(g)
    state = {k: (dict((n, x.copy()) for n, x in v.items()) if isinstance(v, dict) else v)
             for k, v in b.state_dict().items()}
    c = AdamW(p2, lr=0.5)  # different hyperparameters: the state must restore them
    c.load_state_dict(state)
    for g in grads[2:]:
        c.step(g)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])


def test_clip_grad_norm(xp):
    grads = {"a": xp.asarray([3.0, 0.0]), "b": xp.asarray([[4.0]])}
    norm = clip_grad_norm(grads, 1.0)
    assert abs(float(norm) - 5.0) < 1e-12
    total = math.sqrt(sum(float((to_np(g) ** 2).sum()) for g in grads.values()))
    assert abs(total - 1.0) < 1e-5
    np.testing.assert_allclose(to_np(grads["a"]), [0.6, 0.0], rtol=1e-5)
    small = {"a": xp.asarray([0.3, 0.4])}
    clip_grad_norm(small, 1.0)  # below the limit: untouched
    np.testing.assert_array_equal(to_np(small["a"]), [0.3, 0.4])


@pytest.mark.parametrize("max_norm", [1.0, 10.0, 0.0, None])
def test_the_clip_folded_into_the_step_equals_clipping_first(xp, max_norm):
    """optimizer.step(grads, grad_scale=clip_scale(grad_norm(grads), c)), the training
    loop's call, gives bit for bit the parameters of clip_grad_norm(grads, c) then step,
    and leaves the grads as they were."""
    rng = np.random.default_rng(3)
    shapes = {"w": (5, 3), "b": (3,)}
    start = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    fused = {k: xp.asarray(v.copy()) for k, v in start.items()}
    first = {k: xp.asarray(v.copy()) for k, v in start.items()}
    opt_fused, opt_first = AdamW(fused, lr=1e-2), AdamW(first, lr=1e-2)
    for _ in range(3):
        g = {k: rng.standard_normal(s).astype(np.float32) * 3 for k, s in shapes.items()}
        grads = {k: xp.asarray(v) for k, v in g.items()}
        norm = opt_fused.grad_norm(grads)  # the training loop's (a kernel's on NumPy)
        opt_fused.step(grads, grad_scale=clip_scale(norm, max_norm))
        for k in shapes:
            np.testing.assert_array_equal(to_np(grads[k]), g[k], err_msg="step changed grads")
        assert float(clip_grad_norm(grads, max_norm)) == float(norm)
        opt_first.step(grads)
    for k in shapes:
        np.testing.assert_array_equal(to_np(fused[k]), to_np(first[k]), err_msg=k)
    assert clip_scale(norm, max_norm) == 1.0 if not max_norm else True


def test_cosine_schedule_values():
    lr, min_lr, warm, total = 1e-3, 1e-4, 100, 2000
    assert cosine_lr(0, lr, min_lr, warm, total) == pytest.approx(lr / 101)
    assert cosine_lr(99, lr, min_lr, warm, total) == pytest.approx(lr * 100 / 101)
    assert cosine_lr(100, lr, min_lr, warm, total) == pytest.approx(lr)
    assert cosine_lr(1050, lr, min_lr, warm, total) == pytest.approx((lr + min_lr) / 2)
    assert cosine_lr(2000, lr, min_lr, warm, total) == pytest.approx(min_lr)
    assert cosine_lr(5000, lr, min_lr, warm, total) == min_lr
    values = [cosine_lr(s, lr, min_lr, warm, total) for s in range(100, 2001)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
