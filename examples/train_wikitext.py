"""Train a character-level GPT on WikiText-2 (raw) and report bits per character.

    python examples/train_wikitext.py --backend numpy --preset cpu

The same as `tinygrad-char train`, the installed command (or `python -m
tinygrad_char`): this script only runs tinygrad_char.commands.train.main,
where the flags, checks and messages live.
`--help` lists the flags; every error is one line "error: ..." and exit status 2.
"""

import sys

from tinygrad_char.commands.train import main
from tinygrad_char.training.cli import run_cli
from tinygrad_char.training.distributed import run_ranks

if __name__ == "__main__":
    # under mpiexec, a rank that fails alone ends the whole job (distributed.run_ranks)
    sys.exit(run_ranks(run_cli, main))
