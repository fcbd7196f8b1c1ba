"""Checkpoints: the model (and optionally the optimizer) saved as safetensors files.

A checkpoint is a model file and, for resuming, the optimizer companion it names:

    run.safetensors          every parameter under its nanoGPT name, so
                             `safetensors.torch.load_file` gives a PyTorch state dict; the
                             metadata carries format, format_version, config (JSON),
                             tokenizer (JSON), step, dtype, a CRC-32 of every tensor's bytes
                             (checksums, JSON), and, when saved with an optimizer, the file
                             name of its companion (train_file) and the id of the save
                             (pair_id). Enough to sample.
    run.train.a.safetensors  (or run.train.b.safetensors) AdamW's moments as m.<name> and
                             v.<name>, the optimizer's scalars (JSON), the training loop's
                             train_state (JSON), the same step, pair_id and checksums.

Why a kill at any instant leaves a matching pair on disk. The model file is the commit
point: it is replaced by one atomic rename, so it is always a whole file, old or new. The
companion has two slots, and a save writes the optimizer state into the slot that the model
file on disk does *not* name, completely (temporary file, fsync, rename, directory fsync),
before it renames the new model file into place; only after that rename does it delete the
slot that the model file no longer names. So the slot named by whichever model file is on
disk is never touched while that model file is there: before the model rename it is the
previous save's pair, after it the new one. Loading checks that the two files carry the
same step and pair_id.

Every problem on loading is one CheckpointError line naming the file, the problem and the
fix: a cut or damaged file, flipped bytes in a tensor (its checksum), a tensor that is not
of the saved float dtype, metadata of the wrong type or out of range, a config that does
not match the tensors present (checked before anything is built).

Files of format_version 1 (a companion always named run.train.safetensors, no checksums)
still load. This is not a general serialiser: it knows one model, one tokenizer and AdamW.
"""

import json
import math
import os
import uuid
import zlib

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from tinygrad_char.backend import get_array_module
from tinygrad_char.errors import UserError
from tinygrad_char.model import GPT, GPTConfig, param_shapes
from tinygrad_char.training.tokenizer import CharTokenizer

FORMAT = "tinygrad_char.training.checkpoint"
TRAIN_FORMAT = "tinygrad_char.train_state"
FORMAT_VERSION = "2"  # 2: checksums, two companion slots named by the model file
READ_VERSIONS = ("1", "2")
OPTIMIZER_KEYS = ("step", "lr", "betas", "eps", "weight_decay")  # AdamW's scalars
SAFETENSORS_DTYPES = {"F32": "float32", "F64": "float64"}  # what a checkpoint may hold
DAMAGED = "the file is damaged; use an earlier checkpoint"
MAX_STEP = 2**63 - 1  # the largest step a checkpoint may hold (an int64)


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be written or read; the message names the file and the fix."""


class SaveError(CheckpointError, OSError):
    """A save could not be written (the disk filled, ...): a CheckpointError whose one line
    says what was kept, and still an OSError for code that catches those."""


def _base(path):
    path = os.fspath(path)
    return path[:-len(".safetensors")] if path.endswith(".safetensors") else path


def companion_slots(path):
    """The two optimizer-companion files a save of `path` alternates between."""
    return _base(path) + ".train.a.safetensors", _base(path) + ".train.b.safetensors"


def train_state_path(path):
    """The optimizer companion that the model file `path` names (format_version 1 files:
    run.train.safetensors), or None when it names none or cannot be read."""
    try:
        meta = _read_meta(os.fspath(path), FORMAT)
    except CheckpointError:
        return None
    return _companion_of(os.fspath(path), meta)


def _companion_of(path, meta):
    if meta["format_version"] == "1":
        return _base(path) + ".train.safetensors"
    name = meta.get("train_file", "")
    return os.path.join(os.path.dirname(path), name) if name else None


# -- writing ------------------------------------------------------------------------------
def _fsync_dir(path):
    try:  # make a rename durable; directories cannot be opened on Windows
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_atomic(path, tensors, metadata):
    """Write one safetensors file so that `path` is always either the old or the new file:
    bytes go to path + ".tmp", are flushed and fsynced, then renamed over `path`. The
    metadata gains "checksums": the CRC-32 of each tensor's bytes."""
    metadata = dict(metadata, checksums=json.dumps({name: _crc(a) for name, a in
                                                    tensors.items()}))
    data = save(tensors, metadata=metadata)
    write_file_atomic(path, lambda f: f.write(data))
    _fsync_dir(path)


