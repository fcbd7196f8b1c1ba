"""What a checkpoint costs: save (model + optimizer pair) and load, with and without the
per-tensor CRC-32 verification, for the benchmark configurations.

    python benchmarks/bench_checkpoint.py --configs tiny-cpu cpu-preset gpu-preset

Median of --repeat runs after --warmup, files on the disk of --dir (default: a temporary
folder). One JSON line per config is appended to benchmarks/results/checkpoint.jsonl and a
table written to benchmarks/results/checkpoint.md.
"""

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness import (add_run_args, append_jsonl, available_named_configs,  # noqa: E402
                     machine_info, time_fn, write_markdown_table)

from tinygrad_char import GPT, AdamW  # noqa: E402
from tinygrad_char.training.checkpoint import (load_checkpoint, load_training_state, # noqa: E402
                                               save_checkpoint)
from tinygrad_char.training.tokenizer import CharTokenizer  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny-cpu", "cpu-preset", "gpu-preset"])
    p.add_argument("--dir", default=None, help="folder to write the files in")
    add_run_args(p, repeat=7, warmup=2)
    args = p.parse_args()
    tokenizer = CharTokenizer("".join(chr(32 + i) for i in range(64)), unk=True)
    work = args.dir or tempfile.mkdtemp(prefix="bench_checkpoint_")
    machine, rows, notes = machine_info(), [], []
    for name, _, config in available_named_configs(args.configs, tokenizer.vocab_size, notes):
        model = GPT(config, seed=0)
        optimizer = AdamW(model.params)
        path = os.path.join(work, f"{name}.safetensors")

        def save():
            save_checkpoint(path, model, tokenizer, 1, optimizer)

        def load(verify):
            loaded, _, _ = load_checkpoint(path, verify=verify)
            load_training_state(path, AdamW(loaded.params), verify=verify)

        save()
        row = {"config": name, "params": model.num_params(),
               "bytes": sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work)
                            if f.startswith(name)),
               "save_ms": time_fn(save, args.warmup, args.repeat).median,
               "load_ms": time_fn(lambda: load(True), args.warmup, args.repeat).median,
               "load_no_verify_ms": time_fn(lambda: load(False), args.warmup,
                                            args.repeat).median}
        row["checksum_ms"] = row["load_ms"] - row["load_no_verify_ms"]
        row["checksum_share"] = row["checksum_ms"] / row["load_ms"]
        print(row)
        rows.append(row)
        append_jsonl(os.path.join(args.out, "checkpoint.jsonl"), row, machine)
    write_markdown_table(os.path.join(args.out, "checkpoint.md"), rows,
                         list(rows[0]) if rows else [],
                         "Checkpoint save and load (model + optimizer pair), ms, median",
                         notes + ["load_ms verifies every tensor's CRC-32 (the default); "
                                  "load_no_verify_ms skips it"])


if __name__ == "__main__":
    main()
