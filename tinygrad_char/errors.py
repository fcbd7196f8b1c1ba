"""The one base class of "this input cannot be used": `UserError`.

Every error whose message names a bad value and its fix derives from it (ConfigError,
UsageError, DataError, CheckpointError, BackendError, KernelError, ConversionError), each
keeping its own standard base too (ValueError or RuntimeError), so `except ValueError`
still catches what it did. `training.cli.run_cli` turns a UserError into one line
"error: <message>" and exit status 2; any other exception is a bug and keeps its traceback.

What this file deliberately is not: a registry or a hierarchy. It imports nothing, so every
module may import it.
"""


class UserError(Exception):
    """Bad input, not a bug: the message names the value at fault and how to fix it."""
