"""A small, faithful twin of nanoGPT (github.com/karpathy/nanoGPT) for the interop tests:
model.py's GPT (benchmarks/torch_gpt.py's model, whose modules carry nanoGPT's names, so the
same state-dict keys; the tied head; the causal mask buffer only without flash attention, as
on PyTorch < 2), its GPTConfig (exactly its seven fields, so GPTConfig(**model_args)
refuses anything else), its generate(), and the
loading steps of sample.py (torch.load, the `_orig_mod.` prefix, a strict load_state_dict,
meta.pkl from data/<config["dataset"]>/meta.pkl, its encode/decode). One deliberate
difference: forward returns the logits of every position (nanoGPT's inference forward
returns only the last one, which is all generate() uses). Needs torch."""

import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: benchmarks/
from benchmarks.torch_gpt import TorchGPT  # noqa: E402
from tinygrad_char.model import GPTConfig as OurConfig  # noqa: E402


@dataclass
class GPTConfig:  # nanoGPT's, field for field
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(TorchGPT):
    """nanoGPT's GPT: benchmarks/torch_gpt.py's model (whose modules carry nanoGPT's names)
    with nanoGPT's fixed choices: learned positions, pre-norm LayerNorm, 4C MLP, the tied
    head, and nn.GELU() (exact erf; `approximate="tanh"` swaps in ours for comparisons).
    `flash=False` adds the attn.bias mask buffers (nanoGPT on PyTorch < 2). forward(idx)
    returns the logits (B, T, V)."""

    def __init__(self, cfg, approximate="none", flash=True):
        ours = OurConfig(vocab_size=cfg.vocab_size, block_size=cfg.block_size,
                         n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                         dropout=cfg.dropout, bias=cfg.bias,
                         activation="gelu" if approximate == "tanh" else "gelu_exact")
        super().__init__(ours, sdpa=flash, mask_buffer=not flash)

    def forward(self, idx):
        assert idx.size(1) <= self.config.block_size
        return super().forward(idx)[0]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            bs = self.config.block_size
            idx_cond = idx if idx.size(1) <= bs else idx[:, -bs:]
            logits = self(idx_cond)[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def load_like_sample(out_dir, cwd, approximate="none"):
    """(model, encode, decode) exactly as sample.py gets them with init_from='resume',
    device 'cpu', run from the folder `cwd` (where data/<dataset>/meta.pkl is looked up)."""
    checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu")
    model = GPT(GPTConfig(**checkpoint["model_args"]), approximate)
    state_dict = checkpoint["model"]
    unwanted_prefix = "_orig_mod."
    for k, v in list(state_dict.items()):
        if k.startswith(unwanted_prefix):
            state_dict[k[len(unwanted_prefix):]] = state_dict.pop(k)
    model.load_state_dict(state_dict)  # strict: every key, no other
    model.eval()
    meta_path = os.path.join(cwd, "data", checkpoint["config"]["dataset"], "meta.pkl")
    with open(meta_path, "rb") as f:
        meta = pickle.load(f)
    stoi, itos = meta["stoi"], meta["itos"]
    return model, (lambda s: [stoi[c] for c in s]), (lambda ids: "".join(itos[i] for i in ids))
