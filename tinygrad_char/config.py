"""The run's configuration: `TrainConfig` (one flat dataclass holding the model's
hyperparameters and the run's), its checks, and the command line built from it.

`build_parser` turns TrainConfig into command-line flags, and `resolve_config` layers
defaults < preset < --config FILE.json < flags, type-checked (no exec).

Not here: the loop that runs a config (train.py).
"""

import argparse
import json
import os
from dataclasses import dataclass, fields

from .model import ConfigError, GPTConfig
from .precision import PRECISIONS

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
