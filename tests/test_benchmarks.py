"""Smoke tests of the benchmark scripts: each runs with tiny settings into a temporary
directory and writes well-formed results (JSON lines with machine info, a markdown table).

Benchmarks are scripts, never tests (STYLE.md, principle 13): nothing here compares
speeds. The scripts run in subprocesses so their thread limits stay out of this process.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks import harness  # noqa: E402

try:
    import torch  # noqa: F401

    HAS_TORCH = True
except ImportError:
    HAS_TORCH = False
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed: the PyTorch "
                                                       "comparison needs it (pip install torch)")


def run_script(name, *args, tmp_path):
    """Run benchmarks/<name> with args and --out tmp_path; return its stdout."""
    cmd = [sys.executable, str(REPO / "benchmarks" / name), "--out", str(tmp_path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def read_jsonl(path):
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    records = [json.loads(line) for line in lines]
    for r in records:
        assert {"date", "machine", "versions"} <= set(r), f"{path}: {sorted(r)}"
        assert r["machine"]["cpu"] and r["machine"]["blas"] is not None
        assert r["versions"]["numpy"] == np.__version__
    return records


# -- the harness ---------------------------------------------------------------------------

def test_time_fn_returns_median_min_max_in_ms():
    calls = []
    t = harness.time_fn(lambda: (calls.append(1), time.sleep(0.001)), warmup=2, repeat=5)
    assert len(calls) == 7
    assert 0 < t.min <= t.median <= t.max
    assert t.min >= 0.5  # milliseconds: a 1 ms sleep never returns early
    assert all(np.isfinite(t))


def test_time_fn_calls_sync_around_every_timed_call():
    syncs = []
    harness.time_fn(lambda: None, warmup=1, repeat=3, sync=lambda: syncs.append(1))
    assert len(syncs) == 1 + 2 * 3


def test_time_fn_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeat"):
        harness.time_fn(lambda: None, repeat=0)


def test_check_close_names_the_op():
    a = np.ones((2, 3), dtype=np.float32)
    assert harness.check_close("layernorm dx", a * (1 + 1e-6), a, rtol=1e-3) < 1e-3
    with pytest.raises(AssertionError, match="layernorm dx"):
        harness.check_close("layernorm dx", a * 1.01, a, rtol=1e-3)
    with pytest.raises(AssertionError, match="attention.*shape"):
        harness.check_close("attention", a, a.T, rtol=1e-3)


def test_timed_ops_times_every_op_and_counts_the_matmul_flops():
    """TimedOps counts a forward's matmul FLOPs as 2 x B x T x (in x out) over the linear
    layers it runs (the head included), times the ops that ran, and puts the table back."""
    from tinygrad_char import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=8), seed=0)
    timer = harness.TimedOps(model)
    timer.install()
    model.forward(np.zeros((3, 8), dtype=np.int64))
    timer.remove()
    per_token = sum(int(np.prod(w.shape)) for name, w in model.params.items()
                    if name.endswith(".weight") and (".attn." in name or ".mlp." in name))
    per_token += 11 * 16  # the head (tied to wte)
    assert timer.matmul_flops == 2 * 3 * 8 * per_token
    assert timer.seconds["linear_forward"] > 0 and timer.seconds["layernorm_forward"] > 0
    assert "linear_backward" not in timer.seconds
    assert model.ops is timer.original and timer.ops.AdamW is model.ops.AdamW


def test_machine_info_has_blas_and_versions():
    info = harness.machine_info()
    assert info["cores"] >= 1 and info["cpu"]
    assert set(info["env"]) >= {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}
    assert info["versions"]["numpy"] == np.__version__
    for lib in info["blas"]:
        assert {"internal_api", "num_threads"} <= set(lib)
    assert "CPU:" in harness.machine_summary(info)


def test_limit_threads_sets_and_restores_blas_threads():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    restore = harness.limit_threads(1)
    try:
        assert all(n == 1 for n in blas_threads())
    finally:
        restore()
    assert blas_threads() == before


def test_result_files(tmp_path):
    harness.append_jsonl(tmp_path / "r.jsonl", {"op": "gelu", "ms": np.float32(1.5)})
    harness.append_jsonl(tmp_path / "r.jsonl", {"op": "relu", "ms": 0.25})
    records = read_jsonl(tmp_path / "r.jsonl")
    assert [r["op"] for r in records] == ["gelu", "relu"] and records[0]["ms"] == 1.5
    text = harness.write_markdown_table(tmp_path / "r.md", records, ["op", ("ms", "median ms")],
                                        "Title", ["a note"])
    assert (tmp_path / "r.md").read_text() == text
    assert "## Title" in text and "| op | median ms |" in text and "| relu | 0.250 |" in text


def test_named_config_skips_a_missing_preset(monkeypatch, tmp_path):
    train_cfg, model_cfg = harness.named_config("tiny-cpu")
    assert (model_cfg.n_layer, model_cfg.n_head, model_cfg.n_embd, model_cfg.block_size,
            train_cfg.batch_size, model_cfg.vocab_size) == (4, 4, 128, 64, 12, 65)
    monkeypatch.setattr(harness, "CONFIGS_DIR", tmp_path)
    assert harness.named_config("cpu-preset") is None


# -- the scripts, with tiny settings -------------------------------------------------------

@needs_torch
def test_bench_layers(tmp_path):
    out = run_script("bench_layers.py", "--sizes", "tiny", "--repeat", "1", "--warmup", "0",
                     "--threads", "1", tmp_path=tmp_path)
    records = read_jsonl(tmp_path / "layers.jsonl")
    assert {(r["op"], r["pass"]) for r in records} == {
        (op, p) for op in ["linear", "embedding", "position_embedding", "layernorm",
                           "attention", "gelu", "relu", "dropout", "cross_entropy"]
        for p in ("forward", "backward")}
    for r in records:
        assert {"numpy", "torch"} <= set(r["results"]) and "numpy" in r["speed_vs_torch"]
        assert r["results"]["numpy"]["median_ms"] > 0
    md = (tmp_path / "layers.md").read_text()
    assert "speed vs torch" in md and "| tiny | attention | backward |" in md
    assert "speed vs torch" in out


def test_lab_cpu_threads_runs_each_arrangement_in_its_own_process(tmp_path):
    out = run_script("lab_cpu_threads.py", "--only", "blas2-serial", "--repeat", "11",
                     tmp_path=tmp_path)
    records = read_jsonl(tmp_path / "cpu_threads.jsonl")
    assert [r["arrangement"] for r in records] == ["blas2-serial"]
    r = records[0]
    # figures only, no timing comparison (a smoke test: the order of two timings is noise)
    assert all(r[k] > 0 for k in ("relu_393216_us", "relu_1572864_us", "step_us",
                                  "matmuls_only_us")), r
    assert "| blas2-serial |" in (tmp_path / "cpu_threads.md").read_text()
    assert "blas2-serial" in out
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lab_cpu_threads.py"),
                          "--only", "blas3", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "unknown arrangement(s) ['blas3']" in bad.stderr


def test_bench_layers_rejects_an_unknown_size(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_layers.py"), "--sizes", "huge",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode != 0 and "unknown size 'huge'" in proc.stderr


def test_bench_train_step_times_the_cpu_kernels_beside_the_xp_ops(tmp_path):
    pytest.importorskip("numba", reason="numba not installed: the CPU kernels need it")
    run_script("bench_train_step.py", "--configs", "tiny-cpu", "--impls", "numpy,numpy-cpu",
               "--repeat", "1", "--warmup", "0", "--threads", "1", tmp_path=tmp_path)
    records = read_jsonl(tmp_path / "train_step.jsonl")
    assert [r["impl"] for r in records] == ["numpy", "numpy-cpu"]
    assert all(r["forward_ms"] > 0 and r["backward_ms"] > 0 for r in records)
    assert "numba CPU kernels" in (tmp_path / "train_step.md").read_text()


@needs_torch
def test_bench_train_step(tmp_path):
    run_script("bench_train_step.py", "--configs", "tiny-cpu", "--impls", "numpy,torch",
               "--repeat", "1", "--warmup", "0", "--threads", "1", tmp_path=tmp_path)
    records = read_jsonl(tmp_path / "train_step.jsonl")
    assert [r["impl"] for r in records] == ["numpy", "torch"]
    ours = records[0]
    for key in ("forward_ms", "backward_ms", "optimizer_ms", "step_ms", "tokens_per_s",
                "rss_mib", "peak_rss_mib", "speed_vs_torch"):
        assert ours[key] > 0, key
    assert ours["model"]["n_layer"] == 4 and ours["batch_size"] == 12
    assert 0 < ours["mfu_percent"] < 100 and ours["matmul_ceiling_tflops"] > 0
    assert ours["flops_per_token"] > 6 * 800_000  # 6 N with N ~ 0.8 M parameters
    assert "tokens/s" in (tmp_path / "train_step.md").read_text()


def test_flops_per_token_is_nanogpts_count():
    from benchmarks.bench_train_step import flops_per_token
    from tinygrad_char.model import GPTConfig

    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    body = 4 * (2 * 128 + 128 * 384 + 384 + 128 * 128 + 128 + 2 * 128
                + 128 * 512 + 512 + 512 * 128 + 128)
    n = 65 * 128 + body + 2 * 128  # token table (tied head), blocks, ln_f; no wpe
    assert flops_per_token(cfg) == 6 * n + 12 * 4 * 4 * 32 * 64


def test_bench_train_step_runs_gpu_precisions_on_gpu_impls_only(tmp_path):
    out = run_script("bench_train_step.py", "--configs", "tiny-cpu", "--impls", "numpy",
                     "--precisions", "float32,float16", "--repeat", "1", "--warmup", "0",
                     "--threads", "1", tmp_path=tmp_path)
    records = read_jsonl(tmp_path / "train_step.jsonl")
    assert [(r["precision"], r["impl"]) for r in records] == [("float32", "numpy")]
    assert "float16: a GPU precision, not run on numpy" in out


def test_bench_attention_memory_grows_quadratically_for_the_xp_op(tmp_path):
    run_script("bench_attention_memory.py", "--lengths", "32,256", "--n-embd", "16",
               "--n-head", "2", tmp_path=tmp_path)
    small, large = read_jsonl(tmp_path / "attention_memory.jsonl")
    assert (small["T"], large["T"]) == (32, 256)
    # the cache holds (B, NH, T, T) probabilities: 8x the length, ~64x the memory (linear
    # would be 8x)
    assert large["cache_mib"] > 30 * small["cache_mib"]
    assert large["cache_mib"] >= large["scores_matrix_mib"]
    assert "cache MiB" in (tmp_path / "attention_memory.md").read_text()


def test_bench_train_step_memory_mode(tmp_path):
    run_script("bench_train_step.py", "--configs", "tiny-cpu", "--impls", "numpy",
               "--steps-memory", "12", "--threads", "1", tmp_path=tmp_path)
    (record,) = read_jsonl(tmp_path / "train_step.jsonl")
    assert [r["step"] for r in record["rows"]] == [6, 10, 12]
    assert all(r["rss_mib"] > 0 for r in record["rows"])
    assert "RSS MiB" in (tmp_path / "train_step_memory.md").read_text()


def test_bench_generate(tmp_path):
    run_script("bench_generate.py", "--batch-sizes", "1", "--new-tokens", "2", "--repeat",
               "1", "--warmup", "0", "--threads", "1", tmp_path=tmp_path)
    records = read_jsonl(tmp_path / "generate.jsonl")
    assert {(r["regime"], r["cache"]) for r in records} == {
        (regime, cache) for regime in ("inside window", "past window") for cache in ("on", "off")}
    assert all(r["chars_per_s"] > 0 for r in records)
    assert "chars/s" in (tmp_path / "generate.md").read_text()


def test_bench_library_step(tmp_path):
    """The README's library example against the loop: both ways run (the script checks
    their first losses agree), the ratio and the update-alone figures are written."""
    run_script("bench_library_step.py", "--threads", "1", "--rounds", "2", "--steps", "1",
               "--warmup", "1", tmp_path=tmp_path)
    [record] = read_jsonl(tmp_path / "library_step.jsonl")
    assert set(record["ms_per_step"]) == {"library", "training loop"}
    assert len(record["ms_per_step_all"]["library"]) == 2
    assert record["library_over_loop"] > 0 and set(record["update_ms"]) == {
        "library", "training loop"}
    assert all(o.endswith("CpuAdamW") for o in record["optimizers"].values()), \
        "with numba both ways must step the fused optimizer"
    assert "library / loop" in (tmp_path / "library_step.md").read_text()


def test_bench_embedding_backward(tmp_path):
    run_script("bench_embedding_backward.py", "--vocabs", "65", "--shapes", "64x16",
               "--repeat", "1", "--warmup", "0", "--threads", "1", tmp_path=tmp_path)
    records = read_jsonl(tmp_path / "embedding_backward.jsonl")
    assert {r["method"] for r in records} == {"add.at", "one-hot", "bincount",
                                              "sort+reduceat", "library"}
    assert min(r["x_fastest"] for r in records) == 1.0
    assert "x fastest" in (tmp_path / "embedding_backward.md").read_text()


def test_count_launches_summarizes_per_step_and_says_when_it_cannot_run(tmp_path):
    from benchmarks.count_launches import Event, summarize

    events = ([Event("gemm", "kernel")] * 4 + [Event("softmax", "kernel")] * 2 +
              [Event("Memcpy HtoD", "memcpy")] * 2 + [Event("Memset", "memset")])
    s = summarize(events, steps=2)
    assert (s["kernels_per_step"], s["copies_per_step"], s["memsets_per_step"]) == (3, 1, 0.5)
    assert s["top_kernels"] == [["gemm", 2.0], ["softmax", 1.0]]
    assert s["copies"] == [["Memcpy HtoD", 1.0]]
    if harness.cupy_or_none()[0] is None:
        out = run_script("count_launches.py", tmp_path=tmp_path)
        assert "count_launches needs a CUDA GPU with CuPy and torch" in out
        assert not (tmp_path / "launches.jsonl").exists()
