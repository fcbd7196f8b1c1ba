"""The GPU run plan: every check that needs an NVIDIA GPU, cut into stages that each fit one
command on a remote GPU machine whose limits shape it: a command runs at most 10 minutes, a
session has 15 minutes of GPU time in all (the machine's start-up included), the checkout
travels together with the ignored paths named in a `carry` list, and only what a command
writes under $OUT comes back.

    python benchmarks/gpu_plan.py --prepare-data DIR   # here, once: WikiText-2 into device_data/
    python benchmarks/gpu_plan.py --dry-run            # here: stages, steps, estimates, commands
    python3 benchmarks/gpu_plan.py smoke               # there, one command per stage
    python3 benchmarks/gpu_plan.py train
    python3 benchmarks/gpu_plan.py train_step
    python3 benchmarks/gpu_plan.py layers

Stages (a budget is the most a stage may take; the runner stops a step at its stage's
budget and records why):

    smoke       3 min  the device, CuPy and driver versions; every kernels/*.cu compiled by
                       NVRTC on the device; pytest -m gpu -x over the kernel and backend tests
                       (a skipped GPU test fails the stage: on that machine they must run)
    train       5 min  examples/train_wikitext.py --backend cupy, GPU preset, on WikiText-2:
                       a short run that saves a checkpoint, its resume to a later step, and a
                       sample from the checkpoint (examples/generate.py --backend cupy)
    train_step  5 min  bench_train_step.py, GPU preset with dropout 0 (so the fused attention
                       runs): cupy, cupy-fused and torch-cuda in float32, tf32 and float16,
                       torch.compile once (float32)
    layers      5 min  bench_layers.py: cupy, cupy-fused and torch-cuda at sizes tiny, large
                       and gpu

Each stage writes under $OUT/<stage>/ when OUT is set, else benchmarks/results/gpu/<stage>/:
its log (log.txt), its result files and stage.json (the commands, exit codes, seconds, the
estimate), at most 8 files, so all of them come back. Checkpoints go to a scratch folder
(--work; they are too big to come back). The data travels with the checkout: WikiText-2's
raw files in device_data/wikitext-2-raw/ (git-ignored, so named in the call's carry list).

How the estimates are made (--dry-run prints each item): training and benchmark steps from
their FLOPs (nanoGPT's 6 N + 12 L H Q T per token, bench_train_step.flops_per_token) at an
assumed rate, ASSUMED_TFLOPS; fixed costs (process start, NVRTC, torch.compile, one GPU
test) from the constants below; the sum times SAFETY. Nothing has been measured on a GPU
yet, so every constant leans pessimistic, and stage.json keeps estimate and measurement
side by side for the next plan.

Not here (no room in 15 minutes beside the stages): the kernel lab
(kernel_lab/bench_kernels.py), count_launches.py, bench_attention_memory.py,
bench_generate.py --backend cupy, the GPU preset trained to its end and the 1000-step runs
per precision; run them on a machine of your own (benchmarks/README.md).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script or a module

RESULTS = REPO / "benchmarks" / "results" / "gpu"  # where results go when OUT is unset
DATA_DIR = REPO / "device_data" / "wikitext-2-raw"  # git-ignored (.gitignore: /device_data/)
CARRY = "device_data"  # the carry entry that brings DATA_DIR along with the checkout
# the train stage trains on the validation split's first 90% and validates on its last
# 10% (train_wikitext.py --train-split validation); the test split is evaluated when present.
# wiki.train.raw (10 MB) is not used, so it is not copied.
DATA_FILES = ("wiki.valid.raw", "wiki.test.raw")
REQUIRED_DATA = "wiki.valid.raw"
DEVICE_PYTHON = "python3"  # on the GPU machine, the interpreter that holds torch and CuPy

# -- the device's limits -------------------------------------------------------------------
DEVICE_BUDGET_S = 900  # device time for a whole session, every start and idle second counted
MACHINE_START_S = 120  # a machine's start, counted against that budget (1-2 minutes)
COMMAND_LIMIT_S = 600  # one command at most
MAX_FILES = 8  # files that come back from $OUT per command
TIMEOUT_MARGIN_S = 30  # the run call's timeout over the stage's budget: the runner, stopping
# a step at the budget, still writes stage.json and the logs

# -- what an estimate assumes (pessimistic: no figure measured on a GPU yet) --------------------
ASSUMED_TFLOPS = 10.0  # TFLOP/s our CuPy training step sustains on an H100: about 15% of its
# ~67 TFLOP/s float32 peak, and assumed no faster in tf32 or float16; torch's steps counted
# at the same rate, although they are likely faster
SAFETY = 1.5  # every stage's sum is multiplied by this
PROCESS_START_S = 10.0  # a Python process: imports (numpy, CuPy, numba), the CUDA context
TORCH_IMPORT_S = 10.0  # import torch and its CUDA context, on top of PROCESS_START_S
NVRTC_S = 5.0  # one kernels/*.cu compiled by NVRTC, cold (CuPy caches it on disk after)
GPU_TEST_S = 1.0  # one GPU test (milliseconds each once its kernels are compiled)
TORCH_COMPILE_S = 90.0  # torch.compile of TorchGPT, forward and backward, cold caches
MODEL_SETUP_S = 1.0  # building one model (its init) and its optimizer
CASE_SETUP_S = 1.0  # bench_layers: one (size, op): inputs, device copies, the torch check
MIN_CALL_S = 1e-3  # bench_layers: the least one forward or backward call is counted
DATA_LOAD_S = 3.0  # reading and encoding WikiText-2's valid and test splits
CHECKPOINT_S = 2.0  # one checkpoint pair saved (parameters and AdamW moments)
SAMPLE_TOKEN_S = 0.01  # one generated character with the KV cache (launch-bound)
N_KERNEL_FILES = 6  # kernels/*.cu (tests/test_gpu_plan.py checks the count)

# -- the stages' sizes ---------------------------------------------------------------------
TRAIN_STEPS = 200  # the first run: evaluates and saves its checkpoint at its last step
RESUME_STEPS = 100  # the resumed run: from that checkpoint to TRAIN_STEPS + RESUME_STEPS
TRAIN_EVAL_BATCHES = 8  # the runs' own evaluations (the final report reads whole splits)
SAMPLE_CHARS = 300
STEP_WARMUP, STEP_REPEAT = 3, 10  # bench_train_step, per implementation and precision
STEP_IMPLS = ("cupy", "cupy-fused", "torch-cuda")
COMPILE_PRECISION = "float32"  # the one torch.compile build (each precision compiles anew)
PRECISIONS = ("float32", "tf32", "float16")
LAYER_SIZES = ("tiny", "large", "gpu")
LAYER_IMPLS = ("torch-cuda", "cupy", "cupy-fused")  # torch-cuda first: ours is checked on it
LAYER_WARMUP, LAYER_REPEAT = 3, 11
GPU_TEST_FILES = ("tests/test_kernels.py", "tests/test_backend.py")
WIKITEXT_VOCAB = 283  # characters of WikiText-2 (bench_layers' "large"), when no data is here


class PlanError(Exception):
    """Bad input to the plan: one line naming the problem and the fix."""


@dataclass
class Step:
    """One command of a stage, run from the repository root."""
    name: str
    argv: list
    stdout_file: str = None  # the step's stdout goes to this file of the stage (else the log)
    env: dict = field(default_factory=dict)  # variables added for this step
    check: object = None  # check(folder) -> None, or why the step failed although it exited 0


@dataclass
class Stage:
    name: str
    budget_s: int
    what: str
    steps: list
    counts: str  # the step counts, in words
    items: list  # [(what, seconds)]: the estimate before SAFETY
    outputs: tuple  # the files the stage leaves in its folder
    carry: tuple = ()
    precheck: object = None  # precheck() -> None, or why the stage cannot start
    finish: object = None  # finish(folder): copy results from the scratch folder

    @property
    def estimate_s(self):
        return SAFETY * sum(seconds for _, seconds in self.items)

    def device_call(self):
        """The remote `run` call of this stage: (command, carry list, timeout_s)."""
        command = f"PYTHONUNBUFFERED=1 {DEVICE_PYTHON} benchmarks/gpu_plan.py {self.name}"
        return command, list(self.carry), self.budget_s + TIMEOUT_MARGIN_S


# -- the work the estimates count ----------------------------------------------------------

def gpu_preset(vocab_size, dropout=None):
    """(TrainConfig, GPTConfig) of examples/configs/gpu.json for a vocabulary."""
    from dataclasses import replace

    from benchmarks.harness import named_config

    train_cfg, model_cfg = named_config("gpu-preset", vocab_size)
    if dropout is not None:
        model_cfg = replace(model_cfg, dropout=dropout)
    return train_cfg, model_cfg


def step_flops(model_cfg, batch_size):
    """Training FLOPs of one step (forward + backward) at batch_size x block_size tokens."""
    from benchmarks.bench_train_step import flops_per_token

    return flops_per_token(model_cfg) * batch_size * model_cfg.block_size


def seconds_for(flops):
    return flops / (ASSUMED_TFLOPS * 1e12)


def data_summary(data_dir):
    """{file: bytes} of the WikiText-2 files in data_dir, and the vocabulary size of the
    training text (the validation split's first 90%), or None without the data."""
    sizes = {f: (data_dir / f).stat().st_size for f in DATA_FILES if (data_dir / f).is_file()}
    vocab = None
    if REQUIRED_DATA in sizes:
        text = (data_dir / REQUIRED_DATA).read_text(encoding="utf-8")
        vocab = len(set(text[: int(0.9 * len(text))]))
    return sizes, vocab


def eval_tokens(chars, block_size, batch_size):
    """Tokens one whole-split evaluation reads: full batches of windows (an upper bound)."""
    windows = -(-max(chars - 1, 0) // block_size)
    return -(-windows // batch_size) * batch_size * block_size


def count_gpu_tests(python=sys.executable):
    """How many tests `pytest -m gpu` selects in GPU_TEST_FILES (collected here; on the CPU
    they are collected, then skipped)."""
    done = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                           "-p", "no:cacheprovider", *GPU_TEST_FILES], cwd=REPO,
                          capture_output=True, text=True, env=step_env({}), timeout=300)
    for line in done.stdout.splitlines():
        if " tests collected" in line or " test collected" in line:
            return int(line.split("/")[0].split()[0])
    raise PlanError(f"could not count the GPU tests (pytest --collect-only exited "
                    f"{done.returncode}): {(done.stdout + done.stderr).strip()[-300:]}")


# -- the stages ----------------------------------------------------------------------------

def _from_repo(path):
    """path relative to the repository root when inside it (the steps run there, and the
    checkout lives elsewhere on the device), else as given."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def smoke_stage(py, n_gpu_tests):
    gpu_tests = [py, "-m", "pytest", "-m", "gpu", "-x", "-q", "-rs", "-p", "no:cacheprovider",
                 "--junitxml", "{folder}/junit.xml", *GPU_TEST_FILES]
    return Stage(
        name="smoke", budget_s=180,
        what="device, CuPy and driver versions; NVRTC compile of every kernels/*.cu; "
             f"pytest -m gpu -x over {', '.join(GPU_TEST_FILES)}",
        steps=[Step("env", [py, "benchmarks/gpu_plan.py", "--step", "env", "{folder}"]),
               Step("compile", [py, "benchmarks/gpu_plan.py", "--step", "compile", "{folder}"],
                    env={"CUPY_CACHE_IN_MEMORY": "1"}),  # compiled here, not read from disk
               Step("gpu_tests", gpu_tests, check=check_gpu_tests)],
        counts=f"{N_KERNEL_FILES} kernel files, {n_gpu_tests} GPU tests",
        items=[("env: a process", PROCESS_START_S),
               ("compile: a process", PROCESS_START_S),
               (f"compile: {N_KERNEL_FILES} files x {NVRTC_S:g} s NVRTC",
                N_KERNEL_FILES * NVRTC_S),
               ("pytest: a process, collection", PROCESS_START_S),
               (f"pytest: {n_gpu_tests} GPU tests x {GPU_TEST_S:g} s",
                n_gpu_tests * GPU_TEST_S)],
        outputs=("log.txt", "env.json", "compile.json", "junit.xml", "stage.json"))


def train_stage(py, data_dir, work, rehearse=False):
    """The first way the project is used, short: train (saving a checkpoint at its last
    step), resume from it to a later step, sample from the checkpoint. rehearse: the same
    machinery on the CPU (NumPy, a tiny model, a few steps), for the tests."""
    run_dir = work / "train_run"
    ckpt = run_dir / "ckpt.safetensors"
    steps, more = (4, 2) if rehearse else (TRAIN_STEPS, RESUME_STEPS)
    backend = "numpy" if rehearse else "cupy"
    flags = {"--preset": "gpu", "--backend": backend, "--data-dir": _from_repo(data_dir),
             "--train-split": "validation", "--data-fallback": "false",
             "--eval-interval": str(steps), "--eval-batches": str(TRAIN_EVAL_BATCHES),
             "--log-interval": "25", "--sample-chars": "0", "--out-dir": str(run_dir)}
    if rehearse:
        flags.update({"--n-layer": "1", "--n-head": "2", "--n-embd": "16",
                      "--block-size": "16", "--batch-size": "4", "--max-lines": "200",
                      "--eval-batches": "2", "--log-interval": "2", "--threads": "1"})
    common = [py, "examples/train_wikitext.py", *(x for kv in flags.items() for x in kv),
              "--no-progress"]
    sizes, vocab = data_summary(data_dir)
    train_cfg, model_cfg = gpu_preset(vocab or WIKITEXT_VOCAB)
    B, T = train_cfg.batch_size, model_cfg.block_size
    per_step = seconds_for(step_flops(model_cfg, B))
    # the final report of each run evaluates the whole held-out 10% and the test split;
    # an evaluation is a forward, a third of a training step's FLOPs
    valid = sizes.get("wiki.valid.raw", 1_146_846)
    test = sizes.get("wiki.test.raw", 1_290_590)
    whole = eval_tokens(valid // 10, T, B) + eval_tokens(test, T, B)
    per_token_fwd = step_flops(model_cfg, 1) / T / 3
    evals = 2 * whole + 2 * TRAIN_EVAL_BATCHES * B * T  # two final reports, two evaluations

    def precheck():
        if not (data_dir / REQUIRED_DATA).is_file():
            return (f"WikiText-2 is missing: {data_dir / REQUIRED_DATA} not found; on the "
                    f"machine with the data run `python benchmarks/gpu_plan.py --prepare-data "
                    f"DIR` (DIR holding {REQUIRED_DATA}) and name {CARRY!r} in the call's carry")
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not an old one's resume
        return None

    def finish(folder):
        for name in ("metrics.jsonl", "loss.png"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, folder / name)

    generate = [py, "examples/generate.py", "--checkpoint", str(ckpt), "--backend", backend,
                "--max-new-tokens", str(SAMPLE_CHARS), "--seed", "0"]
    return Stage(
        name="train", budget_s=300,
        what=f"train_wikitext.py --preset gpu --backend {backend} on WikiText-2 (validation "
             f"split's first 90%): {steps} steps saving a checkpoint, resumed to "
             f"{steps + more}, then generate.py from the checkpoint",
        steps=[Step("train", common + ["--max-steps", str(steps)]),
               Step("resume", common + ["--max-steps", str(steps + more),
                                        "--resume", str(ckpt)]),
               Step("sample", generate, stdout_file="sample.txt")],
        counts=f"{steps} + {more} training steps (batch {B} x {T}), "
               f"{SAMPLE_CHARS} sampled characters",
        items=[("three processes", 3 * PROCESS_START_S),
               (f"NVRTC: {N_KERNEL_FILES} files (first run)", N_KERNEL_FILES * NVRTC_S),
               ("data: read and encode, two runs", 2 * DATA_LOAD_S),
               (f"{steps + more} steps x {per_step:.3f} s "
                f"({step_flops(model_cfg, B) / 1e12:.2f} TFLOP each)", (steps + more) * per_step),
               (f"evaluations: {evals / 1e6:.1f} M tokens forward",
                seconds_for(evals * per_token_fwd)),
               ("checkpoints: three saves", 3 * CHECKPOINT_S),
               (f"sample: {SAMPLE_CHARS} characters", SAMPLE_CHARS * SAMPLE_TOKEN_S)],
        outputs=("log.txt", "metrics.jsonl", "loss.png", "sample.txt", "stage.json"),
        carry=(CARRY,), precheck=precheck, finish=finish)


def train_step_stage(py):
    train_cfg, model_cfg = gpu_preset(65, dropout=0.0)  # bench_train_step's --vocab-size
    B = train_cfg.batch_size
    per_step = seconds_for(step_flops(model_cfg, B))
    calls = STEP_WARMUP + STEP_REPEAT
    n_steps = len(PRECISIONS) * len(STEP_IMPLS) * calls + calls  # + torch.compile's
    ceiling = 7 * 2 * 8192 ** 3  # per precision: bench_train_step.matmul_ceiling
    argv = [py, "benchmarks/bench_train_step.py", "--configs", "gpu-preset",
            "--impls", ",".join(STEP_IMPLS + ("torch-compile",)),
            "--precisions", ",".join(PRECISIONS), "--compile-precisions", COMPILE_PRECISION,
            "--dropout", "0", "--warmup", str(STEP_WARMUP), "--repeat", str(STEP_REPEAT),
            "--out", "{folder}"]
    return Stage(
        name="train_step", budget_s=300,
        what=f"bench_train_step.py, gpu-preset with dropout 0: {', '.join(STEP_IMPLS)} in "
             f"{', '.join(PRECISIONS)}; torch.compile in {COMPILE_PRECISION} only",
        steps=[Step("bench_train_step", argv)],
        counts=f"{n_steps} timed or warm-up steps ({calls} per implementation and "
               f"precision), batch {B} x {model_cfg.block_size}",
        items=[("a process with torch", PROCESS_START_S + TORCH_IMPORT_S),
               (f"NVRTC: {N_KERNEL_FILES} files", N_KERNEL_FILES * NVRTC_S),
               ("one torch.compile build", TORCH_COMPILE_S),
               (f"{len(PRECISIONS) * len(STEP_IMPLS) + 1} models set up",
                (len(PRECISIONS) * len(STEP_IMPLS) + 1) * MODEL_SETUP_S),
               (f"{n_steps} steps x {per_step:.3f} s", n_steps * per_step),
               ("matmul ceilings: 7 products of 8192^2 per precision",
                seconds_for(len(PRECISIONS) * ceiling))],
        outputs=("log.txt", "train_step.jsonl", "train_step.md", "train_step.png",
                 "stage.json"))


def layers_stage(py):
    from benchmarks.bench_layers import OPS, SIZES

    calls = LAYER_WARMUP + LAYER_REPEAT
    call_items = []
    for size in LAYER_SIZES:
        s = SIZES[size]
        # the heaviest call of the size, counted for every op: attention, forward
        # 4 B NH T^2 hs FLOPs, backward twice that
        fwd = 4 * s["B"] * s["NH"] * s["T"] ** 2 * (s["C"] // s["NH"])
        per_op = calls * (max(seconds_for(fwd), MIN_CALL_S) +
                          max(seconds_for(2 * fwd), MIN_CALL_S))
        call_items.append((f"{size}: {len(OPS)} ops x {len(LAYER_IMPLS)} impls x {calls} "
                           f"forward + backward calls", len(OPS) * len(LAYER_IMPLS) * per_op))
    argv = [py, "benchmarks/bench_layers.py", "--sizes", ",".join(LAYER_SIZES),
            "--impls", ",".join(LAYER_IMPLS), "--warmup", str(LAYER_WARMUP),
            "--repeat", str(LAYER_REPEAT), "--out", "{folder}"]
    return Stage(
        name="layers", budget_s=300,
        what=f"bench_layers.py: {', '.join(LAYER_IMPLS)} at sizes {', '.join(LAYER_SIZES)}",
        steps=[Step("bench_layers", argv)],
        counts=f"{len(LAYER_SIZES)} sizes x {len(OPS)} ops x {len(LAYER_IMPLS)} "
               f"implementations, {calls} calls per pass",
        items=[("a process with torch", PROCESS_START_S + TORCH_IMPORT_S),
               (f"NVRTC: {N_KERNEL_FILES} files", N_KERNEL_FILES * NVRTC_S),
               (f"{len(LAYER_SIZES) * len(OPS)} cases set up and checked",
                len(LAYER_SIZES) * len(OPS) * CASE_SETUP_S)] + call_items,
        outputs=("log.txt", "layers.jsonl", "layers.md", "layers.png", "stage.json"))


def build_plan(py=DEVICE_PYTHON, data_dir=DATA_DIR, work=None, n_gpu_tests=None,
               rehearse=False):
    """The stages in the order they run."""
    work = Path(work) if work else Path(tempfile.gettempdir()) / "tinygrad_char_gpu_plan"
    n = count_gpu_tests() if n_gpu_tests is None else n_gpu_tests
    return [smoke_stage(py, n), train_stage(py, Path(data_dir), work, rehearse),
            train_step_stage(py), layers_stage(py)]


STAGE_NAMES = ("smoke", "train", "train_step", "layers")


# -- the smoke stage's own steps (run on the device) ---------------------------------------

def step_env(extra):
    """The environment of a step: the checkout importable, output unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", **extra)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def report_env(folder):
    """The device and the versions of what runs on it, to env.json; raises without a GPU."""
    import platform

    import numpy as np

    from benchmarks.harness import machine_info, machine_summary

    try:
        import cupy

        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
    except Exception as e:  # ImportError, or CUDARuntimeError without a device
        raise PlanError(f"no usable CUDA GPU through CuPy ({str(e).splitlines()[0]}): this "
                        "stage runs on a machine with an NVIDIA GPU and CuPy") from None
    info = {"device": props["name"].decode() if isinstance(props["name"], bytes)
            else props["name"],
            "compute_capability": device.compute_capability,
            "memory_gib": round(props["totalGlobalMem"] / 2 ** 30, 1),
            "multiprocessors": props["multiProcessorCount"],
            "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "nvrtc": ".".join(map(str, cupy.cuda.nvrtc.getVersion())),
            "python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    torch_sees_gpu=torch.cuda.is_available())
    except ImportError:
        info["torch"] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                              "clocks.max.sm", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi"] = f"not run: {e}"
    info["machine"] = machine_summary(machine_info())
    (folder / "env.json").write_text(json.dumps(info, indent=1) + "\n")
    for key, value in info.items():
        print(f"{key}: {value}")


def compile_kernels(folder):
    """Every kernels/*.cu through NVRTC (cupy.RawModule, the options fused/cuda.py uses),
    each entry point of KERNEL_FILES loaded; per file the seconds, and per kernel its
    registers and memory, to compile.json. Raises when one fails."""
    import cupy

    from tinygrad_char.fused.cuda import KERNEL_FILES, NVRTC_OPTIONS, kernel_source, kernels_dir

    on_disk = sorted(p.name for p in kernels_dir().glob("*.cu"))
    rows, failed = [], []
    for file in sorted(set(on_disk) | set(KERNEL_FILES)):
        t0 = time.perf_counter()
        row = {"file": file}
        try:
            if file not in KERNEL_FILES:
                raise PlanError("not in fused/cuda.py's KERNEL_FILES")
            module = cupy.RawModule(code=kernel_source(file), options=NVRTC_OPTIONS)
            row["kernels"] = {}
            for name in KERNEL_FILES[file]:
                fn = module.get_function(name)  # NVRTC compiles at the first one
                row["kernels"][name] = {
                    attr: getattr(fn, attr, None) for attr in
                    ("num_regs", "shared_size_bytes", "local_size_bytes",
                     "max_threads_per_block")}
            row["ok"] = True
        except Exception as e:
            row.update(ok=False, error=str(e).strip().splitlines()[0] if str(e).strip()
                       else type(e).__name__)
            failed.append(file)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        print(f"{file}: {'ok' if row['ok'] else 'FAILED ' + row['error']} "
              f"({row['seconds']:.2f} s)")
    (folder / "compile.json").write_text(json.dumps(rows, indent=1) + "\n")
    if failed:
        raise PlanError(f"{len(failed)} of {len(rows)} kernel files failed: "
                        f"{', '.join(failed)} (compile.json has the first line of each error)")


def check_gpu_tests(folder):
    """The GPU tests must have run: none skipped (a skip there means the GPU is unusable)."""
    path = folder / "junit.xml"
    if not path.is_file():
        return "pytest wrote no junit.xml"
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = sum(int(s.get("tests", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    if tests == 0:
        return "no GPU test ran"
    if skipped:
        why = next((e.get("message", "") for e in root.iter("skipped")), "")
        return f"{skipped} of {tests} GPU tests were skipped ({why[:200]}); here they must run"
    return None


# -- running a stage -----------------------------------------------------------------------

def results_dir():
    """$OUT when set (the remote machine brings back only what is written there), else
    benchmarks/results/gpu."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS


def _tail(path, lines=25):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def run_step(step, folder, log, deadline):
    """Run one step with its output in the stage's log (stdout to stdout_file when set),
    stopped at the deadline. Returns (exit code, seconds, why it failed or None)."""
    argv = [a.replace("{folder}", str(folder)) for a in step.argv]
    t0 = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n== {step.name}: {' '.join(argv)}\n")
        out.flush()
        stdout = open(folder / step.stdout_file, "w") if step.stdout_file else out
        try:
            proc = subprocess.Popen(argv, cwd=REPO, env=step_env(step.env), stdout=stdout,
                                    stderr=out, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                why = None if rc == 0 else f"exit status {rc}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the step and whatever it started
                proc.wait()
                rc, why = 124, "stopped at the stage's budget"
        except OSError as e:  # the program itself is missing
            out.write(f"error: {e}\n")
            rc, why = 127, f"could not start {argv[0]} ({e.strerror})"
        finally:
            if step.stdout_file:
                stdout.close()
    if rc == 0 and step.check is not None:
        why = step.check(folder)
        rc = 1 if why else 0
    return rc, time.monotonic() - t0, why


def run_stage(stage, out_root):
    """Run a stage's steps in order, stopping at the first that fails or at the budget.
    Writes log.txt and stage.json under out_root/<stage>/. Returns the exit status: 0,
    1 (a step failed) or 2 (the stage could not start: missing data)."""
    folder = Path(out_root) / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    log.write_text(f"stage {stage.name}: {stage.what}\n")
    command, carry, timeout_s = stage.device_call()
    record = {"stage": stage.name, "budget_s": stage.budget_s,
              "estimate_s": round(stage.estimate_s, 1), "estimate_items": stage.items,
              "safety": SAFETY, "assumed_tflops": ASSUMED_TFLOPS, "counts": stage.counts,
              "device_call": {"command": command, "carry": carry, "timeout_s": timeout_s},
              "steps": [], "status": "ok"}
    t0 = time.monotonic()
    deadline = t0 + stage.budget_s
    why = stage.precheck() if stage.precheck else None
    code = 0
    if why:
        print(f"error: stage {stage.name}: {why}", file=sys.stderr)
        with open(log, "a") as f:
            f.write(f"error: {why}\n")
        record["status"], code = f"not started: {why}", 2
    for step in stage.steps if not why else []:
        if time.monotonic() >= deadline:
            record["steps"].append({"name": step.name, "status": "not run: budget spent"})
            record["status"], code = "failed: budget spent", 1
            continue
        rc, seconds, failure = run_step(step, folder, log, deadline)
        argv = [a.replace("{folder}", str(folder)) for a in step.argv]
        record["steps"].append({"name": step.name, "argv": argv, "exit": rc,
                                "seconds": round(seconds, 1), "error": failure})
        print(f"== {stage.name}/{step.name}: {'ok' if rc == 0 else failure} "
              f"({seconds:.1f} s)\n{_tail(log)}", flush=True)
        if rc != 0:
            record["status"], code = f"failed at {step.name}: {failure}", 1
            break
    if stage.finish is not None:
        stage.finish(folder)
    record["seconds"] = round(time.monotonic() - t0, 1)
    (folder / "stage.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"== stage {stage.name}: {record['status']} in {record['seconds']} s "
          f"(estimate {stage.estimate_s:.0f} s, budget {stage.budget_s} s); results in "
          f"{folder}")
    return code


# -- the data, and the dry run -------------------------------------------------------------

def prepare_data(source, target=DATA_DIR):
    """Copy WikiText-2's raw files (DATA_FILES; wiki.valid.raw required) from `source` into
    target, the git-ignored folder that travels with the checkout as a carried path."""
    source = Path(source)
    if not (source / REQUIRED_DATA).is_file():
        raise PlanError(f"--prepare-data {source}: no {REQUIRED_DATA} there; give the folder "
                        f"that holds WikiText-2's raw files ({', '.join(DATA_FILES)})")
    target.mkdir(parents=True, exist_ok=True)
    for name in DATA_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            print(f"copied {name} ({(target / name).stat().st_size:,} bytes) to {target}")
        else:
            print(f"{name}: not in {source}; the train stage then has no test figure")
    print(f"name {CARRY!r} in the carry list of the train stage's call (--dry-run shows it)")


def print_plan(stages, data_dir=DATA_DIR, out=print):
    """The dry run: stages, step counts, estimates and how they are made, device calls."""
    sizes, vocab = data_summary(Path(data_dir))
    total = sum(s.estimate_s for s in stages)
    out(f"GPU run plan: {len(stages)} stages, one device command each; results under "
        f"$OUT/<stage>/ (else {RESULTS.relative_to(REPO)}/<stage>/)")
    if REQUIRED_DATA in sizes:
        files = ", ".join(f"{k} {v:,} bytes" for k, v in sizes.items())
        out(f"data: {_from_repo(data_dir)}: {files}; vocabulary {vocab}")
    else:
        out(f"data: MISSING ({_from_repo(Path(data_dir) / REQUIRED_DATA)} not found): run `python "
            f"benchmarks/gpu_plan.py --prepare-data DIR` first, or the train stage fails")
    out("")
    out(f"{'stage':<11} {'budget':>7} {'estimate':>9}  steps")
    for s in stages:
        out(f"{s.name:<11} {s.budget_s:>6} s {s.estimate_s:>7.0f} s  {s.counts}")
    out(f"{'total':<11} {sum(s.budget_s for s in stages):>6} s {total:>7.0f} s  + about "
        f"{MACHINE_START_S} s for the machine's start = {total + MACHINE_START_S:.0f} s of "
        f"the {DEVICE_BUDGET_S} s of device time")
    slack = DEVICE_BUDGET_S - MACHINE_START_S - total
    if slack < max(s.estimate_s for s in stages):
        out(f"slack: {slack:.0f} s, less than some stages take: a stage rerun after a fix "
            "costs a later stage; leave out layers first, then train")
    out("")
    out(f"How each estimate is made: the items below, summed, times SAFETY = {SAFETY:g}. Steps "
        f"at an assumed {ASSUMED_TFLOPS:g} TFLOP/s (FLOPs per step = 6 N + 12 L H Q T per "
        f"token x tokens); fixed costs: process {PROCESS_START_S:g} s (+{TORCH_IMPORT_S:g} s "
        f"with torch), NVRTC {NVRTC_S:g} s a file, torch.compile {TORCH_COMPILE_S:g} s, "
        f"{GPU_TEST_S:g} s a GPU test. Pessimistic guesses, none measured on a GPU yet.")
    for s in stages:
        out(f"  {s.name}: {s.what}")
        for item, seconds in s.items:
            out(f"      {seconds:7.1f} s  {item}")
        out(f"      {sum(x for _, x in s.items):7.1f} s  x {SAFETY:g} = {s.estimate_s:.0f} s "
            f"(budget {s.budget_s} s)")
    out("")
    out("Device commands: one `run` call per stage, in this order and back to back (an idle "
        "machine goes back after 30 s, and a new start costs 1-2 minutes and the compile "
        "caches). Run smoke first; if it fails, fix it on the CPU before spending more. A "
        "stage's folder comes back whole (at most 8 files).")
    for i, s in enumerate(stages, 1):
        command, carry, timeout_s = s.device_call()
        out(f"  {i}. run(command={json.dumps(command)}, carry={json.dumps(carry)}, "
            f"timeout_s={timeout_s})")
    out("")
    out("Inside each stage (run from the repository root; {folder} = $OUT/<stage>):")
    for s in stages:
        for step in s.steps:
            env = "".join(f"{k}={v} " for k, v in step.env.items())
            to = f" > {{folder}}/{step.stdout_file}" if step.stdout_file else ""
            out(f"  {s.name}/{step.name}: {env}{' '.join(step.argv)}{to}")
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="*", metavar="STAGE",
                   help=f"stages to run, in order: {', '.join(STAGE_NAMES)} or all")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, step counts, estimates, device commands)")
    p.add_argument("--prepare-data", metavar="DIR",
                   help=f"copy {', '.join(DATA_FILES)} from DIR into {DATA_DIR.relative_to(REPO)}")
    p.add_argument("--data", default=str(DATA_DIR), metavar="DIR",
                   help=f"WikiText-2's folder (default: {DATA_DIR.relative_to(REPO)})")
    p.add_argument("--work", metavar="DIR",
                   help="scratch folder for checkpoints (default: one in the temp folder)")
    p.add_argument("--rehearse", action="store_true",
                   help="the train stage on the CPU: NumPy, a tiny model, a few steps (tests)")
    p.add_argument("--step", nargs=2, metavar=("NAME", "FOLDER"),
                   help="one of the smoke stage's own steps: env or compile (used by it)")
    args = p.parse_args(argv)
    try:
        if args.step:
            name, folder = args.step
            steps = {"env": report_env, "compile": compile_kernels}
            if name not in steps:
                raise PlanError(f"--step {name}: choose env or compile")
            steps[name](Path(folder))
            return 0
        if args.prepare_data:
            prepare_data(args.prepare_data, Path(args.data))
            return 0
        wanted = list(STAGE_NAMES) if args.stages == ["all"] else args.stages
        unknown = [s for s in wanted if s not in STAGE_NAMES]
        if unknown:
            raise PlanError(f"unknown stage {unknown[0]!r}: choose from "
                            f"{', '.join(STAGE_NAMES)} or all")
        if not args.dry_run and not wanted:
            raise PlanError("name a stage to run, or --dry-run to print the plan, or "
                            "--prepare-data DIR")
        py = DEVICE_PYTHON if args.dry_run else sys.executable
        n_tests = None if args.dry_run or "smoke" in wanted else 0  # counted only if shown
        stages = build_plan(py, args.data, args.work, n_tests, args.rehearse)
        if args.dry_run:
            print_plan([s for s in stages if not wanted or s.name in wanted], args.data)
            return 0
        codes = [run_stage(s, results_dir()) for s in stages if s.name in wanted]
        return max(codes)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
