"""Compiling the CPU kernels ahead (tinygrad_char/fused/cpu/warm.py): what it compiles
covers a training step, and the background helper (runtime.start_compile_ahead) starts only
when it can help, is reaped when it ends, and is never started by building a model.

Each check runs in a subprocess with its own empty NUMBA_CACHE_DIR (numba reads it when it
is imported), so the project's own cache is neither used nor touched; the one that builds
a model (and says the cache is cold) uses the project's.
"""

import os
import subprocess
import sys

import pytest

from tinygrad_char.fused.cpu import numba_available

from conftest import REPO

pytestmark = pytest.mark.skipif(not numba_available(),
                                reason="numba does not import here (the CPU kernels need it)")

STEP_COMPILES_NOTHING = """
import numpy as np
from tinygrad_char import runtime
from tinygrad_char.fused.cpu import (adamw, attention, cross_entropy, dropout, embedding, gelu,
                                     layernorm, linear)
from tinygrad_char.model import GPT, GPTConfig
from tinygrad_char.training.train import clip_and_step

runtime.set_threads(2)
# one small model (the serial builds) and one above _jit.SERIAL_BELOW (the parallel ones)
for n_embd, block_size, batch in ((16, 8, 2), (128, 64, 4)):
    model = GPT(GPTConfig(vocab_size=65, block_size=block_size, n_layer=2, n_head=2,
                          n_embd=n_embd, dropout=0.1))
    opt = model.ops.AdamW(model.params, 1e-2)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 65, (batch, block_size))
    model.forward(ids, ids)
    clip_and_step(model.backward(), opt, None, 1.0)
compiled = []
for module in (adamw, attention, cross_entropy, dropout, embedding, gelu, layernorm, linear):
    for name, obj in vars(module).items():
        for build in ("parallel", "serial"):  # _jit.Kernel's two builds
            stats = getattr(getattr(obj, build, None), "stats", None)
            if stats is not None and stats.cache_misses:
                compiled.append(f"{module.__name__}.{name}.{build}")
print("compiled:", ",".join(compiled) or "nothing")
"""

HELPER_RULES = """
import os
from tinygrad_char import runtime
from tinygrad_char.fused.cpu import warm

assert not warm.cache_is_warm(), "the cache of this fresh NUMBA_CACHE_DIR is warm"
assert runtime.start_compile_ahead(1) is None, "started without a spare core"
os.environ["TINYGRAD_CHAR_COMPILE_AHEAD"] = "0"
assert runtime.start_compile_ahead(2) is None, "started though turned off"
del os.environ["TINYGRAD_CHAR_COMPILE_AHEAD"]
helper = runtime.start_compile_ahead(2)
assert helper is not None and helper.poll() is None, "no helper on a cold cache"
assert runtime.start_compile_ahead(2) is None, "a second helper"
print("helper", helper.pid)
"""

# the helper's command replaced by one that ends at once: it must be reaped, not a zombie
HELPER_REAPED = """
import os, subprocess, sys, time
from tinygrad_char import runtime
from tinygrad_char.fused.cpu import warm

warm.cache_is_warm = lambda: False
popen = subprocess.Popen
runtime.subprocess.Popen = lambda cmd, **kw: popen([sys.executable, "-c", "pass"], **kw)
helper = runtime.start_compile_ahead(2)
for _ in range(200):
    time.sleep(0.05)
    if not os.path.exists(f"/proc/{helper.pid}"):
        break
assert not os.path.exists(f"/proc/{helper.pid}"), \
    "the ended helper was not reaped: " + open(f"/proc/{helper.pid}/stat").read()
print("reaped")
"""

# building a model and stepping it, with a cold cache and two threads, starts nothing
MODEL_STARTS_NOTHING = """
import os, subprocess
import numpy as np
from tinygrad_char.fused.cpu import warm
from tinygrad_char.model import GPT, GPTConfig

warm.cache_is_warm = lambda: False
started = []
subprocess.Popen = lambda *a, **kw: started.append(a) or (_ for _ in ()).throw(
    AssertionError("a process was started"))
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
idx = np.arange(16).reshape(2, 8) % 11
model.forward(idx, idx)
model.backward()
children = [open(f"/proc/self/task/{t}/children").read().split()
            for t in os.listdir("/proc/self/task")]
assert not started and not any(children), (started, children)
print("nothing started")
"""


def run(code, cache_dir, **env):
    full_env = {**os.environ, **env}
    if cache_dir is not None:
        full_env["NUMBA_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env=full_env, timeout=300)


def test_warm_leaves_a_training_step_nothing_to_compile(tmp_path):
    warmed = subprocess.run([sys.executable, "-m", "tinygrad_char.fused.cpu.warm"],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path),
                                 "TINYGRAD_CHAR_COMPILE_AHEAD": "0"})
    assert warmed.returncode == 0, warmed.stderr
    assert "compiled into numba's cache" in warmed.stdout
    step = run(STEP_COMPILES_NOTHING, tmp_path, TINYGRAD_CHAR_COMPILE_AHEAD="0")
    assert step.returncode == 0, step.stderr
    assert "compiled: nothing" in step.stdout, step.stdout
    # and the same step on an empty cache does compile (the check above can fail)
    cold = run(STEP_COMPILES_NOTHING, tmp_path / "empty", TINYGRAD_CHAR_COMPILE_AHEAD="0")
    assert cold.returncode == 0, cold.stderr
    assert "compiled: nothing" not in cold.stdout and "attention._forward_heads.serial" in \
        cold.stdout, cold.stdout


def test_background_helper_is_reaped_when_it_ends(tmp_path):
    done = run(HELPER_REAPED, tmp_path)
    assert done.returncode == 0 and "reaped" in done.stdout, done.stderr


def test_building_and_stepping_a_model_starts_no_process(tmp_path):
    done = run(MODEL_STARTS_NOTHING, None)  # the project's own cache: nothing to compile
    assert done.returncode == 0 and "nothing started" in done.stdout, done.stderr


def test_background_helper_starts_only_on_a_cold_cache_with_a_spare_core(tmp_path):
    done = run(HELPER_RULES, tmp_path)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split("helper")[1])
    # the helper ended with the process that started it (atexit)
    assert not os.path.exists(f"/proc/{pid}") or \
        open(f"/proc/{pid}/stat").read().split()[2] == "Z", f"helper {pid} outlived its parent"
