"""The generation engine: one thread owns the model and steps every active sequence together
(continuous batching), each in its own row (slot) of one KV cache.

    engine = Engine(model, tokenizer, max_slots=32, max_queue=64).start()
    text = engine.generate("ROMEO:", 200, temperature=0.8, seed=0)      # blocking
    for chunk in engine.stream("ROMEO:", 200, seed=0): print(chunk, end="")
    handle = engine.submit(Request("ROMEO:", 200, seed=0), emit)   # emit(event), engine thread
    engine.stop()

The loop, on the engine thread only:
  1. drop the sequences whose client went away (`cancel`), freeing their slots;
  2. admit queued requests into free slots: each is prefilled alone (the model's forward
     on its row of the cache, `KVCache.rows`) and samples its first character;
  3. one decode step: the model's forward on the last token of every active sequence at
     once (rows 0 .. n - 1, each at its own position), then each sequence samples its next
     character with its own settings and its own random generator, the sequences that
     share settings in one call (a learned-position model past its window re-runs each
     such sequence's last block_size tokens, as `sampling.generate` does, a few windows a
     forward (as many as stay in the CPU's cache), without the KV cache, computing only the
     last position's logits: `_rerun_windows`);
  4. finished sequences leave at once: the last active row moves into the freed one, so
     the active rows stay 0 .. n - 1 (a slice of the cache, no gather).
Work a caller needs from the model (the attention maps of serve.py) is queued with `call`
and runs between two steps: no other thread ever calls the kernels (numba's workqueue
threading layer aborts when two threads run a parallel kernel at once).

Same seed, same text whatever else runs: a sequence's random generator is seeded from its
request alone (`xp.random.default_rng(seed)`, drawn once per sampled character as
`sampling.generate` does), its prompt is prefilled as `generate` prefills it, and the cache
attends over the same columns whatever the batch (`KVCache`); so a request's text equals
`sampling.generate_text` for it alone, up to a logit that lands within float rounding of a
sampling boundary (the matmuls of a batch of rows may round differently from one row's).

A model without a KV cache (an exported `OnnxModel`, `supports_kv_cache = False`) runs
each sequence's window on its own every step (as `generate(use_cache=False)`): correct,
not batched.

What this file deliberately is not: HTTP (serve.py), a scheduler with priorities or
preemption, or a second copy of the model's block: a step is `model.forward` with the cache.
"""

import collections
import concurrent.futures
import itertools
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from tinygrad_char.runtime import few_rows, use_threads_here
from tinygrad_char.inference.sampling import KVCache, check_sampling_args, prompt_ids
from tinygrad_char.training.cli import MAX_SEED

# Up to this many rows (tokens) in all the forwards of a step, the step runs in `few_rows`
# (BLAS threads, serial kernels), above on the kernels' pool; decided once a step, so that a
# step never switches between the two. One sequence's 64-token window re-run (learned
# positions past the window) is the case between: serving one client of bench_serve.py's
# CPU-preset model made 250-299 characters/s with it in few_rows, 217-292 on the pool; the
# tiny model's the same either way; 8 windows (512 rows) ran faster on the pool (2 cores).
FEW_ROWS = 64
# Windows re-run in one forward: as many as keep the widest activation, the MLP's hidden
# layer (rows x hidden floats), within 2^18 floats (1 MiB of float32), which stays in
# cache. 32 windows of the CPU preset at once (2048 rows x 512) served 493 characters/s, 8
# at a time (512 rows) 713; the tiny model's 32 (2048 x 128) 12,900 at once, 11,100 in
# fours (the engine alone, 32 requests of 200 characters at once, 2-core AMD EPYC, 2
# threads).
REBUILD_FLOATS = 1 << 18


class EngineBusy(RuntimeError):
    """Every slot and queue place is taken: try again later (HTTP 429 + Retry-After)."""

    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Request:
    """What to generate. prompt: text in the vocabulary (only its last block_size characters
    are seen by a learned-position model at the first step; all by others, sliding);
    stop: strings that end the text early (not included in it)."""
    prompt: str
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple = ()

    def check(self, tokenizer):
        """Raise a one-line ValueError for a field that cannot be used."""
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.seed)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got "
                             f"{self.max_new_tokens!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be non-empty strings")
        tokenizer.encode(self.prompt, errors="raise", what="prompt")


