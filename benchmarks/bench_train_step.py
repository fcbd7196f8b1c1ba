"""A full training step (forward, backward, gradient clipping, AdamW), ours against PyTorch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_train_step.py --threads 2
    python benchmarks/bench_train_step.py --steps-memory 1000     # RSS does not grow
    python benchmarks/bench_train_step.py --profile --impls numpy,numpy-cpu   # per-op ms
    python benchmarks/bench_train_step.py --configs gpu-preset,gpu-large \
        --impls cupy,torch-cuda,torch-compile --precisions float32,tf32,float16   # a GPU
    python benchmarks/bench_train_step.py --configs gpu-preset --dropout 0 \
        --impls cupy,cupy-fused,torch-cuda,torch-compile --compile-precisions float32 \
        --precisions float32,tf32,float16                  # benchmarks/gpu_plan.py's stage

For each named configuration (tiny-cpu and gpu-large inline; cpu-preset and gpu-preset
from examples/configs), each precision (--precisions; tf32 and float16 on the GPU only:
float16 is our mixed precision with loss scaling against torch.autocast + GradScaler, tf32
the tensor-core matmuls on both sides) and implementation (ours on NumPy, and on CuPy
with a GPU, xp ops and fused kernels; TorchGPT eager on the CPU, on CUDA, and
torch.compile on CUDA), every step is timed in three phases: forward, backward,
optimiser (clip + AdamW); the medians are reported with ms/step, tokens/s and "speed vs
torch" (torch ms / ours ms: >= 1.0 means ours is at least as fast, against torch eager on
the same device). Everything starts from the same weights and runs the same batch in
float32. Before timing, our loss must equal torch's on that batch (dropout off) within
1e-4 relative.

--dropout P replaces the configs' dropout (0: the fused attention kernel runs, as it takes
no dropout; with dropout > 0 cupy-fused's attention falls back to the xp op).
--compile-precisions limits torch.compile to some precisions (each one compiles anew, about
a minute). cupy-fused in float16 is --kernels auto, what `train_wikitext.py --backend cupy
--dtype float16` runs: the kernels where the inputs are float32 (LayerNorm, cross-entropy,
the embedding backward, AdamW), the xp ops in float16 elsewhere (--kernels fused refuses
float16).

MFU (model FLOPs utilisation) = tokens/s x FLOPs per token / the device's matmul ceiling,
with nanoGPT's count of FLOPs per token, 6 N + 12 L H Q T (N parameters without the
position table, L layers, H heads of size Q, context T), and the ceiling measured in the
same run: a large square matmul in that precision (NumPy 2048^2 on the CPU, CuPy 8192^2 on
the GPU), so the figure says how close to the machine's own matmul speed a step runs.

Memory: on the CPU the RSS after the timed steps and the process's peak RSS so far
(ru_maxrss; it never decreases, so run one --impls at a time for a clean peak per
implementation); on the GPU the memory pool's bytes in use and held (CuPy) or the peak
allocated (torch). --steps-memory N runs N steps of ours and reports the RSS at steps 10,
N/2 and N, to show that nothing accumulates across steps.

Results: <out>/train_step.jsonl (appended), <out>/train_step.md, <out>/train_step.png.
Not here: data loading, evaluation, checkpoints (the training loop's own costs).
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from benchmarks.harness import (NAMED_CONFIGS, SPEED_RULE, TimedOps, add_run_args,
                                append_jsonl, available_named_configs, busy_warning,
                                cupy_or_none, limit_threads, machine_info, machine_summary,
                                named_config, pick, pyplot_or_none, rel_error, rss_mib,
                                save_figure, threads_for, time_fn, torch_cuda_or_none,
                                torch_or_none, write_markdown_table)  # noqa: E402
from tinygrad_char import GPT  # noqa: E402
from tinygrad_char.training.train import clip_and_step  # noqa: E402
from tinygrad_char.model import init_params, param_shapes  # noqa: E402
from tinygrad_char.training.precision import LossScaler, dtypes, set_tf32  # noqa: E402

LOSS_RTOL = 1e-4  # float32 loss of two libraries on the same batch and weights
ADAM_EPS = 1e-8
# numpy: the xp ops; numpy-cpu: --kernels cpu (the numba kernels); cupy-fused: --kernels
# fused. Several ranks (mpiexec -n 2) are measured by bench_scaling.py.
OURS = ("numpy", "numpy-cpu", "cupy", "cupy-fused")
TORCH_TWIN = {"numpy": "torch", "numpy-cpu": "torch", "cupy": "torch-cuda",
              "cupy-fused": "torch-cuda"}  # the reference of "speed vs torch"
IMPL_MODEL = {"numpy": ("numpy", "xp"), "numpy-cpu": ("numpy", "cpu"),
              "cupy": ("cupy", "xp"), "cupy-fused": ("cupy", "fused")}  # backend, kernels


def ours_model(impl, model_cfg, compute_dtype=None):
    """Our GPT for one of OURS (IMPL_MODEL: its backend and kernels mode; in float16,
    "fused" becomes "auto", which keeps the kernels whose inputs stay float32)."""
    backend, kernels = IMPL_MODEL[impl]
    if compute_dtype and kernels == "fused":
        kernels = "auto"
    return GPT(model_cfg, backend=backend, seed=0, compute_dtype=compute_dtype,
               kernels=kernels)


ALL_IMPLS = ["numpy", "numpy-cpu", "torch", "cupy", "cupy-fused", "torch-cuda", "torch-compile"]
CPU_IMPLS = ("numpy", "torch", "numpy-cpu")
PRECISIONS = ("float32", "tf32", "float16")
GPU_ONLY_CONFIGS = ("gpu-preset", "gpu-large")


def make_batch(cfg, batch_size, seed=0):
    """(idx, targets): (B, T) random character ids, targets the next ids (float-free)."""
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, cfg.vocab_size, size=(batch_size, cfg.block_size + 1))
    return seq[:, :-1], seq[:, 1:]


def _median(values):
    return float(np.median(values)) if values else float("nan")


def memory_now(impl, xp=None, torch=None):
    """Memory figures in MiB for the implementation that just ran."""
    current, peak = rss_mib()
    mem = {"rss_mib": current, "peak_rss_mib": peak}
    if impl.startswith("cupy"):
        pool = xp.get_default_memory_pool()
        mem.update(gpu_pool_used_mib=pool.used_bytes() / 2**20,
                   gpu_pool_held_mib=pool.total_bytes() / 2**20)
    if impl in ("torch-cuda", "torch-compile"):
        mem.update(gpu_peak_allocated_mib=torch.cuda.max_memory_allocated() / 2**20,
                   gpu_reserved_mib=torch.cuda.memory_reserved() / 2**20)
    return mem


# -- torch's update after the backward (ours: tinygrad_char.training.train.clip_and_step) -----------

def torch_update(torch, model, opt, scaler, grad_clip):
    """Clip + AdamW + zero_grad; with a GradScaler (float16): unscale_ first, then
    scaler.step and scaler.update (PyTorch's recipe for autocast)."""
    if scaler:
        scaler.unscale_(opt)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)


