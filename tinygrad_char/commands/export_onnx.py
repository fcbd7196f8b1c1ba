"""Export a checkpoint's forward to ONNX (opset 17) and check it against our NumPy forward.

    tinygrad-char export-onnx --checkpoint out/ckpt.safetensors --out model.onnx

The graph is built from the parameters with onnx.helper (tinygrad_char.interop.onnx_export): input
`idx` int64 (batch, seq), output `logits` float32 (batch, seq, V); the config and the
vocabulary travel in the file's metadata. After onnx.checker, the script runs the file on
onnxruntime (when installed) and prints the largest relative logits difference from
`model.forward` on a random batch at T = 1 and T = block_size. Needs the extra `onnx`.
Every error is one line "error: ..." on stderr and exit status 2.
"""

import os
import sys

import numpy as np

from tinygrad_char.backend import BackendError
from tinygrad_char.training.checkpoint import load_checkpoint
from tinygrad_char.training.cli import Parser, UsageError, check_output_path, run_cli
from tinygrad_char.interop.onnx_export import OnnxModel, save_onnx

TOLERANCE = 1e-4  # float32 forward vs onnxruntime, relative to the largest logit


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a .safetensors checkpoint written by training")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="file to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it exists (default: refuse)")
    args = p.parse_args(argv)
    check_output_path("--out", args.out)  # before the (slower) load and export
    if os.path.isfile(args.out) and not args.overwrite:
        raise UsageError(f"--out {args.out} exists; pass --overwrite to replace it, or choose "
                         f"another path")
    try:
        model, tokenizer, meta = load_checkpoint(args.checkpoint, dtype="float32")
        proto = save_onnx(model.eval(), tokenizer, args.out, step=meta["step"])
    except ValueError as e:  # the library's checks: one line each (CheckpointError too)
        raise UsageError(str(e)) from None
    print(f"wrote {args.out}: opset {proto.opset_import[0].version}, "
          f"{model.num_params():,} parameters, {len(proto.graph.node)} nodes, onnx.checker ok")

    try:
        onnx_model = OnnxModel(args.out, model.config)
    except BackendError as e:
        print(f"not checked on onnxruntime: {e}")
        return 0
    cfg, rng = model.config, np.random.default_rng(0)
    worst = 0.0
    for T in sorted({1, cfg.block_size}):
        idx = rng.integers(0, cfg.vocab_size, size=(2, T))
        ours, _ = model.forward(idx)
        theirs, _ = onnx_model.forward(idx)
        worst = max(worst, float(np.abs(theirs - ours).max() / np.abs(ours).max()))
    print(f"onnxruntime vs NumPy forward: max relative logits difference {worst:.2e}")
    if not worst <= TOLERANCE:
        print(f"error: the exported model disagrees with the checkpoint (> {TOLERANCE}); "
              f"please report this", file=sys.stderr)
        return 1
    return 0


def cli(argv=None):
    """main under run_cli: a bad input is one line "error: ..." and exit status 2."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
