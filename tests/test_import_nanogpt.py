"""The import direction (tinygrad_char.interop.nanogpt and its file half,
tinygrad_char/interop/nanogpt_io.py) and the import-nanogpt command, against the nanoGPT twin of
nanogpt_twin.py: models saved the way nanoGPT's train.py and prepare.py save (torch.save
of {'model', 'model_args', ...} plus a pickled meta.pkl), converted, loaded with
load_checkpoint, and compared logit for logit. With the same GELU on both
sides they agree to float32 rounding; with nanoGPT's exact-erf GELU against our tanh GELU
the difference is bounded and reported. Then a table of bad files through the command
line: one line naming the problem and the fix, exit status 2, no traceback. The vocabulary
and output-path checks need no torch; the files are made by torch.save (and the import
then runs with torch hidden too), so the rest is skipped, with the reason, without it."""

import argparse
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

from tinygrad_char.training.checkpoint import load_checkpoint
from tinygrad_char.training.tokenizer import CharTokenizer
from tinygrad_char.training.cli import run_cli
from tinygrad_char.interop.nanogpt import (ConversionError, GeluApproximationWarning,
                                           check_output_file, exact_gelu, import_state, read_meta,
                                           to_ours)

from conftest import REPO

from tinygrad_char.interop.nanogpt_io import import_nanogpt, reference_logits  # the files
from tinygrad_char.commands import import_nanogpt as importer  # the command

try:
    import torch

    import nanogpt_twin as twin
except ImportError:
    torch = twin = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed: nanoGPT "
                                                       "checkpoints are torch files "
                                                       "(pip install torch)")
needs_exact_gelu = pytest.mark.skipif(exact_gelu() is None,
                                      reason="this GPTConfig has no activation 'gelu_exact'")


CHARS = "\n !$&',-.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"  # 48 characters
ERF_TOLERANCE = 1e-2  # relative to the largest logit: the GELU forms differ by < 4.7e-4


def model_args(bias=True, vocab_size=len(CHARS)):
    return dict(n_layer=2, n_head=4, n_embd=32, block_size=16, bias=bias,
                vocab_size=vocab_size, dropout=0.0)


def write_meta(path, chars=CHARS, **extra):
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)),
            "stoi": {c: i for i, c in enumerate(chars)}, **extra}
    with open(path, "wb") as f:
        pickle.dump(meta, f)
    return str(path)


# -- without torch: meta.pkl, the vocabulary, the output path ------------------------------
def test_meta_becomes_a_tokenizer_without_unknown_id(tmp_path):
    tokenizer = read_meta(write_meta(tmp_path / "meta.pkl"))
    assert tokenizer.chars == CHARS and not tokenizer.unk and tokenizer.vocab_size == 48


@pytest.mark.parametrize("what,match", [
    ("subword", "not a character-level vocabulary"),
    ("class", "plain data"),
    ("random bytes", "not a readable pickle"),
    ("truncated", "not a readable pickle"),
    ("stoi", "stoi is not the inverse"),
    ("vocab_size", "vocab_size 49 but itos has 48"),
    ("missing", "no such file"),
    ("folder", "is a folder"),
    ("bad unk_id", "unk_id 3 must be the last id"),
])
def test_bad_meta_is_one_clear_error(tmp_path, what, match):
    path = tmp_path / "meta.pkl"
    write_meta(path)
    if what == "subword":
        itos = dict(enumerate(["th"] + list(CHARS[1:])))
        path.write_bytes(pickle.dumps({"itos": itos}))
    elif what == "class":
        path.write_bytes(pickle.dumps({"itos": dict(enumerate(CHARS)), "x": np.float64(1)}))
    elif what == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif what == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif what == "stoi":
        write_meta(path, stoi={"a": 0})
    elif what == "vocab_size":
        write_meta(path, vocab_size=49)
    elif what == "missing":
        path = tmp_path / "nope.pkl"
    elif what == "folder":
        path = tmp_path
    elif what == "bad unk_id":
        write_meta(path, unk_id=3)
    with pytest.raises(ConversionError, match=match) as e:
        read_meta(path)
    assert "\n" not in str(e.value)


