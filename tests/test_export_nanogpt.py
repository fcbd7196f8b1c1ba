"""The export direction (tinygrad_char.interop.nanogpt and its file half,
tinygrad_char/interop/nanogpt_io.py) and the export-nanogpt command: our checkpoint to nanoGPT's
ckpt.pt + meta.pkl, loaded back three ways: by our importer (the round trip
gives the same parameters, vocabulary, unknown id, config and step), by the nanoGPT twin
of nanogpt_twin.py exactly as nanoGPT's sample.py loads (GPTConfig(**model_args), a strict
load_state_dict, data/<dataset>/meta.pkl), and, when NANOGPT_DIR names a nanoGPT checkout,
by its unchanged sample.py. The library needs no torch (a test exports with it hidden);
the checks against nanoGPT's PyTorch code are skipped, with the reason, without it."""

import ast
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

from tinygrad_char import GPT, GPTConfig
from tinygrad_char.training.checkpoint import load_checkpoint, save_checkpoint
from tinygrad_char.training.cli import run_cli
from tinygrad_char.model import init_params
from tinygrad_char.interop.nanogpt import (ConversionError, GeluApproximationWarning, exact_gelu,
                                           read_meta, to_nanogpt, to_ours)
from tinygrad_char.training.tokenizer import UNK_CHAR, CharTokenizer

from conftest import REPO

from tinygrad_char.interop.nanogpt_io import export_nanogpt, import_nanogpt  # the files
from tinygrad_char.commands import export_nanogpt as exporter  # the command

try:
    import torch

    import nanogpt_twin as twin
except ImportError:
    torch = twin = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed: ckpt.pt is a "
                                                       "torch file (pip install torch)")
needs_exact_gelu = pytest.mark.skipif(exact_gelu() is None,
                                      reason="this GPTConfig has no activation 'gelu_exact'")


CHARS = "\n !$&',-.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"  # 48 characters (+ <unk>)
ERF_TOLERANCE = 1e-2  # relative to the largest logit: the GELU forms differ by < 4.7e-4
SAME_GELU = 1e-5  # float32 weights, float64 twin: relative to the largest logit


def config(**overrides):
    fields = dict(vocab_size=len(CHARS) + 1, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**fields, **overrides})


