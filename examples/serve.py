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
A thin script over tinygrad_char.serve.create_app; see docs/serving.md.
"""

import argparse
import sys

from tinygrad_char.backend import BackendError
from tinygrad_char.checkpoint import CheckpointError
from tinygrad_char.onnx_export import load_for_sampling


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a .safetensors checkpoint (required unless --onnx is given)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--backend", choices=("numpy", "cupy", "auto"), default="numpy",
                   help="where the checkpoint runs (default numpy)")
    p.add_argument("--max-new-tokens-limit", type=int, default=2000,
                   help="largest max_new_tokens a request may ask for (default 2000)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads per matmul (default 1: requests already run in "
                        "parallel; needs threadpoolctl)")
    p.add_argument("--onnx", metavar="MODEL.onnx",
                   help="serve this exported model on onnxruntime instead")
    args = p.parse_args(argv)
    try:
        import uvicorn
        from threadpoolctl import threadpool_limits

        from tinygrad_char.serve import create_app
    except ImportError as e:
        print(f'error: {e}; install the serving extra: pip install "tinygrad-char[serve]"',
              file=sys.stderr)
        return 2
    try:
        model, tokenizer, meta = load_for_sampling(args.checkpoint, args.onnx, args.backend)
        app = create_app(model, tokenizer, max_new_tokens_limit=args.max_new_tokens_limit)
    except (BackendError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threadpool_limits(limits=args.blas_threads, user_api="blas")  # for the whole process
    source = args.onnx or args.checkpoint
    print(f"serving {source} (step {meta['step']}, {model.num_params():,} parameters) on "
          f"http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
