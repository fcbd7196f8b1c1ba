"""Serve a checkpoint over HTTP (FastAPI + uvicorn; the extra `serve`).

    tinygrad-char serve --checkpoint out/ckpt.safetensors          # 127.0.0.1:8000
    curl -s localhost:8000/generate -H 'content-type: application/json' \
        -d '{"prompt": "ROMEO:", "max_new_tokens": 100, "temperature": 0.8, "seed": 0}'

GET / is the playground page; POST /generate samples (streamed with "stream": true),
POST /v1/completions speaks OpenAI's completions API, GET /metrics is Prometheus text,
GET /health describes the model, /docs shows the schema. It binds to 127.0.0.1 unless
--host says otherwise: there is no authentication, so think before exposing it. --onnx
serves an exported model (tinygrad-char export-onnx) on onnxruntime instead (no KV cache,
no batching); --checkpoint is then optional and, when given, must match it.

One engine thread generates every request, up to --max-slots of them stepped together
(continuous batching) and --max-queue waiting; past that a request gets 429 with
Retry-After. --threads sets the CPU threads that engine uses (default: every core).
A thin script over tinygrad_char.inference.serve.create_app; see docs/serving.md.
"""

import os
import socket
import sys

from tinygrad_char.training.cli import Parser, UsageError, int_arg, run_cli
from tinygrad_char.training.config import check_memory, generation_memory_bytes
from tinygrad_char import runtime
from tinygrad_char.interop.onnx_export import load_for_sampling


def bind(host, port):
    """A listening socket on (host, port), or a one-line UsageError (port taken, unknown
    host, no permission): checked before the model loads."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not an address of this machine ({e.strerror}); "
                         f"use 127.0.0.1, or 0.0.0.0 for every interface") from None
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise UsageError(f"--port {port} on --host {host}: cannot listen ({reason}); "
                         f"choose another --port") from None


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a .safetensors checkpoint (required unless --onnx is given)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_arg(1, 65535), default=8000,
                   help="TCP port, 1 .. 65535 (default 8000)")
    p.add_argument("--backend", choices=("numpy", "cupy", "auto"), default="numpy",
                   help="where the checkpoint runs (default numpy)")
    p.add_argument("--max-new-tokens-limit", type=int_arg(1), default=2000, metavar="N",
                   help="largest max_new_tokens a request may ask for, >= 1 (default 2000)")
    p.add_argument("--max-slots", type=int_arg(1), default=32, metavar="N",
                   help="sequences generated at once (one batched step), >= 1 (default 32)")
    p.add_argument("--max-queue", type=int_arg(0), default=64, metavar="N",
                   help="requests waiting for a slot, >= 0; past slots + queue the answer "
                        "is 429 (default 64)")
    p.add_argument("--threads", type=int_arg(0), default=0, metavar="N",
                   help="CPU threads of the engine (kernels and BLAS), 0 = every core "
                        "(default 0)")
    p.add_argument("--onnx", metavar="MODEL.onnx",
                   help="serve this exported model on onnxruntime instead")
    args = p.parse_args(argv)
    try:
        import uvicorn

        from tinygrad_char.inference.serve import create_app
    except ImportError as e:
        raise UsageError(f'{e}; install the serving extra: pip install '
                         f'"tinygrad-char[serve]"') from None
    try:
        model, tokenizer, meta = load_for_sampling(args.checkpoint, args.onnx, args.backend)
    except ValueError as e:  # the library's checks: one line each (CheckpointError too)
        raise UsageError(str(e)) from None
    # every slot at the largest size must fit (prompt window + limit)
    length = model.config.block_size + args.max_new_tokens_limit
    check_memory(generation_memory_bytes(model.config, args.max_slots, length),
                 f"--max-new-tokens-limit {args.max_new_tokens_limit} with --max-slots "
                 f"{args.max_slots}", "lower one of them", args.backend)
    sock = bind(args.host, args.port)
    # the one runtime set-up of the CPU threads (numba's pool, BLAS); the engine thread,
    # the only one that runs the model, uses them
    cpu_kernels = hasattr(model, "ops_summary") and model.kernels != "xp" and \
        model.backend.name == "numpy"  # a GPT (not an ONNX model) on the CPU kernels
    threads = runtime.setup(args.threads, cpu_kernels=cpu_kernels)
    try:
        app = create_app(model, tokenizer, max_new_tokens_limit=args.max_new_tokens_limit,
                         max_slots=args.max_slots, max_queue=args.max_queue,
                         threads=threads)
    except ValueError as e:
        raise UsageError(str(e)) from None
    source = args.onnx or args.checkpoint
    print(f"serving {source} (step {meta['step']}, {model.num_params():,} parameters) on "
          f"http://{args.host}:{args.port}", flush=True)
    if hasattr(model, "ops_summary"):
        print(model.ops_summary(), flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    try:
        server.run(sockets=[sock])  # Ctrl-C: uvicorn finishes the requests in flight, returns
    finally:
        app.state.engine.stop()
    return 0


def cli(argv=None):
    """main under run_cli: a bad input is one line "error: ..." and exit status 2."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
