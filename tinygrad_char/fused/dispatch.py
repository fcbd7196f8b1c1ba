"""The one place that decides which implementation of each op runs: the xp ops of
tinygrad_char/ops/, the CUDA kernels of fused/cuda.py, or the numba CPU kernels of fused/cpu/.
"""

from types import SimpleNamespace

from tinygrad_char.ops import (activations, attention, cross_entropy, dropout, embedding,
                               layernorm, linear, rope)
from tinygrad_char import optim
from tinygrad_char.backend import BackendError
from tinygrad_char.fused.cuda import (FIX, FusedAdamW, _on_device, attention_backward,
                                      attention_forward, cross_entropy_backward,
                                      cross_entropy_forward, embedding_backward,
                                      gelu_backward, gelu_forward, gelu_bias_backward,
                                      gelu_bias_forward, gelu_bias_backward_xp,
                                      gelu_bias_forward_xp, layernorm_backward,
                                      layernorm_forward)

# -- dispatch ---------------------------------------------------------------------------

KERNEL_MODES = ("auto", "xp", "fused", "cpu")
CPU_FIX = 'install numba (pip install numba, or reinstall tinygrad-char), or use --kernels xp'


def _xp_ops():
    return dict(
        embedding_forward=embedding.embedding_forward,
        embedding_backward=embedding.embedding_backward,
        position_embedding_forward=embedding.position_embedding_forward,
        position_embedding_backward=embedding.position_embedding_backward,
        linear_forward=linear.linear_forward,
        linear_backward=linear.linear_backward,
        layernorm_forward=layernorm.layernorm_forward,
        layernorm_backward=layernorm.layernorm_backward,
        rmsnorm_forward=layernorm.rmsnorm_forward,
        rmsnorm_backward=layernorm.rmsnorm_backward,
        rope_forward=rope.rope_forward,
        rope_backward=rope.rope_backward,
        attention_forward=attention.attention_forward,
        attention_backward=attention.attention_backward,
        gqa_attention_forward=attention.gqa_attention_forward,
        gqa_attention_backward=attention.gqa_attention_backward,
        cached_attention_forward=attention.cached_attention_forward,
        gelu_forward=activations.gelu_forward,
        gelu_backward=activations.gelu_backward,
        gelu_bias_forward=gelu_bias_forward_xp,
        gelu_bias_backward=gelu_bias_backward_xp,
        relu_forward=activations.relu_forward,
        relu_backward=activations.relu_backward,
        gelu_exact_forward=activations.gelu_exact_forward,
        gelu_exact_backward=activations.gelu_exact_backward,
        swiglu_forward=activations.swiglu_forward,
        swiglu_backward=activations.swiglu_backward,
        dropout_forward=dropout.dropout_forward,
        dropout_backward=dropout.dropout_backward,
        cross_entropy_forward=cross_entropy.cross_entropy_forward,
        cross_entropy_backward=cross_entropy.cross_entropy_backward,
        AdamW=optim.AdamW,
    )


def _fused_ops():
    """The ops that have a kernel, by the names `_xp_ops` uses for their twins."""
    return dict(
        embedding_backward=embedding_backward,
        layernorm_forward=layernorm_forward,
        layernorm_backward=layernorm_backward,
        attention_forward=attention_forward,
        attention_backward=attention_backward,
        gelu_forward=gelu_forward,
        gelu_backward=gelu_backward,
        gelu_bias_forward=gelu_bias_forward,
        gelu_bias_backward=gelu_bias_backward,
        cross_entropy_forward=cross_entropy_forward,
        cross_entropy_backward=cross_entropy_backward,
        AdamW=FusedAdamW,
    )


def _cpu_ops():
    """The numba CPU kernels (tinygrad_char/fused/cpu/) by the names of their twins;
    empty when numba does not import."""
    from tinygrad_char.fused import cpu as cpu_kernels

    return cpu_kernels.ops() if cpu_kernels.numba_available() else {}


