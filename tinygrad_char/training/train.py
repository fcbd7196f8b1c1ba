"""The training loop the examples call.

One step, top to bottom (the loop in `_train`, with `forward_backward`):

    global batch (B rows, the same on every rank) -> this rank's rows, in K micro-batches
    -> forward / backward per micro-batch (gradients weighted by its share of the targets)
    -> all-reduce (overlapping the last backward) -> clip -> AdamW

`train()` runs a config.TrainConfig around it: `setup` builds or resumes the model and
optimizer, `evaluate` scores a split (split over the ranks), `Checkpointer` saves (rank 0
only), and the loop logs. Exact resume: the batch and the dropout masks of step s are drawn
from generators seeded with (seed, s), so a run resumed at step N draws exactly what an
uninterrupted run would, on any number of ranks (the global batch does not depend on it).

The learning-rate schedule is a function of the step and of this run's --max-steps only
(optim.cosine_lr): resuming with a larger --max-steps continues on the cosine of the new
length, so the learning rate at the resume step jumps up to that curve's value (train()
prints both values at start).

Not here: the configuration and its flags (config.py), data loading (data.py), checkpoint
format (checkpoint.py), the ranks' transport (distributed.py), sampling (sampling.py).
"""

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict

import numpy as np

from tinygrad_char import runtime
from tinygrad_char.backend import get_backend
from tinygrad_char.training.checkpoint import load_checkpoint, load_training_state, save_checkpoint
from tinygrad_char.training.data import batch_starts, eval_batches, windows
from tinygrad_char.training.distributed import (SingleProcess, connect, run_fingerprint,
                                                share_seed, split_rows)
from tinygrad_char.model import GPT, ConfigError
from tinygrad_char.optim import clip_scale, cosine_lr
from tinygrad_char.training.precision import LossScaler, dtypes, set_tf32

LN2 = math.log(2.0)
# what a cold numba cache costs the first step, said before it starts: 12.6 s measured on an
# idle 2-core AMD EPYC (kernels/README.md), 33 s on the same machine under load
COLD_COMPILE_SECONDS = 30


class NonFiniteLoss(RuntimeError):
    pass


class InterruptedAgain(Exception):
    """A second Ctrl-C (or one during the final evaluation): stop at once."""