def _state(args):
    """A nanoGPT state dict of the right shapes (NumPy), tied head."""
    from tinygrad_char.model import init_params
    from tinygrad_char.interop.nanogpt import nanogpt_config

    params = init_params(nanogpt_config(args, "gelu"))
    params["lm_head.weight"] = params["transformer.wte.weight"]
    return params


def test_meta_with_more_characters_than_the_model_names_the_meta(tmp_path):
    tokenizer = read_meta(write_meta(tmp_path / "meta.pkl", CHARS + "KLM"))
    with pytest.raises(ConversionError) as e:
        to_ours(_state(model_args()), model_args(), tokenizer, "gelu")
    message = str(e.value)
    assert "meta.pkl has 51 ids but the model's vocab_size is 48" in message
    assert "another data set" in message and "padded" not in message


def test_model_with_more_ids_than_meta_says_padded_gpt2(tmp_path):
    tokenizer = read_meta(write_meta(tmp_path / "meta.pkl"))
    args = model_args(vocab_size=64)
    with pytest.raises(ConversionError, match="GPT-2 BPE model, whose vocabulary nanoGPT "
                                              "pads to 50304"):
        to_ours(_state(args), args, tokenizer, "gelu")


def test_vocab_size_that_is_not_a_number(tmp_path):
    tokenizer = read_meta(write_meta(tmp_path / "meta.pkl"))
    args = dict(model_args(), vocab_size=None)
    with pytest.raises(ConversionError, match="vocab_size is None, expected a positive"):
        to_ours(_state(model_args()), args, tokenizer, "gelu")


def test_output_path_is_checked_before_any_work(tmp_path):
    with pytest.raises(ConversionError, match="does not exist; create it first"):
        check_output_file(tmp_path / "missing" / "out.safetensors")
    with pytest.raises(ConversionError, match="is a folder"):
        check_output_file(tmp_path)
    check_output_file(tmp_path / "fine.safetensors")  # no error


def _numpy_reference(params, config, idx, approximate):
    """A float64 forward of our own (the torch-free stand-in for PyTorch's reference)."""
    from tinygrad_char import GPT

    model = GPT(config, dtype="float64").eval()
    for name, value in params.items():
        model.params[name] = np.asarray(value, dtype=np.float64)
    return model.backend.to_numpy(model.forward(np.asarray(idx))[0])


