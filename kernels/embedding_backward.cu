/*
 * embedding_backward.cu: the token embedding's weight gradient, float32.
 * xp twin (the oracle): tinygrad_char/ops/embedding.py embedding_backward (a one-hot matmul,
 * which sums repeated ids correctly). Wrapper: kernels.py.
 *
 * Math: dW[v] = sum of dout[n] over every position n with idx[n] == v, for idx (N,),
 * dout (N, C), dW (V, C). `dW[idx] += dout` would drop repeated ids; both kernels sum them.
 *
 * How it parallelises, two versions:
 *   embedding_backward_atomic: one block per position n, threads striding over the C
 *     columns, atomicAdd(dW[idx[n], c], dout[n, c]); dW must be zeroed first.
 *     NOT bit-reproducible: when an id repeats, the float additions into its row happen
 *     in whatever order the blocks run, so the last bits of dW can differ between runs.
 *     Heavily repeated ids (a character vocabulary) serialise on the same addresses.
 *   embedding_backward_sorted: deterministic. The wrapper sorts positions by id (the
 *     keys idx * N + n are unique, so the order does not depend on the sort being
 *     stable) and finds each id's run [seg_start[v], seg_start[v + 1]). One thread per
 *     (v, c) sums its run in position order and writes dW[v, c] (every element written
 *     once, unused ids get 0, so dW needs no zeroing). Bit-reproducible run to run.
 *
 * Launch configuration:
 *   embedding_backward_atomic: block min(C rounded up to 32, 256), grid N.
 *   embedding_backward_sorted: block 256, grid (V, ceil(C / 256)).
 *
 * idx must hold ids in [0, V); neither kernel checks (undefined behaviour otherwise).
 *
 * benchmark figure: not yet measured on a GPU (benchmarks/kernel_lab/bench_kernels.py).
 *
 * Written for both nvcc -c and NVRTC (cupy.RawModule): no #include, extern "C" entry
 * points, CUDA builtins only.
 */

/* idx: (N,) int64; dout: (N, C); dW: (V, C), zeroed by the caller. grid N. */
extern "C" __global__ void embedding_backward_atomic(const long long* __restrict__ idx,
                                                     const float* __restrict__ dout,
                                                     float* __restrict__ dW, int N, int C)
{
    const int n = blockIdx.x;
    if (n >= N) return;
    float* dW_row = dW + idx[n] * C;
    const float* dout_row = dout + (long long)n * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(&dW_row[c], dout_row[c]);
}

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
