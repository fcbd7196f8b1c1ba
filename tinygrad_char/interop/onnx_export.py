"""ONNX export of the GPT's forward, and a small wrapper that samples from the exported file.

    model_proto = export_onnx(model, tokenizer)            # an onnx.ModelProto
    save_onnx(model, tokenizer, "model.onnx")              # checked, then written
    onnx_model, tokenizer, meta = load_onnx("model.onnx")  # runs on onnxruntime
    texts = generate_text(onnx_model, tokenizer, "ROMEO:", 200, use_cache=False)

The graph is written node by node with `onnx.helper` from our parameter dict (no PyTorch),
following `GPT.forward` line by line in eval mode (no dropout):

    input   idx     int64 (batch, seq), seq <= block_size
    output  logits  float32 (batch, seq, V)

Initializers keep our names and PyTorch's layouts (`Linear.weight` is (out, in)); each
linear is MatMul(x, Transpose(W)) (+ b), which onnxruntime folds once at load. The tied
head reads the same `transformer.wte.weight` initializer as the embedding's Gather.
LayerNormalization is the opset-17 op (eps 1e-5); RMSNorm (no opset-17 op) is written out
with Mul/ReduceMean/Sqrt/Div; the tanh GELU with Mul/Add/Tanh (GELU_SCALE, GELU_CUBIC as in
activations.py), the exact GELU with Erf, SwiGLU with Sigmoid; RoPE rotates q and k with
precomputed cos/sin tables; grouped-query attention broadcasts each key/value head over
its G query heads in a 5-d MatMul. The causal mask and the position tables are
precomputed for block_size and sliced to the input's dynamic T, so seq <= block_size:
the limit is stated in the input's description and in the metadata
(`tinygrad_char.max_seq`), and `OnnxModel.forward` refuses a longer input with one line.
The config, the tokenizer, the step and a SHA-256 of the weights travel in the model's
metadata_props, so the .onnx file alone is enough to sample, and a checkpoint can be
checked against it.

What this file deliberately is not: an exporter of the backward or of training-mode
dropout, a general graph builder, or a key/value-cache graph (the wrapper runs the whole
cropped window every step). `onnx` and `onnxruntime` are imported lazily, so the package
imports without them (the optional extra `onnx` installs both).
"""

import hashlib
import json
import os

import numpy as np

from tinygrad_char.ops.activations import GELU_CUBIC, GELU_SCALE, SQRT_HALF
from tinygrad_char.ops.attention import causal_mask_bias
from tinygrad_char.backend import BackendError, get_backend
from tinygrad_char.fused import dispatch
from tinygrad_char.training.checkpoint import load_checkpoint, peek_checkpoint
from tinygrad_char.ops.embedding import sinusoidal_encoding
from tinygrad_char.ops.layernorm import LN_EPS
from tinygrad_char.model import GPTConfig, param_shapes
from tinygrad_char.ops.rope import rope_tables
from tinygrad_char.training.tokenizer import CharTokenizer

OPSET = 17  # LayerNormalization needs opset 17
IR_VERSION = 8  # the IR version that goes with opset 17: loadable by onnxruntime >= 1.11
META_PREFIX = "tinygrad_char."  # metadata_props keys: config, tokenizer, step, max_seq,
#                                  weights_sha256


def weights_sha256(params, to_host=np.asarray):
    """A SHA-256 of the weights as the ONNX file holds them: for each name in sorted
    order, the name, then the tensor in float32, C order, little-endian. Hex string."""
    digest = hashlib.sha256()
    for name in sorted(params):
        digest.update(name.encode() + b"\0")
        digest.update(np.ascontiguousarray(to_host(params[name]), dtype="<f4").tobytes())
    return digest.hexdigest()


def _require(module):
    """Import onnx or onnxruntime, or raise one BackendError naming the fix (a BackendError,
    so scripts report it as they report a missing CuPy)."""
    try:
        if module == "onnx":
            import onnx
            return onnx
        import onnxruntime
        return onnxruntime
    except ImportError as e:
        raise BackendError(f"{module} is not installed ({e}); install the ONNX extra: "
                           f'pip install "tinygrad-char[onnx]"') from None