def test_import_state_takes_numpy_arrays_without_torch(tmp_path):
    """The library half on its own: a ckpt dict of NumPy arrays (compile prefix included)
    becomes our checkpoint with the same parameters; a non-float entry is named."""
    args = model_args()
    state = _state(args)
    ckpt = {"model": {"_orig_mod." + k: v for k, v in state.items()}, "model_args": args,
            "iter_num": 9, "config": {"dataset": "shakespeare_char"}}
    tokenizer = read_meta(write_meta(tmp_path / "meta.pkl"))
    out = str(tmp_path / "n.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeluApproximationWarning)
        report = import_state(ckpt, tokenizer, out, _numpy_reference, activation="gelu")
    assert report["step"] == 9 and report["max_diff_tanh"] < 1e-5 * report["max_abs_logit"]
    model, back, meta = load_checkpoint(out)
    assert back == tokenizer and meta["step"] == 9 and meta["config"]["tie_weights"]
    for name, value in model.params.items():
        assert np.array_equal(value, state[name].astype(np.float32)), name
    ckpt["model"]["_orig_mod.transformer.ln_f.weight"] = np.ones(32, dtype=np.int32)
    with pytest.raises(ConversionError, match="'transformer.ln_f.weight' is int32, not a "
                                              "float tensor"):
        import_state(ckpt, tokenizer, str(tmp_path / "m.safetensors"), _numpy_reference)


# -- with torch: nanoGPT's files, converted and compared -----------------------------------
def build(args, approximate="none", seed=0, flash=True):
    torch.manual_seed(seed)
    model = twin.GPT(twin.GPTConfig(**args), approximate, flash).double().eval()
    with torch.no_grad():  # trained-like scales: the GELU sees inputs of order 1 (where
        for name, p in model.named_parameters():  # erf and tanh differ), LayerNorm gains
            p.normal_(0.0, 0.1)  # away from 1 and biases away from 0
            if name.endswith("c_fc.weight"):
                p.mul_(3.0)
            if p.ndim == 1 and name.endswith("weight"):
                p.add_(1.0)
    return model


def save_nanogpt(tmp_path, model, args, compiled=False, chars=CHARS):
    """ckpt.pt and meta.pkl as nanoGPT's train.py and prepare.py write them."""
    sd = model.float().state_dict()
    model.double()
    if compiled:
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    ckpt = {"model": sd, "optimizer": {}, "model_args": args, "iter_num": 250,
            "best_val_loss": torch.tensor(1.5), "config": {"dataset": "shakespeare_char"}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    return str(tmp_path / "ckpt.pt"), write_meta(tmp_path / "meta.pkl", chars)


def convert(tmp_path, *paths, activation="gelu"):
    """Import with `activation`; the tanh GELU must warn, the exact one must not."""
    out = str(tmp_path / "converted.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeluApproximationWarning)
        report = import_nanogpt(*paths, out, activation=activation)
    gelu_warnings = [w for w in caught if issubclass(w.category, GeluApproximationWarning)]
    assert len(gelu_warnings) == (1 if report["activation"] == "gelu" else 0), gelu_warnings
    if gelu_warnings:
        assert "erf" in str(gelu_warnings[0].message)
    return out, report


def compare(model, out):
    ours, tokenizer, meta = load_checkpoint(out)
    idx = np.random.default_rng(1).integers(0, len(CHARS), size=(3, 16))
    with torch.no_grad():
        theirs = model(torch.from_numpy(idx)).numpy()  # float64 reference
    logits = ours.forward(idx)[0].astype(np.float64)
    return float(np.abs(logits - theirs).max() / np.abs(theirs).max()), tokenizer, meta


@needs_torch
@needs_exact_gelu
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_reference_forward_is_nanogpts(approximate, bias):
    """nanogpt_io.reference_logits, our float64 xp forward that checks every conversion,
    computes nanoGPT's forward (PyTorch, nanoGPT's code) with either GELU."""
    args = model_args(bias)
    model = build(args, approximate=approximate)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    activation = "gelu_exact" if approximate == "none" else "gelu"
    config, params, _ = to_ours(state, args, CharTokenizer(CHARS, unk=False), activation)
    idx = np.random.default_rng(2).integers(0, len(CHARS), size=(3, 16))
    ours = reference_logits(params, config, idx, approximate)
    with torch.no_grad():
        theirs = model(torch.from_numpy(idx)).numpy()
    err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    assert ours.dtype == np.float64 and err < 1e-12, (approximate, bias, err)


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
def test_tanh_gelu_model_converts_exactly(tmp_path, bias):
    args = model_args(bias)
    model = build(args, approximate="tanh")
    out, report = convert(tmp_path, *save_nanogpt(tmp_path, model, args))
    err, tokenizer, meta = compare(model, out)
    assert err < 1e-5, f"bias={bias}: relative logits error {err:.2e} with tanh GELU"
    assert tokenizer.chars == CHARS and not tokenizer.unk and meta["step"] == 250
    assert meta["config"]["tie_weights"] and meta["config"]["bias"] == bias
    assert report["max_diff_tanh"] < 1e-5 * report["max_abs_logit"]


@needs_torch
def test_erf_gelu_difference_is_bounded_and_reported(tmp_path):
    args = model_args()
    model = build(args, approximate="none", flash=False)  # nanoGPT's nn.GELU(), mask buffers
    out, report = convert(tmp_path, *save_nanogpt(tmp_path, model, args, compiled=True))
    err, _, _ = compare(model, out)
    print(f"\nnanoGPT erf GELU vs our tanh GELU: relative logits difference {err:.2e}; "
          f"report: max |diff| {report['max_diff_erf']:.2e} (erf), "
          f"{report['max_diff_tanh']:.2e} (tanh), largest logit "
          f"{report['max_abs_logit']:.2f}")
    assert err < ERF_TOLERANCE, f"erf vs tanh GELU: relative logits difference {err:.2e}"
    assert report["max_diff_erf"] > 10 * report["max_diff_tanh"], report  # real, measured
    assert any("2 attn.bias" in n for n in report["notes"]), report["notes"]
    assert any("lm_head" in n for n in report["notes"])


@needs_torch
@needs_exact_gelu
def test_exact_gelu_import_matches_nanogpt_without_warning(tmp_path):
    args = model_args()
    model = build(args, approximate="none")
    out, report = convert(tmp_path, *save_nanogpt(tmp_path, model, args),
                          activation="gelu_exact")
    err, _, meta = compare(model, out)
    assert err < 1e-5 and meta["config"]["activation"] == "gelu_exact", err


@needs_torch
def test_default_activation_is_the_exact_gelu_when_available(tmp_path):
    args = model_args()
    model = build(args)
    _, report = convert(tmp_path, *save_nanogpt(tmp_path, model, args), activation=None)
    assert report["activation"] == (exact_gelu() or "gelu")


@needs_torch
def test_activation_other_than_gelu_is_refused(tmp_path):
    args = model_args()
    paths = save_nanogpt(tmp_path, build(args), args)
    with pytest.raises(ConversionError, match="nanoGPT's MLP is GELU"):
        import_nanogpt(*paths, str(tmp_path / "o.safetensors"), activation="relu")


@needs_torch
def test_untied_head_is_kept(tmp_path):
    args = model_args()
    model = build(args, approximate="tanh")
    with torch.no_grad():  # untie: a separate head
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone() + 0.05)
    out, report = convert(tmp_path, *save_nanogpt(tmp_path, model, args))
    err, _, meta = compare(model, out)
    assert not meta["config"]["tie_weights"] and err < 1e-5, err


@needs_torch
def test_script_main_reports_and_writes(tmp_path, capsys):
    args = model_args()
    paths = save_nanogpt(tmp_path, build(args), args)
    out = str(tmp_path / "m.safetensors")
    assert run_cli(importer.main, [*paths, out, "--activation", "gelu"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "erf" in captured.err
    assert "wrote" in captured.out and "activation gelu" in captured.out
    load_checkpoint(out)
    # the output exists now: refused in one line, its bytes kept, unless --overwrite
    before = open(out, "rb").read()
    assert run_cli(importer.main, [*paths, out, "--activation", "gelu"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out} exists; pass --overwrite to replace it, or choose another " \
                  f"path\n", err
    assert open(out, "rb").read() == before
    assert run_cli(importer.main, [*paths, out, "--activation", "gelu", "--overwrite"]) == 0


@needs_torch
@pytest.mark.parametrize("what,match", [
    ("unknown model arg", "cannot represent"),
    ("extra tensor", "unexpected"),
    ("missing tensor", "missing"),
    ("nan weight", "NaN"),
    ("int tensor", "not a float tensor"),
    ("not a mask", "not the causal mask"),
])
def test_refuses_what_it_cannot_represent(tmp_path, what, match):
    args = model_args()
    model = build(args, flash=what != "not a mask")
    if what == "unknown model arg":
        args = dict(args, n_kv_head=2)
    ckpt, meta = save_nanogpt(tmp_path, model, args)
    saved = torch.load(ckpt)
    sd = saved["model"]
    if what == "extra tensor":
        sd["transformer.h.0.attn.rotary.inv_freq"] = torch.ones(4)
    elif what == "missing tensor":
        del sd["transformer.h.1.mlp.c_fc.weight"]
    elif what == "nan weight":
        sd["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("nan")
    elif what == "int tensor":
        sd["transformer.ln_f.weight"] = torch.ones(32, dtype=torch.int32)
    elif what == "not a mask":
        sd["transformer.h.0.attn.bias"] = torch.ones_like(sd["transformer.h.0.attn.bias"])
    torch.save(saved, ckpt)
    with pytest.raises(ConversionError, match=match):
        import_nanogpt(ckpt, meta, str(tmp_path / "out.safetensors"))
    assert not (tmp_path / "out.safetensors").exists()


# -- bad files through the command line: one line, exit status 2, no traceback -------------
def _bad_ckpt(tmp_path, what, good):
    """A path to the bad ckpt.pt `what`, made from the good one."""
    path = tmp_path / "bad.pt"
    data = open(good, "rb").read()
    if what == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif what == "pickle-like bytes":  # the legacy format's first bytes, then garbage
        path.write_bytes(b"\x80\x02" + np.random.default_rng(0).bytes(5000))
    elif what == "text file":
        path.write_text("this is a text file, not a checkpoint\n" * 20)
    elif what in ("legacy", "truncated legacy"):  # torch.save's format before PyTorch 1.6
        legacy = tmp_path / "legacy.pt"
        torch.save(torch.load(good), legacy, _use_new_zipfile_serialization=False)
        cut = len(legacy.read_bytes()) // (2 if what == "truncated legacy" else 1)
        path.write_bytes(legacy.read_bytes()[:cut])
    elif what == "os.system":  # a hostile data.pkl: os.system("echo pwned")
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX\n\x00\x00\x00echo "
                                           b"pwned\x85R.")
            z.writestr("archive/version", b"3\n")
    elif what.startswith("truncated"):
        path.write_bytes(data[:int(len(data) * float(what.split()[1]))])
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "missing":
        path = tmp_path / "nope.pt"
    elif what == "folder":
        path = tmp_path
    elif what == "other zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    elif what == "a tensor, not a dict":
        torch.save(torch.ones(3), path)
    elif what in ("python object", "python object, trusted"):
        saved = torch.load(good)
        saved["config"] = argparse.Namespace(dataset="shakespeare_char")
        torch.save(saved, path)
    return str(path)


BAD_CKPTS = [  # what, flags, expected fragment, fragment that must not appear
    ("random bytes", [], "not a PyTorch checkpoint (starts with bytes", "--trust-pickle"),
    ("random bytes", ["--trust-pickle"], "not a PyTorch checkpoint", "--trust-pickle"),
    ("pickle-like bytes", [], "not a PyTorch checkpoint (a pickle, but not one torch.save",
     "--trust-pickle"),
    ("pickle-like bytes", ["--trust-pickle"], "not a PyTorch checkpoint (a pickle",
     "--trust-pickle"),
    ("text file", [], "not a PyTorch checkpoint (a text file", "101"),
    ("text file", ["--trust-pickle"], "not a PyTorch checkpoint (a text file", "101"),
    ("truncated 0.01", [], "truncated or damaged", "Errno"),
    ("truncated 0.5", [], "truncated or damaged", "Errno"),
    ("truncated 0.999", ["--trust-pickle"], "truncated or damaged", "Errno"),
    ("legacy", [], "legacy format (PyTorch < 1.6), which is not read here; re-save it with "
                   "PyTorch >= 1.6", "--trust-pickle"),
    ("truncated legacy", [], "legacy format (PyTorch < 1.6)", "--trust-pickle"),
    ("empty", [], "empty file", None),
    ("missing", [], "no such file", None),
    ("folder", [], "is a folder; pass the ckpt.pt file inside it", None),
    ("other zip", [], "not a torch.save file", None),
    ("a tensor, not a dict", [], "expected nanoGPT's", None),
    ("python object", [], "(argparse.Namespace); if you trust the file, pass --trust-pickle",
     None),
    ("os.system", [], "holds a Python object beyond tensors and plain data (os.system); if "
                      "you trust", "pwned"),
]


@needs_torch
@pytest.mark.parametrize("what,flags,fragment,absent", BAD_CKPTS)
def test_bad_ckpt_is_one_line(tmp_path, capsys, what, flags, fragment, absent):
    args = model_args()
    good, meta = save_nanogpt(tmp_path, build(args), args)
    bad = _bad_ckpt(tmp_path, what, good)
    assert run_cli(importer.main, [bad, meta, str(tmp_path / "o.safetensors"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err, err
    # what must not leak (an errno, a raw byte value...), outside the path the line names
    assert absent is None or absent not in err.replace(str(bad), ""), err


@needs_torch
@pytest.mark.parametrize("legacy", [False, True])
def test_every_truncation_is_refused_with_one_line(tmp_path, legacy):
    """ckpt.pt cut at 40 points (zip format: truncated; torch.save's older pickle format:
    refused as such, once its header is whole)."""
    args = model_args()
    good, meta = save_nanogpt(tmp_path, build(args), args)
    if legacy:
        torch.save(torch.load(good), good, _use_new_zipfile_serialization=False)
    data = open(good, "rb").read()
    cut = tmp_path / "cut.pt"
    for n in np.linspace(0, len(data) - 1, 40).astype(int):
        cut.write_bytes(data[:n])
        for trust in (False, True):
            with pytest.raises(ConversionError) as e:
                import_nanogpt(str(cut), meta, str(tmp_path / "o.safetensors"), trust)
            message = str(e.value)
            assert "\n" not in message and "Errno" not in message, (n, message)
            expected = ("truncated", "empty file") if not legacy else \
                ("legacy format", "empty file", "not a PyTorch checkpoint")
            assert any(e in message for e in expected), (n, message)


@needs_torch
def test_trusted_python_object_loads(tmp_path, capsys):
    args = model_args()
    good, meta = save_nanogpt(tmp_path, build(args), args)
    bad = _bad_ckpt(tmp_path, "python object, trusted", good)
    out = str(tmp_path / "o.safetensors")
    assert run_cli(importer.main, [bad, meta, out, "--trust-pickle"]) == 0, capsys.readouterr()
    load_checkpoint(out)


@needs_torch
@pytest.mark.parametrize("what,fragment", [
    ("output in a missing folder", "the folder"),
    ("output is a folder", "is a folder; give a file name"),
    ("meta with more characters", "meta.pkl has 51 ids but the model's vocab_size is 48"),
    ("meta of random bytes", "not a readable pickle"),
])
def test_bad_meta_or_output_is_one_line(tmp_path, capsys, what, fragment):
    args = model_args()
    ckpt, meta = save_nanogpt(tmp_path, build(args), args)
    out = str(tmp_path / "o.safetensors")
    if what == "output in a missing folder":
        out = str(tmp_path / "missing" / "o.safetensors")
    elif what == "output is a folder":
        out = str(tmp_path)
    elif what == "meta with more characters":
        write_meta(meta, CHARS + "KLM")
    elif what == "meta of random bytes":
        open(meta, "wb").write(np.random.default_rng(0).bytes(100))
    assert run_cli(importer.main, [ckpt, meta, out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert "padded" not in err and "Traceback" not in err, err


@needs_torch
def test_script_run_prints_no_traceback(tmp_path):
    """The real entry point, in a subprocess: random bytes as ckpt.pt."""
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    meta = write_meta(tmp_path / "meta.pkl")
    run = subprocess.run([sys.executable, str(REPO / "examples" / "import_nanogpt.py"),
                          str(bad), meta, str(tmp_path / "o.safetensors")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr


@needs_torch
def test_import_without_torch(tmp_path, capsys, monkeypatch):
    """nanoGPT's ckpt.pt (torch.compile's prefix, mask buffers, a tensor in the config)
    converts through the command with torch hidden, to the logits of nanoGPT's forward."""
    args = model_args()
    model = build(args, approximate="tanh", flash=False)
    paths = save_nanogpt(tmp_path, model, args, compiled=True)
    out = str(tmp_path / "o.safetensors")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", None)  # import torch -> ImportError
        assert run_cli(importer.main, [*paths, out, "--activation", "gelu"]) == 0, \
            capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    err, tokenizer, meta = compare(model, out)
    assert err < 1e-5 and tokenizer.chars == CHARS and meta["step"] == 250, err
