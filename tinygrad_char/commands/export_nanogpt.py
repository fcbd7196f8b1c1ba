"""Export a tinygrad_char checkpoint as nanoGPT's ckpt.pt + meta.pkl (for its sample.py).

    tinygrad-char export-nanogpt --checkpoint out/ckpt.safetensors --out-dir out-nano
    # then, in nanoGPT's folder (sample.py reads data/<dataset>/meta.pkl):
    mkdir -p data/tinygrad_char && cp out-nano/meta.pkl data/tinygrad_char/
    python sample.py --out_dir=out-nano --device=cpu

A thin command line over tinygrad_char.interop.nanogpt_io.export_nanogpt (which writes
ckpt.pt without torch; tinygrad_char.interop.nanogpt's docstring says what can be exported and how
GELU differs: our default "gelu" is the tanh approximation,
nanoGPT computes exact erf GELU, so a "gelu" model gets a warning with the measured
logits difference; a "gelu_exact" model exports exactly). Our unknown id is an ordinary
entry of meta.pkl's itos/stoi (it decodes to U+FFFD).
Every error is one line "error: ..." on stderr and exit status 2.
"""

import argparse
import sys
import warnings

from tinygrad_char.interop.nanogpt_io import export_nanogpt
from tinygrad_char.training.cli import Parser, run_cli
from tinygrad_char.interop.nanogpt import (DEFAULT_DATASET, ConversionError,
                                           GeluApproximationWarning)


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a .safetensors checkpoint written by training")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="folder for ckpt.pt (and meta.pkl); created if its parent exists")
    p.add_argument("--dataset", default=DEFAULT_DATASET, metavar="NAME",
                   help=f"the data set name in ckpt.pt: sample.py reads "
                        f"data/NAME/meta.pkl (default {DEFAULT_DATASET})")
    p.add_argument("--meta", default=None, metavar="PATH",
                   help="where to write meta.pkl (default OUT_DIR/meta.pkl), e.g. "
                        "NANOGPT/data/NAME/meta.pkl")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing ckpt.pt / meta.pkl")
    p.add_argument("--force", action="store_true", dest="overwrite",
                   help=argparse.SUPPRESS)  # the flag's former name, still accepted
    args = p.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GeluApproximationWarning)
            report = export_nanogpt(args.checkpoint, args.out_dir, args.dataset, args.meta,
                                    args.overwrite)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    a = report["model_args"]
    unk = f", unknown id {report['unk_id']} (U+FFFD)" if report["unk_id"] is not None else ""
    print(f"wrote {report['ckpt_path']}: step {report['step']}, {a['n_layer']} layers x "
          f"{a['n_head']} heads x {a['n_embd']}, block {a['block_size']}, "
          f"vocab {a['vocab_size']}{unk}, bias={a['bias']}")
    print(f"wrote {report['meta_path']}")
    print(f"  logits nanoGPT will compute (erf GELU) vs ours: max |difference| "
          f"{report['max_diff_erf']:.2e} (largest logit {report['max_abs_logit']:.2f})")
    print(f"  to sample, in nanoGPT's folder: mkdir -p data/{report['dataset']} && "
          f"cp {report['meta_path']} data/{report['dataset']}/ && "
          f"python sample.py --out_dir={args.out_dir} --device=cpu")
    return 0


def cli(argv=None):
    """main under run_cli: a bad input is one line "error: ..." and exit status 2."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
