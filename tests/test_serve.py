"""The HTTP service, over real HTTP: a uvicorn server on a free 127.0.0.1 port in a
thread (and examples/serve.py in a subprocess), called with urllib (httpx's sync client
added ~40 ms to every request here, which would hide the server's own latency). Happy
path, every kind of bad input (each a 422 naming the field, the server serving on; bodies
that are not UTF-8 or nested 100,000 deep included), the OpenAPI schema (exact integer
bounds, the vocabulary, the 422 shape), a bounded load run (200 requests, 16 at a time)
whose texts must equal the same seeds generated alone, streaming (server-sent events),
stop strings, the OpenAI shapes of /v1/completions and /v1/models, the attention endpoint
against the training forward's probabilities, the playground page, metrics, 429 with
Retry-After past the slots and queue, a disconnect freeing its slot, bench_serve.py at
the smallest scale, and a schemathesis run (its CLI, every check, a fixed seed) against a
real server that must find 0 failures. Skipped with the reason without fastapi or uvicorn
(pip install "tinygrad-char[serve]")."""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tinygrad_char import GPT, GPTConfig
from tinygrad_char.training.checkpoint import save_checkpoint
from tinygrad_char.inference.sampling import generate_text
from tinygrad_char.training.tokenizer import CharTokenizer

from conftest import REPO

pytest.importorskip("fastapi", reason='fastapi not installed (pip install '
                                      '"tinygrad-char[serve]")')
uvicorn = pytest.importorskip("uvicorn", reason='uvicorn not installed (pip install '
                                                '"tinygrad-char[serve]")')
from tinygrad_char.inference.serve import create_app  # noqa: E402

CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
LIMIT = 300  # the server's max_new_tokens_limit in these tests
BLOCK = 32


class Client:
    """A tiny JSON client over urllib: get/post return (status, parsed JSON body)."""

    def __init__(self, url):
        self.url = url

    def request(self, path, body=None, raw=None, timeout=60):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get(self, path):
        return self.request(path)

    def post(self, path, body=None, raw=None):
        return self.request(path, body=body, raw=raw)


def blas_threads(n):
    """threadpoolctl's limit on BLAS threads when installed (the dev extra), else a no-op."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def make_model():
    tokenizer = CharTokenizer(CHARS, unk=False)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=BLOCK, n_layer=2, n_head=2,
                    n_embd=32)
    return GPT(cfg, seed=0), tokenizer


class Server:
    """uvicorn serving `app` on an already-bound loopback socket (no port race), in a
    daemon thread; stop() asks it to exit and joins."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def stop(self):
        self.server.config.app.state.engine.stop()  # ends the streams still open, if any
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        assert not self.thread.is_alive(), "server did not stop"


@pytest.fixture(scope="module")
def served():
    model, tokenizer = make_model()
    server = Server(create_app(model, tokenizer, max_new_tokens_limit=LIMIT,
                               backend_name="numpy")).start()
    with blas_threads(1):  # as examples/serve.py: concurrent requests, one BLAS thread each
        yield Client(server.url), model, tokenizer
    server.stop()


def test_health(served):
    client, model, _ = served
    status, body = client.get("/health")
    assert status == 200, body
    assert body["status"] == "ok" and body["backend"] == "numpy"
    assert body["num_params"] == model.num_params()
    assert body["config"] == model.config.to_dict()
    assert body["max_new_tokens_limit"] == LIMIT


def test_generate_happy_path(served):
    client, model, tokenizer = served
    req = {"prompt": "ROMEO:", "max_new_tokens": 40, "temperature": 0.8, "top_k": 10,
           "top_p": 0.9, "seed": 3}
    status, body = client.post("/generate", req)
    assert status == 200, body
    expected = generate_text(model, tokenizer, "ROMEO:", 40, temperature=0.8, top_k=10,
                             top_p=0.9, seed=3)[0]
    assert body["text"] == expected and body["num_chars"] == 40 == len(body["text"])
    assert body["seed"] == 3 and body["time_s"] > 0
    assert body["prompt_chars_used"] == 6 and body["prompt_cropped"] is False
    assert client.post("/generate", req)[1]["text"] == expected  # reproducible