# -- ours ----------------------------------------------------------------------------------

def run_ours(impl, model_cfg, train_cfg, batch, warmup, repeat, precision="float32"):
    """Time warmup + repeat steps of our GPT (one of OURS); returns ({phase: [ms]},
    memory dict). The optimizer is the model's (model.ops.AdamW: optim.AdamW for xp, the
    fused one of its kernels mode otherwise), as the training loop makes it.
    float16: the training loop's mixed-precision step (scaled backward, float32 unscale,
    clip, AdamW unless the gradients overflowed); tf32 must be set by the caller."""
    _, compute_dtype = dtypes(precision)
    model = ours_model(impl, model_cfg, compute_dtype)
    scaler = LossScaler() if compute_dtype else None
    opt = model.ops.AdamW(model.params, lr=train_cfg.learning_rate,
                betas=(train_cfg.beta1, train_cfg.beta2), eps=ADAM_EPS,
                weight_decay=train_cfg.weight_decay)
    xp, sync = model.xp, model.backend.synchronize
    idx, targets = xp.asarray(batch[0]), xp.asarray(batch[1])
    phases = {"forward": [], "backward": [], "optimizer": []}
    for step in range(warmup + repeat):
        t0 = time.perf_counter()
        _, loss = model.forward(idx, targets)
        sync()
        t1 = time.perf_counter()
        grads = model.backward(loss_scale=scaler.scale if scaler else 1.0)
        sync()
        t2 = time.perf_counter()
        clip_and_step(grads, opt, None, train_cfg.grad_clip, scaler)
        sync()
        t3 = time.perf_counter()
        if step >= warmup:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[name].append(dt * 1e3)
    if not np.isfinite(float(loss)):
        raise AssertionError(f"{impl}: the loss became {float(loss)}")
    return phases, memory_now(impl, xp)


