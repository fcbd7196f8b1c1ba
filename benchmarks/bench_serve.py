"""The HTTP server under load: concurrent streaming clients on loopback.

    python benchmarks/bench_serve.py --configs tiny,cpu-preset --clients 1,8,32,64 \\
        --chars 200 --requests 4 --repeats 3 --threads 2 \\
        --baseline-repo /tmp/tinygrad_char_71b7213

For each model config and each number of concurrent clients, every client sends
--requests requests one after the other (POST /generate, --chars characters each, a fixed
prompt, temperature 0.8, a seed per request; more requests when there are few clients: at
least --min-total a run, so that a single client's run is not a fraction of a second); the
server is examples/serve.py in its own process on a free 127.0.0.1 port, serving an
untrained checkpoint of the config (speed does not depend on the weights). Reported per (server, config, clients), the median over
--repeats runs, after one untimed run of that many clients (one request each):
  * chars_per_s: characters received by all clients / wall time of the run;
  * ttfc_p50_s / ttfc_p99_s: time to first character (request sent -> first text event;
    for a server that does not stream, the whole answer);
  * request_p50_s / request_p99_s: request sent -> last byte;
  * errors: requests that failed or came back short (summed over the repeats);
  * cores_used: the server process's CPU time (every thread) / wall time of the run.
Correctness first: before timing, each server's text for one seeded request must equal
`generate_text` for that request in this process (same checkpoint), streamed and not.

--baseline-repo PATH runs the same load against another checkout of this repository
(e.g. the server before continuous batching: `git archive 71b7213 | tar -x -C PATH`),
started from there with PYTHONPATH=PATH; a server without streaming is asked without
"stream" and its time to first character is its whole answer. Both servers are up at once
(the one not under load idles) and take turns run by run, each going first in every other
repeat, so that the machine's drift during the run hits both alike.

The clients are one asyncio loop in this process speaking HTTP/1.1 on raw sockets (no
client library between the server and the clock); they share the machine with the server,
as real loopback clients would. Results: <out>/serve.json (one JSON document: machine,
versions, config, medians) and <out>/serve.md. Not here: GPUs (numpy backend only), or
more than one server process.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script or a module

from benchmarks.harness import (busy_warning, machine_info, machine_summary,  # noqa: E402
                                named_config, write_markdown_table)

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65, Shakespeare
PROMPT = "ROMEO:"
TEMPERATURE = 0.8
INLINE = {  # the 1-layer, 32-wide model the serving issue measured first
    "tiny": dict(n_layer=1, n_head=2, n_embd=32, block_size=64),
    # the CPU preset with sinusoidal positions: past its 64-character window a sequence
    # slides (one position a step), where learned positions re-run the whole window
    "cpu-sinusoidal": dict(n_layer=4, n_head=4, n_embd=128, block_size=64,
                           pos_encoding="sinusoidal"),
}

# writes an untrained checkpoint with the code of the repository on PYTHONPATH
MAKE_CHECKPOINT = """
import json, sys
from tinygrad_char import GPT, GPTConfig
from tinygrad_char.training.checkpoint import save_checkpoint
from tinygrad_char.training.tokenizer import CharTokenizer
arch, chars, path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
tokenizer = CharTokenizer(chars, unk=False)
model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **arch), seed=0)
save_checkpoint(path, model, tokenizer, step=0)
"""


def architecture(name):
    """The GPTConfig fields of a config name: an inline one, or a harness preset."""
    if name in INLINE:
        return dict(INLINE[name])
    try:
        loaded = named_config(name, vocab_size=len(CHARS))
    except ValueError as e:  # an unknown name
        raise SystemExit(f"error: config {name}: {e} (or {', '.join(INLINE)})")
    if loaded is None:
        raise SystemExit(f"error: config {name}: its preset file is missing")
    cfg = loaded[1].to_dict()
    cfg.pop("vocab_size")
    return cfg


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """examples/serve.py of `repo` serving `ckpt` on a free loopback port."""

    def __init__(self, repo, ckpt, args, label):
        self.repo, self.label, self.port = Path(repo), label, free_port()
        cmd = [sys.executable, str(self.repo / "examples" / "serve.py"), "--checkpoint", ckpt,
               "--port", str(self.port), "--max-new-tokens-limit", str(max(args.chars, 50))]
        help_text = subprocess.run(cmd[:2] + ["--help"], capture_output=True, text=True,
                                   env=self.env(), timeout=120).stdout
        if "--max-slots" in help_text:
            cmd += ["--max-slots", str(args.max_slots), "--max-queue", str(args.max_queue),
                    "--threads", str(args.threads)]
        elif "--blas-threads" in help_text:
            cmd += ["--blas-threads", "1"]  # its documented setting for concurrent requests
        self.streams = '"stream"' in help_text or "--max-slots" in help_text
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env())
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"error: {label} server exited:\n{self.log.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"error: {label} server did not listen within 120 s")
                time.sleep(0.1)

    def env(self):
        return dict(os.environ, PYTHONPATH=str(self.repo), PYTHONUNBUFFERED="1")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- one HTTP/1.1 request on a raw socket -------------------------------------------------------
async def read_body(reader, headers):
    """Yield the body in pieces: chunked transfer encoding or a content-length."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    else:
        yield await reader.readexactly(int(headers.get("content-length", "0")))


