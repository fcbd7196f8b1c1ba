"""The array backend: selection, the CuPy error messages, host copies."""

import sys
import types

import numpy as np
import pytest

from tinygrad_char import BackendError, get_backend
from tinygrad_char.backend import get_array_module

from conftest import CUPY_MISSING


def test_numpy_backend():
    be = get_backend("numpy", seed=3)
    assert be.name == "numpy" and be.xp is np
    assert "CPU" in be.device
    a = be.asarray([1.0, 2.0], dtype="float32")
    assert be.to_numpy(a).dtype == np.float32
    be.synchronize()
    r1 = be.rng.random(4)
    be.seed(3)
    assert np.array_equal(r1, be.rng.random(4))


def test_unknown_backend_names_the_choices():
    with pytest.raises(BackendError, match="'numpy', 'cupy' or 'auto'"):
        get_backend("tpu")


def test_get_array_module_numpy():
    assert get_array_module(np.zeros(2)) is np
    assert get_array_module(1.0, np.zeros(2)) is np


@pytest.mark.skipif(CUPY_MISSING is None, reason="a GPU is present: the no-GPU error "
                                                  "path cannot be observed here")
def test_auto_falls_back_to_numpy_without_gpu():
    assert get_backend("auto").name == "numpy"


def test_cupy_missing_error_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendError) as err:
        get_backend("cupy")
    msg = str(err.value)
    assert "\n" not in msg
    assert "not installed" in msg and "tinygrad-char[cuda12]" in msg
    assert "--backend numpy" in msg


def test_cupy_without_device_error(monkeypatch):
    """`import cupy` works on a GPU-less machine and the first device call raises
    CUDARuntimeError: that must become the same kind of one-line error."""

    class CUDARuntimeError(RuntimeError):
        pass

    def no_device():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendError) as err:
        get_backend("cupy")
    msg = str(err.value)
    assert "\n" not in msg
    assert "no CUDA GPU" in msg and "cudaErrorNoDevice" in msg
    assert "--backend numpy" in msg
    assert get_backend("auto").name == "numpy"
