"""Convert a character-level nanoGPT checkpoint into a tinygrad_char checkpoint.

    python examples/import_nanogpt.py out-shakespeare-char/ckpt.pt \
        data/shakespeare_char/meta.pkl shakespeare_char.safetensors

nanoGPT (github.com/karpathy/nanoGPT) saves `ckpt.pt` as torch.save({"model": state_dict,
"model_args": {n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout},
"iter_num": ..., ...}) and the character vocabulary as meta.pkl {"vocab_size", "itos",
"stoi"}. Its parameter names and layouts are ours (we borrowed them), so the conversion is
mostly checking:

- the `_orig_mod.` prefix that torch.compile adds is stripped;
- `attn.bias` buffers (the causal mask, present without flash attention) are dropped,
  after checking they are the causal mask;
- `lm_head.weight` is dropped when it equals `transformer.wte.weight` (nanoGPT ties
  them); a different one is kept, with tie_weights=False;
- the vocabulary becomes CharTokenizer(itos[0..V-1], unk=False), so ids map 1:1;
- anything we cannot represent (other model_args, unknown or missing tensors, a vocabulary
  that is not one character per id, a vocab_size that differs from the vocabulary's, NaN)
  stops the conversion with one "error: ..." line naming it.

nanoGPT's MLP uses nn.GELU(), the exact erf form; ours is the tanh approximation. The
script warns and measures what that costs: the largest logits difference between a
PyTorch forward of the original weights (erf GELU, float64) and our NumPy forward of the
converted checkpoint on a random batch, and the same with tanh GELU (which is float
rounding only). torch is needed by this script alone; meta.pkl is read with an
unpickler that accepts plain data only, and ckpt.pt with torch.load(weights_only=True)
unless --trust-pickle is given.
"""

import argparse
import io
import pickle
import sys
import warnings

import numpy as np

from tinygrad_char import GPT, GPTConfig
from tinygrad_char.checkpoint import save_checkpoint
from tinygrad_char.tokenizer import CharTokenizer

NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
COMPILE_PREFIX = "_orig_mod."  # what torch.compile prepends to every state-dict key
CHECK_BATCH = 4  # rows of the random batch the logits are compared on
MAX_CHECK_T = 256  # ... and at most this many positions (block_size when smaller)


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message says what and why."""


class GeluApproximationWarning(UserWarning):
    """nanoGPT's exact-erf GELU becomes our tanh GELU: logits change slightly."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: meta.pkl needs no more, and
    refusing every class keeps a hostile file from running code."""

    def find_class(self, module, name):
        raise ConversionError(f"meta.pkl refers to {module}.{name}; a nanoGPT meta.pkl holds "
                           f"only plain data (vocab_size, itos, stoi)")


def load_meta(path):
    """The vocabulary of meta.pkl as a string: chars[i] is itos[i]."""
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(io.BytesIO(f.read())).load()
    except ConversionError:
        raise
    except OSError as e:
        raise ConversionError(f"{path}: {e.strerror}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ConversionError(f"{path}: not a readable pickle ({e})") from None
    if not isinstance(meta, dict) or "itos" not in meta:
        raise ConversionError(f"{path}: expected a dict with 'itos' (and 'stoi', 'vocab_size'), "
                           f"as nanoGPT's data/shakespeare_char/prepare.py writes")
    itos = meta["itos"]
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))):
        raise ConversionError(f"{path}: itos must map the ids 0..N-1 to characters")
    bad = {i: s for i, s in itos.items() if not isinstance(s, str) or len(s) != 1}
    if bad:
        shown = dict(list(bad.items())[:5])
        raise ConversionError(f"{path}: not a character-level vocabulary: ids {shown} are not "
                           f"single characters (a subword/BPE model cannot be represented)")
    chars = "".join(itos[i] for i in range(len(itos)))
    stoi = meta.get("stoi")
    if stoi is not None and stoi != {c: i for i, c in enumerate(chars)}:
        raise ConversionError(f"{path}: stoi is not the inverse of itos")
    if meta.get("vocab_size", len(chars)) != len(chars):
        raise ConversionError(f"{path}: vocab_size {meta['vocab_size']} but itos has "
                           f"{len(chars)} entries")
    return chars


def load_nanogpt(path, trust_pickle=False):
    """(state dict of float64 NumPy arrays without the compile prefix, model_args, iter_num)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        raise ConversionError(f"{path}: holds objects beyond tensors and plain data "
                           f"({str(e).splitlines()[0][:200]}); if you trust the file, "
                           f"pass --trust-pickle") from None
    except Exception as e:  # a damaged zip, not a torch file, ...
        raise ConversionError(f"{path}: torch.load failed ({str(e).splitlines()[0][:200]})") \
            from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise ConversionError(f"{path}: expected nanoGPT's {{'model': state_dict, "
                           f"'model_args': {{...}}, ...}}")
    state = {}
    for key, value in ckpt["model"].items():
        key = key[len(COMPILE_PREFIX):] if key.startswith(COMPILE_PREFIX) else key
        state[key] = value.detach().to(torch.float64).numpy()
    return state, dict(ckpt["model_args"]), int(ckpt.get("iter_num", 0))


