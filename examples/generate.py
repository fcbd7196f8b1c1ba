"""Sample text from a trained checkpoint.

    python examples/generate.py --checkpoint out/ckpt.safetensors --prompt "ROMEO:" \
        --max-new-tokens 500 --temperature 0.8 --top-k 40

Each sample is printed as the prompt followed by its continuation. Sample 0 streams to
stdout as it is generated; with --num-samples N the others follow it, each after a line
of dashes. --temperature 0 is greedy decoding; --no-cache recomputes the whole context
every step instead of using the key/value cache (same greedy text, slower).

A thin script over tinygrad_char.checkpoint and tinygrad_char.sampling: it parses
arguments, checks them before any output, and prints. No sampling logic lives here.
Every error is one line "error: ..." on stderr and exit status 2.
"""

import argparse
import sys

from tinygrad_char.backend import BackendError
from tinygrad_char.checkpoint import CheckpointError
from tinygrad_char.onnx_export import load_for_sampling
from tinygrad_char.sampling import check_sampling_args, generate_text

SEPARATOR = "-" * 40  # printed on its own line between samples


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, like every other error of this script (argparse adds a usage block)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser():
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", metavar="MODEL.onnx", help="sample from this exported model on "
                   "onnxruntime (no KV cache); --checkpoint, if given, must match it")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a .safetensors checkpoint written by training")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", metavar="TEXT",
                        help='text to continue (default: "", which starts from a newline)')
    prompt.add_argument("--prompt-file", metavar="FILE",
                        help="read the prompt from this UTF-8 file (for long prompts)")
    p.add_argument("--max-new-tokens", type=int, default=500,
                   help="characters generated per sample (default: 500)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="< 1 sharpens, > 1 flattens, 0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="keep the K most likely characters")
    p.add_argument("--top-p", type=float, default=None,
                   help="keep the most likely characters up to probability mass P")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="samples to draw (default: 1)")
    p.add_argument("--backend", choices=("numpy", "cupy", "auto"), default="numpy",
                   help="numpy (default), cupy (needs a CUDA GPU) or auto")
    p.add_argument("--no-cache", action="store_true",
                   help="run the whole context every step instead of using the KV cache")
    return p


def read_prompt(args):
    """The prompt text: --prompt, or the exact contents of --prompt-file."""
    if args.prompt_file is None:
        return args.prompt
    try:
        with open(args.prompt_file, encoding="utf-8", newline="") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"prompt file {args.prompt_file}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt file {args.prompt_file} is not UTF-8 text ({e.reason} at "
                         f"byte {e.start})") from None


def write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv=None):
    args = build_parser().parse_args(argv)
    # everything that can fail is checked before the first character is printed
    try:
        if args.max_new_tokens < 0:
            raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
        check_sampling_args(args.temperature, args.top_k, args.top_p)
        prompt = read_prompt(args)
        model, tokenizer, _ = load_for_sampling(args.checkpoint, args.onnx, args.backend)
        tokenizer.encode(prompt, errors="raise", what="prompt")
    except (BackendError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    write(prompt)
    try:
        samples = generate_text(model, tokenizer, prompt, args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed,
                                num_samples=args.num_samples,
                                use_cache=not (args.no_cache or args.onnx),
                                stream=write)  # sample 0, one character at a time
    except KeyboardInterrupt:
        write("\n")
        return 130
    write("\n")
    for sample in samples[1:]:
        write(f"{SEPARATOR}\n{prompt}{sample}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
