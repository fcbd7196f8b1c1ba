"""Train a character-level GPT on WikiText-2 (raw) and report bits per character.

    tinygrad-char train --backend numpy --preset cpu \
        --data-dir wikitext-2-raw --train-split validation

Online, WikiText-2 comes from the Hugging Face hub through `datasets`; offline, point
--data-dir (or TINYGRAD_CHAR_DATA_DIR) at a folder with wiki.{train,valid,test}.raw.
With neither, it trains on a small sample text shipped in the package (seven Shakespeare
tragedies) and says so; --data-fallback false makes that an error instead.
--text FILE trains on any plain text file instead (90/10 split).
Under `mpiexec -n N` (or `srun`) the same command trains one model on N ranks, each batch
split over them (pip install "tinygrad-char[mpi]"; docs/scaling.md).

A fresh run never replaces a checkpoint it did not resume: an --out-dir that holds one is
refused before anything is read (--resume continues it, --overwrite starts over). Every
setting, the resume file and the backend are checked before the data is read.
"""

import signal
import sys
from pathlib import Path

from tinygrad_char.training.checkpoint import check_out_dir_free, check_resumable
from tinygrad_char.training.cli import int_arg, run_cli
from tinygrad_char.training.config import (build_parser, check_out_dir, check_train_memory,
                                           resolve_config)
from tinygrad_char.training.distributed import launched_world, run_ranks
from tinygrad_char.training.data import WIKITEXT2_FILES, prepare_text, prepare_wikitext2
from tinygrad_char.training.train import NonFiniteLoss, train


def presets_dir():
    """The folder of the --preset files: inside an installed package (tinygrad_char/configs,
    which pyproject maps from examples/configs), else the repository's examples/configs."""
    here = Path(__file__).resolve().parents[1]
    for folder in (here / "configs", here.parent / "examples" / "configs"):
        if folder.is_dir():
            return str(folder)
    return str(here / "configs")  # --preset then says the preset is unknown


PRESETS = presets_dir()


def build_train_parser(description, text_only=False):
    """The training flags; text_only: --text is required and the WikiText-2 flags absent
    (the train-text command)."""
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
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out-dir that holds a checkpoint (replacing "
                             "it) instead of refusing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_backend(cfg):
    """Refuse (one BackendError line) a backend, kernels or dtype this machine cannot run,
    before any data is read. Under an MPI launcher the GPU is chosen per rank later, so
    only CuPy's import is checked here."""
    import numpy as np

    from tinygrad_char.backend import BackendError, _cupy_or_error
    from tinygrad_char.fused.cpu import numba_available
    from tinygrad_char.fused.dispatch import check_mode
    from tinygrad_char.training.precision import set_tf32

    gpu = cfg.backend == "cupy" or cfg.kernels == "fused"
    if gpu and launched_world()[0] == 1:
        if cfg.kernels == "fused":
            check_mode("fused", "cupy")  # says what the fused kernels need
        _cupy_or_error()
    elif gpu:
        try:
            import cupy  # noqa: F401
        except Exception as e:
            raise BackendError(f"backend 'cupy' unavailable: CuPy is not installed ({e}); "
                               f"use --backend numpy") from None
    if cfg.kernels == "cpu" and not numba_available():
        check_mode("cpu")  # raises, naming the fix
    if cfg.dtype == "tf32" and cfg.backend == "numpy":
        set_tf32(np, True)  # raises, naming the fix


def main(argv=None, description=__doc__.splitlines()[0], text_only=False):
    args = build_train_parser(description, text_only).parse_args(argv)
    # every setting is checked before the data is read or anything is allocated
    cfg = resolve_config(args, PRESETS)
    check_out_dir(cfg.out_dir)
    if args.resume:  # first: a missing or foreign resume file is the problem to name
        check_resumable(args.resume, cfg.model_config)
    check_out_dir_free(cfg.out_dir, args.resume, args.overwrite)
    check_backend(cfg)
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


def cli(argv=None):
    """main under run_cli; under mpiexec, a rank that fails alone ends the whole job
    (distributed.run_ranks). A bad input is one line "error: ..." and exit status 2."""
    return run_ranks(run_cli, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