def trained_like(cfg, seed=0):
    """Parameters with trained-like scales: the GELU sees inputs of order 1 (where erf and
    tanh differ), LayerNorm gains away from 1 and biases away from 0."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, p in init_params(cfg, seed).items():
        p = p + rng.normal(0.0, 0.1, p.shape)
        params[name] = p * 3.0 if name.endswith("c_fc.weight") else p
    return params


def make_checkpoint(tmp_path, step=321, chars=CHARS, **overrides):
    tokenizer = CharTokenizer(chars, unk=True)
    cfg = config(vocab_size=tokenizer.vocab_size, **overrides)
    model = GPT(cfg)
    for name, p in trained_like(cfg).items():
        model.params[name] = p.astype(np.float32)
    path = tmp_path / "ours.safetensors"
    save_checkpoint(path, model, tokenizer, step)
    return str(path)


# -- without torch: the NumPy half ---------------------------------------------------------
def test_to_nanogpt_then_to_ours_is_the_identity(tmp_path):
    cfg, tokenizer = config(), CharTokenizer(CHARS, unk=True)
    params = {k: v.astype(np.float32) for k, v in trained_like(cfg).items()}
    state, model_args, meta = to_nanogpt(params, cfg, tokenizer)
    assert state["lm_head.weight"] is state["transformer.wte.weight"]  # tied: one array
    assert model_args == dict(n_layer=2, n_head=4, n_embd=32, block_size=16, bias=True,
                              vocab_size=49, dropout=0.0)
    assert meta["itos"][48] == UNK_CHAR and meta["stoi"][UNK_CHAR] == 48 == meta["unk_id"]
    assert meta["vocab_size"] == 49 and len(meta["itos"]) == len(meta["stoi"]) == 49
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    back_tokenizer = read_meta(tmp_path / "meta.pkl")
    assert back_tokenizer == tokenizer and back_tokenizer.unk_id == 48
    back_cfg, back, _ = to_ours(state, model_args, back_tokenizer, cfg.activation)
    assert back_cfg == cfg and set(back) == set(params)
    for name in params:
        assert np.array_equal(back[name], params[name]), name


def test_unknown_char_that_is_also_in_the_vocabulary(tmp_path):
    """U+FFFD as a real character: stoi keeps it, the unknown id is itos-only."""
    tokenizer = CharTokenizer("ab" + UNK_CHAR, unk=True)
    cfg = config(vocab_size=tokenizer.vocab_size)
    _, _, meta = to_nanogpt(init_params(cfg), cfg, tokenizer)
    assert meta["stoi"][UNK_CHAR] == 2 and meta["itos"][3] == UNK_CHAR
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    assert read_meta(tmp_path / "meta.pkl") == tokenizer


@pytest.mark.parametrize("overrides,match", [
    (dict(activation="relu"), "activation 'relu' cannot be represented"),
    (dict(activation="swiglu"), "activation 'swiglu' cannot be represented"),
    (dict(tie_weights=False), "always ties lm_head"),
    (dict(pos_encoding="sinusoidal"), "'pos_encoding': 'sinusoidal'"),
    (dict(pos_encoding="rope"), "'pos_encoding': 'rope'"),
    (dict(norm="post"), "'norm': 'post'"),
    (dict(normalization="rmsnorm"), "'normalization': 'rmsnorm'"),
    (dict(mlp_ratio=2), "'mlp_ratio': 2"),
    (dict(n_kv_head=2), "'n_kv_head': 2"),
])
def test_refuses_what_nanogpt_cannot_compute(overrides, match):
    try:
        cfg = config(**overrides)
    except ValueError as e:  # a field this GPTConfig does not have
        pytest.skip(f"GPTConfig cannot build {overrides}: {e}")
    with pytest.raises(ConversionError, match=match) as e:
        to_nanogpt(init_params(cfg), cfg, CharTokenizer(CHARS, unk=True))
    assert "\n" not in str(e.value)


def test_module_does_not_import_torch():
    code = ("import sys, tinygrad_char.interop.nanogpt, tinygrad_char\n"
            "assert 'torch' not in sys.modules, 'tinygrad_char.interop.nanogpt imported torch'\n"
            "import tinygrad_char.interop.nanogpt_io, tinygrad_char.commands.export_nanogpt\n"
            "assert 'torch' not in sys.modules, 'nanogpt_io imported torch'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr


def _imports_torch(node):
    """Whether an AST node imports torch: import torch[.x], from torch[.x] import ...,
    __import__("torch..."), importlib.import_module("torch...")."""
    def is_torch(name):
        return name == "torch" or name.startswith("torch.")

    if isinstance(node, ast.Import):
        return any(is_torch(alias.name) for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and is_torch(node.module or "")
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
            else None
        return name in ("__import__", "import_module") and isinstance(node.args[0].value, str) \
            and is_torch(node.args[0].value)
    return False


def test_library_never_imports_torch():
    """The rule: no file of tinygrad_char/ imports torch, not even inside a function
    (PyTorch is an oracle of tests and benchmarks; ckpt.pt is read and written by
    interop/torch_file.py without it)."""
    files = sorted((REPO / "tinygrad_char").rglob("*.py"))
    assert len(files) > 10 and REPO / "tinygrad_char" / "interop" / "torch_file.py" in files
    found = [f"{path.relative_to(REPO)}:{node.lineno}"
             for path in files
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if _imports_torch(node)]
    assert found == [], f"torch imported in the library at {found}"
    assert _imports_torch(ast.parse("def f():\n    from torch.nn import functional").body[0]
                          .body[0])  # the check itself sees an import inside a function


def test_export_without_torch(tmp_path, capsys, monkeypatch):
    """With torch hidden the command writes ckpt.pt, and our importer reads it back to the
    same parameters."""
    ckpt = make_checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert run_cli(exporter.main, ["--checkpoint", ckpt, "--out-dir",
                                   str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    back = str(tmp_path / "back.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeluApproximationWarning)
        import_nanogpt(tmp_path / "out" / "ckpt.pt", tmp_path / "out" / "meta.pkl", back)
    ours, _, _ = load_checkpoint(ckpt)
    again, _, _ = load_checkpoint(back)
    for name, value in ours.params.items():
        assert np.array_equal(again.params[name], value), name


# -- with torch: the files, loaded back ----------------------------------------------------
def export(tmp_path, ckpt, **kwargs):
    """export_nanogpt, returning (report, the GeluApproximationWarnings it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeluApproximationWarning)
        report = export_nanogpt(ckpt, tmp_path / "out", **kwargs)
    return report, [w for w in caught if issubclass(w.category, GeluApproximationWarning)]


