"""The run's configuration: `TrainConfig` (one flat dataclass holding the model's
hyperparameters and the run's), its checks, the command line built from it, and an
estimate of the memory a run needs.

`RANGES` and `CHOICES` say what each field may hold; `TrainConfig.validate` and the
--help text are both read from them, so a new field needs one entry in one table.
`build_parser` turns TrainConfig into command-line flags, and `resolve_config` layers
defaults < preset < --config FILE.json < flags, type-checked (no exec).
`train_memory_bytes` / `generation_memory_bytes` estimate (a lower bound) what a run
holds, so a size that cannot fit is refused with the figure before anything is allocated.

Not here: the loop that runs a config (train.py).
"""

import argparse
import json
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, fields, replace

from tinygrad_char.training.cli import MAX_SEED, Parser, describe_range, range_error
from tinygrad_char.model import MODEL_CHOICES, ConfigError, GPTConfig, param_shapes
from tinygrad_char.training.precision import PRECISIONS


@dataclass(frozen=True)
class Range:
    """The numbers a field may hold: low <= value <= high (either end open or absent);
    floats must also be finite. `hint` is added to the error, e.g. what 0 means."""
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    hint: str = ""

    def problem(self, value):
        return range_error(value, self.low, self.high, self.low_open, self.high_open)

    def describe(self):
        return describe_range(self.low, self.high, self.low_open, self.high_open)


# What every number of TrainConfig may hold (a field missing here is a test failure).
# Cross-field rules (min_lr <= learning_rate, grad_accum <= batch_size, n_embd % n_head)
# are in TrainConfig.validate and GPTConfig.
RANGES = {
    "block_size": Range(1), "n_layer": Range(1), "n_head": Range(1), "n_embd": Range(1),
    "mlp_ratio": Range(1),
    "n_kv_head": Range(1, hint="a divisor of n_head; unset: n_head (no grouped-query)"),
    "rope_base": Range(1.0, low_open=True),
    "dropout": Range(0.0, 1.0, high_open=True),
    "batch_size": Range(1),
    "learning_rate": Range(0.0, low_open=True),
    "min_lr": Range(0.0, hint="at most learning_rate"),
    "warmup_steps": Range(0), "max_steps": Range(1),
    "weight_decay": Range(0.0),
    "beta1": Range(0.0, 1.0, high_open=True), "beta2": Range(0.0, 1.0, high_open=True),
    "grad_clip": Range(0.0, hint="0 disables clipping"),
    "eval_interval": Range(1),
    "eval_batches": Range(0, hint="0 evaluates the whole split"),
    "eval_batch_size": Range(1), "log_interval": Range(1),
    "sample_chars": Range(0),
    "seed": Range(0, MAX_SEED),
    "workers": Range(1),
    "grad_accum": Range(1),
    "threads": Range(0, hint="0 uses every core this process may run on"),
}

# What every string of TrainConfig may hold (out_dir, a path, is checked by check_out_dir).
# activation, pos_encoding and norm are GPTConfig's, which checks them again when built.
CHOICES = {
    **MODEL_CHOICES,
    "dtype": PRECISIONS,
    "backend": ("numpy", "cupy", "auto"),
    "kernels": ("auto", "xp", "fused", "cpu"),
}


def _flag(name):
    return "--" + name.replace("_", "-")


