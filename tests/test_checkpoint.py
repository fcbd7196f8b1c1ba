"""Tests for tinygrad_char.training.checkpoint: round trips of every architecture variant and of the
optimizer state, atomic saves under a simulated crash, every way a file can be broken or
foreign (each must be one CheckpointError naming the problem), and PyTorch loading the
file as a nanoGPT state dict.

Broken files are made by cutting our own files or rewriting them with safetensors directly,
keeping our metadata, so each test breaks exactly one thing.
"""

import errno
import json
import os
import zlib

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from tinygrad_char import GPT, AdamW, GPTConfig
from tinygrad_char.training.checkpoint import (CheckpointError, SaveError, check_out_dir_free,
                                               check_resumable, load_checkpoint,
                                               load_training_state, peek_checkpoint,
                                               save_checkpoint, train_state_path)
from tinygrad_char.model import param_shapes
from tinygrad_char.training.tokenizer import CharTokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARS = "abcdefghij"
IDX = np.array([[1, 2, 3, 4, 5, 6, 7, 0], [0, 0, 1, 1, 2, 2, 3, 3]])  # (B, T) = (2, 8)
VARIANTS = {
    "tied": {},
    "untied": {"tie_weights": False},
    "no_bias": {"bias": False},
    "sinusoidal": {"pos_encoding": "sinusoidal"},
    "post_norm_relu": {"norm": "post", "activation": "relu", "tie_weights": False},
}


def make_tokenizer():
    return CharTokenizer(CHARS, unk=True)