def sample_py_view(tmp_path, report, approximate="none"):
    """The exported files as sample.py sees them, run from a nanoGPT-like folder."""
    nano = tmp_path / "nanogpt"
    (nano / "data" / report["dataset"]).mkdir(parents=True)
    os.replace(report["meta_path"], nano / "data" / report["dataset"] / "meta.pkl")
    return twin.load_like_sample(str(tmp_path / "out"), str(nano), approximate)


def logits_error(ckpt, nano_model):
    ours, _, _ = load_checkpoint(ckpt)
    idx = np.random.default_rng(1).integers(0, ours.config.vocab_size, size=(3, 16))
    with torch.no_grad():
        theirs = nano_model.double()(torch.from_numpy(idx)).numpy()
    mine = ours.eval().forward(idx)[0].astype(np.float64)
    return float(np.abs(mine - theirs).max() / np.abs(theirs).max())


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
def test_sample_py_loads_the_export(tmp_path, bias):
    ckpt = make_checkpoint(tmp_path, bias=bias)
    report, gelu_warnings = export(tmp_path, ckpt)
    assert len(gelu_warnings) == 1 and "erf" in str(gelu_warnings[0].message)
    loaded = torch.load(report["ckpt_path"], weights_only=True)  # sample.py's default
    sd = loaded["model"]
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    assert loaded["iter_num"] == 321 and loaded["config"]["dataset"] == "tinygrad_char"

    nano, encode, decode = sample_py_view(tmp_path, report, approximate="tanh")
    err = logits_error(ckpt, nano)
    assert err < SAME_GELU, f"bias={bias}: tanh GELU on both sides, relative error {err:.2e}"
    prompt = "hello, " + UNK_CHAR  # the unknown id is an ordinary entry for nanoGPT
    assert decode(encode(prompt)) == prompt and encode(UNK_CHAR) == [48]
    torch.manual_seed(0)
    out = nano.float().generate(torch.tensor([encode("he")]), 20, temperature=0.8, top_k=200)
    assert len(decode(out[0].tolist())) == 22


@needs_torch
def test_erf_difference_is_bounded_and_reported(tmp_path):
    ckpt = make_checkpoint(tmp_path)
    report, gelu_warnings = export(tmp_path, ckpt)
    nano, _, _ = sample_py_view(tmp_path, report)  # nanoGPT's own nn.GELU()
    err = logits_error(ckpt, nano)
    print(f"\nour tanh GELU vs nanoGPT's erf GELU after export: relative logits difference "
          f"{err:.2e}; report: {report['max_diff_erf']:.2e} (erf), "
          f"{report['max_diff_tanh']:.2e} (tanh), largest logit {report['max_abs_logit']:.2f}")
    assert err < ERF_TOLERANCE, err
    assert report["max_diff_erf"] > 10 * report["max_diff_tanh"], report  # real, measured
    assert f"{report['max_diff_erf']:.2e}" in str(gelu_warnings[0].message)


