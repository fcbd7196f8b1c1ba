"""The PyTorch half of the nanoGPT import and export: what needs torch, and nothing else.

nanoGPT's ckpt.pt is a torch.save file, so reading and writing it needs PyTorch; the
rest of the library never imports torch. This module is what the import-nanogpt and
export-nanogpt commands (tinygrad_char.commands) call:

- `read_ckpt`: ckpt.pt -> nanoGPT's state dict of float64 NumPy arrays, model_args,
  iter_num, config: torch.load(weights_only=True) unless trust_pickle, after the library's
  format sniffing, with the library's one-line errors;
- `save_ckpt`: the ckpt dict of NumPy arrays the library builds -> torch.save, arrays as
  tensors (lm_head.weight and transformer.wte.weight, one array, stay one shared tensor,
  as nanoGPT saves them);
- `reference_logits`: nanoGPT's forward in float64 PyTorch (the repository's one PyTorch
  GPT, benchmarks/torch_gpt.py), which verifies every conversion;
- `import_nanogpt` and `export_nanogpt`: the two whole conversions, these three wrapped
  around tinygrad_char.interop.nanogpt's `import_state` and `export_state`.

What it is not: every check, message, layout conversion, the vocabulary, meta.pkl and the
comparison of logits are tinygrad_char.interop.nanogpt's (its docstring says what is converted, what
is refused and how GELU differs); nothing of that is repeated here. torch is imported
inside the functions, never at module level, so importing this module works without it;
without torch every entry point raises one ConversionError line saying how to install it.
"""

import os
import sys
from dataclasses import replace

import numpy as np

from tinygrad_char.interop import nanogpt
from tinygrad_char.interop.nanogpt import DEFAULT_DATASET, ConversionError


def _torch(what):
    """The torch module, or one ConversionError line saying how to get it."""
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{what} needs PyTorch (ckpt.pt is a torch file): "
                              f"pip install torch") from None
    return torch


def _float64_array(value):
    """A float tensor as a float64 NumPy array; None for anything else (the library then
    names it in its error)."""
    torch = _torch("reading ckpt.pt")
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return None
    return value.detach().to(torch.float64).numpy()


def load_ckpt(path, trust_pickle=False):
    """nanoGPT's ckpt.pt as torch.load gives it (on the CPU; weights_only unless
    trust_pickle), after the library's check that it is a whole torch.save file."""
    path = os.fspath(path)
    torch = _torch("reading ckpt.pt")
    nanogpt._check_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # UnpicklingError, a missing module, a damaged zip member, ...
        raise nanogpt.ckpt_load_error(path, e, trust_pickle) from None


def read_ckpt(path, trust_pickle=False):
    """(state dict of float64 NumPy arrays without the compile prefix, model_args, iter_num,
    the run's config dict) of nanoGPT's ckpt.pt."""
    path = os.fspath(path)
    return nanogpt.ckpt_contents(load_ckpt(path, trust_pickle), path, _float64_array)


def save_ckpt(ckpt, f):
    """torch.save `ckpt` (the library's dict, its "model" NumPy arrays) to the binary file
    `f`, the arrays as tensors; arrays that are one object (the tied lm_head.weight and
    transformer.wte.weight) become one shared tensor."""
    torch = _torch("writing ckpt.pt")
    tensors, by_array = {}, {}
    for name, value in ckpt["model"].items():
        if id(value) not in by_array:
            by_array[id(value)] = torch.from_numpy(np.ascontiguousarray(value))
        tensors[name] = by_array[id(value)]
    torch.save({**ckpt, "model": tensors}, f)


def reference_logits(params, config, idx, approximate):
    """nanoGPT's forward in float64 PyTorch on our params (names are shared), through the
    repository's one PyTorch GPT (benchmarks/torch_gpt.py); `approximate` is torch's GELU
    mode: "none" (nanoGPT's exact erf) or "tanh" (our "gelu")."""
    torch = _torch("the PyTorch reference forward")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:  # benchmarks/ beside examples/
        sys.path.insert(0, repo)
    from benchmarks.torch_gpt import TorchGPT

    gelu = "gelu" if approximate == "tanh" else "gelu_exact"
    model = TorchGPT(replace(config, activation=gelu), params, dtype=torch.float64, sdpa=True)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(np.asarray(idx)))[0].numpy()  # (B, T, V)


def import_nanogpt(ckpt_path, meta_path, out_path, trust_pickle=False, dtype="float32",
                   activation=None):
    """Convert nanoGPT's ckpt.pt + meta.pkl into our checkpoint `out_path`; return the
    report of tinygrad_char.interop.nanogpt.import_state (config, step, activation, notes, the
    logits differences from reference_logits). The output path and meta.pkl are checked
    before ckpt.pt is read; activation as import_state's."""
    out_path = os.fspath(out_path)
    nanogpt.check_output_file(out_path)
    tokenizer = nanogpt.read_meta(meta_path)
    ckpt_path = os.fspath(ckpt_path)
    ckpt = load_ckpt(ckpt_path, trust_pickle)
    return nanogpt.import_state(ckpt, tokenizer, out_path, reference_logits, ckpt_path,
                                _float64_array, dtype, activation)


def export_nanogpt(checkpoint_path, out_dir, dataset=DEFAULT_DATASET, meta_path=None,
                   force=False):
    """Write our checkpoint as nanoGPT's out_dir/ckpt.pt and meta.pkl (at `meta_path`,
    default out_dir/meta.pkl; sample.py looks for it at data/<dataset>/meta.pkl), the
    tensors in float32 (nanoGPT's parameter dtype). out_dir is created when its parent
    exists; existing files are replaced only with force.
    Returns a report: paths, model_args, step, unk_id, dataset, activation and the logits
    differences from reference_logits (max_diff_erf is what nanoGPT's forward will differ
    by). A "gelu" (tanh) model warns with GeluApproximationWarning."""
    _torch("writing ckpt.pt")
    out_dir, ckpt_path, meta_path = nanogpt.check_export_paths(out_dir, dataset, meta_path,
                                                               force)
    ckpt, vocab, report = nanogpt.export_state(checkpoint_path, reference_logits, dataset)
    nanogpt.write_export(ckpt, vocab, out_dir, ckpt_path, meta_path, save_ckpt)
    report.update(ckpt_path=ckpt_path, meta_path=meta_path)
    nanogpt.warn_export_gelu(report)
    return report