# -- PyTorch -------------------------------------------------------------------------------

def torch_model_and_opt(torch, model_cfg, train_cfg, device):
    """TorchGPT (sdpa attention) from our initial weights, and torch's AdamW with our rule:
    only tensors of 2 or more dimensions decay."""
    from benchmarks.torch_gpt import TorchGPT

    params = {k: v.astype(np.float32) for k, v in init_params(model_cfg, seed=0).items()}
    model = TorchGPT(model_cfg, params, dtype=torch.float32, device=device, sdpa=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=train_cfg.learning_rate, betas=(train_cfg.beta1, train_cfg.beta2),
                            eps=ADAM_EPS)
    return model, opt


def run_torch(torch, impl, model_cfg, train_cfg, batch, warmup, repeat, precision="float32"):
    """Time warmup + repeat steps of TorchGPT: impl "torch" (CPU eager), "torch-cuda"
    (CUDA eager) or "torch-compile" (CUDA, torch.compile; compiled in the warm-up).
    float16: torch.autocast(float16) + GradScaler; tf32 must be set by the caller."""
    import contextlib

    device = "cpu" if impl == "torch" else "cuda"
    scaler = torch.amp.GradScaler("cuda") if precision == "float16" else None
    autocast = (torch.autocast("cuda", dtype=torch.float16) if precision == "float16"
                else contextlib.nullcontext())
    if impl == "torch-compile":
        warmup = max(warmup, 2)  # the first calls compile
    model, opt = torch_model_and_opt(torch, model_cfg, train_cfg, device)
    model.train()
    step_fn = torch.compile(model) if impl == "torch-compile" else model
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    idx = torch.as_tensor(batch[0], device=device)
    targets = torch.as_tensor(batch[1], device=device)
    phases = {"forward": [], "backward": [], "optimizer": []}
    for step in range(warmup + repeat):
        t0 = time.perf_counter()
        with autocast:
            _, loss = step_fn(idx, targets)
        sync()
        t1 = time.perf_counter()
        (scaler.scale(loss) if scaler else loss).backward()
        sync()
        t2 = time.perf_counter()
        torch_update(torch, model, opt, scaler, train_cfg.grad_clip)
        sync()
        t3 = time.perf_counter()
        if step >= warmup:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[name].append(dt * 1e3)
    return phases, memory_now(impl, torch=torch)


# -- model FLOPs utilisation ---------------------------------------------------------------

def flops_per_token(cfg):
    """nanoGPT's estimate of training FLOPs per token: 6 N + 12 L H Q T."""
    n = sum(int(np.prod(shape)) for name, shape in param_shapes(cfg).items()
            if name != "transformer.wpe.weight")
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size


def matmul_ceiling(device, precision, cupy=None, torch=None):
    """The device's measured dense matmul rate in FLOP/s for `precision`: median of 5
    after 2 warm-up calls, NumPy 2048^2 float32 on the CPU, CuPy (else torch) 8192^2 on the
    GPU (float16 inputs for float16; TF32 must already be set for tf32)."""
    if device == "cpu":
        n = 2048
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        ms = time_fn(lambda: a @ a, warmup=2, repeat=5).median
    elif cupy is not None:
        n = 8192
        dtype = "float16" if precision == "float16" else "float32"
        a = cupy.random.default_rng(0).standard_normal((n, n), dtype="float32").astype(dtype)
        ms = time_fn(lambda: a @ a, warmup=2, repeat=5, xp=cupy).median
    else:
        n = 8192
        dtype = torch.float16 if precision == "float16" else torch.float32
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        ms = time_fn(lambda: a @ a, warmup=2, repeat=5, sync=torch.cuda.synchronize).median
    return 2 * n ** 3 / (ms * 1e-3)


