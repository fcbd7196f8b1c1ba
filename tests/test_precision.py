"""Precisions: float16 mixed precision against float32, the loss scaler, tf32 and float16
settings in training. NumPy emulates float16 (slowly), so these models are tiny."""

import json

import numpy as np
import pytest

import tinygrad_char.training.train as train_module
from tinygrad_char import GPT
from tinygrad_char.backend import BackendError
from tinygrad_char.model import ConfigError, GPTConfig
from tinygrad_char.optim import clip_grad_norm
from tinygrad_char.training.precision import LossScaler, dtypes, set_tf32
from tinygrad_char.training.train import train

from conftest import gpu, interrupt_at, quiet, tiny_train_config, to_np

VARIANTS = [dict(norm=n, tie_weights=t, activation=a, bias=b)
            for n in ("pre", "post") for t in (True, False)
            for a, b in (("gelu", True), ("relu", False))]


def batch(V=29, B=3, T=12, seed=0):
    r = np.random.default_rng(seed)
    return r.integers(0, V, (B, T)), r.integers(0, V, (B, T))


def test_precision_names_map_to_parameter_and_compute_dtypes():
    assert dtypes("float32") == ("float32", None)
    assert dtypes("tf32") == ("float32", None)
    assert dtypes("float16") == ("float32", "float16")
    assert dtypes("float64") == ("float64", None)
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        dtypes("bf16")


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_float16_mixed_precision_matches_float32(variant):
    """Same weights, same batch, same dropout masks: the float16 run's loss within 1e-3 and
    every gradient (unscaled) within 1e-2 relative (L2) of float32's. The residual stream,
    LayerNorm, the embeddings and the softmax are float32; the matmul weights' gradients
    come out float16."""
    cfg = GPTConfig(vocab_size=29, block_size=12, n_layer=2, n_head=2, n_embd=16,
                    dropout=0.1, **variant)
    ref = GPT(cfg, seed=3)
    mixed = GPT(cfg, seed=3, compute_dtype="float16")
    idx, targets = batch()
    ref.seed_dropout(5)
    mixed.seed_dropout(5)
    logits_ref, loss_ref = ref.forward(idx, targets)
    logits, loss = mixed.forward(idx, targets)
    assert logits.dtype == np.float32 and loss.dtype == np.float32
    assert abs(float(loss) - float(loss_ref)) <= 1e-3 * float(loss_ref)
    scale = 1024.0
    grads_ref = ref.backward()
    grads = mixed.backward(loss_scale=scale)
    for name, g_ref in grads_ref.items():
        g = grads[name]
        low = ".attn." in name or ".mlp." in name or name == "lm_head.weight"
        assert g.dtype == (np.float16 if low else np.float32), (name, g.dtype)
        g = g.astype(np.float64) / scale
        err = np.linalg.norm(g - g_ref) / max(np.linalg.norm(g_ref), 1e-30)
        assert err <= 1e-2, f"{name}: relative error {err:.2e}"
    assert all(p.dtype == np.float32 for p in mixed.params.values())  # master weights


def test_float16_with_fused_kernels_is_refused():
    cfg = GPTConfig(vocab_size=29, block_size=8, n_layer=1, n_head=2, n_embd=8)
    with pytest.raises(ConfigError, match="float16 mixed precision runs on --kernels xp"):
        GPT(cfg, compute_dtype="float16", kernels="fused")
    with pytest.raises(ConfigError, match="compute_dtype must be None or 'float16'"):
        GPT(cfg, compute_dtype="bfloat16")


# -- the loss scaler ---------------------------------------------------------------------------

def test_loss_scaler_backs_off_skips_and_grows():
    s = LossScaler(init_scale=1024.0, growth_interval=3, min_scale=256.0)
    assert s.update(np.float64(1.0)) and s.good_steps == 1
    assert not s.update(np.float64(np.inf))  # overflow: skip, halve, restart the count
    assert (s.scale, s.good_steps, s.skipped_steps) == (512.0, 0, 1)
    assert not s.update(np.float64(np.nan))
    assert not s.update(np.float64(np.nan))  # never below min_scale
    assert (s.scale, s.skipped_steps) == (256.0, 3)
    for _ in range(3):
        assert s.update(np.float64(0.5))
    assert (s.scale, s.good_steps) == (512.0, 0)  # 3 good steps in a row: doubled
    restored = LossScaler()
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert restored.state_dict() == s.state_dict()


def test_unscale_gives_float32_divided_by_the_scale():
    s = LossScaler(init_scale=8.0)
    grads = {"a": np.array([8.0, -16.0], np.float16), "b": np.array([4.0], np.float32)}
    out = s.unscale(grads)
    assert out["a"].dtype == out["b"].dtype == np.float32
    assert out["a"].tolist() == [1.0, -2.0] and out["b"].tolist() == [0.5]
    assert grads["b"].tolist() == [4.0]  # the input is not modified


