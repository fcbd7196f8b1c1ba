"""An HTTP endpoint for sampling: a FastAPI app factory (`create_app`).

    app = create_app(model, tokenizer, max_new_tokens_limit=2000, backend_name="numpy")
    uvicorn.run(app, host="127.0.0.1", port=8000)       # examples/serve.py does this

    POST /generate  {"prompt": "ROMEO:", "max_new_tokens": 200, "temperature": 0.8,
                     "top_k": 40, "top_p": null, "seed": 0}
                 -> {"text": ..., "num_chars": 200, "time_s": 0.41, "seed": 0,
                     "prompt_chars_used": 6, "prompt_cropped": false}
    GET  /health -> {"status": "ok", "config": {...}, "num_params": ..., "backend": ...}

Validation happens before the model is touched: pydantic checks every field's type and
bounds (the OpenAPI schema at /openapi.json documents them), and the prompt's characters
against the vocabulary; anything wrong is a 422 whose `error` line names the field and
the problem, a body that does not even parse (not UTF-8, nested too deeply) included.
The schema publishes what is checked: exact integer bounds, the vocabulary as the
prompt's `pattern`, and the 422 shape (`ErrorResponse`). An empty prompt starts from
"\\n" (as `generate_text`); a prompt longer than block_size is cropped to its last
block_size characters (one character = one token), which is all the model can see anyway.

Concurrency: requests run in FastAPI's thread pool with no lock. `sampling.generate`
writes to the model object (it calls model.eval() and restores model.training after),
and the no-cache path's model.forward stores its caches on the object, so each request
samples from its own shallow copy of the model: the parameter arrays are shared and only
read, while `training` and `_caches` belong to the copy. Each request has its own random
generator seeded from `seed` (drawn and returned when absent), so a seed gives the same
text whatever else is running.

What this file deliberately is not: a batching server, a streaming endpoint, or an
authenticated one (bind it to loopback, as examples/serve.py does by default). FastAPI
and pydantic are imported inside `create_app`, so the package imports without them
(the optional extra `serve` installs them).
"""

import copy
import secrets
import time

from tinygrad_char.runtime import use_threads_here
from tinygrad_char.training.cli import MAX_SEED  # 2**63 - 1: fits a signed 64-bit integer, every client sends it
from tinygrad_char.inference.sampling import generate_text

MAX_PROMPT_CHARS = 100_000  # longer bodies are refused: only block_size of them is used
MAX_TEMPERATURE = 100.0  # far past uniform sampling already; bounds a meaningless input


