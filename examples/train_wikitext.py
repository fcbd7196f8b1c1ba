"""Train a character-level GPT on WikiText-2 (raw) and report bits per character.

    python examples/train_wikitext.py --backend numpy --preset cpu \
        --data-dir wikitext-2-raw --train-split validation

Online, WikiText-2 comes from the Hugging Face hub through `datasets`; offline, point
--data-dir (or TINYGRAD_CHAR_DATA_DIR) at a folder with wiki.{train,valid,test}.raw.
With neither, it trains on a small sample text shipped in the package (seven Shakespeare
tragedies) and says so; --data-fallback false makes that an error instead.
--text FILE trains on any plain text file instead (90/10 split).
Under `mpiexec -n N` (or `srun`) the same command trains one model on N ranks, each batch
split over them (pip install "tinygrad-char[mpi]"; docs/scaling.md).
"""

import os
import signal
import sys

from tinygrad_char.training.cli import int_arg, run_cli
from tinygrad_char.training.config import (build_parser, check_out_dir, check_train_memory,
                                           resolve_config)
from tinygrad_char.training.distributed import launched_world, run_ranks
from tinygrad_char.training.data import WIKITEXT2_FILES, prepare_text, prepare_wikitext2
from tinygrad_char.training.train import NonFiniteLoss, train

PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def build_train_parser(description, text_only=False):
    """The training flags; text_only: --text is required and the WikiText-2 flags absent
    (examples/train_text.py)."""
    parser = build_parser(description, PRESETS)
    if text_only:
        parser.add_argument("--text", required=True, metavar="FILE",
                            help="the plain text file to train on (90%% train, 10%% val)")
    else:
        parser.add_argument("--data-dir", metavar="DIR",
                            help="folder with wiki.{train,valid,test}.raw (default: "
                                 "$TINYGRAD_CHAR_DATA_DIR, else the hub, else the packaged "
                                 "sample text)")
        parser.add_argument("--train-split", default="train", choices=tuple(WIKITEXT2_FILES),
                            help="the split that trains (default: train)")
        parser.add_argument("--max-lines", type=int_arg(1), default=None, metavar="N",
                            help="keep only the first N lines of each split")
        parser.add_argument("--text", metavar="FILE",
                            help="train on this plain text file instead (90%% train, 10%% val)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None, description=__doc__.splitlines()[0], text_only=False):
    args = build_train_parser(description, text_only).parse_args(argv)
    # every setting is checked before the data is read or anything is allocated
    cfg = resolve_config(args, PRESETS)
    check_out_dir(cfg.out_dir)
    check_train_memory(cfg)  # for any vocabulary; bad sizes fail here, not in init
    speaks = launched_world()[1] == 0  # under mpiexec, rank 0 alone reports the data
    if args.text:
        data = prepare_text(args.text, verbose=speaks)
    else:
        data = prepare_wikitext2(args.data_dir, args.train_split, args.max_lines, verbose=speaks,
                                 fallback=cfg.data_fallback)
    try:
        results = train(cfg, data, resume=args.resume, progress=not args.no_progress)
    except NonFiniteLoss as e:  # the run diverged: not a bad input, but no traceback either
        if speaks:  # every rank saw the same loss: one line, and all leave together
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if results.get("interrupted"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # saved: more Ctrl-C's while exiting
        return 130
    return 0


if __name__ == "__main__":
    # under mpiexec, a rank that fails alone ends the whole job (distributed.run_ranks)
    sys.exit(run_ranks(run_cli, main))  # a bad input is one line "error: ..." and exit status 2
