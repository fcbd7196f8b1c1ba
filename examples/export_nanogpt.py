"""Export a tinygrad_char checkpoint as nanoGPT's ckpt.pt + meta.pkl (for its sample.py).

    python examples/export_nanogpt.py --checkpoint out/ckpt.safetensors --out-dir out-nano

The same as `tinygrad-char export-nanogpt`, the installed command (or `python -m
tinygrad_char`): this script only runs tinygrad_char.commands.export_nanogpt.main,
where the flags, checks and messages live.
`--help` lists the flags; every error is one line "error: ..." and exit status 2.
"""

import sys

from tinygrad_char.commands.export_nanogpt import main
from tinygrad_char.training.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
