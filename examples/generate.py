"""Sample text from a trained checkpoint.

    python examples/generate.py --checkpoint out/ckpt.safetensors --prompt "ROMEO:"

The same as `tinygrad-char generate`, the installed command (or `python -m
tinygrad_char`): this script only runs tinygrad_char.commands.generate.main,
where the flags, checks and messages live.
`--help` lists the flags; every error is one line "error: ..." and exit status 2.
"""

import sys

from tinygrad_char.commands.generate import main
from tinygrad_char.training.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
