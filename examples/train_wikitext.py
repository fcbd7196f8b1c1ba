"""Train a character-level GPT on WikiText-2 (raw) and report bits per character.

    python examples/train_wikitext.py --backend numpy --preset cpu \
        --data-dir ../shared/data/wikitext-2-raw --train-split validation

Online, WikiText-2 comes from the Hugging Face hub through `datasets`; offline, point
--data-dir (or TINYGRAD_CHAR_DATA_DIR) at a folder with wiki.{train,valid,test}.raw.
--text FILE trains on any plain text file instead (90/10 split).
"""

import os
import sys

from tinygrad_char.backend import BackendError
from tinygrad_char.checkpoint import CheckpointError
from tinygrad_char.data import DataError, prepare_text, prepare_wikitext2
from tinygrad_char.model import ConfigError
from tinygrad_char.config import build_parser, resolve_config
from tinygrad_char.train import NonFiniteLoss, train

PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def main(argv=None, default_text=None):
    parser = build_parser(__doc__.splitlines()[0], PRESETS)
    parser.add_argument("--data-dir", help="folder with wiki.{train,valid,test}.raw "
                                           "(default: $TINYGRAD_CHAR_DATA_DIR, else the hub)")
    parser.add_argument("--train-split", default="train",
                        help="the split that trains: train (default), validation or test")
    parser.add_argument("--max-lines", type=int, default=None,
                        help="keep only the first N lines of each split")
    parser.add_argument("--text", default=default_text,
                        help="train on this plain text file instead (90%% train, 10%% val)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args, PRESETS)
        if args.text:
            data = prepare_text(args.text)
        else:
            data = prepare_wikitext2(args.data_dir, args.train_split, args.max_lines)
        results = train(cfg, data, resume=args.resume, progress=not args.no_progress)
    except (BackendError, CheckpointError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:  # the run diverged: not a bad input, but no traceback either
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 130 if results.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