def test_defaults_empty_prompt_and_drawn_seed(served):
    client, _, _ = served
    status, body = client.post("/generate", {"prompt": ""})
    assert status == 200, body
    assert body["num_chars"] == 200  # default max_new_tokens
    assert body["prompt_chars_used"] == 0
    # the seed drawn for us is returned and reproduces the text
    status, again = client.post("/generate", {"seed": body["seed"]})
    assert status == 200 and again["text"] == body["text"]
    status, body = client.post("/generate", {"prompt": "hi", "max_new_tokens": 0})
    assert status == 200 and body["text"] == "" and body["num_chars"] == 0


def test_long_prompt_is_cropped_on_the_left(served):
    client, model, tokenizer = served
    prompt = "abcdefghij" * 10  # 100 > block_size 32
    status, body = client.post("/generate", {"prompt": prompt, "max_new_tokens": 10,
                                             "temperature": 0})
    assert status == 200, body
    assert body["prompt_cropped"] is True and body["prompt_chars_used"] == BLOCK
    expected = generate_text(model, tokenizer, prompt[-BLOCK:], 10, temperature=0)[0]
    assert body["text"] == expected


BAD = {  # name: (body sent as JSON, the field the error must name, words in its message)
    "negative temperature": ({"prompt": "a", "temperature": -0.5}, "temperature",
                             "greater than or equal to 0"),
    "temperature too large": ({"temperature": 1e9}, "temperature", "less than or equal"),
    "temperature a string": ({"temperature": "0.5"}, "temperature", "valid number"),
    "top_p zero": ({"top_p": 0.0}, "top_p", "greater than 0"),
    "top_p above one": ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
    "top_k zero": ({"top_k": 0}, "top_k", "greater than or equal to 1"),
    "max_new_tokens above limit": ({"max_new_tokens": LIMIT + 1}, "max_new_tokens",
                                   f"less than or equal to {LIMIT}"),
    "max_new_tokens negative": ({"max_new_tokens": -1}, "max_new_tokens",
                                "greater than or equal to 0"),
    "max_new_tokens float": ({"max_new_tokens": 2.5}, "max_new_tokens", "integer"),
    "max_new_tokens string": ({"max_new_tokens": "10"}, "max_new_tokens", "integer"),
    "max_new_tokens bool": ({"max_new_tokens": True}, "max_new_tokens", "integer"),
    "seed negative": ({"seed": -1}, "seed", "greater than or equal to 0"),
    "seed too big": ({"seed": 2**64}, "seed", "less than or equal"),
    "prompt not a string": ({"prompt": 5}, "prompt", "string"),
    "prompt out of vocabulary": ({"prompt": "h\u00e9llo \u2603"}, "prompt",
                                 "not in the model's vocabulary: '\u00e9', '\u2603'"),
    "unknown field": ({"prompt": "a", "max_tokens": 5}, "max_tokens", "Extra inputs"),
    "body not an object": ([1, 2], "body", "valid dictionary"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_422_naming_the_field(served, name):
    client, _, _ = served
    sent, field, words = BAD[name]
    status, body = client.post("/generate", sent)
    assert status == 422, f"{name}: got {status} {body}"
    error = body["error"]
    assert error.startswith(field + ":") or f"; {field}:" in error, f"{name}: {error}"
    assert words in error, f"{name}: {error!r} lacks {words!r}"
    assert client.get("/health")[0] == 200  # still serving


@pytest.mark.parametrize("raw", [b'{"prompt": "a", "seed": }', b"not json", b'{"prompt": "a"',
                                 b"", b'{"temperature": NaN}', b'{"temperature": Infinity}'])
def test_malformed_json_is_a_422(served, raw):
    client, _, _ = served
    status, body = client.post("/generate", raw=raw)
    assert status == 422, body
    error = body["error"]
    assert "malformed JSON" in error or "temperature: " in error or "body: " in error, error
    status, _ = client.post("/generate", {"prompt": "a", "max_new_tokens": 3, "seed": 0})
    assert status == 200  # the server keeps serving


def test_openapi_schema_documents_fields_and_bounds(served):
    client, _, _ = served
    schema = client.get("/openapi.json")[1]
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert set(props) == {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                          "stop", "stream"}
    for name, prop in props.items():
        assert prop.get("description"), f"{name} has no description"
    assert props["max_new_tokens"]["minimum"] == 0
    assert props["max_new_tokens"]["maximum"] == LIMIT
    assert props["temperature"]["minimum"] == 0
    top_p = [s for s in props["top_p"]["anyOf"] if s.get("type") == "number"][0]
    assert top_p["exclusiveMinimum"] == 0 and top_p["maximum"] == 1
    top_k = [s for s in props["top_k"]["anyOf"] if s.get("type") == "integer"][0]
    assert top_k["minimum"] == 1
    response = schema["components"]["schemas"]["GenerateResponse"]["properties"]
    assert {"text", "num_chars", "time_s"} <= set(response)


def test_load_run_200_requests_16_at_a_time(served):
    """No errors, nothing lost, and texts equal to their seeds generated alone: a seed
    gives the same text whatever else is running."""
    client, model, tokenizer = served
    n, concurrency, new_tokens = 200, 16, 20
    prompts = ["", "ROMEO:", "to be, or not", "abcdefghij" * 5]
    reqs = [{"prompt": prompts[i % len(prompts)], "max_new_tokens": new_tokens,
             "temperature": 0.9, "top_k": 20 if i % 2 else None, "seed": i}
            for i in range(n)]
    expected = {}
    for r in reqs[::5]:  # the reference for every fifth seed, generated serially
        expected[r["seed"]] = generate_text(model, tokenizer, r["prompt"][-BLOCK:],
                                            new_tokens, temperature=0.9, top_k=r["top_k"],
                                            seed=r["seed"])[0]

    def call(req):
        start = time.perf_counter()
        status, body = client.post("/generate", req)  # a new connection per request
        return req, status, body, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(call, reqs))
    wall = time.perf_counter() - start

    assert len(results) == n
    failures = [(req["seed"], status) for req, status, _, _ in results if status != 200]
    assert not failures, f"failed requests (seed, status): {failures[:10]}"
    assert sorted(body["seed"] for _, _, body, _ in results) == list(range(n))  # none lost
    for req, _, body, _ in results:
        assert body["num_chars"] == new_tokens
        if req["seed"] in expected:
            assert body["text"] == expected[req["seed"]], f"seed {req['seed']} differs " \
                                                          f"under load"
    latencies = np.array([t for *_, t in results])
    print(f"\nload run: {n} requests, {concurrency} concurrent, {new_tokens} chars each, "
          f"model {model.num_params():,} params: p50 {np.percentile(latencies, 50) * 1e3:.1f}"
          f" ms, p99 {np.percentile(latencies, 99) * 1e3:.1f} ms, "
          f"{n / wall:.1f} requests/s")


def test_serve_script_binds_loopback_and_answers(tmp_path):
    """examples/serve.py end to end: loads a checkpoint, serves on 127.0.0.1, answers."""
    model, tokenizer = make_model()
    ckpt = str(tmp_path / "m.safetensors")
    save_checkpoint(ckpt, model, tokenizer, step=5)
    with socket.socket() as s:  # a free port (released just before the server takes it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "serve.py"),
                             "--checkpoint", ckpt, "--port", str(port),
                             "--max-new-tokens-limit", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                status, health = client.get("/health")
                break
            except OSError:  # connection refused until uvicorn listens
                assert time.monotonic() < deadline, "serve.py did not come up in 30 s"
                time.sleep(0.1)
        assert status == 200 and health["max_new_tokens_limit"] == 50
        status, body = client.post("/generate", {"prompt": "ab", "max_new_tokens": 5,
                                                 "seed": 1})
        assert status == 200 and body["num_chars"] == 5
        assert client.post("/generate", {"max_new_tokens": 51})[0] == 422
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode()
    assert f"http://127.0.0.1:{port}" in out, out


def test_serve_script_refuses_a_missing_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "examples" / "serve.py"),
                        "--checkpoint", str(tmp_path / "none.safetensors")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: "), r.stderr


