"""The shared benchmark harness: a timer, machine and version info, result files.

    t = time_fn(lambda: op(x), warmup=3, repeat=11)          # Timing(median, min, max), ms
    t = time_fn(fn, xp=cupy)                                  # CUDA events around each call
    t = time_fn(fn, sync=torch.cuda.synchronize)              # synchronise around each call
    timer = TimedOps(model); timer.install()                  # seconds by op, matmul FLOPs
    restore = limit_threads(2)                                # NumPy's BLAS and torch: 2 threads
    check_close("layernorm dx", ours, ref, rtol=1e-3)         # before timing, never after
    append_jsonl("benchmarks/results/layers.jsonl", record)   # + machine, versions, date
    write_markdown_table("benchmarks/results/layers.md", rows, columns, "Layers")

Conventions every benchmark script follows (README.md says more):
  * times are milliseconds; the median of `repeat` calls after `warmup` calls is reported,
    with the min and max beside it;
  * a comparison with PyTorch is "speed vs torch" = torch ms / ours ms: >= 1.0 means ours
    is at least as fast, 0.5 means ours takes twice as long;
  * correctness is checked before anything is timed (`check_close`), and a mismatch stops
    the script with an AssertionError naming the op.

What this is not: a profiler, or a test. Benchmarks are scripts (STYLE.md, principle 13);
tests/test_benchmarks.py only checks that they run and write well-formed results.
CuPy and torch are optional and imported lazily; this file needs only NumPy and
threadpoolctl.
"""

import collections
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from tinygrad_char.backend import cpu_name

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS_DIR = REPO / "examples" / "configs"

# The one ratio convention of every table (the header text the scripts print).
SPEED_RULE = "torch ms / ours ms; >= 1.0: ours at least as fast"
SPEED_VS_TORCH = f"speed vs torch ({SPEED_RULE})"

Timing = namedtuple("Timing", "median min max")  # milliseconds


# -- timing ------------------------------------------------------------------------------------

def time_fn(fn, warmup=3, repeat=11, sync=None, xp=None):
    """Time fn() and return Timing(median, min, max) in milliseconds.

    Args:
        fn: a callable taking no arguments; its result is discarded.
        warmup: calls made first and not timed (caches, allocator pools, compilation).
        repeat: timed calls (>= 1); the median is the number to report.
        sync: optional callable that waits for queued device work, e.g.
            torch.cuda.synchronize; called before and after every timed call.
        xp: the array module in use. When it is CuPy, each call is timed with a pair of
            CUDA events on the null stream (the start recorded after the previous call
            finished), so the time is the device's, not the launch's.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    use_events = xp is not None and xp.__name__ == "cupy"
    for _ in range(warmup):
        fn()
    if use_events:
        xp.cuda.Device().synchronize()
    if sync is not None:
        sync()
    times = []
    for _ in range(repeat):
        if use_events:
            start, end = xp.cuda.Event(), xp.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(xp.cuda.get_elapsed_time(start, end)))
        else:
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(float(np.median(times)), float(min(times)), float(max(times)))



class TimedOps:
    """A model's op table with every op timed, for profiles: `install()` puts the timed
    table in the model, `remove()` puts the original back. `seconds` holds the seconds
    spent in each op by name (a defaultdict: a caller may add its own entries),
    `matmul_flops` the linear layers' FLOPs (2 x multiply-adds: x (..., in) @ W.T with W
    (out, in)). Classes of the table (AdamW) are left as they are."""

    def __init__(self, model):
        self.model, self.original = model, model.ops
        self.seconds, self.matmul_flops = collections.defaultdict(float), 0
        self.ops = replace(self.original, **{
            f.name: self._timed(f.name, getattr(self.original, f.name))
            for f in fields(self.original)
            if callable(getattr(self.original, f.name))
            and not isinstance(getattr(self.original, f.name), type)})

    def _timed(self, name, fn):
        def run(*args, **kwargs):
            if name == "linear_forward":
                x, W = args[0], args[1]
                self.matmul_flops += 2 * (x.size // x.shape[-1]) * W.shape[0] * W.shape[1]
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - start
            return out
        return run

    def install(self):
        self.model.ops = self.ops

    def remove(self):
        self.model.ops = self.original


# -- correctness before timing -----------------------------------------------------------------

def to_numpy(a):
    """A NumPy, CuPy or torch array (or a scalar) as a NumPy array on the host."""
    module = type(a).__module__
    if module.startswith("cupy"):
        return a.get()
    if module.startswith("torch"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def rel_error(ours, ref):
    """max |ours - ref| / max |ref|: the error relative to the reference's scale."""
    a = np.asarray(to_numpy(ours), dtype=np.float64)
    b = np.asarray(to_numpy(ref), dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) if b.size else 0.0


