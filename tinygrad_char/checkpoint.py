"""Checkpoints: the model (and optionally the optimizer) saved as safetensors files.

A checkpoint is two files side by side:

    run.safetensors        every parameter under its nanoGPT name, so
                           `safetensors.torch.load_file` gives a PyTorch state dict; the
                           metadata carries format, format_version, config (JSON),
                           tokenizer (JSON), step and dtype. Enough to sample.
    run.train.safetensors  only when an optimizer is given: AdamW moments as m.<name> and
                           v.<name>, the optimizer's scalars (JSON), the training loop's
                           train_state (JSON) and the same step. Needed to resume.

Both are written atomically (temporary file, fsync, os.replace), companion first, so a
kill mid-save leaves the previous checkpoint whole. Loading checks everything and turns
every problem into one CheckpointError line naming the file, the problem and the fix.

This is not a general serialiser: it knows one model, one tokenizer and AdamW.
"""

import json
import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from .backend import get_array_module
from .model import GPT, GPTConfig, param_shapes
from .tokenizer import CharTokenizer

FORMAT = "tinygrad_char.checkpoint"
TRAIN_FORMAT = "tinygrad_char.train_state"
FORMAT_VERSION = "1"
OPTIMIZER_KEYS = ("step", "lr", "betas", "eps", "weight_decay")  # AdamW's scalars


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the file and the fix."""


def train_state_path(path):
    """The optimizer companion of `path`: run.safetensors -> run.train.safetensors."""
    path = os.fspath(path)
    base = path[:-len(".safetensors")] if path.endswith(".safetensors") else path
    return base + ".train.safetensors"


# -- writing ------------------------------------------------------------------------------
def _write_atomic(path, tensors, metadata):
    """Write one safetensors file so that `path` is always either the old or the new file:
    bytes go to path + ".tmp", are flushed and fsynced, then renamed over `path`."""
    data = save(tensors, metadata=metadata)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable; directories cannot be opened on Windows
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(path, model, tokenizer, step, optimizer=None, train_state=None):
    """Save `model` (+ `tokenizer`, `step`) to `path`, and the optimizer's state with the
    JSON-serialisable `train_state` to train_state_path(path) when `optimizer` is given."""
    path = os.fspath(path)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but "
                              f"config.vocab_size is {model.config.vocab_size}; save the "
                              f"tokenizer the model was built for")
    to_host = model.backend.to_numpy
    step = str(int(step))
    if optimizer is not None:
        state = optimizer.state_dict()
        tensors = {}
        for name in optimizer.params:
            tensors["m." + name] = to_host(state["m"][name])
            tensors["v." + name] = to_host(state["v"][name])
        scalars = {k: state[k] for k in OPTIMIZER_KEYS}
        _write_atomic(train_state_path(path), tensors, {
            "format": TRAIN_FORMAT, "format_version": FORMAT_VERSION, "step": step,
            "optimizer": json.dumps(scalars), "train_state": json.dumps(train_state or {})})
    params = {name: to_host(p) for name, p in model.params.items()}  # tied: no lm_head
    _write_atomic(path, params, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
        "config": json.dumps(model.config.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict()), "dtype": model.dtype})


# -- reading ------------------------------------------------------------------------------
def _read_header(path):
    """The JSON header of a safetensors file, after checking the file is whole: its size
    must be 8 (header length) + header + the end of the last tensor's data."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; check the path (or train first)")
    broken = f"{path}: truncated or corrupt safetensors file"
    fix = "the save was interrupted or the file damaged; use an earlier checkpoint"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if n is None or 8 + n > size:
            raise CheckpointError(f"{broken} (header cut short, {size} bytes); {fix}")
        try:
            header = json.loads(f.read(n))
            end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"],
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{broken} (unreadable header: {e}); {fix}") from None
    if size != 8 + n + end:
        raise CheckpointError(f"{broken} ({size} bytes, the header says {8 + n + end}); {fix}")
    return header


def _read_meta(path, fmt):
    """The metadata of our file `path` of format `fmt`, with format and version checked."""
    meta = _read_header(path).get("__metadata__") or {}
    if meta.get("format") != fmt:
        raise CheckpointError(f"{path}: not a tinygrad_char checkpoint (format "
                              f"{meta.get('format')!r}, expected {fmt!r}); pass a file "
                              f"written by tinygrad_char's save_checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version "
                              f"{meta.get('format_version')!r} (this version reads "
                              f"{FORMAT_VERSION!r}); use the tinygrad_char that wrote it")
    return meta


def _json_field(path, meta, key):
    try:
        return json.loads(meta[key])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata {key!r} is missing or not valid JSON "
                              f"({e}); the file is damaged, use an earlier checkpoint") from None