def _first_array(obj):
    """The first array in obj: obj itself, or the first array inside a cache (a dict, or a
    tuple), or None (a Python number)."""
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for item in obj:
            found = _first_array(item)
            if found is not None:
                return found
        return None
    return obj if hasattr(obj, "dtype") and hasattr(obj, "shape") else None


def _by_array_type(cpu_op, gpu_op):
    """One op that runs `gpu_op` on CuPy arrays and `cpu_op` otherwise, deciding on the
    first array among its arguments (x, qkv, logits, dy; for cross_entropy_backward, whose
    first argument is the number dloss, the cache's)."""
    def op(*args, **kwargs):
        return (gpu_op if _on_device(_first_array(args)) else cpu_op)(*args, **kwargs)

    op.__name__ = getattr(cpu_op, "__name__", "op")
    op.__doc__ = f"auto: {gpu_op.__module__}.{gpu_op.__name__} on CuPy arrays, " \
                 f"{cpu_op.__module__}.{cpu_op.__name__} otherwise."
    return op


def _auto_adamw(cpu_cls, gpu_cls):
    def make(params, *args, **kwargs):
        first = next(iter(params.values()), None)
        cls = gpu_cls if first is not None and _on_device(first) else cpu_cls
        return cls(params, *args, **kwargs)

    make.__doc__ = f"auto: {gpu_cls.__name__} for CuPy parameters, {cpu_cls.__name__} otherwise."
    return make


def select_ops(mode):
    """The op functions for a kernels mode, as a namespace with the same attribute names
    in every mode (ops.layernorm_forward, ..., ops.AdamW).

    This is the one place dispatch is decided:
    - "xp": the tinygrad_char op modules, on NumPy or CuPy (the readable reference).
    - "fused": the CUDA wrappers of this module where a kernel exists, the xp ops elsewhere
      (linear: cuBLAS through CuPy already; dropout, embedding forward, ReLU); needs CuPy
      and a working GPU, and raises BackendError saying so otherwise.
    - "cpu": the numba kernels of cpu_kernels/ where one exists (every op of the GPT
      block, the linear layers' matmuls cut over the kernels' threads), the xp ops
      elsewhere (RMSNorm, RoPE, SwiGLU, the KV-cache path); needs numba, and raises
      BackendError naming the fix otherwise.
    - "auto" (the default): per call, by the arrays' type: the CUDA kernels on CuPy arrays,
      the numba kernels on NumPy arrays when numba imports, the xp ops otherwise. Every
      wrapper also falls back to its twin for inputs its kernel does not take (float16,
      float64 where a kernel is float32 only), so "auto" runs wherever "xp" does.
    """
    if mode == "xp":
        return SimpleNamespace(mode="xp", **_xp_ops())
    if mode == "fused":
        from tinygrad_char.backend import _cupy_or_error

        try:
            _cupy_or_error()
        except BackendError as e:
            raise BackendError(f"kernels 'fused' need a CUDA GPU with CuPy ({e}); "
                               f"or {FIX}") from None
        return SimpleNamespace(mode="fused", **{**_xp_ops(), **_fused_ops()})
    if mode == "cpu":
        cpu = _cpu_ops()
        if not cpu:
            raise BackendError(f"kernels 'cpu' need numba, which does not import here; "
                               f"{CPU_FIX}")
        return SimpleNamespace(mode="cpu", **{**_xp_ops(), **cpu})
    if mode == "auto":
        cpu = {**_xp_ops(), **_cpu_ops()}  # numba kernels where they exist, else xp
        gpu = {**_xp_ops(), **_fused_ops()}
        ops = {}
        for name, cpu_op in cpu.items():
            if name == "AdamW":
                ops[name] = _auto_adamw(cpu_op, gpu[name])
            elif cpu_op is gpu[name]:
                ops[name] = cpu_op  # one implementation for both (linear, dropout, ...)
            else:
                ops[name] = _by_array_type(cpu_op, gpu[name])
        return SimpleNamespace(mode="auto", **ops)
    raise ValueError(f"unknown kernels mode {mode!r}: choose one of {KERNEL_MODES}")
