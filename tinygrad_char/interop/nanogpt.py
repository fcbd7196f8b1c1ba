"""nanoGPT interop: a character-level nanoGPT checkpoint to ours, and ours to nanoGPT's.

nanoGPT (github.com/karpathy/nanoGPT) saves `ckpt.pt` as torch.save({"model": state_dict,
"model_args": {n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout},
"iter_num": ..., "config": {"dataset": ..., ...}, ...}) and a character vocabulary as
`meta.pkl` {"vocab_size", "itos", "stoi"}. Its parameter names and layouts are ours (we
borrowed them), so both directions are mostly checking.

Import (`import_state`; interop/nanogpt_io.py reads ckpt.pt): ckpt.pt + meta.pkl ->
our .safetensors checkpoint.
- the `_orig_mod.` prefix that torch.compile adds is stripped;
- `attn.bias` buffers (the causal mask, saved when flash attention is off) are dropped,
  after checking they are the causal mask;
- `lm_head.weight` is dropped when it equals `transformer.wte.weight` (nanoGPT ties
  them); a different one is kept, with tie_weights=False;
- the vocabulary becomes CharTokenizer(itos[0..V-1]) with ids mapping 1:1 (a meta.pkl
  written by our export names its unknown id, which becomes ours again);
- anything we cannot represent (other model_args, unknown or missing tensors, a vocabulary
  that is not one character per id, a vocab_size that differs from the vocabulary's, NaN)
  stops the conversion with one ConversionError line naming it.

Export (`export_state`; interop/nanogpt_io.py writes ckpt.pt): our checkpoint ->
ckpt.pt + meta.pkl that nanoGPT's unchanged `sample.py` loads (`torch.load`,
`GPTConfig(**model_args)`, a strict `load_state_dict`, meta.pkl from
`data/<config["dataset"]>/meta.pkl`). The state dict holds every key of
nanoGPT's GPT on PyTorch >= 2 (flash attention: no `attn.bias` buffers), with
`lm_head.weight` and `transformer.wte.weight` one shared tensor, as nanoGPT saves them.
Our reserved unknown id is an ordinary entry of itos/stoi (it decodes to U+FFFD) and
meta.pkl names it as "unk_id". Only what nanoGPT's GPT computes can be exported: learned
positions, pre-norm LayerNorm, mlp_ratio 4, tied head, GELU, no grouped-query heads.
There is no optimizer state in ckpt.pt: sample.py samples from it, but train.py cannot
resume from it (init_from="resume" also loads the optimizer). nanoGPT does not know that
the unknown id is reserved, so its sampling may emit it (printed as U+FFFD).

GELU: nanoGPT's MLP uses nn.GELU(), the exact form x * Phi(x) with the erf; our default
activation "gelu" is the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
(they differ by at most 4.7e-4, near x = 2.7). When GPTConfig offers "gelu_exact" (and it runs here:
`exact_gelu()` checks with a one-token forward), import picks it,
so the imported model computes what nanoGPT computed; otherwise import uses "gelu" and
warns (GeluApproximationWarning). Export of a "gelu_exact" model is exact; export of a
"gelu" model warns, because nanoGPT will run it with erf GELU. Either way the measured
max |logits difference| on a random batch is in the report: our forward against a
float64 reference forward of the same weights (our xp ops with nanoGPT's GELU, from
interop/nanogpt_io.py; the tests check it against PyTorch running nanoGPT's code)
with erf GELU (`max_diff_erf`) and with tanh GELU (`max_diff_tanh`); the one with our
activation must agree to float32 rounding, or the conversion stops (a bug to report).

What this module is: every step of both directions that plain Python and NumPy can do:
the checks and their one-line ConversionError messages, meta.pkl (read with an unpickler
that accepts plain data only, and written), the sniffing of a ckpt.pt file's format before
it is unpickled (`_check_torch_file`), nanoGPT's state dict of NumPy arrays <-> our params,
model_args <-> GPTConfig, the vocabulary <-> CharTokenizer, the ckpt dict that torch.save
is to write (NumPy arrays), and the comparison of logits against a reference forward that
the caller passes in. What it is not: it neither unpickles nor writes ckpt.pt (that is
interop/torch_file.py, without torch: the library never imports it) and has no reference
forward. Those are joined in interop/nanogpt_io.py, whose `import_nanogpt` and
`export_nanogpt` are the whole conversions (torch_file's restricted load unless
trust_pickle=True, its save, the float64 reference forward) built on `import_state` and
`export_state` here.
This is not a general converter: one architecture (nanoGPT's GPT), character
vocabularies only.
"""