def step_seed(seed, step):
    """One integer per (run seed, step) for the step's batch and dropout generators."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


# -- evaluation ------------------------------------------------------------------------------

def evaluate(model, ids, block_size, batch_size, max_batches=0, world=None, bar=None):
    """Mean cross-entropy (nats) over every next-character prediction of `ids`, walking
    the split in consecutive non-overlapping windows (exact and repeatable). With
    max_batches > 0 only the first max_batches batches of that walk are used.

    Forward only (the activations are dropped after each batch); the sum stays on the
    device until the end (one host read-back). With a `world` of several ranks, rank r
    scores batches r, r + world_size, ... and the sums are all-reduced. `bar`: a tqdm bar
    advanced once per batch (or None). Returns (loss, number of predictions)."""
    world = world or SingleProcess()
    was_training = model.training
    model.eval()
    xp = model.xp
    batches = eval_batches(ids, block_size, batch_size)
    total, count = 0.0, 0
    for i, (x, y) in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        if i % world.world_size != world.rank:
            continue
        n = int((y != -1).sum())  # on the host: y is a NumPy array here
        _, loss = model.forward(xp.asarray(x), xp.asarray(y))
        total = total + loss.astype("float64") * n  # a device scalar: no sync per batch
        count += n
        model._caches = None  # evaluation needs no backward; free the activations
        if bar is not None:
            bar.update(1)
    total, count = world.allreduce_sum([float(total), count])
    model.training = was_training
    return total / max(count, 1), int(count)


def count_eval_batches(ids, block_size, batch_size, max_batches=0):
    """How many batches evaluate() walks (for a progress bar)."""
    n = -(-(-(-max(len(ids) - 1, 0) // block_size)) // batch_size)
    return min(n, max_batches) if max_batches else n


# -- one step --------------------------------------------------------------------------------

def clip_and_step(grads, optimizer, lr, grad_clip, scaler=None):
    """The update after a backward: clip `grads` to the global L2 norm grad_clip (0: no
    clipping) and step the optimizer with learning rate `lr` (None: its own); the clip's
    factor is applied inside the optimizer's step (grads are not modified). With a
    precision.LossScaler (float16): unscale to float32 first, and skip the step when the
    gradients overflowed (scaler.step decides; on the GPU without reading the norm back).
    Returns the norm before clipping."""
    if scaler is not None:
        grads = scaler.unscale(grads)
    norm = optimizer.grad_norm(grads)
    scale = clip_scale(norm, grad_clip)  # the clip, applied inside the optimizer's step
    if scaler is None:
        optimizer.step(grads, lr, grad_scale=scale)
    else:
        scaler.step(optimizer, grads, lr, norm, grad_scale=scale)
    return norm


def forward_backward(model, world, x, y, rows, seed, loss_scale=1.0):
    """Gradients of the global batch's mean loss, summed over the ranks.

    x, y: (B, T) the global batch; rows[m]: this rank's row indices of micro-batch m. Each
    micro-batch's loss gradient is weighted len(rows[m]) / B (training windows have no
    ignored targets, so that is its share of the batch's targets); the weighted gradients
    are summed over micro-batches, then over ranks (world's reducer, which overlaps the
    last backward with the all-reduce). Dropout masks: the step seed itself in one whole
    batch, else share_seed(seed, rank * K + m), one generator per share.
    Returns (grads, loss of the global batch, stop flag agreed by every rank)."""
    B, K = len(x), len(rows)
    whole = K == 1 and world.world_size == 1
    widen = model.compute_dtype is not None and not whole  # sum float16 grads in float32
    reducer = world.grad_reducer(model.params, model.config.n_layer)
    loss_sum = 0.0
    for m, r in enumerate(rows):
        last = m == K - 1
        model.seed_dropout(seed if whole else share_seed(seed, world.rank * K + m))
        weight = len(r) / B
        rows_m = slice(int(r[0]), int(r[-1]) + 1)  # contiguous: a view, on NumPy and CuPy
        _, loss = model.forward(x, y) if whole else model.forward(x[rows_m], y[rows_m])
        grads = model.backward(loss_scale=loss_scale * weight, layer_done=reducer.hook(last))
        if widen:
            grads = {n: g.astype(model.dtype, copy=False) for n, g in grads.items()}
        loss_sum = loss_sum + loss * weight
        done = reducer.add(grads, last, loss_sum, world.stop_requested)
    return done


# -- set-up, checkpoints, logs ---------------------------------------------------------------

def setup(cfg, data, resume, backend, out):
    """Build (or, with `resume`, load and check) the model, its AdamW and the float16 loss
    scaler. Returns (model, optimizer, scaler, start_step, saved train_state or {})."""
    tokenizer = data.tokenizer
    param_dtype, compute_dtype = dtypes(cfg.dtype)
    # float16: loss scaling, and float32 master weights (the model's params) for AdamW
    scaler = LossScaler() if compute_dtype else None
    def adamw(model):
        return model.ops.AdamW(model.params, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                               weight_decay=cfg.weight_decay)

    if not resume:
        model = GPT(cfg.model_config(tokenizer.vocab_size), backend=backend, dtype=param_dtype,
                    seed=cfg.seed, kernels=cfg.kernels, compute_dtype=compute_dtype)
        return model, adamw(model), scaler, 0, {}
    model, saved_tok, meta = load_checkpoint(resume, backend=backend, dtype=param_dtype)
    model.compute_dtype = compute_dtype
    model.set_kernels(cfg.kernels)  # the op table for this run's kernels and precision
    wanted = cfg.model_config(tokenizer.vocab_size)
    if model.config != wanted:
        diff = {k: (v, getattr(wanted, k)) for k, v in model.config.to_dict().items()
                if getattr(wanted, k) != v}
        raise ConfigError(f"--resume {resume}: the checkpoint's architecture differs from "
                          f"this run's (checkpoint, run): {diff}; resume with the same "
                          "settings or start a new run")
    if saved_tok != tokenizer:
        raise ConfigError(f"--resume {resume}: the checkpoint's vocabulary differs from "
                          "this data's; resume on the same data")
    optimizer = adamw(model)
    saved_state = load_training_state(resume, optimizer)
    if scaler is not None and "loss_scaler" in saved_state:
        scaler.load_state_dict(saved_state["loss_scaler"])
    return model, optimizer, scaler, meta["step"], saved_state


class Checkpointer:
    """Saves the run (rank 0 only) and remembers the last step fully saved."""

    def __init__(self, path, cfg, model, tokenizer, optimizer, scaler, world, resumed=None,
                 resumed_step=None, data_description=""):
        self.path, self.cfg, self.model, self.tokenizer = path, cfg, model, tokenizer
        self.data_description = data_description
        self.optimizer, self.scaler, self.world = optimizer, scaler, world
        self.last_good = resumed  # the checkpoint a divergence leaves behind (None: none)
        self.last_step = resumed_step

    def save(self, step):
        if self.world.is_main:
            state = {"train_config": asdict(self.cfg), "step": step,
                     "world_size": self.world.world_size, "grad_accum": self.cfg.grad_accum}
            if self.scaler is not None:
                state["loss_scaler"] = self.scaler.state_dict()
            save_checkpoint(self.path, self.model, self.tokenizer, step, self.optimizer,
                            train_state=state,
                            run_info={"data": self.data_description,
                                      "world_size": self.world.world_size})
        self.last_good, self.last_step = self.path, step
        self.world.note_saved(self.path)


def _diverged(what, value, step, last_good):
    """The NonFiniteLoss for `what` (a loss) becoming `value` at `step`; `last_good` is the
    checkpoint this run saved or resumed from last, or None."""
    kept = (f"the last good checkpoint ({last_good}) is intact" if last_good
            else "no checkpoint was saved before it")
    return NonFiniteLoss(f"{what} became {value} at step {step}: stopping; {kept}. Try a "
                         "lower --learning-rate or --grad-clip 1.0")


def _truncate_log(path, step):
    if os.path.exists(path):
        with open(path) as f:
            keep = [line for line in f if json.loads(line)["step"] <= step
                    and not json.loads(line).get("final")]
        with open(path, "w") as f:
            f.writelines(keep)


def _log(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _schedule_notes(cfg, start_step, saved_state, out):
    """Say at start what the learning-rate schedule will do (see the module docstring)."""
    if cfg.max_steps <= cfg.warmup_steps:
        peak = cosine_lr(cfg.max_steps - 1, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps,
                         cfg.max_steps)
        out(f"warning: --max-steps {cfg.max_steps} <= --warmup-steps {cfg.warmup_steps}: the "
            f"run never leaves warm-up (the learning rate peaks at {peak:.3g} instead of "
            f"{cfg.learning_rate:g}); use fewer --warmup-steps")
    saved_max = saved_state.get("train_config", {}).get("max_steps")
    if start_step and saved_max is not None and saved_max != cfg.max_steps:
        old = cosine_lr(start_step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, saved_max)
        new = cosine_lr(start_step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps,
                        cfg.max_steps)
        out(f"schedule: the checkpoint's run had --max-steps {saved_max}, this one "
            f"{cfg.max_steps}: the cosine is redrawn over the new length, so at step "
            f"{start_step} the learning rate is {new:.3g} (it was {old:.3g})")


class _CtrlC:
    """SIGINT while training: ask the ranks to stop after the step in flight (they agree
    through the gradient all-reduce) and say so at once (`say`, set by the loop: a line
    above the progress bar); a second one, or one once training is over, raises
    InterruptedAgain at once."""

    def __init__(self, world):
        self.world, self.finishing = world, False
        self.previous = None
        self.say = None

    def __call__(self, signum, frame):
        if self.world.stop_requested or self.finishing:
            raise InterruptedAgain()
        self.world.stop_requested = True
        if self.say is not None:
            try:
                self.say("stopping after this step; Ctrl-C again to stop now")
            except RuntimeError:  # the signal arrived inside a write to the same stream
                pass

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# -- the run ---------------------------------------------------------------------------------

def train(cfg, data, resume=None, progress=True, out=print, world=None):
    """Train a GPT on `data` (a data.CharData) under `cfg` (a TrainConfig).

    world: a distributed transport (default distributed.connect(): MPI ranks when launched
    by mpiexec / srun, else one process). Rank 0 writes under cfg.out_dir: the checkpoint
    (ckpt.safetensors + its optimizer companion), metrics.jsonl, loss.png. Returns a dict
    of final figures. Ctrl-C saves a checkpoint and returns; a second one stops at once.
    """
    world = world or connect()
    if not world.is_main:
        out, progress = (lambda *a, **k: None), False
    try:
        with _CtrlC(world) as ctrl_c:
            return _train(cfg, data, resume, progress, out, world, ctrl_c)
    finally:
        world.stop_requested = False


class Batches:
    """The global batch of each step: x, y (B, T) = windows of the training split at starts
    drawn with np.random.default_rng(step_seed(seed, step)), the same on every backend,
    every number of ranks and after a resume. The split lives on the device; the starts are
    drawn on the host a log interval ahead and copied over in one transfer, so a step
    itself moves nothing between host and device."""

    def __init__(self, cfg, train_ids, xp):
        self.cfg, self.n, self.xp = cfg, len(train_ids), xp
        self.ids = xp.asarray(train_ids)
        self.ahead = {}

    def __call__(self, step):
        cfg = self.cfg
        if step not in self.ahead:
            steps = range(step, min(step + cfg.log_interval, cfg.max_steps))
            host = np.stack([batch_starts(self.n, cfg.batch_size, cfg.block_size,
                                          np.random.default_rng(step_seed(cfg.seed, s)))
                             for s in steps])  # (steps, B)
            device = self.xp.asarray(host)
            self.ahead.update({s: device[i] for i, s in enumerate(steps)})
        return windows(self.ids, self.ahead.pop(step), cfg.block_size)  # (B, T) each


def evaluate_split(model, ids, cfg, world, max_batches, what, progress):
    """evaluate() with a progress bar named `what` (when `progress`); returns (loss,
    predictions, seconds)."""
    bar = None
    if progress:
        from tqdm import tqdm

        n = count_eval_batches(ids, cfg.block_size, cfg.eval_batch_size, max_batches)
        bar = tqdm(total=-(-n // world.world_size), desc=what, unit="batch", leave=False,
                   dynamic_ncols=True, file=sys.stdout)
    t = time.perf_counter()
    try:
        loss, n = evaluate(model, ids, cfg.block_size, cfg.eval_batch_size, max_batches,
                           world, bar)
    finally:
        if bar is not None:
            bar.close()
    return loss, n, time.perf_counter() - t


def _start(cfg, data, resume, backend, world, out):
    """Set-up shared by every rank: refuse mismatched ranks, build or resume the model,
    prepare the log (rank 0) and say what will run. Returns (model, optimizer, scaler,
    start_step, Checkpointer); model None when a resumed run is already finished."""
    world.check_same_run(run_fingerprint(asdict(cfg), data, resume))
    model, optimizer, scaler, start_step, saved_state = setup(cfg, data, resume, backend, out)
    ckpt = Checkpointer(os.path.join(cfg.out_dir, "ckpt.safetensors"), cfg, model,
                        data.tokenizer, optimizer, scaler, world, resume,
                        start_step if resume else None, data.description)
    log_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if resume:
        saved_world = saved_state.get("world_size", 1)
        out(f"resumed from {resume} at step {start_step}" + (
            f" (saved on {saved_world} rank(s), now {world.world_size}: the same global "
            "batches)" if saved_world != world.world_size else ""))
        if start_step >= cfg.max_steps:
            out(f"{resume} is already at step {start_step}, --max-steps is {cfg.max_steps}: "
                "nothing to train; pass a larger --max-steps to train on")
            return None, None, None, start_step, None
    if world.is_main:
        if resume:
            _truncate_log(log_path, start_step)  # drop records the resumed run will redo
        elif os.path.exists(log_path):
            os.remove(log_path)  # a fresh run starts a fresh log
    _schedule_notes(cfg, start_step, saved_state, out)
    out(f"model: {model.num_params():,} parameters, {model.config}")
    out(f"backend: {backend.device}; data: {data.description}; "
        f"{len(data.train_ids):,} training characters; {world.describe()}"
        + (f"; {cfg.grad_accum} micro-batches per step" if cfg.grad_accum > 1 else ""))
    out(model.ops_summary())
    if cfg.dtype != "float32":
        out(f"precision: {cfg.dtype}" + (" (NumPy emulates float16 on the CPU: slower than "
                                         "float32; mixed precision is meant for GPUs)"
                                         if scaler and backend.name == "numpy" else ""))
    if _cold_cpu_kernels(cfg, backend):
        out(f"compiling the CPU kernels once (about {COLD_COMPILE_SECONDS} s; cached for later "
            f"runs)")
    return model, optimizer, scaler, start_step, ckpt


def _cold_cpu_kernels(cfg, backend):
    """True when this run will use the numba CPU kernels (NumPy, float32, kernels auto or
    cpu) and their on-disk cache is cold, so the first step compiles them."""
    if backend.name != "numpy" or cfg.dtype != "float32" or cfg.kernels not in ("auto", "cpu"):
        return False
    from tinygrad_char.fused.cpu import numba_available

    if not numba_available():
        return False
    from tinygrad_char.fused.cpu.warm import cache_is_warm

    return not cache_is_warm()


def _train(cfg, data, resume, progress, out, world, ctrl_c):
    ctrl_c.say = out
    os.makedirs(cfg.out_dir, exist_ok=True)
    log_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if world.world_size > 1 and cfg.backend != "numpy":
        world.use_local_gpu()  # one GPU per rank on each node, before the backend starts
    backend = get_backend(cfg.backend, cfg.seed)
    set_tf32(backend.xp, cfg.dtype == "tf32")  # enabling raises BackendError on the CPU
    if backend.name == "numpy":  # threads (else each MPI rank keeps its share of the
        # node's cores), allocator, and the CPU kernels compiled ahead on a cold cache
        runtime.setup(cfg.threads if cfg.threads or world.world_size == 1 else None,
                      cpu_kernels=cfg.kernels != "xp")
    model, optimizer, scaler, start_step, ckpt = _start(cfg, data, resume, backend, world,
                                                        out)
    if model is None:
        return {"step": start_step, "checkpoint": resume, "already_done": True}
    rows = split_rows(cfg.batch_size, world.world_size, cfg.grad_accum)[world.rank]
    batches = Batches(cfg, data.train_ids, backend.xp)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start_step, unit="step", dynamic_ncols=True,
                   file=sys.stdout)
    ctrl_c.say = bar.write if bar is not None else out

    def close_bar():  # the lines said after the loop go below the bar, on their own lines
        nonlocal bar
        if bar is not None:
            bar.close()
        bar = None
        ctrl_c.say = out

    step, stop = start_step, False
    t_window, steps_window = time.perf_counter(), 0
    try:
        while step < cfg.max_steps and not stop:
            # -- one step: batch -> forward/backward per micro-batch -> all-reduce -> clip
            # -> AdamW
            lr = cosine_lr(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps,
                           cfg.max_steps)
            x, y = batches(step)  # (B, T): the global batch
            model.train()
            loss_scale = scaler.scale if scaler else 1.0  # float16: the loss gradient's
            grads, loss_dev, stop = forward_backward(model, world, x, y, rows,
                                                     step_seed(cfg.seed, step), loss_scale)
            clip_and_step(grads, optimizer, lr, cfg.grad_clip, scaler)
            step += 1
            steps_window += 1

            # -- logging, evaluation, checkpoint. An evaluation step is always a log step,
            # so eval_interval need not be a multiple of log_interval
            evaluating = step % cfg.eval_interval == 0 or step == cfg.max_steps
            if step % cfg.log_interval == 0 or evaluating:
                loss = float(loss_dev)  # the one host read-back per log interval
                if not math.isfinite(loss):
                    raise _diverged("loss", loss, step, ckpt.last_good)
                backend.synchronize()
                now = time.perf_counter()
                tok_s = steps_window * cfg.batch_size * cfg.block_size / (now - t_window)
                t_window, steps_window = now, 0
                record = {"step": step, "train_loss": loss, "lr": lr, "tokens_per_sec": tok_s,
                          "time": time.time(), "world_size": world.world_size}
                if scaler is not None:
                    record.update(loss_scale=float(scaler.scale),
                                  skipped_steps=int(scaler.skipped_steps))
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                if evaluating:
                    val, _, secs = evaluate_split(model, data.val_ids, cfg, world,
                                                  cfg.eval_batches, "validation", progress)
                    if not math.isfinite(val):  # this step's update diverged: do not save it
                        raise _diverged("validation loss", val, step, ckpt.last_good)
                    world.check_in_sync(model.params)
                    record.update(val_loss=val, val_bpc=val / LN2, eval_seconds=secs)
                    msg = (f"step {step}: train loss {loss:.4f}, val loss {val:.4f} "
                           f"({val / LN2:.3f} bpc, {secs:.1f} s)")
                    (bar.write if bar is not None else out)(msg)
                    ckpt.save(step)
                    t_window = time.perf_counter()  # evaluation time is not training speed
                if world.is_main:
                    _log(log_path, record)
            if bar is not None:
                bar.update(1)
        if stop:
            ckpt.save(step)
            close_bar()
            out(f"interrupted: saved step {step} to {ckpt.path}; continue with --resume "
                f"{ckpt.path}")
            return {"interrupted": True, "step": step, "checkpoint": ckpt.path}
        if step == start_step:
            ckpt.save(step)
        ctrl_c.finishing = True  # from here on, Ctrl-C stops at once (the run is saved)
    except InterruptedAgain:
        close_bar()
        out("interrupted again: stopping now, " + (f"last saved step {ckpt.last_step}"
                                                    if ckpt.last_step is not None
                                                    else "nothing saved yet"))
        world.abort(130)  # several ranks: the others may be inside a collective; end them
        return {"interrupted": True, "step": ckpt.last_step, "checkpoint": ckpt.last_good}
    finally:
        close_bar()
    try:
        return _final_report(cfg, data, model, backend, world, scaler, step, start_step,
                             ckpt.path, log_path, progress, out)
    except InterruptedAgain:
        out(f"interrupted: final evaluation skipped; last saved step {ckpt.last_step}")
        return {"interrupted": True, "step": ckpt.last_step, "checkpoint": ckpt.last_good}


def _final_report(cfg, data, model, backend, world, scaler, step, start_step, ckpt_path,
                  log_path, progress, out):
    """The whole-split evaluations, the final log record, a sample and the loss curve."""
    results = {"step": step, "checkpoint": ckpt_path, "num_params": model.num_params(),
               "description": data.description, "device": backend.device,
               "world_size": world.world_size}
    if scaler is not None:
        skipped, scale = int(scaler.skipped_steps), float(scaler.scale)  # (on the GPU: read)
        results.update(skipped_steps=skipped, loss_scale=scale)
        out(f"float16: {skipped} of {step - start_step} steps skipped for "
            f"gradient overflow; final loss scale {scale:g}")
    val, n_val, secs = evaluate_split(model, data.val_ids, cfg, world, 0,
                                      "validation (whole split)", progress)
    results.update(val_loss=val, val_bpc=val / LN2, val_chars=n_val, val_seconds=secs)
    out(f"validation (whole split, {n_val:,} predictions, {secs:.1f} s): loss {val:.4f}, "
        f"{val / LN2:.4f} bpc")
    if data.test_ids is not None:
        test, n_test, secs = evaluate_split(model, data.test_ids, cfg, world, 0,
                                            "test (whole split)", progress)
        results.update(test_loss=test, test_bpc=test / LN2, test_chars=n_test,
                       test_seconds=secs)
        out(f"test (whole split, {n_test:,} predictions, {secs:.1f} s): loss {test:.4f}, "
            f"{test / LN2:.4f} bpc ({data.description})")
    if world.is_main:
        _log(log_path, {"step": step, "final": True, "data": data.description,
                        **{k: v for k, v in results.items() if isinstance(v, (int, float))}})
    if cfg.sample_chars and world.is_main:
        from tinygrad_char.inference.sampling import generate_text

        sample = generate_text(model, data.tokenizer, "\n", cfg.sample_chars, temperature=0.8,
                               top_k=None, top_p=None, seed=cfg.seed)[0]
        results["sample"] = sample
        out("sample:\n" + sample)
    results["plot"] = (plot_losses(log_path, os.path.join(cfg.out_dir, "loss.png"), out)
                       if world.is_main else None)
    return results
def plot_losses(log_path, png_path, out=print):
    """Train and validation loss against step, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out("loss curve not drawn: matplotlib is not installed (pip install "
            "'tinygrad-char[plot]')")
        return None
    records = [json.loads(line) for line in open(log_path)]
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r and not r.get("final")]
    if not train and not val:
        out(f"loss curve not drawn: {log_path} holds no training steps")
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


if __name__ == "__main__":
    # this module is the library's loop; its command line is `tinygrad-char train`
    from tinygrad_char.commands import main

    sys.exit(main(["train", *sys.argv[1:]]))