class _Graph:
    """Collects nodes and initializers; every helper returns its output's name.

    Names are generated from a prefix and a counter, so the graph reads in forward order
    in a viewer such as Netron."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes, self.initializers = [], []
        self._count = 0

    def name(self, prefix):
        self._count += 1
        return f"{prefix}_{self._count}"

    def node(self, op, inputs, prefix, **attrs):
        out = self.name(prefix)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, name, array):
        """An initializer holding `array` (float arrays are stored as float32)."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name=name))
        return name

    # -- the model's ops, each the ONNX twin of one of our forwards ---------------------
    def linear(self, x, params, name, prefix):
        """y = x W^T + b (linear.py's linear_forward); W is (out, in) as ours."""
        w_t = self.node("Transpose", [params[name + ".weight"]], prefix + ".wT", perm=[1, 0])
        y = self.node("MatMul", [x, w_t], prefix + ".matmul")  # (..., out)
        if name + ".bias" in params:
            y = self.node("Add", [y, params[name + ".bias"]], prefix + ".add_bias")
        return y

    def layernorm(self, x, params, name, cfg):
        """LayerNormalization over the last axis, eps 1e-5 (layernorm_forward), or RMSNorm
        x / sqrt(mean(x^2) + eps) * w (rmsnorm_forward)."""
        if cfg.normalization == "rmsnorm":
            ms = self.node("ReduceMean", [self.node("Mul", [x, x], name + ".x2")],
                           name + ".mean_x2", axes=[-1], keepdims=1)  # (..., 1)
            rms = self.node("Sqrt", [self.node("Add", [ms, "norm.eps"], name + ".add_eps")],
                            name + ".rms")
            norm = self.node("Div", [x, rms], name + ".norm")
            return self.node("Mul", [norm, params[name + ".weight"]], name)
        inputs = [x, params[name + ".weight"]]
        if name + ".bias" in params:  # B is optional in opset 17: absent when bias=False
            inputs.append(params[name + ".bias"])
        return self.node("LayerNormalization", inputs, name, axis=-1, epsilon=LN_EPS)

    def gelu(self, x, prefix):
        """y = 0.5 x (1 + tanh(s (x + a x^3))), s = sqrt(2/pi), a = 0.044715 (gelu_forward)."""
        x3 = self.node("Mul", [self.node("Mul", [x, x], prefix + ".x2"), x], prefix + ".x3")
        inner = self.node("Add", [x, self.node("Mul", [x3, "gelu.cubic"], prefix + ".ax3")],
                          prefix + ".inner")
        t = self.node("Tanh", [self.node("Mul", [inner, "gelu.scale"], prefix + ".u")],
                      prefix + ".tanh")
        half_x = self.node("Mul", [x, "gelu.half"], prefix + ".half_x")
        return self.node("Mul", [half_x, self.node("Add", [t, "one"], prefix + ".1+t")],
                         prefix + ".gelu")

    def gelu_exact(self, x, prefix):
        """y = 0.5 x (1 + erf(x / sqrt(2))) (gelu_exact_forward)."""
        e = self.node("Erf", [self.node("Mul", [x, "gelu.sqrt_half"], prefix + ".x/sqrt2")],
                      prefix + ".erf")
        half_x = self.node("Mul", [x, "gelu.half"], prefix + ".half_x")
        return self.node("Mul", [half_x, self.node("Add", [e, "one"], prefix + ".1+erf")],
                         prefix + ".gelu_exact")

    def rope(self, x, cos, sin, prefix):
        """x (B, T, H, hs) rotated: (x1 cos - x2 sin, x2 cos + x1 sin) (rope_forward);
        cos, sin (T, 1, hs/2), broadcast over B and H."""
        x1, x2 = self.name(prefix + ".x1"), self.name(prefix + ".x2")
        self.nodes.append(self.helper.make_node("Split", [x, "split.halves"], [x1, x2],
                                                name=prefix + ".split", axis=-1))
        y1 = self.node("Sub", [self.node("Mul", [x1, cos], prefix + ".x1c"),
                               self.node("Mul", [x2, sin], prefix + ".x2s")], prefix + ".y1")
        y2 = self.node("Add", [self.node("Mul", [x2, cos], prefix + ".x2c"),
                               self.node("Mul", [x1, sin], prefix + ".x1s")], prefix + ".y2")
        return self.node("Concat", [y1, y2], prefix + ".rotated", axis=-1)


