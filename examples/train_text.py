"""Train a character-level GPT on any plain text file (first 90% trains, last 10% validates).

    python examples/train_text.py --text ../shared/data/tinyshakespeare/input.txt \
        --config examples/configs/nanogpt_cpu.json

Every flag of train_wikitext.py applies; this script only makes --text required.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_wikitext import main  # noqa: E402

if __name__ == "__main__":
    if not any(a == "--text" or a.startswith("--text=") for a in sys.argv[1:]):
        print("error: --text FILE is required (a plain text file to train on)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
