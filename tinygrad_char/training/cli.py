"""What every command-line entry point shares: a parser whose errors are one line, argument
types that refuse out-of-range and non-finite numbers, the check of an output path, and
`run_cli`, which turns a bad input into one line "error: ..." and exit status 2 instead of
a traceback.

    def main(argv=None):
        p = Parser(description="...")
        p.add_argument("--seed", type=int_arg(0, MAX_SEED), default=0)
        args = p.parse_args(argv)
        ...                                   # raise UsageError("--x 5: ...; use ...")

    if __name__ == "__main__":
        sys.exit(run_cli(main))

What this file deliberately is not: the flags of any one script (each example declares its
own); a place that knows the package's other modules (it imports errors.py, whose UserError
every bad-input error derives from, and schema.py's wording of ranges, nothing else); how
the ranks of an MPI job report one line together (distributed.report_once, which
distributed.run_ranks hands to run_cli); or a place that hides bugs: only a UserError (and
a path that cannot be read or written) becomes one line, anything else keeps its
traceback, so it gets reported.
"""

import argparse
import os
import sys
import tempfile

from tinygrad_char.errors import UserError
from tinygrad_char.schema import MAX_SEED, range_error  # noqa: F401 (MAX_SEED: for the scripts)


class UsageError(UserError, ValueError):
    """A command-line value cannot be used; the message names the flag, the value, the fix."""


def _one_line(text):
    return " ".join(str(text).split())


def print_error(line):
    """The one error line of a single process, on stderr."""
    print(line, file=sys.stderr)


def run_cli(main, argv=None, report=print_error):
    """Run `main(argv)` and return its exit status (None counts as 0).

    A UserError becomes "error: <message>", given to `report` (default: printed on
    stderr), and status 2; Ctrl-C outside any handler of main's own becomes "interrupted"
    and 130 (128 + SIGINT); a closed stdout (`... | head`) ends quietly; an OSError (a
    path that cannot be read or written) becomes one line naming the file.
    """
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away: stop writing, and keep Python's exit flush from raising
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (e.g. captured in a test)
            pass
        return 0
    except UserError as e:
        report(f"error: {_one_line(e)}")
        return 2
    except MemoryError:
        report("error: out of memory: ask for smaller sizes (fewer layers, a narrower "
               "model, a shorter context, a smaller batch)")
        return 2
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        report(f"error: {_one_line(e.strerror or e)}{where}")
        return 2
    return 0 if status is None else status


class Parser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError "... (see --help)", which run_cli prints as
    one line with status 2 (argparse's own prints a usage block first and exits)."""

    def error(self, message):
        raise UsageError(f"{_one_line(message)} (see --help)")


def _number_arg(kind, low, high, low_open, high_open, hint):
    def parse(text):
        value = kind(text)  # ValueError: argparse says "invalid int value: 'x'"
        problem = range_error(value, low, high, low_open, high_open)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}{hint}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def int_arg(low=None, high=None, hint=""):
    """An argparse `type=` for an integer in [low, high]; `hint` is appended to the error
    (e.g. "; 0 disables it")."""
    return _number_arg(int, low, high, False, False, hint)


def float_arg(low=None, high=None, low_open=False, high_open=False, hint=""):
    """An argparse `type=` for a finite float within the bounds (NaN and inf refused)."""
    return _number_arg(float, low, high, low_open, high_open, hint)


def check_output_path(flag, path, error=UsageError, folder=False, create=False):
    """Raise `error` before any work unless `path` can be written. A file (folder False):
    not empty, not a folder, in a folder that exists and can be written. A folder (folder
    True): not a file; when missing, made here with its parents (create True), else its
    parent must exist (the writer makes it); either way the folder that will hold the
    output takes a test file. The message starts with "flag path" (the path alone when
    `flag` is None)."""
    path = os.fspath(path)
    what = f"{flag} {path}" if flag else path
    if not path:
        raise error(f"{flag or 'the output path'} is empty: give a "
                    f"{'folder' if folder else 'file name'}")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise error(f"{what}: exists and is not a folder; choose another folder")
    if not folder and os.path.isdir(path):
        raise error(f"{what} is a folder; give a file name inside it, e.g. "
                    f"{os.path.join(path, 'out')}")
    if create:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise error(f"{what} cannot be written ({e.strerror}); choose a folder you can "
                        f"write to") from None
    holder = path if folder and os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(holder):
        raise error(f"{what}: the folder {holder} does not exist; create it first "
                    f"(mkdir -p {holder}) or choose another path")
    try:  # a real write: os.access says yes to root on a read-only file system
        with tempfile.TemporaryFile(dir=holder):
            pass
    except OSError as e:
        raise error(f"{what} cannot be written ({e.strerror} in {holder}); choose a folder "
                    f"you can write to") from None