def _attention(g, x, params, h, cfg, mask, rope_cs):
    """c_attn -> [rope] -> causal grouped-query attention -> c_proj (eval mode).

    Query head h = j G + g reads key/value head j (G = NH / NKV; G = 1 without GQA): q is
    laid out (B, NKV, G, T, hs) and k, v (B, NKV, 1, ., .), so one broadcasting MatMul
    pairs each query head with its group's keys. x: (B, T, C); mask: the (T, T) additive
    causal mask already sliced to T; rope_cs: (cos, sin) sliced to T, or None."""
    hs = cfg.n_embd // cfg.n_head  # the head counts are in the shape.* initializers
    qkv = g.linear(x, params, h + "attn.c_attn", h + "attn.c_attn")  # (B, T, (NH+2NKV) hs)
    q, k, v = (g.name(h + "attn." + s) for s in "qkv")
    g.nodes.append(g.helper.make_node("Split", [qkv, "split.qkv"], [q, k, v],
                                      name=h + "attn.split", axis=2))
    q = g.node("Reshape", [q, "shape.q_heads"], h + "attn.q_heads")  # (B, T, NH, hs)
    k = g.node("Reshape", [k, "shape.kv_heads"], h + "attn.k_heads")  # (B, T, NKV, hs)
    if rope_cs is not None:
        q = g.rope(q, *rope_cs, h + "attn.rope_q")
        k = g.rope(k, *rope_cs, h + "attn.rope_k")
    q = g.node("Reshape", [q, "shape.q_groups"], h + "attn.q_groups")  # (B, T, NKV, G, hs)
    q = g.node("Transpose", [q], h + "attn.q", perm=[0, 2, 3, 1, 4])  # (B, NKV, G, T, hs)
    k = g.node("Reshape", [k, "shape.kv_groups"], h + "attn.k_groups")  # (B, T, NKV, 1, hs)
    k_t = g.node("Transpose", [k], h + "attn.k_t", perm=[0, 2, 3, 4, 1])  # (B,NKV,1,hs,T)
    v = g.node("Reshape", [v, "shape.kv_groups"], h + "attn.v_groups")  # (B, T, NKV, 1, hs)
    v = g.node("Transpose", [v], h + "attn.v", perm=[0, 2, 3, 1, 4])  # (B, NKV, 1, T, hs)
    att = g.node("MatMul", [q, k_t], h + "attn.qk")  # (B, NKV, G, T, T)
    scale = g.const(h + "attn.scale", np.array(1.0 / np.sqrt(hs)))
    att = g.node("Mul", [att, scale], h + "attn.scaled")
    att = g.node("Add", [att, mask], h + "attn.masked")  # -inf above the diagonal
    att = g.node("Softmax", [att], h + "attn.softmax", axis=-1)
    y = g.node("MatMul", [att, v], h + "attn.av")  # (B, NKV, G, T, hs)
    y = g.node("Transpose", [y], h + "attn.merge", perm=[0, 3, 1, 2, 4])  # (B,T,NKV,G,hs)
    y = g.node("Reshape", [y, "shape.merge"], h + "attn.merged")  # (B, T, C)
    return g.linear(y, params, h + "attn.c_proj", h + "attn.c_proj")


def _mlp(g, x, params, h, cfg):
    """c_fc -> activation -> c_proj, or c_proj(silu(c_gate(x)) * c_fc(x)). x (B, T, C)."""
    hid = g.linear(x, params, h + "mlp.c_fc", h + "mlp.c_fc")  # (B, T, F)
    if cfg.activation == "gelu":
        hid = g.gelu(hid, h + "mlp")
    elif cfg.activation == "gelu_exact":
        hid = g.gelu_exact(hid, h + "mlp")
    elif cfg.activation == "swiglu":
        gate = g.linear(x, params, h + "mlp.c_gate", h + "mlp.c_gate")  # (B, T, F)
        silu = g.node("Mul", [gate, g.node("Sigmoid", [gate], h + "mlp.sigmoid")],
                      h + "mlp.silu")
        hid = g.node("Mul", [silu, hid], h + "mlp.swiglu")
    else:
        hid = g.node("Relu", [hid], h + "mlp.relu")
    return g.linear(hid, params, h + "mlp.c_proj", h + "mlp.c_proj")


