"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

Every op in this package is written once against an array module `xp` that it takes
from its inputs (`get_array_module`). This file is the only place that knows which
backends exist. It is deliberately *not* a tensor library: no wrappers around arrays,
no device objects beyond what the training loop needs (seeding, copies to the host,
synchronisation, a device name for logs).

CuPy is imported lazily, so the package imports and runs without it.
"""

import os
import platform

import numpy as np

from tinygrad_char.errors import UserError


class BackendError(UserError, RuntimeError):
    """A backend was asked for that cannot run here. The message says how to fix it."""


def get_array_module(*arrays):
    """Return the array module (numpy or cupy) that owns `arrays`.

    Ops call this instead of importing numpy, so one code path serves both backends.
    """
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def _cupy_or_error():
    """Import CuPy and touch the device; raise one BackendError saying what is missing."""
    fix = 'install the GPU extra (pip install "tinygrad-char[cuda12]", or [cuda13] for ' \
          "CUDA 13 drivers) on a machine with an NVIDIA GPU, or use --backend numpy"
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        raise BackendError(f"backend 'cupy' unavailable: CuPy is not installed ({e}); {fix}") \
            from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            raise RuntimeError("no CUDA device found")
        cupy.zeros(1).sum().item()  # the first real device call is where a broken setup fails
    except Exception as e:  # cupy.cuda.runtime.CUDARuntimeError and friends
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BackendError(f"backend 'cupy' unavailable: CuPy is installed but no CUDA GPU "
                           f"works here ({msg}); {fix}") from None
    return cupy


def gpu_available():
    """True when CuPy imports and a CUDA device answers."""
    try:
        _cupy_or_error()
        return True
    except BackendError:
        return False


class Backend:
    """What the model and training loop need to know about where arrays live.

    Attributes:
        name: "numpy" or "cupy".
        xp: the array module.
        device: a readable device name, e.g. "CPU (x86_64, 2 cores)" or "NVIDIA H100 (cuda:0)".
        rng: a seeded random Generator of `xp` (reseed with `seed`).
    """

    def __init__(self, name, xp, device, seed=0):
        self.name = name
        self.xp = xp
        self.device = device
        self.seed(seed)

    def seed(self, seed):
        self.rng = self.xp.random.default_rng(seed)

    def asarray(self, a, dtype=None):
        """Copy a host (or device) array onto this backend."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        """Return `a` as a NumPy array on the host (no copy when it already is one)."""
        if self.name == "cupy":
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def synchronize(self):
        """Wait until queued device work is done (a no-op on the CPU)."""
        if self.name == "cupy":
            self.xp.cuda.Stream.null.synchronize()

    def __repr__(self):
        return f"Backend({self.name!r}, device={self.device!r})"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def get_backend(name="numpy", seed=0):
    """Return a Backend for "numpy", "cupy" or "auto" (CuPy only when a GPU actually works).

    Raises BackendError with a one-line fix when "cupy" cannot run here. Changes nothing
    outside the Backend it returns (process settings: tinygrad_char.runtime.setup).
    """
    if isinstance(name, Backend):
        return name
    if name == "auto":
        name = "cupy" if gpu_available() else "numpy"
    if name == "numpy":
        return Backend("numpy", np, f"CPU ({cpu_name()}, {os.cpu_count()} cores)", seed)
    if name == "cupy":
        cupy = _cupy_or_error()
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return Backend("cupy", cupy, f"{gpu} (cuda:{dev.id})", seed)
    raise BackendError(f"unknown backend {name!r}: choose 'numpy', 'cupy' or 'auto'")
