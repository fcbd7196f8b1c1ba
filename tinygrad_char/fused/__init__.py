"""The fast paths and the one dispatch: `dispatch.py` chooses each op's implementation once,
when a model is built; `cuda.py` wraps the CUDA kernels of the repository's kernels/*.cu;
`cpu/` holds the numba CPU kernels. Each fast path has the signature of its xp twin in
tinygrad_char/ops/, which is its oracle in the tests."""