def check_close(name, ours, ref, rtol):
    """Raise AssertionError naming `name` unless ours matches ref within rtol.

    The error is relative to the reference's largest magnitude (`rel_error`), so tiny
    entries of a large tensor do not fail on rounding. Returns the error.
    """
    a, b = to_numpy(ours), to_numpy(ref)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shape {a.shape} != reference shape {b.shape}")
    if not np.all(np.isfinite(a)):
        raise AssertionError(f"{name}: ours has non-finite values")
    err = rel_error(a, b)
    if not err <= rtol:
        raise AssertionError(f"{name}: max relative error {err:.3e} > rtol {rtol:g} "
                             f"(shape {a.shape})")
    return err


# -- threads -----------------------------------------------------------------------------------

def add_run_args(parser, repeat, warmup, what="calls"):
    """The flags every benchmark script shares: --threads, --repeat, --warmup, --out."""
    parser.add_argument("--threads", type=int, default=available_cores(),
                        help="threads for NumPy's BLAS and torch alike (default: available cores)")
    parser.add_argument("--repeat", type=int, default=repeat, help=f"timed {what}")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed {what} first")
    parser.add_argument("--out", default=str(RESULTS), help="directory for the result files")


def pick(parser, text, allowed, what):
    """The comma-separated names of `text`, each checked against `allowed` (argparse error)."""
    names = [n for n in text.split(",") if n]
    for n in names:
        if n not in allowed:
            parser.error(f"unknown {what} {n!r}; choose from {list(allowed)}")
    return names


