"""The same GPT in PyTorch, written once: the oracle of the tests, the comparison of the
benchmarks, and the reference forward of the nanoGPT import and export.

Its modules carry nanoGPT's names (transformer.wte, .h.{i}.ln_1, .attn.c_attn, .mlp.c_fc,
lm_head, ...), so its state dict is our flat parameter dict and nanoGPT's alike: `TorchGPT
(config, params)` loads our arrays by name; tests/nanogpt_twin.py is this model with
nanoGPT's fixed choices (exact GELU, learned positions, pre-norm, tied head) and its
GPTConfig. Every variant of our GPTConfig runs: RoPE, RMSNorm, SwiGLU, grouped-query
attention, sinusoidal positions, post-norm, untied head, no biases.

It lives in benchmarks/ (the PyTorch comparison model), where tests and benchmarks import
it; the library (tinygrad_char/) never imports it or torch.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_table(T, C, dtype):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, C, 2, dtype=torch.float64) / C)
    ang = pos * freq
    pe = torch.zeros(T, C, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang[:, : C // 2])
    return pe.to(dtype)


def rope_cos_sin(T, hs, base, dtype):
    """cos, sin (T, hs/2) of the rotate-half RoPE (Hugging Face Llama), in float64 first."""
    theta = base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * theta
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, H, T, hs): x' = x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Norm(nn.Module):
    """LayerNorm (weight, and bias when cfg.bias) or RMSNorm (weight only), eps 1e-5."""

    def __init__(self, cfg):
        super().__init__()
        self.rms = cfg.normalization == "rmsnorm"
        self.weight = nn.Parameter(torch.ones(cfg.n_embd))
        self.bias = nn.Parameter(torch.zeros(cfg.n_embd)) if cfg.bias and not self.rms else None

    def forward(self, x):
        if self.rms:
            return F.rms_norm(x, self.weight.shape, self.weight, 1e-5)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    """sdpa: F.scaled_dot_product_attention (fast); else written out as in our NumPy op
    (exact comparisons). mask_buffer: the causal mask as the buffer `bias`, as nanoGPT
    registers it without flash attention (PyTorch < 2), so its state dict holds attn.bias."""

    def __init__(self, cfg, sdpa, mask_buffer):
        super().__init__()
        C, hs = cfg.n_embd, cfg.n_embd // cfg.n_head
        self.n_head, self.kv_heads, self.hs = cfg.n_head, cfg.n_kv_head or cfg.n_head, hs
        self.rope, self.dropout, self.sdpa = cfg.pos_encoding == "rope", cfg.dropout, sdpa
        self.c_attn = nn.Linear(C, (cfg.n_head + 2 * self.kv_heads) * hs, bias=cfg.bias)
        self.c_proj = nn.Linear(C, C, bias=cfg.bias)
        if mask_buffer:
            T = cfg.block_size
            self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))
        self.mask_buffer = mask_buffer
        if self.rope:
            cos, sin = rope_cos_sin(cfg.block_size, hs, cfg.rope_base, torch.float64)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        NH, NKV, hs = self.n_head, self.kv_heads, self.hs
        q, k, v = self.c_attn(x).split([C, NKV * hs, NKV * hs], dim=2)
        q = q.view(B, T, NH, hs).transpose(1, 2)  # (B, NH, T, hs)
        k, v = (t.view(B, T, NKV, hs).transpose(1, 2) for t in (k, v))  # (B, NKV, T, hs)
        if self.rope:
            cos, sin = self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if NKV != NH:  # grouped-query: query head h reads kv head h // G
            k, v = k.repeat_interleave(NH // NKV, dim=1), v.repeat_interleave(NH // NKV, dim=1)
        drop = self.dropout if self.training else 0.0
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, NH, T, T)
            mask = self.bias[0, 0, :T, :T] != 0 if self.mask_buffer else \
                torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = F.dropout(att, drop, self.training) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, H = cfg.n_embd, cfg.mlp_ratio * cfg.n_embd
        self.activation, self.dropout = cfg.activation, cfg.dropout
        self.c_fc = nn.Linear(C, H, bias=cfg.bias)
        if cfg.activation == "swiglu":
            self.c_gate = nn.Linear(C, H, bias=cfg.bias)
        self.c_proj = nn.Linear(H, C, bias=cfg.bias)

    def forward(self, x):
        up = self.c_fc(x)
        if self.activation == "swiglu":
            h = F.silu(self.c_gate(x)) * up
        elif self.activation == "relu":
            h = F.relu(up)
        else:  # "gelu" is the tanh approximation (GPT-2), "gelu_exact" erf (nn.GELU())
            h = F.gelu(up, approximate="tanh" if self.activation == "gelu" else "none")
        return F.dropout(self.c_proj(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg, sdpa, mask_buffer):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.ln_1 = Norm(cfg)
        self.attn = CausalSelfAttention(cfg, sdpa, mask_buffer)
        self.ln_2 = Norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x):
        if self.pre:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))


class TorchGPT(nn.Module):
    """config: our GPTConfig (or anything with its fields); params: our name -> array
    (None: PyTorch's default initialisation), loaded in `dtype` on `device`.

    sdpa=True uses F.scaled_dot_product_attention (the fast path for benchmarks);
    otherwise attention is written out as in our NumPy op (for exact comparisons).
    forward(idx, targets=None) -> (logits (B, T, V), mean cross-entropy or None).
    """

    def __init__(self, config, params=None, dtype=torch.float32, device="cpu", sdpa=False,
                 mask_buffer=False):
        super().__init__()
        cfg = self.config = config
        modules = dict(wte=nn.Embedding(cfg.vocab_size, cfg.n_embd))
        if cfg.pos_encoding == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules["h"] = nn.ModuleList(Block(cfg, sdpa, mask_buffer) for _ in range(cfg.n_layer))
        if cfg.norm == "pre":
            modules["ln_f"] = Norm(cfg)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:  # one tensor, two names (nanoGPT's state dict holds both)
            self.transformer.wte.weight = self.lm_head.weight
        if cfg.pos_encoding == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(cfg.block_size, cfg.n_embd, dtype),
                                 persistent=False)
        self.to(device=device, dtype=dtype)
        self.names = list(params) if params is not None else \
            [n for n, _ in self.named_parameters()]
        with torch.no_grad():
            for name, value in (params or {}).items():
                self.get_parameter(name).copy_(torch.as_tensor(value))

    def named_grads(self):
        """Our parameter names -> their gradients (the tied wte's holds the head's too)."""
        return {n: self.get_parameter(n).grad for n in self.names}

    def forward(self, idx, targets=None):
        t = self.transformer
        T = idx.shape[1]
        x = t.wte(idx)  # (B, T, C)
        if "wpe" in t:
            x = x + t.wpe.weight[:T]
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pe[:T]  # (rope rotates q and k in the attention instead)
        x = F.dropout(x, self.config.dropout, self.training)
        for block in t.h:
            x = block(x)
        if "ln_f" in t:
            x = t.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss
