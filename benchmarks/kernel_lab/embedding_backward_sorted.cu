/*
 * embedding_backward_sorted.cu (kernel lab): a deterministic token-embedding weight
 * gradient, float32; the library's kernels/embedding_backward.cu uses atomics instead.
 * xp twin (the oracle): tinygrad_char/ops/embedding.py embedding_backward. Wrapper:
 * benchmarks/kernel_lab/embedding_sorted.py; validated by tests/test_kernels.py (emulated
 * and on a GPU), timed by bench_kernels.py.
 *
 * Math: dW[v] = sum of dout[n] over every position n with idx[n] == v.
 *
 * How it parallelises: the wrapper sorts positions by id (the keys idx * N + n are unique,
 * so the order does not depend on the sort being stable) and finds each id's run
 * [seg_start[v], seg_start[v + 1]). One thread per (v, c) sums its run in position order
 * and writes dW[v, c] (every element written once, unused ids get 0, so dW needs no
 * zeroing). Bit-reproducible run to run.
 *
 * Launch configuration: block 256, grid (V, ceil(C / 256)).
 *
 * benchmark figure: not yet measured on a GPU (the sort and search are extra launches).
 */

/* order: (N,) int64, positions sorted by id; seg_start: (V + 1,) int64, where each id's
   run starts in `order`; dout: (N, C); dW: (V, C). grid (V, ceil(C / blockDim.x)). */
extern "C" __global__ void embedding_backward_sorted(const long long* __restrict__ order,
                                                     const long long* __restrict__ seg_start,
                                                     const float* __restrict__ dout,
                                                     float* __restrict__ dW, int V, int C)
{
    const int v = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (v >= V || c >= C) return;
    float acc = 0.0f;
    for (long long k = seg_start[v]; k < seg_start[v + 1]; k++) acc += dout[order[k] * C + c];
    dW[(long long)v * C + c] = acc;
}