def test_an_overflowing_loss_scale_is_detected_by_the_gradient_norm():
    """A loss scale too large for float16 (1e9 times a gradient of ~1e-2) gives inf
    gradients; after unscaling, the clipping norm is not finite and the step is skipped."""
    cfg = GPTConfig(vocab_size=29, block_size=12, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg, seed=0, compute_dtype="float16")
    idx, targets = batch()
    model.forward(idx, targets)
    scaler = LossScaler(init_scale=1e9)
    with np.errstate(over="ignore", invalid="ignore"):
        grads = scaler.unscale(model.backward(loss_scale=scaler.scale))
        norm = clip_grad_norm(grads, 1.0)
    assert not np.isfinite(float(norm))
    assert not scaler.update(norm) and scaler.skipped_steps == 1 and scaler.scale == 5e8


NORMS = [1.0, np.inf, np.nan, np.nan, 0.5, 0.5, 0.5, 2.0, -np.inf, 0.25, 0.1, 0.3, 0.2]


def test_the_array_rule_of_the_loss_scaler_is_the_host_rule():
    """update_arrays (the GPU's path: array ops, no branch on a value) against update (the
    host's), run here on NumPy: the same decisions, scales and counts step by step, the
    same state_dict, and a state loaded back into host numbers continues alike."""
    def scaler():
        return LossScaler(init_scale=1024.0, growth_interval=3, min_scale=256.0)

    host, arrays = scaler(), scaler()
    for i, norm in enumerate(NORMS):
        finite = host.update(np.float64(norm))
        finite_arrays = arrays.update_arrays(np.float64(norm), np)
        assert isinstance(finite, bool) and not isinstance(finite_arrays, bool)
        got = (bool(finite_arrays), float(arrays.scale), int(arrays.good_steps),
               int(arrays.skipped_steps))
        assert got == (finite, host.scale, host.good_steps, host.skipped_steps), f"norm #{i}"
    assert np.asarray(arrays.scale).dtype == np.float32  # device scale: float32, as the grads
    assert arrays.state_dict() == host.state_dict() == \
        {"scale": 512.0, "good_steps": 1, "skipped_steps": 4}
    arrays.load_state_dict(arrays.state_dict())
    assert isinstance(arrays.scale, float) and arrays.update(np.float64(1.0)) is True


class _Recorder:
    """An optimizer that skips on the device: records each step's call."""

    skips_on_device = True

    def __init__(self):
        self.calls = []

    def step(self, grads, lr, grad_scale=1.0, skip=None):
        self.calls.append((lr, grad_scale, skip))


class _HostOnly(_Recorder):
    skips_on_device = False

    def step(self, grads, lr, grad_scale=1.0):
        self.calls.append((lr, grad_scale, None))


def test_loss_scaler_step_branches_on_the_host_and_passes_a_flag_on_the_device():
    """LossScaler.step: with a NumPy norm it calls the optimizer only when the gradients
    are finite; with the array rule (the GPU's) an optimizer that skips on the device is
    called every step with skip = the overflow flag, never left out by a Python branch; any
    other optimizer is called only for finite steps (its flag read back)."""
    host, dev, other = _Recorder(), _Recorder(), _HostOnly()
    s_host, s_dev, s_other = LossScaler(), LossScaler(), LossScaler()
    s_dev.update = lambda norm: s_dev.update_arrays(norm, np)
    s_other.update = lambda norm: s_other.update_arrays(norm, np)
    for norm in NORMS:
        for scaler, opt in ((s_host, host), (s_dev, dev), (s_other, other)):
            scaler.step(opt, {}, 1e-3, np.float64(norm), grad_scale=0.5)
    finite = [bool(np.isfinite(n)) for n in NORMS]
    assert len(host.calls) == len(other.calls) == sum(finite)
    assert all(skip is None for _, _, skip in host.calls + other.calls)
    assert len(dev.calls) == len(NORMS)
    assert [bool(skip) for _, _, skip in dev.calls] == [not f for f in finite]
    assert all(scale == 0.5 for _, scale, _ in dev.calls)


