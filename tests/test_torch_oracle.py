"""PyTorch autograd as an independent oracle: same weights, same batch, the logits, the
loss and every gradient must agree. Skipped with the reason when torch is absent."""

import itertools
import sys

import numpy as np
import pytest

from tinygrad_char import GPT, GPTConfig

from conftest import REPO, TOL

torch = pytest.importorskip("torch", reason="torch not installed: the PyTorch oracle needs it "
                                            "(pip install torch==2.13.0)")
sys.path.insert(0, str(REPO))
from benchmarks.torch_gpt import TorchGPT  # noqa: E402

VARIANTS = list(itertools.product([True, False], ["learned", "sinusoidal"], ["pre", "post"],
                                  ["gelu", "relu"], [True, False]))


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tie,pos,norm,act,bias", VARIANTS,
                         ids=["-".join(map(str, v)) for v in VARIANTS])
def test_matches_pytorch_autograd(dtype, tie, pos, norm, act, bias):
    cfg = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=32,
                    tie_weights=tie, pos_encoding=pos, norm=norm, activation=act, bias=bias)
    ours = GPT(cfg, dtype=dtype, seed=5)
    rng = np.random.default_rng(1)
    for p in ours.params.values():  # break the symmetric init of LayerNorm and biases
        p += (rng.standard_normal(p.shape) * 0.05).astype(p.dtype)
    idx = rng.integers(0, 13, size=(3, 16))
    targets = rng.integers(0, 13, size=(3, 16))
    targets[0, :4] = -1
    logits, loss = ours.forward(idx, targets)
    grads = ours.backward()

    tdtype = torch.float64 if dtype == "float64" else torch.float32
    twin = TorchGPT(cfg, ours.params, dtype=tdtype)
    t_logits, t_loss = twin(torch.as_tensor(idx), torch.as_tensor(targets))
    t_loss.backward()
    tol = TOL[dtype]
    assert rel(logits, t_logits.detach().numpy()) < tol
    assert rel(loss, t_loss.item()) < tol
    for name, g in twin.named_grads().items():
        assert rel(grads[name], g.numpy()) < tol, f"{name}: {rel(grads[name], g.numpy()):.2e}"