@dataclass(eq=False)
class Handle:
    """One submitted request, as its submitter sees it: `cancel` it through the engine."""
    id: int
    request: Request
    seed: int
    emit: object
    text_events: bool = True
    submitted: float = field(default_factory=time.perf_counter)
    first: float | None = None  # when its first character was sampled (perf_counter)
    cancelled: bool = False
    cancelled_at_step: int | None = None  # the engine's step count when cancel() was called
    freed_at_step: int | None = None  # ... and when its slot was freed


class _Sequence:
    """A request being generated (engine thread only)."""

    def __init__(self, handle, ids, rng):
        self.handle, self.req = handle, handle.request
        self.ids = list(ids)  # prompt ids, then the sampled ones
        self.n_prompt = len(ids)
        self.rng = rng  # the model's module's generator, seeded as `generate` seeds it
        self.text = ""  # the continuation so far
        self.sent = 0  # characters of `text` already emitted
        self.offset = None  # index in ids of the token at cache position 0 (None: empty)
        self.reason = None  # why it ends ("length", "stop"), once it does


class Engine:
    """Continuous batching over one KV cache of max_slots rows (see the module docstring).

    Args:
        model: a GPT (or an OnnxModel: no cache, no batching); put in eval mode.
        tokenizer: its CharTokenizer; its <unk> id is never generated.
        max_slots: sequences generated at once (rows of the cache), >= 1.
        max_queue: requests waiting for a slot, >= 0; past slots + queue `submit` raises
            EngineBusy at once.
        threads: CPU kernel threads of the engine thread (None: numba's default).
    """

    def __init__(self, model, tokenizer, max_slots=32, max_queue=64, threads=None):
        for name, value, low in (("max_slots", max_slots, 1), ("max_queue", max_queue, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's "
                             f"vocab_size is {model.config.vocab_size}")
        self.model, self.tokenizer = model, tokenizer
        self.max_slots, self.max_queue, self.threads = max_slots, max_queue, threads
        self.use_cache = getattr(model, "supports_kv_cache", True)
        self.block_size = model.config.block_size
        self.banned = None if tokenizer.unk_id is None else \
            model.xp.asarray([tokenizer.unk_id])  # ids never sampled
        self.char_of_id = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        self._waiting = collections.deque()  # Handles, submit order
        self._calls = collections.deque()  # (fn, Future) to run on the engine thread
        self._lock = threading.Condition()
        self._in_flight = 0  # submitted and not finished (waiting + active)
        self._ids = itertools.count(1)
        self._active = []  # _Sequence in row order (engine thread only)
        self._thread = None
        self._stopping = False
        self._few, self._few_context = False, None  # see _rows
        self.cache = None
        self.steps = 0  # decode steps run (a test reads it)
        self.chars_generated = 0

    # -- control (any thread) ----------------------------------------------------------
    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tinygrad_char-engine",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout=10):
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self):
        """(active sequences, queued requests): read without the engine's cooperation."""
        return len(self._active), len(self._waiting)

    def submit(self, request, emit, text_events=True):
        """Queue a checked Request; returns its Handle. emit(event) is called on the engine
        thread with dicts: {"type": "text", "text", "t"} for new characters (unless
        text_events is False: then only the last event), then one {"type": "done",
        "finish_reason": "length" | "stop" | "cancelled", "text", "num_chars",
        "prompt_chars", "seed", "time_s", "first_t", "t"} (or {"type": "error", "error"});
        t and first_t (the first character, or None) are time.perf_counter() values.
        Raises EngineBusy when slots and queue are full, ValueError for a bad field."""
        request.check(self.tokenizer)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        with self._lock:
            if self._stopping:
                raise EngineBusy("the engine is stopping", retry_after=1)
            if self._in_flight >= self.max_slots + self.max_queue:
                raise EngineBusy(f"all {self.max_slots} slots and {self.max_queue} queue "
                                 f"places are taken; retry later", retry_after=1)
            handle = Handle(next(self._ids), request, seed, emit, text_events)
            self._in_flight += 1
            self._waiting.append(handle)
            self._lock.notify_all()
        return handle

    def cancel(self, handle):
        """The client went away: its slot is freed at the next step."""
        handle.cancelled_at_step = self.steps
        handle.cancelled = True
        with self._lock:
            self._lock.notify_all()

    def call(self, fn):
        """Run fn(model) on the engine thread between two steps; returns a Future."""
        future = concurrent.futures.Future()
        with self._lock:
            self._calls.append((fn, future))
            self._lock.notify_all()
        return future

    # -- library conveniences (blocking) ------------------------------------------------
    def stream(self, prompt, max_new_tokens, **sampling):
        """Yield the continuation's text in chunks as it is generated; a 'done' event's
        fields end up in `self.last_done` (a convenience for scripts)."""
        events = queue.Queue()
        handle = self.submit(Request(prompt, max_new_tokens, **sampling), events.put)
        try:
            while True:
                event = events.get()
                if event["type"] == "text":
                    yield event["text"]
                elif event["type"] == "error":
                    raise RuntimeError(event["error"])
                else:
                    self.last_done = event
                    return
        finally:
            self.cancel(handle)  # a no-op once done; frees the slot if the caller stopped

    def generate(self, prompt, max_new_tokens, **sampling):
        """The whole continuation (blocking)."""
        return "".join(self.stream(prompt, max_new_tokens, **sampling))

    # -- the engine thread ---------------------------------------------------------------
    def _run(self):
        if self.threads is not None:
            use_threads_here(self.threads)
        self.model.eval()
        if self.use_cache:
            self.cache = KVCache(self.model, self.max_slots)
        while True:
            with self._lock:
                while not (self._stopping or self._calls or self._active or self._waiting):
                    self._lock.wait()
                if self._stopping:
                    break
                calls, self._calls = list(self._calls), collections.deque()
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(self.model))
                    except Exception as e:  # handed to the caller
                        future.set_exception(e)
            try:
                self._drop_cancelled()
                self._admit()
                if self._active:
                    self._step()
            except Exception as e:  # a bug: tell every client rather than hang them
                for seq in self._active:
                    self._finish_error(seq, f"{type(e).__name__}: {e}")
                self._active = []
                if self.cache is not None:
                    self.cache.lengths[:] = 0
                raise
        self._rows(FEW_ROWS + 1)  # leaves few_rows: the thread set-up as it was
        for seq in list(self._active):
            self._finish(seq, "cancelled")
        for handle in self._waiting:
            handle.emit({"type": "done", "finish_reason": "cancelled", "text": "",
                         "num_chars": 0, "prompt_chars": 0, "seed": handle.seed,
                         "time_s": 0.0, "t": time.perf_counter()})

    def _rows(self, n):
        """Enter the thread set-up for a forward of n rows (see FEW_ROWS): `few_rows` up to
        FEW_ROWS, the kernels' pool above. Kept across steps and switched only when the
        side changes (entering few_rows costs about as much as a one-row step)."""
        few = n <= FEW_ROWS
        if few != self._few:
            if self._few_context is not None:
                self._few_context.__exit__(None, None, None)
                self._few_context = None
            if few:
                self._few_context = few_rows()
                self._few_context.__enter__()
            self._few = few

    def _drop_cancelled(self):
        for seq in [s for s in self._active if s.handle.cancelled]:
            self._finish(seq, "cancelled")

    def _admit(self):
        while len(self._active) < self.max_slots:
            with self._lock:
                if not self._waiting:
                    return
                handle = self._waiting.popleft()
            if handle.cancelled:
                self._done(handle, {"type": "done", "finish_reason": "cancelled", "text": "",
                                    "num_chars": 0, "prompt_chars": 0, "seed": handle.seed,
                                    "time_s": 0.0})
                continue
            ids = prompt_ids(self.tokenizer, handle.request.prompt)
            seq = _Sequence(handle, ids, self.model.xp.random.default_rng(handle.seed))
            self._active.append(seq)
            if seq.req.max_new_tokens == 0:
                seq.reason = "length"
            else:
                self._rows(min(len(ids), self.block_size))
                logits = self._prefill(seq, len(self._active) - 1)
                self._sample([seq], logits)
            self._retire()

    def _prefill(self, seq, row):
        """Run seq's context into its row as `sampling.generate` does at its first step (or
        when a learned-position window slides); returns the last position's (1, V) logits."""
        model, xp, W = self.model, self.model.xp, self.block_size
        n = len(seq.ids)
        window_start = max(0, n - W)
        if not self.use_cache:
            idx = xp.asarray(np.asarray(seq.ids[window_start:n], dtype=np.int64)[None])
            return model.forward(idx)[0][:, -1, :]
        rows = self.cache.rows(row, row + 1)
        rows.reset()
        if rows.slides:  # the whole context at its absolute positions, in chunks
            seq.offset = 0
            for c in range(0, n, W):
                idx = np.asarray(seq.ids[c:min(c + W, n)], dtype=np.int64)[None]
                logits, _ = model.forward(xp.asarray(idx), kv_cache=rows, last_only=True)
        else:  # learned positions: the last block_size tokens from position 0
            seq.offset = window_start
            idx = np.asarray(seq.ids[window_start:n], dtype=np.int64)[None]
            logits, _ = model.forward(xp.asarray(idx), kv_cache=rows, last_only=True)
        return logits[:, -1, :]

    def _rerun_windows(self, seqs):
        """Learned positions past the window, as `generate` does it: each sequence's last
        block_size tokens run again from position 0 (its window slid by one, so every key
        changed) in a forward without the cache (the keys would never be read again: the
        next step slides again), as many windows a forward as REBUILD_FLOATS says: per
        row the forward `generate` runs for that request alone."""
        W, xp = self.block_size, self.model.xp
        hidden = self.model.params["transformer.h.0.mlp.c_fc.weight"].shape[0]
        per_forward = max(1, REBUILD_FLOATS // (W * hidden))  # windows in one forward
        for c in range(0, len(seqs), per_forward):
            chunk = seqs[c:c + per_forward]
            idx = np.asarray([seq.ids[-W:] for seq in chunk], dtype=np.int64)  # (n, W)
            logits, _ = self.model.forward(xp.asarray(idx), last_only=True)  # (n, 1, V)
            self._sample(chunk, logits[:, -1, :])

    def _needs_prefill(self, seq):
        """A learned-position sequence whose window slid (or any without a cache)."""
        if not self.use_cache:
            return True
        return not self.cache.slides and max(0, len(seq.ids) - self.block_size) != seq.offset

    def _step(self):
        """One new character for every active sequence."""
        self.steps += 1
        active = list(self._active)
        runs, run = [], []  # maximal runs of consecutive rows that decode one token
        slid = []  # learned positions past the window: a prefill of block_size tokens each
        for row, seq in enumerate(active):
            if self._needs_prefill(seq):
                if run:
                    runs.append(run)
                run = []
                if self.use_cache:
                    slid.append(seq)
                else:  # no cache (OnnxModel): its window alone
                    self._rows(1)
                    self._sample([seq], self._prefill(seq, row))
            else:
                run.append((row, seq))
        if run:
            runs.append(run)
        self._rows(len(slid) * self.block_size + sum(len(run) for run in runs))  # the step's
        if slid:
            self._rerun_windows(slid)
        for run in runs:
            lo, hi = run[0][0], run[-1][0] + 1
            last = np.asarray([[seq.ids[-1]] for _, seq in run], dtype=np.int64)  # (n, 1)
            logits, _ = self.model.forward(self.model.xp.asarray(last),
                                           kv_cache=self.cache.rows(lo, hi))
            self._sample([seq for _, seq in run], logits[:, -1, :])
        self._retire()  # after every forward of the step: rows move only now

    def _retire(self):
        """Finished sequences leave (their rows are freed) and get their last event."""
        for seq in [s for s in self._active if s.reason is not None]:
            self._finish(seq, seq.reason)

    def _sample(self, seqs, logits):
        """Each sequence draws its next id from its row of logits (n, V) with its own
        settings and its own generator: one draw per sequence, as `generate` draws for that
        request alone; the sequences with the same settings are sampled in one call (the
        model's `ops.sample_from_uniforms`, as `generate` samples: each row depends on its
        logits and its draw only)."""
        xp = self.model.xp
        if self.banned is not None:  # never the tokenizer's <unk>
            logits = logits.copy()
            logits[:, self.banned] = -xp.inf
        groups = {}  # (temperature, top_k, top_p) -> indices into seqs
        for i, seq in enumerate(seqs):
            groups.setdefault((seq.req.temperature, seq.req.top_k, seq.req.top_p), []).append(i)
        next_ids = [0] * len(seqs)
        for (temperature, top_k, top_p), rows in groups.items():
            group = logits if len(rows) == len(seqs) else logits[xp.asarray(rows)]  # (g, V)
            if temperature == 0:  # greedy: no draw
                ids = group.argmax(axis=-1)
            else:
                draws = xp.concatenate([seqs[i].rng.random((1, 1)) for i in rows])  # (g, 1)
                ids = self.model.ops.sample_from_uniforms(group, draws, temperature, top_k,
                                                          top_p)
            for i, next_id in zip(rows, ids.tolist()):
                next_ids[i] = next_id
        for seq, next_id in zip(seqs, next_ids):
            seq.ids.append(next_id)
            seq.text += self.char_of_id[next_id]
            self.chars_generated += 1
            self._after_char(seq)

    def _after_char(self, seq):
        req = seq.req
        for stop in req.stop:
            if seq.text.endswith(stop):
                seq.text = seq.text[:-len(stop)]
                seq.reason = "stop"
                return
        if len(seq.ids) - seq.n_prompt >= req.max_new_tokens:
            seq.reason = "length"
            return
        # hold back a tail that may still become a stop string
        hold = max((k for stop in req.stop for k in range(1, len(stop))
                    if seq.text.endswith(stop[:k])), default=0) if req.stop else 0
        self._flush(seq, len(seq.text) - hold)

    def _flush(self, seq, upto):
        if upto > seq.sent:
            now = time.perf_counter()
            if seq.handle.first is None:
                seq.handle.first = now
            if seq.handle.text_events:
                seq.handle.emit({"type": "text", "text": seq.text[seq.sent:upto], "t": now})
            seq.sent = upto

    def _remove(self, seq):
        """Free seq's row: the last active row moves into it (rows stay 0 .. n - 1)."""
        row = self._active.index(seq)
        last = len(self._active) - 1
        if self.cache is not None:
            if row != last:
                self.cache.move(last, row)
            self.cache.lengths[last] = 0
        self._active[row] = self._active[last]
        self._active.pop()

    def _finish(self, seq, reason):
        self._remove(seq)
        seq.handle.freed_at_step = self.steps
        if reason != "cancelled":
            self._flush(seq, len(seq.text))
        self._done(seq.handle, {
            "type": "done", "finish_reason": reason, "text": seq.text,
            "num_chars": len(seq.text), "prompt_chars": seq.n_prompt if seq.req.prompt else 0,
            "seed": seq.handle.seed, "time_s": time.perf_counter() - seq.handle.submitted})

    def _finish_error(self, seq, message):
        self._done(seq.handle, {"type": "error", "error": message})

    def _done(self, handle, event):
        event.setdefault("t", time.perf_counter())
        event["first_t"] = handle.first
        with self._lock:
            self._in_flight -= 1
        handle.emit(event)


def attention_maps(model, tokenizer, text):
    """What each character of `text` (its last block_size ones) attends to, per layer and
    head: the probabilities of the model's own forward (`model.forward` with a one-row
    `KVCache(keep_attention=True)`, which keeps what `cached_attention_forward` computed).
    Call it on the thread that owns the model (`Engine.call`).

    Returns a dict: chars (T,), n_layer, n_head, attention [layer][head][t][s] for s <= t
    (row t sums to 1), rounded to 5 decimals."""
    ids = prompt_ids(tokenizer, text)[-model.config.block_size:]
    cache = KVCache(model, 1, keep_attention=True)
    T = len(ids)
    was_training = model.training
    model.eval()
    try:
        model.forward(model.xp.asarray(np.asarray(ids, dtype=np.int64)[None]), kv_cache=cache)
    finally:
        model.training = was_training
    # positions 0 .. T-1 sit in ring columns 0 .. T-1 (T <= block_size <= capacity)
    maps = []
    for att in cache.attention:
        att = model.backend.to_numpy(att)[0, :, :, :T].astype(np.float64)  # (NH, T, T)
        maps.append([[[round(float(p), 5) for p in row[:t + 1]] for t, row in enumerate(head)]
                     for head in att])
    return {"chars": [tokenizer.decode([i]) for i in ids], "n_layer": len(maps),
            "n_head": model.config.n_head, "attention": maps}