def to_ours(state, model_args, chars):
    """(GPTConfig, params dict in float64, notes) from nanoGPT's state dict and args."""
    unknown = sorted(set(model_args) - set(NANOGPT_ARGS))
    if unknown:
        raise ConversionError(f"model_args has fields we cannot represent: {unknown} (we know "
                           f"{list(NANOGPT_ARGS)})")
    if model_args.get("vocab_size") != len(chars):
        raise ConversionError(f"model_args vocab_size is {model_args.get('vocab_size')} but "
                           f"meta.pkl has {len(chars)} characters (a padded GPT-2 vocabulary? "
                           f"only character-level checkpoints can be converted)")
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
    mlp_ratio = c_fc.shape[0] // C if c_fc is not None and C else 4
    tied = "lm_head.weight" not in state or (
        state["lm_head.weight"].shape == state.get("transformer.wte.weight",
                                                   np.zeros(0)).shape
        and np.array_equal(state["lm_head.weight"], state["transformer.wte.weight"]))
    if tied and "lm_head.weight" in state:
        del state["lm_head.weight"]
        notes.append("dropped lm_head.weight (tied to transformer.wte.weight)")
    elif not tied:
        notes.append("lm_head.weight differs from wte: kept, tie_weights=False")
    try:
        config = GPTConfig(vocab_size=len(chars), block_size=model_args.get("block_size"),
                           n_layer=model_args.get("n_layer"), n_head=model_args.get("n_head"),
                           n_embd=C, mlp_ratio=mlp_ratio,
                           dropout=float(model_args.get("dropout", 0.0)),
                           bias=bool(model_args.get("bias", True)), activation="gelu",
                           pos_encoding="learned", norm="pre", tie_weights=tied)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"model_args cannot be represented: {e}") from None

    model = GPT(config, dtype="float64")  # only for its parameter table
    expected = {name: p.shape for name, p in model.params.items()}
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


def torch_logits(params, config, idx, approximate):
    """nanoGPT's forward in float64 PyTorch on our params (names are shared); `approximate`
    is torch's GELU mode: "none" (nanoGPT's exact erf) or "tanh" (ours)."""
    import torch
    import torch.nn.functional as F

    p = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in params.items()}
    C, NH = config.n_embd, config.n_head
    idx = torch.from_numpy(np.asarray(idx))
    B, T = idx.shape

    def ln(x, name):
        return F.layer_norm(x, (C,), p[name + ".weight"], p.get(name + ".bias"), eps=1e-5)

    def linear(x, name):
        return F.linear(x, p[name + ".weight"], p.get(name + ".bias"))

    x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][:T]  # (B, T, C)
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        q, k, v = linear(ln(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, NH, T, hs)
        x = x + linear(y.transpose(1, 2).reshape(B, T, C), h + "attn.c_proj")
        m = F.gelu(linear(ln(x, h + "ln_2"), h + "mlp.c_fc"), approximate=approximate)
        x = x + linear(m, h + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    head = p["transformer.wte.weight"] if config.tie_weights else p["lm_head.weight"]
    return (x @ head.T).numpy()  # (B, T, V)


def convert(ckpt_path, meta_path, out_path, trust_pickle=False, dtype="float32"):
    """Convert and save; return a report dict: config, step, notes, and the measured
    max |logits difference| against nanoGPT's forward with erf GELU (`max_diff_erf`) and
    with tanh GELU (`max_diff_tanh`), plus `max_abs_logit` for scale."""
    chars = load_meta(meta_path)
    state, model_args, step = load_nanogpt(ckpt_path, trust_pickle)
    config, params, notes = to_ours(state, model_args, chars)
    model = GPT(config, dtype=dtype).eval()
    for name, value in params.items():
        model.params[name] = model.xp.asarray(value, dtype=dtype)
    tokenizer = CharTokenizer(chars, unk=False)
    save_checkpoint(out_path, model, tokenizer, step)

    rng = np.random.default_rng(0)
    idx = rng.integers(0, config.vocab_size, size=(CHECK_BATCH,
                                                   min(config.block_size, MAX_CHECK_T)))
    ours = model.backend.to_numpy(model.forward(idx)[0]).astype(np.float64)
    erf = torch_logits(params, config, idx, "none")
    tanh = torch_logits(params, config, idx, "tanh")
    report = {"config": config.to_dict(), "step": step, "notes": notes,
              "max_diff_erf": float(np.abs(ours - erf).max()),
              "max_diff_tanh": float(np.abs(ours - tanh).max()),
              "max_abs_logit": float(np.abs(erf).max()), "check_shape": list(idx.shape)}
    warnings.warn(f"nanoGPT's MLP uses exact-erf GELU (nn.GELU()); tinygrad_char uses the "
                  f"tanh approximation, so logits differ slightly: max |difference| "
                  f"{report['max_diff_erf']:.2e} on a random {idx.shape} batch (largest "
                  f"logit {report['max_abs_logit']:.2f}); with tanh GELU on both sides "
                  f"{report['max_diff_tanh']:.2e}", GeluApproximationWarning, stacklevel=2)
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="nanoGPT's ckpt.pt")
    p.add_argument("meta", help="the data set's meta.pkl (stoi/itos)")
    p.add_argument("out", help="the .safetensors checkpoint to write")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load ckpt.pt with full pickle (runs code from the file)")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: this script needs PyTorch to read ckpt.pt (pip install torch)",
              file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GeluApproximationWarning)
            report = convert(args.ckpt, args.meta, args.out, args.trust_pickle)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    cfg = report["config"]
    print(f"wrote {args.out}: step {report['step']}, {cfg['n_layer']} layers x "
          f"{cfg['n_head']} heads x {cfg['n_embd']}, block {cfg['block_size']}, "
          f"vocab {cfg['vocab_size']}, bias={cfg['bias']}, tied={cfg['tie_weights']}")
    for note in report["notes"]:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
