"""The command line: one `tinygrad-char` command with a subcommand per job.

    tinygrad-char train --preset cpu              # WikiText-2 (or the packaged sample text)
    tinygrad-char train-text --text input.txt     # any plain text file
    tinygrad-char generate --checkpoint out/ckpt.safetensors --prompt "ROMEO:"
    tinygrad-char serve --checkpoint out/ckpt.safetensors
    tinygrad-char export-onnx --checkpoint out/ckpt.safetensors --out model.onnx
    tinygrad-char import-nanogpt ckpt.pt meta.pkl out.safetensors
    tinygrad-char export-nanogpt --checkpoint out/ckpt.safetensors --out-dir out-nano

`python -m tinygrad_char ...` is the same command. Each subcommand is a module of this
package with a `main(argv)` (its flags, checks and messages) and a `cli(argv)` that runs
main under training.cli.run_cli (a bad input is one line "error: ..." and exit status 2);
examples/*.py are thin wrappers over the same functions.

What this package deliberately is not: a place for training, sampling or conversion logic;
those are the library's (training/, inference/, interop/), and a command only parses,
checks, calls and prints.
"""

import importlib
import sys

from tinygrad_char.training.cli import run_cli

# subcommand -> (module, what it does); in the order a newcomer meets them
COMMANDS = {
    "train": ("train", "train on WikiText-2 (or, without it, the packaged sample text); "
                       "bits per character"),
    "train-text": ("train_text", "train on any plain text file (--text FILE, 90% train, "
                                 "10% validation)"),
    "generate": ("generate", "sample text from a checkpoint"),
    "serve": ("serve", "serve a checkpoint over HTTP (needs the extra 'serve')"),
    "export-onnx": ("export_onnx", "export a checkpoint's forward to ONNX (needs the extra "
                                   "'onnx')"),
    "import-nanogpt": ("import_nanogpt", "convert nanoGPT's ckpt.pt + meta.pkl into a "
                                         "checkpoint"),
    "export-nanogpt": ("export_nanogpt", "write a checkpoint as nanoGPT's ckpt.pt + meta.pkl"),
}


def usage():
    width = max(map(len, COMMANDS))
    lines = ["usage: tinygrad-char COMMAND [flags]   (or: python -m tinygrad_char COMMAND ...)",
             "", "A character-level GPT with hand-written forward and backward passes.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "tinygrad-char COMMAND --help lists a command's flags."]
    return "\n".join(lines)


def main(argv=None):
    """Run the subcommand named by argv[0] (default: sys.argv[1:]); return its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        return run_cli(lambda _: print(usage(), file=sys.stdout if argv else sys.stderr)
                       or (0 if argv else 2))  # run_cli: `... --help | head` ends quietly
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} "
              f"(see --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(f"tinygrad_char.commands.{COMMANDS[name][0]}")
    # argparse names the program after sys.argv[0]: say the command as it was typed
    sys.argv[0] = f"tinygrad-char {name}"
    return module.cli(rest)
