"""Data-parallel scaling on this machine: tokens/s on 1 and 2 MPI ranks, the all-reduce
against message size on loopback, and how much of the gradient all-reduce the overlap
with the backward hides.

    python benchmarks/bench_scaling.py                       # cpu-preset, 20 timed steps
    python benchmarks/bench_scaling.py --config tiny-cpu --steps 5 --sizes 10,16

What is timed (medians over --steps training steps after --warmup, each step being
train.forward_backward + clip_and_step on a random batch of the config's shapes):

    one process, one thread            the baseline each rank is compared with
    one process, every core            what a plain run gets (runtime.set_threads:
                                       the kernels' pool on every core, BLAS on one)
    mpiexec -n 2, one thread each      the MPI transport, with the overlap on and off
                                       (mpiexec -n 1 is the one-process run: no MPI)

From the MPI runs: `exposed_ms`, the time a step spends inside MPI for its gradients
(Testall between layers + the final Waitall). Without the overlap every bucket is sent
after the backward, so that is the whole all-reduce; hidden fraction = 1 - exposed with
overlap / exposed without. Also AdamW's step against a broadcast of the parameters (what
"rank 0 steps and broadcasts" would cost instead of every rank stepping), and
MPI_Allreduce of float32 buffers of 2^k bytes (--sizes), median of --repeat calls.

Then the written model of docs/scaling.md: the measured one-thread FLOP rate and a
latency + bytes / bandwidth fit of the loopback all-reduces, checked against the measured
2-rank step, and predicted weak-scaling efficiencies for the cpu preset, gpu preset and
gpu-large on 2-64 nodes at 10 and 100 Gb/s.

Results: <out>/scaling.json (one JSON object, machine and versions included),
<out>/scaling.md, <out>/scaling_model.json and <out>/scaling_model.md.
Not here: multi-node runs (this machine is one node: all traffic is loopback / shared
memory), NCCL.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import harness  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="cpu-preset", choices=sorted(harness.NAMED_CONFIGS))
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sizes", default="10,26",
                   help="all-reduce sizes: 2^a .. 2^b bytes (default 10,26: 1 KiB .. 64 MiB)")
    p.add_argument("--repeat", type=int, default=10, help="all-reduce calls per size")
    p.add_argument("--out", default=str(harness.RESULTS))
    p.add_argument("--job", choices=("single", "mpi"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- one measurement (runs in a child process, or on each rank) ------------------------------

def build(args, world=None):
    """(model, optimizer, x, y, cfg) for the config, on random ids."""
    from tinygrad_char import GPT

    cfg, model_cfg = harness.named_config(args.config)
    cfg.batch_size = max(cfg.batch_size, 2)
    model = GPT(model_cfg, seed=0, kernels=cfg.kernels)
    optimizer = model.ops.AdamW(model.params, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(0)
    x = rng.integers(0, model_cfg.vocab_size, (cfg.batch_size, cfg.block_size))
    y = rng.integers(0, model_cfg.vocab_size, (cfg.batch_size, cfg.block_size))
    return model, optimizer, x, y, cfg


def time_steps(args, step, world=None):
    times, exposed = [], []
    for i in range(args.warmup + args.steps):
        if world is not None:
            world.barrier()
            world.comm_time = 0.0
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if world is not None:
            exposed.append(world.comm_time)
    times = np.array(times[args.warmup:]) * 1e3
    out = {"step_ms": float(np.median(times)), "step_min_ms": float(times.min()),
           "step_max_ms": float(times.max())}
    if world is not None:
        out["exposed_ms"] = float(np.median(exposed[args.warmup:]) * 1e3)
    return out


def job_single(args):
    from tinygrad_char import runtime
    from tinygrad_char.training.distributed import SingleProcess, split_rows
    from tinygrad_char.training.train import clip_and_step, forward_backward

    runtime.set_threads(args.threads)  # as a run with --threads N arranges them
    model, optimizer, x, y, cfg = build(args)
    world = SingleProcess()
    rows = split_rows(len(x), 1, 1)[0]

    def step():
        grads, loss, _ = forward_backward(model, world, x, y, rows, 1)
        clip_and_step(grads, optimizer, 1e-3, 1.0)

    result = time_steps(args, step)
    return {**result, "tokens_per_s": x.size / result["step_ms"] * 1e3,
            "num_params": model.num_params()}


def job_mpi(args):
    from tinygrad_char.training.distributed import connect, split_rows
    from tinygrad_char.training.train import clip_and_step, forward_backward

    world = connect()
    model, optimizer, x, y, cfg = build(args, world)
    rows = split_rows(len(x), world.world_size, 1)[world.rank]

    def step():
        grads, loss, _ = forward_backward(model, world, x, y, rows, 1)
        clip_and_step(grads, optimizer, 1e-3, 1.0)

    result = {}
    for overlap in (True, False):
        world.overlap = overlap
        key = "overlap" if overlap else "no_overlap"
        r = time_steps(args, step, world)
        result[key] = {**r, "tokens_per_s": x.size / r["step_ms"] * 1e3}
    if world.world_size > 1:
        on, off = result["overlap"]["exposed_ms"], result["no_overlap"]["exposed_ms"]
        result["hidden_fraction"] = 1.0 - on / off if off > 0 else None
        # every rank steps AdamW vs rank 0 stepping and broadcasting the parameters
        grads, _, _ = forward_backward(model, world, x, y, rows, 1)
        adamw = harness.time_fn(lambda: optimizer.step(grads, 1e-3), warmup=2, repeat=9)
        flat = np.concatenate([p.reshape(-1) for p in model.params.values()])

        def bcast():
            world.comm.Bcast(flat, root=0)

        world.barrier()
        b = harness.time_fn(bcast, warmup=2, repeat=9)
        result["adamw_ms"], result["bcast_params_ms"] = adamw.median, b.median
        result["grad_bytes"] = int(flat.nbytes)
        sweep = []
        lo, hi = (int(v) for v in args.sizes.split(","))
        for k in range(lo, hi + 1):
            buf = np.ones(2 ** k // 4, dtype=np.float32)
            times = []
            for _ in range(args.warmup + args.repeat):
                world.barrier()
                t = time.perf_counter()
                world.comm.Allreduce(world.MPI.IN_PLACE, buf, op=world.MPI.SUM)
                times.append(time.perf_counter() - t)
            sweep.append({"bytes": 2 ** k,
                          "allreduce_ms": float(np.median(times[args.warmup:]) * 1e3)})
        result["allreduce"] = sweep
    return result if world.is_main else None


# -- the written model (docs/scaling.md) -----------------------------------------------------

GBIT = 1e9 / 8  # bytes per second in one Gb/s
NETWORKS = {"10 Gb/s": (10 * GBIT, 30e-6), "100 Gb/s": (100 * GBIT, 5e-6)}  # (beta, alpha)
NODES = (2, 4, 8, 16, 32, 64)
# the GPU rate is an assumption until bench_train_step.py runs on the GPU in question: our
# CuPy step in float32/tf32 on one current data-centre GPU (see docs/scaling.md)
GPU_TFLOPS = 50.0


def model_sizes(name):
    """(gradient bytes per bucket, in the order the backward finishes them, FLOPs per
    token, tokens per rank and step, blocks) for a named benchmark config (V = 65)."""
    from tinygrad_char.model import param_shapes

    cfg, model_cfg = harness.named_config(name)
    shapes = param_shapes(model_cfg)
    L, C, T = model_cfg.n_layer, model_cfg.n_embd, model_cfg.block_size
    blocks = [sum(int(np.prod(sh)) * 4 for n, sh in shapes.items()
                  if n.startswith(f"transformer.h.{i}.")) for i in reversed(range(L))]
    rest = sum(int(np.prod(sh)) * 4 for n, sh in shapes.items() if ".h." not in n)
    n_params = sum(int(np.prod(sh)) for n, sh in shapes.items() if n != "transformer.wpe.weight")
    flops_per_token = 6 * n_params + 12 * L * C * T  # nanoGPT's count
    return blocks + [rest], flops_per_token, cfg.batch_size * T, L


def ring_allreduce_s(nbytes, p, beta, alpha):
    """A ring all-reduce of nbytes over p ranks: 2 (p - 1) messages of nbytes / p each."""
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / beta


def predict_step(buckets, t_step, p, beta, alpha, overlap=True):
    """Seconds of one step on p ranks: compute t_step (forward 1/3, backward 2/3, the
    backward's time spread over the buckets by their size), the buckets all-reduced one
    after another on the network, each starting when the backward has finished it (overlap)
    or all after the backward (no overlap). Returns (step seconds, exposed seconds)."""
    t_fwd, t_bwd = t_step / 3, 2 * t_step / 3
    total = sum(buckets)
    ready, t = [], t_fwd
    for b in buckets:
        t += t_bwd * b / total
        ready.append(t if overlap else t_fwd + t_bwd)
    net = 0.0
    for b, r in zip(buckets, ready):
        net = max(net, r) + ring_allreduce_s(b, p, beta, alpha)
    end = max(t_step, net)
    return end, end - t_step


def fit_loopback(sweep):
    """(alpha seconds, beta bytes/s) of t = alpha + bytes / beta from the measured loopback
    all-reduces: alpha the fastest small message, beta the median of bytes / (t - alpha)
    over messages of 1 MiB and more (a least-squares line is ruled by the largest sizes)."""
    sizes = np.array([s["bytes"] for s in sweep], dtype=float)
    times = np.array([s["allreduce_ms"] for s in sweep]) / 1e3
    alpha = float(times.min())
    big = sizes >= 2 ** 20
    beta = float(np.median(sizes[big] / np.maximum(times[big] - alpha, 1e-9))) if big.any() \
        else float(sizes[-1] / max(times[-1] - alpha, 1e-9))
    return alpha, beta


def predictions(cpu_flops):
    """Weak scaling (each rank keeps the preset's batch): efficiency = one rank's step /
    the p-rank step, for each config, network and node count."""
    rows = []
    for name, rate in (("cpu-preset", cpu_flops), ("gpu-preset", GPU_TFLOPS * 1e12),
                       ("gpu-large", GPU_TFLOPS * 1e12)):
        buckets, fpt, tokens, L = model_sizes(name)
        t_step = fpt * tokens / rate
        for net, (beta, alpha) in NETWORKS.items():
            row = {"config": name, "network": net, "grad_MB": sum(buckets) / 1e6,
                   "step_ms_1_rank": t_step * 1e3}
            for p in NODES:
                with_overlap, _ = predict_step(buckets, t_step, p, beta, alpha, True)
                without, _ = predict_step(buckets, t_step, p, beta, alpha, False)
                row[f"p={p}"] = f"{t_step / with_overlap:.0%} ({t_step / without:.0%})"
            rows.append(row)
    # strong scaling of the cpu preset: its global batch of 32 rows cut over p ranks
    buckets, fpt, tokens, _ = model_sizes("cpu-preset")
    t_step = fpt * tokens / cpu_flops
    for net, (beta, alpha) in NETWORKS.items():
        row = {"config": "cpu-preset, global batch 32 (strong)", "network": net,
               "grad_MB": sum(buckets) / 1e6, "step_ms_1_rank": t_step * 1e3}
        for p in NODES:
            if p <= 32:
                step, _ = predict_step(buckets, t_step / p, p, beta, alpha, True)
                without, _ = predict_step(buckets, t_step / p, p, beta, alpha, False)
                row[f"p={p}"] = f"{t_step / p / step:.0%} ({t_step / p / without:.0%})"
            else:
                row[f"p={p}"] = "-"  # fewer rows than ranks
        rows.append(row)
    return rows


# -- the launcher ----------------------------------------------------------------------------

def run_child(args, job, n=1, threads=1):
    """Run one measurement in a fresh process (or n MPI ranks); its JSON result."""
    cmd = [sys.executable, __file__, "--job", job, "--threads", str(threads),
           "--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--sizes", args.sizes, "--repeat", str(args.repeat)]
    env = dict(os.environ)
    if job == "mpi":
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                               + env.get("PATH", ""))
        if mpiexec is None:
            return {"skipped": "mpiexec not found (pip install 'tinygrad-char[mpi]')"}
        cmd = [mpiexec, "-n", str(n), *cmd]
    else:
        env["TINYGRAD_CHAR_MPI"] = "0"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{job} (n={n}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.job:
        result = {"single": job_single, "mpi": job_mpi}[args.job](args)
        if result is not None:
            print(json.dumps(result))
        return 0
    cores = harness.available_cores()
    info = harness.machine_info()
    print(harness.machine_summary(info))
    warning = harness.busy_warning(2, info)
    if warning:
        print(warning)
    runs = {"one_process_1_thread": run_child(args, "single", threads=1),
            f"one_process_{cores}_threads": run_child(args, "single", threads=cores),
            "mpi_2_ranks": run_child(args, "mpi", n=2)}
    base = runs["one_process_1_thread"]["tokens_per_s"]
    rows = []
    for name, r in runs.items():
        for variant, m in ([("", r)] if "overlap" not in r else
                           [(" (overlap)", r["overlap"]), (" (no overlap)", r["no_overlap"])]):
            rows.append({"run": name + variant, "step_ms": m["step_ms"],
                         "tokens_per_s": m["tokens_per_s"],
                         "vs_one_thread": m["tokens_per_s"] / base,
                         "exposed_comm_ms": m.get("exposed_ms")})
    two = runs["mpi_2_ranks"]
    record = {"bench": "scaling", "config": args.config, "steps": args.steps,
              "num_params": runs["one_process_1_thread"]["num_params"], "runs": runs,
              "hidden_fraction": two.get("hidden_fraction"), "busy_warning": warning}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scaling.json", "w") as f:
        json.dump({**record, "machine": {k: v for k, v in info.items() if k != "versions"},
                   "versions": info["versions"]}, f, indent=1, default=str)
    notes = [harness.machine_summary(info),
             f"hidden fraction of the all-reduce (2 ranks): {two.get('hidden_fraction')}",
             f"AdamW step {two.get('adamw_ms')} ms vs broadcast of the parameters "
             f"{two.get('bcast_params_ms')} ms ({two.get('grad_bytes')} bytes)"]
    if warning:
        notes.append(warning)
    harness.write_markdown_table(out / "scaling.md", rows, ["run", "step_ms", "tokens_per_s",
                                                            "vs_one_thread", "exposed_comm_ms"],
                                 f"Data-parallel scaling, {args.config}", notes)
    sweep = two.get("allreduce", [])
    with open(out / "scaling.md", "a") as f:
        f.write("\n| all-reduce bytes | ms (2 ranks, loopback) |\n|---:|---:|\n")
        for s in sweep:
            f.write(f"| {s['bytes']:,} | {s['allreduce_ms']:.3f} |\n")
    # the written model: the measured one-thread FLOP rate, the loopback fit, predictions
    buckets, fpt, tokens, _ = model_sizes(args.config)
    t1 = runs["one_process_1_thread"]["step_ms"] / 1e3
    cpu_flops = fpt * tokens / t1
    check = None
    if sweep:
        alpha, beta = fit_loopback(sweep)
        predicted, _ = predict_step(buckets, t1 / 2, 2, beta, alpha, overlap=False)
        check = {"loopback_alpha_us": round(float(alpha) * 1e6, 2),
                 "loopback_beta_GBps": round(float(beta) / 1e9, 2),
                 "predicted_2_rank_step_ms": round(float(predicted) * 1e3, 1),
                 "measured_2_rank_step_ms": round(two["overlap"]["step_ms"], 1)}
    table = predictions(cpu_flops)
    model = {"cpu_gflops_one_thread": cpu_flops / 1e9, "gpu_tflops_assumed": GPU_TFLOPS,
             "loopback_check": check, "predictions": table}
    with open(out / "scaling_model.json", "w") as f:
        json.dump(model, f, indent=1)
    columns = ["config", "network", "grad_MB", "step_ms_1_rank"] + [f"p={p}" for p in NODES]
    harness.write_markdown_table(
        out / "scaling_model.md", table, columns,
        "Predicted weak-scaling efficiency, with overlap (without)",
        [f"CPU rate {cpu_flops / 1e9:.1f} GFLOP/s (one thread, measured here); GPU rate "
         f"{GPU_TFLOPS:g} TFLOP/s (assumed); ring all-reduce, alpha 30 us at 10 Gb/s, 5 us "
         f"at 100 Gb/s", f"loopback check: {check}"])
    print(harness.markdown_table(rows, ["run", "step_ms", "tokens_per_s", "vs_one_thread",
                                        "exposed_comm_ms"]))
    print(harness.markdown_table(table, columns))
    print(f"loopback check: {check}")
    for note in notes[1:]:
        print(note)
    for s in sweep:
        print(f"all-reduce {s['bytes']:>10,} B: {s['allreduce_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
