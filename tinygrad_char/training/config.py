"""The run's configuration: `TrainConfig` (the model's Architecture, inherited from
model.py with its fields, rules and checks, plus the run's settings), the command line
built from it, and an estimate of the memory a run needs.

Each field says what it may hold once: in its class's `RULES` table (schema.Rule), from
which both the checks (schema.check_fields, run when a config is made) and the --help text
are read. `build_parser` turns TrainConfig into command-line flags, and `resolve_config`
layers defaults < preset < --config FILE.json < flags, type-checked (no exec).
`train_memory_bytes` / `generation_memory_bytes` estimate (a lower bound) what a run
holds, so a size that cannot fit is refused with the figure before anything is allocated.

Not here: the loop that runs a config (train.py).
"""

import argparse
import json
import math
import os
from dataclasses import dataclass, fields, replace
from typing import ClassVar

from tinygrad_char.model import Architecture, ConfigError, GPTConfig, param_shapes
from tinygrad_char.schema import MAX_SEED, Rule, field_problem, flag
from tinygrad_char.training.cli import Parser, check_output_path
from tinygrad_char.training.precision import PRECISIONS


@dataclass(kw_only=True)
class TrainConfig(Architecture):
    # -- the model: Architecture's fields (model.py), without vocab_size (the tokenizer's) --
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
    # "auto": the fused kernels for the arrays at hand (numba CPU kernels on NumPy when
    # numba imports, the CUDA ones on CuPy), else the xp ops; "xp": the readable NumPy/CuPy
    # ops; "fused": the CUDA kernels (GPU); "cpu": the numba kernels (needs numba)
    kernels: str = "auto"
    # threads of this process: the numba kernels' one pool, which runs the matmuls too
    # (BLAS on one thread, so the two never compete; without numba, BLAS's threads); 0:
    # every core it may run on. Under mpiexec each rank takes its share of its node's
    # cores unless this is set
    threads: int = 0
    # micro-batches per step and rank: the batch is cut into this many pieces whose
    # gradients are summed before the step (a batch too big for memory still trains)
    grad_accum: int = 1
    out_dir: str = "out"  # a path: check_out_dir checks it before the run
    # WikiText-2 unavailable (offline) and no --data-dir: train on the packaged sample text
    # and say so (true), or stop with the error (false)
    data_fallback: bool = True

    # what each field may hold: Architecture's rules and the run's (a test checks that
    # every number and string but out_dir has one)
    RULES: ClassVar[dict] = {
        **Architecture.RULES,
        "batch_size": Rule(1),
        "learning_rate": Rule(0.0, low_open=True),
        "min_lr": Rule(0.0, hint="at most learning_rate"),
        "warmup_steps": Rule(0), "max_steps": Rule(1),
        "weight_decay": Rule(0.0),
        "beta1": Rule(0.0, 1.0, high_open=True), "beta2": Rule(0.0, 1.0, high_open=True),
        "grad_clip": Rule(0.0, hint="0 disables clipping"),
        "eval_interval": Rule(1),
        "eval_batches": Rule(0, hint="0 evaluates the whole split"),
        "eval_batch_size": Rule(1), "log_interval": Rule(1),
        "sample_chars": Rule(0),
        "seed": Rule(0, MAX_SEED),
        "dtype": Rule(choices=PRECISIONS),
        "backend": Rule(choices=("numpy", "cupy", "auto")),
        "kernels": Rule(choices=("auto", "xp", "fused", "cpu")),
        "threads": Rule(0, hint="0 uses every core this process may run on"),
        "grad_accum": Rule(1),
    }
    FLAGS: ClassVar[bool] = True

    def model_config(self, vocab_size):
        """The GPTConfig of this run's model for a vocabulary of `vocab_size` ids."""
        return GPTConfig(vocab_size=vocab_size,
                         **{f.name: getattr(self, f.name) for f in fields(Architecture)})

    def validate(self):
        """Architecture's checks (every field against RULES, n_embd % n_head, ...), then
        the rules between the run's fields; a one-line ConfigError names the field, its
        flag, the value and the fix. Returns self."""
        super().validate()
        if self.min_lr > self.learning_rate:
            raise ConfigError(f"config: min_lr ({self.min_lr:g}) must not exceed learning_rate"
                              f" ({self.learning_rate:g}): lower --min-lr or raise "
                              f"--learning-rate")
        if not self.out_dir:
            raise ConfigError("config: out_dir is empty (--out-dir): give a folder, e.g. out")
        if self.grad_accum > self.batch_size:
            raise ConfigError(f"config: grad_accum ({self.grad_accum}) must not exceed "
                              f"batch_size ({self.batch_size}): each micro-batch needs a row")
        if self.dtype == "float16" and self.kernels == "fused":
            raise ConfigError("config: dtype float16 runs with kernels 'xp' (the fused "
                              "kernels are float32): use --kernels xp, or --dtype tf32")
        return self


