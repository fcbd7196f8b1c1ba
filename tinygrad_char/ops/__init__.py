"""The reference: each op a pair of pure functions, `op_forward(...) -> (out, cache)` and
`op_backward(dout, cache) -> grads`, written as the math on one `xp` code path for NumPy and
CuPy. These are the oracles every fast path (fused/) is tested against."""
