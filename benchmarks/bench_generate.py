"""Generation speed: characters per second with and without the key/value cache.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_generate.py --threads 2

`tinygrad_char.inference.sampling.generate` is timed for batch sizes 1 and 8, with use_cache True and
False, in two regimes:
  * inside the window: a 1-character prompt grows to block_size characters, so every step
    fits in the context and the cache runs one new position per step;
  * past the window: the prompt already fills block_size characters, so every new token
    slides the window. With learned positions (--pos-encodings learned) the cache then
    rebuilds itself each step (a full prefill, see `generate`'s docstring) and should cost
    about what no cache costs; with rope or sinusoidal positions the cache slides (the last
    block_size keys and values) and keeps its speed.
chars/s counts every row of the batch: B * new characters / seconds. "cache speed-up" is
no-cache ms / cache ms (>= 1.0: the cache helps). Before timing, greedy decoding with and
without the cache must give identical characters inside the window, and past it too for
learned positions; past the window a sliding cache must give the characters of the
whole-sequence forward (sliding-window attention), its reference.

The model has random weights (speed does not depend on them) and samples with
temperature 1. Results: <out>/generate.jsonl (appended) and <out>/generate.md.
Not here: PyTorch (generation is our own loop; bench_train_step.py compares the model).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from benchmarks.harness import (NAMED_CONFIGS, add_run_args, append_jsonl,
                                available_named_configs, busy_warning, cupy_or_none,
                                limit_threads, machine_info, machine_summary, pick,
                                time_fn, write_markdown_table)  # noqa: E402
from tinygrad_char import GPT  # noqa: E402
from tinygrad_char.inference.sampling import generate  # noqa: E402


def prompts(cfg, batch_size, regime, new_tokens, seed=0):
    """(prompt ids (B, T0), number of new tokens) for a regime."""
    rng = np.random.default_rng(seed)
    if regime == "inside window":  # 1 character -> block_size characters
        return rng.integers(0, cfg.vocab_size, (batch_size, 1)), cfg.block_size - 1
    return rng.integers(0, cfg.vocab_size, (batch_size, cfg.block_size)), new_tokens


def greedy_whole_sequence(model, idx, n):
    """Greedy decoding by the model's forward over the whole sequence each step (past
    block_size: sliding-window attention), the reference of the sliding cache."""
    xp = model.xp
    seq = xp.asarray(idx)
    for _ in range(n):
        logits, _ = model.forward(seq)
        seq = xp.concatenate([seq, logits[:, -1].argmax(-1)[:, None]], axis=1)
    return seq


def check_cache_agrees(model, cfg):
    """Greedy characters with the cache must be the reference's (see the docstring)."""
    for regime in ("inside window", "past window"):
        idx, n = prompts(cfg, 2, regime, new_tokens=8, seed=1)
        n = min(n, 16)
        with_cache = generate(model, idx, n, temperature=0, use_cache=True)
        sliding = regime == "past window" and cfg.pos_encoding != "learned"
        reference = (greedy_whole_sequence(model, idx, n) if sliding else
                     generate(model, idx, n, temperature=0, use_cache=False))
        if not bool((with_cache == reference).all()):
            raise AssertionError(f"generate ({regime}, {cfg.pos_encoding}): greedy tokens "
                                 f"with the KV cache differ from the reference")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny-cpu",
                   help=f"comma-separated names from {list(NAMED_CONFIGS)}")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated B values")
    p.add_argument("--new-tokens", type=int, default=64,
                   help="characters generated per row past the window (default 64)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "auto"])
    p.add_argument("--vocab-size", type=int, default=65)
    p.add_argument("--pos-encodings", default="learned,rope",
                   help="comma-separated from learned, sinusoidal, rope")
    add_run_args(p, repeat=3, warmup=1, what="generate() calls")
    args = p.parse_args(argv)
    configs = pick(p, args.configs, NAMED_CONFIGS, "config")
    encodings = pick(p, args.pos_encodings, ("learned", "sinusoidal", "rope"), "pos encoding")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.backend == "cupy":
        cupy, why = cupy_or_none()
        if cupy is None:
            p.error(why)

    limit_threads(args.threads)
    machine = machine_info()
    out_dir = Path(args.out)
    print(machine_summary(machine))
    notes = [n for n in [busy_warning(args.threads, machine)] if n]
    for note in notes:
        print(note)

    rows = []
    from dataclasses import replace

    for (name, _, base), pos in [(c, e) for c in available_named_configs(
            configs, args.vocab_size, notes) for e in encodings]:
        cfg = replace(base, pos_encoding=pos)
        model = GPT(cfg, backend=args.backend, seed=0).eval()
        check_cache_agrees(model, cfg)
        sync = model.backend.synchronize
        for B in batch_sizes:
            for regime in ("inside window", "past window"):
                idx, n = prompts(cfg, B, regime, args.new_tokens)
                times = {}
                for use_cache in (True, False):
                    t = time_fn(lambda: generate(model, idx, n, temperature=1.0, seed=0,
                                                 use_cache=use_cache),
                                args.warmup, args.repeat, sync=sync)
                    times[use_cache] = t
                    row = {"config": name, "pos": pos, "B": B, "regime": regime,
                           "cache": "on" if use_cache else "off", "prompt": idx.shape[1],
                           "new_chars": n, "median_ms": t.median, "min_ms": t.min,
                           "max_ms": t.max, "chars_per_s": B * n / (t.median * 1e-3)}
                    rows.append(row)
                rows[-2]["cache_speedup"] = times[False].median / times[True].median
                for row in rows[-2:]:
                    append_jsonl(out_dir / "generate.jsonl",
                                 {"bench": "generate", **row, "model": cfg.to_dict(),
                                  "backend": args.backend, "threads": args.threads,
                                  "repeat": args.repeat, "warmup": args.warmup,
                                  "temperature": 1.0}, machine)
                    print(f"{name} {pos:10s} B={B} {regime:13s} cache {row['cache']:3s} "
                          f"{row['median_ms']:9.1f} ms {row['chars_per_s']:9.0f} chars/s")

    columns = ["config", ("pos", "positions"), "B", "regime", "cache", ("prompt", "prompt chars"),
               ("new_chars", "new chars per row"), ("median_ms", "median ms"),
               ("chars_per_s", "chars/s"),
               ("cache_speedup", "cache speed-up (no-cache ms / cache ms)"),
               ("min_ms", "min ms"), ("max_ms", "max ms")]
    header = [machine_summary(machine),
              f"Backend {args.backend}, {args.threads} threads, median of {args.repeat} "
              f"generate() calls after {args.warmup} warm-up, temperature 1.0. chars/s = "
              f"B x new chars / s. Past the window, with learned positions the cache is "
              f"rebuilt every step, so there it is expected to match no cache, not beat "
              f"it; with rope it slides and keeps its speed."] + notes
    text = write_markdown_table(out_dir / "generate.md", rows, columns,
                                "Generation with and without the KV cache", header)
    print()
    print(text)
    return rows


if __name__ == "__main__":
    main()