def test_create_app_checks_its_arguments():
    model, tokenizer = make_model()
    with pytest.raises(ValueError, match="max_new_tokens_limit"):
        create_app(model, tokenizer, max_new_tokens_limit=0)
    with pytest.raises(ValueError, match="vocab_size"):
        create_app(model, CharTokenizer("ab"))


def test_onnx_model_is_served(tmp_path):
    """create_app over an OnnxModel: the no-cache path, same greedy text as NumPy."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the extra onnx)")
    pytest.importorskip("onnx", reason="onnx not installed (the extra onnx)")
    from tinygrad_char.interop.onnx_export import load_onnx, save_onnx

    model, tokenizer = make_model()
    path = str(tmp_path / "m.onnx")
    save_onnx(model, tokenizer, path)
    onnx_model, tok, _ = load_onnx(path)
    server = Server(create_app(onnx_model, tok, max_new_tokens_limit=LIMIT)).start()
    try:
        client = Client(server.url)
        assert client.get("/health")[1]["backend"] == "onnxruntime"
        status, body = client.post("/generate", {"prompt": "ROMEO:", "max_new_tokens": 40,
                                                 "temperature": 0})
        assert status == 200, body
        assert body["text"] == generate_text(model, tokenizer, "ROMEO:", 40, temperature=0)[0]
    finally:
        server.stop()


def test_package_imports_without_fastapi():
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['onnx'] = None; "
            "sys.modules['onnxruntime'] = None; import tinygrad_char, tinygrad_char.inference.serve, "
            "tinygrad_char.interop.onnx_export; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr



# -- bodies that do not parse, the exact schema, schema fuzzing ---------------------------------

@pytest.mark.parametrize("raw, words", [
    (b'{"prompt": "\xff\xfe"}', "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"prompt": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001, "nested too deeply"),
])
def test_unparseable_body_is_the_documented_422(served, raw, words):
    client, _, _ = served
    status, body = client.post("/generate", raw=raw)
    assert status == 422, (status, body)
    assert body["error"].startswith("body: ") and words in body["error"], body
    assert body["detail"] == [{"loc": ["body"], "msg": body["error"][len("body: "):],
                               "type": "json_invalid"}]
    assert client.get("/health")[0] == 200  # still serving


def test_other_http_errors_keep_their_status(served):
    client, _, _ = served
    assert client.get("/no-such-path")[0] == 404
    assert client.get("/generate")[0] == 405


def test_schema_publishes_exact_integer_bounds_and_the_vocabulary(served):
    client, _, tokenizer = served
    raw = urllib.request.urlopen(client.url + "/openapi.json", timeout=30).read().decode()
    assert "9.223372036854776e" not in raw  # the float 2**63, out of range itself
    schema = json.loads(raw)
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    seed = [s for s in props["seed"]["anyOf"] if s.get("type") == "integer"][0]
    assert seed["maximum"] == 2**63 - 1 and type(seed["maximum"]) is int
    assert seed["minimum"] == 0 and type(seed["minimum"]) is int
    assert type(props["max_new_tokens"]["maximum"]) is int
    pattern = re.compile(props["prompt"]["pattern"])
    assert pattern.fullmatch(CHARS) and not pattern.fullmatch("caf\u00e9")
    error_schema = schema["paths"]["/generate"]["post"]["responses"]["422"]
    assert error_schema["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse")
    assert set(schema["components"]["schemas"]["ErrorResponse"]["required"]) == \
        {"error", "detail"}


def test_largest_seed_and_integral_numbers_are_accepted(served):
    client, _, _ = served
    status, body = client.post("/generate", {"prompt": "a", "max_new_tokens": 3.0,
                                             "seed": 2**63 - 1})
    assert status == 200 and body["num_chars"] == 3 and body["seed"] == 2**63 - 1, body
    assert client.post("/generate", {"seed": 2**63})[0] == 422


FUZZ_EXAMPLES = 60  # per operation and generation mode (valid and invalid data)


@pytest.mark.slow
def test_schemathesis_finds_no_failures(tmp_path):
    """schemathesis (the CLI, every check, valid and invalid requests, a fixed seed) against
    a real server on an ephemeral 127.0.0.1 port: every answer is a documented one (no
    5xx, status codes, content types and bodies as the schema says, the 422 shape
    included; valid requests accepted, invalid ones refused)."""
    pytest.importorskip("schemathesis", reason="schemathesis not installed (the dev extra)")
    model, tokenizer = make_model()
    server = Server(create_app(model, tokenizer, max_new_tokens_limit=8)).start()
    try:
        with blas_threads(1):
            proc = subprocess.run(
                [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
                 "--checks", "all", "--max-examples", str(FUZZ_EXAMPLES), "--seed", "0",
                 "--workers", "1", "--no-color", "--report-dir", str(tmp_path)],
                capture_output=True, text=True, timeout=900, cwd=tmp_path)
    finally:
        server.stop()
    summary = proc.stdout[-3000:]
    assert proc.returncode == 0, summary
    assert "No issues found" in proc.stdout, summary
    generated = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    assert generated and int(generated.group(1)) >= FUZZ_EXAMPLES, summary


# -- streaming, the OpenAI shapes, back-pressure, disconnects, metrics, the page ---------------

def sse_events(url, path, body, timeout=60):
    """POST body, read the text/event-stream answer: (status, content type, [payloads]),
    each payload the parsed JSON of a `data:` line (or the string "[DONE]")."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        ctype = r.headers["content-type"]
        raw = r.read().decode()
    events = []
    for block in raw.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return r.status, ctype, events


