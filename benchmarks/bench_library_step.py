"""The README's library example against the training loop's step, same model, same batch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_library_step.py --threads 2

Two ways to take one full step (forward, backward, clip to norm 1.0, AdamW) on the nanoGPT
CPU shape (4 layers x 4 heads x 128, context 64, batch 12, 65 characters):
- "library": the README's example word for word: `tinygrad_char.AdamW(model.params, ...)`,
  `clip_grad_norm(grads, 1.0)`, `optimizer.step(grads, lr=...)`;
- "training loop": what `tinygrad-char train` runs: the model's op-table optimizer
  (`model.ops.AdamW`) and `train.clip_and_step`, the clip folded into the update.
Both after `tinygrad_char.runtime.setup(threads)`, as the README says. Each step is timed
whole; the two are interleaved in rounds, each going first in every other round, so drift on a
shared machine hits both alike. Reported: the median step of each way, and the median over the
rounds of each round's ratio (library / loop; 1.00 = equal), which pairs the two ways in time.
The two differ only after the backward, so the update alone (clip and AdamW on one set of
gradients) is timed the same way too, many repetitions a round: that is the part of the gap
that is not the machine's noise.

Results: <out>/library_step.jsonl (appended) and <out>/library_step.md.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from benchmarks.harness import (append_jsonl, busy_warning, machine_info,  # noqa: E402
                                machine_summary, write_markdown_table)
import tinygrad_char  # noqa: E402
from tinygrad_char import GPT, GPTConfig, clip_grad_norm, cosine_lr, runtime  # noqa: E402
from tinygrad_char.training.train import clip_and_step  # noqa: E402

CONFIG = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
BATCH = 12
LR = dict(learning_rate=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000)


def library_step(model, optimizer, idx, targets, step):
    """The README's example."""
    logits, loss = model.forward(idx, targets)
    grads = model.backward()
    clip_grad_norm(grads, 1.0)
    optimizer.step(grads, lr=cosine_lr(step=step, **LR))
    return loss


def loop_step(model, optimizer, idx, targets, step):
    """The training loop's update (training/train.py)."""
    logits, loss = model.forward(idx, targets)
    grads = model.backward()
    clip_and_step(grads, optimizer, cosine_lr(step=step, **LR), 1.0)
    return loss


def library_update(optimizer, grads, step):
    clip_grad_norm(grads, 1.0)
    optimizer.step(grads, lr=cosine_lr(step=step, **LR))


def loop_update(optimizer, grads, step):
    clip_and_step(grads, optimizer, cosine_lr(step=step, **LR), 1.0)


def interleaved(ways, rounds, reps):
    """{name: [ms per call, one a round]}: each way `reps` calls a round, the order of the ways
    flipped every other round."""
    times = {name: [] for name in ways}
    for r in range(rounds):
        order = list(ways.items())
        for name, call in (order if r % 2 == 0 else order[::-1]):  # neither always first
            t0 = time.perf_counter()
            for s in range(reps):
                call(s)
            times[name].append((time.perf_counter() - t0) * 1e3 / reps)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="runtime.setup(threads); 0 = every core")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round and way")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per way first")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)

    threads = runtime.setup(args.threads)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, CONFIG["vocab_size"], size=(BATCH, CONFIG["block_size"]))
    targets = rng.integers(0, CONFIG["vocab_size"], size=(BATCH, CONFIG["block_size"]))
    ways = {}
    for name, step_fn, make_opt in (
            ("library", library_step, lambda m: tinygrad_char.AdamW(
                m.params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)),
            ("training loop", loop_step, lambda m: m.ops.AdamW(
                m.params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1))):
        model = GPT(GPTConfig(**CONFIG), backend="numpy", dtype="float32", seed=0)
        ways[name] = (model, make_opt(model), step_fn)
    # the same numbers from both ways: they are the same math
    losses = {name: float(fn(m, o, idx, targets, 0)) for name, (m, o, fn) in ways.items()}
    if abs(losses["library"] - losses["training loop"]) > 1e-5 * abs(losses["library"]):
        raise SystemExit(f"the two ways disagree on the first loss: {losses}")
    for name, (m, o, fn) in ways.items():
        for s in range(args.warmup):
            fn(m, o, idx, targets, 1 + s)
    first = 1 + args.warmup
    times = interleaved({name: (lambda s, m=m, o=o, fn=fn: fn(m, o, idx, targets, first + s))
                         for name, (m, o, fn) in ways.items()}, args.rounds, args.steps)
    # the update alone, on one fixed set of gradients (copied each call: the clip scales them)
    ways["library"][0].forward(idx, targets)
    grads = ways["library"][0].backward()
    update_ways = {name: (lambda s, o=ways[name][1], update=update: update(
                       o, {k: g.copy() for k, g in grads.items()}, 100 + s))
                   for name, update in (("library", library_update),
                                        ("training loop", loop_update))}
    copy_only = interleaved({"copy": lambda s: {k: g.copy() for k, g in grads.items()}},
                            args.rounds, 10 * args.steps)["copy"]
    update_times = interleaved(update_ways, args.rounds, 10 * args.steps)
    copy_ms = statistics.median(copy_only)
    update_med = {name: statistics.median(v) - copy_ms for name, v in update_times.items()}
    med = {name: statistics.median(v) for name, v in times.items()}
    ratio = statistics.median(a / b for a, b in zip(times["library"], times["training loop"]))
    update_gap = update_med["library"] - update_med["training loop"]
    info = machine_info()
    busy = busy_warning(threads, info)
    record = {"threads": threads, "config": {**CONFIG, "batch_size": BATCH},
              "rounds": args.rounds, "steps_per_round": args.steps,
              "ms_per_step": med, "ms_per_step_all": times,
              "library_over_loop": ratio,
              "update_ms": update_med, "update_gap_ms": update_gap,
              "update_gap_share_of_step": update_gap / med["training loop"],
              "optimizers": {
                  name: type(o).__module__ + "." + type(o).__name__
                  for name, (m, o, fn) in ways.items()},
              "kernels": ways["library"][0].ops_summary()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    append_jsonl(out / "library_step.jsonl", record, machine=info)
    rows = [{"way": name, "ms/step (median)": f"{med[name]:.2f}",
             "range": f"{min(times[name]):.2f}-{max(times[name]):.2f}",
             "optimizer": record["optimizers"][name]} for name in ways]
    text = write_markdown_table(out / "library_step.md", rows,
                                ["way", "ms/step (median)", "range", "optimizer"],
                                f"README library example vs training loop step "
                                f"({machine_summary(info)})",
                                notes=[f"library / loop = {ratio:.3f} (median of the "
                                       f"{args.rounds} rounds' paired ratios)",
                                       f"the update alone (clip + AdamW): library "
                                       f"{update_med['library']:.3f} ms, loop "
                                       f"{update_med['training loop']:.3f} ms: the library "
                                       f"way's extra work is {update_gap:.3f} ms, "
                                       f"{100 * update_gap / med['training loop']:.1f}% of "
                                       f"a step", record["kernels"]]
                                + ([busy] if busy else []))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
