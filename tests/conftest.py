"""Shared fixtures: the array module under test (NumPy always, CuPy when a GPU works),
the tolerance table, and the location of the shared data sets."""

from pathlib import Path

import numpy as np
import pytest

from tinygrad_char.backend import BackendError, _cupy_or_error

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"  # the data sets live beside the repo, never in it

# Tolerances per dtype, one table (relative errors, see tinygrad_char.gradcheck.rel_error).
TOL = {
    # central differences with eps 1e-5 in float64: truncation ~eps^2, rounding ~1e-16/eps
    "gradcheck": 1e-6,
    # the same float64 computation in another library differs only by summation order
    "float64": 1e-10,
    # float32 has ~7 significant digits; sums over hundreds of terms lose a few more
    "float32": 1e-4,
}


def _cupy_reason():
    try:
        _cupy_or_error()
        return None
    except BackendError as e:
        return str(e)


CUPY_MISSING = _cupy_reason()
gpu = pytest.mark.skipif(CUPY_MISSING is not None,
                         reason=f"needs a CUDA GPU with CuPy: {CUPY_MISSING}")


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=[gpu, pytest.mark.gpu])])
def xp(request):
    """The array module under test: every op test runs on NumPy and, with a GPU, on CuPy."""
    if request.param == "cupy":
        import cupy

        return cupy
    return np


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=[gpu, pytest.mark.gpu])])
def backend_name(request):
    return request.param


def to_np(a):
    """Any array (NumPy or CuPy) or scalar as a NumPy array."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)