def check_float16_steps(xp, force_array_rule=False):
    """Float16-style AdamW steps with overflows, twice: the GPU's way (FusedAdamW on
    module xp, its kernel reading the clip factor and the skip flag from memory; the
    scaler's array rule) and the host's (NumPy, optim.AdamW only for finite steps): the
    same parameters, moments and step count at every step. Returns the GPU-way scaler."""
    from tinygrad_char import optim
    from tinygrad_char.fused import cuda as kernels
    from tinygrad_char.optim import clip_scale, grad_norm

    rng = np.random.default_rng(4)
    shapes = {"w": (33, 17), "b": (17,)}
    ref_params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    params = {k: xp.asarray(p) for k, p in ref_params.items()}
    fused, ref = kernels.FusedAdamW(params, lr=1e-2), optim.AdamW(ref_params, lr=1e-2)
    s_dev, s_host = LossScaler(init_scale=8.0), LossScaler(init_scale=8.0)
    if force_array_rule:  # NumPy norms would take the host rule
        s_dev.update = lambda norm: s_dev.update_arrays(norm, xp)
    for step, overflow in enumerate([False, True, False, True, True, False]):
        grads = {k: (rng.standard_normal(s) * 8.0).astype(np.float16) for k, s in shapes.items()}
        if overflow:
            grads["w"][1, 2] = np.inf
        for scaler, opt, g in ((s_dev, fused, {k: xp.asarray(a) for k, a in grads.items()}),
                               (s_host, ref, grads)):
            with np.errstate(over="ignore", invalid="ignore"):
                g32 = scaler.unscale(g)
                norm = grad_norm(g32)
                scaler.step(opt, g32, None, norm, grad_scale=clip_scale(norm, 1.0))
        for k in shapes:
            for a, b, what in ((params, ref_params, "p"), (fused.m, ref.m, "m"),
                               (fused.v, ref.v, "v")):
                np.testing.assert_allclose(to_np(a[k]), b[k], rtol=1e-5, atol=1e-7,
                                           err_msg=f"step {step + 1}: {what}[{k}]")
        assert fused.step_count == ref.step_count, f"step {step + 1}: step count"
    assert ref.step_count == 3 and s_dev.state_dict() == s_host.state_dict()
    return s_dev


def test_float16_steps_skip_inside_the_fused_adamw(monkeypatch):
    """check_float16_steps on the CPU: FusedAdamW's kernel on the CPU emulator."""
    import functools
    import sys

    from conftest import REPO
    from tinygrad_char.fused import cuda as kernels

    sys.path.insert(0, str(REPO))
    from benchmarks.kernel_lab import cuda_emulator

    if cuda_emulator.compiler() is None:
        pytest.skip("g++ not found: the CPU emulator of the kernels needs it")
    monkeypatch.setattr(kernels, "_on_device", lambda a: True)
    monkeypatch.setattr(kernels, "_launch",
                        functools.partial(cuda_emulator.launch, kernels.kernels_dir()))
    check_float16_steps(np, force_array_rule=True)


@gpu
@pytest.mark.gpu
def test_gpu_float16_steps_keep_the_scaler_and_the_skip_on_the_device():
    """check_float16_steps on CuPy with the real kernel; the scaler's state is on the
    device (0-d CuPy arrays), which is what spares each step a read-back."""
    import cupy

    scaler = check_float16_steps(cupy)
    assert all(isinstance(v, cupy.ndarray)
               for v in (scaler.scale, scaler.good_steps, scaler.skipped_steps))


# -- training ---------------------------------------------------------------------------------

def tiny(out_dir, **overrides):
    """The training tests' tiny config, in float16, 12 steps, evaluating every 6."""
    return tiny_train_config(out_dir, **{"max_steps": 12, "eval_interval": 6,
                                         "dtype": "float16", **overrides})


def test_float16_training_logs_the_scale_skips_overflows_and_learns(shakespeare_20k, tmp_path,
                                                                    monkeypatch):
    """A start scale of 2^30 overflows float16 at once: the first steps are skipped with the
    scale halved each time (logged), parameters stay finite, then the loss falls about as in
    float32."""
    monkeypatch.setattr(train_module, "LossScaler",
                        lambda: LossScaler(init_scale=2.0 ** 30))
    lines = []
    with np.errstate(over="ignore", invalid="ignore"):
        result = train(tiny(tmp_path / "f16", max_steps=60), shakespeare_20k, progress=False,
                       out=lines.append)
    records = [json.loads(line) for line in open(tmp_path / "f16" / "metrics.jsonl")]
    steps = [r for r in records if not r.get("final")]
    assert steps[0]["skipped_steps"] == 1 and steps[0]["loss_scale"] == 2.0 ** 29
    assert result["skipped_steps"] >= 5  # 2^30 -> ~2^22 before gradients fit
    assert result["loss_scale"] < 2.0 ** 26
    assert any(line.startswith(f"float16: {result['skipped_steps']} of 60 steps skipped")
               for line in lines)
    assert all(np.isfinite(r["train_loss"]) for r in steps)
    reference = train(tiny(tmp_path / "f32", max_steps=60, dtype="float32"), shakespeare_20k,
                      progress=False, out=lambda *a: None)
    assert result["val_loss"] < steps[0]["train_loss"] - 0.3  # it learned
    # fewer updates (the skipped ones), so a little behind float32, but close
    assert abs(result["val_loss"] - reference["val_loss"]) < 0.3


