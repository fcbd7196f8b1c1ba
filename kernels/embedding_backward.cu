/*
 * embedding_backward.cu: the token embedding's weight gradient, float32.
 * xp twin (the oracle): tinygrad_char/ops/embedding.py embedding_backward (a one-hot matmul,
 * which sums repeated ids correctly). Wrapper: tinygrad_char/fused/cuda.py.
 *
 * Math: dW[v] = sum of dout[n] over every position n with idx[n] == v, for idx (N,),
 * dout (N, C), dW (V, C). `dW[idx] += dout` would drop repeated ids; this kernel sums them.
 *
 * How it parallelises: one block per position n, threads striding over the C columns,
 *   atomicAdd(dW[idx[n], c], dout[n, c]); dW must be zeroed first.
 *   NOT bit-reproducible: when an id repeats, the float additions into its row happen in
 *   whatever order the blocks run, so the last bits of dW can differ between runs.
 *   Heavily repeated ids (a character vocabulary) serialise on the same addresses.
 *   A deterministic version (positions sorted by id, one thread per (v, c)) is kept as an
 *   experiment in benchmarks/kernel_lab/embedding_backward_sorted.cu.
 *
 * Launch configuration: block min(C rounded up to 32, 256), grid N.
 *
 * idx must hold ids in [0, V); the kernel does not check (undefined behaviour otherwise).
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
