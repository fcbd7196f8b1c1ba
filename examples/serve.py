"""Serve a checkpoint over HTTP (FastAPI + uvicorn; the extra `serve`).

    python examples/serve.py --checkpoint out/ckpt.safetensors

The same as `tinygrad-char serve`, the installed command (or `python -m
tinygrad_char`): this script only runs tinygrad_char.commands.serve.main,
where the flags, checks and messages live.
`--help` lists the flags; every error is one line "error: ..." and exit status 2.
"""

import sys

from tinygrad_char.commands.serve import main
from tinygrad_char.training.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