def set_precision(precision, cupy=None, torch=None):
    """TF32 on (tf32) or off (otherwise) for CuPy's and torch's float32 CUDA matmuls."""
    if cupy is not None:
        set_tf32(cupy, precision == "tf32")
    if torch is not None and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"


# -- correctness first ---------------------------------------------------------------------

def check_losses(model_cfg, batch, impls, torch):
    """Our loss against torch's on the same weights and batch, dropout off (random masks
    cannot agree). Returns {impl: loss}; raises AssertionError naming the pair."""
    cfg = replace(model_cfg, dropout=0.0)
    losses = {}
    for impl in [b for b in OURS if b in impls]:
        model = ours_model(impl, cfg)
        xp = model.xp
        _, loss = model.forward(xp.asarray(batch[0]), xp.asarray(batch[1]))
        losses[impl] = float(loss)
    for impl, device in (("torch", "cpu"), ("torch-cuda", "cuda")):
        if impl in impls or (device == "cuda" and "torch-compile" in impls):
            from benchmarks.torch_gpt import TorchGPT

            params = {k: v.astype(np.float32) for k, v in init_params(cfg, seed=0).items()}
            twin = TorchGPT(cfg, params, device=device, sdpa=True)
            with torch.no_grad():
                _, loss = twin(torch.as_tensor(batch[0], device=device),
                               torch.as_tensor(batch[1], device=device))
            losses[impl] = float(loss)
    pairs = [("numpy", "torch"), ("numpy-cpu", "torch"), ("numpy-cpu", "numpy"),
             ("cupy", "torch-cuda"), ("cupy", "numpy"), ("cupy-fused", "cupy")]
    for ours, ref in pairs:
        if ours in losses and ref in losses:
            err = rel_error(losses[ours], losses[ref])
            if not err <= LOSS_RTOL:
                raise AssertionError(f"train step loss: {ours} {losses[ours]:.6f} vs {ref} "
                                     f"{losses[ref]:.6f}, relative error {err:.2e} > "
                                     f"{LOSS_RTOL}")
    if "numpy" in losses and not any(r in losses for r in ("torch", "torch-cuda")):
        print("note: torch not available, the loss was not checked against it")
    return losses


# -- the per-op profile mode ----------------------------------------------------------------

def profile_ops(impl, model_cfg, train_cfg, batch, warmup, repeat, threads):
    """Where each millisecond of a step goes: every op of model.ops (forward and backward
    separately), the clip and the optimizer step, timed inside `repeat` steps after
    `warmup`, as ms per step (the mean over the timed steps: per-op times are too short
    for a median to mean much). "rest of the step" is the step's time minus the ops' (the
    model's own array work: residual adds, the position table's batch sum, Python).
    NumPy impls only (no device synchronisation). Returns {name: ms per step}."""
    from tinygrad_char.optim import clip_scale

    model = ours_model(impl, model_cfg)
    opt = model.ops.AdamW(model.params, lr=train_cfg.learning_rate,
                          betas=(train_cfg.beta1, train_cfg.beta2), eps=ADAM_EPS,
                          weight_decay=train_cfg.weight_decay)
    threads_for(impl, threads)
    timer = TimedOps(model)
    spent = timer.seconds
    timer.install()
    idx, targets = batch
    step_total = 0.0
    for step in range(warmup + repeat):
        if step == warmup:
            spent.clear()
            step_total = 0.0
        t0 = time.perf_counter()
        _, loss = model.forward(idx, targets)
        grads = model.backward()
        t1 = time.perf_counter()
        scale = clip_scale(opt.grad_norm(grads), train_cfg.grad_clip)
        t2 = time.perf_counter()
        opt.step(grads, grad_scale=scale)  # the clip's scaling happens inside (train.py)
        t3 = time.perf_counter()
        spent["grad_norm"] += t2 - t1
        spent["AdamW.step"] += t3 - t2
        step_total += t3 - t0
    result = {name: 1e3 * t / repeat for name, t in sorted(spent.items(), key=lambda kv: -kv[1])}
    result["rest of the step"] = 1e3 * step_total / repeat - sum(result.values())
    result["step"] = 1e3 * step_total / repeat
    return result