def available_cores():
    """Cores this process may run on (the affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def limit_threads(n):
    """Make NumPy's BLAS and torch use the same n threads; return a function that undoes it.

    NumPy's BLAS goes through threadpoolctl.threadpool_limits (user_api "blas": OpenBLAS,
    MKL, BLIS, whichever is loaded); torch through torch.set_num_threads when torch has
    been imported (import it first; a script that does not use torch does not pay for
    importing it here).
    """
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    limiter = threadpool_limits(limits=n, user_api="blas")

    def restore():
        limiter.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(torch_before)

    return restore


def threads_for(impl, n):
    """Arrange n threads the way `impl` runs in the library, before timing it, through the
    entry points' runtime.setup: the numba CPU kernels ("numpy-cpu", "auto" on NumPy) on
    one pool of n threads with BLAS on one (the kernels cut the matmuls over their pool);
    the xp ops ("numpy") on BLAS's n threads; both with the allocator set as a training run
    sets it; torch on n. Then waits 20 ms, so that the idle threads of whatever ran before
    (OpenMP's spin for a while) are asleep when the timing starts."""
    from threadpoolctl import threadpool_limits

    from tinygrad_char import runtime

    if impl in ("numpy", "numpy-cpu"):
        runtime.setup(n, cpu_kernels=impl == "numpy-cpu")
    else:
        threadpool_limits(limits=n, user_api="blas")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    time.sleep(0.02)


# -- machine and versions ----------------------------------------------------------------------

def _import_or_none(name):
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None


def torch_or_none():
    """torch, or None when it is not installed (the script then runs NumPy only)."""
    return _import_or_none("torch")


def cupy_or_none():
    """(cupy, None) when CuPy imports and a GPU works, else (None, the reason)."""
    from tinygrad_char.backend import BackendError, _cupy_or_error

    try:
        return _cupy_or_error(), None
    except BackendError as e:
        return None, str(e)


def torch_cuda_or_none(torch):
    """torch when it has a working CUDA device, else None."""
    return torch if torch is not None and torch.cuda.is_available() else None


def _dist_version(*names):
    """The installed version of the first distribution found among names, without importing."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _gpu_info():
    """Name, driver, CUDA versions of GPU 0, or None. Tries CuPy, then torch, then nvidia-smi
    only for the driver release (the CUDA APIs report the driver's CUDA version)."""
    info = None
    if importlib.util.find_spec("cupy") is not None:
        cupy = _import_or_none("cupy")
        try:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            info = {"name": name.decode() if isinstance(name, bytes) else name,
                    "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                    "cuda_driver_api": cupy.cuda.runtime.driverGetVersion(),
                    "memory_gib": round(props["totalGlobalMem"] / 2**30, 1)}
        except Exception:  # CuPy installed, no working GPU
            info = None
    if info is None and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info = {"name": torch.cuda.get_device_name(0), "cuda_runtime": torch.version.cuda}
    if info is not None and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=10).stdout.strip().splitlines()
            info["driver"] = out[0] if out else None
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def blas_info():
    """The BLAS (and OpenMP) libraries loaded in this process, as threadpoolctl sees them:
    which library, its version, the CPU kernel it chose (OpenBLAS's `architecture`, BLIS's
    and MKL's equivalents) and its thread count."""
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "version", "architecture", "corename",
            "threading_layer", "num_threads")
    return [{**{k: lib.get(k) for k in keep if k in lib},
             "library": os.path.basename(lib.get("filepath", ""))} for lib in threadpool_info()]


def versions():
    return {"python": platform.python_version(),
            "numpy": np.__version__,
            "torch": _dist_version("torch"),
            "cupy": _dist_version("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"),
            "threadpoolctl": _dist_version("threadpoolctl"),
            "tinygrad_char": _dist_version("tinygrad-char")}


def machine_info():
    """Where a result was measured: CPU, cores, GPU, BLAS kernel and threads, versions,
    and the OpenBLAS environment variables that change which kernel it uses."""
    return {"cpu": cpu_name(),
            "cores": os.cpu_count(),
            "cores_available": available_cores(),
            "load_average_1min": os.getloadavg()[0],
            "platform": platform.platform(),
            "gpu": _gpu_info(),
            "blas": blas_info(),
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                    "OPENBLAS_NUM_THREADS",
                                                    "OMP_NUM_THREADS")},
            "versions": versions()}


def busy_warning(threads, info=None):
    """A warning line when other processes keep the cores busy, or None.

    Several threads on a loaded machine wait for each other at every barrier while one of
    them is descheduled, so times become multiples of the scheduler's slice (~4-12 ms).
    The load average counts this process too; measure it before the benchmark starts.
    """
    info = info or machine_info()
    free = info["cores_available"] - info["load_average_1min"]
    if threads > 1 and free < threads - 0.5:
        return (f"warning: load average {info['load_average_1min']:.1f} on "
                f"{info['cores_available']} cores leaves fewer than {threads} free: "
                f"multi-threaded timings will be noisy (use --threads 1, or a quiet machine)")
    return None


def machine_summary(info=None):
    """One line for the top of a table: CPU, cores, BLAS kernel and threads, GPU."""
    info = info or machine_info()
    blas = [b for b in info["blas"] if b.get("user_api") == "blas"]
    blas_text = ", ".join(f"{b.get('internal_api')} {b.get('version')} "
                          f"kernel={b.get('architecture') or b.get('corename')} "
                          f"threads={b.get('num_threads')}" for b in blas) or "none found"
    env = ", ".join(f"{k}={v}" for k, v in info["env"].items() if v is not None) or "none"
    gpu = info["gpu"]["name"] if info["gpu"] else "none"
    v = info["versions"]
    return (f"CPU: {info['cpu']} ({info['cores_available']} of {info['cores']} cores); "
            f"BLAS: {blas_text}; GPU: {gpu}; env: {env}; python {v['python']}, "
            f"numpy {v['numpy']}, torch {v['torch']}, cupy {v['cupy']}")


