"""Tests for examples/generate.py run as a user runs it, in a subprocess: the output is the
prompt and a continuation of the asked length, the same as the library's generate_text for
the same arguments; greedy text is the same with and without the KV cache; the same seed
gives the same text; --num-samples prints that many samples; and every bad input is one
line "error: ..." with exit status 2.

The checkpoint is a tiny float64 model (float64 so that greedy near-ties cannot differ
between the cached and uncached paths) trained for 30 steps on 20 KB of Tiny Shakespeare
through the library, once per module.
"""

import os
import subprocess
import sys

import pytest

from conftest import CUPY_MISSING, REPO, gpu, sample_text
from tinygrad_char.training.checkpoint import load_checkpoint
from tinygrad_char.training.data import prepare_text
from tinygrad_char.inference.sampling import generate_text
from tinygrad_char.training.config import TrainConfig
from tinygrad_char.training.train import train

GENERATE = str(REPO / "examples" / "generate.py")
SEPARATOR = "-" * 40
PROMPT = "ROMEO:"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    text = root / "shakespeare_20k.txt"
    shakespeare = sample_text()
    text.write_text(shakespeare[:20_000], encoding="utf-8")
    data = prepare_text(text, verbose=False)
    cfg = TrainConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=8,
                      max_steps=30, warmup_steps=5, learning_rate=3e-3, eval_interval=30,
                      eval_batches=2, sample_chars=0, dtype="float64", out_dir=str(root))
    return train(cfg, data, progress=False, out=lambda *args: None)["checkpoint"]


def generate(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, GENERATE, *map(str, args)], cwd=REPO, text=True,
                          capture_output=True, env=env, timeout=120)


def ok_stdout(proc):
    assert proc.returncode == 0, proc.stderr
    # stderr: only the line saying which kernels run (stdout carries the text alone)
    assert [line for line in proc.stderr.splitlines()
            if not line.startswith("kernels: ")] == [], proc.stderr
    assert proc.stdout.endswith("\n")
    return proc.stdout[:-1]


def samples_of(stdout):
    """The samples of a --num-samples run, each prompt + continuation."""
    return stdout.split(f"\n{SEPARATOR}\n")


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert proc.stdout == "", "nothing is printed before the arguments are checked"


def test_prompt_then_continuation_as_the_library_makes_it(ckpt):
    text = ok_stdout(generate("--checkpoint", ckpt, "--prompt", PROMPT, "--max-new-tokens",
                              40, "--temperature", 1.0, "--top-k", 20, "--seed", 5))
    assert text.startswith(PROMPT) and len(text) == len(PROMPT) + 40
    model, tokenizer, _ = load_checkpoint(ckpt)
    expected = generate_text(model, tokenizer, PROMPT, 40, temperature=1.0, top_k=20, seed=5)
    assert text == PROMPT + expected[0]


def test_greedy_is_the_same_with_and_without_the_cache(ckpt):
    # 6 + 40 characters pass block_size 16: the cached path rebuilds as the window slides
    args = ["--checkpoint", ckpt, "--prompt", PROMPT, "--max-new-tokens", 40,
            "--temperature", 0]
    cached = ok_stdout(generate(*args))
    uncached = ok_stdout(generate(*args, "--no-cache"))
    assert cached == uncached
    assert len(cached) == len(PROMPT) + 40
    # greedy ignores the seed
    assert ok_stdout(generate(*args, "--seed", 123)) == cached


def test_same_seed_same_text(ckpt):
    args = ["--checkpoint", ckpt, "--prompt", PROMPT, "--max-new-tokens", 60,
            "--temperature", 1.0]
    first = ok_stdout(generate(*args, "--seed", 3))
    assert ok_stdout(generate(*args, "--seed", 3)) == first
    assert ok_stdout(generate(*args, "--seed", 4)) != first


def test_num_samples_prints_each_sample(ckpt):
    text = ok_stdout(generate("--checkpoint", ckpt, "--prompt", PROMPT, "--max-new-tokens",
                              30, "--temperature", 1.0, "--num-samples", 3, "--seed", 9))
    samples = samples_of(text)
    assert len(samples) == 3, text
    assert all(s.startswith(PROMPT) and len(s) == len(PROMPT) + 30 for s in samples), samples
    model, tokenizer, _ = load_checkpoint(ckpt)
    expected = generate_text(model, tokenizer, PROMPT, 30, temperature=1.0, seed=9,
                             num_samples=3)
    assert samples == [PROMPT + s for s in expected]
    assert len(set(samples)) > 1, "three samples drawn with temperature 1 were all equal"


def test_prompt_file(ckpt, tmp_path):
    prompt = sample_text(100)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(prompt, encoding="utf-8")
    text = ok_stdout(generate("--checkpoint", ckpt, "--prompt-file", prompt_file,
                              "--max-new-tokens", 10, "--temperature", 0))
    assert text.startswith(prompt) and len(text) == len(prompt) + 10
    assert_one_line_error(generate("--checkpoint", ckpt, "--prompt-file", tmp_path / "none"),
                          "prompt file", "No such file")


def test_unknown_prompt_characters_are_named(ckpt):
    proc = generate("--checkpoint", ckpt, "--prompt", "caf\u00e9 \u20ac5", "--max-new-tokens", 5)
    assert_one_line_error(proc, "prompt contains characters not in the model's vocabulary",
                          "'\u00e9'", "'\u20ac'")


def test_missing_or_corrupt_checkpoint(ckpt, tmp_path):
    corrupt = tmp_path / "cut.safetensors"
    data = open(ckpt, "rb").read()
    corrupt.write_bytes(data[:len(data) // 2])
    assert_one_line_error(generate("--checkpoint", corrupt), "truncated or corrupt",
                          str(corrupt))
    missing = tmp_path / "missing.safetensors"
    assert_one_line_error(generate("--checkpoint", missing), "no such file", str(missing))


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "-1"], "--temperature: must be in [0, 100]"),
    (["--temperature", "nan"], "--temperature: must be a finite number in [0, 100]"),
    (["--temperature", "101"], "--temperature: must be in [0, 100]"),
    (["--top-k", "0"], "--top-k: must be >= 1"),
    (["--top-p", "1.5"], "--top-p: must be in (0, 1]"),
    (["--num-samples", "0"], "--num-samples: must be >= 1"),
    (["--max-new-tokens", "-3"], "--max-new-tokens: must be >= 0"),
    (["--seed", "-1"], "--seed: must be in [0, 2**63 - 1]"),
    (["--top-k", "many"], "invalid int value"),  # argparse's own errors are one line too
])
def test_bad_sampling_arguments(ckpt, args, fragment):
    assert_one_line_error(generate("--checkpoint", ckpt, *args), fragment)


@pytest.mark.skipif(CUPY_MISSING is None, reason="a GPU works here: --backend cupy is valid")
def test_cupy_without_gpu(ckpt):
    assert_one_line_error(generate("--checkpoint", ckpt, "--backend", "cupy"),
                          "backend 'cupy' unavailable", "--backend numpy")


@gpu
@pytest.mark.gpu
def test_cupy_greedy_matches_numpy(ckpt):
    """On a GPU the same float64 checkpoint gives the same greedy text as on the CPU."""
    args = ["--checkpoint", ckpt, "--prompt", PROMPT, "--max-new-tokens", 40,
            "--temperature", 0]
    assert ok_stdout(generate(*args, "--backend", "cupy")) == ok_stdout(generate(*args))