def test_generate_streams_server_sent_events(served):
    client, model, tokenizer = served
    req = {"prompt": "ROMEO:", "max_new_tokens": 30, "temperature": 0.9, "seed": 7}
    status, ctype, events = sse_events(client.url, "/generate", dict(req, stream=True))
    assert status == 200 and ctype.startswith("text/event-stream")
    *chunks, done = events
    assert chunks and all(set(c) == {"text"} for c in chunks)
    text = "".join(c["text"] for c in chunks)
    assert text == generate_text(model, tokenizer, "ROMEO:", 30, temperature=0.9, seed=7)[0]
    assert done["done"] is True and done["num_chars"] == 30 and done["seed"] == 7
    assert done["finish_reason"] == "length" and done["prompt_chars_used"] == 6
    assert client.post("/generate", req)[1]["text"] == text  # the same without streaming


def test_stop_strings_end_the_text_before_them(served):
    client, model, tokenizer = served
    full = generate_text(model, tokenizer, "ab", 60, temperature=0)[0]
    stop = full[20:23]
    cut = full[:full.index(stop)]
    status, body = client.post("/generate", {"prompt": "ab", "max_new_tokens": 60,
                                             "temperature": 0, "stop": [stop, "\u00e9"]})
    assert status == 200 and body["text"] == cut and body["finish_reason"] == "stop", body
    _, _, events = sse_events(client.url, "/generate", {
        "prompt": "ab", "max_new_tokens": 60, "temperature": 0, "stop": stop, "stream": True})
    assert "".join(e.get("text", "") for e in events) == cut  # no part of it leaked
    assert events[-1]["finish_reason"] == "stop"


