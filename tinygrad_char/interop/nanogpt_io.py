"""nanoGPT's files, read and written: the import-nanogpt and export-nanogpt conversions.

This module is what the import-nanogpt and export-nanogpt commands (tinygrad_char.commands)
call. nanoGPT's ckpt.pt is a torch.save file, read and written by
tinygrad_char.interop.torch_file with NumPy alone (the library never imports torch):

- `read_ckpt` / `load_ckpt`: ckpt.pt -> nanoGPT's dict with NumPy arrays for tensors,
  through torch_file's restricted unpickler (tensors and plain data only, as
  torch.load(weights_only=True); trust_pickle=True also builds other classes, not
  torch's, and runs code from the file), after the library's format sniffing, with its
  one-line errors;
- `save_ckpt`: the ckpt dict of NumPy arrays the library builds -> torch.save's format
  (lm_head.weight and transformer.wte.weight, one array, stay one shared tensor, as
  nanoGPT saves them), which nanoGPT's torch.load reads;
- `reference_logits`: nanoGPT's forward in float64, computed by our own xp ops (with
  nanoGPT's GELU: exact erf, or tanh), which checks every conversion;
- `import_nanogpt` and `export_nanogpt`: the two whole conversions, these three wrapped
  around tinygrad_char.interop.nanogpt's `import_state` and `export_state`.

What it is not: every check, message, layout conversion, the vocabulary, meta.pkl and the
comparison of logits are tinygrad_char.interop.nanogpt's (its docstring says what is
converted, what is refused and how GELU differs); nothing of that is repeated here.
nanoGPT's forward is our GPT's by construction (same names, layouts and pre-norm
blocks): the tests check that against PyTorch running nanoGPT's code.
"""

import os
from dataclasses import replace

import numpy as np

from tinygrad_char.interop import nanogpt, torch_file
from tinygrad_char.interop.nanogpt import DEFAULT_DATASET, ConversionError
from tinygrad_char.model import GPT


def load_ckpt(path, trust_pickle=False):
    """nanoGPT's ckpt.pt as a dict, its tensors NumPy arrays (torch_file.load; plain data
    and tensors only unless trust_pickle), after the library's check that it is a whole
    torch.save file."""
    path = os.fspath(path)
    nanogpt._check_torch_file(path)
    try:
        return torch_file.load(path, allow_pickle=trust_pickle)
    except Exception as e:  # refused objects, a damaged zip member, cut pickle, ...
        raise nanogpt.ckpt_load_error(path, e, trust_pickle) from None


def read_ckpt(path, trust_pickle=False):
    """(state dict of float64 NumPy arrays without the compile prefix, model_args, iter_num,
    the run's config dict) of nanoGPT's ckpt.pt."""
    path = os.fspath(path)
    return nanogpt.ckpt_contents(load_ckpt(path, trust_pickle), path)


def save_ckpt(ckpt, f):
    """Write `ckpt` (the library's dict, its "model" NumPy arrays) to the binary file `f`
    in torch.save's format; arrays that are one object (the tied lm_head.weight and
    transformer.wte.weight) become one shared tensor."""
    torch_file.save(ckpt, f)


def reference_logits(params, config, idx, approximate):
    """nanoGPT's forward in float64 on our params (names are shared): our GPT with the xp
    ops and nanoGPT's GELU, `approximate` as torch's F.gelu: "none" (nanoGPT's exact erf,
    our "gelu_exact") or "tanh" (our "gelu"). Returns the (B, T, V) logits."""
    gelu = "gelu" if approximate == "tanh" else "gelu_exact"
    try:
        model = GPT(replace(config, activation=gelu), dtype="float64", kernels="xp").eval()
        for name, value in params.items():
            model.params[name] = model.xp.asarray(value, dtype=np.float64)
        return model.backend.to_numpy(model.forward(np.asarray(idx))[0])  # (B, T, V)
    except ImportError as e:  # the erf of "gelu_exact" needs scipy
        raise ConversionError(f"the reference forward with {gelu}: {e}") from None


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
                                dtype=dtype, activation=activation)


def export_nanogpt(checkpoint_path, out_dir, dataset=DEFAULT_DATASET, meta_path=None,
                   force=False):
    """Write our checkpoint as nanoGPT's out_dir/ckpt.pt and meta.pkl (at `meta_path`,
    default out_dir/meta.pkl; sample.py looks for it at data/<dataset>/meta.pkl), the
    tensors in float32 (nanoGPT's parameter dtype). out_dir is created when its parent
    exists; existing files are replaced only with force.
    Returns a report: paths, model_args, step, unk_id, dataset, activation and the logits
    differences from reference_logits (max_diff_erf is what nanoGPT's forward will differ
    by). A "gelu" (tanh) model warns with GeluApproximationWarning."""
    out_dir, ckpt_path, meta_path = nanogpt.check_export_paths(out_dir, dataset, meta_path,
                                                               force)
    ckpt, vocab, report = nanogpt.export_state(checkpoint_path, reference_logits, dataset)
    nanogpt.write_export(ckpt, vocab, out_dir, ckpt_path, meta_path, save_ckpt)
    report.update(ckpt_path=ckpt_path, meta_path=meta_path)
    nanogpt.warn_export_gelu(report)
    return report