import functools
import io
import os
import pickle
import re
import warnings
import zipfile

import numpy as np

from tinygrad_char.interop import torch_file
from tinygrad_char.training.checkpoint import load_checkpoint, save_checkpoint, write_file_atomic
from tinygrad_char.errors import UserError
from tinygrad_char.training.cli import check_output_path
from tinygrad_char.model import GPT, ConfigError, GPTConfig, param_shapes
from tinygrad_char.training.tokenizer import UNK_CHAR, CharTokenizer

NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
NANOGPT_MLP_RATIO = 4  # nanoGPT's MLP is fixed at 4 * n_embd
COMPILE_PREFIX = "_orig_mod."  # what torch.compile prepends to every state-dict key
ACTIVATION_KEY = "tinygrad_char_activation"  # our activation, in ckpt.pt's "config" on export
DEFAULT_DATASET = "tinygrad_char"  # sample.py reads data/<dataset>/meta.pkl
CHECK_BATCH = 4  # rows of the random batch the logits are compared on
MAX_CHECK_T = 256  # ... and at most this many positions (block_size when smaller)
AGREEMENT = 1e-4  # float32 forward vs float64 reference, same GELU: relative to the top logit
_DATASET_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class ConversionError(UserError, ValueError):
    """The checkpoint cannot be converted; the message says what and why."""


class GeluApproximationWarning(UserWarning):
    """One side computes GELU with the tanh approximation, the other with erf."""


@functools.lru_cache(maxsize=None)
def exact_gelu():
    """"gelu_exact" when GPTConfig offers the exact (erf) GELU and it runs here (a one-token
    forward of a tiny model: the erf may need an optional module), else None."""
    try:
        config = GPTConfig(vocab_size=2, block_size=1, n_layer=1, n_head=1, n_embd=2,
                           activation="gelu_exact")
        GPT(config).eval().forward(np.zeros((1, 1), dtype=np.int64))
    except (ConfigError, ImportError):
        return None
    return "gelu_exact"


def reference_gelu_mode(activation):
    """The GELU mode of a reference forward (torch's F.gelu `approximate`) for one of our
    activations: "none" (exact erf) or "tanh"."""
    return "none" if activation == "gelu_exact" else "tanh"


def check_output_file(path):
    """Refuse, before any work, an output file that cannot be written (ConversionError)."""
    check_output_path(None, path, ConversionError)


