"""Every op's forward and backward, timed separately: ours (NumPy, and CuPy on a GPU)
against PyTorch (CPU, and CUDA on a GPU), over a sweep of sizes.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_layers.py --threads 2 --sizes tiny,large
    python benchmarks/bench_layers.py --sizes tiny,large,gpu \\
        --impls cupy,cupy-fused,torch-cuda          # a GPU alone (benchmarks/gpu_plan.py)

For each size, op and pass it first checks that ours and torch agree (outputs and
gradients, float32, rtol 1e-3; the dropout masks are random, so there the check is that
each output is its input times a valid scaled mask), then times both. It reports the
median ms, the "speed vs torch" (torch ms / ours ms: >= 1.0 means ours is at least as
fast), and the achieved GFLOP/s (matmul ops) or GB/s (the others; bytes = the arrays the
pass must read and write at least once, so it is a lower bound on the real traffic).
Results: <out>/layers.jsonl (appended, one line per size x op x pass), <out>/layers.md,
<out>/layers.png (median ms per implementation, when matplotlib is installed).

Not here: the model as a whole (bench_train_step.py), and kernel development (a kernel
lab of numbered versions belongs in benchmarks/ too, but is a separate script). The numba
CPU kernels (numpy-cpu) are timed for every op that has one (dispatch.select_ops("cpu")). CuPy
fused kernels are timed when `tinygrad_char.fused.cuda` exists and exports a function named
like the op's (`layernorm_forward`, ...), with the xp op's signature.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from benchmarks.harness import (SPEED_VS_TORCH, add_run_args, append_jsonl,
                                busy_warning, check_close, cupy_or_none, limit_threads,
                                machine_info, machine_summary, pick, pyplot_or_none,
                                save_figure, threads_for, time_fn, to_numpy,
                                torch_cuda_or_none, torch_or_none,
                                write_markdown_table)  # noqa: E402
from tinygrad_char.backend import get_array_module  # noqa: E402
from tinygrad_char.fused.cpu import numba_available  # noqa: E402
from tinygrad_char.fused.dispatch import select_ops  # noqa: E402

# B batch, T time, C channels, NH heads, V vocabulary
SIZES = {
    "tiny": dict(B=12, T=64, C=128, NH=4, V=65),  # nanoGPT's shakespeare_char CPU run
    "large": dict(B=16, T=128, C=192, NH=6, V=283),  # a wider model, a WikiText-2 vocabulary
    "gpu": dict(B=64, T=256, C=384, NH=6, V=65),  # examples/configs/gpu.json (slow on a CPU)
}
OPS = ["linear", "embedding", "position_embedding", "layernorm", "attention", "gelu", "relu",
       "dropout", "cross_entropy"]
RTOL = 1e-3  # float32 against another library: summation order differs
DROPOUT_P = 0.1
OURS_VS_TORCH = {"numpy": "torch", "numpy-cpu": "torch", "cupy": "torch-cuda",
                 "cupy-fused": "torch-cuda"}
IMPLS = ("torch", "numpy", "numpy-cpu", "torch-cuda", "cupy", "cupy-fused")


@dataclass
class Case:
    """One op at one size, written once for every array module.

    inputs: name -> NumPy array (copied to each backend); grad_names: the inputs that get
    gradients, in the order `backward` returns them. forward(**inputs) -> (out, cache) and
    backward(dout, cache) -> tuple of grads are ours; torch_forward(**tensors) -> out is
    the PyTorch twin (its backward is autograd). work_fwd / work_bwd: FLOPs or bytes of
    each pass, for `unit`.
    """
    op: str
    inputs: dict
    grad_names: tuple
    forward: object
    backward: object
    torch_forward: object
    work_fwd: float
    work_bwd: float
    unit: str  # "GFLOP/s" or "GB/s"


def make_case(op, B, T, C, NH, V, seed=0, ops=None):
    """The inputs, our pair and its torch twin for `op` at these sizes (float32). ops: the
    op table our pair comes from (dispatch.select_ops; default "xp", "cpu" for numpy-cpu)."""
    ops = ops or select_ops("xp")
    torch = torch_or_none()
    F = torch.nn.functional if torch is not None else None  # only called with torch

    rng = np.random.default_rng(seed)

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    N, F4, f32 = B * T, 4 * C, 4  # positions, MLP width, bytes per float32
    if op == "linear":  # the MLP's c_fc, the biggest linear: (B, T, C) -> (B, T, 4C)
        flops = 2.0 * N * C * F4
        return Case(op, {"x": randn(B, T, C), "W": randn(F4, C) * 0.02, "b": randn(F4)},
                    ("x", "W", "b"), ops.linear_forward, ops.linear_backward,
                    lambda x, W, b: F.linear(x, W, b),
                    flops, 2 * flops, "GFLOP/s")
    if op == "embedding":  # token lookup (V, C) -> (B, T, C); backward: one-hot matmul
        return Case(op, {"idx": rng.integers(0, V, size=(B, T)), "W": randn(V, C)}, ("W",),
                    lambda idx, W: ops.embedding_forward(idx, W),
                    lambda d, cache: (ops.embedding_backward(d, cache),),
                    lambda idx, W: F.embedding(idx, W),
                    2.0 * N * C * f32, (N * C + V * C) * f32, "GB/s")
    if op == "position_embedding":  # x = tok + wpe[:T]; backward sums dx over the batch
        def forward(tok, W):
            return ops.position_embedding_forward(tok, W)

        def backward(d, cache):
            return (ops.position_embedding_backward(d, cache),)

        return Case(op, {"tok": randn(B, T, C), "W": randn(T, C)}, ("W",), forward, backward,
                    lambda tok, W: tok + W[: tok.shape[1]],
                    (2 * N * C + T * C) * f32, (N * C + T * C) * f32, "GB/s")
    if op == "layernorm":
        return Case(op, {"x": randn(B, T, C), "w": 1 + 0.1 * randn(C), "b": 0.1 * randn(C)},
                    ("x", "w", "b"), ops.layernorm_forward, ops.layernorm_backward,
                    lambda x, w, b: F.layer_norm(x, (C,), w, b, 1e-5),
                    2.0 * N * C * f32, 3.0 * N * C * f32, "GB/s")
    if op == "attention":  # causal, on the packed qkv of c_attn: (B, T, 3C) -> (B, T, C)
        def torch_attention(qkv):
            q, k, v = qkv.split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, NH, T, hs)
            return y.transpose(1, 2).reshape(B, T, C)

        # q k^T and att v, counted as full T x T products (the causal half is not skipped)
        flops = 4.0 * B * T * T * C
        return Case(op, {"qkv": randn(B, T, 3 * C)}, ("qkv",),
                    lambda qkv: ops.attention_forward(qkv, NH),
                    lambda d, cache: (ops.attention_backward(d, cache),),
                    torch_attention, flops, 2 * flops, "GFLOP/s")
    if op in ("gelu", "relu"):  # on the MLP's hidden (B, T, 4C)
        fwd, bwd = (ops.gelu_forward, ops.gelu_backward) if op == "gelu" else (
            ops.relu_forward, ops.relu_backward)
        tfwd = (lambda x: F.gelu(x, approximate="tanh")) if op == "gelu" else (
            lambda x: F.relu(x))
        n = N * F4
        return Case(op, {"x": randn(B, T, F4)}, ("x",), fwd, lambda d, c: (bwd(d, c),), tfwd,
                    2.0 * n * f32, 3.0 * n * f32, "GB/s")
    if op == "dropout":  # on the residual branch (B, T, C), p = 0.1, training
        rngs = {}  # one generator per array module, made once (not timed)

        def forward(x):
            xp = get_array_module(x)
            if xp.__name__ not in rngs:
                rngs[xp.__name__] = xp.random.default_rng(0)
            return ops.dropout_forward(x, DROPOUT_P, rngs[xp.__name__])

        return Case(op, {"x": randn(B, T, C)}, ("x",), forward,
                    lambda d, c: (ops.dropout_backward(d, c),),
                    lambda x: F.dropout(x, DROPOUT_P, training=True),
                    2.0 * N * C * f32, 3.0 * N * C * f32, "GB/s")
    if op == "cross_entropy":  # fused softmax + log-loss over (B, T, V)
        return Case(op, {"logits": randn(B, T, V) * 3, "targets": rng.integers(0, V, (B, T))},
                    ("logits",), ops.cross_entropy_forward,
                    lambda d, c: (ops.cross_entropy_backward(d, c),),
                    lambda logits, targets: F.cross_entropy(logits.reshape(-1, V),
                                                            targets.reshape(-1)),
                    1.0 * N * V * f32, 2.0 * N * V * f32, "GB/s")
    raise ValueError(f"unknown op {op!r}; choose from {OPS}")


# -- running one implementation ------------------------------------------------------------

def our_impl(case, xp, forward=None, backward=None):
    """Closures for our forward and backward on array module xp (optionally a fused
    kernel pair in place of the xp pair). Returns (out, grads, fwd_fn, bwd_fn)."""
    forward = forward or case.forward
    backward = backward or case.backward
    args = {k: xp.asarray(v) for k, v in case.inputs.items()}
    out, cache = forward(**args)
    dout = 1.0 if out.ndim == 0 else xp.asarray(
        np.random.default_rng(1).standard_normal(out.shape).astype(np.float32))
    grads = [g for g in backward(dout, cache) if g is not None]
    return out, grads, (lambda: forward(**args)), (lambda: backward(dout, cache))


def torch_impl(case, torch, device):
    """The same for the torch twin; the backward is autograd with retain_graph."""
    t = {k: torch.as_tensor(v, device=device) for k, v in case.inputs.items()}
    for name in case.grad_names:
        t[name].requires_grad_(True)
    out = case.torch_forward(**t)
    dout = torch.ones((), device=device) if out.ndim == 0 else torch.as_tensor(
        np.random.default_rng(1).standard_normal(tuple(out.shape)).astype(np.float32),
        device=device)
    wrt = [t[name] for name in case.grad_names]
    grads = torch.autograd.grad(out, wrt, dout, retain_graph=True)

    def bwd():
        return torch.autograd.grad(out, wrt, dout, retain_graph=True)

    return out, list(grads), (lambda: case.torch_forward(**t)), bwd


def check_dropout(impl, case, out, grads):
    """Random masks cannot be compared across libraries: check that out = x * m with m in
    {0, 1/(1-p)}, that about a fraction p was dropped, and that dx = dout * m."""
    x = case.inputs["x"]
    out = to_numpy(out)
    kept = out != 0
    mask = kept / (1.0 - DROPOUT_P)
    check_close(f"dropout forward ({impl})", out, x * mask, RTOL)
    dropped = 1.0 - kept.mean()
    if abs(dropped - DROPOUT_P) > 0.03:
        raise AssertionError(f"dropout forward ({impl}): dropped {dropped:.3f}, expected "
                             f"{DROPOUT_P}")
    dout = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    check_close(f"dropout backward ({impl})", grads[0], dout * mask, RTOL)


def check_against(case, impl, out, grads, ref_out, ref_grads):
    """Ours against the torch twin: the output, then every gradient, by name."""
    check_close(f"{case.op} forward ({impl})", out, ref_out, RTOL)
    for name, g, ref in zip(case.grad_names, grads, ref_grads):
        check_close(f"{case.op} backward d{name} ({impl})", g, ref, RTOL)


def fused_kernels():
    """(tinygrad_char.fused.cuda, None), or (None, why it is skipped)."""
    try:
        from tinygrad_char.fused import cuda as kernels
    except ImportError as e:
        return None, f"fused CuPy kernels skipped: tinygrad_char.fused.cuda not importable ({e})"
    return kernels, None


# -- the sweep -------------------------------------------------------------------------------

def bench_case(case, impls, args):
    """Check, then time, every implementation of one case. Returns {pass: {impl: Timing}}.

    impls: name -> (kind, module, pair): kind "torch" with module (torch, device), or kind
    "ours" with module xp and pair (forward, backward) to use instead of the xp pair.
    Ours is checked against torch on the same device, else torch on the CPU, else NumPy.
    """
    times = {"forward": {}, "backward": {}}
    results = {}  # impl -> (out, grads)
    for impl, (kind, module, pair) in impls.items():
        threads_for(impl, args.threads)  # the kernels' pool, or BLAS's threads
        if kind == "ours":
            out, grads, fwd, bwd = our_impl(case, module, *pair)
        else:
            out, grads, fwd, bwd = torch_impl(case, *module)
        results[impl] = (out, grads)
        if case.op == "dropout":
            check_dropout(impl, case, out, grads)
        elif kind == "ours":
            ref = next((r for r in (OURS_VS_TORCH[impl], "torch", "numpy")
                        if r in results and r != impl), None)
            if ref is None:
                raise AssertionError(f"{case.op}: nothing to check {impl} against")
            check_against(case, f"{impl} vs {ref}", out, grads, *results[ref])
        cuda_torch = kind == "torch" and module[1] == "cuda"
        sync = module[0].cuda.synchronize if cuda_torch else None
        xp = module if kind == "ours" else None
        times["forward"][impl] = time_fn(fwd, args.warmup, args.repeat, sync=sync, xp=xp)
        times["backward"][impl] = time_fn(bwd, args.warmup, args.repeat, sync=sync, xp=xp)
    return times


def implementations(torch, notes):
    """(impls, kernels): impl name -> (kind, module, pair) as `bench_case` takes it, torch
    first on each device so ours can be checked against it; kernels is the fused-kernel
    module or None."""
    impls = {}
    if torch is not None:
        impls["torch"] = ("torch", (torch, "cpu"), ())
    impls["numpy"] = ("ours", np, ())
    cupy, why = cupy_or_none()
    if cupy is None:
        notes.append(f"GPU columns skipped: {why.split(';')[0]}")
        return impls, None
    if torch_cuda_or_none(torch) is not None:
        impls["torch-cuda"] = ("torch", (torch, "cuda"), ())
    impls["cupy"] = ("ours", cupy, ())
    kernels, why = fused_kernels()
    if kernels is None:
        notes.append(why)
    return impls, kernels


def with_fused(impls, kernels, op, notes):
    """impls plus "cupy-fused" when the kernels module has a forward or backward for op
    (the missing half, if any, is the xp op)."""
    if kernels is None:
        return impls
    pair = (getattr(kernels, f"{op}_forward", None), getattr(kernels, f"{op}_backward", None))
    if pair == (None, None):
        note = f"no fused kernel for {op}"
        if note not in notes:
            notes.append(note)
        return impls
    return {**impls, "cupy-fused": ("ours", impls["cupy"][1], pair)}


def with_cpu_kernels(impls, op, shape, notes):
    """impls plus "numpy-cpu" (the numba CPU kernels, dispatch.select_ops("cpu")) when op has
    a CPU kernel for its forward or backward; the case is rebuilt on that op table, so its
    pair has the xp case's signature."""
    if not numba_available():
        note = "numpy-cpu skipped: numba does not import"
        if note not in notes:
            notes.append(note)
        return impls
    cpu, xp = select_ops("cpu"), select_ops("xp")
    if all(getattr(cpu, n, None) is getattr(xp, n, None)
           for n in (f"{op}_forward", f"{op}_backward")):
        return impls
    case = make_case(op, **shape, ops=cpu)
    return {**impls, "numpy-cpu": ("ours", np, (case.forward, case.backward))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,large",
                   help=f"comma-separated names from {list(SIZES)} (default: tiny,large)")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of the ops")
    p.add_argument("--impls", default=",".join(IMPLS),
                   help=f"comma-separated subset of {list(IMPLS)}; those that cannot run here "
                        "are skipped with a message (default: all). Ours is checked against "
                        "torch on its device, so keep torch-cuda beside cupy")
    add_run_args(p, repeat=11, warmup=3, what="calls per measurement")
    args = p.parse_args(argv)
    sizes = pick(p, args.sizes, SIZES, "size")
    ops = pick(p, args.ops, OPS, "op")
    wanted = pick(p, args.impls, IMPLS, "implementation")

    torch = torch_or_none()
    notes = []
    if torch is None:
        notes.append("torch not installed: PyTorch columns and the correctness check "
                     "against it skipped (dropout is still checked)")
        if any(o != "dropout" for o in ops):
            print("warning: without torch only dropout's correctness can be checked",
                  file=sys.stderr)
    limit_threads(args.threads)
    impls, kernels = implementations(torch, notes)
    machine = machine_info()
    out_dir = Path(args.out)
    print(machine_summary(machine))
    warning = busy_warning(args.threads, machine)
    if warning:
        notes.append(warning)
    for note in notes:
        print(note)

    rows = []
    for size in sizes:
        shape = SIZES[size]
        for op in ops:
            if torch is None and op != "dropout":
                print(f"{size} {op}: skipped (the check needs torch)")
                continue
            case = make_case(op, **shape)
            run = with_fused(impls, kernels, op, notes)
            if "numpy-cpu" in wanted:
                run = with_cpu_kernels(run, op, shape, notes)
            times = bench_case(case, {k: v for k, v in run.items() if k in wanted}, args)
            for pass_name, by_impl in times.items():
                work = case.work_fwd if pass_name == "forward" else case.work_bwd
                row = {"size": size, "op": op, "pass": pass_name, "unit": case.unit}
                record = {"bench": "layers", "size": size, "shape": shape, "op": op,
                          "pass": pass_name, "unit": case.unit, "work": work,
                          "threads": args.threads, "repeat": args.repeat,
                          "warmup": args.warmup, "results": {}, "speed_vs_torch": {}}
                for impl, t in by_impl.items():
                    rate = work / (t.median * 1e-3) / 1e9
                    row[f"{impl} ms"] = t.median
                    row[f"{impl} rate"] = rate
                    record["results"][impl] = {"median_ms": t.median, "min_ms": t.min,
                                               "max_ms": t.max, "rate": rate}
                    ref = OURS_VS_TORCH.get(impl)
                    if ref in by_impl:
                        speed = by_impl[ref].median / t.median
                        row[f"{impl} speed"] = speed
                        record["speed_vs_torch"][impl] = speed
                rows.append(row)
                append_jsonl(out_dir / "layers.jsonl", record, machine)
            print(f"{size:6s} {op:19s} " + "  ".join(
                f"{impl} {times['forward'][impl].median:.3f}/"
                f"{times['backward'][impl].median:.3f} ms" for impl in times["forward"]))

    names = [n for n in impls if n in wanted] + [n for n in ("numpy-cpu", "cupy-fused")
                                                 if any(f"{n} ms" in r for r in rows)]
    columns = ["size", "op", "pass"] + [(f"{n} ms", f"{n} ms") for n in names]
    columns += [(f"{n} speed", f"{n}: speed vs {OURS_VS_TORCH[n]}") for n in names
                if OURS_VS_TORCH.get(n) in names]
    columns += ["unit"] + [(f"{n} rate", f"{n} rate") for n in names]
    header_notes = [machine_summary(machine),
                    f"Median of {args.repeat} calls after {args.warmup} warm-up calls, "
                    f"{args.threads} threads for NumPy's BLAS and torch. "
                    f"Speed columns: {SPEED_VS_TORCH}. Rate: achieved GFLOP/s (matmul ops) or "
                    f"GB/s (minimum bytes read and written once). Sizes: " +
                    "; ".join(f"{s} = " + ", ".join(f"{k}={v}" for k, v in SIZES[s].items())
                              for s in sizes)] + notes
    text = write_markdown_table(out_dir / "layers.md", rows, columns,
                                "Layer forward and backward times", header_notes)
    print()
    print(text)
    plot(rows, names, sizes, out_dir / "layers.png")
    return rows


def plot(rows, names, sizes, path):
    """Median ms per (op, pass), one bar per implementation, one panel per size."""
    plt = pyplot_or_none()
    if plt is None or not rows:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(len(sizes), 1, figsize=(12, 4.5 * len(sizes)), squeeze=False)
    width = 0.8 / len(names)
    for ax, size in zip(axes[:, 0], sizes):
        size_rows = [r for r in rows if r["size"] == size]
        labels = [f"{r['op']} {r['pass'][:3]}" for r in size_rows]
        for i, name in enumerate(names):
            values = [r.get(f"{name} ms", math.nan) for r in size_rows]
            ax.bar(np.arange(len(size_rows)) + i * width, values, width, label=name)
        ax.set_xticks(np.arange(len(size_rows)) + 0.4 - width / 2)
        ax.set_xticklabels(labels, fontsize=7, rotation=40, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("median ms (log)")
        ax.set_title(f"size {size}: " + ", ".join(f"{k}={v}" for k, v in SIZES[size].items()))
        ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
