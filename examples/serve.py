"""Serve a checkpoint over HTTP (FastAPI + uvicorn; the extra `serve`).

    python examples/serve.py --checkpoint out/ckpt.safetensors          # 127.0.0.1:8000
    curl -s localhost:8000/generate -H 'content-type: application/json' \
        -d '{"prompt": "ROMEO:", "max_new_tokens": 100, "temperature": 0.8, "seed": 0}'

POST /generate samples, GET /health describes the model, /docs shows the schema. It
binds to 127.0.0.1 unless --host says otherwise: there is no authentication, so think
before exposing it. --onnx serves an exported model (examples/export_onnx.py) on
onnxruntime instead; --checkpoint is then optional and, when given, must match it.

Requests run concurrently in threads, each on one BLAS thread (--blas-threads 1): with
OpenBLAS's default of one thread per core, concurrent requests contend for its threads
and throughput drops (measured 53 vs 130 requests/s at 16 concurrent on 2 cores).
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
    p.add_argument("--blas-threads", type=int_arg(1), default=1, metavar="N",
                   help="threads per request for the matmuls and CPU kernels, >= 1 (default "
                        "1: requests already run in parallel; needs threadpoolctl)")
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
        app = create_app(model, tokenizer, max_new_tokens_limit=args.max_new_tokens_limit,
                         threads_per_request=args.blas_threads)
    except ValueError as e:  # the library's checks: one line each (CheckpointError too)
        raise UsageError(str(e)) from None
    # one request of the largest size must fit (prompt window + limit, one sample)
    length = model.config.block_size + args.max_new_tokens_limit
    check_memory(generation_memory_bytes(model.config, 1, length),
                 f"--max-new-tokens-limit {args.max_new_tokens_limit} (one request)",
                 "lower it", args.backend)
    sock = bind(args.host, args.port)
    # for the whole process: with the CPU kernels BLAS runs one thread and each request's
    # kernels cut the matmuls over its own threads (threads_per_request); without them
    # BLAS runs --blas-threads
    cpu_kernels = hasattr(model, "ops_summary") and model.kernels != "xp" and \
        model.backend.name == "numpy"  # a GPT (not an ONNX model) on the CPU kernels
    runtime.setup(1 if cpu_kernels else args.blas_threads, cpu_kernels=cpu_kernels)
    source = args.onnx or args.checkpoint
    print(f"serving {source} (step {meta['step']}, {model.num_params():,} parameters) on "
          f"http://{args.host}:{args.port}", flush=True)
    if hasattr(model, "ops_summary"):
        print(model.ops_summary(), flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    server.run(sockets=[sock])  # Ctrl-C: uvicorn finishes the requests in flight and returns
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