# -- reading meta.pkl ---------------------------------------------------------------------
class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: meta.pkl needs no more, and
    refusing every class keeps a hostile file from running code."""

    def find_class(self, module, name):
        raise ConversionError(f"meta.pkl refers to {module}.{name}; a nanoGPT meta.pkl holds "
                              f"only plain data (vocab_size, itos, stoi)")


def read_meta(path):
    """The CharTokenizer of meta.pkl: id i is itos[i]; with an "unk_id" entry (written by
    export_nanogpt), that last id is the reserved unknown id again."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(io.BytesIO(f.read())).load()
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file; check the path to meta.pkl") from None
    except IsADirectoryError:
        raise ConversionError(f"{path}: is a folder; pass the meta.pkl file inside it") \
            from None
    except OSError as e:
        raise ConversionError(f"{path}: {e.strerror}; check the path to meta.pkl") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on damaged bytes
        raise ConversionError(f"{path}: not a readable pickle ({type(e).__name__}: "
                              f"{str(e)[:100]}); pass the meta.pkl that nanoGPT's "
                              f"prepare.py wrote") from None
    if not isinstance(meta, dict) or "itos" not in meta:
        raise ConversionError(f"{path}: expected a dict with 'itos' (and 'stoi', 'vocab_size'), "
                              f"as nanoGPT's data/shakespeare_char/prepare.py writes")
    itos = meta["itos"]
    if not isinstance(itos, dict) or not itos or sorted(itos) != list(range(len(itos))):
        raise ConversionError(f"{path}: itos must map the ids 0..N-1 to characters")
    bad = {i: s for i, s in itos.items() if not isinstance(s, str) or len(s) != 1}
    if bad:
        shown = dict(list(bad.items())[:5])
        raise ConversionError(f"{path}: not a character-level vocabulary: ids {shown} are not "
                              f"single characters (a subword/BPE model cannot be represented)")
    chars = "".join(itos[i] for i in range(len(itos)))
    unk_id = meta.get("unk_id")
    if unk_id is not None and (unk_id != len(chars) - 1 or chars[-1] != UNK_CHAR):
        raise ConversionError(f"{path}: unk_id {unk_id!r} must be the last id "
                              f"({len(chars) - 1}) and decode to U+FFFD")
    stoi = {c: i for i, c in enumerate(chars)}
    if unk_id is not None:  # the unknown id's U+FFFD may also be a real character
        stoi = {c: i for i, c in enumerate(chars[:-1])}
        stoi.setdefault(UNK_CHAR, unk_id)
    if meta.get("stoi") is not None and meta["stoi"] != stoi:
        raise ConversionError(f"{path}: stoi is not the inverse of itos")
    if meta.get("vocab_size", len(chars)) != len(chars):
        raise ConversionError(f"{path}: vocab_size {meta['vocab_size']} but itos has "
                              f"{len(chars)} entries")
    try:
        if unk_id is not None:
            return CharTokenizer(chars[:-1], unk=True)
        return CharTokenizer(chars, unk=False)
    except ValueError as e:  # repeated characters
        raise ConversionError(f"{path}: {e}") from None


# -- reading ckpt.pt ----------------------------------------------------------------------
def _check_torch_file(path):
    """Refuse, with a line naming the problem, what is not a whole torch.save file; torch's
    own errors for these ("101", "[Errno 22]", "invalid load key") say too little."""
    if not os.path.exists(path):
        raise ConversionError(f"{path}: no such file; check the path to ckpt.pt")
    if os.path.isdir(path):
        raise ConversionError(f"{path}: is a folder; pass the ckpt.pt file inside it")
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        raise ConversionError(f"{path}: empty file; pass the ckpt.pt nanoGPT's train.py wrote")
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format (PyTorch >= 1.6)
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ConversionError(f"{path}: truncated or damaged (the zip archive torch.save "
                                  f"writes is incomplete: {e}); copy the file again or use an "
                                  f"earlier checkpoint") from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise ConversionError(f"{path}: a zip archive but not a torch.save file (no "
                                  f"data.pkl inside); pass nanoGPT's ckpt.pt")
        return
    if head.startswith(torch_file.LEGACY_MAGIC):
        raise ConversionError(f"{path}: {torch_file.LegacyFormat()}")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ConversionError(f"{path}: not a PyTorch checkpoint (a pickle, but not one "
                              f"torch.save writes); pass the ckpt.pt nanoGPT's train.py wrote")
    try:
        text = head.decode("utf-8")
        is_text = "\x00" not in text
    except UnicodeDecodeError as e:
        is_text = e.start > len(head) - 4 and "\x00" not in head[:e.start].decode("utf-8")
    kind = "a text file" if is_text else f"starts with bytes {head[:8].hex(' ')}"
    raise ConversionError(f"{path}: not a PyTorch checkpoint ({kind}, neither the zip archive "
                          f"nor the pickle torch.save writes); pass the ckpt.pt nanoGPT's "
                          f"train.py wrote")


