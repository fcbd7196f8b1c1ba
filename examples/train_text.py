"""Train a character-level GPT on any plain text file (first 90% trains, last 10% validates).

    python examples/train_text.py --text input.txt --preset nanogpt_cpu

The same as `tinygrad-char train-text`, the installed command (or `python -m
tinygrad_char`): this script only runs tinygrad_char.commands.train_text.main,
where the flags, checks and messages live.
`--help` lists the flags; every error is one line "error: ..." and exit status 2.
"""

import sys

from tinygrad_char.commands.train_text import main
from tinygrad_char.training.cli import run_cli
from tinygrad_char.training.distributed import run_ranks

if __name__ == "__main__":
    # under mpiexec, a rank that fails alone ends the whole job (distributed.run_ranks)
    sys.exit(run_ranks(run_cli, main))
