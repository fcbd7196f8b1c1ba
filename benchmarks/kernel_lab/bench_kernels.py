"""Validate, then time, every fused kernel (tinygrad_char/fused/cuda.py) against its xp twin
on a CUDA GPU, and append one JSON line per measurement to benchmarks/results/kernels.jsonl.

    python benchmarks/kernel_lab/bench_kernels.py                     # GPT-2-small-ish shapes
    python benchmarks/kernel_lab/bench_kernels.py --B 8 --T 256 --C 384 --NH 6 --V 65
    python benchmarks/kernel_lab/bench_kernels.py --only attention layernorm

For each op: run the fused wrapper and the twin on the same inputs and compare (float32
tolerances of tests/test_kernels.py); a mismatch is reported and that op is not timed
(the script exits 1 at the end). Then time both with CUDA events around each call, after
warm-up, and report the median and the spread over --repeats calls. Timings are GPU time
of the whole wrapper (its allocations and CuPy glue included), which is what the model
pays.

A script, never a test: it needs CuPy and a GPU and says so in one line otherwise. Not a
kernel tuner: launch configurations are the ones fixed in kernels/*.cu.
"""

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.kernel_lab import embedding_sorted  # noqa: E402  (the lab's version)
from tinygrad_char.ops import (activations, attention, cross_entropy, embedding,  # noqa: E402
                               layernorm)
from tinygrad_char.fused import cuda as kernels  # noqa: E402
from tinygrad_char import optim  # noqa: E402
from tinygrad_char.backend import BackendError, get_backend  # noqa: E402
from tinygrad_char.model import GPTConfig, param_shapes  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "kernels.jsonl"
RTOL, ATOL = 1e-4, 1e-5  # as tests/test_kernels.py (atol at its loosest, for summed grads)
OPS = ("layernorm", "attention", "cross_entropy", "gelu", "embedding_backward", "adamw")