def test_completions_and_models_have_openai_shapes(served):
    client, model, tokenizer = served
    req = {"model": "anything", "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0.7,
           "top_k": 5, "seed": 2}
    status, body = client.post("/v1/completions", req)
    assert status == 200, body
    expected = generate_text(model, tokenizer, "ROMEO:", 12, temperature=0.7, top_k=5,
                             seed=2)[0]
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "anything" and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "text": expected, "logprobs": None,
                                "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}
    status, ctype, events = sse_events(client.url, "/v1/completions", dict(
        req, stream=True, stream_options={"include_usage": True}))
    assert ctype.startswith("text/event-stream") and events[-1] == "[DONE]"
    *chunks, finish, usage, _ = events
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    status, body = client.post("/v1/completions", dict(req, n=2))
    assert status == 422 and body["error"]["message"].startswith(  # OpenAI's error shape
        "n: only n = 1 is supported"), body
    assert body["error"]["param"] == "n" and body["error"]["type"] == "invalid_request_error"
    status, body = client.get("/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tinygrad_char"]


def test_attention_endpoint_gives_the_models_probabilities(served):
    client, model, tokenizer = served
    from tinygrad_char.ops.attention import attention_forward

    text = "to be, or not"
    status, body = client.post("/attention", {"text": text})
    assert status == 200, body
    assert body["chars"] == list(text) and body["n_layer"] == 2 and body["n_head"] == 2
    # the reference: the training forward's attention (xp op) on the same text
    ref = GPT(model.config, seed=0, kernels="xp").eval()
    ref.params = model.params
    ref.forward(np.asarray([tokenizer.encode(text)]))
    for layer in range(2):
        att = ref._caches[layer][1][3][3][0]  # (NH, T, T), P[t, s]: the xp cache's P
        for h in range(2):
            got = body["attention"][layer][h]
            for t in range(len(text)):
                assert len(got[t]) == t + 1 and abs(sum(got[t]) - 1) < 1e-4
                assert np.allclose(got[t], att[h, t, :t + 1], atol=1e-5), (layer, h, t)
    assert client.post("/attention", {"text": "caf\u00e9"})[0] == 422