def retired_workers(workers, where="config"):
    """The refusal of `workers`, the retired field (and flag) of shared-memory processes."""
    return ConfigError(f"{where}: workers {workers}: --workers was replaced by MPI ranks, "
                       f"which split each batch the same way: remove it, and for {workers} "
                       f"ranks run mpiexec -n {workers} python examples/train_wikitext.py "
                       f"... (pip install 'tinygrad-char[mpi]')")


# -- configuration: defaults < preset < --config FILE < flags ---------------------------------

def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


MAX_CONFIG_BYTES = 1 << 20  # a config is a small JSON object; this stops /dev/zero early


def load_config_file(path, what="--config"):
    """A JSON object of TrainConfig fields; keys starting with "_" are comments. Every
    problem is a one-line ConfigError starting with `what` and the path (a value of the
    wrong type here; one out of range when the config is made, naming its flag)."""
    where = f"{what} {path}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES >> 20} MB; a config "
                              f"is a small JSON object of settings")
        values = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{where} not found: check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a folder: give a JSON file") from None
    except OSError as e:
        raise ConfigError(f"{where} cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start}): give "
                          f"a JSON file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config: give a flat JSON "
                          f"object of settings") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must hold a JSON object of settings, e.g. "
                          f'{{"n_layer": 2}}')
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    known = {f.name: f for f in fields(TrainConfig)}
    for key, value in values.items():
        if key == "workers":
            raise retired_workers(json.dumps(value)[:20], where)
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r}; known fields: "
                              f"{', '.join(known)}")
        problem = field_problem(known[key], None, value)  # the type; the rule comes later
        if problem:
            raise ConfigError(f"{where}: {key} {problem}, got {json.dumps(value)[:80]}")
    return values


def _field_help(f, value, source=None):
    """A field's --help line: what it may hold and its default (and where that is from)."""
    rule = TrainConfig.RULES.get(f.name)
    allowed = "true or false" if f.type is bool else \
        rule.describe() if rule is not None and not rule.choices else ""  # choices: metavar
    hint = rule.hint if rule is not None else ""
    shown = json.dumps(value) if isinstance(value, (bool, str)) or value is None else value
    text = "; ".join(x for x in (allowed, hint) if x)
    text += f" (default: {shown}{', from ' + source if source else ''})"
    return text.strip().replace("%", "%%")


class _HelpAction(argparse.Action):
    """--help that shows the defaults a --preset or --config given before it sets."""

    def __init__(self, option_strings, dest, field_actions, presets_dir, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                         nargs=0, help="show this help (after --preset NAME / --config "
                                       "FILE: with the defaults they set) and exit")
        self.field_actions, self.presets_dir = field_actions, presets_dir

    def __call__(self, parser, namespace, values, option_string=None):
        sources = []  # a bad file raises its ConfigError: one line under run_cli
        if self.presets_dir and getattr(namespace, "preset", None):
            name = namespace.preset
            sources.append((f"--preset {name}", load_config_file(
                os.path.join(self.presets_dir, name + ".json"), f"--preset {name}")))
        if getattr(namespace, "config", None):
            sources.append((f"--config {namespace.config}", load_config_file(namespace.config)))
        known = {f.name: f for f in fields(TrainConfig)}
        for source, values in sources:
            for name, value in values.items():
                self.field_actions[name].help = _field_help(known[name], value, source)
        parser.print_help()
        parser.exit()