def cuda_time_ms(cupy, fn, warmup, repeats):
    """Median and quartiles of fn()'s GPU time in ms, with CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    cupy.cuda.Stream.null.synchronize()
    times = []
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3), "n": repeats}


def max_errors(pairs):
    """Largest absolute error over (fused, twin) pairs, and whether all are within tolerance."""
    worst, ok = 0.0, True
    for got, want in pairs:
        if want is None:
            ok &= got is None
            continue
        got, want = np.asarray(got.get()), np.asarray(want.get())
        worst = max(worst, float(np.max(np.abs(got - want), initial=0.0)))
        ok &= got.shape == want.shape and bool(np.allclose(got, want, rtol=RTOL, atol=ATOL))
    return worst, ok


def cases(cp, args):
    """(op, pass, shape dict, fused call, twin call, validate) for each requested op.
    validate() returns the (fused, twin) output pairs to compare."""
    rng = np.random.default_rng(0)

    def randn(*shape, scale=1.0):
        return cp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))

    B, T, C, NH, V = args.B, args.T, args.C, args.NH, args.V
    out = []
    if "layernorm" in args.only:
        x, w, b, dy = randn(B, T, C), randn(C), randn(C), randn(B, T, C)
        _, cf = kernels.layernorm_forward(x, w, b)
        _, cr = layernorm.layernorm_forward(x, w, b)
        shape = {"B": B, "T": T, "C": C}
        out.append(("layernorm", "forward", shape,
                    lambda: kernels.layernorm_forward(x, w, b),
                    lambda: layernorm.layernorm_forward(x, w, b),
                    lambda: [(kernels.layernorm_forward(x, w, b)[0],
                              layernorm.layernorm_forward(x, w, b)[0])]))
        out.append(("layernorm", "backward", shape,
                    lambda: kernels.layernorm_backward(dy, cf),
                    lambda: layernorm.layernorm_backward(dy, cr),
                    lambda: list(zip(kernels.layernorm_backward(dy, cf),
                                     layernorm.layernorm_backward(dy, cr)))))
    if "attention" in args.only:
        qkv, dy = randn(B, T, 3 * C), randn(B, T, C)
        _, cf = kernels.attention_forward(qkv, NH)
        _, cr = attention.attention_forward(qkv, NH)
        shape = {"B": B, "T": T, "C": C, "NH": NH}
        out.append(("attention", "forward", shape,
                    lambda: kernels.attention_forward(qkv, NH),
                    lambda: attention.attention_forward(qkv, NH),
                    lambda: [(kernels.attention_forward(qkv, NH)[0],
                              attention.attention_forward(qkv, NH)[0])]))
        out.append(("attention", "backward", shape,
                    lambda: kernels.attention_backward(dy, cf),
                    lambda: attention.attention_backward(dy, cr),
                    lambda: [(kernels.attention_backward(dy, cf),
                              attention.attention_backward(dy, cr))]))
    if "cross_entropy" in args.only:
        logits = randn(B, T, V, scale=3.0)
        targets = cp.asarray(rng.integers(0, V, size=(B, T)))

        def fused():  # forward and backward: the kernel does both in one launch
            loss, c = kernels.cross_entropy_forward(logits, targets)
            return loss, kernels.cross_entropy_backward(1.0, c)

        def twin():
            loss, c = cross_entropy.cross_entropy_forward(logits, targets)
            return loss, cross_entropy.cross_entropy_backward(1.0, c)
        out.append(("cross_entropy", "forward+backward", {"B": B, "T": T, "V": V}, fused, twin,
                    lambda: list(zip(fused(), twin()))))
    if "gelu" in args.only:
        F = 4 * C
        x, dy = randn(B, T, F, scale=2.0), randn(B, T, F)
        _, cf = kernels.gelu_forward(x)
        _, cr = activations.gelu_forward(x)
        shape = {"B": B, "T": T, "F": F}
        out.append(("gelu", "forward", shape,
                    lambda: kernels.gelu_forward(x),
                    lambda: activations.gelu_forward(x),
                    lambda: [(kernels.gelu_forward(x)[0], activations.gelu_forward(x)[0])]))
        out.append(("gelu", "backward", shape,
                    lambda: kernels.gelu_backward(dy, cf),
                    lambda: activations.gelu_backward(dy, cr),
                    lambda: [(kernels.gelu_backward(dy, cf),
                              activations.gelu_backward(dy, cr))]))
    if "embedding_backward" in args.only:
        idx = cp.asarray(rng.integers(0, V, size=(B, T)))
        dout = randn(B, T, C)
        cache = (idx, V)
        shape = {"B": B, "T": T, "V": V, "C": C}
        for name, fn in (("atomic", kernels.embedding_backward),
                         ("sorted", embedding_sorted.embedding_backward_sorted)):
            out.append((f"embedding_backward_{name}", "backward", shape,
                        lambda fn=fn: fn(dout, cache),
                        lambda: embedding.embedding_backward(dout, cache),
                        lambda fn=fn: [(fn(dout, cache),
                                        embedding.embedding_backward(dout, cache))]))
    if "adamw" in args.only:
        config = GPTConfig(vocab_size=V, block_size=T, n_layer=args.L, n_head=NH, n_embd=C)
        shapes = param_shapes(config)
        grads = {k: randn(*s) for k, s in shapes.items()}
        p_fused = {k: randn(*s) for k, s in shapes.items()}
        p_twin = {k: p.copy() for k, p in p_fused.items()}
        opt_fused = kernels.FusedAdamW(p_fused, lr=1e-3, weight_decay=0.1)
        opt_twin = optim.AdamW(p_twin, lr=1e-3, weight_decay=0.1)

        def validate():
            opt_fused.step(grads)
            opt_twin.step(grads)
            return [(p_fused[k], p_twin[k]) for k in shapes]
        n_params = int(sum(math.prod(s) for s in shapes.values()))
        out.append(("adamw", "step", {"tensors": len(shapes), "params": n_params},
                    lambda: opt_fused.step(grads), lambda: opt_twin.step(grads), validate))
    return out


def machine(cp):
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip() or None
    except OSError:
        commit = None
    return {"gpu": name, "cupy": cp.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "numpy": np.__version__,
            "python": platform.python_version(), "commit": commit}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, default=8, help="batch size")
    p.add_argument("--T", type=int, default=1024, help="sequence length")
    p.add_argument("--C", type=int, default=768, help="n_embd")
    p.add_argument("--NH", type=int, default=12, help="heads (hs = C / NH <= 128 for the kernel)")
    p.add_argument("--V", type=int, default=65, help="vocabulary (65: tiny Shakespeare chars)")
    p.add_argument("--L", type=int, default=12, help="layers (AdamW's parameter set)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--only", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON lines file to append to")
    args = p.parse_args(argv)
    try:
        cp = get_backend("cupy").xp
    except BackendError as e:
        print(f"bench_kernels: {e}", file=sys.stderr)
        return 2
    env = machine(cp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = []
    with open(args.out, "a") as f:
        for op, pass_, shape, fused, twin, validate in cases(cp, args):
            err, ok = max_errors(validate())  # validate first: a wrong kernel is not timed
            record = {"op": op, "pass": pass_, "shape": shape, "dtype": "float32",
                      "max_abs_err": err, "valid": ok, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      **env}
            if ok:
                record["fused"] = cuda_time_ms(cp, fused, args.warmup, args.repeats)
                record["xp"] = cuda_time_ms(cp, twin, args.warmup, args.repeats)
                record["speedup"] = record["xp"]["median_ms"] / record["fused"]["median_ms"]
                print(f"{op:28s} {pass_:17s} fused {record['fused']['median_ms']:8.3f} ms   "
                      f"xp {record['xp']['median_ms']:8.3f} ms   x{record['speedup']:.2f}")
            else:
                failed.append(f"{op} {pass_}")
                print(f"{op:28s} {pass_:17s} MISMATCH (max abs error {err:.3e}): not timed")
            f.write(json.dumps(record) + "\n")
    if failed:
        print(f"bench_kernels: {len(failed)} kernel(s) disagree with their twin: {failed}",
              file=sys.stderr)
        return 1
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
