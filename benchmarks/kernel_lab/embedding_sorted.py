"""A deterministic token-embedding backward on the GPU, kept as an experiment beside the
library's atomic kernel (kernels/embedding_backward.cu): positions sorted by id, then one
thread per (v, c) sums its id's run in order (embedding_backward_sorted.cu, this folder).

    dW = embedding_backward_sorted(dout, (idx, V))      # dout (B, T, C) float32 CuPy

Launched through tinygrad_char.fused.cuda._launch with the kernels folder pointed here
(`launch` below), so the library's compile cache and errors apply; tests/test_kernels.py
runs it on the CPU emulator too. Not in the library: nothing chose it over the atomics.
"""

from pathlib import Path

import numpy as np

from tinygrad_char.fused import cuda

FILE = "embedding_backward_sorted.cu"
HERE = Path(__file__).resolve().parent


def launch(file, name, grid, block, args):
    """cuda._launch for a .cu file of this folder (the library reads kernels/ only)."""
    import cupy

    key = (str(HERE / file), name)
    if key not in cuda._FUNCTIONS:
        module = cupy.RawModule(code=(HERE / file).read_text(), options=cuda.NVRTC_OPTIONS)
        cuda._FUNCTIONS[key] = module.get_function(name)
    cuda._FUNCTIONS[key](grid, block, args)


def embedding_backward_sorted(dout, cache, launch=launch):
    """Deterministic twin of embedding.embedding_backward. Args: dout (B, T, C) float32,
    cache (idx, V) from the gather. Returns dW (V, C)."""
    xp, dout2, flat_idx, V = cuda.embedding_rows(dout, cache)  # the library kernel's inputs
    N, C = dout2.shape
    keys = flat_idx * N + xp.arange(N, dtype=np.int64)  # unique, so the sort order is too
    order = xp.ascontiguousarray(xp.argsort(keys), dtype=np.int64)  # (N,) positions by id
    seg_start = xp.searchsorted(flat_idx[order], xp.arange(V + 1, dtype=np.int64))  # (V+1,)
    seg_start = xp.ascontiguousarray(seg_start, dtype=np.int64)
    dW = xp.empty((V, C), dtype=np.float32)  # every element is written
    launch(FILE, "embedding_backward_sorted", (V, -(-C // 256)), (256,),
           (order, seg_start, dout2, dW, np.int32(V), np.int32(C)))
    return dW