def write_profile(args, configs, impls, machine, out_dir):
    """--profile: per-op profiles of the NumPy impls on each config, side by side, to
    <out>/step_profile.md and step_profile.jsonl."""
    wanted = [i for i in impls if i in ("numpy", "numpy-cpu")]
    if not wanted:
        print("--profile: needs --impls numpy and/or numpy-cpu")
        return []
    rows = []
    for name, train_cfg, model_cfg in available_named_configs(configs, args.vocab_size, []):
        if name in GPU_ONLY_CONFIGS and not args.include_gpu_preset_on_cpu:
            continue
        batch = make_batch(model_cfg, train_cfg.batch_size)
        profiles = {impl: profile_ops(impl, model_cfg, train_cfg, batch, args.warmup,
                                      args.repeat, args.threads) for impl in wanted}
        names = list(dict.fromkeys(n for p in profiles.values() for n in p))
        for op in names:
            row = {"config": name, "op": op}
            for impl, prof in profiles.items():
                row[f"{impl} ms"] = prof.get(op, 0.0)
                row[f"{impl} %"] = 100.0 * prof.get(op, 0.0) / prof["step"]
            rows.append(row)
        append_jsonl(out_dir / "step_profile.jsonl",
                     {"bench": "step_profile", "config": name, "model": model_cfg.to_dict(),
                      "batch_size": train_cfg.batch_size, "threads": args.threads,
                      "repeat": args.repeat, "warmup": args.warmup, "profiles": profiles},
                     machine)
        for impl, prof in profiles.items():
            print(f"{name} {impl}: " + ", ".join(f"{k} {v:.2f}" for k, v in prof.items()))
    columns = ["config", "op"] + [(f"{i} {u}", f"{i} {u}") for i in wanted for u in ("ms", "%")]
    header = [machine_summary(machine),
              f"ms per step, the mean over {args.repeat} steps after {args.warmup} warm-up "
              f"steps, {args.threads} threads; each op of model.ops timed where the model "
              "calls it (forward and backward separately), linear = the matmuls and their "
              "bias adds; 'rest of the step' = step - the ops listed (residual adds, "
              "Python). numpy = the xp ops, numpy-cpu = --kernels cpu."]
    text = write_markdown_table(out_dir / "step_profile.md", rows, columns,
                                "Where a training step's time goes", header)
    print()
    print(text)
    return rows


# -- the memory-growth mode ----------------------------------------------------------------