@needs_torch
@needs_exact_gelu
def test_exact_gelu_exports_exactly_without_warning(tmp_path):
    ckpt = make_checkpoint(tmp_path, activation="gelu_exact")
    report, gelu_warnings = export(tmp_path, ckpt)
    assert gelu_warnings == [] and report["activation"] == "gelu_exact"
    nano, _, _ = sample_py_view(tmp_path, report)
    err = logits_error(ckpt, nano)
    assert err < SAME_GELU, f"exact GELU on both sides: relative error {err:.2e}"


@needs_torch
@pytest.mark.parametrize("activation", ["gelu", pytest.param("gelu_exact",
                                                             marks=needs_exact_gelu)])
def test_round_trip_is_the_identity(tmp_path, activation):
    ckpt = make_checkpoint(tmp_path, activation=activation)
    report, _ = export(tmp_path, ckpt, dataset="mine")
    back = str(tmp_path / "back.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeluApproximationWarning)
        imported = import_nanogpt(report["ckpt_path"], report["meta_path"], back)
    assert imported["activation"] == activation  # recorded by the export
    a, ta, ma = load_checkpoint(ckpt)
    b, tb, mb = load_checkpoint(back)
    assert ta == tb and tb.unk and ma["config"] == mb["config"] and ma["step"] == mb["step"]
    assert set(a.params) == set(b.params)
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name


@needs_torch
def test_nanogpt_to_ours_to_nanogpt_gives_the_same_state_dict(tmp_path):
    """A nanoGPT twin's checkpoint, imported and exported again: every tensor bit for bit,
    the same model_args, iter_num and vocabulary (no unknown id: nanoGPT has none)."""
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, bias=False,
                vocab_size=len(CHARS), dropout=0.0)
    nano = twin.GPT(twin.GPTConfig(**args))
    with torch.no_grad():
        for p in nano.parameters():
            p.normal_(0.0, 0.1)
    torch.save({"model": nano.state_dict(), "model_args": args, "iter_num": 7,
                "config": {"dataset": "shakespeare_char"}}, tmp_path / "ckpt.pt")
    meta = {"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS)),
            "stoi": {c: i for i, c in enumerate(CHARS)}}
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    ours = str(tmp_path / "ours.safetensors")
    import_nanogpt(str(tmp_path / "ckpt.pt"), str(tmp_path / "meta.pkl"), ours,
                   activation=exact_gelu() or "gelu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeluApproximationWarning)
        report = export_nanogpt(ours, tmp_path / "out")
    again = torch.load(report["ckpt_path"], weights_only=True)
    assert again["model_args"] == args and again["iter_num"] == 7
    original = nano.state_dict()
    assert set(again["model"]) == set(original)
    for name, tensor in original.items():
        assert torch.equal(again["model"][name], tensor), name
    with open(report["meta_path"], "rb") as f:
        assert pickle.load(f) == meta


@needs_torch
def test_script_writes_and_says_how_to_sample(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path)
    out = tmp_path / "out"
    assert run_cli(exporter.main, ["--checkpoint", ckpt, "--out-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "erf" in captured.err
    assert "unknown id 48" in captured.out and "python sample.py --out_dir=" in captured.out
    assert (out / "ckpt.pt").exists() and (out / "meta.pkl").exists()
    assert run_cli(exporter.main, ["--checkpoint", ckpt, "--out-dir", str(out),
                                   "--overwrite"]) == 0
    assert run_cli(exporter.main, ["--checkpoint", ckpt, "--out-dir", str(out),
                                   "--force"]) == 0  # the flag's former name still works


def _bad_export(tmp_path, what):
    """(argv, expected fragment) for one bad input of the exporter."""
    ckpt = make_checkpoint(tmp_path)
    out = str(tmp_path / "out")
    if what == "missing checkpoint":
        return ["--checkpoint", str(tmp_path / "nope.safetensors"), "--out-dir", out], \
            "no such file"
    if what == "text checkpoint":
        (tmp_path / "text.safetensors").write_text("not a checkpoint")
        return ["--checkpoint", str(tmp_path / "text.safetensors"), "--out-dir", out], \
            "not a safetensors checkpoint"
    if what == "relu model":
        (tmp_path / "ours.safetensors").unlink()
        ckpt = make_checkpoint(tmp_path, activation="relu")
        return ["--checkpoint", ckpt, "--out-dir", out], "activation 'relu' cannot"
    if what == "untied model":
        (tmp_path / "ours.safetensors").unlink()
        ckpt = make_checkpoint(tmp_path, tie_weights=False)
        return ["--checkpoint", ckpt, "--out-dir", out], "always ties lm_head"
    if what == "out-dir in a missing folder":
        return ["--checkpoint", ckpt, "--out-dir", str(tmp_path / "a" / "b")], \
            "does not exist; create it first"
    if what == "out-dir is a file":
        (tmp_path / "file").write_text("x")
        return ["--checkpoint", ckpt, "--out-dir", str(tmp_path / "file")], \
            "exists and is not a folder"
    if what == "existing ckpt.pt":
        os.makedirs(out)
        open(os.path.join(out, "ckpt.pt"), "wb").close()
        return ["--checkpoint", ckpt, "--out-dir", out], "exists (a nanoGPT run's " \
                                                          "checkpoint?); pass --overwrite"
    if what == "dataset with a slash":
        return ["--checkpoint", ckpt, "--out-dir", out, "--dataset", "a/b"], \
            "must be one folder name"
    if what == "meta in a missing folder":
        return ["--checkpoint", ckpt, "--out-dir", out, "--meta",
                str(tmp_path / "nope" / "meta.pkl")], "does not exist"
    raise AssertionError(what)


@needs_torch
@pytest.mark.parametrize("what", [
    "missing checkpoint", "text checkpoint", "relu model", "untied model",
    "out-dir in a missing folder", "out-dir is a file", "existing ckpt.pt",
    "dataset with a slash", "meta in a missing folder"])
def test_bad_input_is_one_line(tmp_path, capsys, what):
    argv, fragment = _bad_export(tmp_path, what)
    assert run_cli(exporter.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "meta.pkl").exists()


@needs_torch
def test_script_run_prints_no_traceback(tmp_path):
    """The real entry point, in a subprocess: a checkpoint that is not one."""
    (tmp_path / "x.safetensors").write_bytes(np.random.default_rng(0).bytes(300))
    run = subprocess.run([sys.executable, str(REPO / "examples" / "export_nanogpt.py"),
                          "--checkpoint", str(tmp_path / "x.safetensors"),
                          "--out-dir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr


NANOGPT_DIR = os.environ.get("NANOGPT_DIR")


@needs_torch
@pytest.mark.skipif(not NANOGPT_DIR, reason="set NANOGPT_DIR to a nanoGPT checkout to run "
                                            "its unchanged sample.py on an export")
def test_real_sample_py(tmp_path):
    """nanoGPT's own sample.py (it imports tiktoken at the top; a stub stands in when
    tiktoken is missing, never used: meta.pkl is found)."""
    ckpt = make_checkpoint(tmp_path)
    report, _ = export(tmp_path, ckpt)
    nano = tmp_path / "nanogpt"
    (nano / "data" / report["dataset"]).mkdir(parents=True)
    os.replace(report["meta_path"], nano / "data" / report["dataset"] / "meta.pkl")
    for name in ("sample.py", "model.py", "configurator.py"):
        with open(os.path.join(NANOGPT_DIR, name), "rb") as f:
            (nano / name).write_bytes(f.read())
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "tiktoken.py").write_text("def get_encoding(name):\n    raise RuntimeError\n")
    env = dict(os.environ, PYTHONPATH=str(stub))
    run = subprocess.run([sys.executable, "sample.py", f"--out_dir={tmp_path / 'out'}",
                          "--device=cpu", "--num_samples=1", "--max_new_tokens=20",
                          "--start=he"], cwd=nano, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Loading meta from data/tinygrad_char/meta.pkl" in run.stdout, run.stdout
