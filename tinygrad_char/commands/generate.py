"""Sample text from a trained checkpoint.

    tinygrad-char generate --checkpoint out/ckpt.safetensors --prompt "ROMEO:" \
        --max-new-tokens 500 --temperature 0.8 --top-k 40

Each sample is printed as the prompt followed by its continuation. Sample 0 streams to
stdout as it is generated; with --num-samples N the others follow it, each after a line
of dashes. --temperature 0 is greedy decoding; --no-cache recomputes the whole context
every step instead of using the key/value cache (same greedy text, slower). Past the
context (block_size characters), a model with rope or sinusoidal positions keeps a sliding
window of cached keys and values (sliding-window attention, at cache speed), while
--no-cache crops the context to its last block_size characters, so their texts differ there.

A thin command over tinygrad_char.training.checkpoint and tinygrad_char.inference.sampling:
it parses arguments, checks them before any output (the memory the samples need included),
and prints. No sampling logic lives here. Every error is one line "error: ..." on stderr and
exit status 2.
"""

import sys

import numpy as np

from tinygrad_char import runtime
from tinygrad_char.schema import describe_range
from tinygrad_char.training.cli import (Parser, UsageError, float_arg, int_arg,
                                        run_cli)
from tinygrad_char.training.config import check_memory, generation_memory_bytes
from tinygrad_char.interop.onnx_export import load_for_sampling
from tinygrad_char.inference.sampling import SAMPLING_BOUNDS as BOUNDS, generate_text

SEPARATOR = "-" * 40  # printed on its own line between samples


def build_parser():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", metavar="MODEL.onnx", help="sample from this exported model on "
                   "onnxruntime (no KV cache); --checkpoint, if given, must match it")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a .safetensors checkpoint written by training")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", metavar="TEXT",
                        help='text to continue (default: "", which starts from a newline)')
    prompt.add_argument("--prompt-file", metavar="FILE",
                        help="read the prompt from this UTF-8 file (for long prompts)")
    p.add_argument("--max-new-tokens", type=int_arg(0), default=500, metavar="N",
                   help="characters generated per sample, >= 0 (default: 500)")
    # the sampling flags take their bounds from the library's one table
    p.add_argument("--temperature", type=float_arg(**BOUNDS["temperature"],
                                                   hint=" (0 means greedy)"),
                   default=0.8, metavar="T", help=f"{describe_range(**BOUNDS['temperature'])}:"
                   " < 1 sharpens, > 1 flattens, 0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int_arg(**BOUNDS["top_k"]), default=None, metavar="K",
                   help="keep the K most likely characters, K "
                        f"{describe_range(**BOUNDS['top_k'])} (default: all)")
    p.add_argument("--top-p", type=float_arg(**BOUNDS["top_p"]), default=None,
                   metavar="P", help="keep the most likely characters up to probability mass "
                                     f"P, {describe_range(**BOUNDS['top_p'])} (default: all)")
    p.add_argument("--seed", type=int_arg(**BOUNDS["seed"]), default=0,
                   help=f"{describe_range(**BOUNDS['seed'])}: the same seed gives the same "
                        "text (default: 0)")
    p.add_argument("--num-samples", type=int_arg(1), default=1, metavar="N",
                   help="samples to draw, >= 1 (default: 1)")
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


def check_fits(model, args, prompt):
    """Refuse (one line) samples whose ids and text cannot fit in memory."""
    dtype = np.dtype(getattr(model, "dtype", np.float32)).name
    length = max(len(prompt), 1) + args.max_new_tokens
    need = generation_memory_bytes(model.config, args.num_samples, length,
                                   dtype if dtype == "float64" else "float32")
    check_memory(need, f"--max-new-tokens {args.max_new_tokens} with --num-samples "
                       f"{args.num_samples} ({length:,} characters a sample)",
                 "ask for fewer tokens or samples", args.backend)


def main(argv=None):
    args = build_parser().parse_args(argv)
    # everything that can fail is checked before the first character is printed
    try:
        prompt = read_prompt(args)
        model, tokenizer, _ = load_for_sampling(args.checkpoint, args.onnx, args.backend)
        tokenizer.encode(prompt, errors="raise", what="prompt")
    except ValueError as e:  # the library's checks: one line each (CheckpointError too)
        raise UsageError(str(e)) from None
    check_fits(model, args, prompt)
    if hasattr(model, "ops_summary"):  # a GPT (not an exported ONNX model)
        if model.backend.name == "numpy":
            runtime.setup(cpu_kernels=model.kernels != "xp")  # threads, allocator
        print(model.ops_summary(), file=sys.stderr)  # stdout carries the text alone

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


def cli(argv=None):
    """main under run_cli: a bad input is one line "error: ..." and exit status 2."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