def test_playground_page_is_served_self_contained(served):
    client, _, _ = served
    with urllib.request.urlopen(client.url + "/", timeout=30) as r:
        assert r.headers["content-type"].startswith("text/html")
        page = r.read().decode()
    for needed in ('id="prompt"', 'id="generate"', 'id="output"', 'id="temperature"',
                   'id="top_k"', 'id="top_p"', 'id="max_new_tokens"', 'id="seed"'):
        assert needed in page, needed
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the page loads from elsewhere"


def metric(text, name, labels=""):
    """The value of one sample of Prometheus text (0.0 when absent)."""
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_count_requests_characters_and_latencies(served):
    client, _, _ = served
    scrape = lambda: urllib.request.urlopen(client.url + "/metrics", timeout=30).read().decode()
    before = scrape()
    assert client.post("/generate", {"prompt": "a", "max_new_tokens": 9, "seed": 1})[0] == 200
    assert client.post("/generate", {"temperature": -1})[0] == 422
    after = scrape()
    ok = 'tinygrad_char_requests_total{endpoint="/generate",outcome="ok"}'
    invalid = 'tinygrad_char_requests_total{endpoint="/generate",outcome="invalid"}'
    assert metric(after, ok) == metric(before, ok) + 1
    assert metric(after, invalid) == metric(before, invalid) + 1
    chars = "tinygrad_char_characters_generated_total"
    assert metric(after, chars) >= metric(before, chars) + 9
    first = "tinygrad_char_time_to_first_character_seconds_count"
    assert metric(after, first) == metric(before, first) + 1
    per = "tinygrad_char_character_latency_seconds_count"
    assert metric(after, per) >= metric(before, per) + 8
    assert "tinygrad_char_active_sequences 0.0" in after
    assert "tinygrad_char_queue_length 0.0" in after