def export_onnx(model, tokenizer=None, step=0):
    """The ONNX graph of `model.forward(idx)` in eval mode, as an onnx.ModelProto.

    Args:
        model: a GPT (any backend or dtype; the graph is float32).
        tokenizer: the CharTokenizer to store in the metadata (None: none stored, then
            `load_onnx` needs one passed in).
        step: the training step to record.
    Returns:
        onnx.ModelProto with input `idx` int64 (batch, seq) and output `logits` float32
        (batch, seq, V), opset 17; the caller may check it with onnx.checker.
    """
    onnx = _require("onnx")
    helper, TP = onnx.helper, onnx.TensorProto
    cfg = model.config
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but config.vocab_size is "
                         f"{cfg.vocab_size}; pass the tokenizer the model was built for")
    C, NH, NKV = cfg.n_embd, cfg.n_head, cfg.kv_heads
    hs = C // NH
    g = _Graph(onnx)
    to_host = model.backend.to_numpy
    params = {name: g.const(name, to_host(p)) for name, p in model.params.items()}
    # constants shared by every layer
    if cfg.activation in ("gelu", "gelu_exact"):  # (an unused initializer makes ort warn)
        g.const("one", np.array(1.0))
        g.const("gelu.half", np.array(0.5))
    if cfg.activation == "gelu":
        g.const("gelu.scale", np.array(GELU_SCALE))
        g.const("gelu.cubic", np.array(GELU_CUBIC))
    if cfg.activation == "gelu_exact":
        g.const("gelu.sqrt_half", np.array(SQRT_HALF))
    if cfg.normalization == "rmsnorm":
        g.const("norm.eps", np.array(LN_EPS))
    g.const("split.qkv", np.array([C, NKV * hs, NKV * hs], dtype=np.int64))
    # reshapes (0: copy that dimension of the input, B and T)
    g.const("shape.q_heads", np.array([0, 0, NH, hs], dtype=np.int64))
    g.const("shape.kv_heads", np.array([0, 0, NKV, hs], dtype=np.int64))
    g.const("shape.q_groups", np.array([0, 0, NKV, NH // NKV, hs], dtype=np.int64))
    g.const("shape.kv_groups", np.array([0, 0, NKV, 1, hs], dtype=np.int64))
    g.const("shape.merge", np.array([0, 0, C], dtype=np.int64))
    g.const("zero", np.array([0], dtype=np.int64))
    g.const("zeros2", np.array([0, 0], dtype=np.int64))
    g.const("axes01", np.array([0, 1], dtype=np.int64))
    g.const("causal_mask", causal_mask_bias(cfg.block_size, np, np.float32))  # (bs, bs)

    # T, the dynamic sequence length, as a (1,) int64 tensor
    idx_shape = g.node("Shape", ["idx"], "idx_shape")  # (2,): [B, T]
    T = g.node("Slice", [idx_shape, g.const("one_i", np.array([1], dtype=np.int64)),
                         g.const("two_i", np.array([2], dtype=np.int64))], "T")  # (1,)
    TT = g.node("Concat", [T, T], "TT", axis=0)  # (2,): [T, T]
    mask = g.node("Slice", ["causal_mask", "zeros2", TT, "axes01"], "mask")  # (T, T)

    tok = g.node("Gather", [params["transformer.wte.weight"], "idx"], "wte",
                 axis=0)  # (B, T, C)
    rope_cs = None
    if cfg.pos_encoding == "rope":  # no additive positions: q and k are rotated instead
        x = tok
        g.const("split.halves", np.array([hs // 2, hs // 2], dtype=np.int64))
        cos, sin = rope_tables(0, cfg.block_size, hs, cfg.rope_base, np, "float32")
        rope_cs = tuple(g.node("Slice", [g.const("rope." + n, t[:, None, :]), "zero", T,
                                         "zero"], "rope." + n + "_T")  # (T, 1, hs/2)
                        for n, t in (("cos", cos), ("sin", sin)))
    else:
        if cfg.pos_encoding == "learned":
            table = params["transformer.wpe.weight"]  # (block_size, C)
        else:
            table = g.const("sinusoidal",
                            sinusoidal_encoding(cfg.block_size, C, np, "float32"))
        pos = g.node("Slice", [table, "zero", T, "zero"], "pos")  # (T, C): rows 0..T-1
        x = g.node("Add", [tok, pos], "x")  # (B, T, C), pos broadcast over the batch

    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        if cfg.norm == "pre":  # x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))
            a = _attention(g, g.layernorm(x, params, h + "ln_1", cfg), params, h, cfg, mask,
                           rope_cs)
            x = g.node("Add", [x, a], h + "residual1")
            m = _mlp(g, g.layernorm(x, params, h + "ln_2", cfg), params, h, cfg)
            x = g.node("Add", [x, m], h + "residual2")
        else:  # x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))
            a = _attention(g, x, params, h, cfg, mask, rope_cs)
            x = g.layernorm(g.node("Add", [x, a], h + "residual1"), params, h + "ln_1", cfg)
            m = _mlp(g, x, params, h, cfg)
            x = g.layernorm(g.node("Add", [x, m], h + "residual2"), params, h + "ln_2", cfg)

    if cfg.norm == "pre":
        x = g.layernorm(x, params, "transformer.ln_f", cfg)
    head = "transformer.wte.weight" if cfg.tie_weights else "lm_head.weight"
    head_t = g.node("Transpose", [params[head]], "head.wT", perm=[1, 0])  # (C, V)
    g.nodes.append(helper.make_node("MatMul", [x, head_t], ["logits"], name="head"))

    graph = helper.make_graph(
        g.nodes, "tinygrad_char_gpt",
        inputs=[helper.make_tensor_value_info(
            "idx", TP.INT64, ["batch", "seq"],
            doc_string=f"token ids (batch, seq), seq <= block_size = {cfg.block_size}; "
                       f"crop longer inputs to their last {cfg.block_size} ids")],
        outputs=[helper.make_tensor_value_info("logits", TP.FLOAT,
                                               ["batch", "seq", cfg.vocab_size])],
        initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tinygrad_char", ir_version=IR_VERSION,
                              doc_string=f"character-level GPT; seq <= {cfg.block_size}")
    meta = {"config": json.dumps(cfg.to_dict()), "step": str(int(step)),
            "max_seq": str(cfg.block_size),
            "weights_sha256": weights_sha256(model.params, to_host)}
    if tokenizer is not None:
        meta["tokenizer"] = json.dumps(tokenizer.to_dict())
    helper.set_model_props(proto, {META_PREFIX + k: v for k, v in meta.items()})
    return proto


def save_onnx(model, tokenizer, path, step=0):
    """Export `model`, run onnx.checker on it, and write it to `path`. Returns the proto."""
    onnx = _require("onnx")
    proto = export_onnx(model, tokenizer, step)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return proto


class OnnxModel:
    """Enough of GPT's interface to sample from an exported model with onnxruntime.

        logits, _ = onnx_model.forward(idx)   # idx (B, T) int, T <= block_size
        sampling.generate(onnx_model, idx, 200, use_cache=False)

    Only the no-cache path of `sampling.generate` works: every step runs the whole cropped
    window (there are no params for the KV-cache forward). Arrays are NumPy. It holds no
    per-call state: one instance may serve many threads (InferenceSession.run is
    thread-safe), and forward never writes to the object.

    Args:
        source: an onnxruntime.InferenceSession, a path, serialized bytes or an
            onnx.ModelProto.
        config: the GPTConfig it was exported from.
        providers: onnxruntime execution providers (default: the CPU one).
    Attributes: config, session, xp (numpy), backend (the numpy Backend, for to_numpy),
    dtype ("float32"), training (False), ops (the op table, of which generation reads
    `sample_from_uniforms`).
    """

    supports_kv_cache = False  # tells callers to pass use_cache=False to generate
    runtime = "onnxruntime"  # what serve.py's /health reports as the backend

    def __init__(self, source, config, providers=None):
        self.session = source if hasattr(source, "run") else _session(source, providers)
        self.config = config
        self.backend = get_backend("numpy")
        self.xp = np
        self.dtype = "float32"
        self.training = False
        self.ops = dispatch.select_ops("auto", "numpy", config, self.dtype)

    def eval(self):
        self.training = False
        return self

    def train(self):
        raise RuntimeError("an exported ONNX model is inference only; train the GPT and "
                           "export again")

    def num_params(self):
        """Parameters counted as GPT.num_params counts them (a tied head once)."""
        return int(sum(np.prod(s) for s in param_shapes(self.config).values()))

    def forward(self, idx, targets=None):
        """logits (B, T, V) float32 for idx (B, T), T <= block_size; loss is always None."""
        if targets is not None:
            raise ValueError("OnnxModel.forward computes no loss; call it without targets")
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"idx must be (B, T), got shape {tuple(idx.shape)}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size "
                             f"{self.config.block_size}; crop the input to its last "
                             f"{self.config.block_size} tokens")
        (logits,) = self.session.run(["logits"], {"idx": idx.astype(np.int64, copy=False)})
        return logits, None


def _session(source, providers=None):
    """An onnxruntime.InferenceSession on a path, bytes or ModelProto; a ValueError naming
    the file when onnxruntime cannot load it."""
    ort = _require("onnxruntime")
    if hasattr(source, "SerializeToString"):  # an onnx.ModelProto
        source = source.SerializeToString()
    elif not isinstance(source, bytes):
        source = os.fspath(source)
        if not os.path.isfile(source):
            raise ValueError(f"{source}: no such file; export one with "
                             f"examples/export_onnx.py")
    try:
        return ort.InferenceSession(source, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph types
        where = source if isinstance(source, str) else "model"
        raise ValueError(f"{where}: onnxruntime cannot load it "
                         f"({str(e).splitlines()[0][:200]}); export it again") from None


def load_onnx(path, tokenizer=None, providers=None):
    """Open an exported model for sampling, like checkpoint.load_checkpoint. Needs only
    onnxruntime: the config and vocabulary come from the file's metadata.

    Returns (OnnxModel, CharTokenizer, meta) with meta = {path, step, config (dict),
    tokenizer (dict or None), dtype, weights_sha256 (None in files exported before it was
    stored)}. `tokenizer` overrides (or stands in for a missing)
    stored vocabulary."""
    path = os.fspath(path)
    session = _session(path, providers)
    props = session.get_modelmeta().custom_metadata_map
    try:
        config = GPTConfig.from_dict(json.loads(props[META_PREFIX + "config"]))
        stored = props.get(META_PREFIX + "tokenizer")
        stored = json.loads(stored) if stored else None
        step = int(props.get(META_PREFIX + "step", 0))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: no valid {META_PREFIX}config in the metadata ({e}); "
                         f"export it with examples/export_onnx.py") from None
    if tokenizer is None:
        if stored is None:
            raise ValueError(f"{path}: no tokenizer stored in the file; pass the one the "
                             f"model was trained with")
        tokenizer = CharTokenizer.from_dict(stored)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but the model's "
                         f"vocab_size is {config.vocab_size}")
    model = OnnxModel(session, config)
    meta = {"path": path, "step": step, "config": config.to_dict(), "tokenizer": stored,
            "dtype": "float32", "weights_sha256": props.get(META_PREFIX + "weights_sha256")}
    return model, tokenizer, meta


def load_for_sampling(checkpoint=None, onnx_path=None, backend="numpy"):
    """(model, tokenizer, meta) for the sampling scripts: the checkpoint on `backend`, or,
    when onnx_path is given, the exported model on onnxruntime (then `checkpoint`, if
    given too, must be the one it was exported from: same config, vocabulary and weights,
    the last by the SHA-256 stored at export).

    Pass use_cache=getattr(model, "supports_kv_cache", True) to generate / generate_text.
    Raises ValueError (or CheckpointError, BackendError) with a one-line message."""
    if onnx_path is None:
        if checkpoint is None:
            raise ValueError("give a checkpoint (--checkpoint PATH) or an exported model "
                             "(--onnx MODEL.onnx)")
        return load_checkpoint(checkpoint, backend=backend)
    if backend not in ("numpy", "auto"):
        raise ValueError(f"--backend {backend} does not apply to an ONNX model (it runs on "
                         f"onnxruntime's CPU provider); drop --backend or --onnx")
    model, tokenizer, meta = load_onnx(onnx_path)
    if checkpoint is not None:
        ckpt = peek_checkpoint(checkpoint)
        differ = None
        if GPTConfig.from_dict(ckpt["config"]).to_dict() != meta["config"] or \
                CharTokenizer.from_dict(ckpt["tokenizer"]) != tokenizer:
            differ = "their configs or vocabularies differ"
        elif meta["weights_sha256"] is not None:
            ckpt_model = load_checkpoint(checkpoint)[0]
            if weights_sha256(ckpt_model.params, ckpt_model.backend.to_numpy) != \
                    meta["weights_sha256"]:
                differ = "their weights differ: a checkpoint from another step?"
        if differ:
            raise ValueError(f"{onnx_path} was not exported from {checkpoint} ({differ}); "
                             f"export it again with examples/export_onnx.py, or drop one of "
                             f"the two")
    return model, tokenizer, meta
