"""A full training step (forward, backward, gradient clipping, AdamW), ours against PyTorch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_train_step.py --threads 2
    python benchmarks/bench_train_step.py --steps-memory 1000     # RSS does not grow

For each named configuration (tiny-cpu; cpu-preset and gpu-preset from examples/configs)
and implementation (ours on NumPy, and on CuPy with a GPU; TorchGPT eager on the CPU, on
CUDA, and torch.compile on CUDA), every step is timed in three phases: forward, backward,
optimiser (clip + AdamW); the medians are reported with ms/step, tokens/s and "speed vs
torch" (torch ms / ours ms: >= 1.0 means ours is at least as fast, against torch eager on
the same device). Everything starts from the same weights and runs the same batch in
float32. Before timing, our loss must equal torch's on that batch (dropout off) within
1e-4 relative.

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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from benchmarks.harness import (NAMED_CONFIGS, SPEED_RULE, add_run_args, append_jsonl,
                                available_named_configs, busy_warning, cupy_or_none,
                                limit_threads, machine_info, machine_summary,
                                named_config, pick, pyplot_or_none, rel_error, rss_mib,
                                save_figure, torch_cuda_or_none, torch_or_none,
                                write_markdown_table)  # noqa: E402
from tinygrad_char import GPT, AdamW, clip_grad_norm  # noqa: E402
from tinygrad_char.model import init_params  # noqa: E402

LOSS_RTOL = 1e-4  # float32 loss of two libraries on the same batch and weights
ADAM_EPS = 1e-8
OURS = ("numpy", "cupy")
TORCH_TWIN = {"numpy": "torch", "cupy": "torch-cuda"}  # the reference of "speed vs torch"
ALL_IMPLS = ["numpy", "torch", "cupy", "torch-cuda", "torch-compile"]


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
    if impl == "cupy":
        pool = xp.get_default_memory_pool()
        mem.update(gpu_pool_used_mib=pool.used_bytes() / 2**20,
                   gpu_pool_held_mib=pool.total_bytes() / 2**20)
    if impl in ("torch-cuda", "torch-compile"):
        mem.update(gpu_peak_allocated_mib=torch.cuda.max_memory_allocated() / 2**20,
                   gpu_reserved_mib=torch.cuda.memory_reserved() / 2**20)
    return mem


# -- ours ----------------------------------------------------------------------------------

def run_ours(backend, model_cfg, train_cfg, batch, warmup, repeat):
    """Time warmup + repeat steps of our GPT; returns ({phase: [ms]}, memory dict)."""
    model = GPT(model_cfg, backend=backend, seed=0)
    opt = AdamW(model.params, lr=train_cfg.learning_rate,
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
        grads = model.backward()
        sync()
        t2 = time.perf_counter()
        clip_grad_norm(grads, train_cfg.grad_clip)
        opt.step(grads)
        sync()
        t3 = time.perf_counter()
        if step >= warmup:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[name].append(dt * 1e3)
    if not np.isfinite(float(loss)):
        raise AssertionError(f"{backend}: the loss became {float(loss)}")
    return phases, memory_now(backend, xp)


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


def run_torch(torch, impl, model_cfg, train_cfg, batch, warmup, repeat):
    """Time warmup + repeat steps of TorchGPT: impl "torch" (CPU eager), "torch-cuda"
    (CUDA eager) or "torch-compile" (CUDA, torch.compile; compiled in the warm-up)."""
    device = "cpu" if impl == "torch" else "cuda"
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
        _, loss = step_fn(idx, targets)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        if step >= warmup:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[name].append(dt * 1e3)
    return phases, memory_now(impl, torch=torch)


# -- correctness first ---------------------------------------------------------------------

def check_losses(model_cfg, batch, impls, torch):
    """Our loss against torch's on the same weights and batch, dropout off (random masks
    cannot agree). Returns {impl: loss}; raises AssertionError naming the pair."""
    from dataclasses import replace

    cfg = replace(model_cfg, dropout=0.0)
    losses = {}
    for backend in [b for b in OURS if b in impls]:
        model = GPT(cfg, backend=backend, seed=0)
        xp = model.xp
        _, loss = model.forward(xp.asarray(batch[0]), xp.asarray(batch[1]))
        losses[backend] = float(loss)
    for impl, device in (("torch", "cpu"), ("torch-cuda", "cuda")):
        if impl in impls or (device == "cuda" and "torch-compile" in impls):
            from benchmarks.torch_gpt import TorchGPT

            params = {k: v.astype(np.float32) for k, v in init_params(cfg, seed=0).items()}
            twin = TorchGPT(cfg, params, device=device, sdpa=True)
            with torch.no_grad():
                _, loss = twin(torch.as_tensor(batch[0], device=device),
                               torch.as_tensor(batch[1], device=device))
            losses[impl] = float(loss)
    pairs = [("numpy", "torch"), ("cupy", "torch-cuda"), ("cupy", "numpy")]
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


# -- the memory-growth mode ----------------------------------------------------------------

def steps_memory(args, name, model_cfg, train_cfg, backend, machine, out_dir):
    """Run N steps of ours on config `name`; report the RSS (and the GPU pool) at steps
    10, N/2 and N."""
    n = args.steps_memory
    checkpoints = sorted({min(10, n), n // 2, n} - {0})
    model = GPT(model_cfg, backend=backend, seed=0)
    opt = AdamW(model.params, lr=train_cfg.learning_rate,
                betas=(train_cfg.beta1, train_cfg.beta2), eps=ADAM_EPS,
                weight_decay=train_cfg.weight_decay)
    batch = make_batch(model_cfg, train_cfg.batch_size)
    idx, targets = model.xp.asarray(batch[0]), model.xp.asarray(batch[1])
    rows = []
    for step in range(1, n + 1):
        model.forward(idx, targets)
        grads = model.backward()
        clip_grad_norm(grads, train_cfg.grad_clip)
        opt.step(grads)
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
    p.add_argument("--include-gpu-preset-on-cpu", action="store_true",
                   help="also run gpu-preset without a GPU (slow: batch 64 x 256 x 384)")
    p.add_argument("--vocab-size", type=int, default=65, help="V (Tiny Shakespeare: 65)")
    add_run_args(p, repeat=10, warmup=3, what="steps per implementation")
    p.add_argument("--steps-memory", type=int, default=0, metavar="N",
                   help="instead: run N steps of ours on the first config, report RSS at "
                        "steps 10, N/2 and N")
    args = p.parse_args(argv)
    configs = pick(p, args.configs, NAMED_CONFIGS, "config")
    wanted = pick(p, args.impls, ALL_IMPLS, "implementation")

    torch = torch_or_none() if any(i.startswith("torch") for i in wanted) else None
    cupy, cupy_why = cupy_or_none()
    torch_cuda = torch_cuda_or_none(torch)
    available = {"numpy": True, "torch": torch is not None, "cupy": cupy is not None,
                 "torch-cuda": torch_cuda is not None, "torch-compile": torch_cuda is not None}
    no_cuda = "torch not installed" if torch is None else "no CUDA device for torch"
    reasons = {"torch": "torch not installed", "cupy": cupy_why and cupy_why.split(";")[0],
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

    if args.steps_memory:
        loaded = named_config(configs[0], args.vocab_size)
        if loaded is None:
            print(f"{configs[0]}: examples/configs/{NAMED_CONFIGS[configs[0]]} not found")
            return []
        backend = "cupy" if "cupy" in impls else "numpy"
        return steps_memory(args, configs[0], loaded[1], loaded[0], backend, machine,
                            out_dir)

    rows = []
    for name, train_cfg, model_cfg in available_named_configs(configs, args.vocab_size,
                                                              notes):
        if name == "gpu-preset" and cupy is None and torch_cuda is None \
                and not args.include_gpu_preset_on_cpu:
            msg = f"{name} skipped on the CPU (slow); pass --include-gpu-preset-on-cpu"
            print(msg)
            notes.append(msg)
            continue
        B, T = train_cfg.batch_size, model_cfg.block_size
        batch = make_batch(model_cfg, B)
        losses = check_losses(model_cfg, batch, impls, torch)
        print(f"{name}: loss check passed " +
              ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
        results = {}
        for impl in impls:
            if impl in OURS:
                phases, mem = run_ours(impl, model_cfg, train_cfg, batch, args.warmup,
                                       args.repeat)
            else:
                phases, mem = run_torch(torch, impl, model_cfg, train_cfg, batch,
                                        args.warmup, args.repeat)
            step_ms = [sum(t) for t in zip(*phases.values())]
            results[impl] = {**{f"{k}_ms": _median(v) for k, v in phases.items()},
                             "step_ms": _median(step_ms), "step_min_ms": min(step_ms),
                             "step_max_ms": max(step_ms), **mem}
            results[impl]["tokens_per_s"] = B * T / (results[impl]["step_ms"] * 1e-3)
        for impl, r in results.items():
            twin = TORCH_TWIN.get(impl)
            speed = results[twin]["step_ms"] / r["step_ms"] if twin in results else None
            row = {"config": name, "impl": impl, **r, "speed_vs_torch": speed,
                   "loss_at_init": losses.get(impl)}
            rows.append(row)
            append_jsonl(out_dir / "train_step.jsonl",
                         {"bench": "train_step", **row, "model": model_cfg.to_dict(),
                          "batch_size": B, "threads": args.threads, "repeat": args.repeat,
                          "warmup": args.warmup, "dtype": "float32"}, machine)
            print(f"{name:10s} {impl:13s} {r['step_ms']:9.2f} ms/step "
                  f"(fwd {r['forward_ms']:.2f}, bwd {r['backward_ms']:.2f}, "
                  f"opt {r['optimizer_ms']:.2f}) {r['tokens_per_s']:10.0f} tok/s" +
                  (f"  speed vs {twin} {speed:.2f}" if speed is not None else ""))

    columns = ["config", "impl", ("step_ms", "ms/step"), ("tokens_per_s", "tokens/s"),
               ("speed_vs_torch", "speed vs torch"), ("forward_ms", "forward ms"),
               ("backward_ms", "backward ms"), ("optimizer_ms", "optimizer ms"),
               ("step_min_ms", "min ms"), ("step_max_ms", "max ms"),
               ("rss_mib", "RSS MiB"), ("peak_rss_mib", "peak RSS MiB")]
    if any("gpu_pool_used_mib" in r or "gpu_peak_allocated_mib" in r for r in rows):
        columns += [("gpu_pool_used_mib", "CuPy pool used MiB"),
                    ("gpu_peak_allocated_mib", "torch peak MiB")]
    shapes = []
    for name in dict.fromkeys(r["config"] for r in rows):
        t, m = named_config(name, args.vocab_size)
        shapes.append(f"{name} = {m.n_layer} layers x {m.n_head} heads x {m.n_embd}, "
                      f"context {m.block_size}, batch {t.batch_size}, V {m.vocab_size}, "
                      f"dropout {m.dropout}")
    header = [machine_summary(machine),
              f"Median over {args.repeat} steps after {args.warmup} warm-up steps, float32, "
              f"{args.threads} threads. Step = forward + backward + clip + AdamW. "
              f"speed vs torch = {SPEED_RULE}, against torch eager on the same device. "
              f"Peak RSS is the process's high-water mark so far (run one --impls at a time "
              f"for a clean figure).",
              "Configs: " + "; ".join(shapes)]
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
    labels = [f"{r['config']}\n{r['impl']}" for r in rows]
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
