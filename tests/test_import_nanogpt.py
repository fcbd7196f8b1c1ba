"""examples/import_nanogpt.py against a nanoGPT-layout model written here in PyTorch:
saved the way nanoGPT saves (torch.save of {'model', 'model_args', ...} plus a pickled
meta.pkl), converted, loaded with load_checkpoint, and compared logit for logit. With
torch's tanh GELU the two agree to float32 rounding; with nanoGPT's exact-erf GELU the
difference is bounded and printed. Skipped with the reason without torch."""

import importlib.util
import math
import pickle

import numpy as np
import pytest

from tinygrad_char.checkpoint import load_checkpoint

from conftest import REPO

torch = pytest.importorskip("torch", reason="torch not installed: nanoGPT checkpoints are "
                                            "torch files (pip install torch)")
nn, F = torch.nn, torch.nn.functional

_spec = importlib.util.spec_from_file_location("import_nanogpt",
                                               REPO / "examples" / "import_nanogpt.py")
importer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(importer)

CHARS = "\n !$&',-.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"  # 48 characters
ERF_TOLERANCE = 1e-2  # relative to the largest logit: the GELU forms differ by < 2e-4


# -- a minimal nanoGPT (model.py's layout: same module names, tied head, mask buffer) -------
class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_attn = nn.Linear(cfg["n_embd"], 3 * cfg["n_embd"], bias=cfg["bias"])
        self.c_proj = nn.Linear(cfg["n_embd"], cfg["n_embd"], bias=cfg["bias"])
        self.n_head, self.n_embd = cfg["n_head"], cfg["n_embd"]
        T = cfg["block_size"]  # nanoGPT registers this buffer when flash attention is off
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg, approximate):
        super().__init__()
        self.c_fc = nn.Linear(cfg["n_embd"], 4 * cfg["n_embd"], bias=cfg["bias"])
        self.gelu = nn.GELU(approximate=approximate)  # nanoGPT: nn.GELU(), i.e. "none"
        self.c_proj = nn.Linear(4 * cfg["n_embd"], cfg["n_embd"], bias=cfg["bias"])

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg, approximate):
        super().__init__()
        self.ln_1 = LayerNorm(cfg["n_embd"], cfg["bias"])
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg["n_embd"], cfg["bias"])
        self.mlp = MLP(cfg, approximate)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, cfg, approximate="none"):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg["vocab_size"], cfg["n_embd"]),
            wpe=nn.Embedding(cfg["block_size"], cfg["n_embd"]),
            h=nn.ModuleList([Block(cfg, approximate) for _ in range(cfg["n_layer"])]),
            ln_f=LayerNorm(cfg["n_embd"], cfg["bias"])))
        self.lm_head = nn.Linear(cfg["n_embd"], cfg["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT

    def forward(self, idx):
        T = idx.size(1)
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def model_args(bias=True):
    return dict(n_layer=2, n_head=4, n_embd=32, block_size=16, bias=bias,
                vocab_size=len(CHARS), dropout=0.0)


def build(args, approximate="none", seed=0):
    torch.manual_seed(seed)
    model = NanoGPT(args, approximate).double().eval()
    with torch.no_grad():  # trained-like scales: the GELU sees inputs of order 1 (where
        for name, p in model.named_parameters():  # erf and tanh differ), LayerNorm gains
            p.normal_(0.0, 0.1)  # away from 1 and biases away from 0
            if name.endswith("c_fc.weight"):
                p.mul_(3.0)
            if p.ndim == 1 and name.endswith("weight"):
                p.add_(1.0)
    return model


def save_nanogpt(tmp_path, model, args, compiled=False, chars=CHARS, meta_extra=None):
    """ckpt.pt and meta.pkl as nanoGPT's train.py and prepare.py write them."""
    sd = model.float().state_dict()
    model.double()
    if compiled:
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    ckpt = {"model": sd, "optimizer": {}, "model_args": args, "iter_num": 250,
            "best_val_loss": torch.tensor(1.5), "config": {"dataset": "shakespeare_char"}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)),
            "stoi": {c: i for i, c in enumerate(chars)}}
    meta.update(meta_extra or {})
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    return str(tmp_path / "ckpt.pt"), str(tmp_path / "meta.pkl")


def convert(tmp_path, *paths):
    out = str(tmp_path / "converted.safetensors")
    with pytest.warns(importer.GeluApproximationWarning, match="erf"):
        report = importer.convert(*paths, out)
    return out, report