def build_parser(description, presets_dir=None):
    """A parser with one flag per TrainConfig field (default None = not given); errors
    are one line. Each flag's help lists its allowed values (from TrainConfig.RULES) and
    its built-in default, or the preset's when --preset comes before --help."""
    p = Parser(description=description, add_help=False, epilog=(
        "Defaults shown are the built-in ones: --preset NAME, then --config FILE replace "
        "them, and flags override both. Give --preset or --config before --help to see "
        "the defaults they set."))
    field_actions = {}
    p.add_argument("-h", "--help", action=_HelpAction, field_actions=field_actions,
                   presets_dir=presets_dir)
    p.add_argument("--config", metavar="FILE",
                   help="JSON file of settings: replaces the preset's (flags override it)")
    if presets_dir:
        names = sorted(f[:-5] for f in os.listdir(presets_dir) if f.endswith(".json"))
        p.add_argument("--preset", choices=names,
                       help="a named config from examples/configs; it changes the defaults "
                            "below (flags override it)")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint")
    for f in fields(TrainConfig):
        rule = TrainConfig.RULES.get(f.name)
        choices = rule.choices if rule is not None else None
        field_actions[f.name] = p.add_argument(
            flag(f.name), dest=f.name, type=_parse_bool if f.type is bool else f.type,
            default=None, choices=choices,
            metavar=None if choices else f.type.__name__.upper(),
            help=_field_help(f, f.default))
    # retired: not in --help; given, it is refused with the way to get the same (mpiexec)
    p.add_argument("--workers", default=None, help=argparse.SUPPRESS)
    return p


def resolve_config(args, presets_dir=None):
    """TrainConfig from parsed args: defaults < preset < --config file < explicit flags."""
    if getattr(args, "workers", None) is not None:
        raise retired_workers(args.workers)
    values = {}
    if presets_dir and getattr(args, "preset", None):
        values.update(load_config_file(os.path.join(presets_dir, args.preset + ".json"),
                                       f"--preset {args.preset}"))
    if args.config:
        values.update(load_config_file(args.config))
    for f in fields(TrainConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    return TrainConfig(**values)  # checked as it is made


def check_out_dir(path):
    """Make sure `path` is a folder this process can write (created, with its parents, when
    missing); raise a one-line ConfigError naming --out-dir otherwise (empty, a file, not
    writable)."""
    check_output_path("--out-dir", path, ConfigError, folder=True, create=True)


# -- memory: what a run holds, checked before anything is allocated ---------------------------
# Lower bounds: only the arrays a run cannot do without are counted, so a refusal is
# certain, while a run that passes may still need more (temporaries, the allocator).

def available_memory_bytes(backend="numpy"):
    """Memory a run can still take, in bytes, or None when unknown (nothing is refused).
    The host: MemAvailable (/proc/meminfo), else the free physical pages (os.sysconf).
    backend "cupy" / "auto": the larger of that and the GPU's free memory, when CuPy runs."""
    host = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    if backend != "numpy":
        try:
            import cupy

            device_free = cupy.cuda.runtime.memGetInfo()[0]
            host = device_free if host is None else max(host, device_free)
        except Exception:  # no CuPy, no GPU: the host's figure
            pass
    return host


def format_bytes(n):
    """'512 B', '3.1 GiB', '8.6e+06 EiB'."""
    for unit, size in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30),
                       ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def count_params(config):
    """Parameters of a GPTConfig, without a table of n_layer entries: param_shapes of a 1-
    and a 2-layer copy, extrapolated (every layer has the same shapes)."""
    def total(n_layer):
        return sum(math.prod(s) for s in param_shapes(replace(config, n_layer=n_layer)).values())

    one = total(1)
    return one + (config.n_layer - 1) * (total(2) - one)


def _layer_elements(config, B, T, saved):
    """Activation elements of one block for a (B, T) batch: every layer's saved caches
    when `saved` (training: the input and output of each LayerNorm and linear, q, k, v,
    and the attention probabilities (B, NH, T, T)), else one block's working set."""
    C, F, NH = config.n_embd, config.mlp_ratio * config.n_embd, config.n_head
    per_position = 8 * C + 2 * F if saved else 4 * C + F
    return B * T * per_position + B * NH * T * T


def _itemsizes(dtype):
    """(bytes per parameter, bytes per activation) of a precision name."""
    from tinygrad_char.training.precision import dtypes

    param_dtype, compute_dtype = dtypes(dtype)
    size = {"float16": 2, "float32": 4, "float64": 8}
    return size[param_dtype], size[compute_dtype or param_dtype]