def make_model(dtype="float32", seed=1, **overrides):
    """A tiny GPT whose every parameter is random, so a tensor left at its init (LayerNorm
    ones, zero biases) or swapped with another cannot pass a comparison by accident."""
    config = GPTConfig(vocab_size=make_tokenizer().vocab_size, block_size=8, n_layer=2,
                       n_head=2, n_embd=16, **overrides)
    model = GPT(config, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        model.params[name] = rng.standard_normal(p.shape).astype(dtype)
    return model


def eval_logits(model):
    model.eval()
    return model.forward(IDX)[0]


def read_file(path):
    """(tensors, metadata) of any safetensors file, read with safetensors itself."""
    with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def rewrite(path, edit, checksums=True):
    """Rewrite `path` after `edit(tensors, metadata)` changed them in place; with
    `checksums`, the tensors' checksums are recomputed so that only the edit is wrong."""
    tensors, meta = read_file(path)
    edit(tensors, meta)
    if checksums and "checksums" in meta:
        meta["checksums"] = json.dumps({k: format(zlib.crc32(np.ascontiguousarray(v).tobytes()),
                                                  "08x") for k, v in tensors.items()})
    save_file(tensors, path, metadata=meta)


def saved(tmp_path, model=None, step=5, with_optimizer=False):
    """Save `model` (default: a fresh one) to tmp_path/ckpt.safetensors; return the path."""
    model = model or make_model()
    path = str(tmp_path / "ckpt.safetensors")
    optimizer = AdamW(model.params) if with_optimizer else None
    save_checkpoint(path, model, make_tokenizer(), step, optimizer=optimizer,
                    train_state={"seed": 3})
    return path


# -- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_is_bit_identical(tmp_path, variant):
    model = make_model(**VARIANTS[variant])
    path = str(tmp_path / "ckpt.safetensors")
    save_checkpoint(path, model, make_tokenizer(), step=123)
    loaded, tokenizer, meta = load_checkpoint(path)

    assert loaded.config == model.config
    assert tokenizer.to_dict() == make_tokenizer().to_dict()
    assert meta["step"] == 123 and meta["dtype"] == "float32"
    assert meta["format_version"] == "2" and meta["config"] == model.config.to_dict()
    assert list(loaded.params) == list(model.params)
    for name, p in model.params.items():
        q = loaded.params[name]
        assert q.dtype == p.dtype and np.array_equal(q, p), f"{variant}: {name} differs"
    assert np.array_equal(eval_logits(loaded), eval_logits(model))
    with safe_open(path, framework="numpy") as f:  # a tied head is stored once, as wte
        assert ("lm_head.weight" in f.keys()) == (not model.config.tie_weights)


def test_float64_round_trip_and_dtype_override(tmp_path):
    model = make_model("float64")
    path = saved(tmp_path, model)
    loaded, _, meta = load_checkpoint(path)
    assert meta["dtype"] == "float64"
    for name, p in model.params.items():
        assert loaded.params[name].dtype == np.float64 and np.array_equal(loaded.params[name], p)
    as32, _, _ = load_checkpoint(path, dtype="float32")
    for name, p in model.params.items():
        assert as32.params[name].dtype == np.float32
        assert np.array_equal(as32.params[name], p.astype(np.float32)), name


def test_peek_reads_metadata_only(tmp_path):
    path = saved(tmp_path, step=42)
    meta = peek_checkpoint(path)
    assert meta["step"] == 42 and meta["tokenizer"] == make_tokenizer().to_dict()
    assert meta["config"] == make_model().config.to_dict() and meta["train_path"] is None
    path = saved(tmp_path, step=43, with_optimizer=True)
    assert peek_checkpoint(path)["train_path"] == train_state_path(path)
    assert train_state_path(path).endswith("ckpt.train.a.safetensors")
    # the next save goes to the other slot, and the one no longer named is removed
    path = saved(tmp_path, step=44, with_optimizer=True)
    assert train_state_path(path).endswith("ckpt.train.b.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors", "ckpt.train.b.safetensors"]


def test_run_info_is_kept_in_the_model_file(tmp_path):
    path = str(tmp_path / "ckpt.safetensors")
    save_checkpoint(path, make_model(), make_tokenizer(), 1,
                    run_info={"data": "a text", "world_size": 2})
    assert peek_checkpoint(path)["run"] == {"data": "a text", "world_size": 2}
    assert read_file(path)[1]["run"] == json.dumps({"data": "a text", "world_size": 2})


def test_optimizer_and_train_state_round_trip(tmp_path):
    model = make_model()
    opt = AdamW(model.params, lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1)
    model.train()
    for _ in range(2):
        model.forward(IDX, IDX)
        opt.step(model.backward())
    train_state = {"seed": 7, "best_val_loss": 1.25, "rng": [1, 2, 3], "run": {"lr": 3e-3}}
    path = str(tmp_path / "ckpt.safetensors")
    save_checkpoint(path, model, make_tokenizer(), step=2, optimizer=opt,
                    train_state=train_state)

    loaded, _, _ = load_checkpoint(path)
    opt2 = AdamW(loaded.params)  # defaults: every scalar must come from the file
    assert load_training_state(path, opt2) == train_state
    assert (opt2.step_count, opt2.lr, opt2.beta1, opt2.beta2, opt2.eps, opt2.weight_decay) \
        == (2, 3e-3, 0.8, 0.95, 1e-7, 0.1)
    for name in model.params:
        assert np.array_equal(opt2.m[name], opt.m[name]), f"m.{name}"
        assert np.array_equal(opt2.v[name], opt.v[name]), f"v.{name}"
    # one more step from either side must give the same parameters, bit for bit
    model.eval(), loaded.eval()
    model.forward(IDX, IDX)
    opt.step(model.backward())
    loaded.forward(IDX, IDX)
    opt2.step(loaded.backward())
    for name, p in model.params.items():
        assert np.array_equal(loaded.params[name], p), name


# -- atomic saves -----------------------------------------------------------------------------
@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch, crash_in):
    model = make_model()
    path = saved(tmp_path, model, step=1, with_optimizer=True)
    before = {name: open(tmp_path / name, "rb").read() for name in os.listdir(tmp_path)}

    def crash(*args):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, crash_in, crash)
    model.params["transformer.wte.weight"] += 1.0  # the new save would differ
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, model, make_tokenizer(), 2, optimizer=AdamW(model.params))
    monkeypatch.undo()

    after = {name: open(tmp_path / name, "rb").read() for name in os.listdir(tmp_path)}
    assert after == before  # same two files, same bytes, no temporary file left behind
    _, _, meta = load_checkpoint(path)
    assert meta["step"] == 1
    load_training_state(path, AdamW(make_model().params))


def test_save_interrupted_between_files_keeps_the_previous_pair(tmp_path, monkeypatch):
    """The companion goes into the slot the model file does not name, and is renamed into
    place first; a crash before the model file's rename leaves the previous pair whole."""
    model = make_model()
    path = saved(tmp_path, model, step=1, with_optimizer=True)
    real_replace, calls = os.replace, []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_crash)
    with pytest.raises(OSError):
        save_checkpoint(path, model, make_tokenizer(), 2, optimizer=AdamW(model.params))
    monkeypatch.undo()
    assert calls == [str(tmp_path / "ckpt.train.b.safetensors"), path]
    assert load_checkpoint(path)[2]["step"] == 1
    assert train_state_path(path).endswith("ckpt.train.a.safetensors")
    assert load_training_state(path, AdamW(make_model().params)) == {"seed": 3}
    # the next save completes, and resuming reads the new pair
    save_checkpoint(path, model, make_tokenizer(), 3, optimizer=AdamW(model.params))
    assert load_checkpoint(path)[2]["step"] == 3
    load_training_state(path, AdamW(make_model().params))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors", "ckpt.train.b.safetensors"]


