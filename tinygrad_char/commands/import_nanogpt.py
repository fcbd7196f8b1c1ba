"""Convert a character-level nanoGPT checkpoint into a tinygrad_char checkpoint.

    tinygrad-char import-nanogpt out-shakespeare-char/ckpt.pt \
        data/shakespeare_char/meta.pkl shakespeare_char.safetensors

A thin command line over tinygrad_char.interop.nanogpt_io.import_nanogpt (which reads
ckpt.pt without torch; tinygrad_char.interop.nanogpt's docstring says what is converted, what is
refused and how GELU differs). It prints what it wrote, the notes
of the conversion and, when the imported model uses our tanh GELU, the measured logits
difference from nanoGPT's exact-erf GELU. Every error
is one line "error: ..." on stderr and exit status 2.
"""

import os
import sys
import warnings

from tinygrad_char.interop.nanogpt_io import import_nanogpt
from tinygrad_char.training.cli import Parser, run_cli
from tinygrad_char.interop.nanogpt import (ConversionError, GeluApproximationWarning,
                                           exact_gelu)


def main(argv=None):
    activations = [a for a in (exact_gelu(), "gelu") if a]
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="nanoGPT's ckpt.pt")
    p.add_argument("meta", help="the data set's meta.pkl (stoi/itos)")
    p.add_argument("out", help="the .safetensors checkpoint to write")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also build Python classes other than tensors and plain data that "
                        "ckpt.pt holds (runs code from the file)")
    p.add_argument("--activation", choices=activations, default=None,
                   help=f"the GELU of the imported model (default: the one an export of ours "
                        f"recorded, else {activations[0]}; nanoGPT's is exact erf)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it exists (default: refuse)")
    args = p.parse_args(argv)
    if os.path.isfile(args.out) and not args.overwrite:  # a folder: the library's line
        print(f"error: {args.out} exists; pass --overwrite to replace it, or choose another "
              f"path", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GeluApproximationWarning)
            report = import_nanogpt(args.ckpt, args.meta, args.out, args.trust_pickle,
                                    activation=args.activation)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    cfg = report["config"]
    print(f"wrote {args.out}: step {report['step']}, {cfg['n_layer']} layers x "
          f"{cfg['n_head']} heads x {cfg['n_embd']}, block {cfg['block_size']}, "
          f"vocab {cfg['vocab_size']}, bias={cfg['bias']}, tied={cfg['tie_weights']}, "
          f"activation {cfg['activation']}")
    for note in report["notes"]:
        print(f"  {note}")
    print(f"  logits vs nanoGPT's forward (erf GELU): max |difference| "
          f"{report['max_diff_erf']:.2e} (largest logit {report['max_abs_logit']:.2f})")
    return 0


def cli(argv=None):
    """main under run_cli: a bad input is one line "error: ..." and exit status 2."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