def write_file_atomic(path, write):
    """write(file) into path + ".tmp", flush and fsync it, then rename it over `path`, so
    that `path` is always either the old or the new file, never a half one."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _crc(a):
    return format(zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B")), "08x")


def save_checkpoint(path, model, tokenizer, step, optimizer=None, train_state=None,
                    run_info=None):
    """Save `model` (+ `tokenizer`, `step`) to `path`, and the optimizer's state with the
    JSON-serialisable `train_state` into a companion slot when `optimizer` is given (see
    the module docstring for why the pair survives a kill at any point). `run_info`: a
    JSON-serialisable dict about the run (the data it trained on, the number of ranks)
    kept in the model file's metadata as "run"."""
    path = os.fspath(path)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but "
                              f"config.vocab_size is {model.config.vocab_size}; save the "
                              f"tokenizer the model was built for")
    to_host = model.backend.to_numpy
    step = str(int(step))
    pair_id = uuid.uuid4().hex
    train_file = ""
    previous_step = _step_on_disk(path)
    written = []  # this save's companion, removed again if the model file is not replaced
    try:
        if optimizer is not None:
            previous = train_state_path(path) if os.path.exists(path) else None
            slot = next(s for s in companion_slots(path) if s != previous)
            state = optimizer.state_dict()
            tensors = {}
            for name in optimizer.params:
                tensors["m." + name] = to_host(state["m"][name])
                tensors["v." + name] = to_host(state["v"][name])
            scalars = {k: state[k] for k in OPTIMIZER_KEYS}
            written.append(slot)
            _write_atomic(slot, tensors, {
                "format": TRAIN_FORMAT, "format_version": FORMAT_VERSION, "step": step,
                "pair_id": pair_id, "optimizer": json.dumps(scalars),
                "train_state": json.dumps(train_state or {})})
            train_file = os.path.basename(slot)
        params = {name: to_host(p) for name, p in model.params.items()}  # tied: no lm_head
        _write_atomic(path, params, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
            "config": json.dumps(model.config.to_dict()),
            "tokenizer": json.dumps(tokenizer.to_dict()), "dtype": model.dtype,
            "train_file": train_file, "pair_id": pair_id, "run": json.dumps(run_info or {})})
    except OSError as e:  # a full disk, a quota, a vanished folder: the old pair is intact
        for name in written:  # the model file on disk does not name it: nothing reads it
            if os.path.exists(name):
                os.remove(name)
        raise SaveError(_save_failed(path, step, e, previous_step)) from None
    # committed: the companions this model file does not name are stale
    stale = [*companion_slots(path), _base(path) + ".train.safetensors"]
    for name in stale:
        if os.path.basename(name) != train_file and os.path.exists(name):
            os.remove(name)


def _step_on_disk(path):
    """The step of the checkpoint at `path`, or None when there is none (or it is unreadable)."""
    if not os.path.exists(path):
        return None
    try:
        return peek_checkpoint(path)["step"]
    except CheckpointError:
        return None


def _save_failed(path, step, error, previous_step):
    """The one line for a save that could not be written (the disk filled, ...)."""
    reason = error.strerror or str(error)
    kept = (f"the previous pair (step {previous_step}) is intact: free some space, then "
            f"continue with --resume {path}" if previous_step is not None
            else "no earlier checkpoint was saved; free some space and start again")
    return (f"{path}: saving step {step} failed ({reason}); what the failed save wrote was "
            f"removed, and {kept}")


def check_out_dir_free(out_dir, resume=None, overwrite=False):
    """Refuse (CheckpointError, one line) a run that would replace a checkpoint it does not
    resume: `out_dir` holds ckpt.safetensors, and `resume` is not that file, unless
    `overwrite`. Called before anything is read or written, so the pair stays as it was."""
    path = os.path.join(out_dir, "ckpt.safetensors")
    if overwrite or not os.path.exists(path):
        return
    if resume and os.path.exists(resume) and os.path.samefile(resume, path):
        return
    folder = out_dir.rstrip("/\\") + "/"
    step = _step_on_disk(path)
    what = f"a checkpoint at step {step}" if step is not None else \
        "a ckpt.safetensors that is not a readable checkpoint"
    if resume:
        raise CheckpointError(f"{folder} holds {what}, and this run resumes from another "
                              f"file; pass --overwrite to replace it, or choose another "
                              f"--out-dir")
    raise CheckpointError(f"{folder} holds {what}; pass --resume {path} to continue, or "
                          f"--overwrite to start over")