def steps_memory(args, name, model_cfg, train_cfg, backend, machine, out_dir):
    """Run N steps of ours on config `name`; report the RSS (and the GPU pool) at steps
    10, N/2 and N."""
    n = args.steps_memory
    checkpoints = sorted({min(10, n), n // 2, n} - {0})
    model = GPT(model_cfg, backend=backend, seed=0)
    opt = model.ops.AdamW(model.params, lr=train_cfg.learning_rate,
                betas=(train_cfg.beta1, train_cfg.beta2), eps=ADAM_EPS,
                weight_decay=train_cfg.weight_decay)
    batch = make_batch(model_cfg, train_cfg.batch_size)
    idx, targets = model.xp.asarray(batch[0]), model.xp.asarray(batch[1])
    rows = []
    for step in range(1, n + 1):
        model.forward(idx, targets)
        clip_and_step(model.backward(), opt, None, train_cfg.grad_clip)
        if step in checkpoints:
            model.backend.synchronize()
            mem = memory_now(backend, model.xp)
            rows.append({"step": step, **mem})
            print(f"step {step:6d}: " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()))
    growth = rows[-1]["rss_mib"] - rows[0]["rss_mib"]
    verdict = (f"RSS change from step {rows[0]['step']} to {rows[-1]['step']}: "
               f"{growth:+.1f} MiB")
    print(verdict)
    append_jsonl(out_dir / "train_step.jsonl",
                 {"bench": "train_step_memory", "config": name, "impl": backend,
                  "model": model_cfg.to_dict(), "batch_size": train_cfg.batch_size,
                  "steps": n, "rows": rows, "rss_growth_mib": growth}, machine)
    columns = ["step", ("rss_mib", "RSS MiB"), ("peak_rss_mib", "peak RSS MiB")]
    if backend == "cupy":
        columns += [("gpu_pool_used_mib", "GPU pool used MiB"),
                    ("gpu_pool_held_mib", "GPU pool held MiB")]
    text = write_markdown_table(out_dir / "train_step_memory.md", rows, columns,
                                f"Memory over {n} training steps ({name}, {backend})",
                                [machine_summary(machine), verdict])
    print(text)


# -- main ----------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny-cpu,cpu-preset,gpu-preset",
                   help=f"comma-separated names from {list(NAMED_CONFIGS)}")
    p.add_argument("--impls", default=",".join(ALL_IMPLS),
                   help="comma-separated implementations; those that cannot run here are "
                        "skipped with a message (default: all)")
    p.add_argument("--precisions", default="float32",
                   help=f"comma-separated from {list(PRECISIONS)}; tf32 and float16 run on "
                        "the GPU implementations only (default: float32)")
    p.add_argument("--dropout", type=float, default=None, metavar="P",
                   help="replace every config's dropout with P (0: the fused attention "
                        "kernel runs; default: each config's own)")
    p.add_argument("--compile-precisions", default=None, metavar="LIST",
                   help="run torch-compile only at these precisions (comma-separated; "
                        "default: every one of --precisions)")
    p.add_argument("--include-gpu-preset-on-cpu", action="store_true",
                   help="also run gpu-preset and gpu-large without a GPU (slow)")
    p.add_argument("--vocab-size", type=int, default=65, help="V (Tiny Shakespeare: 65)")
    add_run_args(p, repeat=10, warmup=3, what="steps per implementation")
    p.add_argument("--steps-memory", type=int, default=0, metavar="N",
                   help="instead: run N steps of ours on the first config, report RSS at "
                        "steps 10, N/2 and N")
    p.add_argument("--profile", action="store_true",
                   help="instead: time every op inside the step (numpy and numpy-cpu) and "
                        "write step_profile.md / .jsonl")
    args = p.parse_args(argv)
    configs = pick(p, args.configs, NAMED_CONFIGS, "config")
    wanted = pick(p, args.impls, ALL_IMPLS, "implementation")
    precisions = pick(p, args.precisions, PRECISIONS, "precision")
    compile_precisions = (precisions if args.compile_precisions is None else
                          pick(p, args.compile_precisions, PRECISIONS, "precision"))
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")

    torch = torch_or_none() if any(i.startswith("torch") for i in wanted) else None
    cupy, cupy_why = cupy_or_none()
    torch_cuda = torch_cuda_or_none(torch)
    from tinygrad_char.fused.cpu import numba_available

    available = {"numpy": True, "numpy-cpu": numba_available(),
                 "torch": torch is not None,
                 "cupy": cupy is not None,
                 "cupy-fused": cupy is not None, "torch-cuda": torch_cuda is not None,
                 "torch-compile": torch_cuda is not None}
    no_cuda = "torch not installed" if torch is None else "no CUDA device for torch"
    reasons = {"numpy-cpu": "numba does not import (the CPU kernels need it)",
               "torch": "torch not installed", "cupy": cupy_why and cupy_why.split(";")[0],
               "cupy-fused": cupy_why and cupy_why.split(";")[0],
               "torch-cuda": no_cuda,
               "torch-compile": f"{no_cuda} (torch.compile is run on CUDA only)"}
    impls = [i for i in wanted if available[i]]
    notes = [f"{i} skipped: {reasons[i]}" for i in wanted if not available[i]]
    limit_threads(args.threads)
    machine = machine_info()
    out_dir = Path(args.out)
    print(machine_summary(machine))
    warning = busy_warning(args.threads, machine)
    if warning:
        print(warning)
        notes.append(warning)
    for note in notes:
        print(note)

    if args.profile:
        return write_profile(args, configs, impls, machine, out_dir)
    if args.steps_memory:
        loaded = named_config(configs[0], args.vocab_size)
        if loaded is None:
            print(f"{configs[0]}: examples/configs/{NAMED_CONFIGS[configs[0]]} not found")
            return []
        backend = "cupy" if "cupy" in impls else "numpy"
        return steps_memory(args, configs[0], loaded[1], loaded[0], backend, machine,
                            out_dir)

    rows = []
    ceilings = {}  # (device, precision) -> FLOP/s, measured once
    for name, train_cfg, model_cfg in available_named_configs(configs, args.vocab_size,
                                                              notes):
        if args.dropout is not None:
            model_cfg = replace(model_cfg, dropout=args.dropout)
        if name in GPU_ONLY_CONFIGS and cupy is None and torch_cuda is None \
                and not args.include_gpu_preset_on_cpu:
            msg = f"{name} skipped on the CPU (slow); pass --include-gpu-preset-on-cpu"
            print(msg)
            notes.append(msg)
            continue
        B, T = train_cfg.batch_size, model_cfg.block_size
        batch = make_batch(model_cfg, B)
        set_precision("float32", cupy, torch)
        losses = check_losses(model_cfg, batch, impls, torch)
        print(f"{name}: loss check passed " +
              ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
        for precision in precisions:
            run_impls = [i for i in impls if precision == "float32" or i not in CPU_IMPLS]
            if any(i in CPU_IMPLS for i in impls) and precision != "float32":
                note = f"{precision}: a GPU precision, not run on {', '.join(CPU_IMPLS)}"
                if note not in notes:
                    notes.append(note)
            if precision == "float16" and "cupy-fused" in run_impls:
                note = ("float16: cupy-fused = --kernels auto (the fused kernels are "
                        "float32: LayerNorm, cross-entropy, embedding backward and AdamW "
                        "run fused, attention and GELU on the xp ops in float16)")
                if note not in notes:
                    notes.append(note)
            if precision not in compile_precisions and "torch-compile" in run_impls:
                run_impls.remove("torch-compile")
                note = (f"torch-compile run only at {', '.join(compile_precisions)} "
                        "(--compile-precisions)")
                if note not in notes:
                    notes.append(note)
            if not run_impls:
                continue
            set_precision(precision, cupy, torch)
            results = {}
            for impl in run_impls:
                threads_for(impl, args.threads)  # the kernels' pool, or BLAS's threads
                if impl in OURS:
                    phases, mem = run_ours(impl, model_cfg, train_cfg, batch, args.warmup,
                                           args.repeat, precision)
                else:
                    phases, mem = run_torch(torch, impl, model_cfg, train_cfg, batch,
                                            args.warmup, args.repeat, precision)
                step_ms = [sum(t) for t in zip(*phases.values())]
                results[impl] = {**{f"{k}_ms": _median(v) for k, v in phases.items()},
                                 "step_ms": _median(step_ms), "step_min_ms": min(step_ms),
                                 "step_max_ms": max(step_ms), **mem}
                results[impl]["tokens_per_s"] = B * T / (results[impl]["step_ms"] * 1e-3)
            for impl, r in results.items():
                device = "cpu" if impl in CPU_IMPLS else "cuda"
                if (device, precision) not in ceilings:
                    threads_for("numpy", args.threads)  # NumPy's BLAS on every thread
                    ceilings[device, precision] = matmul_ceiling(device, precision, cupy,
                                                                 torch)
                ceiling = ceilings[device, precision]
                twin = TORCH_TWIN.get(impl)
                speed = results[twin]["step_ms"] / r["step_ms"] if twin in results else None
                compiled = results.get("torch-compile")
                vs_compile = (compiled["step_ms"] / r["step_ms"]
                              if impl.startswith("cupy") and compiled else None)
                row = {"config": name, "precision": precision, "impl": impl, **r,
                       "speed_vs_torch": speed, "speed_vs_compile": vs_compile,
                       "mfu_percent": 100 * r["tokens_per_s"] * flops_per_token(model_cfg)
                       / ceiling,
                       "matmul_ceiling_tflops": ceiling / 1e12,
                       "loss_at_init": losses.get(impl)}
                rows.append(row)
                append_jsonl(out_dir / "train_step.jsonl",
                             {"bench": "train_step", **row, "model": model_cfg.to_dict(),
                              "batch_size": B, "threads": args.threads,
                              "repeat": args.repeat, "warmup": args.warmup,
                              "dtype": precision,
                              "flops_per_token": flops_per_token(model_cfg)}, machine)
                print(f"{name:10s} {precision:8s} {impl:13s} {r['step_ms']:9.2f} ms/step "
                      f"(fwd {r['forward_ms']:.2f}, bwd {r['backward_ms']:.2f}, "
                      f"opt {r['optimizer_ms']:.2f}) {r['tokens_per_s']:10.0f} tok/s, "
                      f"MFU {row['mfu_percent']:.1f}%" +
                      (f"  speed vs {twin} {speed:.2f}" if speed is not None else ""))
    set_precision("float32", cupy, torch)

    columns = ["config", "precision", "impl", ("step_ms", "ms/step"),
               ("tokens_per_s", "tokens/s"), ("speed_vs_torch", "speed vs torch"),
               ("speed_vs_compile", "speed vs torch.compile"), ("mfu_percent", "MFU %"),
               ("forward_ms", "forward ms"),
               ("backward_ms", "backward ms"), ("optimizer_ms", "optimizer ms"),
               ("step_min_ms", "min ms"), ("step_max_ms", "max ms"),
               ("rss_mib", "RSS MiB"), ("peak_rss_mib", "peak RSS MiB")]
    if any("gpu_pool_used_mib" in r or "gpu_peak_allocated_mib" in r for r in rows):
        columns += [("gpu_pool_used_mib", "CuPy pool used MiB"),
                    ("gpu_peak_allocated_mib", "torch peak MiB")]
    shapes = []
    for name in dict.fromkeys(r["config"] for r in rows):
        t, m = named_config(name, args.vocab_size)
        if args.dropout is not None:
            m = replace(m, dropout=args.dropout)
        shapes.append(f"{name} = {m.n_layer} layers x {m.n_head} heads x {m.n_embd}, "
                      f"context {m.block_size}, batch {t.batch_size}, V {m.vocab_size}, "
                      f"dropout {m.dropout}")
    header = [machine_summary(machine),
              f"Median over {args.repeat} steps after {args.warmup} warm-up steps, "
              f"{args.threads} threads. Step = forward + backward + clip + AdamW. "
              f"speed vs torch = {SPEED_RULE}, against torch eager on the same device. "
              "numpy = ours on NumPy with the xp ops, numpy-cpu with the numba CPU kernels "
              "(--kernels cpu; the default --kernels auto picks them); two MPI ranks: "
              "bench_scaling.py. "
              f"Peak RSS is the process's high-water mark so far (run one --impls at a time "
              f"for a clean figure).",
              "Configs: " + "; ".join(shapes),
              "MFU = tokens/s x (6 N + 12 L H Q T) FLOPs per token / the matmul ceiling "
              "measured in this run: " + ", ".join(
                  f"{d} {p} {c / 1e12:.2f} TFLOP/s" for (d, p), c in ceilings.items())]
    if notes:
        header.append("Skipped: " + "; ".join(notes))
    text = write_markdown_table(out_dir / "train_step.md", rows, columns,
                                "Training step: ours vs PyTorch", header)
    print()
    print(text)
    plot(rows, out_dir / "train_step.png")
    return rows


def plot(rows, path):
    """Left: tokens/s per config and implementation. Right: the step split into phases."""
    plt = pyplot_or_none()
    if plt is None or not rows:
        print("matplotlib not installed: no plot" if plt is None else "no rows: no plot")
        return
    labels = [f"{r['config']}\n{r['impl']}" + ("" if r["precision"] == "float32"
                                               else f"\n{r['precision']}") for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows)), 4.5))
    ax1.bar(x, [r["tokens_per_s"] for r in rows], color="tab:blue")
    ax1.set_ylabel("tokens / s")
    ax1.set_title("Throughput")
    bottom = np.zeros(len(rows))
    for phase in ("forward", "backward", "optimizer"):
        values = np.array([r[f"{phase}_ms"] for r in rows])
        ax2.bar(x, values, bottom=bottom, label=phase)
        bottom += values
    ax2.set_ylabel("ms per step (median per phase)")
    ax2.set_title("Where a step goes")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