# -- memory ------------------------------------------------------------------------------------

def rss_mib():
    """(current RSS, peak RSS of the process so far) in MiB, from /proc/self/statm and
    getrusage (ru_maxrss is in KiB on Linux). The peak never decreases within a process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        current = float("nan")
    return current, peak


# -- configurations shared by the train-step and generation benchmarks -------------------------

TINY_CPU = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12,
            "dropout": 0.0}  # nanoGPT's shakespeare_char CPU shapes
GPU_LARGE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 256, "batch_size": 32,
             "dropout": 0.0}  # GPT-2 small's body (85M parameters) on characters
INLINE_CONFIGS = {"tiny-cpu": TINY_CPU, "gpu-large": GPU_LARGE}
NAMED_CONFIGS = {"tiny-cpu": None, "cpu-preset": "cpu.json", "llama-cpu": "llama_cpu.json",
                 "gpu-preset": "gpu.json",
                 "gpu-large": None}


def named_config(name, vocab_size=65):
    """(TrainConfig, GPTConfig) for a benchmark configuration name, or None when its preset
    file does not exist (the caller prints a message and skips it).

    tiny-cpu: 4 layers x 4 heads x 128 wide, context 64, batch 12 (no preset file needed);
    gpu-large: 12 x 12 x 768, context 256, batch 32 (the larger GPU model, inline too);
    cpu-preset / gpu-preset: examples/configs/cpu.json / gpu.json. vocab_size defaults to
    Tiny Shakespeare's 65 characters.
    """
    from tinygrad_char.training.config import TrainConfig, load_config_file

    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(NAMED_CONFIGS)}")
    if NAMED_CONFIGS[name] is None:
        values = dict(INLINE_CONFIGS[name])
    else:
        path = CONFIGS_DIR / NAMED_CONFIGS[name]
        if not path.exists():
            return None
        values = load_config_file(str(path))
    known = {f.name for f in fields(TrainConfig)}
    train_cfg = TrainConfig(**{k: v for k, v in values.items() if k in known})
    return train_cfg, train_cfg.model_config(vocab_size)


def available_named_configs(names, vocab_size, notes):
    """(name, TrainConfig, GPTConfig) for each name whose preset exists; a skipped name is
    printed and appended to `notes`."""
    for name in names:
        loaded = named_config(name, vocab_size)
        if loaded is None:
            msg = f"{name} skipped: examples/configs/{NAMED_CONFIGS[name]} not found"
            print(msg)
            notes.append(msg)
            continue
        yield (name, *loaded)


# -- result files ------------------------------------------------------------------------------

def append_jsonl(path, record, machine=None):
    """Append `record` as one JSON line, with "machine", "versions" and "date" added.

    machine: a machine_info() dict, to avoid recomputing it for every line.
    """
    info = machine if machine is not None else machine_info()
    line = {**record,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {k: v for k, v in info.items() if k != "versions"},
            "versions": info["versions"]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01 or value == 0:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def markdown_table(rows, columns, title=None, notes=()):
    """The markdown text of a table.

    rows: dicts; columns: keys, or (key, header) pairs; a missing key prints "-".
    notes: lines printed between the title and the table.
    """
    columns = [(c, c) if isinstance(c, str) else c for c in columns]
    lines = []
    if title:
        lines += [f"## {title}", ""]
    for note in notes:
        lines += [note, ""]
    lines.append("| " + " | ".join(header for _, header in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def write_markdown_table(path, rows, columns, title, notes=(), mode="w"):
    """Write (mode "w") or append (mode "a") a markdown table; returns its text."""
    text = markdown_table(rows, columns, title, notes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(("\n" if mode == "a" else "") + text)
    return text


def save_figure(fig, path):
    """Write a matplotlib figure to path and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def pyplot_or_none():
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