def check_resumable(path, model_config=None):
    """Check, without building anything, that `path` is a checkpoint a run can resume: a
    whole file of ours with its optimizer companion, and, when `model_config` is given (a
    function vocab_size -> GPTConfig: the architecture the run asks for, e.g.
    TrainConfig.model_config), the same architecture. Returns peek_checkpoint's dict;
    every problem is one CheckpointError line."""
    info = peek_checkpoint(path)
    if info["train_path"] is None:
        named = train_state_path(path)
        raise CheckpointError(f"{path}: no optimizer state saved with it"
                              f"{f' ({named} is missing)' if named else ''}; resuming needs "
                              f"it; start a fresh run instead")
    if model_config is not None:
        saved = GPTConfig.from_dict(info["config"]).to_dict()
        wanted = model_config(saved["vocab_size"]).to_dict()  # the data's vocabulary: later
        diff = {k: (v, wanted.get(k)) for k, v in saved.items() if wanted.get(k) != v}
        if diff:
            raise CheckpointError(f"--resume {path}: the checkpoint's architecture differs "
                                  f"from this run's (checkpoint, run): {diff}; resume with "
                                  f"the same settings or start a new run")
    return info


# -- reading ------------------------------------------------------------------------------
def _read_file(path, whole=True):
    """(header, data): the parsed JSON header of a safetensors file and, when `whole`, all
    its bytes (else None), after checking the file is whole: its size must be 8 (header
    length) + header + the end of the last tensor's data."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; pass the "
                              f"ckpt.safetensors inside it")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; check the path (or train first)")
    broken = f"{path}: truncated or corrupt safetensors file"
    fix = "the save was interrupted or the file damaged; use an earlier checkpoint"
    with open(path, "rb") as f:
        data = f.read() if whole else None
        size = len(data) if whole else os.fstat(f.fileno()).st_size
        prefix = data[:8] if whole else f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        # a safetensors file opens with its header's length and then the JSON header: a
        # file with neither (a text file, a torch .pt) was never a checkpoint at all
        first = (data[8:9] if whole else f.read(1)) if n else b""
        if size > 8 and first != b"{" and (not n or 8 + n > size):
            raise CheckpointError(f"{path}: not a safetensors checkpoint ({size} bytes that do "
                                  f"not start like one); pass the ckpt.safetensors a training "
                                  f"run wrote")
        if n is None or 8 + n > size:
            raise CheckpointError(f"{broken} (header cut short, {size} bytes); {fix}")
        text = first + (data[9:8 + n] if whole else f.read(n - 1))
    try:
        header = json.loads(text)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = 0
        for name, t in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(t, dict) or not all(k in t for k in ("dtype", "shape",
                                                                     "data_offsets")):
                raise ValueError(f"tensor {name!r} lacks dtype, shape or data_offsets")
            shape, offsets = t["shape"], t["data_offsets"]
            if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                    and isinstance(offsets, list) and len(offsets) == 2
                    and all(type(o) is int and o >= 0 for o in offsets)):
                raise ValueError(f"tensor {name!r} has a malformed shape or data_offsets")
            end = max(end, offsets[1])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{broken} (unreadable header: {str(e)[:80]}); {fix}") from None
    if size != 8 + n + end:
        raise CheckpointError(f"{broken} ({size} bytes, the header says {8 + n + end}); {fix}")
    return header, data


def _read_meta(path, fmt, header=None):
    """The metadata of our file `path` of format `fmt`, with format and version checked."""
    if header is None:
        header = _read_file(path, whole=False)[0]
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: the safetensors metadata is not a map of strings; "
                              f"{DAMAGED}")
    if meta.get("format") != fmt:
        raise CheckpointError(f"{path}: not a tinygrad_char checkpoint (format "
                              f"{meta.get('format')!r}, expected {fmt!r}); pass a file "
                              f"written by tinygrad_char's save_checkpoint")
    if meta.get("format_version") not in READ_VERSIONS:
        raise CheckpointError(f"{path}: unsupported format_version "
                              f"{meta.get('format_version')!r} (this version reads "
                              f"{', '.join(READ_VERSIONS)}); use the tinygrad_char that "
                              f"wrote it")
    return meta


def _json_field(path, meta, key):
    try:
        return json.loads(meta[key])
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: metadata {key!r} is missing or not valid JSON "
                              f"({str(e)[:80]}); {DAMAGED}") from None


def _step(path, meta):
    text = meta.get("step")
    # ASCII digits only (no sign, no point), and no more than an int64 holds: a larger
    # step is no run's, and would overflow the schedule and the step seeds
    if not isinstance(text, str) or not (text.isascii() and text.isdigit()) \
            or len(text) > 19 or int(text) > MAX_STEP:
        shown = repr(text) if not isinstance(text, str) or len(text) <= 40 else \
            repr(text[:40]) + "..."
        raise CheckpointError(f"{path}: metadata 'step' is {shown}, not a non-negative "
                              f"integer (at most 2**63 - 1); {DAMAGED}")
    return int(text)


def _load_tensors(path, header, data, meta, dtype, verify=True):
    """The tensors of the file, after checking each one's dtype is `dtype` and, for
    format_version 2 with `verify`, that its bytes still have the CRC-32 saved with them."""
    for name, t in header.items():
        if name != "__metadata__" and SAFETENSORS_DTYPES.get(t.get("dtype")) != dtype:
            raise CheckpointError(f"{path}: tensor {name!r} is stored as {t.get('dtype')}, "
                                  f"but this checkpoint's tensors are {dtype}; "
                                  f"{DAMAGED}")
    if verify and meta["format_version"] != "1":
        checksums = _json_field(path, meta, "checksums")
        if not isinstance(checksums, dict):
            raise CheckpointError(f"{path}: metadata 'checksums' is not a map; {DAMAGED}")
        start = 8 + int.from_bytes(data[:8], "little")
        view = memoryview(data)
        for name, t in header.items():
            if name == "__metadata__":
                continue
            lo, hi = t["data_offsets"]
            crc = format(zlib.crc32(view[start + lo:start + hi]), "08x")
            if checksums.get(name) != crc:
                raise CheckpointError(f"{path}: tensor {name!r} fails its checksum (its "
                                      f"bytes changed after the save); {DAMAGED}")
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file "
                              f"({str(e).splitlines()[0]}); use an earlier checkpoint") from None


def _check_tensors(path, header, shapes, what):
    """Same names as `shapes`, with the same shapes (read from the header: nothing is
    allocated for a file that does not match)."""
    names = set(header) - {"__metadata__"}
    missing = sorted(set(shapes) - names)
    extra = sorted(names - set(shapes))
    if missing or extra:
        raise CheckpointError(f"{path}: tensors do not match {what} (missing {missing[:4]}, "
                              f"extra {extra[:4]}); load it with the config it was saved with")
    for name, shape in shapes.items():
        if tuple(header[name]["shape"]) != tuple(shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape "
                                  f"{tuple(header[name]['shape'])} but {what} needs "
                                  f"{tuple(shape)}; the file is damaged or from another model")


def _check_finite(path, tensors):
    for name, value in tensors.items():
        if not np.isfinite(value).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or inf (training "
                                  f"diverged before this save); use an earlier checkpoint")


def _peek(path, whole=True):
    """(peek_checkpoint's dict, header, file bytes (None unless `whole`), metadata)."""
    path = os.fspath(path)
    header, data = _read_file(path, whole)
    meta = _read_meta(path, FORMAT, header)
    config = _json_field(path, meta, "config")
    try:
        if not isinstance(config, dict):
            raise TypeError("not a JSON object")
        GPTConfig.from_dict(config)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{path}: invalid config in the checkpoint ({str(e)[:120]}); "
                              f"the file is damaged or from an incompatible version") from None
    if meta.get("dtype") not in SAFETENSORS_DTYPES.values():
        raise CheckpointError(f"{path}: metadata 'dtype' is {meta.get('dtype')!r}, expected "
                              f"'float32' or 'float64'; the file is damaged")
    companion = _companion_of(path, meta)
    info = {"path": path, "format_version": meta["format_version"], "step": _step(path, meta),
            "config": config, "tokenizer": _json_field(path, meta, "tokenizer"),
            "dtype": meta["dtype"], "pair_id": meta.get("pair_id"),
            "run": _json_field(path, meta, "run") if "run" in meta else {},
            "train_path": companion if companion and os.path.exists(companion) else None}
    return info, header, data, meta