def compare(tmp_path, model, out):
    ours, tokenizer, meta = load_checkpoint(out)
    idx = np.random.default_rng(1).integers(0, len(CHARS), size=(3, 16))
    with torch.no_grad():
        theirs = model(torch.from_numpy(idx)).numpy()  # float64 reference
    logits = ours.forward(idx)[0].astype(np.float64)
    return float(np.abs(logits - theirs).max() / np.abs(theirs).max()), tokenizer, meta


@pytest.mark.parametrize("bias", [True, False])
def test_tanh_gelu_model_converts_exactly(tmp_path, bias):
    args = model_args(bias)
    model = build(args, approximate="tanh")
    out, report = convert(tmp_path, *save_nanogpt(tmp_path, model, args))
    err, tokenizer, meta = compare(tmp_path, model, out)
    assert err < 1e-5, f"bias={bias}: relative logits error {err:.2e} with tanh GELU"
    assert tokenizer.chars == CHARS and not tokenizer.unk and meta["step"] == 250
    assert meta["config"]["tie_weights"] and meta["config"]["bias"] == bias
    assert report["max_diff_tanh"] < 1e-5 * report["max_abs_logit"]


def test_erf_gelu_difference_is_bounded_and_reported(tmp_path):
    args = model_args()
    model = build(args, approximate="none")  # nanoGPT's nn.GELU()
    out, report = convert(tmp_path, *save_nanogpt(tmp_path, model, args, compiled=True))
    err, _, _ = compare(tmp_path, model, out)
    print(f"\nnanoGPT erf GELU vs our tanh GELU: relative logits difference {err:.2e}; "
          f"script's report: max |diff| {report['max_diff_erf']:.2e} (erf), "
          f"{report['max_diff_tanh']:.2e} (tanh), largest logit "
          f"{report['max_abs_logit']:.2f}")
    assert err < ERF_TOLERANCE, f"erf vs tanh GELU: relative logits difference {err:.2e}"
    assert report["max_diff_erf"] > 10 * report["max_diff_tanh"], report  # real, measured
    assert any("attn.bias" in n for n in report["notes"])
    assert any("lm_head" in n for n in report["notes"])


def test_untied_head_is_kept(tmp_path):
    args = model_args()
    model = build(args, approximate="tanh")
    with torch.no_grad():  # untie: a separate head
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone() + 0.05)
    out, report = convert(tmp_path, *save_nanogpt(tmp_path, model, args))
    err, _, meta = compare(tmp_path, model, out)
    assert not meta["config"]["tie_weights"] and err < 1e-5, err


def test_script_main_reports_and_writes(tmp_path, capsys):
    args = model_args()
    paths = save_nanogpt(tmp_path, build(args), args)
    out = str(tmp_path / "m.safetensors")
    assert importer.main([*paths, out]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "erf" in captured.err
    assert "wrote" in captured.out
    load_checkpoint(out)


@pytest.mark.parametrize("what,match", [
    ("subword vocabulary", "not a character-level vocabulary"),
    ("padded vocab_size", "only character-level"),
    ("unknown model arg", "cannot represent"),
    ("extra tensor", "unexpected"),
    ("missing tensor", "missing"),
    ("class in meta.pkl", "plain data"),
    ("nan weight", "NaN"),
])
def test_refuses_what_it_cannot_represent(tmp_path, what, match):
    args = model_args()
    model = build(args)
    chars, meta_extra = CHARS, None
    if what == "padded vocab_size":
        args = dict(args, vocab_size=64)
        model = build(args)
    if what == "unknown model arg":
        args = dict(args, n_kv_head=2)
    ckpt, meta = save_nanogpt(tmp_path, model, args, chars=chars, meta_extra=meta_extra)
    if what == "subword vocabulary":
        with open(meta, "wb") as f:
            itos = dict(enumerate(["th"] + list(CHARS[1:])))
            pickle.dump({"vocab_size": len(CHARS), "itos": itos,
                         "stoi": {s: i for i, s in itos.items()}}, f)
    if what == "class in meta.pkl":
        with open(meta, "wb") as f:
            pickle.dump({"itos": dict(enumerate(CHARS)), "x": np.float64(1)}, f)
    if what in ("extra tensor", "missing tensor", "nan weight"):
        saved = torch.load(ckpt)
        if what == "extra tensor":
            saved["model"]["transformer.h.0.attn.rotary.inv_freq"] = torch.ones(4)
        elif what == "missing tensor":
            del saved["model"]["transformer.h.1.mlp.c_fc.weight"]
        else:
            saved["model"]["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("nan")
        torch.save(saved, ckpt)
    with pytest.raises(importer.ConversionError, match=match):
        importer.convert(ckpt, meta, str(tmp_path / "out.safetensors"))