async def one_request(port, body, stream):
    """Returns (ok, characters, ttfc_s, total_s)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(dict(body, stream=True) if stream else body).encode()
    writer.write(b"POST /generate HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                 b"content-type: application/json\r\nconnection: close\r\n"
                 b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    first, text, buffer, done = None, "", b"", None
    async for piece in read_body(reader, headers):
        if not stream:
            buffer += piece
            continue
        buffer += piece
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            if event.startswith(b"data: "):
                data = json.loads(event[6:])
                if "text" in data:
                    first = first or time.perf_counter()
                    text += data["text"]
                elif data.get("done"):
                    done = data
    total = time.perf_counter() - t0
    writer.close()
    if not stream:
        first = time.perf_counter()
        if status == 200:
            text = json.loads(buffer)["text"]
    ok = status == 200 and len(text) == body["max_new_tokens"] and (not stream or done)
    return ok, len(text), (first or time.perf_counter()) - t0, total


async def run_load(port, clients, requests, chars, stream, seed0):
    """Every client sends `requests` requests in turn; returns per-request results."""
    async def client(c):
        out = []
        for r in range(requests):
            body = {"prompt": PROMPT, "max_new_tokens": chars, "temperature": TEMPERATURE,
                    "seed": seed0 + c * requests + r}
            try:
                out.append(await one_request(port, body, stream))
            except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                out.append((False, 0, float("nan"), float("nan")))
                print(f"  request failed: {type(e).__name__}: {e}")
        return out

    results = await asyncio.gather(*(client(c) for c in range(clients)))
    return [r for rs in results for r in rs]


def measure(server, clients, args, repeat):
    cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
    requests = max(args.requests, -(-args.min_total // clients))  # ceil(min_total / clients)
    results = asyncio.run(run_load(server.port, clients, requests, args.chars,
                                   server.streams, seed0=1000 * repeat))
    wall = time.perf_counter() - t0
    cores = (cpu_seconds(server.proc.pid) - cpu0) / wall
    good = [r for r in results if r[0]]
    ttfc = np.array([r[2] for r in good]) if good else np.array([np.nan])
    total = np.array([r[3] for r in good]) if good else np.array([np.nan])
    return {"chars_per_s": sum(r[1] for r in results) / wall,
            "ttfc_p50_s": float(np.percentile(ttfc, 50)),
            "ttfc_p99_s": float(np.percentile(ttfc, 99)),
            "request_p50_s": float(np.percentile(total, 50)),
            "request_p99_s": float(np.percentile(total, 99)),
            "errors": len(results) - len(good), "cores_used": cores, "wall_s": wall}


def summarize(runs):
    """One point from a server's runs: the median of each figure, the errors summed."""
    point = {k: statistics.median(run[k] for run in runs) for k in runs[0] if k != "errors"}
    point["errors"] = sum(run["errors"] for run in runs)
    return point


def check_text(server, ckpt, label):
    """The server's text for one seeded request equals generate_text in this process."""
    from tinygrad_char.inference.sampling import generate_text
    from tinygrad_char.training.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt)
    model, tokenizer = loaded[0], loaded[1]
    body = {"prompt": PROMPT, "max_new_tokens": 50, "temperature": TEMPERATURE, "seed": 7}
    want = generate_text(model, tokenizer, PROMPT, 50, temperature=TEMPERATURE, seed=7)[0]
    for stream in ((False, True) if server.streams else (False,)):
        reader_result = asyncio.run(_text_of(server.port, body, stream))
        assert reader_result == want, f"{label}: the server's text (stream={stream}) " \
                                      f"differs from generate_text"