def test_full_slots_and_queue_answer_429_at_once_and_disconnects_free_slots():
    """One slot, no queue: while a long stream runs, the next request is refused at once
    with 429 and Retry-After; the streaming client hangs up and its slot is freed within a
    step or two, after which requests are served again."""
    model, tokenizer = make_model()
    app = create_app(model, tokenizer, max_new_tokens_limit=100_000, max_slots=1,
                     max_queue=0)
    server = Server(app).start()
    engine = app.state.engine
    try:
        sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        body = json.dumps({"prompt": "a", "max_new_tokens": 100_000, "stream": True}).encode()
        sock.sendall(b"POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                     b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while b"data: " not in received:  # streaming: the slot is taken
            chunk = sock.recv(4096)
            assert chunk, f"the connection closed: {received!r}"
            received += chunk
        assert engine.stats() == (1, 0)
        start = time.perf_counter()
        try:
            urllib.request.urlopen(urllib.request.Request(
                server.url + "/generate", data=b'{"max_new_tokens": 5}',
                headers={"content-type": "application/json"}), timeout=30)
            raise AssertionError("a request past the slots and queue was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 429 and e.headers["Retry-After"] == "1"
            refused = json.loads(e.read())
        assert time.perf_counter() - start < 1.0, "the refusal was not immediate"
        assert "slots" in refused["error"] and refused["detail"][0]["type"] == "overloaded"
        handle = engine._active[0].handle  # the streaming request's (one slot)
        sock.close()  # the client goes away
        closed = time.monotonic()
        while engine.stats()[0] and time.monotonic() < closed + 10:
            time.sleep(0.005)
        assert engine.stats() == (0, 0), "the slot of a closed connection was not freed"
        assert time.monotonic() - closed < 2.0, "the closed connection's slot took seconds"
        # once the server learns of the close (the ASGI disconnect: a few ms, in which a
        # step of this tiny model may run several times), the slot is freed within one step
        assert handle.cancelled_at_step is not None, "the disconnect did not cancel"
        assert handle.freed_at_step - handle.cancelled_at_step <= 1, \
            (handle.cancelled_at_step, handle.freed_at_step)
        assert engine.chars_generated < 100_000
        status, body = Client(server.url).post("/generate", {"max_new_tokens": 5})
        assert status == 200 and body["num_chars"] == 5
        metrics = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
        assert metric(metrics, 'tinygrad_char_requests_total{endpoint="/generate",'
                               'outcome="rejected"}') == 1
        assert metric(metrics, 'tinygrad_char_requests_total{endpoint="/generate",'
                               'outcome="cancelled"}') == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_bench_serve_runs_and_writes_its_results(tmp_path):
    """benchmarks/bench_serve.py at the smallest scale: it checks the server's text, loads
    it, and writes serve.json (machine, versions, config, one result per point) and serve.md.
    Nothing here compares speeds."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serve.py"),
                           "--configs", "tiny", "--clients", "1,3", "--chars", "5",
                           "--requests", "1", "--min-total", "1", "--repeats", "1",
                           "--threads", "1",
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "serve.json").read_text())
    assert {"machine", "versions", "config", "results"} <= set(record)
    points = record["results"]
    assert [(p["server"], p["clients"]) for p in points] == [("this", 1), ("this", 3)]
    for p in points:
        assert p["errors"] == 0 and p["chars_per_s"] > 0 and p["streaming"] is True
        assert 0 < p["ttfc_p50_s"] <= p["request_p99_s"]
        # CPU time is counted in clock ticks (10 ms): 5 characters may take less than one
        assert p["cores_used"] >= 0
    assert "| this | tiny | 3 |" in (tmp_path / "serve.md").read_text()


@pytest.mark.slow
def test_bench_engine_ceiling_runs_and_writes_its_results(tmp_path):
    """benchmarks/bench_engine_ceiling.py at the smallest scale writes its results, and both
    rounds of the same seeded requests count the same matmul FLOPs. Nothing here compares
    speeds."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_engine_ceiling.py"),
                           "--config", "tiny", "--sequences", "2", "--chars", "70",
                           "--rounds", "2", "--threads", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "engine_ceiling.json").read_text())
    assert {"machine", "versions", "config", "median", "rounds"} <= set(record)
    rounds = record["rounds"]
    assert len(rounds) == 2
    assert rounds[0]["matmul_gflop"] == rounds[1]["matmul_gflop"] > 0
    for r in rounds:
        assert r["single_chars_per_s"] > 0 and r["batched_chars_per_s"] > 0
        assert r["ceiling_chars_per_s"] > 0 and 0 < r["matmul_share"] < 1
    assert "| median |" in (tmp_path / "engine_ceiling.md").read_text()