def test_companion_of_another_save_is_refused(tmp_path):
    """A companion copied in from another save of the same step (a hand-made pair) is
    caught by the save id both files carry."""
    path = saved(tmp_path, step=4, with_optimizer=True)
    other = tmp_path / "other"
    other.mkdir()
    saved(other, step=4, with_optimizer=True)
    os.replace(other / "ckpt.train.a.safetensors", tmp_path / "ckpt.train.a.safetensors")
    with pytest.raises(CheckpointError, match="resume from a matching pair"):
        load_training_state(path, AdamW(make_model().params))


def test_format_version_1_still_loads(tmp_path):
    """Files of the first format: no checksums, the companion named run.train.safetensors."""
    path = saved(tmp_path, step=6, with_optimizer=True)
    legacy = str(tmp_path / "ckpt.train.safetensors")
    os.replace(tmp_path / "ckpt.train.a.safetensors", legacy)
    for file in (path, legacy):
        rewrite(file, lambda t, m: [m.pop(k) for k in ("checksums", "pair_id", "train_file")
                                    if k in m] and m.update(format_version="1"))
    assert train_state_path(path) == legacy
    assert load_checkpoint(path)[2]["step"] == 6
    assert load_training_state(path, AdamW(make_model().params)) == {"seed": 3}


def test_resume_without_companion_says_so(tmp_path):
    path = saved(tmp_path)
    with pytest.raises(CheckpointError, match="no optimizer state saved with .*resuming"):
        load_training_state(path, AdamW(make_model().params))


# -- broken files -----------------------------------------------------------------------------
def header_len(path):
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")


@pytest.mark.parametrize("where", ["length_prefix", "header", "data_middle", "last_byte"])
def test_truncated_file(tmp_path, where):
    path = saved(tmp_path)
    data = open(path, "rb").read()
    n = header_len(path)
    cut = {"length_prefix": 5, "header": 8 + n // 2, "data_middle": (8 + n + len(data)) // 2,
           "last_byte": len(data) - 1}[where]
    with open(path, "wb") as f:
        f.write(data[:cut])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert path in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):  # header-only read
        peek_checkpoint(path)