def _first_line(e, limit=200):
    """'Type: first line of the message' of an exception, cut to `limit` characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__)[:limit]


def ckpt_load_error(path, e, trust_pickle=False):
    """The one-line ConversionError for the exception `e` that reading ckpt.pt
    (torch_file.load, tensors and plain data only unless trust_pickle) raised; the caller
    raises it `from None`."""
    if isinstance(e, torch_file.UnsupportedObject):
        if trust_pickle:  # a class of torch's own: only PyTorch can rebuild it
            return ConversionError(f"{path}: holds {e.name}, a PyTorch object beyond tensors "
                                   f"and plain data, which cannot be rebuilt without "
                                   f"PyTorch; save a checkpoint of plain tensors")
        return ConversionError(f"{path}: {e}; if you trust the file, pass --trust-pickle "
                               f"(it runs code from the file)")
    if isinstance(e, torch_file.LegacyFormat):
        return ConversionError(f"{path}: {e}")
    if isinstance(e, ModuleNotFoundError):  # trust_pickle: a class from a module not installed
        return ConversionError(f"{path}: unpickling needs the module {e.name!r}, which is not "
                               f"installed; install it or save a plain state dict")
    # anything else: a damaged zip member, a cut pickle, a view past its storage, ...
    return ConversionError(f"{path}: truncated, damaged or not a PyTorch checkpoint "
                           f"(unpickling failed: {_first_line(e)}); copy the file again or "
                           f"use an earlier checkpoint")


def _float64_array(value):
    """A NumPy floating-point array as float64; None for anything else."""
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float64)
    return None


def ckpt_contents(ckpt, path="ckpt.pt", to_numpy=_float64_array):
    """(state dict of float64 NumPy arrays without the compile prefix, model_args, iter_num,
    the run's config dict) of nanoGPT's unpickled ckpt.pt `ckpt` (named `path` in errors).
    `to_numpy(value)` turns one state-dict value into a float64 NumPy array, or None when it
    is not a float tensor; the default takes NumPy floating-point arrays (what
    torch_file.load gives for tensors)."""
    path = os.fspath(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("model_args"), dict):
        got = f"a dict with keys {list(ckpt)[:8]}" if isinstance(ckpt, dict) \
            else f"a {type(ckpt).__name__}"
        raise ConversionError(f"{path}: expected nanoGPT's {{'model': state_dict, "
                              f"'model_args': {{...}}, ...}}, got {got}; pass the ckpt.pt "
                              f"nanoGPT's train.py wrote")
    state = {}
    for key, value in ckpt["model"].items():
        key = key[len(COMPILE_PREFIX):] if key.startswith(COMPILE_PREFIX) else key
        array = to_numpy(value)
        if array is None:
            raise ConversionError(f"{path}: {key!r} is {getattr(value, 'dtype', type(value))}, "
                                  f"not a float tensor; a nanoGPT state dict holds float "
                                  f"tensors only")
        state[key] = array
    step = ckpt.get("iter_num", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConversionError(f"{path}: iter_num is {step!r}, expected a non-negative integer")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return state, dict(ckpt["model_args"]), step, config


# -- nanoGPT's tensors to ours and back (NumPy only) --------------------------------------
def check_vocab(model_args, tokenizer):
    """model_args' vocab_size must be the vocabulary's, one id per character."""
    V, n = model_args.get("vocab_size"), tokenizer.vocab_size
    if V == n:
        return
    if isinstance(V, bool) or not isinstance(V, int) or V < 1:
        raise ConversionError(f"model_args vocab_size is {V!r}, expected a positive integer "
                              f"(the number of ids in meta.pkl, {n})")
    if isinstance(V, int) and V > n:
        raise ConversionError(f"the model's vocab_size is {V} but meta.pkl has {n} ids (a GPT-2 "
                              f"BPE model, whose vocabulary nanoGPT pads to 50304, or the "
                              f"meta.pkl of another data set); only character-level "
                              f"checkpoints, with the meta.pkl of their data, can be converted")
    raise ConversionError(f"meta.pkl has {n} ids but the model's vocab_size is {V}: this "
                          f"meta.pkl is from another data set; pass the meta.pkl of the data "
                          f"the model was trained on")


def nanogpt_config(model_args, activation, mlp_ratio=NANOGPT_MLP_RATIO, tie_weights=True):
    """Our GPTConfig for nanoGPT's model_args (its GPT: learned positions, pre-norm)."""
    unknown = sorted(set(model_args) - set(NANOGPT_ARGS))
    if unknown:
        raise ConversionError(f"model_args has fields we cannot represent: {unknown} (we know "
                              f"{list(NANOGPT_ARGS)})")
    try:
        return GPTConfig(vocab_size=model_args.get("vocab_size"),
                         block_size=model_args.get("block_size"),
                         n_layer=model_args.get("n_layer"), n_head=model_args.get("n_head"),
                         n_embd=model_args.get("n_embd"), mlp_ratio=mlp_ratio,
                         dropout=float(model_args.get("dropout", 0.0)),
                         bias=bool(model_args.get("bias", True)), activation=activation,
                         pos_encoding="learned", norm="pre", tie_weights=tie_weights)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise ConversionError(f"model_args cannot be represented: {e}") from None


def to_ours(state, model_args, tokenizer, activation):
    """(GPTConfig, params dict in float64, notes) from nanoGPT's state dict and args."""
    check_vocab(model_args, tokenizer)
    notes = []
    state = dict(state)
    masks = [k for k in state if k.endswith(".attn.bias") and state[k].ndim == 4]
    for key in masks:  # nanoGPT's registered causal mask, (1, 1, block_size, block_size)
        mask = state.pop(key)[0, 0]
        if not np.array_equal(mask, np.tril(np.ones_like(mask))):
            raise ConversionError(f"{key} is not the causal mask; a different attention "
                                  f"pattern cannot be represented")
    if masks:
        notes.append(f"dropped {len(masks)} attn.bias buffers (the causal mask)")

    C = model_args.get("n_embd")
    c_fc = state.get("transformer.h.0.mlp.c_fc.weight")
    mlp_ratio = c_fc.shape[0] // C if c_fc is not None and isinstance(C, int) and C > 0 \
        else NANOGPT_MLP_RATIO
    wte = state.get("transformer.wte.weight")
    head = state.get("lm_head.weight")
    tied = head is None or (wte is not None and head.shape == wte.shape
                            and np.array_equal(head, wte))
    if tied and head is not None:
        del state["lm_head.weight"]
        notes.append("dropped lm_head.weight (tied to transformer.wte.weight)")
    elif not tied:
        notes.append("lm_head.weight differs from wte: kept, tie_weights=False")
    config = nanogpt_config(model_args, activation, mlp_ratio, tied)

    expected = param_shapes(config)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ConversionError(f"the state dict does not match a nanoGPT GPT with {model_args} "
                              f"(missing {missing[:8]}, unexpected {extra[:8]}); other "
                              f"architectures cannot be represented")
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise ConversionError(f"{name} has shape {state[name].shape}, expected {shape}")
        if not np.isfinite(state[name]).all():
            raise ConversionError(f"{name} holds NaN or inf; convert an earlier checkpoint")
    return config, {name: state[name] for name in expected}, notes


def to_nanogpt(params, config, tokenizer):
    """(state dict, model_args, meta) in nanoGPT's form from our float params (NumPy):
    the state dict has lm_head.weight as the very array of transformer.wte.weight (tied);
    meta is meta.pkl's dict, the unknown id (when the tokenizer has one) included."""
    if config.activation not in ("gelu", "gelu_exact"):
        raise ConversionError(f"activation {config.activation!r} cannot be represented: "
                              f"nanoGPT's MLP is GELU; export a model trained with GELU")
    if not config.tie_weights:
        raise ConversionError("tie_weights is false: nanoGPT's GPT always ties lm_head to wte, "
                              "so an untied model cannot be represented")
    model_args = {"n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
                  "block_size": config.block_size, "bias": config.bias,
                  "vocab_size": config.vocab_size, "dropout": float(config.dropout)}
    ours, theirs = config.to_dict(), nanogpt_config(model_args, config.activation).to_dict()
    differ = {k: v for k, v in ours.items() if theirs.get(k) != v}
    if differ:  # any field nanoGPT's GPT has no counterpart for (positions, norm, ...)
        needs = {k: theirs.get(k) for k in differ}
        raise ConversionError(f"config {differ} cannot be represented in nanoGPT, whose GPT "
                              f"needs {needs}")
    missing = sorted(set(param_shapes(config)) - set(params))
    if missing:
        raise ConversionError(f"params are missing {missing[:8]}")
    state = {name: np.asarray(params[name], dtype=np.float32) for name in param_shapes(config)}
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied: one tensor, two keys
    itos = dict(enumerate(tokenizer.chars))
    stoi = {c: i for i, c in itos.items()}
    meta = {"vocab_size": tokenizer.vocab_size, "itos": itos, "stoi": stoi}
    if tokenizer.unk:  # an ordinary entry to nanoGPT: decodes to U+FFFD
        itos[tokenizer.unk_id] = UNK_CHAR
        stoi.setdefault(UNK_CHAR, tokenizer.unk_id)
        meta["unk_id"] = tokenizer.unk_id
    return state, model_args, meta


# -- checking a conversion against a reference forward -------------------------------
def compare_with_reference(model, params, reference_logits):
    """The max |logits difference| between `model`'s forward and the reference forward
    `reference_logits(params, config, idx, approximate)` (nanoGPT's, in float64; `approximate`
    is "none" for erf GELU, "tanh" for ours, as torch's F.gelu; interop/nanogpt_io.py
    has one) on a random batch, with erf and with tanh GELU; stops when the GELU
    that `model` computes does not agree to float32 rounding (the conversion would be
    wrong)."""
    config = model.config
    rng = np.random.default_rng(0)
    idx = rng.integers(0, config.vocab_size, size=(CHECK_BATCH,
                                                   min(config.block_size, MAX_CHECK_T)))
    try:
        ours = model.backend.to_numpy(model.eval().forward(idx)[0]).astype(np.float64)
    except ImportError as e:  # an optional module of one activation (e.g. the erf's)
        raise ConversionError(str(e)) from None
    diffs = {mode: float(np.abs(ours - reference_logits(params, config, idx, mode)).max())
             for mode in ("none", "tanh")}
    scale = float(np.abs(ours).max()) or 1.0
    same = diffs[reference_gelu_mode(config.activation)]
    if not same <= AGREEMENT * scale:
        raise ConversionError(f"the converted model disagrees with the float64 reference "
                              f"forward of the same weights ({config.activation}: max |logits "
                              f"difference| {same:.2e}, largest logit {scale:.2f}); please "
                              f"report this")
    return {"max_diff_erf": diffs["none"], "max_diff_tanh": diffs["tanh"],
            "max_abs_logit": scale, "check_shape": list(idx.shape)}


def _gelu_message(direction, report):
    return (f"{direction}: logits differ slightly: max |difference| {report['max_diff_erf']:.2e} "
            f"on a random {tuple(report['check_shape'])} batch (largest logit "
            f"{report['max_abs_logit']:.2f}); with tanh GELU on both sides "
            f"{report['max_diff_tanh']:.2e}")


# -- the two directions -------------------------------------------------------------------
def _warn_gelu(direction, report):
    warnings.warn(_gelu_message(direction, report), GeluApproximationWarning, stacklevel=3)


def import_state(ckpt, tokenizer, out_path, reference_logits, ckpt_path="ckpt.pt",
                 to_numpy=_float64_array, dtype="float32", activation=None):
    """Convert nanoGPT's unpickled ckpt.pt `ckpt` (see ckpt_contents for `ckpt_path` and
    `to_numpy`), with the vocabulary `tokenizer` (read_meta), into our checkpoint `out_path`
    (check it with check_output_file before reading anything); return a report: config,
    step, activation, notes, and compare_with_reference's figures against
    `reference_logits`.

    activation None: what an export of ours recorded, else exact_gelu() when available
    (nanoGPT's GELU, no warning), else "gelu" with a GeluApproximationWarning."""
    out_path = os.fspath(out_path)
    state, model_args, step, run_config = ckpt_contents(ckpt, ckpt_path, to_numpy)
    known = [a for a in (exact_gelu(), "gelu") if a is not None]
    if activation is None:
        recorded = run_config.get(ACTIVATION_KEY)
        activation = recorded if recorded in known else known[0]
    elif activation not in known:
        raise ConversionError(f"activation {activation!r}: nanoGPT's MLP is GELU, so import "
                              f"as one of {known}")
    config, params, notes = to_ours(state, model_args, tokenizer, activation)
    model = GPT(config, dtype=dtype).eval()
    for name, value in params.items():
        model.params[name] = model.xp.asarray(value, dtype=dtype)
    report = compare_with_reference(model, params, reference_logits)
    try:
        save_checkpoint(out_path, model, tokenizer, step)
    except OSError as e:
        raise ConversionError(f"{out_path}: cannot write ({e.strerror}); choose another "
                              f"output path") from None
    report.update(config=config.to_dict(), step=step, activation=activation, notes=notes)
    if activation == "gelu":
        _warn_gelu("nanoGPT's MLP uses exact-erf GELU (nn.GELU()); this import uses our tanh "
                   "approximation (gelu)", report)
    return report


def check_dataset_name(dataset):
    """sample.py reads data/<dataset>/meta.pkl: one plain folder name."""
    if not isinstance(dataset, str) or not _DATASET_NAME.fullmatch(dataset) \
            or dataset in (".", ".."):
        raise ConversionError(f"dataset {dataset!r}: must be one folder name of letters, "
                              f"digits, '_', '-' or '.' (sample.py reads "
                              f"data/<dataset>/meta.pkl), e.g. {DEFAULT_DATASET!r}")


def check_export_paths(out_dir, dataset=DEFAULT_DATASET, meta_path=None, force=False):
    """(out_dir, ckpt_path, meta_path) of an export, refused before any work when the
    dataset name or a path cannot be used: out_dir/ckpt.pt, and meta.pkl at `meta_path`
    (default out_dir/meta.pkl); out_dir may be missing when its parent exists; existing
    files are replaced only with force (the command's --overwrite)."""
    check_dataset_name(dataset)
    out_dir = os.fspath(out_dir)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    meta_path = os.fspath(meta_path) if meta_path is not None \
        else os.path.join(out_dir, "meta.pkl")
    check_output_path("--out-dir", out_dir, ConversionError, folder=True)
    for path in (ckpt_path, meta_path):
        if os.path.exists(path) and not force:
            raise ConversionError(f"{path}: exists (a nanoGPT run's checkpoint?); pass "
                                  f"--overwrite to replace it, or choose another --out-dir")
    if os.path.dirname(os.path.abspath(meta_path)) != os.path.abspath(out_dir):
        check_output_file(meta_path)
    return out_dir, ckpt_path, meta_path


def export_state(checkpoint_path, reference_logits, dataset=DEFAULT_DATASET):
    """(ckpt, vocab, report) for our checkpoint: `ckpt` is the dict torch.save is to write
    as nanoGPT's ckpt.pt, its "model" float32 NumPy arrays (lm_head.weight the very array of
    transformer.wte.weight: tied), `vocab` meta.pkl's dict, `report` model_args, step,
    unk_id, dataset, activation and compare_with_reference's figures against
    `reference_logits` (max_diff_erf is what nanoGPT's forward will differ by)."""
    model, tokenizer, meta = load_checkpoint(checkpoint_path, dtype="float32")
    params = {name: model.backend.to_numpy(p) for name, p in model.params.items()}
    state, model_args, vocab = to_nanogpt(params, model.config, tokenizer)
    report = compare_with_reference(model, params, reference_logits)
    ckpt = {"model": state, "model_args": model_args, "iter_num": meta["step"],
            "config": {"dataset": dataset, ACTIVATION_KEY: model.config.activation}}
    report.update(model_args=model_args, step=meta["step"], unk_id=tokenizer.unk_id,
                  dataset=dataset, activation=model.config.activation)
    return ckpt, vocab, report


def write_export(ckpt, vocab, out_dir, ckpt_path, meta_path, write_ckpt):
    """Write ckpt.pt with `write_ckpt(ckpt, f)` (f a binary file; the caller's torch.save)
    and meta.pkl (pickle of `vocab`), each atomically, creating out_dir when missing; an
    OSError becomes one ConversionError line."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        write_file_atomic(ckpt_path, lambda f: write_ckpt(ckpt, f))
        write_file_atomic(meta_path, lambda f: pickle.dump(vocab, f))
    except OSError as e:
        raise ConversionError(f"{e.filename or out_dir}: cannot write ({e.strerror}); choose "
                              f"another --out-dir") from None


def warn_export_gelu(report):
    """The GeluApproximationWarning of an export of a "gelu" (tanh) model: nanoGPT will
    compute erf GELU; nothing for "gelu_exact"."""
    if report["activation"] == "gelu":
        _warn_gelu("this model uses our tanh-approximation GELU (gelu); nanoGPT's MLP "
                   "computes exact-erf GELU (nn.GELU())", report)