def peek_checkpoint(path):
    """The metadata of a checkpoint without building the model:
    {path, format_version, step, config (dict), tokenizer (dict), dtype, pair_id, run
    (dict: save_checkpoint's run_info), train_path}. train_path is the optimizer companion's
    path, or None when there is none."""
    return _peek(path, whole=False)[0]


def load_checkpoint(path, backend="numpy", dtype=None, verify=True):
    """Build the saved model on `backend` (in `dtype`, default: the saved dtype; another
    float dtype is an explicit cast). `verify`: check every tensor's checksum (on by
    default; benchmarks/bench_checkpoint.py measures what it costs).

    Returns (model, tokenizer, meta); meta is peek_checkpoint's dict."""
    info, header, data, meta = _peek(path)
    path = info["path"]
    config = GPTConfig.from_dict(info["config"])
    try:
        tokenizer = CharTokenizer.from_dict(info["tokenizer"])
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: invalid tokenizer in the checkpoint ({str(e)[:80]}); "
                              f"the file is damaged or from an incompatible version") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but "
                              f"config.vocab_size is {config.vocab_size}; the file is damaged")
    if config.n_layer > len(header):  # each layer has tensors: bounds param_shapes' loop
        raise CheckpointError(f"{path}: the config says {config.n_layer} layers but the file "
                              f"holds {len(header) - 1} tensors in all; {DAMAGED}")
    _check_tensors(path, header, param_shapes(config), "the saved config")
    tensors = _load_tensors(path, header, data, meta, info["dtype"], verify)
    _check_finite(path, tensors)
    model = GPT(config, backend=backend, dtype=dtype or info["dtype"])
    for name, value in tensors.items():  # xp.array copies onto the backend, in its dtype
        model.params[name] = model.xp.array(value, dtype=model.dtype)
    return model, tokenizer, info


