"""The GPT: config, parameter table, initialisation, forward, and its mirrored backward.

Parameters (a flat dict, nanoGPT's names, PyTorch's layouts, so a checkpoint loads into
PyTorch as a state dict). C = n_embd, V = vocab_size, F = mlp_ratio * C:

    transformer.wte.weight              (V, C)       token embedding (also the output head
                                                     when tie_weights)
    transformer.wpe.weight              (block_size, C)  learned positions only
    transformer.h.{i}.ln_1.weight/bias  (C,)
    transformer.h.{i}.attn.c_attn.weight (3C, C), .bias (3C,)   q, k, v stacked
    transformer.h.{i}.attn.c_proj.weight (C, C),  .bias (C,)
    transformer.h.{i}.ln_2.weight/bias  (C,)
    transformer.h.{i}.mlp.c_fc.weight   (F, C),   .bias (F,)
    transformer.h.{i}.mlp.c_gate.weight (F, C),   .bias (F,)    swiglu only
    transformer.h.{i}.mlp.c_proj.weight (C, F),   .bias (C,)
    transformer.ln_f.weight/bias        (C,)         pre-norm only
    lm_head.weight                      (V, C)       only when not tie_weights

No `.bias` entries at all when bias=False; RMSNorm's `ln_*` have no `.bias` even with
bias=True. With grouped-query attention (n_kv_head = NKV < NH) c_attn is
((NH + 2 NKV) hs, C), its rows q (NH hs), then k (NKV hs), then v (NKV hs). RoPE has no
parameters. This is not a module system: the forward is straight-line code over this
dict, and the backward is that code reversed.

One forward serves training and generation: `forward(idx, kv_cache=cache)` runs only the
new positions (each row at its own absolute positions, from the cache's per-row lengths)
against the keys and values a `sampling.KVCache` holds, with the same block code (rows
that start empty, a prefill, take the training attention over their own keys), and
`last_only=True` stops the last block at the position a sampler reads.

Which implementation of each op runs (the xp ops of this package, numba CPU kernels or
CUDA kernels) is chosen once, when the model is built, into `self.ops` (fused/dispatch.py:
`Ops`, a table by op name); `describe_ops()` says what was chosen.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np

from tinygrad_char.ops import attention, rope
from tinygrad_char.backend import get_backend
from tinygrad_char.ops.embedding import sinusoidal_encoding
from tinygrad_char.fused import dispatch
from tinygrad_char.schema import ConfigError, Rule, check_fields


@dataclass(kw_only=True)
class Architecture:
    """A GPT's shape and variant: every GPTConfig field but vocab_size, which the tokenizer
    decides. GPTConfig adds vocab_size; training.config.TrainConfig adds the run's settings
    (so each field, its default, its rule and its flag are written once, here)."""
    block_size: int = 64  # longest context the model sees (the learned position table's length)
    n_layer: int = 4  # L: transformer blocks
    n_head: int = 4  # NH: attention heads; must divide n_embd
    n_embd: int = 128  # C: width of the residual stream
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * C (GPT-2 uses 4)
    dropout: float = 0.0  # on embeddings, attention probabilities and both residual branches
    bias: bool = True  # biases in linears and LayerNorms (False: none at all, as nanoGPT)
    activation: str = "gelu"  # "gelu" (tanh approximation, GPT-2), "relu", "gelu_exact"
    #                           (erf, PyTorch's nn.GELU()), "swiglu" (Llama: adds c_gate)
    pos_encoding: str = "learned"  # "learned" (wpe table), "sinusoidal" (fixed, no params)
    #                                or "rope" (rotary, on q and k of every head)
    norm: str = "pre"  # "pre": GPT-2 (LayerNorm inside each branch, plus ln_f);
    #                    "post": original Transformer (LayerNorm after each residual add)
    tie_weights: bool = True  # output head shares wte (saves V*C params; nanoGPT does this)
    normalization: str = "layernorm"  # "layernorm" or "rmsnorm" (no mean, no bias: Llama)
    rope_base: float = 10000.0  # RoPE: theta_i = rope_base^(-2i/hs) (Llama's default)
    n_kv_head: int = None  # NKV key/value heads (grouped-query attention); None = n_head

    # what each field may hold (schema.Rule); bias and tie_weights: true or false
    RULES: ClassVar[dict] = {
        "block_size": Rule(1), "n_layer": Rule(1), "n_head": Rule(1), "n_embd": Rule(1),
        "mlp_ratio": Rule(1), "dropout": Rule(0.0, 1.0, high_open=True),
        "activation": Rule(choices=("gelu", "relu", "gelu_exact", "swiglu")),
        "pos_encoding": Rule(choices=("learned", "sinusoidal", "rope")),
        "norm": Rule(choices=("pre", "post")),
        "normalization": Rule(choices=("layernorm", "rmsnorm")),
        "rope_base": Rule(1.0, low_open=True),
        "n_kv_head": Rule(1, hint="a divisor of n_head; unset: n_head (no grouped-query)",
                          words="a positive divisor of n_head or null"),
    }
    FLAGS: ClassVar[bool] = False  # errors name the command-line flag (TrainConfig)

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Check every field against RULES, then the rules between fields; raise a one-line
        ConfigError naming the field, the value and the fix. Returns self."""
        check_fields(self, self.RULES, self.FLAGS)
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"config: n_embd ({self.n_embd}) must be divisible by n_head "
                              f"({self.n_head}); change one of them")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head != 0:
            raise ConfigError(f"config: n_kv_head must be a positive divisor of n_head "
                              f"({self.n_head}) or null, got {self.n_kv_head!r}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"config: rope needs an even head size, got n_embd / n_head = "
                              f"{self.n_embd // self.n_head}; change n_embd or n_head")
        return self

    @property
    def kv_heads(self):
        """NKV: the key/value heads (n_head without grouped-query attention)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head


@dataclass
class GPTConfig(Architecture):
    """What builds a GPT: its Architecture and its vocabulary size."""
    vocab_size: int  # V: number of distinct characters (plus the reserved unknown id)

    RULES: ClassVar[dict] = {"vocab_size": Rule(1), **Architecture.RULES}

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"config: unknown field(s) {unknown}; known fields: "
                              f"{sorted(known)}")
        return cls(**d)


def param_shapes(config):
    """The parameter table: name -> shape, in forward order."""
    C, V, F = config.n_embd, config.vocab_size, config.mlp_ratio * config.n_embd
    QKV = C + 2 * config.kv_heads * (C // config.n_head)  # (NH + 2 NKV) hs; 3C without GQA
    norm_bias = config.bias and config.normalization == "layernorm"  # RMSNorm: never
    shapes = {"transformer.wte.weight": (V, C)}
    if config.pos_encoding == "learned":
        shapes["transformer.wpe.weight"] = (config.block_size, C)
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        layer = [("ln_1", (C,), (C,) if norm_bias else None),
                 ("attn.c_attn", (QKV, C), (QKV,)), ("attn.c_proj", (C, C), (C,)),
                 ("ln_2", (C,), (C,) if norm_bias else None), ("mlp.c_fc", (F, C), (F,))]
        if config.activation == "swiglu":
            layer.append(("mlp.c_gate", (F, C), (F,)))
        layer.append(("mlp.c_proj", (C, F), (C,)))
        for name, w_shape, b_shape in layer:
            shapes[h + name + ".weight"] = w_shape
            if config.bias and b_shape is not None:
                shapes[h + name + ".bias"] = b_shape
    if config.norm == "pre":
        shapes["transformer.ln_f.weight"] = (C,)
        if norm_bias:
            shapes["transformer.ln_f.bias"] = (C,)
    if not config.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def init_params(config, seed=0):
    """GPT-2 / nanoGPT initialisation, drawn on the host in float64 so that every backend
    and dtype starts from the same numbers for the same seed:
    normal(0, 0.02) for linear and embedding weights; the two c_proj weights
    normal(0, 0.02 / sqrt(2 L)) (each block adds two residual branches, so this keeps the
    residual stream's variance from growing with depth); biases 0; LayerNorm w 1, b 0
    (RMSNorm w 1); SwiGLU's c_gate as c_fc.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if ".ln_" in name or name.startswith("transformer.ln_f"):
            params[name] = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        elif name.endswith(".bias"):
            params[name] = np.zeros(shape)
        else:
            std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj.weight") else 0.02
            params[name] = rng.normal(0.0, std, size=shape)
    return params


class GPT:
    """A character-level GPT whose forward and backward are written out by hand.

        logits, loss = model.forward(idx, targets)   # idx, targets: (B, T) integer arrays
        grads = model.backward()                     # same keys as model.params
        logits, _ = model.forward(idx_new, kv_cache=cache)  # generation (sampling.KVCache)

    `model.params` maps names to arrays of the backend (`model.xp`). The forward keeps
    the caches of its ops for one backward; call forward again before the next backward.
    backend: "numpy", "cupy", "auto" or a Backend; dtype: "float32" or "float64" (for
    gradient checks); seed: initialisation and dropout; kernels: "auto" (default: the
    fused kernels for the backend, numba on NumPy when it imports, CUDA on CuPy), "xp"
    (the ops of this package), "cpu" (the numba kernels of fused/cpu/) or "fused" (the
    CUDA kernels of kernels/; GPU only), each with the xp op wherever it has no kernel for
    this model (chosen once, here: dispatch.select_ops; `describe_ops` lists the choice);
    compute_dtype: None, or "float16" for mixed precision (precision.py): the matmuls,
    attention and GELU run in float16 on a float16 copy of the float32 `params`, while the
    embeddings, the residual stream, LayerNorm and the cross-entropy stay float32.
    """

    def __init__(self, config, backend="numpy", dtype="float32", seed=0, kernels="auto",
                 compute_dtype=None):
        if dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if compute_dtype not in (None, "float16") or (compute_dtype and dtype != "float32"):
            raise ConfigError(f"compute_dtype must be None or 'float16' (with float32 "
                              f"parameters), got {compute_dtype!r} with {dtype!r}")
        if compute_dtype and kernels == "fused":
            raise ConfigError("float16 mixed precision runs on --kernels xp: the fused "
                              "kernels of kernels/ are float32 (use --kernels xp, or "
                              "--dtype float32 / tf32 with --kernels fused)")
        self.config = config
        self.backend = get_backend(backend, seed)
        self.xp = self.backend.xp
        self.dtype = dtype
        self.compute_dtype = compute_dtype
        self.set_kernels(kernels)  # self.ops: the op table
        self._run_params = None  # the weights the forward's matmuls use (see forward)
        self.params = {name: self.xp.asarray(p, dtype=dtype)
                       for name, p in init_params(config, seed).items()}
        self.training = True
        self.rng = self.xp.random.default_rng(seed)  # dropout masks
        self._pos_table, self._pos_table_len = None, 0  # sinusoidal or rope (`_positions`)
        self._caches = None

    # -- the op table ------------------------------------------------------------------
    def set_kernels(self, kernels):
        """Choose each op's implementation for this model's backend, dtypes and config
        (fused/dispatch.select_ops): self.ops, an Ops table. Called by the constructor; call
        it again after changing compute_dtype (a resumed run does)."""
        self.kernels = kernels
        self.ops = dispatch.select_ops(kernels, self.backend.name, self.config, self.dtype,
                                       self.compute_dtype)

    def describe_ops(self):
        """{op name: "numba" | "cuda" | "xp"} for every op this model runs, in forward order."""
        return dispatch.describe(self.ops, dispatch.ops_used(self.config))

    def ops_summary(self):
        """describe_ops in one line: `kernels: numba (embedding, ...), xp (cached_attention)`."""
        return dispatch.summary(self.describe_ops())

    # -- modes -------------------------------------------------------------------------
    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def num_params(self):
        """Number of parameters (a tied head counts once)."""
        return int(sum(p.size for p in self.params.values()))

    def seed_dropout(self, seed):
        """Reseed the dropout generator (the training loop does this per step, so a resumed
        run draws exactly the masks an uninterrupted one would)."""
        self.rng = self.xp.random.default_rng(seed)

    # -- blocks ------------------------------------------------------------------------
    def _p(self, name):
        """A weight as the matmuls use it (float16 in mixed precision), or None."""
        return self._run_params.get(name)

    def _low(self, a):
        """`a` in the compute dtype (a no-op without mixed precision)."""
        return a if self.compute_dtype is None else a.astype(self.compute_dtype, copy=False)

    def _positions(self, start, stop=None):
        """The fixed position tables of absolute positions start .. stop - 1, from a table
        grown on demand (past block_size too: sliding-window generation).
        Sinusoidal: (T, C); rope: (cos, sin), each (T, hs/2); None for learned positions.
        With stop None, start is a (B, T) array of positions (a KV cache's rows, each at
        its own): sinusoidal (B, T, C), rope (cos, sin) each (B, T, hs/2)."""
        cfg = self.config
        if cfg.pos_encoding == "learned":
            return None
        if stop is None:  # gathered per row
            self._positions(0, int(start.max()) + 1)  # grows the table
            if cfg.pos_encoding == "sinusoidal":
                return self._pos_table[start]
            return tuple(t[start] for t in self._pos_table)
        if self._pos_table is None or self._pos_table_len < stop:
            n = max(stop, 2 * (self._pos_table_len or 0), cfg.block_size)
            if cfg.pos_encoding == "sinusoidal":
                self._pos_table = sinusoidal_encoding(n, cfg.n_embd, self.xp, self.dtype)
            else:
                self._pos_table = rope.rope_tables(0, n, cfg.n_embd // cfg.n_head,
                                                   cfg.rope_base, self.xp, self.dtype)
            self._pos_table_len = n
        if cfg.pos_encoding == "sinusoidal":
            return self._pos_table[start:stop]
        return tuple(t[start:stop] for t in self._pos_table)

    def _attn_forward(self, x, h, pos, window, kv_cache, layer, last_query=False):
        """The attention branch: c_attn -> [rope] -> causal attention -> c_proj -> dropout.

        x (B, T, C); pos: rope's (cos, sin) of the T positions, else None; window: None,
        or block_size for a sequence past it (sliding-window attention); kv_cache: None, or
        the KVCache whose keys and values of layer `layer` the T new queries also attend to
        (then nothing is kept for a backward); last_query: only the last position's query
        attends (over every key: the cache's, which this forward's enter first, or this
        forward's own without a cache), and the branch returns (B, 1, C)."""
        cfg, ops = self.config, self.ops
        NH, NKV = cfg.n_head, cfg.kv_heads
        qkv, c_qkv = ops.linear_forward(x, self._p(h + "attn.c_attn.weight"),
                                        self._p(h + "attn.c_attn.bias"))  # (B,T,(NH+2NKV)hs)
        c_rope = None
        if cfg.pos_encoding == "rope" and kv_cache is not None:
            # each row at its own positions: rotate the B T rows as one sequence of rows
            B, T = x.shape[:2]
            cos, sin = (t.reshape(B * T, -1) for t in pos)  # (B T, hs/2)
            qkv, _ = ops.rope_forward(qkv.reshape(1, B * T, -1), cos, sin, NH, NKV)
            qkv = qkv.reshape(B, T, -1)  # (B, T, (NH + 2 NKV) hs)
        elif cfg.pos_encoding == "rope":
            qkv, c_rope = ops.rope_forward(qkv, *pos, NH, NKV)  # q, k rotated
        if kv_cache is not None or last_query:
            q, k, v = attention.split_heads(qkv, NH, NKV)  # (B, NH|NKV, T, hs)
            B, T = x.shape[:2]
            keep = kv_cache is not None and kv_cache.keep_attention
            if kv_cache is not None:
                starts_empty = kv_cache.empty  # before this layer's append
                k_t, v, k_pos = kv_cache.append(layer, k, v)  # the rows' rings of keys, values
                q_pos = kv_cache.positions(T)  # (B, T)
            else:  # no cache: this forward's own keys, at positions 0 .. T - 1
                starts_empty, k_pos, q_pos = False, 0, self.xp.arange(T)[None]  # (1, T)
                k_t = self.xp.ascontiguousarray(k.transpose(0, 1, 3, 2))  # (B, NKV, hs, T)
            if last_query:  # (B, NH, 1, hs): the one query a sampler's logits need
                q, q_pos = q[:, :, -1:], q_pos[:, -1:]
            if starts_empty and not keep and not last_query:
                # rows that held nothing (a prefill): the new queries see only their own
                # keys, causally, which is the training attention (and its fast path)
                y, _ = ops.gqa_attention_forward(qkv, NH, NKV, training=False) \
                    if NKV != NH else ops.attention_forward(qkv, NH, training=False)
            else:
                y, att = ops.cached_attention_forward(q, k_t, v, q_pos, k_pos,
                                                      cfg.block_size, return_probs=True)
                if keep:  # (B, NH, Tq, capacity): for a reader to see
                    kv_cache.attention[layer] = att
                y = y.transpose(0, 2, 1, 3).reshape(B, q.shape[2], cfg.n_embd)  # (B, Tq, C)
            c_att = None
        elif window is not None:  # a sequence past block_size: sliding-window attention
            y, c_att = ops.windowed_attention_forward(qkv, NH, NKV, cfg.dropout, self.rng,
                                                      self.training, window)
        elif NKV == NH:  # GPT-2's attention
            y, c_att = ops.attention_forward(qkv, NH, cfg.dropout, self.rng, self.training)
        else:  # grouped-query attention
            y, c_att = ops.gqa_attention_forward(qkv, NH, NKV, cfg.dropout, self.rng,
                                                 self.training)
        out, c_proj = ops.linear_forward(y, self._p(h + "attn.c_proj.weight"),
                                         self._p(h + "attn.c_proj.bias"))  # (B, T, C)
        out, c_drop = ops.dropout_forward(out, cfg.dropout, self.rng, self.training)
        kind = "windowed" if window is not None else "mha" if NKV == NH else "gqa"
        return out, (c_qkv, c_rope, kind, c_att, c_proj, c_drop)

    def _attn_backward(self, dout, cache, h, grads):
        ops = self.ops
        c_qkv, c_rope, kind, c_att, c_proj, c_drop = cache
        dout = ops.dropout_backward(dout, c_drop)
        dy, grads[h + "attn.c_proj.weight"], db = ops.linear_backward(dout, c_proj)
        if db is not None:
            grads[h + "attn.c_proj.bias"] = db
        attention_backward = {"mha": ops.attention_backward, "gqa": ops.gqa_attention_backward,
                              "windowed": ops.windowed_attention_backward}[kind]
        dqkv = attention_backward(dy, c_att)  # the backward of the forward that ran
        if c_rope is not None:
            dqkv = ops.rope_backward(dqkv, c_rope)
        dx, grads[h + "attn.c_attn.weight"], db = ops.linear_backward(dqkv, c_qkv)
        if db is not None:
            grads[h + "attn.c_attn.bias"] = db
        return dx

    def _activation_ops(self):
        """(forward, backward) of the elementwise activation (not swiglu)."""
        ops, act = self.ops, self.config.activation
        return {"gelu": (ops.gelu_forward, ops.gelu_backward),
                "relu": (ops.relu_forward, ops.relu_backward),
                "gelu_exact": (ops.gelu_exact_forward, ops.gelu_exact_backward)}[act]

    def _mlp_forward(self, x, h):
        """The MLP branch: c_fc -> activation -> c_proj -> dropout, or with swiglu
        c_proj(silu(c_gate(x)) * c_fc(x)) -> dropout. x (B, T, C)."""
        cfg, ops = self.config, self.ops
        hid, c_fc = ops.linear_forward(x, self._p(h + "mlp.c_fc.weight"),
                                       self._p(h + "mlp.c_fc.bias"))  # (B, T, F)
        c_gate = None
        if cfg.activation == "swiglu":
            gate, c_gate = ops.linear_forward(x, self._p(h + "mlp.c_gate.weight"),
                                              self._p(h + "mlp.c_gate.bias"))  # (B, T, F)
            hid, c_act = ops.swiglu_forward(gate, hid)
        else:
            hid, c_act = self._activation_ops()[0](hid)
        out, c_proj = ops.linear_forward(hid, self._p(h + "mlp.c_proj.weight"),
                                         self._p(h + "mlp.c_proj.bias"))  # (B, T, C)
        out, c_drop = ops.dropout_forward(out, cfg.dropout, self.rng, self.training)
        return out, (c_fc, c_gate, c_act, c_proj, c_drop)

    def _mlp_backward(self, dout, cache, h, grads):
        ops = self.ops
        c_fc, c_gate, c_act, c_proj, c_drop = cache
        dout = ops.dropout_backward(dout, c_drop)
        dhid, grads[h + "mlp.c_proj.weight"], db = ops.linear_backward(dout, c_proj)
        if db is not None:
            grads[h + "mlp.c_proj.bias"] = db
        dx = None
        if c_gate is not None:
            dgate, dhid = ops.swiglu_backward(dhid, c_act)
            dx, grads[h + "mlp.c_gate.weight"], db = ops.linear_backward(dgate, c_gate)
            if db is not None:
                grads[h + "mlp.c_gate.bias"] = db
        else:
            dhid = self._activation_ops()[1](dhid, c_act)
        dx_fc, grads[h + "mlp.c_fc.weight"], db = ops.linear_backward(dhid, c_fc)
        if db is not None:
            grads[h + "mlp.c_fc.bias"] = db
        return dx_fc if dx is None else dx + dx_fc  # x feeds both c_gate and c_fc

    def _ln_forward(self, x, name):
        """LayerNorm or RMSNorm in the parameters' dtype (float32 in mixed precision too)."""
        if self.config.normalization == "rmsnorm":
            return self.ops.rmsnorm_forward(x, self.params[name + ".weight"])
        return self.ops.layernorm_forward(x, self.params[name + ".weight"],
                                          self.params.get(name + ".bias"))

    def _ln_backward(self, dy, cache, name, grads):
        dy = dy.astype(self.dtype, copy=False)
        if self.config.normalization == "rmsnorm":
            dx, grads[name + ".weight"] = self.ops.rmsnorm_backward(dy, cache)
            return dx
        dx, grads[name + ".weight"], db = self.ops.layernorm_backward(dy, cache)
        if db is not None:
            grads[name + ".bias"] = db
        return dx

    # -- forward -----------------------------------------------------------------------
    def forward(self, idx, targets=None, kv_cache=None, last_only=False):
        """Args:
            idx: (B, T) integer token ids. T <= block_size with learned positions; longer
                sequences with sinusoidal or rope positions run sliding-window attention
                (each position sees the block_size most recent, itself included).
            targets: (B, T) next-token ids (-1 = ignore), or None.
            kv_cache: None, or a `sampling.KVCache`: then idx holds only the new positions
                (row b at absolute positions kv_cache.lengths[b] .. + T - 1: rows may be
                at different positions), their keys and values are
                appended to the cache, and the forward runs in eval mode (no dropout)
                whatever `training` says, keeping nothing for a backward. Its logits equal
                those of a forward on the whole sequence, up to float rounding.
            last_only: the logits of each row's last position only, what a sampler reads
                (nanoGPT's forward without targets): the last block's attention query, its
                projection and MLP, the final norm and the head run on the last position
                alone (with kv_cache every position's keys and values still enter the
                cache). Runs in eval mode and keeps nothing for a backward, as with
                kv_cache. Logits then (B, 1, V), equal to the last column of the full
                forward's up to float rounding.
        Returns:
            logits: (B, T, V), or (B, 1, V) with last_only
            loss: 0-d array (mean cross-entropy in nats), or None without targets.
        """
        cfg, p, ops = self.config, self.params, self.ops
        if idx.ndim != 2:
            raise ValueError(f"idx must be (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if last_only and targets is not None:
            raise ValueError("last_only gives a sampler's logits: it takes no targets")
        start, span = 0, (0, T)  # span: the positions, as _positions takes them
        if kv_cache is not None:
            kv_cache.reserve(B, T)  # checks the batch and the window
            span = (kv_cache.positions(T),)  # (B, T): each row at its own positions
        elif T > cfg.block_size and cfg.pos_encoding == "learned":
            raise ValueError(f"sequence length {T} exceeds block_size {cfg.block_size}; "
                             f"crop the input to its last {cfg.block_size} tokens")
        window = cfg.block_size if start + T > cfg.block_size else None
        training = self.training
        inference = kv_cache is not None or last_only  # eval semantics, nothing kept
        self.training = training and not inference
        # the weights of the matmuls: the parameters themselves, or their float16 copies
        self._run_params = p if self.compute_dtype is None else {
            name: w.astype(self.compute_dtype) for name, w in p.items()
            if ".ln_" not in name and name != "transformer.wpe.weight"}
        try:
            caches = {}
            tok, caches["wte"] = ops.embedding_forward(idx, p["transformer.wte.weight"])
            rope_pos = None  # (B, T, C) above; rope's (cos, sin) of the T positions below
            if cfg.pos_encoding == "learned" and kv_cache is not None:
                x = tok + p["transformer.wpe.weight"][span[0]]  # (B, T, C), rows' own positions
            elif cfg.pos_encoding == "learned":
                x, caches["wpe"] = ops.position_embedding_forward(  # (B, T, C): tok + pos
                    tok, p["transformer.wpe.weight"], start)
            elif cfg.pos_encoding == "sinusoidal":
                x = tok + self._positions(*span)  # (T, C) or per row (B, T, C), fixed
            else:
                x, rope_pos = tok, self._positions(*span)  # rotates q, k instead
            x, caches["drop"] = ops.dropout_forward(x, cfg.dropout, self.rng, self.training)

            for i in range(cfg.n_layer):
                h = f"transformer.h.{i}."
                # the last block of a last_only forward: its keys and values enter the cache
                # (if any), then the block goes on at the last position alone (B, 1, C)
                last = last_only and i == cfg.n_layer - 1
                attn = (h, rope_pos, window, kv_cache, i, last)
                if cfg.norm == "pre":  # x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))
                    a, c_ln1 = self._ln_forward(x, h + "ln_1")
                    a, c_attn = self._attn_forward(self._low(a), *attn)
                    x = (x[:, -1:] if last else x) + a
                else:  # x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))
                    a, c_attn = self._attn_forward(self._low(x), *attn)
                    x, c_ln1 = self._ln_forward((x[:, -1:] if last else x) + a, h + "ln_1")
                if cfg.norm == "pre":
                    m, c_ln2 = self._ln_forward(x, h + "ln_2")
                    m, c_mlp = self._mlp_forward(self._low(m), h)
                    x = x + m
                else:
                    m, c_mlp = self._mlp_forward(self._low(x), h)
                    x, c_ln2 = self._ln_forward(x + m, h + "ln_2")
                caches[i] = (c_ln1, c_attn, c_ln2, c_mlp)
            if kv_cache is not None:
                kv_cache.advance(T)

            if cfg.norm == "pre":
                x, caches["ln_f"] = self._ln_forward(x, "transformer.ln_f")
            head = self._p("transformer.wte.weight" if cfg.tie_weights else "lm_head.weight")
            logits, caches["head"] = ops.linear_forward(self._low(x), head)  # (B, T, V)
            logits = logits.astype(self.dtype, copy=False)  # the softmax in float32
            loss = None
            if targets is not None:
                loss, caches["loss"] = ops.cross_entropy_forward(logits, targets)
        finally:
            self.training = training
            self._run_params = None
        self._caches = None if inference else caches
        return logits, loss

    # -- backward: the forward above, reversed ----------------------------------------
    def backward(self, dlogits=None, loss_scale=1.0, layer_done=None):
        """Gradients of the last forward's loss (or of sum(logits * dlogits) when given).

        Returns a dict with the keys of `params`. The tied embedding gets the sum of its two
        uses (output head and input lookup). loss_scale multiplies the loss gradient (mixed
        precision, precision.LossScaler); in mixed precision the matmul weights' gradients
        are float16, the others float32. layer_done(i, grads), when given, is called as soon
        as block i's gradients (the keys "transformer.h.{i}.*") are final, so a caller can
        start sending them while the earlier blocks' backward runs (distributed.py).
        """
        if self._caches is None:
            raise RuntimeError("backward() needs a forward() first (and each forward "
                               "allows one backward)")
        cfg, caches, grads, ops = self.config, self._caches, {}, self.ops
        self._caches = None
        if dlogits is None:
            if "loss" not in caches:
                raise RuntimeError("backward() without dlogits needs forward(idx, targets)")
            dlogits = ops.cross_entropy_backward(loss_scale, caches["loss"])  # (B, T, V)
        dx, dhead, _ = ops.linear_backward(self._low(dlogits), caches["head"])  # (B,T,C),(V,C)
        if cfg.norm == "pre":
            dx = self._ln_backward(dx, caches["ln_f"], "transformer.ln_f", grads)

        for i in reversed(range(cfg.n_layer)):
            h = f"transformer.h.{i}."
            c_ln1, c_attn, c_ln2, c_mlp = caches[i]
            if cfg.norm == "pre":
                # x = x + mlp(ln_2(x)): the residual passes dx through, the branch adds to it
                dm = self._mlp_backward(self._low(dx), c_mlp, h, grads)
                dx = dx + self._ln_backward(dm, c_ln2, h + "ln_2", grads)
                # x = x + attn(ln_1(x))
                da = self._attn_backward(self._low(dx), c_attn, h, grads)
                dx = dx + self._ln_backward(da, c_ln1, h + "ln_1", grads)
            else:
                # x = ln_2(s), s = x + mlp(x): ds feeds both the residual and the branch
                ds = self._ln_backward(dx, c_ln2, h + "ln_2", grads)
                dx = ds + self._mlp_backward(self._low(ds), c_mlp, h, grads)
                # x = ln_1(s), s = x + attn(x)
                ds = self._ln_backward(dx, c_ln1, h + "ln_1", grads)
                dx = ds + self._attn_backward(self._low(ds), c_attn, h, grads)
            if layer_done is not None:
                layer_done(i, grads)

        dx = ops.dropout_backward(dx, caches["drop"])  # (B, T, C)
        if cfg.pos_encoding == "learned":
            grads["transformer.wpe.weight"] = ops.position_embedding_backward(
                dx, caches["wpe"])
        dwte = ops.embedding_backward(dx, caches["wte"])  # (V, C)
        if cfg.tie_weights:
            dwte += dhead  # the tied table is used twice: input lookup and output head
        else:
            grads["lm_head.weight"] = dhead
        grads["transformer.wte.weight"] = dwte
        return {name: grads[name] for name in self.params}
