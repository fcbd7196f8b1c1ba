"""The same GPT in PyTorch, for comparisons only (oracle tests and speed benchmarks).

It takes our flat parameter dict (nanoGPT names, PyTorch layouts) and computes the same
function with torch autograd. The library never imports this file or torch.
"""

import math

import torch
import torch.nn.functional as F


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


class TorchGPT(torch.nn.Module):
    """config: our GPTConfig (or anything with its fields); params: name -> array.

    sdpa=True uses F.scaled_dot_product_attention (the fast path for benchmarks);
    otherwise attention is written out as in our NumPy op (for exact comparisons).
    """

    def __init__(self, config, params, dtype=torch.float32, device="cpu", sdpa=False):
        super().__init__()
        self.config = config
        self.sdpa = sdpa
        self.p = torch.nn.ParameterDict()
        self.names = list(params)
        for name, value in params.items():
            t = torch.as_tensor(value).to(device=device, dtype=dtype).clone()
            self.p[name.replace(".", "__")] = torch.nn.Parameter(t)
        if config.pos_encoding == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(config.block_size, config.n_embd,
                                                        dtype).to(device))
        if config.pos_encoding == "rope":
            cos, sin = rope_cos_sin(config.block_size, config.n_embd // config.n_head,
                                    getattr(config, "rope_base", 10000.0), dtype)
            self.register_buffer("rope_cos", cos.to(device))
            self.register_buffer("rope_sin", sin.to(device))

    def w(self, name):
        key = name.replace(".", "__")
        return self.p[key] if key in self.p else None

    def named_grads(self):
        return {n: self.p[n.replace(".", "__")].grad for n in self.names}

    def _attn(self, x, h):
        cfg = self.config
        B, T, C = x.shape
        qkv = F.linear(x, self.w(h + "attn.c_attn.weight"), self.w(h + "attn.c_attn.bias"))
        hs = C // cfg.n_head
        nkv = getattr(cfg, "n_kv_head", None) or cfg.n_head
        q, k, v = qkv.split([C, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, cfg.n_head, hs).transpose(1, 2)  # (B, NH, T, hs)
        k, v = (t.view(B, T, nkv, hs).transpose(1, 2) for t in (k, v))  # (B, NKV, T, hs)
        if cfg.pos_encoding == "rope":
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if nkv != cfg.n_head:  # grouped-query: query head h reads kv head h // G
            k = k.repeat_interleave(cfg.n_head // nkv, dim=1)
            v = v.repeat_interleave(cfg.n_head // nkv, dim=1)
        drop = cfg.dropout if self.training else 0.0
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            att = F.dropout(att, drop, self.training)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        y = F.linear(y, self.w(h + "attn.c_proj.weight"), self.w(h + "attn.c_proj.bias"))
        return F.dropout(y, cfg.dropout, self.training)

    def _mlp(self, x, h):
        cfg = self.config
        up = F.linear(x, self.w(h + "mlp.c_fc.weight"), self.w(h + "mlp.c_fc.bias"))
        if cfg.activation == "swiglu":
            gate = F.linear(x, self.w(h + "mlp.c_gate.weight"), self.w(h + "mlp.c_gate.bias"))
            x = F.silu(gate) * up
        elif cfg.activation == "gelu_exact":
            x = F.gelu(up)
        else:
            x = F.gelu(up, approximate="tanh") if cfg.activation == "gelu" else F.relu(up)
        x = F.linear(x, self.w(h + "mlp.c_proj.weight"), self.w(h + "mlp.c_proj.bias"))
        return F.dropout(x, cfg.dropout, self.training)

    def _ln(self, x, name):
        if getattr(self.config, "normalization", "layernorm") == "rmsnorm":
            return F.rms_norm(x, (x.size(-1),), self.w(name + ".weight"), 1e-5)
        return F.layer_norm(x, (x.size(-1),), self.w(name + ".weight"), self.w(name + ".bias"),
                            1e-5)

    def forward(self, idx, targets=None):
        cfg = self.config
        B, T = idx.shape
        x = F.embedding(idx, self.w("transformer.wte.weight"))
        if cfg.pos_encoding == "learned":
            x = x + self.w("transformer.wpe.weight")[:T]
        elif cfg.pos_encoding == "sinusoidal":
            x = x + self.pe[:T]  # (rope rotates q and k in _attn instead)
        x = F.dropout(x, cfg.dropout, self.training)
        for i in range(cfg.n_layer):
            h = f"transformer.h.{i}."
            if cfg.norm == "pre":
                x = x + self._attn(self._ln(x, h + "ln_1"), h)
                x = x + self._mlp(self._ln(x, h + "ln_2"), h)
            else:
                x = self._ln(x + self._attn(x, h), h + "ln_1")
                x = self._ln(x + self._mlp(x, h), h + "ln_2")
        if cfg.norm == "pre":
            x = self._ln(x, "transformer.ln_f")
        head = self.w("transformer.wte.weight") if cfg.tie_weights else self.w("lm_head.weight")
        logits = F.linear(x, head)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss
