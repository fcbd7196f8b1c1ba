"""The training loop the examples call.

    get batch -> forward -> backward -> clip -> AdamW step -> (evaluate, checkpoint, log)

`train()` runs a config.TrainConfig with exact resume:
the batch and the dropout masks of step s are drawn from generators seeded with
(seed, s), so a run resumed at step N draws exactly what an uninterrupted run would.

Not here: the configuration and its flags (config.py), data loading (data.py), checkpoint format (checkpoint.py), sampling (sampling.py).
"""

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict

import numpy as np

from .backend import get_backend
from .checkpoint import load_checkpoint, load_training_state, save_checkpoint
from .data import batch_starts, eval_batches, windows
from .model import GPT, ConfigError
from .kernels import select_ops
from .optim import clip_grad_norm, cosine_lr
from .parallel import DataParallel
from .precision import LossScaler, dtypes, set_tf32

LN2 = math.log(2.0)


# -- evaluation ------------------------------------------------------------------------------

def evaluate(model, ids, block_size, batch_size, max_batches=0):
    """Mean cross-entropy (nats) over every next-character prediction of `ids`, walking
    the split in consecutive non-overlapping windows (exact and repeatable). With
    max_batches > 0 only the first max_batches batches of that walk are used.
    Returns (loss, number of predictions)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    xp = model.xp
    for i, (x, y) in enumerate(eval_batches(ids, block_size, batch_size)):
        if max_batches and i >= max_batches:
            break
        n = int((y != -1).sum())
        _, loss = model.forward(xp.asarray(x), xp.asarray(y))
        total += float(loss) * n
        count += n
    model._caches = None  # evaluation needs no backward; free the activations
    model.training = was_training
    return total / max(count, 1), count


# -- the loop --------------------------------------------------------------------------------

def clip_and_step(grads, optimizer, lr, grad_clip, scaler=None):
    """The update after a backward: clip `grads` to the global L2 norm grad_clip (0: no
    clipping) and step the optimizer with learning rate `lr` (None: its own). With a
    precision.LossScaler (float16): unscale to float32 first, and skip the step when the
    gradients overflowed (scaler.update decides). Returns the norm before clipping."""
    if scaler is not None:
        grads = scaler.unscale(grads)
    norm = clip_grad_norm(grads, grad_clip)
    if scaler is None or scaler.update(norm):
        optimizer.step(grads, lr)
    return norm


def step_seed(seed, step):
    """One integer per (run seed, step) for the step's batch and dropout generators."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class NonFiniteLoss(RuntimeError):
    pass


def _diverged(what, value, step, last_good):
    """The NonFiniteLoss for `what` (a loss) becoming `value` at `step`; `last_good` is the
    checkpoint this run saved or resumed from last, or None."""
    kept = (f"the last good checkpoint ({last_good}) is intact" if last_good
            else "no checkpoint was saved before it")
    return NonFiniteLoss(f"{what} became {value} at step {step}: stopping; {kept}. Try a "
                         "lower --learning-rate or --grad-clip 1.0")


def _is_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


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


