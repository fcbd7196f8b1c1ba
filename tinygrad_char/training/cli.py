"""What every command-line entry point shares: a parser whose errors are one line, argument
types that refuse out-of-range and non-finite numbers, and `run_cli`, which turns a bad
input into one line "error: ..." and exit status 2 instead of a traceback.

    def main(argv=None):
        p = Parser(description="...")
        p.add_argument("--seed", type=int_arg(0, MAX_SEED), default=0)
        args = p.parse_args(argv)
        ...                                   # raise UsageError("--x 5: ...; use ...")

    if __name__ == "__main__":
        sys.exit(run_cli(main))

What this file deliberately is not: the flags of any one script (each example declares its
own), or a place that hides bugs: only the error classes that mean "this input cannot be
used" become one line; anything else still shows its traceback, so it gets reported.
"""

import argparse
import math
import numbers
import os
import sys

MAX_SEED = 2**63 - 1  # the largest seed anywhere (flags, configs, the server): fits int64


class UsageError(ValueError):
    """A command-line value cannot be used; the message names the flag, the value, the fix."""


def _user_errors():
    """The exception classes that mean bad input rather than a bug (imported on use, so
    this module imports nothing heavy)."""
    from tinygrad_char.backend import BackendError
    from tinygrad_char.training.checkpoint import CheckpointError
    from tinygrad_char.training.data import DataError
    from tinygrad_char.fused.cuda import KernelError
    from tinygrad_char.model import ConfigError

    return (UsageError, ConfigError, DataError, CheckpointError, BackendError, KernelError)


def _one_line(text):
    return " ".join(str(text).split())


OTHER_RANK_DELAY = 2.0  # seconds a rank other than 0 waits before reporting a bad input
FORWARD_DELAY = 0.5  # seconds rank 0 gives the launcher to pass its line on before aborting


def report_error(line):
    """Print one error line on stderr; the caller then exits with status 2.

    Under an MPI launcher every rank parses the same flags and meets the same bad input:
    rank 0 prints the line and ends the whole job at once (MPI_Abort, status 2), while
    another rank first waits OTHER_RANK_DELAY, so the line is printed once; a bad input
    met by that rank alone is still reported, a moment later (and distributed.run_ranks
    then ends the job)."""
    from tinygrad_char.training import rank_watch
    from tinygrad_char.training.distributed import launched_world

    size, rank = launched_world()
    if size == 1:
        print(line, file=sys.stderr)
        return
    try:
        from mpi4py import MPI  # initialises MPI: every rank must, before rank 0 can abort
    except ImportError:  # a launcher without mpi4py: each rank reports for itself
        print(line, file=sys.stderr)
        return
    import time

    if rank == 0:
        print(line, file=sys.stderr)
        sys.stderr.flush()
        time.sleep(FORWARD_DELAY)  # the launcher forwards the line before the abort ends it
        rank_watch.say("abort")  # the rank watcher (when one runs) keeps quiet
        MPI.COMM_WORLD.Abort(2)
    time.sleep(OTHER_RANK_DELAY)
    print(line, file=sys.stderr)


def run_cli(main, argv=None):
    """Run `main(argv)` and return its exit status (None counts as 0).

    A known bad-input error becomes "error: <message>" on stderr and status 2; Ctrl-C
    outside any handler of main's own becomes "interrupted" and 130 (128 + SIGINT); a
    closed stdout (`... | head`) ends quietly; an OSError (a path that cannot be read
    or written) becomes one line naming the file.
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
    except _user_errors() as e:
        report_error(f"error: {_one_line(e)}")
        return 2
    except MemoryError:
        report_error("error: out of memory: ask for smaller sizes (fewer layers, a narrower "
                     "model, a shorter context, a smaller batch)")
        return 2
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        report_error(f"error: {_one_line(e.strerror or e)}{where}")
        return 2
    return 0 if status is None else status


class Parser(argparse.ArgumentParser):
    """argparse, with every error on one line "error: ... (see --help)" and status 2
    (argparse's own prints a usage block first)."""

    def error(self, message):
        report_error(f"error: {_one_line(message)} (see --help)")
        self.exit(2)


def describe_range(low=None, high=None, low_open=False, high_open=False):
    """'>= 1', '> 0', '<= 5' or 'in [0, 1)': the allowed values, for messages and --help."""
    def show(x):
        return "2**63 - 1" if x == MAX_SEED else f"{x:g}" if isinstance(x, float) else str(x)

    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {show(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {show(high)}"
    return "any value"


def range_error(value, low=None, high=None, low_open=False, high_open=False):
    """None when `value` (an int or float) is allowed, else what is wrong with it.
    Floats must also be finite: NaN passes every comparison test by failing it."""
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return f"must be a finite number {describe_range(low, high, low_open, high_open)}"
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        return f"must be {describe_range(low, high, low_open, high_open)}"
    return None


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


def check_output_path(flag, path, error=UsageError):
    """Raise `error` unless `path` is a file name that can be written: not empty, not a
    folder, in a writable folder that exists. The message starts with "flag path" (just
    the path when `flag` is None)."""
    path = os.fspath(path)
    what = f"{flag} {path}" if flag else path
    if not path:
        raise error(f"{flag or 'the output path'} is empty: give a file name")
    if os.path.isdir(path):
        raise error(f"{what} is a folder; give a file name inside it, e.g. "
                    f"{os.path.join(path, 'out')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise error(f"{what}: the folder {folder} does not exist; create it first "
                    f"(mkdir -p {folder}) or choose another path")
    if not os.access(folder, os.W_OK):
        raise error(f"{what}: the folder {folder} is not writable; choose another place")
