"""The serving engine alone (no HTTP): what batching gains, and the most it could gain.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_engine_ceiling.py --config cpu-preset --sequences 32 \\
        --threads 2 --rounds 5

A learned-position model whose requests run past its context re-runs each sequence's whole
window every step (`sampling.generate`'s crop, which the engine keeps): such a character
costs a block_size-token forward whether it is served alone or batched, so batching
multiplies one client's rate only by the cores a single request leaves idle and by how
much faster the bigger products run. This script measures how far that can go. In each of
--rounds rounds (every quantity once a round, so the machine's drift hits all alike), with
--chars characters a request (prompt "ROMEO:", temperature 0.8, a seed each):

  * single: a fresh `Engine` serving three requests one after the other: chars/s;
  * batched: a fresh engine given --sequences requests at once: chars/s;
  * profiled: the same batched run again with every op of the model's table timed (the
    engine's own thread calls them): the linear layers' FLOPs (2 x multiply-adds) and
    time, every other op's time, and the run's wall time;
  * BLAS peak: the fastest float32 NumPy matmul on --threads BLAS threads over the
    linear layers' shapes at one forward of the engine and 1024^3.

ceiling = characters / (profiled wall time - its matmul time + matmul FLOPs / BLAS peak):
the batched run with every matmul at the BLAS peak and everything else (the other ops,
sampling, the engine's bookkeeping) as it ran. Reported per round and as medians, and as
multiples of `single`. Results: <out>/engine_ceiling.json (machine, versions, config,
every round) and <out>/engine_ceiling.md. The engine runs on --threads threads (the
server's --threads); the model has random weights (speed does not depend on them).
"""

import argparse
import json
import queue
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script or a module

from benchmarks.bench_serve import CHARS, PROMPT, TEMPERATURE, architecture  # noqa: E402
from benchmarks.harness import (TimedOps, busy_warning, machine_info,  # noqa: E402
                                machine_summary, time_fn, write_markdown_table)
from tinygrad_char import GPT, GPTConfig, runtime  # noqa: E402
from tinygrad_char.inference import engine  # noqa: E402
from tinygrad_char.training.tokenizer import CharTokenizer  # noqa: E402


def engine_chars_per_s(model, tokenizer, requests, at_once, chars, threads):
    """chars/s of a fresh engine serving `requests` requests, `at_once` of them at a time."""
    eng = engine.Engine(model, tokenizer, max_slots=at_once, max_queue=requests,
                        threads=threads).start()
    try:
        done = queue.Queue()
        start = time.perf_counter()
        for first in range(0, requests, at_once):
            batch = range(first, min(first + at_once, requests))
            for seed in batch:
                eng.submit(engine.Request(PROMPT, chars, temperature=TEMPERATURE, seed=seed),
                           lambda e: e["type"] != "text" and done.put(e), text_events=False)
            for _ in batch:
                event = done.get()
                if event["type"] != "done" or event["num_chars"] != chars:
                    raise SystemExit(f"error: the engine answered {event}")
        return requests * chars / (time.perf_counter() - start)
    finally:
        eng.stop()  # also puts back the engine thread's BLAS threads (runtime.few_rows)


