"""Shared fixtures: the array module under test (NumPy always, CuPy when a GPU works),
the tolerance table, the text the tests train on, and the helpers of the training tests (a
tiny TrainConfig, prefixes of the sample text, a simulated Ctrl-C).

Data. Every test runs in a fresh clone with nothing beside it: a test that needs some text
uses the sample text packaged with the library (`sample_text`, `wikitext_like_dir`). Only
the tests about the real data sets' files (WikiText-2's bytes, Tiny Shakespeare) read them,
from the folder named by $TINYGRAD_CHAR_TEST_DATA (holding wikitext-2-raw/ and
tinyshakespeare/; .ci/run sets it), and are skipped, saying so, when it is unset.
"""

import atexit
import functools
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from safetensors import safe_open

import tinygrad_char.training.train as train_module
from tinygrad_char.backend import BackendError, _cupy_or_error
from tinygrad_char.training.data import load_sample_text, prepare_text
from tinygrad_char.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

TEST_DATA_ENV = "TINYGRAD_CHAR_TEST_DATA"
# the real data sets' folder, or None; a relative path is taken from the repository root
TEST_DATA = (REPO / os.environ[TEST_DATA_ENV]).resolve() if os.environ.get(TEST_DATA_ENV) \
    else None
# for the tests about the real files only; with the variable set, a missing file fails them
needs_test_data = pytest.mark.skipif(
    TEST_DATA is None, reason=f"needs the real data files: set {TEST_DATA_ENV} to a folder "
                              f"holding wikitext-2-raw/ and tinyshakespeare/")

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


# -- op tests (test_ops.py, test_modern_block.py) ----------------------------------------------

HYP = settings(max_examples=15, deadline=None, derandomize=True)  # same cases every run


def randn(xp, rng, *shape, scale=1.0):
    """Standard normal float64 draws times `scale`, on array module xp."""
    return xp.asarray(rng.standard_normal(shape) * scale)


def assert_grads(name, errors):
    """Every relative error of a gradient check (gradcheck.check_op / check_model) is
    below TOL["gradcheck"]."""
    worst = max(errors.values())
    assert worst < TOL["gradcheck"], f"{name}: max relative error {worst:.2e} ({errors})"


# -- training tests ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sample():
    return load_sample_text()


def sample_text(n_chars=None):
    """The first n_chars characters (default: all) of the packaged sample text (seven
    Shakespeare tragedies, ASCII, 993,274 characters)."""
    return _sample()[:n_chars]


@functools.lru_cache(maxsize=None)
def wikitext_like_dir():
    """A folder shaped like WikiText-2's (wiki.valid.raw and wiki.test.raw, no train file,
    as in the offline copies the tests used to read), cut from the sample text: for the
    command-line tests, which need the layout and not WikiText-2's bytes. Made once per
    session, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="tinygrad_char_wikitext_like_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    lines = sample_text().splitlines(keepends=True)
    (folder / "wiki.valid.raw").write_text("".join(lines[:3000]), encoding="utf-8")
    (folder / "wiki.test.raw").write_text("".join(lines[3000:4000]), encoding="utf-8")
    return folder


def shakespeare_prefix(tmp_path_factory, n_chars):
    """CharData of the first n_chars characters of the sample text (90% train, 10% val)."""
    path = tmp_path_factory.mktemp("text") / f"shakespeare_{n_chars}.txt"
    path.write_text(sample_text(n_chars), encoding="utf-8")
    return prepare_text(path, verbose=False)


@pytest.fixture(scope="session")
def shakespeare_20k(tmp_path_factory):
    return shakespeare_prefix(tmp_path_factory, 20_000)


def quiet(*args):
    """An `out` for train() that prints nothing."""


def tiny_train_config(out_dir, **overrides):
    """A 1-layer, 16-wide GPT and a short schedule; every figure can be overridden."""
    values = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                  learning_rate=3e-3, min_lr=3e-4, warmup_steps=3, max_steps=10,
                  log_interval=1, eval_interval=5, eval_batches=2, eval_batch_size=8,
                  sample_chars=0, seed=7, out_dir=str(out_dir))
    values.update(overrides)
    return TrainConfig(**values).validate()


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file."""
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def interrupt_at(monkeypatch, step):
    """Make train() receive SIGINT while it runs step `step` (1-based), as if Ctrl-C was
    pressed then: the loop finishes that step, saves and returns at `step`."""
    calls = []
    real_windows = train_module.windows

    def windows(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            # never deliver a real KeyboardInterrupt to pytest: the loop must own SIGINT
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, \
                "train() did not install its SIGINT handler"
            signal.raise_signal(signal.SIGINT)
        return real_windows(*args, **kwargs)

    monkeypatch.setattr(train_module, "windows", windows)