def _step(path, meta):
    try:
        return int(meta["step"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata 'step' is missing or not an integer ({e}); "
                              f"the file is damaged, use an earlier checkpoint") from None


def _load_tensors(path):
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file "
                              f"({str(e).splitlines()[0]}); use an earlier checkpoint") from None


def _check_tensors(path, tensors, shapes, what):
    """Same names as `shapes` and the same shapes; every value finite."""
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing or extra:
        raise CheckpointError(f"{path}: tensors do not match {what} (missing {missing}, extra "
                              f"{extra}); load it with the config it was saved with")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape "
                                  f"{tuple(tensors[name].shape)} but {what} needs "
                                  f"{tuple(shape)}; the file is damaged or from another model")
        if not np.isfinite(tensors[name]).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or inf (training "
                                  f"diverged before this save); use an earlier checkpoint")


def peek_checkpoint(path):
    """The metadata of a checkpoint without loading its tensors:
    {path, format_version, step, config (dict), tokenizer (dict), dtype, train_path}.
    train_path is the optimizer companion's path, or None when there is none."""
    path = os.fspath(path)
    meta = _read_meta(path, FORMAT)
    config = _json_field(path, meta, "config")
    try:
        GPTConfig.from_dict(config)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{path}: invalid config in the checkpoint ({e}); the file is "
                              f"damaged or from an incompatible version") from None
    if meta.get("dtype") not in ("float32", "float64"):
        raise CheckpointError(f"{path}: metadata 'dtype' is {meta.get('dtype')!r}, expected "
                              f"'float32' or 'float64'; the file is damaged")
    companion = train_state_path(path)
    return {"path": path, "format_version": meta["format_version"], "step": _step(path, meta),
            "config": config, "tokenizer": _json_field(path, meta, "tokenizer"),
            "dtype": meta.get("dtype"),
            "train_path": companion if os.path.exists(companion) else None}


def load_checkpoint(path, backend="numpy", dtype=None):
    """Build the saved model on `backend` (in `dtype`, default: the saved dtype).

    Returns (model, tokenizer, meta); meta is peek_checkpoint's dict."""
    meta = peek_checkpoint(path)
    path = meta["path"]
    config = GPTConfig.from_dict(meta["config"])
    try:
        tokenizer = CharTokenizer.from_dict(meta["tokenizer"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: invalid tokenizer in the checkpoint ({e}); the file "
                              f"is damaged or from an incompatible version") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but "
                              f"config.vocab_size is {config.vocab_size}; the file is damaged")
    tensors = _load_tensors(path)
    _check_tensors(path, tensors, param_shapes(config), "the saved config")
    model = GPT(config, backend=backend, dtype=dtype or meta["dtype"])
    for name, value in tensors.items():  # xp.array copies onto the backend, in its dtype
        model.params[name] = model.xp.array(value, dtype=model.dtype)
    return model, tokenizer, meta


def load_training_state(path, optimizer):
    """Restore `optimizer` (built over the loaded model's params) from the companion of the
    checkpoint `path`; return the train_state dict saved with it."""
    path = os.fspath(path)
    step = peek_checkpoint(path)["step"]
    train_path = train_state_path(path)
    if not os.path.exists(train_path):
        raise CheckpointError(f"{train_path}: no such file; resuming needs the optimizer state "
                              f"saved next to {path} (save with optimizer=...), or start a "
                              f"fresh run from the weights alone")
    meta = _read_meta(train_path, TRAIN_FORMAT)
    if _step(train_path, meta) != step:
        raise CheckpointError(f"{train_path}: optimizer state is from step "
                              f"{_step(train_path, meta)} but {path} is from step {step} (a "
                              f"save was interrupted?); resume from a matching pair of files")
    scalars = _json_field(train_path, meta, "optimizer")
    if not isinstance(scalars, dict) or set(scalars) != set(OPTIMIZER_KEYS):
        raise CheckpointError(f"{train_path}: optimizer metadata should hold {OPTIMIZER_KEYS}, "
                              f"got {scalars!r}; the file is damaged")
    train_state = _json_field(train_path, meta, "train_state")
    tensors = _load_tensors(train_path)
    shapes = {}
    for name, p in optimizer.params.items():
        shapes["m." + name] = shapes["v." + name] = p.shape
    _check_tensors(train_path, tensors, shapes, "the optimizer's parameters")
    state = dict(scalars, m={}, v={})
    for name, p in optimizer.params.items():
        xp = get_array_module(p)
        state["m"][name] = xp.asarray(tensors["m." + name], dtype=p.dtype)
        state["v"][name] = xp.asarray(tensors["v." + name], dtype=p.dtype)
    optimizer.load_state_dict(state)
    return train_state