def generation_memory_bytes(config, num_samples, length, dtype="float32"):
    """At least the bytes `sampling.generate` holds for num_samples rows of `length` ids
    (prompt + new): the key/value cache (2 L B block_size NKV hs), one block's working set
    and the logits for the prefill, and per id its int64, its host copy as a list entry
    and at least one byte of text (8 + 8 + 1)."""
    _, item = _itemsizes(dtype)
    B, T = num_samples, min(length, config.block_size)
    kv_width = getattr(config, "kv_heads", config.n_head) * (config.n_embd // config.n_head)
    cache = 2 * config.n_layer * B * config.block_size * kv_width * item
    prefill = (_layer_elements(config, B, T, saved=False) + B * T * config.vocab_size) * item
    return cache + prefill + B * length * (8 + 8 + 1)


def train_memory_bytes(cfg, vocab_size):
    """At least the bytes a training run of `cfg` holds, as (total, parts): the
    parameters with their gradients and AdamW's two moments (4 copies), plus the largest
    of the training step's activations (every layer's caches for batch x block, the
    logits and probabilities; one micro-batch when grad_accum > 1), an evaluation
    batch's, and the final sample's."""
    model_cfg = cfg.model_config(vocab_size)
    param_item, item = _itemsizes(cfg.dtype)
    n_params = count_params(model_cfg)
    # the step's activations are those of one micro-batch (grad_accum of them in turn)
    B = -(-cfg.batch_size // cfg.grad_accum)
    T, L, V = cfg.block_size, cfg.n_layer, vocab_size
    parts = {
        "params": n_params,
        "state": 4 * n_params * param_item,
        "train": (L * _layer_elements(model_cfg, B, T, saved=True) + 2 * B * T * V) * item,
        "eval": (_layer_elements(model_cfg, cfg.eval_batch_size, T, saved=False)
                 + 2 * cfg.eval_batch_size * T * V) * item,
        "sample": generation_memory_bytes(model_cfg, 1, cfg.sample_chars + 1, cfg.dtype),
    }
    return parts["state"] + max(parts["train"], parts["eval"], parts["sample"]), parts


def check_memory(need, what, fix, backend="numpy", available=None):
    """Raise a one-line ConfigError "<what> needs at least <need> of memory but <free> is
    available: <fix>" when `need` bytes exceed `available` (default: what is free now)."""
    available = available_memory_bytes(backend) if available is None else available
    if available is not None and need > available:
        raise ConfigError(f"{what} needs at least {format_bytes(need)} of memory but "
                          f"{format_bytes(available)} is available: {fix}")
    return need


def check_train_memory(cfg, vocab_size=1, available=None):
    """Raise a one-line ConfigError when a run of `cfg` cannot fit in memory, naming the
    figures and the flags that size it. vocab_size=1 before the data is read: a bound
    that holds for any vocabulary. `available` (bytes) defaults to available_memory_bytes."""
    need, parts = train_memory_bytes(cfg, vocab_size)
    largest = max(("train", "eval", "sample"), key=parts.get)
    sizes = ["n_layer", "n_embd", "mlp_ratio"] if parts["state"] >= parts[largest] else \
        {"train": ["n_layer", "n_embd", "block_size", "batch_size"],
         "eval": ["eval_batch_size", "block_size"], "sample": ["sample_chars"]}[largest]
    flags = ", ".join(f"{flag(n)} {getattr(cfg, n)}" for n in sizes)
    micro = -(-cfg.batch_size // cfg.grad_accum)
    what = {"train": f"batch {micro} x block {cfg.block_size}",
            "eval": f"evaluation batch {cfg.eval_batch_size} x block {cfg.block_size}",
            "sample": f"a {cfg.sample_chars}-character sample"}[largest]
    return check_memory(
        need, f"config: this run ({parts['params']:,} parameters: "
              f"{format_bytes(parts['state'])} for weights, gradients and AdamW state; "
              f"{format_bytes(parts[largest])} of activations for {what})",
        f"make {'it' if len(sizes) == 1 else 'them'} smaller: {flags}"
        + (f" (or raise --grad-accum {cfg.grad_accum})" if largest == "train" and
           parts["train"] > parts["state"] else ""), cfg.backend, available)
