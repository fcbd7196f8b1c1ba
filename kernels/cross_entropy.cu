/*
 * cross_entropy.cu: softmax cross-entropy over the vocabulary, float32, producing the
 * per-row loss and dlogits in the same launch (the forward's probabilities are never
 * stored; dlogits replaces them).
 * xp twin (the oracle): tinygrad_char/ops/cross_entropy.py. Wrapper: tinygrad_char/fused/cuda.py.
 *
 * Math, per row n of V logits, target t (t = -1: ignored), n_valid = max(#(t != -1), 1):
 *     m = max_j z_j                      subtracted for stability, as the twin
 *     s = sum_j exp(z_j - m)
 *     loss_n   = log(s) - (z_t - m)      (0 on an ignored row)
 *     dlogit_j = (exp(z_j - m) / s - [j == t]) / n_valid      (0 on an ignored row)
 * The mean loss, sum(loss_n) / n_valid, is one CuPy reduction in the wrapper. dlogits
 * assumes dloss = 1 (what the training loop passes); the wrapper's backward multiplies
 * by dloss otherwise. 1 / n_valid is read from device memory, so nothing syncs the host.
 *
 * How it parallelises: one block per row, CE_THREADS threads striding over V. Three
 * passes over the row: max, then sum of exponentials (each a block reduction: warp
 * shuffles, then one warp over the per-warp partials in shared memory), then the
 * dlogits write. The row is read three times (from L2 at vocabulary sizes up to ~50k).
 * The reductions have a fixed order: results are bit-reproducible run to run.
 *
 * Launch configuration: block CE_THREADS = 256, grid N (one block per row).
 * Targets are int64 (any id outside [0, V) other than -1 is undefined behaviour: the
 * kernel does not check).
 *
 * benchmark figure: not yet measured on a GPU (benchmarks/kernel_lab/bench_kernels.py).
 *
 * Written for both nvcc -c and NVRTC (cupy.RawModule): no #include, extern "C" entry
 * points, CUDA builtins only.
 */

#define CE_WARP 32
#define CE_THREADS 256         /* blockDim.x (fused/cuda.py agrees); a multiple of 32, <= 1024 */
#define CE_IGNORE_INDEX (-1)   /* as tinygrad_char.ops.cross_entropy.IGNORE_INDEX */

static __device__ __forceinline__ float ce_neg_inf() { return __int_as_float(0xff800000); }

/* Block-wide max (is_max) or sum of v; every thread gets the result. `partial` is a
   __shared__ float[32] that no other reduction uses concurrently. */
static __device__ float ce_block_reduce(float v, bool is_max, float* partial)
{
    const int lane = threadIdx.x % CE_WARP, warp = threadIdx.x / CE_WARP;
    const int n_warps = blockDim.x / CE_WARP;
    for (int offset = CE_WARP / 2; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < n_warps ? partial[lane] : (is_max ? ce_neg_inf() : 0.0f);
        for (int offset = CE_WARP / 2; offset > 0; offset >>= 1) {
            const float other = __shfl_xor_sync(0xffffffffu, v, offset);
            v = is_max ? fmaxf(v, other) : v + other;
        }
        if (lane == 0) partial[0] = v;
    }
    __syncthreads();
    return partial[0];
}

/* logits, dlogits: (N, V); targets: (N,) int64; inv_n_valid: one float on the device,
   1 / max(#valid, 1); losses: (N,). grid N, block CE_THREADS. */
extern "C" __global__ void cross_entropy_forward(const float* __restrict__ logits,
                                                 const long long* __restrict__ targets,
                                                 const float* __restrict__ inv_n_valid,
                                                 float* __restrict__ losses,
                                                 float* __restrict__ dlogits, int V)
{
    __shared__ float max_partial[CE_WARP];
    __shared__ float sum_partial[CE_WARP];
    const long long row = blockIdx.x;
    const float* z = logits + row * V;
    float* dz = dlogits + row * V;
    const long long target = targets[row];
    const bool valid = target != CE_IGNORE_INDEX;

    float m = ce_neg_inf();
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, z[j]);
    m = ce_block_reduce(m, true, max_partial);

    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(z[j] - m);
    s = ce_block_reduce(s, false, sum_partial);

    const float scale = valid ? *inv_n_valid : 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float p = expf(z[j] - m) / s;
        dz[j] = (p - (j == target ? 1.0f : 0.0f)) * scale;
    }
    if (threadIdx.x == 0) losses[row] = valid ? logf(s) - (z[target] - m) : 0.0f;
}
