"""Choosing the next token as a CPU kernel: twin of tinygrad_char/ops/sampling.py.

Per row b, with u its draw (the twin's docstring has the math):
    s       = logits[b] / temperature (float64), order = a stable argsort of -s
    p_j     = exp(s[order_j] - s[order_0]), zero from column top_k on, divided by its sum
    top_p:  p_j kept while the mass before it, cumsum(p)_j - p_j, is < top_p
    cdf     = cumsum(p);  id = order[min(#{j : cdf_j <= u * cdf_last}, #{p_j > 0} - 1)]
One row is a few hundred operations, far less than the twin's dozen NumPy calls cost
(3.7 against 33 us a row of 66 logits on a 2-core AMD EPYC): generation samples once a
token, so this is one of its per-token costs. Serial (a step samples at most a few dozen rows).

The same operations in the same order as the twin, but for the sum that normalises p:
NumPy sums pairwise, this loop in order, so p may differ in its last bits and an id may
differ where a draw falls within rounding of a CDF boundary (tests/test_cpu_kernels.py
checks that only such draws differ).
"""

import numpy as np

from tinygrad_char.fused.cpu._jit import applies, serial_kernel


@serial_kernel
def _sample_rows(logits, uniforms, temperature, top_k, top_p, ids):
    """ids (B,) int64 from logits (B, V) float32/64, uniforms (B,) float64; top_k in
    1..V (V: no cut), top_p in (0, 1] (1: no cut)."""
    B, V = logits.shape
    scaled = np.empty(V, np.float64)
    probs = np.empty(V, np.float64)
    for b in range(B):
        for v in range(V):
            scaled[v] = -(np.float64(logits[b, v]) / temperature)  # negated: ascending sort
        order = np.argsort(scaled, kind="mergesort")  # stable: ties keep id order
        top = -scaled[order[0]]
        total = 0.0
        for j in range(V):
            p = np.exp(-scaled[order[j]] - top) if j < top_k else 0.0
            probs[j] = p
            total += p
        for j in range(V):
            probs[j] /= total
        if top_p < 1.0:
            cumulative = 0.0
            for j in range(V):
                cumulative += probs[j]
                if not cumulative - probs[j] < top_p:
                    probs[j] = 0.0
        cdf_last = 0.0
        for j in range(V):
            cdf_last += probs[j]
        u = uniforms[b] * cdf_last
        choice, n_kept, cdf = 0, 0, 0.0
        for j in range(V):
            cdf += probs[j]
            choice += 1 if cdf <= u else 0
            n_kept += 1 if probs[j] > 0.0 else 0
        ids[b] = order[min(choice, n_kept - 1)]


def sample_from_uniforms(logits, uniforms, temperature, top_k, top_p):
    """Kernel twin of sampling.sample_from_uniforms. Args: logits (B, V) float32/64 NumPy,
    uniforms (B, 1) float64 in [0, 1), temperature > 0, top_k int or None, top_p float or
    None. Returns ids (B,) int64."""
    assert applies(logits, dtypes=(np.float32, np.float64)), \
        "sampling kernel: float32/64 NumPy logits"
    B, V = logits.shape
    ids = np.empty(B, dtype=np.int64)
    _sample_rows(np.ascontiguousarray(logits),
                 np.ascontiguousarray(uniforms, dtype=np.float64).reshape(B),
                 float(temperature), V if top_k is None else min(int(top_k), V),
                 1.0 if top_p is None else float(top_p), ids)
    return ids
