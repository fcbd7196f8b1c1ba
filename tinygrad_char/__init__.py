"""tinygrad_char: a character-level GPT with hand-written forward and backward passes
on NumPy (CPU) or CuPy (CUDA).

    from tinygrad_char import GPT, GPTConfig, AdamW, clip_grad_norm, get_backend
    import tinygrad_char.runtime; tinygrad_char.runtime.setup()   # optional: threads etc.

`AdamW` and `clip_grad_norm` are optim's, with the fused kernels' step and norm where they
take the arrays (fused/dispatch.py); `tinygrad_char.optim` keeps the reference versions.
"""

from tinygrad_char.backend import BackendError, get_backend
from tinygrad_char.fused.dispatch import AdamW, clip_grad_norm
from tinygrad_char.model import GPT, ConfigError, GPTConfig
from tinygrad_char.optim import cosine_lr

__all__ = ["GPT", "GPTConfig", "AdamW", "get_backend", "clip_grad_norm", "cosine_lr",
           "BackendError", "ConfigError"]
__version__ = "0.1.0"
