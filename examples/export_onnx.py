"""Export a checkpoint's forward to ONNX (opset 17) and check it against our NumPy forward.

    python examples/export_onnx.py --checkpoint out/ckpt.safetensors --out model.onnx

The same as `tinygrad-char export-onnx`, the installed command (or `python -m
tinygrad_char`): this script only runs tinygrad_char.commands.export_onnx.main,
where the flags, checks and messages live.
`--help` lists the flags; every error is one line "error: ..." and exit status 2.
"""

import sys

from tinygrad_char.commands.export_onnx import main
from tinygrad_char.training.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