def test_truncated_companion(tmp_path):
    path = saved(tmp_path, with_optimizer=True)
    data = open(train_state_path(path), "rb").read()
    with open(train_state_path(path), "wb") as f:
        f.write(data[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_training_state(path, AdamW(make_model().params))


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:8] + b"\xff" * 8 + d[16:], "unreadable header"),  # garbage in the JSON
    (lambda d: b"\xff" * 8 + d[8:], "header cut short"),  # absurd header length
])
def test_corrupt_header(tmp_path, damage, message):
    path = saved(tmp_path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(damage(data))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(str(tmp_path / "nothing.safetensors"))
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(str(tmp_path))


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: t.pop("transformer.h.1.mlp.c_fc.weight"),
     r"missing \['transformer.h.1.mlp.c_fc.weight'\]"),
    (lambda t, m: t.update({"transformer.h.2.ln_1.weight": np.ones(16, np.float32)}),
     r"extra \['transformer.h.2.ln_1.weight'\]"),
    (lambda t, m: t.update({"transformer.wpe.weight": np.ones((4, 16), np.float32)}),
     r"'transformer.wpe.weight' has shape \(4, 16\) but the saved config needs \(8, 16\)"),
    (lambda t, m: t["transformer.ln_f.bias"].__setitem__(3, np.nan),
     r"'transformer.ln_f.bias' holds NaN"),
])
def test_tensors_must_match_config(tmp_path, edit, message):
    path = saved(tmp_path)
    rewrite(path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: m.clear(), "not a tinygrad_char checkpoint"),
    (lambda t, m: m.update(format="someone.else"), "not a tinygrad_char checkpoint"),
    (lambda t, m: m.update(format_version="3"), "unsupported format_version '3'"),
    (lambda t, m: m.update(config="{not json"), "'config' is missing or not valid JSON"),
    (lambda t, m: m.update(config=json.dumps(dict(json.loads(m["config"]), n_head=3))),
     "invalid config .*n_embd"),
    (lambda t, m: m.update(config=json.dumps(dict(json.loads(m["config"]), depth=3))),
     "invalid config .*unknown field"),
    (lambda t, m: m.update(step="five"), "'step' is 'five', not a non-negative integer"),
    (lambda t, m: m.update(step="-1"), "'step' is '-1', not a non-negative integer"),
    (lambda t, m: m.update(step="2.5"), "'step' is '2.5', not a non-negative integer"),
    (lambda t, m: m.pop("step"), "'step' is None, not a non-negative integer"),
    # more than an int64 holds: no run's step (and it would overflow the step seeds)
    (lambda t, m: m.update(step="99999999999999999999999"),
     "'step' is '99999999999999999999999', not a non-negative integer"),
    (lambda t, m: m.update(step=str(2**63)), "not a non-negative integer \\(at most 2\\*\\*63"),
    (lambda t, m: m.update(step="\u0661\u0662"), "not a non-negative integer"),  # Arabic digits
    (lambda t, m: m.update(config="[" * 100000 + "]" * 100000),
     "'config' is missing or not valid JSON"),
    (lambda t, m: m.update(config="[1, 2]"), "invalid config .*not a JSON object"),
    (lambda t, m: m.update(config=json.dumps(dict(json.loads(m["config"]), n_layer=10**30))),
     "the config says 10{30} layers but the file holds"),
    (lambda t, m: m.update(config=json.dumps(dict(json.loads(m["config"]), n_embd=2**40,
                                                  n_head=1))),
     "'transformer.wte.weight' has shape \\(11, 16\\) but the saved config needs"),
    (lambda t, m: m.update(dtype="int8"), "'dtype' is 'int8'"),
])
def test_metadata_is_checked(tmp_path, edit, message):
    path = saved(tmp_path)
    rewrite(path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("companion", [False, True])
def test_flipped_data_byte_fails_its_checksum(tmp_path, companion):
    """One byte changed inside a tensor's data: the header and size are intact, so only
    the checksum can tell; the message names the tensor."""
    path = saved(tmp_path, with_optimizer=True)
    target = train_state_path(path) if companion else path
    header, _ = read_file(target)
    name = sorted(header)[len(header) // 2]
    with open(target, "rb") as f:
        data = bytearray(f.read())
    start = 8 + header_len(target)
    offsets = json.loads(data[8:start])[name]["data_offsets"]
    data[start + (offsets[0] + offsets[1]) // 2] ^= 0x10
    with open(target, "wb") as f:
        f.write(data)
    load = (lambda: load_training_state(path, AdamW(make_model().params))) if companion \
        else (lambda: load_checkpoint(path))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' fails its checksum"):
        load()


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_, np.float16, np.float64])
def test_tensors_must_have_the_saved_dtype(tmp_path, dtype):
    """A float32 checkpoint holds float32 tensors only: an int, bool or other float tensor
    is refused rather than cast (casting is asked for with load_checkpoint(dtype=...))."""
    path = saved(tmp_path)
    rewrite(path, lambda t, m: t.update({"transformer.ln_f.weight":
                                         t["transformer.ln_f.weight"].astype(dtype)}))
    with pytest.raises(CheckpointError, match="'transformer.ln_f.weight' is stored as"):
        load_checkpoint(path)


def test_metadata_must_be_a_map_of_strings(tmp_path):
    path = saved(tmp_path)
    data = open(path, "rb").read()
    n = header_len(path)
    header = json.loads(data[8:8 + n])
    for bad in (True, ["x"], {"format": 1}):
        header["__metadata__"] = bad
        text = json.dumps(header).encode()
        with open(path, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text + data[8 + n:])
        with pytest.raises(CheckpointError, match="metadata is not a map of strings"):
            load_checkpoint(path)


@pytest.mark.parametrize("key, value, message", [
    ("betas", [0.9], "betas is \\[0.9\\], expected two numbers in"),
    ("betas", [2, 3], "betas is \\[2, 3\\]"),
    ("betas", None, "betas is None"),
    ("lr", -1, "lr is -1, expected a finite number >= 0"),
    ("lr", "0.1", "lr is '0.1'"),
    ("lr", None, "lr is None"),
    ("eps", -1, "eps is -1, expected a finite number > 0"),
    ("weight_decay", -1, "weight_decay is -1"),
    ("step", 2.5, "step is 2.5, expected an integer >= 0"),
    ("step", -3, "step is -3"),
    ("step", True, "step is True"),
])
def test_optimizer_scalars_are_checked(tmp_path, key, value, message):
    path = saved(tmp_path, with_optimizer=True)

    def edit(t, m):
        scalars = json.loads(m["optimizer"])
        scalars[key] = value
        m["optimizer"] = json.dumps(scalars)

    rewrite(train_state_path(path), edit)
    with pytest.raises(CheckpointError, match="optimizer " + message):
        load_training_state(path, AdamW(make_model().params))


def test_plain_safetensors_file_is_not_a_checkpoint(tmp_path):
    path = str(tmp_path / "weights.safetensors")
    save_file({"w": np.ones((2, 2), np.float32)}, path)
    with pytest.raises(CheckpointError, match="not a tinygrad_char checkpoint"):
        load_checkpoint(path)
    ours = saved(tmp_path, with_optimizer=True)  # the companion is no model checkpoint
    with pytest.raises(CheckpointError, match="not a tinygrad_char checkpoint"):
        load_checkpoint(train_state_path(ours))


def test_moments_must_match_optimizer(tmp_path):
    path = saved(tmp_path, with_optimizer=True)
    wider = GPT(GPTConfig(vocab_size=make_tokenizer().vocab_size, block_size=8, n_layer=2,
                          n_head=2, n_embd=32))
    with pytest.raises(CheckpointError, match=r"'m.transformer.wte.weight' has shape "
                                              r"\(11, 16\) but .* needs \(11, 32\)"):
        load_training_state(path, AdamW(wider.params))


def test_tokenizer_must_fit_the_model(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer has"):
        save_checkpoint(str(tmp_path / "x.safetensors"), make_model(),
                        CharTokenizer(CHARS[:5], unk=True), step=0)


# -- PyTorch ----------------------------------------------------------------------------------
def nanogpt_names(n_layer, tied):
    """nanoGPT's state-dict keys (with bias, learned positions), written out by hand. nanoGPT
    lists a tied head twice (also as lm_head.weight); we store the shared table once."""
    names = {"transformer.wte.weight", "transformer.wpe.weight",
             "transformer.ln_f.weight", "transformer.ln_f.bias"}
    for i in range(n_layer):
        for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names |= {f"transformer.h.{i}.{module}.weight", f"transformer.h.{i}.{module}.bias"}
    return names if tied else names | {"lm_head.weight"}


@pytest.mark.parametrize("tied", [True, False])
def test_pytorch_loads_nanogpt_state_dict(tmp_path, monkeypatch, tied):
    torch = pytest.importorskip("torch", reason="torch not installed: the PyTorch load "
                                                "check needs it")
    from safetensors.torch import load_file
    monkeypatch.syspath_prepend(REPO_ROOT)
    from benchmarks.torch_gpt import TorchGPT

    path = saved(tmp_path, make_model("float64", tie_weights=tied))
    state = load_file(path)
    assert set(state) == nanogpt_names(2, tied)
    assert set(state) == set(param_shapes(make_model(tie_weights=tied).config))
    loaded, _, _ = load_checkpoint(path)
    torch_model = TorchGPT(loaded.config, state, dtype=torch.float64).eval()
    with torch.no_grad():
        expected = torch_model(torch.as_tensor(IDX))[0].numpy()
    ours = eval_logits(loaded)
    rel = np.abs(ours - expected).max() / np.abs(expected).max()
    assert rel < 1e-10, f"logits differ from PyTorch's by {rel:.3e} (relative)"


# -- words for wrong files, damaged headers and full disks -------------------------------------
def test_a_file_that_is_no_safetensors_file_says_so(tmp_path):
    """README.md given as a checkpoint is not 'truncated': it never was one."""
    for name, data in [("README.md", open(os.path.join(REPO_ROOT, "README.md"), "rb").read()),
                       ("model.pt", b"PK\x03\x04" + bytes(200)), ("empty", b"x" * 9)]:
        path = tmp_path / name
        path.write_bytes(data)
        for read in (load_checkpoint, peek_checkpoint):
            with pytest.raises(CheckpointError) as err:
                read(str(path))
            message = str(err.value)
            assert message.startswith(f"{path}: not a safetensors checkpoint"), message
            assert "\n" not in message and "interrupted" not in message


def rewrite_header(path, edit):
    """Rewrite the JSON header of the safetensors file `path` after `edit(header)`; the
    tensors' bytes stay as they are (their offsets are relative to the header's end)."""
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data[8 + n:])


@pytest.mark.parametrize("damage", [
    lambda t: t.update(shapf=t.pop("shape")),  # the key itself damaged
    lambda t: t.pop("shape"),
    lambda t: t.update(shape="16"),
    lambda t: t.update(shape=[16, -1]),
    lambda t: t.update(shape=None),
    lambda t: t.update(data_offsets=[0]),
])
@pytest.mark.parametrize("companion", [False, True])
def test_a_damaged_tensor_entry_is_one_line_not_a_traceback(tmp_path, damage, companion):
    path = saved(tmp_path, with_optimizer=True)
    target = train_state_path(path) if companion else path
    rewrite_header(target, lambda h: damage(h[sorted(k for k in h if k != "__metadata__")[0]]))
    with pytest.raises(CheckpointError, match="unreadable header") as err:
        load_checkpoint(path)
        load_training_state(path, AdamW(make_model().params))
    assert target in str(err.value) and "\n" not in str(err.value)


def test_a_full_disk_keeps_the_previous_pair_and_says_how_to_resume(tmp_path, monkeypatch):
    """The model file's write fails with ENOSPC after the companion was written: the error
    names the file and the step, says the previous pair (its step) is intact and how to
    resume it; the companion the failed save wrote is removed, and every byte on disk is
    as before."""
    model = make_model()
    path = saved(tmp_path, model, step=1, with_optimizer=True)
    before = {name: open(tmp_path / name, "rb").read() for name in os.listdir(tmp_path)}
    real_fsync, written = os.fsync, []

    def fsync(fd):  # the write of a file is complete when it is fsynced
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else ""
        written.append(name)
        if name.endswith("ckpt.safetensors.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell which file is being written")
    model.params["transformer.wte.weight"] += 1.0
    with pytest.raises(SaveError) as err:
        save_checkpoint(path, model, make_tokenizer(), 2, optimizer=AdamW(model.params))
    monkeypatch.undo()
    assert any(w.endswith(".train.b.safetensors.tmp") for w in written), written  # it got there
    message = str(err.value)
    assert message == (f"{path}: saving step 2 failed (No space left on device); what the "
                       f"failed save wrote was removed, and the previous pair (step 1) is "
                       f"intact: free some space, then continue with --resume {path}")
    assert isinstance(err.value, OSError)  # code catching OSError still does
    after = {name: open(tmp_path / name, "rb").read() for name in os.listdir(tmp_path)}
    assert after == before  # no orphan companion slot, no temporary file
    assert check_resumable(path)["step"] == 1


def test_a_full_disk_on_the_first_save_says_nothing_was_saved(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    path = str(tmp_path / "ckpt.safetensors")
    model = make_model()
    with pytest.raises(SaveError, match="saving step 7 failed .No space left on device.; "
                                        ".*no earlier checkpoint was saved"):
        save_checkpoint(path, model, make_tokenizer(), 7, optimizer=AdamW(model.params))
    assert os.listdir(tmp_path) == []


# -- what a run checks before it reads any data ------------------------------------------------
def test_an_out_dir_holding_a_checkpoint_is_refused_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    check_out_dir_free(str(out))  # empty: fine
    path = saved(out, step=4, with_optimizer=True)
    with pytest.raises(CheckpointError) as err:
        check_out_dir_free(str(out))
    assert str(err.value) == (f"{out}/ holds a checkpoint at step 4; pass --resume {path} to "
                              f"continue, or --overwrite to start over")
    check_out_dir_free(str(out), resume=path)  # resuming it: fine
    check_out_dir_free(str(out) + "/", overwrite=True)  # starting over, said: fine
    other = saved(tmp_path, step=9)
    with pytest.raises(CheckpointError, match="resumes from another file; pass --overwrite"):
        check_out_dir_free(str(out), resume=other)


def test_check_resumable_wants_the_companion_and_the_same_architecture(tmp_path):
    (tmp_path / "a").mkdir()
    weights_only = saved(tmp_path / "a")
    with pytest.raises(CheckpointError, match="no optimizer state saved with it"):
        check_resumable(weights_only)
    (tmp_path / "b").mkdir()
    path = saved(tmp_path / "b", with_optimizer=True)
    config = make_model().config
    assert check_resumable(path, lambda vocab_size: config)["step"] == 5
    wider = GPTConfig(**dict(config.to_dict(), n_embd=32))
    with pytest.raises(CheckpointError, match=r"architecture differs .*'n_embd': \(16, 32\)"):
        check_resumable(path, lambda vocab_size: wider)
