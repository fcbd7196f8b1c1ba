"""Memory of causal attention against the sequence length: the xp op keeps the (B, NH, T, T)
probabilities for its backward (quadratic in T), the fused flash kernel only q, k, v, y and
one logsumexp per row (linear in T).

    python benchmarks/bench_attention_memory.py                  # NumPy (xp) on the CPU
    python benchmarks/bench_attention_memory.py --impls cupy,cupy-fused,torch-cuda   # a GPU

For each T (default 256, 1024, 4096; B=1, C=384, NH=6 as the GPU preset's layer) and
implementation it measures, over one forward and one backward:
    cache MiB   memory allocated by the forward and still held when it returns (the output
                and what the backward needs), the figure that multiplies by the layer count
    peak MiB    the high-water mark above the inputs during forward + backward
NumPy: tracemalloc (NumPy reports its buffers to it); CuPy: an allocator that records the
memory pool's bytes in use after every allocation; torch: torch.cuda.max_memory_allocated
(torch's scaled_dot_product_attention, which picks its flash or memory-efficient kernel).
The outputs are checked against NumPy's at the smallest T first.
Results: <out>/attention_memory.jsonl (appended), <out>/attention_memory.md.
"""

import argparse
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from benchmarks.harness import (append_jsonl, cupy_or_none, machine_info,  # noqa: E402
                                machine_summary, pick, rel_error, torch_cuda_or_none,
                                torch_or_none, write_markdown_table)
from tinygrad_char.ops import attention  # noqa: E402

IMPLS = ["numpy", "cupy", "cupy-fused", "torch-cuda"]
MIB = 2 ** 20


def inputs(B, T, C, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, T, 3 * C), dtype=np.float32),
            rng.standard_normal((B, T, C), dtype=np.float32))


def measure_numpy(qkv, dy, n_head):
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    y, cache = attention.attention_forward(qkv, n_head)
    held = tracemalloc.get_traced_memory()[0] - base
    dqkv = attention.attention_backward(dy, cache)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return y, dqkv, held, peak


def measure_cupy(cupy, fused, qkv, dy, n_head):
    from tinygrad_char.fused import cuda as kernels

    forward = kernels.attention_forward if fused else attention.attention_forward
    backward = kernels.attention_backward if fused else attention.attention_backward
    pool = cupy.get_default_memory_pool()
    qkv_d, dy_d = cupy.asarray(qkv), cupy.asarray(dy)
    forward(qkv_d, n_head)  # compile the kernels and warm the pool outside the count
    pool.free_all_blocks()
    peak = [pool.used_bytes()]

    def malloc(size):
        mem = pool.malloc(size)
        peak[0] = max(peak[0], pool.used_bytes())
        return mem

    cupy.cuda.set_allocator(malloc)
    try:
        base = pool.used_bytes()
        peak[0] = base
        y, cache = forward(qkv_d, n_head)
        cupy.cuda.Device().synchronize()
        held = pool.used_bytes() - base
        dqkv = backward(dy_d, cache)
        cupy.cuda.Device().synchronize()
    finally:
        cupy.cuda.set_allocator(pool.malloc)
    return cupy.asnumpy(y), cupy.asnumpy(dqkv), held, peak[0] - base


def measure_torch(torch, qkv, dy, n_head):
    B, T, C3 = qkv.shape
    C = C3 // 3
    x = torch.tensor(qkv, device="cuda", requires_grad=True)
    g = torch.tensor(dy, device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in x.split(C, dim=2))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.transpose(1, 2).reshape(B, T, C)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    y.backward(g)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return y.detach().cpu().numpy(), x.grad.cpu().numpy(), held, peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impls", default="numpy", help=f"comma-separated from {IMPLS}")
    p.add_argument("--lengths", default="256,1024,4096", help="sequence lengths T")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    wanted = pick(p, args.impls, IMPLS, "implementation")
    lengths = [int(t) for t in args.lengths.split(",")]
    cupy, cupy_why = cupy_or_none()
    torch = torch_or_none() if "torch-cuda" in wanted else None
    torch_cuda = torch_cuda_or_none(torch)
    notes = []
    impls = []
    for impl in wanted:
        if impl.startswith("cupy") and cupy is None:
            notes.append(f"{impl} skipped: {cupy_why}")
        elif impl == "torch-cuda" and torch_cuda is None:
            notes.append(f"{impl} skipped: no CUDA device for torch")
        else:
            impls.append(impl)
    machine = machine_info()
    print(machine_summary(machine))
    for note in notes:
        print(note)
    B, C, NH = args.batch, args.n_embd, args.n_head
    rows = []
    for T in lengths:
        qkv, dy = inputs(B, T, C)
        reference = None
        for impl in impls:
            if impl == "numpy":
                y, dqkv, held, peak = measure_numpy(qkv, dy, NH)
            elif impl.startswith("cupy"):
                y, dqkv, held, peak = measure_cupy(cupy, impl == "cupy-fused", qkv, dy, NH)
            else:
                y, dqkv, held, peak = measure_torch(torch, qkv, dy, NH)
            if reference is None:
                reference = (y, dqkv)
            else:  # every implementation computes the same thing
                for what, a, b in (("y", y, reference[0]), ("dqkv", dqkv, reference[1])):
                    err = rel_error(a, b)
                    if not err <= 1e-3:
                        raise AssertionError(f"T={T} {impl} {what}: relative error {err:.2e}")
            scores_mib = B * NH * T * T * 4 / MIB
            row = {"T": T, "impl": impl, "cache_mib": held / MIB, "peak_mib": peak / MIB,
                   "scores_matrix_mib": scores_mib, "batch": B, "n_embd": C, "n_head": NH}
            rows.append(row)
            append_jsonl(Path(args.out) / "attention_memory.jsonl",
                         {"bench": "attention_memory", **row}, machine)
            print(f"T={T:5d} {impl:11s} cache {held / MIB:9.1f} MiB  peak {peak / MIB:9.1f} "
                  f"MiB  (one (B, NH, T, T) float32 matrix: {scores_mib:.1f} MiB)")
    columns = ["T", "impl", ("cache_mib", "cache MiB"), ("peak_mib", "peak MiB"),
               ("scores_matrix_mib", "one (B,NH,T,T) matrix MiB")]
    header = [machine_summary(machine),
              f"One causal attention layer, B={B}, C={C}, NH={NH}, float32: memory held "
              "from forward to backward (cache) and the peak above the inputs over forward "
              "+ backward."] + notes
    text = write_markdown_table(Path(args.out) / "attention_memory.md", rows, columns,
                                "Attention memory against sequence length", header)
    print(text)
    return rows


if __name__ == "__main__":
    main()