def _type_problem(kind, value):
    """None when `value` has the field type `kind` (bool, int, float or str), else the
    expectation. JSON has one number type: an integer is accepted for a float."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:  # NumPy's integers too
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    return None if ok else f"must be {'true or false' if kind is bool else kind.__name__}"


def field_problem(f, value):
    """What is wrong with `value` for the TrainConfig field `f`, or None. None itself is
    allowed only in a field whose default is None (e.g. "not set: derive it")."""
    name = f.name
    if value is None and f.default is None:
        return None
    problem = _type_problem(f.type, value)
    if problem:
        return problem
    if name in CHOICES and value not in CHOICES[name]:
        return f"must be one of {', '.join(CHOICES[name])}"
    if name in RANGES:
        return RANGES[name].problem(value)
    return None


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
    normalization: str = "layernorm"  # or "rmsnorm" (Llama)
    rope_base: float = 10000.0  # with pos_encoding "rope"
    n_kv_head: int = None  # key/value heads (grouped-query attention); None: n_head
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
    workers: int = 1  # retired (only 1 is accepted): run `mpiexec -n N` instead (distributed.py)
    # threads of this process: the numba kernels' one pool, which runs the matmuls too
    # (BLAS on one thread, so the two never compete; without numba, BLAS's threads); 0:
    # every core it may run on. Under mpiexec each rank takes its share of its node's
    # cores unless this is set
    threads: int = 0
    # micro-batches per step and rank: the batch is cut into this many pieces whose
    # gradients are summed before the step (a batch too big for memory still trains)
    grad_accum: int = 1
    out_dir: str = "out"
    # WikiText-2 unavailable (offline) and no --data-dir: train on the packaged sample text
    # and say so (true), or stop with the error (false)
    data_fallback: bool = True

    def model_config(self, vocab_size):
        # the GPTConfig fields this config sets (a test checks that is all but vocab_size)
        names = {f.name for f in fields(GPTConfig)} & {f.name for f in fields(self)}
        return GPTConfig(vocab_size=vocab_size, **{n: getattr(self, n) for n in names})

    def validate(self):
        """Check every field against RANGES / CHOICES, then the rules between fields;
        raise a one-line ConfigError naming the field, its flag, the value and the fix."""
        for f in fields(self):
            value = getattr(self, f.name)
            problem = field_problem(f, value)
            if problem:
                hint = RANGES[f.name].hint if f.name in RANGES else ""
                raise ConfigError(f"config: {f.name} {problem}, got {value!r} "
                                  f"({_flag(f.name)}{'; ' + hint if hint else ''})")
        if self.min_lr > self.learning_rate:
            raise ConfigError(f"config: min_lr ({self.min_lr:g}) must not exceed learning_rate"
                              f" ({self.learning_rate:g}): lower --min-lr or raise "
                              f"--learning-rate")
        if not self.out_dir:
            raise ConfigError("config: out_dir is empty (--out-dir): give a folder, e.g. out")
        if self.grad_accum > self.batch_size:
            raise ConfigError(f"config: grad_accum ({self.grad_accum}) must not exceed "
                              f"batch_size ({self.batch_size}): each micro-batch needs a row")
        if self.workers != 1:
            raise ConfigError(f"config: workers {self.workers}: --workers was replaced by MPI "
                              f"ranks, which split each batch the same way: run mpiexec -n "
                              f"{self.workers} python examples/train_wikitext.py ... (pip "
                              "install 'tinygrad-char[mpi]'), without --workers")
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


MAX_CONFIG_BYTES = 1 << 20  # a config is a small JSON object; this stops /dev/zero early


def load_config_file(path, what="--config"):
    """A JSON object of TrainConfig fields; keys starting with "_" are comments. Every
    problem is a one-line ConfigError starting with `what` and the path."""
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
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r}; known fields: "
                              f"{', '.join(known)}")
        problem = None if value is None and known[key].default is None else \
            _type_problem(known[key].type, value)
        if problem:
            raise ConfigError(f"{where}: {key} {problem}, got {json.dumps(value)[:80]}")
    return values


def _field_help(f, value, source=None):
    """A field's --help line: what it may hold and its default (and where that is from)."""
    rule = RANGES[f.name].describe() if f.name in RANGES else \
        "true or false" if f.type is bool else ""  # choices show in the metavar
    hint = RANGES[f.name].hint if f.name in RANGES else ""
    shown = json.dumps(value) if isinstance(value, (bool, str)) or value is None else value
    text = "; ".join(x for x in (rule, hint) if x)
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
        try:
            sources = []
            if self.presets_dir and getattr(namespace, "preset", None):
                name = namespace.preset
                sources.append((f"--preset {name}", load_config_file(
                    os.path.join(self.presets_dir, name + ".json"), f"--preset {name}")))
            if getattr(namespace, "config", None):
                sources.append((f"--config {namespace.config}",
                                load_config_file(namespace.config)))
        except ConfigError as e:
            parser.error(str(e))
        known = {f.name: f for f in fields(TrainConfig)}
        for source, values in sources:
            for name, value in values.items():
                self.field_actions[name].help = _field_help(known[name], value, source)
        parser.print_help()
        parser.exit()


def build_parser(description, presets_dir=None):
    """A parser with one flag per TrainConfig field (default None = not given); errors
    are one line. Each flag's help lists its allowed values (from RANGES / CHOICES) and
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
        kind = _parse_bool if f.type is bool else f.type
        choices = CHOICES.get(f.name)
        field_actions[f.name] = p.add_argument(
            _flag(f.name), dest=f.name, type=kind, default=None, choices=choices,
            metavar=None if choices else f.type.__name__.upper(),
            help=_field_help(f, f.default))
    return p


def resolve_config(args, presets_dir=None):
    """TrainConfig from parsed args: defaults < preset < --config file < explicit flags."""
    values = {}
    if presets_dir and getattr(args, "preset", None):
        values.update(load_config_file(os.path.join(presets_dir, args.preset + ".json"),
                                       f"--preset {args.preset}"))
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


def check_out_dir(path):
    """Make sure `path` is a folder this process can write (created when missing); raise a
    one-line ConfigError naming --out-dir otherwise (empty, a file, not writable)."""
    if not path:
        raise ConfigError("config: out_dir is empty (--out-dir): give a folder, e.g. out")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--out-dir {path} is a file, not a folder: give a folder for the "
                          f"checkpoint and metrics")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"--out-dir {path} cannot be written ({e.strerror}): choose a "
                          f"folder you can write to") from None


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
    flags = ", ".join(f"{_flag(n)} {getattr(cfg, n)}" for n in sizes)
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
