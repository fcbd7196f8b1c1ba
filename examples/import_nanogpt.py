"""Convert a character-level nanoGPT checkpoint into a tinygrad_char checkpoint.

    python examples/import_nanogpt.py out-shakespeare-char/ckpt.pt \
        data/shakespeare_char/meta.pkl shakespeare_char.safetensors

The same as `tinygrad-char import-nanogpt`, the installed command (or `python -m
tinygrad_char`): this script only runs tinygrad_char.commands.import_nanogpt.main,
where the flags, checks and messages live.
`--help` lists the flags; every error is one line "error: ..." and exit status 2.
"""

import sys

from tinygrad_char.commands.import_nanogpt import main
from tinygrad_char.training.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
