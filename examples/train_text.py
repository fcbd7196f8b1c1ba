"""Train a character-level GPT on any plain text file (first 90% trains, last 10% validates).

    python examples/train_text.py --text input.txt --config examples/configs/nanogpt_cpu.json

Every training flag of train_wikitext.py applies (model, optimisation, --preset,
--config, --resume, --out-dir); --text FILE is required and replaces the WikiText-2 flags.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_wikitext import main as train_main  # noqa: E402

from tinygrad_char.training.cli import run_cli  # noqa: E402
from tinygrad_char.training.distributed import run_ranks  # noqa: E402


def main(argv=None):
    return train_main(argv, description=__doc__.splitlines()[0], text_only=True)


if __name__ == "__main__":
    # under mpiexec, a rank that fails alone ends the whole job (distributed.run_ranks)
    sys.exit(run_ranks(run_cli, main))