def train(cfg, data, resume=None, progress=True, out=print):
    """Train a GPT on `data` (a data.CharData) under `cfg` (a TrainConfig).

    Writes under cfg.out_dir: ckpt.safetensors (+ ckpt.train.safetensors), metrics.jsonl,
    loss.png. Returns a dict of final figures. Ctrl-C saves a checkpoint and returns.
    """
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.safetensors")
    log_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    backend = get_backend(cfg.backend, cfg.seed)
    xp = backend.xp
    tokenizer = data.tokenizer
    param_dtype, compute_dtype = dtypes(cfg.dtype)
    set_tf32(xp, cfg.dtype == "tf32")  # enabling raises BackendError on the CPU
    # float16: loss scaling, and float32 master weights (the model's params) for AdamW
    scaler = LossScaler() if compute_dtype else None

    start_step = 0
    if resume:
        model, saved_tok, meta = load_checkpoint(resume, backend=backend, dtype=param_dtype)
        model.ops = select_ops(cfg.kernels)
        model.compute_dtype = compute_dtype
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
        optimizer = model.ops.AdamW(model.params, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                    weight_decay=cfg.weight_decay)
        saved_state = load_training_state(resume, optimizer)
        if scaler is not None and "loss_scaler" in saved_state:
            scaler.load_state_dict(saved_state["loss_scaler"])
        start_step = meta["step"]
        _truncate_log(log_path, start_step)  # drop records the resumed run will redo
        out(f"resumed from {resume} at step {start_step}")
    else:
        model = GPT(cfg.model_config(tokenizer.vocab_size), backend=backend, dtype=param_dtype,
                    seed=cfg.seed, kernels=cfg.kernels, compute_dtype=compute_dtype)
        optimizer = model.ops.AdamW(model.params, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                    weight_decay=cfg.weight_decay)
        if os.path.exists(log_path):
            os.remove(log_path)  # a fresh run starts a fresh log
    # workers > 1: the parameters move to shared memory, and each batch is split over
    # processes; the optimizer holds model.params (the same dict), so it follows them
    parallel = None
    if cfg.workers > 1 and backend.name == "numpy":
        parallel = DataParallel(model, cfg.workers)
    elif cfg.workers > 1:
        out(f"note: --workers {cfg.workers} splits batches over CPU processes (NumPy); on "
            f"{backend.device} one process runs each step")
    out(f"model: {model.num_params():,} parameters, {model.config}")
    out(f"backend: {backend.device}; data: {data.description}; "
        f"{len(data.train_ids):,} training characters")
    if cfg.dtype != "float32":
        out(f"precision: {cfg.dtype}" + (" (NumPy emulates float16 on the CPU: slower than "
                                         "float32; mixed precision is meant for GPUs)"
                                         if compute_dtype and backend.name == "numpy" else ""))

    last_good = [resume]  # the checkpoint a divergence leaves behind (None: none yet)

    def save(step):
        last_good[0] = ckpt_path
        state = {"train_config": asdict(cfg), "step": step}
        if scaler is not None:
            state["loss_scaler"] = scaler.state_dict()
        save_checkpoint(ckpt_path, model, tokenizer, step, optimizer, train_state=state)

    tokens_per_step = cfg.batch_size * cfg.block_size
    # the training split lives on the device; each step's window starts are drawn on the
    # host (np.random, one seed per step: the same batches on every backend and after a
    # resume) a log interval ahead and copied over in one transfer, so a step itself moves
    # nothing between host and device
    train_ids = xp.asarray(data.train_ids)
    starts_ahead = {}

    def starts_for(step):
        if step not in starts_ahead:
            steps = range(step, min(step + cfg.log_interval, cfg.max_steps))
            host = np.stack([batch_starts(len(data.train_ids), cfg.batch_size, cfg.block_size,
                                          np.random.default_rng(step_seed(cfg.seed, s)))
                             for s in steps])  # (steps, B)
            device = xp.asarray(host)
            starts_ahead.update({s: device[i] for i, s in enumerate(steps)})
        return starts_ahead.pop(step)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start_step, unit="step", dynamic_ncols=True,
                   file=sys.stdout)
    step = start_step
    history = []
    t_window, steps_window = time.perf_counter(), 0
    loss_dev = None
    # Ctrl-C sets a flag that the loop reads between steps, so a checkpoint never holds
    # a half-applied update; a second Ctrl-C interrupts at once.
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(step)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handler = signal.getsignal(signal.SIGINT)
    in_main_thread = _is_main_thread()
    if in_main_thread:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        while step < cfg.max_steps and not interrupted:
            lr = cosine_lr(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps,
                           cfg.max_steps)
            x, y = windows(train_ids, starts_for(step), cfg.block_size)  # (B, T) each
            model.train()
            loss_scale = scaler.scale if scaler else 1.0  # float16: the loss gradient's
            if parallel is None:
                model.seed_dropout(step_seed(cfg.seed, step))
                _, loss_dev = model.forward(x, y)
                grads = model.backward(loss_scale=loss_scale)
            else:  # the same, with the batch's rows split over the worker processes
                loss_dev, grads = parallel.forward_backward(x, y, step_seed(cfg.seed, step),
                                                            loss_scale)
            clip_and_step(grads, optimizer, lr, cfg.grad_clip, scaler)
            step += 1
            steps_window += 1

            # an evaluation step is always a log step, so eval_interval need not be a
            # multiple of log_interval
            if (step % cfg.log_interval == 0 or step % cfg.eval_interval == 0
                    or step == cfg.max_steps):
                loss = float(loss_dev)  # the one host read-back per log interval
                if not math.isfinite(loss):
                    raise _diverged("loss", loss, step, last_good[0])
                backend.synchronize()
                now = time.perf_counter()
                tok_s = steps_window * tokens_per_step / (now - t_window)
                t_window, steps_window = now, 0
                record = {"step": step, "train_loss": loss, "lr": lr, "tokens_per_sec": tok_s,
                          "time": time.time()}
                if scaler is not None:
                    record.update(loss_scale=scaler.scale, skipped_steps=scaler.skipped_steps)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                    val, _ = evaluate(model, data.val_ids, cfg.block_size, cfg.eval_batch_size,
                                      cfg.eval_batches)
                    if not math.isfinite(val):  # this step's update diverged: do not save it
                        raise _diverged("validation loss", val, step, last_good[0])
                    record.update(val_loss=val, val_bpc=val / LN2)
                    msg = (f"step {step}: train loss {loss:.4f}, val loss {val:.4f} "
                           f"({val / LN2:.3f} bpc)")
                    (bar.write if bar is not None else out)(msg)
                    save(step)
                    t_window = time.perf_counter()  # evaluation time is not training speed
                _log(log_path, record)
                history.append(record)
            if bar is not None:
                bar.update(1)
    finally:
        if parallel is not None:
            parallel.close()  # the workers stop; the parameters become ordinary arrays
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        if bar is not None:
            bar.close()
    if interrupted:
        save(step)
        out(f"interrupted: saved step {step} to {ckpt_path}; continue with --resume {ckpt_path}")
        return {"interrupted": True, "step": step, "checkpoint": ckpt_path}
    if step == start_step:
        save(step)

    results = {"step": step, "checkpoint": ckpt_path, "num_params": model.num_params(),
               "description": data.description, "device": backend.device}
    if scaler is not None:
        results.update(skipped_steps=scaler.skipped_steps, loss_scale=scaler.scale)
        out(f"float16: {scaler.skipped_steps} of {step - start_step} steps skipped for "
            f"gradient overflow; final loss scale {scaler.scale:g}")
    val, n_val = evaluate(model, data.val_ids, cfg.block_size, cfg.eval_batch_size)
    results.update(val_loss=val, val_bpc=val / LN2, val_chars=n_val)
    out(f"validation (whole split, {n_val:,} predictions): loss {val:.4f}, {val / LN2:.4f} bpc")
    if data.test_ids is not None:
        test, n_test = evaluate(model, data.test_ids, cfg.block_size, cfg.eval_batch_size)
        results.update(test_loss=test, test_bpc=test / LN2, test_chars=n_test)
        out(f"test (whole split, {n_test:,} predictions): loss {test:.4f}, "
            f"{test / LN2:.4f} bpc ({data.description})")
    _log(log_path, {"step": step, "final": True, **{k: v for k, v in results.items()
                                                     if isinstance(v, (int, float))}})
    if cfg.sample_chars:
        from .sampling import generate_text

        sample = generate_text(model, tokenizer, "\n", cfg.sample_chars, temperature=0.8,
                               top_k=None, top_p=None, seed=cfg.seed)[0]
        results["sample"] = sample
        out("sample:\n" + sample)
    results["plot"] = plot_losses(log_path, os.path.join(cfg.out_dir, "loss.png"), out)
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
