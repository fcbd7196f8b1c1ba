"""`python -m tinygrad_char COMMAND ...`: the `tinygrad-char` command (tinygrad_char.commands)."""

import sys

from tinygrad_char.commands import main

if __name__ == "__main__":
    sys.exit(main())
