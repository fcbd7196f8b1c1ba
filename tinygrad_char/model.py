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
    transformer.h.{i}.mlp.c_proj.weight (C, F),   .bias (C,)
    transformer.ln_f.weight/bias        (C,)         pre-norm only
    lm_head.weight                      (V, C)       only when not tie_weights

No `.bias` entries at all when bias=False. This is not a module system: the forward is
straight-line code over this dict, and the backward is that code reversed.
"""

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .backend import get_backend
from .embedding import sinusoidal_encoding
from .kernels import select_ops


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


@dataclass
class GPTConfig:
    vocab_size: int  # V: number of distinct characters (plus the reserved unknown id)
    block_size: int  # longest context the model sees (the learned position table's length)
    n_layer: int  # L: transformer blocks
    n_head: int  # NH: attention heads; must divide n_embd
    n_embd: int  # C: width of the residual stream
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * C (GPT-2 uses 4)
    dropout: float = 0.0  # on embeddings, attention probabilities and both residual branches
    bias: bool = True  # biases in linears and LayerNorms (False: none at all, as nanoGPT)
    activation: str = "gelu"  # "gelu" (tanh approximation, GPT-2) or "relu"
    pos_encoding: str = "learned"  # "learned" (wpe table) or "sinusoidal" (fixed, no params)
    norm: str = "pre"  # "pre": GPT-2 (LayerNorm inside each branch, plus ln_f);
    #                    "post": original Transformer (LayerNorm after each residual add)
    tie_weights: bool = True  # output head shares wte (saves V*C params; nanoGPT does this)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"config: n_embd ({self.n_embd}) must be divisible by n_head "
                              f"({self.n_head}); change one of them")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config: dropout must be in [0, 1), got {self.dropout!r}")
        choices = {"activation": ("gelu", "relu"), "pos_encoding": ("learned", "sinusoidal"),
                   "norm": ("pre", "post")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config: {name} must be one of {allowed}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config: {name} must be true or false, "
                                  f"got {getattr(self, name)!r}")

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
    shapes = {"transformer.wte.weight": (V, C)}
    if config.pos_encoding == "learned":
        shapes["transformer.wpe.weight"] = (config.block_size, C)
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        layer = [("ln_1", (C,), (C,)), ("attn.c_attn", (3 * C, C), (3 * C,)),
                 ("attn.c_proj", (C, C), (C,)), ("ln_2", (C,), (C,)),
                 ("mlp.c_fc", (F, C), (F,)), ("mlp.c_proj", (C, F), (C,))]
        for name, w_shape, b_shape in layer:
            shapes[h + name + ".weight"] = w_shape
            if config.bias:
                shapes[h + name + ".bias"] = b_shape
    if config.norm == "pre":
        shapes["transformer.ln_f.weight"] = (C,)
        if config.bias:
            shapes["transformer.ln_f.bias"] = (C,)
    if not config.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def init_params(config, seed=0):
    """GPT-2 / nanoGPT initialisation, drawn on the host in float64 so that every backend
    and dtype starts from the same numbers for the same seed:
    normal(0, 0.02) for linear and embedding weights; the two c_proj weights
    normal(0, 0.02 / sqrt(2 L)) (each block adds two residual branches, so this keeps the
    residual stream's variance from growing with depth); biases 0; LayerNorm w 1, b 0.
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

    `model.params` maps names to arrays of the backend (`model.xp`). The forward keeps
    the caches of its ops for one backward; call forward again before the next backward.
    backend: "numpy", "cupy", "auto" or a Backend; dtype: "float32" or "float64" (for
    gradient checks); seed: initialisation and dropout; kernels: "xp" (the ops of this
    package) or "fused" (the CUDA kernels of kernels/ where one exists; GPU only);
    compute_dtype: None, or "float16" for mixed precision (precision.py): the matmuls,
    attention and GELU run in float16 on a float16 copy of the float32 `params`, while the
    embeddings, the residual stream, LayerNorm and the cross-entropy stay float32.
    """

    def __init__(self, config, backend="numpy", dtype="float32", seed=0, kernels="xp",
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
        # the op functions: the xp pairs of this package, or ("fused") the CUDA kernels of
        # kernels/ where one exists; decided once, in kernels.select_ops
        self.ops = select_ops(kernels)
        self.xp = self.backend.xp
        self.dtype = dtype
        self.compute_dtype = compute_dtype
        self._run_params = None  # the weights the forward's matmuls use (see forward)
        self.params = {name: self.xp.asarray(p, dtype=dtype)
                       for name, p in init_params(config, seed).items()}
        self.training = True
        self.rng = self.xp.random.default_rng(seed)  # dropout masks
        self._pos_table = None
        if config.pos_encoding == "sinusoidal":
            self._pos_table = sinusoidal_encoding(config.block_size, config.n_embd, self.xp,
                                                  dtype)
        self._caches = None

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

    def _attn_forward(self, x, h):
        """The attention branch: c_attn -> causal attention -> c_proj -> dropout. x (B, T, C)."""
        cfg, ops = self.config, self.ops
        qkv, c_qkv = ops.linear_forward(x, self._p(h + "attn.c_attn.weight"),
                                    self._p(h + "attn.c_attn.bias"))  # (B, T, 3C)
        y, c_att = ops.attention_forward(qkv, cfg.n_head, cfg.dropout, self.rng, self.training)
        out, c_proj = ops.linear_forward(y, self._p(h + "attn.c_proj.weight"),
                                     self._p(h + "attn.c_proj.bias"))  # (B, T, C)
        out, c_drop = ops.dropout_forward(out, cfg.dropout, self.rng, self.training)
        return out, (c_qkv, c_att, c_proj, c_drop)

    def _attn_backward(self, dout, cache, h, grads):
        ops = self.ops
        c_qkv, c_att, c_proj, c_drop = cache
        dout = ops.dropout_backward(dout, c_drop)
        dy, grads[h + "attn.c_proj.weight"], db = ops.linear_backward(dout, c_proj)
        if db is not None:
            grads[h + "attn.c_proj.bias"] = db
        dqkv = ops.attention_backward(dy, c_att)
        dx, grads[h + "attn.c_attn.weight"], db = ops.linear_backward(dqkv, c_qkv)
        if db is not None:
            grads[h + "attn.c_attn.bias"] = db
        return dx

    def _mlp_forward(self, x, h):
        """The MLP branch: c_fc -> activation -> c_proj -> dropout. x (B, T, C)."""
        cfg, ops = self.config, self.ops
        hid, c_fc = ops.linear_forward(x, self._p(h + "mlp.c_fc.weight"),
                                   self._p(h + "mlp.c_fc.bias"))  # (B, T, F)
        act_forward = ops.gelu_forward if cfg.activation == "gelu" else ops.relu_forward
        hid, c_act = act_forward(hid)
        out, c_proj = ops.linear_forward(hid, self._p(h + "mlp.c_proj.weight"),
                                     self._p(h + "mlp.c_proj.bias"))  # (B, T, C)
        out, c_drop = ops.dropout_forward(out, cfg.dropout, self.rng, self.training)
        return out, (c_fc, c_act, c_proj, c_drop)

    def _mlp_backward(self, dout, cache, h, grads):
        ops = self.ops
        c_fc, c_act, c_proj, c_drop = cache
        dout = ops.dropout_backward(dout, c_drop)
        dhid, grads[h + "mlp.c_proj.weight"], db = ops.linear_backward(dout, c_proj)
        if db is not None:
            grads[h + "mlp.c_proj.bias"] = db
        act_backward = ops.gelu_backward if self.config.activation == "gelu" \
            else ops.relu_backward
        dhid = act_backward(dhid, c_act)
        dx, grads[h + "mlp.c_fc.weight"], db = ops.linear_backward(dhid, c_fc)
        if db is not None:
            grads[h + "mlp.c_fc.bias"] = db
        return dx

    def _ln_forward(self, x, name):
        """LayerNorm in the parameters' dtype (float32 in mixed precision too)."""
        return self.ops.layernorm_forward(x, self.params[name + ".weight"],
                                          self.params.get(name + ".bias"))

    def _ln_backward(self, dy, cache, name, grads):
        dx, grads[name + ".weight"], db = self.ops.layernorm_backward(
            dy.astype(self.dtype, copy=False), cache)
        if db is not None:
            grads[name + ".bias"] = db
        return dx

    # -- forward -----------------------------------------------------------------------
    def forward(self, idx, targets=None):
        """Args:
            idx: (B, T) integer token ids, T <= block_size.
            targets: (B, T) next-token ids (-1 = ignore), or None.
        Returns:
            logits: (B, T, V)
            loss: 0-d array (mean cross-entropy in nats), or None without targets.
        """
        cfg, p, ops = self.config, self.params, self.ops
        # the weights of the matmuls: the parameters themselves, or their float16 copies
        self._run_params = p if self.compute_dtype is None else {
            name: w.astype(self.compute_dtype) for name, w in p.items()
            if ".ln_" not in name and name != "transformer.wpe.weight"}
        if idx.ndim != 2:
            raise ValueError(f"idx must be (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if T > cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {cfg.block_size}; "
                             f"crop the input to its last {cfg.block_size} tokens")
        caches = {}
        tok, caches["wte"] = ops.embedding_forward(idx, p["transformer.wte.weight"])  # (B,T,C)
        if cfg.pos_encoding == "learned":
            pos, caches["wpe"] = ops.position_embedding_forward(p["transformer.wpe.weight"], T)
        else:
            pos = self._pos_table[:T]  # (T, C), fixed
        x = tok + pos  # (B, T, C), pos broadcast over the batch
        x, caches["drop"] = ops.dropout_forward(x, cfg.dropout, self.rng, self.training)

        for i in range(cfg.n_layer):
            h = f"transformer.h.{i}."
            if cfg.norm == "pre":  # x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))
                a, c_ln1 = self._ln_forward(x, h + "ln_1")
                a, c_attn = self._attn_forward(self._low(a), h)
                x = x + a
                m, c_ln2 = self._ln_forward(x, h + "ln_2")
                m, c_mlp = self._mlp_forward(self._low(m), h)
                x = x + m
            else:  # x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))
                a, c_attn = self._attn_forward(self._low(x), h)
                x, c_ln1 = self._ln_forward(x + a, h + "ln_1")
                m, c_mlp = self._mlp_forward(self._low(x), h)
                x, c_ln2 = self._ln_forward(x + m, h + "ln_2")
            caches[i] = (c_ln1, c_attn, c_ln2, c_mlp)

        if cfg.norm == "pre":
            x, caches["ln_f"] = self._ln_forward(x, "transformer.ln_f")
        head = self._p("transformer.wte.weight" if cfg.tie_weights else "lm_head.weight")
        logits, caches["head"] = ops.linear_forward(self._low(x), head)  # (B, T, V)
        logits = logits.astype(self.dtype, copy=False)  # the softmax in float32
        loss = None
        if targets is not None:
            loss, caches["loss"] = ops.cross_entropy_forward(logits, targets)
        self._caches = caches
        self._run_params = None
        return logits, loss

    # -- backward: the forward above, reversed ----------------------------------------
    def backward(self, dlogits=None, loss_scale=1.0):
        """Gradients of the last forward's loss (or of sum(logits * dlogits) when given).

        Returns a dict with the keys of `params`. The tied embedding gets the sum of its two
        uses (output head and input lookup). loss_scale multiplies the loss gradient (mixed
        precision, precision.LossScaler); in mixed precision the matmul weights' gradients
        are float16, the others float32.
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

        dx = ops.dropout_backward(dx, caches["drop"])  # (B, T, C)
        if cfg.pos_encoding == "learned":
            grads["transformer.wpe.weight"] = ops.position_embedding_backward(
                dx.sum(axis=0), caches["wpe"])
        dwte = ops.embedding_backward(dx, caches["wte"])  # (V, C)
        if cfg.tie_weights:
            dwte += dhead  # the tied table is used twice: input lookup and output head
        else:
            grads["lm_head.weight"] = dhead
        grads["transformer.wte.weight"] = dwte
        return {name: grads[name] for name in self.params}