def _check_scalars(path, scalars):
    """AdamW's saved scalars: the right keys, types and ranges."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not isinstance(scalars, dict) or set(scalars) != set(OPTIMIZER_KEYS):
        raise CheckpointError(f"{path}: optimizer metadata should hold {OPTIMIZER_KEYS}, "
                              f"got {str(scalars)[:80]}; {DAMAGED}")
    betas = scalars["betas"]
    problems = {
        "step": not (isinstance(scalars["step"], int) and not isinstance(scalars["step"], bool)
                     and scalars["step"] >= 0),
        "lr": not (number(scalars["lr"]) and scalars["lr"] >= 0),
        "betas": not (isinstance(betas, list) and len(betas) == 2
                      and all(number(b) and 0 <= b < 1 for b in betas)),
        "eps": not (number(scalars["eps"]) and scalars["eps"] > 0),
        "weight_decay": not (number(scalars["weight_decay"]) and scalars["weight_decay"] >= 0),
    }
    wanted = {"step": "an integer >= 0", "lr": "a finite number >= 0",
              "betas": "two numbers in [0, 1)", "eps": "a finite number > 0",
              "weight_decay": "a finite number >= 0"}
    for key, bad in problems.items():
        if bad:
            raise CheckpointError(f"{path}: optimizer {key} is {scalars[key]!r}, expected "
                                  f"{wanted[key]}; {DAMAGED}")


def load_training_state(path, optimizer, verify=True):
    """Restore `optimizer` (built over the loaded model's params) from the companion that
    the checkpoint `path` names; return the train_state dict saved with it. `verify`: as
    for load_checkpoint."""
    path = os.fspath(path)
    info = peek_checkpoint(path)
    train_path = info["train_path"]
    if train_path is None:
        named = train_state_path(path)
        raise CheckpointError(f"{named or path}: no optimizer state saved with {path}"
                              f"{' (the file is missing)' if named else ''}; resuming needs "
                              f"it (save with optimizer=...), or start a fresh run from the "
                              f"weights alone")
    header, data = _read_file(train_path)
    meta = _read_meta(train_path, TRAIN_FORMAT, header)
    if _step(train_path, meta) != info["step"] or meta.get("pair_id") != info["pair_id"]:
        raise CheckpointError(f"{train_path}: optimizer state is from step "
                              f"{_step(train_path, meta)} (save {meta.get('pair_id')}) but "
                              f"{path} is from step {info['step']} (save {info['pair_id']}); "
                              f"resume from a matching pair of files")
    scalars = _json_field(train_path, meta, "optimizer")
    _check_scalars(train_path, scalars)
    train_state = _json_field(train_path, meta, "train_state")
    if not isinstance(train_state, dict):
        raise CheckpointError(f"{train_path}: metadata 'train_state' is not a JSON object; "
                              f"{DAMAGED}")
    shapes = {}
    for name, p in optimizer.params.items():
        shapes["m." + name] = shapes["v." + name] = p.shape
    _check_tensors(train_path, header, shapes, "the optimizer's parameters")
    tensors = _load_tensors(train_path, header, data, meta, info["dtype"], verify)
    _check_finite(train_path, tensors)
    state = dict(scalars, m={}, v={})
    for name, p in optimizer.params.items():
        xp = get_array_module(p)
        state["m"][name] = xp.asarray(tensors["m." + name], dtype=p.dtype)
        state["v"][name] = xp.asarray(tensors["v." + name], dtype=p.dtype)
    optimizer.load_state_dict(state)
    return train_state