def _body_error(exc):
    """The (where, message, type) of a body FastAPI could not even parse: it raises a bare
    400 "There was an error parsing the body" from the decoding error, kept as __cause__."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return (f"body: not UTF-8 ({cause.reason} at byte {cause.start}); send JSON encoded "
                f"as UTF-8", "json_invalid")
    if isinstance(cause, RecursionError):
        return "body: JSON nested too deeply; send one flat object of fields", "json_invalid"
    return f"body: could not be parsed ({type(cause).__name__}); send a JSON object", \
        "json_invalid"


def _vocabulary_pattern(chars):
    """A regular expression (JSON Schema's ECMA-262 dialect) matching the strings made of
    `chars` only: the prompt's vocabulary, published in the schema."""
    def escape(c):
        if c in "\\]^-[":
            return "\\" + c
        if not c.isprintable() and ord(c) <= 0xFFFF:
            return f"\\u{ord(c):04x}"  # "\n" and friends, readable in the schema
        return c

    return "^[" + "".join(escape(c) for c in chars) + "]*$"


def _error_line(errors):
    """One line naming each failing field and its problem, e.g.
    'temperature: Input should be greater than or equal to 0'."""
    parts = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc) if loc else "body"
        msg = e.get("msg", "invalid").removeprefix("Value error, ")  # pydantic's prefix
        if e.get("type") == "json_invalid":
            where = "body"
            detail = (e.get("ctx") or {}).get("error")
            msg = f"malformed JSON ({detail})" if detail else "malformed JSON"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def create_app(model, tokenizer, max_new_tokens_limit=2000, backend_name=None,
               use_cache=None, threads_per_request=1):
    """A FastAPI app serving `model` (a GPT, or an onnx_export.OnnxModel).

    Args:
        model: the model to sample from; put in eval mode here.
        tokenizer: its CharTokenizer.
        max_new_tokens_limit: the largest max_new_tokens a request may ask for.
        backend_name: reported by /health (default: model.backend.name).
        use_cache: sampling path; default: the KV cache when the model supports it (a
            GPT), the no-cache path otherwise (an OnnxModel).
        threads_per_request: threads of the CPU kernels per request (set in each request's
            thread: runtime.use_threads_here); requests already run side by side.
    Returns:
        fastapi.FastAPI
    """
    from fastapi import FastAPI, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    if isinstance(max_new_tokens_limit, bool) or not isinstance(max_new_tokens_limit, int) \
            or max_new_tokens_limit < 1:
        raise ValueError(f"max_new_tokens_limit must be a positive integer, got "
                         f"{max_new_tokens_limit!r}")
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's "
                         f"vocab_size is {model.config.vocab_size}")
    if use_cache is None:
        use_cache = getattr(model, "supports_kv_cache", True)
    model.eval()  # so every request's copy starts in eval mode too
    config = model.config
    block_size = config.block_size
    backend_name = backend_name or getattr(model, "runtime", None) or model.backend.name
    num_params = model.num_params()

    class GenerateRequest(BaseModel):
        """What to continue and how to sample."""
        model_config = ConfigDict(extra="forbid")  # a misspelt field is an error

        prompt: str = Field(
            "", max_length=MAX_PROMPT_CHARS, strict=True,
            json_schema_extra={"pattern": _vocabulary_pattern(tokenizer.chars)},
            description="Text to continue. Every character must be in the model's "
                        "vocabulary (the pattern lists them; checked with a message "
                        "naming the others). Empty: start from a newline. Longer than the "
                        f"context window ({block_size}): only the last {block_size} "
                        "characters are used.")
        max_new_tokens: int = Field(
            min(200, max_new_tokens_limit), ge=0, le=max_new_tokens_limit, strict=True,
            description=f"Characters to generate, 0 to {max_new_tokens_limit} (the "
                        "server's --max-new-tokens-limit).")
        temperature: float = Field(
            1.0, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, strict=True,
            description="Softmax temperature: 0 is greedy (argmax), < 1 sharpens, > 1 "
                        f"flattens; at most {MAX_TEMPERATURE}.")
        top_k: int | None = Field(
            None, ge=1, strict=True,
            description="Sample only among the k most likely characters (>= 1); null "
                        "for no limit.")
        top_p: float | None = Field(
            None, gt=0.0, le=1.0, allow_inf_nan=False, strict=True,
            description="Nucleus sampling: the smallest set of most likely characters "
                        "whose probability reaches top_p, in (0, 1]; null for no limit.")
        seed: int | None = Field(
            None, ge=0, le=MAX_SEED, strict=True,
            description="Seed of this request's random generator: the same seed and "
                        "fields give the same text. Null: a fresh seed, returned in the "
                        "response.")

        @field_validator("max_new_tokens", "top_k", "seed", mode="before")
        @classmethod
        def _integral_number(cls, value):
            # JSON Schema counts 5.0 as an integer (a number with no fraction); strict
            # pydantic would refuse it. Strings and booleans stay refused.
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return value

        @field_validator("prompt")
        @classmethod
        def _in_vocabulary(cls, prompt):
            tokenizer.encode(prompt, errors="raise", what="prompt")  # ValueError -> 422
            return prompt

    class GenerateResponse(BaseModel):
        text: str = Field(description="The continuation (the prompt is not repeated).")
        num_chars: int = Field(description="Number of characters produced.")
        time_s: float = Field(description="Seconds spent generating (server side).")
        seed: int = Field(description="The seed used (the request's, or the one drawn).")
        prompt_chars_used: int = Field(
            description="Prompt characters the model saw (after cropping to the window; "
                        "an empty prompt counts its starting newline as 0).")
        prompt_cropped: bool = Field(
            description="True when the prompt was longer than the window and cropped.")

    class ErrorDetail(BaseModel):
        loc: list[str | int] = Field(description='Where: e.g. ["body", "temperature"].')
        msg: str = Field(description="What is wrong there.")
        type: str = Field(description='pydantic\'s error type, e.g. "greater_than_equal".')

    class ErrorResponse(BaseModel):
        """Every rejected request (422): one line, and the same as a list."""
        error: str = Field(description='One line naming each failing field and its problem, '
                                       'e.g. "temperature: Input should be greater than or '
                                       'equal to 0".')
        detail: list[ErrorDetail] = Field(description="One entry per problem.")

    class HealthResponse(BaseModel):
        status: str = Field(description='"ok" while the server is up.')
        config: dict = Field(description="The model's GPTConfig.")
        num_params: int = Field(description="Number of parameters (a tied head once).")
        backend: str = Field(description="Where the model runs: numpy, cupy or onnxruntime.")
        vocab_size: int = Field(description="Characters in the vocabulary (with <unk>).")
        max_new_tokens_limit: int = Field(description="The largest max_new_tokens allowed.")

    app = FastAPI(title="tinygrad_char", version="0.1.0",
                  description="Sample text from a character-level GPT.")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in errors]  # no echo of the input
        return JSONResponse(status_code=422,
                            content={"error": _error_line(errors), "detail": detail})

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if exc.status_code != 400:  # 404, 405, ...: FastAPI's own answer
            return await http_exception_handler(request, exc)
        line, kind = _body_error(exc)  # 400 is only raised for a body that does not parse
        return JSONResponse(status_code=422, content={
            "error": line, "detail": [{"loc": ["body"], "msg": line.removeprefix("body: "),
                                       "type": kind}]})

    original_openapi = app.openapi

    def openapi():
        # FastAPI's OpenAPI model stores numeric bounds as floats, which turns the seed's
        # 2**63 - 1 into 9.223372036854776e18 (2**63, itself out of range); publish the
        # request schema as pydantic writes it, with exact integer bounds
        if app.openapi_schema is None:
            schema = original_openapi()
            exact = GenerateRequest.model_json_schema(ref_template="#/components/schemas/"
                                                                   "{model}")
            schema["components"]["schemas"]["GenerateRequest"] = exact
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/health", response_model=HealthResponse)
    def health():
        """The model's config, parameter count and backend."""
        return HealthResponse(status="ok", config=config.to_dict(), num_params=num_params,
                              backend=backend_name, vocab_size=config.vocab_size,
                              max_new_tokens_limit=max_new_tokens_limit)

    # a plain `def`: FastAPI runs it in its thread pool, so slow sampling does not block
    # the event loop, and NumPy's matmuls (which release the GIL) can overlap
    @app.post("/generate", response_model=GenerateResponse,
              responses={422: {"model": ErrorResponse, "description": "The request cannot "
                               "be used: `error` says which field and why."}})
    def generate(req: GenerateRequest):
        """Continue the prompt; the response carries the text, its length and the time."""
        seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)
        prompt = req.prompt[-block_size:]  # one character is one token
        use_threads_here(threads_per_request)
        worker = copy.copy(model)  # own `training` and `_caches`; params shared, read only
        start = time.perf_counter()
        (text,) = generate_text(worker, tokenizer, prompt, req.max_new_tokens,
                                temperature=req.temperature, top_k=req.top_k,
                                top_p=req.top_p, seed=seed, use_cache=use_cache)
        return GenerateResponse(text=text, num_chars=len(text),
                                time_s=time.perf_counter() - start, seed=seed,
                                prompt_chars_used=len(prompt),
                                prompt_cropped=len(req.prompt) > block_size)

    return app
