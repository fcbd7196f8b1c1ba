"""tinygrad_char: a character-level GPT with hand-written forward and backward passes
on NumPy (CPU) or CuPy (CUDA).

    from tinygrad_char import GPT, GPTConfig, AdamW, get_backend
"""

from tinygrad_char.backend import BackendError, get_backend
from tinygrad_char.model import GPT, ConfigError, GPTConfig
from tinygrad_char.optim import AdamW, clip_grad_norm, cosine_lr

__all__ = ["GPT", "GPTConfig", "AdamW", "get_backend", "clip_grad_norm", "cosine_lr",
           "BackendError", "ConfigError"]
__version__ = "0.1.0"