def blas_peak(shapes, threads, repeat=9):
    """The fastest float32 matmul on `threads` BLAS threads over `shapes` (m, k, n), FLOP/s
    (for each shape the fastest of `repeat` timings of 10 products, after 10 untimed)."""
    from threadpoolctl import threadpool_limits

    best = 0.0
    with threadpool_limits(limits=threads, user_api="blas"):
        for m, k, n in shapes:
            a = np.random.default_rng(0).random((m, k), dtype=np.float32)
            b = np.random.default_rng(1).random((k, n), dtype=np.float32)
            out = np.empty((m, n), np.float32)
            ten = time_fn(lambda: [np.dot(a, b, out) for _ in range(10)], warmup=1,
                          repeat=repeat)
            best = max(best, 2 * m * k * n / (ten.min / 1e3 / 10))
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="cpu-preset",
                   help="tiny, cpu-sinusoidal or a harness preset (cpu-preset: "
                        "examples/configs/cpu.json) (default: cpu-preset)")
    p.add_argument("--sequences", type=int, default=32, help="requests at once (default 32)")
    p.add_argument("--chars", type=int, default=200, help="characters a request (default 200)")
    p.add_argument("--threads", type=int, default=2, help="the engine's threads (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians reported")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                   help="folder for engine_ceiling.json and engine_ceiling.md")
    args = p.parse_args(argv)
    for name in ("sequences", "chars", "threads", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    arch = architecture(args.config)
    info = machine_info()
    warning = busy_warning(args.threads, info)
    if warning:
        print(warning)
    runtime.setup(args.threads)
    tokenizer = CharTokenizer(CHARS, unk=False)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **arch), seed=0).eval()
    W, C = model.config.block_size, model.config.n_embd
    hidden = model.params["transformer.h.0.mlp.c_fc.weight"].shape[0]
    per_forward = max(1, engine.REBUILD_FLOATS // (W * hidden))  # as the engine re-runs
    rows = min(per_forward, args.sequences) * W
    shapes = sorted({(rows, C, 3 * C), (rows, C, C), (rows, C, hidden), (rows, hidden, C),
                     (1024, 1024, 1024)})
    total = args.sequences * args.chars

    engine_chars_per_s(model, tokenizer, 1, 1, args.chars, args.threads)  # kernels built
    rounds = []
    for r in range(args.rounds):
        single = engine_chars_per_s(model, tokenizer, 3, 1, args.chars, args.threads)
        batched = engine_chars_per_s(model, tokenizer, args.sequences, args.sequences,
                                     args.chars, args.threads)
        timed = TimedOps(model)
        timed.install()
        try:
            profiled = engine_chars_per_s(model, tokenizer, args.sequences, args.sequences,
                                          args.chars, args.threads)
        finally:
            timed.remove()
        wall = total / profiled
        matmul_s = timed.seconds.get("linear_forward", 0.0)
        peak = blas_peak(shapes, args.threads)
        ceiling = total / (wall - matmul_s + timed.matmul_flops / peak)
        rounds.append(dict(single_chars_per_s=single, batched_chars_per_s=batched,
                           batched_over_single=batched / single,
                           profiled_chars_per_s=profiled, matmul_s=matmul_s,
                           matmul_gflop=timed.matmul_flops / 1e9,
                           matmul_gflop_per_s=timed.matmul_flops / matmul_s / 1e9,
                           matmul_share=matmul_s / wall,
                           seconds_by_op=dict(timed.seconds),
                           blas_peak_gflop_per_s=peak / 1e9, ceiling_chars_per_s=ceiling,
                           ceiling_over_single=ceiling / single))
        x = rounds[-1]
        print(f"round {r + 1}: single {single:.0f} chars/s, {args.sequences} at once "
              f"{batched:.0f} ({batched / single:.2f}x); profiled {profiled:.0f}: matmuls "
              f"{x['matmul_gflop']:.1f} GFLOP at {x['matmul_gflop_per_s']:.0f} GFLOP/s, "
              f"{100 * x['matmul_share']:.0f}% of the run; BLAS peak "
              f"{x['blas_peak_gflop_per_s']:.0f} GFLOP/s; ceiling {ceiling:.0f} chars/s "
              f"({ceiling / single:.2f}x single)", flush=True)
    median = {k: statistics.median(r[k] for r in rounds)
              for k in rounds[0] if k != "seconds_by_op"}
    record = {"benchmark": "engine_ceiling", "machine": info, "versions": info["versions"],
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "config": {"config": args.config, "architecture": arch,
                         "sequences": args.sequences, "chars": args.chars,
                         "threads": args.threads, "rounds": args.rounds,
                         "windows_per_forward": per_forward, "prompt": PROMPT,
                         "temperature": TEMPERATURE, "blas_peak_shapes": shapes},
              "median": median, "rounds": rounds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_ceiling.json").write_text(json.dumps(record, indent=1) + "\n")
    columns = [("round", "round"), ("single_chars_per_s", "single chars/s"),
               ("batched_chars_per_s", f"{args.sequences} at once chars/s"),
               ("batched_over_single", "x single"),
               ("matmul_gflop_per_s", "matmuls GFLOP/s"),
               ("matmul_share", "matmul share of the run"),
               ("blas_peak_gflop_per_s", "BLAS peak GFLOP/s"),
               ("ceiling_chars_per_s", "ceiling chars/s"),
               ("ceiling_over_single", "ceiling x single")]
    table = [dict(r, round=i + 1) for i, r in enumerate(rounds)] + [dict(median, round="median")]
    write_markdown_table(out / "engine_ceiling.md", table, columns,
                         f"The engine alone, {args.config}, {args.sequences} sequences of "
                         f"{args.chars} characters (a {W}-character context)",
                         notes=[machine_summary(info),
                                f"a run: {median['matmul_gflop']:.1f} GFLOP of matmuls; windows "
                                f"past the context re-run {per_forward} a forward"])
    print(f"median: single {median['single_chars_per_s']:.0f}, {args.sequences} at once "
          f"{median['batched_chars_per_s']:.0f} ({median['batched_over_single']:.2f}x), "
          f"ceiling {median['ceiling_chars_per_s']:.0f} "
          f"({median['ceiling_over_single']:.2f}x single)")
    print(f"wrote {out / 'engine_ceiling.json'} and {out / 'engine_ceiling.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