def test_float16_resume_restores_the_loss_scaler(shakespeare_20k, tmp_path, monkeypatch):
    """N steps + resume + N == 2N steps in one run, in float16 with a scaler that skips and
    grows within the run: parameters, moments and the scaler state identical."""
    def scaler():
        return LossScaler(init_scale=2.0 ** 20, growth_interval=2)

    monkeypatch.setattr(train_module, "LossScaler", scaler)
    N = 7  # not a log or evaluation step of the schedule
    with np.errstate(over="ignore", invalid="ignore"):
        whole = train(tiny(tmp_path / "full", max_steps=2 * N), shakespeare_20k, progress=False,
                      out=quiet)
        with pytest.MonkeyPatch.context() as mp:
            interrupt_at(mp, N)
            first = train(tiny(tmp_path / "cut", max_steps=2 * N), shakespeare_20k,
                          progress=False, out=quiet)
        assert first["step"] == N
        resumed = train(tiny(tmp_path / "cut", max_steps=2 * N), shakespeare_20k,
                        resume=first["checkpoint"], progress=False, out=quiet)
    assert whole["skipped_steps"] > 0  # the scaler had something to carry over
    assert (resumed["skipped_steps"], resumed["loss_scale"]) == \
        (whole["skipped_steps"], whole["loss_scale"])
    from safetensors import safe_open

    from tinygrad_char.training.checkpoint import train_state_path

    for run in ("full", "cut"):
        path = tmp_path / run / "ckpt.safetensors"
        with safe_open(str(train_state_path(str(path))), framework="numpy") as f:
            state = json.loads(f.metadata()["train_state"])
        assert set(state["loss_scaler"]) == {"scale", "good_steps", "skipped_steps"}
    full, cut = (str(tmp_path / run / "ckpt.safetensors") for run in ("full", "cut"))
    for path_a, path_b in ((full, cut), (train_state_path(full), train_state_path(cut))):
        with safe_open(path_a, framework="numpy") as a, \
                safe_open(path_b, framework="numpy") as b:
            for key in a.keys():
                assert np.array_equal(a.get_tensor(key), b.get_tensor(key)), key
    assert resumed["val_loss"] == whole["val_loss"]


def test_tf32_on_the_cpu_is_a_one_line_error(shakespeare_20k, tmp_path):
    with pytest.raises(BackendError, match="--dtype tf32 needs --backend cupy"):
        train(tiny(tmp_path, dtype="tf32"), shakespeare_20k, progress=False, out=lambda *a: None)
    set_tf32(np, False)  # turning it off on the CPU is allowed (nothing to do)


@pytest.mark.parametrize("values, message", [
    (dict(dtype="bf16"), "dtype must be one of float32, tf32, float16, float64"),
    (dict(dtype="float16", kernels="fused"), "dtype float16 runs with kernels 'xp'"),
])
def test_bad_precision_settings_are_config_errors(values, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        tiny(tmp_path, **values)


# -- on a GPU ---------------------------------------------------------------------------------

@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["tf32", "float16"])
def test_gpu_precisions_track_float32(precision):
    """On CuPy, one training step's loss and parameters in tf32 / float16 stay close to
    NumPy's float32 step (same weights and batch): the precision's accuracy cost per step."""
    from tinygrad_char import AdamW

    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=128)
    idx, targets = batch(V=65, B=8, T=64)
    ref = GPT(cfg, seed=0)
    _, loss_ref = ref.forward(idx, targets)
    grads_ref = ref.backward()
    opt_ref = AdamW(ref.params, lr=1e-3)
    opt_ref.step(grads_ref)

    _, compute = dtypes(precision)
    model = GPT(cfg, backend="cupy", seed=0, compute_dtype=compute)
    import cupy

    set_tf32(cupy, precision == "tf32")
    try:
        _, loss = model.forward(cupy.asarray(idx), cupy.asarray(targets))
        if compute:
            scaler = LossScaler()
            grads = scaler.unscale(model.backward(loss_scale=scaler.scale))
        else:
            grads = model.backward()
        AdamW(model.params, lr=1e-3).step(grads)
    finally:
        set_tf32(cupy, False)
    assert abs(float(loss) - float(loss_ref)) <= 1e-2 * float(loss_ref)
    for name, p in ref.params.items():
        # one AdamW step moves each weight by at most ~lr: compare the step taken
        assert np.abs(to_np(model.params[name]) - p).max() <= 1e-3, name
