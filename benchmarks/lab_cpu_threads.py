"""Kernel lab: can the fused CPU kernels use a second core? Threading layers against
OpenBLAS's own threads, measured on a ReLU (the simplest memory-bound pass) alone and
between matmuls, as in a training step.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/lab_cpu_threads.py

Each arrangement runs in a fresh process (thread pools are fixed when a library loads):

    blas2-serial       OpenBLAS on 2 threads, the kernel serial  (the library until the pool)
    blas2-omp          OpenBLAS on 2 threads, kernel in numba's OpenMP pool (2 threads)
    blas2-omp-passive  the same, OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep)
    blas2-workqueue    OpenBLAS on 2 threads, numba's workqueue pool
    blas1-onepool      OpenBLAS started on 1 thread; the matmuls split in two row blocks
                       over numba's OpenMP pool, each block one single-threaded BLAS call,
                       so one pool of 2 threads does everything (as PyTorch's OpenMP does):
                       the library's design (runtime.set_threads)
    torch              torch.relu on 2 threads, for reference

Reported per arrangement: ReLU alone (us; 393,216 and 1,572,864 floats: bench_layers'
tiny and large MLP hiddens) and a "step" of 4 x (matmul, ReLU, matmul, ReLU) on a
(3072, 128) x (128, 512) MLP, with the same loop without the ReLUs (us, medians). For
blas1-onepool also the model's real training step with the library's kernels as shipped
(tiny-cpu and the CPU preset shapes, kernels "cpu", forward + backward + clip + AdamW, ms).
Results: benchmarks/results/cpu_threads.jsonl and cpu_threads.md.

Not here: the kernels themselves (tinygrad_char/fused/cpu/) and the step benchmark
(bench_train_step.py); this only decides how they are threaded.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

ARRANGEMENTS = {
    "blas2-serial": {"OPENBLAS_NUM_THREADS": "2"},
    "blas2-omp": {"OPENBLAS_NUM_THREADS": "2", "NUMBA_THREADING_LAYER": "omp"},
    "blas2-omp-passive": {"OPENBLAS_NUM_THREADS": "2", "NUMBA_THREADING_LAYER": "omp",
                          "OMP_WAIT_POLICY": "PASSIVE"},
    "blas2-workqueue": {"OPENBLAS_NUM_THREADS": "2", "NUMBA_THREADING_LAYER": "workqueue"},
    "blas1-onepool": {"OPENBLAS_NUM_THREADS": "1", "NUMBA_THREADING_LAYER": "omp"},
    "torch": {},
}
SIZES = (393_216, 1_572_864)
ROWS, C, HIDDEN = 3072, 128, 512


def median_us(fn, warmup, repeat):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return round(times[len(times) // 2] * 1e6, 1)


def measure_torch(repeat):
    import numpy as np
    import torch

    torch.set_num_threads(2)
    out = {}
    for n in SIZES:
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(n, dtype=np.float32))
        out[f"relu_{n}_us"] = median_us(lambda: torch.relu(x), 20, repeat)
    return out


def measure(name, repeat):
    """This process's figures for arrangement `name` (its environment is already set)."""
    if name == "torch":
        return measure_torch(repeat)
    import numba
    import numpy as np

    fastmath = {"reassoc", "contract", "arcp", "nsz"}
    threaded = name != "blas2-serial"

    @numba.njit(fastmath=fastmath, error_model="numpy", inline="always")
    def relu_into(x, out):
        for i in range(x.size):
            v = x[i]
            out[i] = v if v > 0 else np.float32(0.0)

    @numba.njit(fastmath=fastmath, error_model="numpy", parallel=threaded)
    def relu(x, out):  # two chunks, one a thread when parallel
        n = x.size
        half = (n + 1) // 2
        for c in numba.prange(2):
            lo = c * half
            hi = min(n, lo + half)
            relu_into(x[lo:hi], out[lo:hi])

    @numba.njit(parallel=True)
    def matmul_two_blocks(a, b, out):  # blas1-onepool: rows split over the pool
        m = a.shape[0]
        half = (m + 1) // 2
        for c in numba.prange(2):
            lo = c * half
            hi = min(m, lo + half)
            np.dot(a[lo:hi], b, out[lo:hi])

    if threaded:
        numba.set_num_threads(2)
    matmul = matmul_two_blocks if name == "blas1-onepool" else np.matmul
    rng = np.random.default_rng(0)
    out = {"threading_layer": None}
    for n in SIZES:
        x = rng.standard_normal(n, dtype=np.float32)
        y = np.empty_like(x)
        out[f"relu_{n}_us"] = median_us(lambda: relu(x, y), 20, repeat)
    if threaded:
        out["threading_layer"] = numba.threading_layer()
    X = rng.standard_normal((ROWS, C), dtype=np.float32)
    W1 = (rng.standard_normal((C, HIDDEN)) * 0.05).astype(np.float32)
    W2 = (rng.standard_normal((HIDDEN, C)) * 0.05).astype(np.float32)
    H, A = np.empty((ROWS, HIDDEN), np.float32), np.empty((ROWS, HIDDEN), np.float32)

    def step(with_relu):
        for _ in range(4):
            matmul(X, W1, H)
            if with_relu:
                relu(H.reshape(-1), A.reshape(-1))
            matmul(A if with_relu else H, W2, X)
            if with_relu:
                relu(X.reshape(-1), X.reshape(-1))

    out["matmuls_only_us"] = median_us(lambda: step(False), 5, max(repeat // 4, 11))
    out["step_us"] = median_us(lambda: step(True), 5, max(repeat // 4, 11))
    if name == "blas1-onepool":
        for label, batch in (("tiny_cpu", 12), ("cpu_preset", 32)):
            out[f"model_step_{label}_ms"] = model_step_ms(batch, max(repeat // 8, 11))
    return out


def model_step_ms(batch, repeat):
    """Median ms of the model's training step (4 x 4 x 128, context 64, V 65, kernels
    "cpu": the library's one pool, runtime.set_threads(2))."""
    import numpy as np

    from tinygrad_char import runtime
    from tinygrad_char.model import GPT, GPTConfig
    from tinygrad_char.optim import clip_scale

    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),
                kernels="cpu")
    runtime.set_threads(2)
    opt = model.ops.AdamW(model.params, lr=1e-3)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 65, (batch, 64)), rng.integers(0, 65, (batch, 64))

    def step():
        model.forward(idx, targets)
        grads = model.backward()
        opt.step(grads, grad_scale=clip_scale(opt.grad_norm(grads), 1.0))

    return round(median_us(step, 5, repeat) / 1e3, 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(ARRANGEMENTS),
                   help="comma-separated arrangements (default: all)")
    p.add_argument("--repeat", type=int, default=200, help="timed calls per figure")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.repeat)))
        return 0

    from benchmarks.harness import RESULTS, append_jsonl, machine_summary, \
        write_markdown_table

    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in ARRANGEMENTS]
    if unknown:
        p.error(f"unknown arrangement(s) {unknown}; choose from {list(ARRANGEMENTS)}")
    out_dir = Path(args.out) if args.out else RESULTS
    rows = []
    for name in names:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY")}
        env.update(ARRANGEMENTS[name], OMP_NUM_THREADS="2", NUMBA_NUM_THREADS="2")
        done = subprocess.run([sys.executable, __file__, "--child", name,
                               "--repeat", str(args.repeat)],
                              env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise SystemExit(f"{name}: {done.stderr.strip().splitlines()[-1]}")
        row = {"arrangement": name, **json.loads(done.stdout.strip().splitlines()[-1])}
        print(row, flush=True)
        rows.append(row)
        append_jsonl(out_dir / "cpu_threads.jsonl", row)
    columns = ["arrangement", "threading_layer", *[f"relu_{n}_us" for n in SIZES],
               "matmuls_only_us", "step_us", "model_step_tiny_cpu_ms",
               "model_step_cpu_preset_ms"]
    write_markdown_table(out_dir / "cpu_threads.md", rows, columns,
                         "Threading the CPU kernels: a ReLU alone and between matmuls",
                         notes=[machine_summary(),
                                "us, medians; step = 4 x (matmul, ReLU, matmul, ReLU) on a "
                                f"({ROWS}, {C}) x ({C}, {HIDDEN}) MLP; matmuls_only: the same "
                                "loop without the ReLUs; model_step: the real training step "
                                "with the library's kernels (its one pool). "
                                "Each arrangement in its own process (see the script's "
                                "docstring)."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
