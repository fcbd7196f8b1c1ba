"""The training loop the examples call, and its configuration.

    get batch -> forward -> backward -> clip -> AdamW step -> (evaluate, checkpoint, log)

`TrainConfig` is one flat dataclass holding the model's hyperparameters and the run's;
`build_parser` turns it into command-line flags, and `resolve_config` layers
defaults < preset < --config FILE.json < flags. `train()` runs the loop with exact resume:
the batch and the dropout masks of step s are drawn from generators seeded with
(seed, s), so a run resumed at step N draws exactly what an uninterrupted run would.

Not here: data loading (data.py), checkpoint format (checkpoint.py), sampling (sampling.py).
"""

import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from .backend import get_backend
from .checkpoint import load_checkpoint, load_training_state, save_checkpoint
from .data import batch_starts, eval_batches, windows
from .model import GPT, ConfigError, GPTConfig
from .kernels import select_ops
from .optim import clip_grad_norm, cosine_lr
from .parallel import DataParallel
from .precision import PRECISIONS, LossScaler, dtypes, set_tf32

LN2 = math.log(2.0)


@dataclass
class TrainConfig:
    # -- model (GPTConfig without vocab_size, which the tokenizer decides) --
    block_size: int = 64  # context length in characters
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = True
    activation: str = "gelu"
    pos_encoding: str = "learned"
    norm: str = "pre"
    tie_weights: bool = True
    # -- optimisation --
    batch_size: int = 12
    learning_rate: float = 1e-3  # peak, reached at the end of warm-up
    min_lr: float = 1e-4  # the cosine decays to this at max_steps
    warmup_steps: int = 100
    max_steps: int = 2000
    weight_decay: float = 0.1  # AdamW, 2-d tensors only
    beta1: float = 0.9
    beta2: float = 0.99  # 0.99 rather than 0.999: small batches, few steps (nanoGPT)
    grad_clip: float = 1.0  # global L2 norm; 0 disables
    # -- evaluation, logging, checkpoints --
    eval_interval: int = 250  # steps between validation passes (and checkpoints)
    eval_batches: int = 0  # batches per periodic validation; 0 = the whole split
    eval_batch_size: int = 64  # windows per evaluation batch
    log_interval: int = 10  # steps between loss read-backs (each one syncs a GPU)
    sample_chars: int = 300  # characters generated at the end
    seed: int = 1337
    dtype: str = "float32"  # float32 | tf32 | float16 (mixed, loss-scaled) | float64
    backend: str = "numpy"
    kernels: str = "xp"  # "xp": the readable NumPy/CuPy ops; "fused": CUDA kernels (GPU)
    workers: int = 1  # CPU processes sharing each batch (parallel.py, NumPy); 1: just this one
    out_dir: str = "out"

    def model_config(self, vocab_size):
        names = {f.name for f in fields(GPTConfig)} - {"vocab_size"}
        return GPTConfig(vocab_size=vocab_size, **{n: getattr(self, n) for n in names})

    def validate(self):
        for name in ("batch_size", "max_steps", "eval_interval", "eval_batch_size",
                     "log_interval", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_batches", "sample_chars"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config: {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.learning_rate or not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError("config: need 0 < learning_rate and 0 <= min_lr <= learning_rate")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"config: {name} must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("config: weight_decay and grad_clip must be >= 0")
        if self.backend not in ("numpy", "cupy", "auto"):
            raise ConfigError("config: backend must be 'numpy', 'cupy' or 'auto'")
        if self.kernels not in ("xp", "fused"):
            raise ConfigError("config: kernels must be 'xp' or 'fused'")
        if self.dtype not in PRECISIONS:
            raise ConfigError(f"config: dtype must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.dtype!r}")
        if self.workers > self.batch_size:
            raise ConfigError(f"config: workers ({self.workers}) must not exceed batch_size "
                              f"({self.batch_size}): each worker takes some of its rows")
        if self.dtype == "float16" and self.kernels == "fused":
            raise ConfigError("config: dtype float16 runs with kernels 'xp' (the fused "
                              "kernels are float32): use --kernels xp, or --dtype tf32")
        self.model_config(vocab_size=1)  # GPTConfig's own checks (n_embd % n_head, ...)
        return self


# -- configuration: defaults < preset < --config FILE < flags ---------------------------------

def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def load_config_file(path):
    """A JSON object of TrainConfig fields; keys starting with "_" are comments."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    known = {f.name: f for f in fields(TrainConfig)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"config file {path}: unknown field {key!r}")
        expected = known[key].type
        ok = (isinstance(value, bool) if expected is bool else
              isinstance(value, int) and not isinstance(value, bool) if expected is int else
              isinstance(value, (int, float)) and not isinstance(value, bool)
              if expected is float else isinstance(value, str))
        if not ok:
            raise ConfigError(f"config file {path}: {key} must be {expected.__name__}, "
                              f"got {value!r}")
    return values


def build_parser(description, presets_dir=None):
    """An argparse parser with one flag per TrainConfig field (default None = not given)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="JSON file of settings (flags override it)")
    if presets_dir:
        names = sorted(f[:-5] for f in os.listdir(presets_dir) if f.endswith(".json"))
        p.add_argument("--preset", choices=names, help="a named config from examples/configs")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint")
    for f in fields(TrainConfig):
        kind = _parse_bool if f.type is bool else f.type
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                       metavar=f.type.__name__.upper(), help=f"(default: {f.default})")
    return p


def resolve_config(args, presets_dir=None):
    """TrainConfig from parsed args: defaults < preset < --config file < explicit flags."""
    values = {}
    if presets_dir and getattr(args, "preset", None):
        values.update(load_config_file(os.path.join(presets_dir, args.preset + ".json")))
    if args.config:
        values.update(load_config_file(args.config))
    for f in fields(TrainConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    extra = {k: values.pop(k) for k in list(values) if k not in
             {f.name for f in fields(TrainConfig)}}
    if extra:
        raise ConfigError(f"unknown settings {sorted(extra)}")
    return TrainConfig(**values).validate()


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
