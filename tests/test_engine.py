"""The generation engine as a library (no HTTP): continuous batching gives every request the
text `generate_text` gives it alone (31 other requests in flight, every position encoding,
past the context window, the numba kernels' batched matmuls included), queueing past the
slots, back-pressure past the queue, cancellation freeing a slot within a step, stop
strings, and that only the engine thread ever runs the model."""

import queue
import threading
import time

import numpy as np
import pytest

from tinygrad_char import GPT, GPTConfig
from tinygrad_char.inference.engine import Engine, EngineBusy, Request, attention_maps
from tinygrad_char.inference.sampling import generate_text
from tinygrad_char.training.tokenizer import CharTokenizer

CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
BLOCK = 32
PROMPTS = ["", "ROMEO:", "to be, or not", "abcdefghij" * 5]


def make_model(pos="learned", n_embd=32, **kw):
    tokenizer = CharTokenizer(CHARS, unk=True)  # <unk> is never generated
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=BLOCK, n_layer=2, n_head=4,
                    n_embd=n_embd, pos_encoding=pos, **kw)
    return GPT(cfg, seed=0), tokenizer


def settings(i):
    """Request i's sampling settings: a mix of everything a client may ask for."""
    return dict(temperature=(0.0, 0.7, 1.0, 1.3)[i % 4], top_k=(None, 5, 20)[i % 3],
                top_p=(None, 0.9)[i % 2], seed=1000 + i)


def run_concurrently(engine, requests):
    """Submit every request at once from this thread; returns each one's done event."""
    events = [queue.Queue() for _ in requests]
    for r, q in zip(requests, events):
        engine.submit(r, q.put)
    done = []
    for q in events:
        while (event := q.get(timeout=600))["type"] == "text":
            pass
        done.append(event)
    return done


@pytest.mark.parametrize("pos, n_embd, extra", [
    ("learned", 128, {}),  # 32 rows x 128 wide: the numba kernels' linear runs at batch 32
    ("sinusoidal", 32, {}),
    ("rope", 32, dict(normalization="rmsnorm", activation="swiglu", n_kv_head=2)),
])
def test_same_seed_same_text_with_31_others_in_flight(pos, n_embd, extra):
    model, tokenizer = make_model(pos, n_embd, **extra)
    engine = Engine(model, tokenizer, max_slots=32, max_queue=0).start()
    try:
        # lengths up to 2.5 block_size: learned positions rebuild their window, the others
        # slide; different lengths: sequences leave and rows move while others run
        # (learned: shorter, every step past the window is a prefill of block_size tokens)
        longest = 40 if pos == "learned" else 80
        reqs = [Request(PROMPTS[i % 4][-BLOCK:], 20 + (i * 7) % (longest - 19), **settings(i))
                for i in range(32)]
        done = run_concurrently(engine, reqs)
    finally:
        engine.stop()
    assert engine.steps < sum(r.max_new_tokens for r in reqs) / 4, "the steps were not batched"
    differ = []
    for r, event in zip(reqs, done):
        alone = generate_text(model, tokenizer, r.prompt, r.max_new_tokens,
                              temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                              seed=r.seed)[0]
        assert event["finish_reason"] == "length" and event["num_chars"] == r.max_new_tokens
        if event["text"] != alone:
            first = next(i for i, (a, b) in enumerate(zip(event["text"], alone)) if a != b)
            differ.append((r.seed, first))
    assert not differ, f"{pos}: (seed, first differing character) {differ}"


