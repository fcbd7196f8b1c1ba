"""Train a character-level GPT on any plain text file (first 90% trains, last 10% validates).

    tinygrad-char train-text --text input.txt --preset nanogpt_cpu

Every training flag of `tinygrad-char train` applies (model, optimisation, --preset,
--config, --resume, --overwrite, --out-dir); --text FILE is required and replaces the
WikiText-2 flags.
"""

import sys

from tinygrad_char.commands import train
from tinygrad_char.training.cli import run_cli
from tinygrad_char.training.distributed import run_ranks


def main(argv=None):
    return train.main(argv, description=__doc__.splitlines()[0], text_only=True)


def cli(argv=None):
    """main under run_cli (and run_ranks: under mpiexec a rank failing alone ends the job)."""
    return run_ranks(run_cli, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
