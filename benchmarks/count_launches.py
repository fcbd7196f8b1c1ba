"""Count the GPU work of one training step: kernel launches, memory copies, and what the
launches cost on the host.

    python benchmarks/count_launches.py --configs tiny-cpu,gpu-preset          # a GPU

At small sizes a step is bound by the CPU's cost of launching kernels, not by the GPU. For
each configuration and implementation (ours on CuPy with --kernels xp and fused, torch
eager; --precisions as bench_train_step.py) this records every CUDA activity of a few
steps with CUPTI, through torch.profiler (which sees the kernels and copies of the whole
process, CuPy's and cuBLAS's included), and reports per step:
    kernels        kernel launches, and the ten most frequent kernel names
    copies         host<->device memory copies (the training loop makes none inside a
                   step: the batch starts are copied once per log interval)
    host ms        the step's wall time on the host, and host us per launch (an upper bound
                   on the launch cost: the host time also holds Python and the ops' logic)
Results: <out>/launches.jsonl (appended), <out>/launches.md. Needs a CUDA GPU with CuPy
and torch; without them it says so and exits 0.
"""

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from benchmarks.harness import (append_jsonl, available_named_configs, cupy_or_none,  # noqa
                                machine_info, machine_summary, pick, torch_cuda_or_none,
                                torch_or_none, write_markdown_table)
from benchmarks.harness import NAMED_CONFIGS  # noqa: E402

IMPLS = ["cupy", "cupy-fused", "torch-cuda"]


def summarize(events, steps):
    """Per-step counts from profiler events: each event has .name and .kind, the kind one of
    "kernel", "memcpy", "memset" (anything else is ignored). Returns a dict."""
    kinds = collections.Counter(e.kind for e in events)
    names = collections.Counter(e.name for e in events if e.kind == "kernel")
    copies = collections.Counter(e.name for e in events if e.kind == "memcpy")
    return {"kernels_per_step": kinds["kernel"] / steps,
            "copies_per_step": kinds["memcpy"] / steps,
            "memsets_per_step": kinds["memset"] / steps,
            "top_kernels": [[n, c / steps] for n, c in names.most_common(10)],
            "copies": [[n, c / steps] for n, c in copies.most_common()]}


class Event:
    """A profiler event reduced to (name, kind)."""

    def __init__(self, name, kind):
        self.name, self.kind = name, kind


def cuda_events(prof):
    """torch.profiler's CUDA-side activities as Events (kernel / memcpy / memset)."""
    out = []
    for e in prof.events():
        if str(e.device_type).endswith("CUDA"):
            name = e.name
            low = name.lower()
            kind = ("memcpy" if "memcpy" in low else "memset" if "memset" in low
                    else "kernel")
            out.append(Event(name, kind))
    return out


def make_step(impl, model_cfg, train_cfg, batch, precision, torch, cupy):
    """A zero-argument function running one full training step of `impl`."""
    from benchmarks.bench_train_step import ours_model, torch_model_and_opt, torch_update
    from tinygrad_char.training.precision import LossScaler, dtypes
    from tinygrad_char.training.train import clip_and_step

    if impl.startswith("cupy"):
        _, compute = dtypes(precision)
        model = ours_model(impl, model_cfg, compute)
        opt = model.ops.AdamW(model.params, lr=train_cfg.learning_rate)
        scaler = LossScaler() if compute else None
        idx, targets = cupy.asarray(batch[0]), cupy.asarray(batch[1])  # before the count

        def step():
            model.forward(idx, targets)
            grads = model.backward(loss_scale=scaler.scale if scaler else 1.0)
            clip_and_step(grads, opt, None, train_cfg.grad_clip, scaler)
        return step, cupy.cuda.Device().synchronize
    model, opt = torch_model_and_opt(torch, model_cfg, train_cfg, "cuda")
    idx = torch.as_tensor(batch[0], device="cuda")
    targets = torch.as_tensor(batch[1], device="cuda")
    scaler = torch.amp.GradScaler("cuda") if precision == "float16" else None

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None):
            _, loss = model(idx, targets)
        (scaler.scale(loss) if scaler else loss).backward()
        torch_update(torch, model, opt, scaler, train_cfg.grad_clip)
    return step, torch.cuda.synchronize


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny-cpu,gpu-preset",
                   help=f"comma-separated from {list(NAMED_CONFIGS)}")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated from {IMPLS}")
    p.add_argument("--precisions", default="float32", help="float32, tf32, float16")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after 3 warm-up)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    configs = pick(p, args.configs, NAMED_CONFIGS, "config")
    impls = pick(p, args.impls, IMPLS, "implementation")
    precisions = pick(p, args.precisions, ("float32", "tf32", "float16"), "precision")
    cupy, why = cupy_or_none()
    torch = torch_or_none()
    if cupy is None or torch_cuda_or_none(torch) is None:
        print("count_launches needs a CUDA GPU with CuPy and torch (its profiler reads "
              f"CUPTI): {why or 'torch with CUDA is not available'}; nothing to do here")
        return []
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.bench_train_step import make_batch, set_precision

    machine = machine_info()
    print(machine_summary(machine))
    rows, notes = [], []
    for name, train_cfg, model_cfg in available_named_configs(configs, 65, notes):
        batch = make_batch(model_cfg, train_cfg.batch_size)
        for precision in precisions:
            set_precision(precision, cupy, torch)
            for impl in impls:
                if impl == "cupy-fused" and precision == "float16":
                    continue  # the fused kernels are float32
                step, sync = make_step(impl, model_cfg, train_cfg, batch, precision, torch,
                                       cupy)
                for _ in range(3):
                    step()
                sync()
                host = []
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.steps):
                        t0 = time.perf_counter()
                        step()
                        host.append(time.perf_counter() - t0)
                        sync()
                summary = summarize(cuda_events(prof), args.steps)
                host_ms = float(np.median(host)) * 1e3
                row = {"config": name, "precision": precision, "impl": impl,
                       "host_ms": host_ms, **summary,
                       "host_us_per_launch": 1e3 * host_ms / max(summary["kernels_per_step"],
                                                                 1)}
                rows.append(row)
                append_jsonl(Path(args.out) / "launches.jsonl",
                             {"bench": "launches", **row}, machine)
                print(f"{name} {precision} {impl}: {summary['kernels_per_step']:.0f} kernels, "
                      f"{summary['copies_per_step']:.1f} copies per step; host {host_ms:.2f} "
                      f"ms ({row['host_us_per_launch']:.1f} us per launch)")
    set_precision("float32", cupy, torch)
    columns = ["config", "precision", "impl", ("kernels_per_step", "kernels/step"),
               ("copies_per_step", "copies/step"), ("host_ms", "host ms/step"),
               ("host_us_per_launch", "host us/launch")]
    write_markdown_table(Path(args.out) / "launches.md", rows, columns,
                         "GPU work per training step", [machine_summary(machine)] + notes)
    return rows


if __name__ == "__main__":
    main()