async def _text_of(port, body, stream):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(dict(body, stream=True) if stream else body).encode()
    writer.write(b"POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"connection: close\r\ncontent-length: " + str(len(payload)).encode() +
                 b"\r\n\r\n" + payload)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        body_bytes, rest_ = b"", rest
        while True:
            size_line, _, rest_ = rest_.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body_bytes, rest_ = body_bytes + rest_[:size], rest_[size + 2:]
        rest = body_bytes
    if not stream:
        answer = json.loads(rest)
        assert "text" in answer, f"the server answered {answer}"
        return answer["text"]
    return "".join(json.loads(e[6:]).get("text", "") for e in rest.split(b"\n\n")
                   if e.startswith(b"data: "))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,cpu-preset",
                   help="comma-separated: tiny (1 x 2 x 32, context 64), cpu-sinusoidal (the "
                        "preset's shape, sinusoidal positions) and harness presets "
                        "(cpu-preset: examples/configs/cpu.json) (default: tiny,cpu-preset)")
    p.add_argument("--clients", default="1,8,32,64", help="concurrent clients, comma-separated")
    p.add_argument("--chars", type=int, default=200, help="characters a request (default 200)")
    p.add_argument("--requests", type=int, default=4,
                   help="requests each client sends in turn (default 4)")
    p.add_argument("--min-total", type=int, default=32,
                   help="requests a run sends at least, over all its clients (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="runs per point; medians reported")
    p.add_argument("--threads", type=int, default=0,
                   help="the server's --threads (0: every core) (default 0)")
    p.add_argument("--max-slots", type=int, default=64, help="the server's --max-slots")
    p.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue")
    p.add_argument("--baseline-repo", metavar="PATH",
                   help="also run the server of this checkout (e.g. commit 71b7213)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                   help="folder for serve.json and serve.md")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    info = machine_info()
    warning = busy_warning(args.threads or info["cores_available"], info)
    if warning:
        print(warning)
    servers = [("this", REPO)] + ([("baseline", Path(args.baseline_repo).resolve())]
                                  if args.baseline_repo else [])
    for _, repo in servers:
        if not (repo / "examples" / "serve.py").is_file():
            raise SystemExit(f"error: {repo} has no examples/serve.py")
    commits = {label: subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                                     capture_output=True, text=True).stdout.strip() or None
               for label, repo in servers}
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            arch = architecture(config)
            running = []  # every server of this config, up at once (an idle one waits)
            try:
                for label, repo in servers:
                    ckpt = str(Path(tmp) / f"{config}-{label}.safetensors")
                    subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT, json.dumps(arch),
                                    CHARS, ckpt], check=True, timeout=600,
                                   env=dict(os.environ, PYTHONPATH=str(repo)))
                    running.append(ServerProcess(repo, ckpt, args, label))
                    check_text(running[-1], ckpt, label)
                warm_up = argparse.Namespace(**{**vars(args), "requests": 1, "min_total": 1})
                for n in clients:
                    runs = {server.label: [] for server in running}
                    for server in running:
                        measure(server, n, warm_up, 99)  # untimed: kernels built, caches made
                    for r in range(args.repeats):  # the servers take turns, each first in turn
                        for server in (running if r % 2 == 0 else running[::-1]):
                            runs[server.label].append(measure(server, n, args, r))
                    for server in running:
                        point = summarize(runs[server.label])
                        point.update(server=server.label, commit=commits[server.label],
                                     config=config, clients=n, streaming=server.streams)
                        points.append(point)
                        print(f"{server.label:8s} {config:10s} {n:3d} clients: "
                              f"{point['chars_per_s']:8.0f} chars/s, ttfc p50 "
                              f"{point['ttfc_p50_s']:.3f} s p99 {point['ttfc_p99_s']:.3f} s, "
                              f"request p50 {point['request_p50_s']:.2f} s p99 "
                              f"{point['request_p99_s']:.2f} s, errors {point['errors']}, "
                              f"cores {point['cores_used']:.2f}", flush=True)
            finally:
                for server in running:
                    server.stop()
    record = {"benchmark": "serve", "machine": info, "versions": info["versions"],
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "config": {"configs": {c: architecture(c) for c in args.configs.split(",")},
                         "clients": clients, "chars": args.chars, "requests": args.requests,
                         "min_total": args.min_total,
                         "repeats": args.repeats, "threads": args.threads,
                         "max_slots": args.max_slots, "max_queue": args.max_queue,
                         "prompt": PROMPT, "temperature": TEMPERATURE, "commits": commits},
              "results": points}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(record, indent=1) + "\n")
    columns = [("server", "server"), ("config", "config"), ("clients", "clients"),
               ("chars_per_s", "chars/s"), ("ttfc_p50_s", "ttfc p50 s"),
               ("ttfc_p99_s", "ttfc p99 s"), ("request_p50_s", "request p50 s"),
               ("request_p99_s", "request p99 s"), ("errors", "errors"),
               ("cores_used", "cores used")]
    write_markdown_table(out / "serve.md", points, columns,
                         f"Serving under load (medians of {args.repeats})",
                         notes=[machine_summary(info)])
    print(f"wrote {out / 'serve.json'} and {out / 'serve.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