def test_library_use_generate_and_stream():
    model, tokenizer = make_model()
    with_engine = Engine(model, tokenizer, max_slots=4).start()
    try:
        text = with_engine.generate("ROMEO:", 40, temperature=0.8, top_k=10, seed=3)
        assert text == generate_text(model, tokenizer, "ROMEO:", 40, temperature=0.8,
                                     top_k=10, seed=3)[0]
        chunks = list(with_engine.stream("ROMEO:", 40, temperature=0.8, top_k=10, seed=3))
        assert "".join(chunks) == text and len(chunks) == 40  # one character a step
        assert with_engine.last_done["finish_reason"] == "length"
        assert with_engine.generate("", 0) == ""
        with pytest.raises(ValueError, match="temperature must be"):
            with_engine.generate("a", 5, temperature=-1)
        with pytest.raises(ValueError, match="not in the model's vocabulary"):
            with_engine.generate("caf\u00e9", 5)
        with pytest.raises(ValueError, match="max_slots"):
            Engine(model, tokenizer, max_slots=0)
    finally:
        with_engine.stop()


def test_stop_strings_end_the_text_and_are_not_returned():
    model, tokenizer = make_model()
    full = generate_text(model, tokenizer, "ab", 60, temperature=0)[0]
    stop = full[25:28]
    engine = Engine(model, tokenizer).start()
    try:
        chunks = list(engine.stream("ab", 60, temperature=0, stop=("\u00e9\u00e9", stop)))
    finally:
        engine.stop()
    assert "".join(chunks) == full[:full.index(stop)]
    assert engine.last_done["finish_reason"] == "stop"


def test_requests_past_the_slots_queue_then_past_the_queue_are_refused():
    model, tokenizer = make_model()
    reqs = [Request(PROMPTS[i % 4], 30, **settings(i)) for i in range(4)]
    expected = [generate_text(model, tokenizer, r.prompt, 30, temperature=r.temperature,
                              top_k=r.top_k, top_p=r.top_p, seed=r.seed)[0] for r in reqs]
    # (before the engine starts: a model object is run by one thread at a time)
    engine = Engine(model, tokenizer, max_slots=2, max_queue=2).start()
    try:
        events = [queue.Queue() for _ in reqs]
        handles = [engine.submit(r, q.put) for r, q in zip(reqs, events)]
        with pytest.raises(EngineBusy, match="slots"):
            engine.submit(Request("a", 5), lambda e: None)
        for q, want in zip(events, expected):
            text = ""
            while (event := q.get(timeout=120))["type"] == "text":
                text += event["text"]
            assert text == event["text"] == want
        assert engine.generate("a", 5, seed=0)  # room again
        assert all(h.seed == r.seed for h, r in zip(handles, reqs))
    finally:
        engine.stop()


def test_cancel_frees_the_slot_within_a_step():
    model, tokenizer = make_model()
    engine = Engine(model, tokenizer, max_slots=1, max_queue=0).start()
    try:
        events = queue.Queue()
        handle = engine.submit(Request("a", 1_000_000), events.put)
        assert events.get(timeout=60)["type"] == "text"
        steps = engine.steps
        engine.cancel(handle)
        deadline = time.monotonic() + 10
        while engine.stats()[0] and time.monotonic() < deadline:
            time.sleep(0.001)
        assert engine.stats() == (0, 0) and engine.steps - steps <= 1
        while (event := events.get(timeout=10))["type"] == "text":
            pass
        assert event["finish_reason"] == "cancelled"
        assert engine.generate("a", 3, seed=0)  # the slot is free again
    finally:
        engine.stop()


def test_only_the_engine_thread_runs_the_model():
    model, tokenizer = make_model()
    callers = set()
    forward = model.forward

    def recording_forward(*args, **kwargs):
        callers.add(threading.current_thread().name)
        return forward(*args, **kwargs)

    model.forward = recording_forward
    engine = Engine(model, tokenizer, max_slots=4).start()
    try:
        threads = [threading.Thread(target=engine.generate, args=("ab", 20),
                                    kwargs=dict(seed=i)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        maps = engine.call(lambda m: attention_maps(m, tokenizer, "ROMEO:")).result(60)
    finally:
        engine.stop()
    assert callers == {"tinygrad_char-engine"}, callers
    assert maps["chars"] == list("ROMEO:") and len(maps["attention"]) == 2
    assert np.allclose([sum(row) for row in maps["attention"][1][3]], 1.0, atol=1e-4)
