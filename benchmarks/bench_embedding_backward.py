"""The token embedding's backward, four exact ways: the figure behind the one-hot choice in
tinygrad_char/ops/embedding.py.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_embedding_backward.py --threads 2

dW[v] = sum of dout[n] over the positions n with idx[n] == v, for dout (N, C) float32 and
idx (N,) ids in [0, V). `dW[idx] += dout` would drop repeated ids, so the candidates are:
  add.at     np.add.at(dW, idx, dout)                       (cupyx.scatter_add on the GPU)
  one-hot    onehot(idx).T @ dout: a (V, N) x (N, C) matmul (what the library does)
  bincount   np.bincount(idx * C + c, weights=dout) over the flattened (N, C), reshaped
  sort+reduceat  sort dout by id, np.add.reduceat over each run of equal ids (NumPy only)
  library    tinygrad_char.ops.embedding.embedding_backward (should track one-hot)
for character vocabularies V in {65, 283} at (N, C) in {(768, 128), (2048, 192),
(8192, 384)} (N = B * T). Each is checked against a float64 np.add.at first. The table
gives the median ms and "x fastest" = ms / fastest ms at that size (1.00 = the fastest).
Results: <out>/embedding_backward.jsonl (appended) and <out>/embedding_backward.md.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from benchmarks.harness import (add_run_args, append_jsonl, busy_warning, check_close,
                                cupy_or_none, limit_threads, machine_info,
                                machine_summary, time_fn, write_markdown_table)  # noqa: E402
from tinygrad_char.ops.embedding import embedding_backward  # noqa: E402

VOCABS = [65, 283]  # Tiny Shakespeare; WikiText-2's characters
SHAPES = [(768, 128), (2048, 192), (8192, 384)]  # (N, C): tiny-cpu, larger, gpu-preset-ish
RTOL = 1e-4  # float32 sums of up to a few thousand terms against float64


def by_add_at(idx, dout, V, xp):
    dW = xp.zeros((V, dout.shape[1]), dtype=dout.dtype)
    if xp is np:
        np.add.at(dW, idx, dout)
    else:
        import cupyx

        cupyx.scatter_add(dW, idx, dout)
    return dW


def by_onehot(idx, dout, V, xp):
    onehot = xp.zeros((idx.size, V), dtype=dout.dtype)  # (N, V)
    onehot[xp.arange(idx.size), idx] = 1
    return onehot.T @ dout  # (V, C)


def by_bincount(idx, dout, V, xp):
    N, C = dout.shape
    flat = (idx[:, None] * C + xp.arange(C)).ravel()  # (N * C,) the target cell of each value
    sums = xp.bincount(flat, weights=dout.ravel(), minlength=V * C)  # float64
    return sums.reshape(V, C).astype(dout.dtype)


def by_sort_reduceat(idx, dout, V, xp):
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])  # each run's start
    dW = np.zeros((V, dout.shape[1]), dtype=dout.dtype)
    dW[sorted_idx[starts]] = np.add.reduceat(dout[order], starts, axis=0)
    return dW


def by_library(idx, dout, V, xp):
    return embedding_backward(dout, (idx, V))


METHODS = {"add.at": by_add_at, "one-hot": by_onehot, "bincount": by_bincount,
           "sort+reduceat": by_sort_reduceat, "library": by_library}
NUMPY_ONLY = {"sort+reduceat"}  # CuPy has no ufunc.reduceat


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocabs", default=",".join(map(str, VOCABS)), help="comma-separated V")
    p.add_argument("--shapes", default=",".join(f"{n}x{c}" for n, c in SHAPES),
                   help="comma-separated NxC (default: 768x128,2048x192,8192x384)")
    add_run_args(p, repeat=11, warmup=3, what="calls per measurement")
    args = p.parse_args(argv)
    vocabs = [int(v) for v in args.vocabs.split(",") if v]
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",") if s]

    limit_threads(args.threads)
    machine = machine_info()
    out_dir = Path(args.out)
    print(machine_summary(machine))
    notes = [n for n in [busy_warning(args.threads, machine)] if n]
    modules = [("numpy", np)]
    cupy, why = cupy_or_none()
    if cupy is not None:
        modules.append(("cupy", cupy))
    else:
        notes.append(f"CuPy rows skipped: {why.split(';')[0]}")
    for note in notes:
        print(note)

    rows = []
    for V in vocabs:
        for N, C in shapes:
            rng = np.random.default_rng(0)
            idx = rng.integers(0, V, size=N)
            dout = rng.standard_normal((N, C)).astype(np.float32)
            reference = np.zeros((V, C))
            np.add.at(reference, idx, dout.astype(np.float64))
            for device, xp in modules:
                x_idx, x_dout = xp.asarray(idx), xp.asarray(dout)
                sync = (lambda: xp.cuda.Device().synchronize()) if device == "cupy" else None
                found = []
                for method, fn in METHODS.items():
                    if device == "cupy" and method in NUMPY_ONLY:
                        continue
                    check_close(f"embedding backward {method} ({device}, V={V}, N={N}, "
                                f"C={C})", fn(x_idx, x_dout, V, xp), reference, RTOL)
                    t = time_fn(lambda: fn(x_idx, x_dout, V, xp), args.warmup, args.repeat,
                                sync=sync, xp=xp)
                    found.append({"device": device, "V": V, "N": N, "C": C, "method": method,
                                  "median_ms": t.median, "min_ms": t.min, "max_ms": t.max})
                fastest = min(r["median_ms"] for r in found)
                for row in found:
                    row["x_fastest"] = row["median_ms"] / fastest
                    append_jsonl(out_dir / "embedding_backward.jsonl",
                                 {"bench": "embedding_backward", **row,
                                  "threads": args.threads, "repeat": args.repeat,
                                  "warmup": args.warmup, "dtype": "float32"}, machine)
                print(f"{device} V={V:4d} N={N:5d} C={C:4d}  " + "  ".join(
                    f"{r['method']} {r['median_ms']:.3f}" for r in found) + "  (ms)")
                rows += found

    columns = ["device", "V", "N", "C", "method", ("median_ms", "median ms"),
               ("x_fastest", "x fastest (ms / fastest ms)"), ("min_ms", "min ms"),
               ("max_ms", "max ms")]
    header = [machine_summary(machine),
              f"Median of {args.repeat} calls after {args.warmup} warm-up calls, float32, "
              f"{args.threads} threads; every method checked against a float64 np.add.at "
              f"first (rtol {RTOL:g})."] + notes
    text = write_markdown_table(out_dir / "embedding_backward.md", rows, columns,
                                "Embedding backward: scatter-add methods", header)
    print()
    print(text)
    return rows


if __name__ == "__main__":
    main()
