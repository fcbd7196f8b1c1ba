"""Kill a real training run inside its checkpoint saves, over and over, and check each time
that what is left on disk loads, resumes, and continues exactly.

    python benchmarks/kill_checkpoints.py --kills 120            # random instants
    python benchmarks/kill_checkpoints.py --points               # every named point once

The child process trains a small GPT that saves a checkpoint at every step (so most of its
time is spent inside saves), and the parent SIGKILLs it either at a random instant after
its first save, or paused at a named point inside a save (`--points`: the child stops itself
just before or after a given os.fsync / os.replace / os.remove call of the save and waits to
be killed). After every kill the parent checks:

  1. the model file and the companion it names load (load_checkpoint, load_training_state);
  2. resuming from them to the end of the schedule gives parameters bit-identical to a run
     that was never killed (NumPy is deterministic: same seeds, same steps).

It records where each kill landed, from what it left behind (a *.tmp file: inside a file
write; both companion slots: between the companion's rename and the clean-up; neither: between
saves), and writes the counts with the machine and versions to
benchmarks/results/kill_checkpoints.json. tests/test_checkpoint_kill.py runs the fast version.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

MAX_STEPS = 16
# (function, call number within one save, before or after the call). A save with an
# optimizer makes, in order: fsync(companion tmp), replace(companion), [dir fsync],
# fsync(model tmp), replace(model), [dir fsync], remove(stale companion).
POINTS = [("fsync", 1, "before"), ("replace", 1, "before"), ("replace", 1, "after"),
          ("fsync", 3, "before"), ("replace", 2, "before"), ("replace", 2, "after"),
          ("remove", 1, "before"), ("remove", 1, "after")]


def make_text(path):
    """A deterministic text of ~60k characters (no data set needed)."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "away",
             "over", "hills", "to", "sea", "quickly", "slowly", "under", "bright", "stars"]
    lines = [" ".join(rng.choice(words, size=12)) + "." for _ in range(1000)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def config(out_dir):
    from tinygrad_char.training.config import TrainConfig

    # wide and shallow, tiny batches: most of a step's time is its save
    return TrainConfig(n_layer=2, n_head=2, n_embd=256, block_size=16, batch_size=2,
                       learning_rate=3e-3, min_lr=3e-4, warmup_steps=2, max_steps=MAX_STEPS,
                       log_interval=1, eval_interval=1, eval_batches=1, eval_batch_size=2,
                       sample_chars=0, seed=11, dropout=0.1, out_dir=out_dir).validate()


def run_child(out_dir, text, point):
    """The training process. `point` "fn:n:when" pauses at that call of every save after
    the first; "" runs freely. Prints SAVED <step> after each completed save."""
    import tinygrad_char.training.checkpoint as checkpoint
    from tinygrad_char.training.data import prepare_text
    from tinygrad_char.training.train import train

    real = {"fsync": os.fsync, "replace": os.replace, "remove": os.remove}
    counts = {"fsync": 0, "replace": 0, "remove": 0}
    saves = [0]
    fn, n, when = (point.split(":") + ["", "", ""])[:3] if point else ("", 0, "")
    n = int(n or 0)

    def pause():
        print("PAUSED", flush=True)
        while True:
            time.sleep(60)

    def wrap(name):
        def call(*args):
            counts[name] += 1
            at_point = saves[0] >= 1 and name == fn and counts[name] == n
            if at_point and when == "before":
                pause()
            result = real[name](*args)
            if at_point and when == "after":
                pause()
            return result
        return call

    for name in real:
        setattr(os, name, wrap(name))
    real_save = checkpoint.save_checkpoint

    def save(*args, **kwargs):
        for name in counts:
            counts[name] = 0
        real_save(*args, **kwargs)
        saves[0] += 1
        print(f"SAVED {args[3]}", flush=True)

    import tinygrad_char.training.train as train_module
    train_module.save_checkpoint = save
    train(config(out_dir), prepare_text(text, verbose=False), progress=False,
          out=lambda *a: None)


def reference(work, text):
    """Final parameters of a run that is never killed."""
    from tinygrad_char.training.data import prepare_text
    from tinygrad_char.training.train import train

    out_dir = os.path.join(work, "reference")
    result = train(config(out_dir), prepare_text(text, verbose=False), progress=False,
                   out=lambda *a: None)
    from tinygrad_char.training.checkpoint import load_checkpoint

    return {k: np.array(v) for k, v in load_checkpoint(result["checkpoint"])[0].params.items()}


def saving_window(work, text):
    """Seconds from a free child's first completed save to its last: random kills are
    drawn inside it, so that none lands after the run has ended."""
    out_dir = os.path.join(work, "calibrate")
    os.makedirs(out_dir)
    child = subprocess.Popen([sys.executable, __file__, "--child", out_dir, text, ""],
                             stdout=subprocess.PIPE, text=True)
    times = [time.perf_counter() for line in child.stdout if line.startswith("SAVED")]
    child.wait()
    child.stdout.close()
    return times[-1] - times[0]


def where_it_landed(out_dir):
    names = os.listdir(out_dir)
    if any(n.endswith(".tmp") for n in names):
        return "inside a file write (temporary file present)"
    if {"ckpt.train.a.safetensors", "ckpt.train.b.safetensors"} <= set(names):
        return "between the companion's rename and the clean-up"
    return "between saves"


def check(out_dir, text, expected):
    """Load what the kill left, resume to the end, compare with the reference. Returns
    (step loaded, problem or None)."""
    from tinygrad_char import AdamW
    from tinygrad_char.training.checkpoint import (CheckpointError, load_checkpoint,
                                                   load_training_state)
    from tinygrad_char.training.data import prepare_text
    from tinygrad_char.training.train import train

    path = os.path.join(out_dir, "ckpt.safetensors")
    try:
        model, _, meta = load_checkpoint(path)
        load_training_state(path, AdamW(model.params))
    except CheckpointError as e:
        return None, f"unresumable: {e}"
    result = train(config(out_dir), prepare_text(text, verbose=False), resume=path,
                   progress=False, out=lambda *a: None)
    final = load_checkpoint(result["checkpoint"])[0].params
    for name, value in expected.items():
        if not np.array_equal(np.array(final[name]), value):
            return meta["step"], f"resumed run differs from the reference in {name}"
    return meta["step"], None


def kill_once(work, text, i, point="", delay=0.0):
    """Start a child, kill it (at `point`, or `delay` s after its first save); return the
    out dir and where the kill landed."""
    out_dir = os.path.join(work, f"run{i}")
    os.makedirs(out_dir)
    child = subprocess.Popen([sys.executable, __file__, "--child", out_dir, text, point],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = child.stdout.readline()
        if not first.startswith("SAVED"):
            raise RuntimeError(f"child did not save: {first!r} {child.stderr.read()[-500:]}")
        if point:  # a save that makes no such call finishes instead (SAVED): kill then
            child.stdout.readline()
        else:
            time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()
    return out_dir, where_it_landed(out_dir)


def run(kills=0, points=False, work=None, seed=0):
    """Returns {"kills", "unresumable", "mismatched", "landed": {where: count}, "failures"}."""
    import shutil
    import tempfile

    if work is None:  # a folder of our own, removed at the end
        work = tempfile.mkdtemp(prefix="kill_checkpoints_")
        try:
            return run(kills, points, work, seed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    text = os.path.join(work, "text.txt")
    make_text(text)
    expected = reference(work, text)
    rng = random.Random(seed)
    plan = [(p, 0.0) for p in (f"{f}:{n}:{w}" for f, n, w in POINTS)] if points else []
    window = saving_window(work, text) if kills else 0.0
    plan += [("", rng.uniform(0.0, window)) for _ in range(kills)]
    summary = {"kills": 0, "unresumable": 0, "mismatched": 0, "landed": {}, "failures": []}
    for i, (point, delay) in enumerate(plan):
        out_dir, landed = kill_once(work, text, i, point, delay)
        step, problem = check(out_dir, text, expected)
        summary["kills"] += 1
        summary["landed"][landed] = summary["landed"].get(landed, 0) + 1
        if problem:
            summary["unresumable" if step is None else "mismatched"] += 1
            summary["failures"].append({"point": point, "delay": delay, "problem": problem})
    return summary


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_child(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=120, help="kills at random instants")
    p.add_argument("--points", action="store_true", help="also kill once at every named point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "kill_checkpoints.json"))
    args = p.parse_args()
    t0 = time.time()
    summary = run(args.kills, args.points, seed=args.seed)
    from harness import machine_info

    summary.update(seconds=round(time.time() - t0, 1), machine=machine_info(),
                   config={"max_steps": MAX_STEPS, "save_every_step": True})
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}, indent=1))
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    sys.exit(1 if summary["unresumable"] or summary["mismatched"] else 0)


if __name__ == "__main__":
    main()
