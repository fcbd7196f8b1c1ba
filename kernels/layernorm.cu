/*
 * layernorm.cu: LayerNorm over the last axis, forward and backward, float32.
 * xp twin (the oracle): tinygrad_char/ops/layernorm.py. Wrapper: tinygrad_char/fused/cuda.py.
 *
 * Math, per row of C values (x: the row, w: gain, b: bias, eps 1e-5):
 *     mean = sum(x) / C
 *     var  = sum((x - mean)^2) / C            biased, as PyTorch; two passes, as the twin
 *     rstd = 1 / sqrt(var + eps)
 *     y    = (x - mean) * rstd * w + b
 * Backward, with n = (x - mean) * rstd and dn = dy * w:
 *     dx = rstd * (dn - mean(dn) - n * mean(dn * n))
 *     dw = sum over rows of dy * n,    db = sum over rows of dy
 * The forward saves mean and rstd, (N,) each, not the normalised row: the backward
 * recomputes n = (x - mean) * rstd from x, which it reads anyway.
 *
 * How it parallelises:
 *   layernorm_forward, layernorm_backward_dx: one warp per row. Each lane strides over
 *     the row (c = lane, lane + 32, ...) and the row sums are warp shuffles, so no
 *     shared memory and no __syncthreads. The row is re-read from global memory for each
 *     pass (it sits in L1/L2 at these sizes).
 *   dw, db (a sum over all N rows per column) in two deterministic steps, no atomics:
 *     layernorm_backward_dwdb_partial: block (32, 8); blockIdx.x picks 32 columns,
 *       blockIdx.y a chunk of LN_ROWS_PER_CHUNK rows. Thread (tx, ty) sums rows
 *       ty, ty + 8, ... of the chunk for column tx (consecutive tx read consecutive
 *       addresses: coalesced); the 8 row lanes are added in shared memory in a fixed
 *       order and written to a (n_chunks, C) partial buffer.
 *     layernorm_backward_dwdb_reduce: one thread per column adds the n_chunks partials
 *       in chunk order.
 *   Every sum has a fixed order for a given (N, C), so dx, dw and db are bit-reproducible
 *   run to run (no atomics anywhere in this file).
 *
 * Launch configuration (as tinygrad_char/fused/cuda.py launches it):
 *   layernorm_forward, layernorm_backward_dx: block 128 (4 warps = 4 rows), grid ceil(N / 4).
 *   layernorm_backward_dwdb_partial: block (32, 8), grid (ceil(C / 32), ceil(N / 64)).
 *   layernorm_backward_dwdb_reduce: block 256, grid ceil(C / 256).
 *
 * benchmark figure: not yet measured on a GPU (benchmarks/kernel_lab/bench_kernels.py).
 *
 * Written for both nvcc -c and NVRTC (cupy.RawModule): no #include, extern "C" entry
 * points, CUDA builtins only.
 */

#define LN_WARP 32
#define LN_ROWS_PER_CHUNK 64  /* rows summed by one dwdb_partial block (fused/cuda.py agrees) */
#define LN_ROW_LANES 8        /* blockDim.y of dwdb_partial (fused/cuda.py agrees) */

static __device__ __forceinline__ float ln_warp_sum(float v)
{
    for (int offset = LN_WARP / 2; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;  /* every lane holds the sum */
}

/* x, y: (N, C); w, b: (C,); mean, rstd: (N,). b is read only when has_bias != 0. */
extern "C" __global__ void layernorm_forward(const float* __restrict__ x,
                                             const float* __restrict__ w,
                                             const float* __restrict__ b, int has_bias,
                                             float* __restrict__ y,
                                             float* __restrict__ mean_out,
                                             float* __restrict__ rstd_out,
                                             int N, int C, float eps)
{
    const int lane = threadIdx.x % LN_WARP;
    const int row = blockIdx.x * (blockDim.x / LN_WARP) + threadIdx.x / LN_WARP;
    if (row >= N) return;  /* row is the same for the whole warp: no lane misses a shuffle */
    const float* xr = x + (long long)row * C;
    float* yr = y + (long long)row * C;

    float sum = 0.0f;
    for (int c = lane; c < C; c += LN_WARP) sum += xr[c];
    const float mean = ln_warp_sum(sum) / C;

    float sq = 0.0f;
    for (int c = lane; c < C; c += LN_WARP) {
        const float d = xr[c] - mean;
        sq += d * d;
    }
    const float rstd = 1.0f / sqrtf(ln_warp_sum(sq) / C + eps);

    for (int c = lane; c < C; c += LN_WARP) {
        const float n = (xr[c] - mean) * rstd;
        yr[c] = has_bias ? n * w[c] + b[c] : n * w[c];
    }
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

/* dy, x, dx: (N, C); w: (C,); mean, rstd: (N,) from the forward. */
extern "C" __global__ void layernorm_backward_dx(const float* __restrict__ dy,
                                                const float* __restrict__ x,
                                                const float* __restrict__ w,
                                                const float* __restrict__ mean,
                                                const float* __restrict__ rstd,
                                                float* __restrict__ dx, int N, int C)
{
    const int lane = threadIdx.x % LN_WARP;
    const int row = blockIdx.x * (blockDim.x / LN_WARP) + threadIdx.x / LN_WARP;
    if (row >= N) return;  /* warp-uniform, as in the forward */
    const float* dyr = dy + (long long)row * C;
    const float* xr = x + (long long)row * C;
    float* dxr = dx + (long long)row * C;
    const float m = mean[row];
    const float r = rstd[row];

    /* mean(dn) and mean(dn * n), with dn = dy * w and n recomputed from x */
    float sum_dn = 0.0f, sum_dn_n = 0.0f;
    for (int c = lane; c < C; c += LN_WARP) {
        const float dn = dyr[c] * w[c];
        sum_dn += dn;
        sum_dn_n += dn * (xr[c] - m) * r;
    }
    const float mean_dn = ln_warp_sum(sum_dn) / C;
    const float mean_dn_n = ln_warp_sum(sum_dn_n) / C;

    for (int c = lane; c < C; c += LN_WARP) {
        const float n = (xr[c] - m) * r;
        dxr[c] = r * (dyr[c] * w[c] - mean_dn - n * mean_dn_n);
    }
}

/* dw_part, db_part: (n_chunks, C), n_chunks = gridDim.y; block (32, LN_ROW_LANES). */
extern "C" __global__ void layernorm_backward_dwdb_partial(const float* __restrict__ dy,
                                                          const float* __restrict__ x,
                                                          const float* __restrict__ mean,
                                                          const float* __restrict__ rstd,
                                                          float* __restrict__ dw_part,
                                                          float* __restrict__ db_part,
                                                          int N, int C)
{
    __shared__ float sw[LN_ROW_LANES][LN_WARP];
    __shared__ float sb[LN_ROW_LANES][LN_WARP];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * LN_WARP + tx;
    const int chunk = blockIdx.y;
    const int row_end = min(N, (chunk + 1) * LN_ROWS_PER_CHUNK);

    float acc_w = 0.0f, acc_b = 0.0f;
    if (c < C) {
        for (int row = chunk * LN_ROWS_PER_CHUNK + ty; row < row_end; row += LN_ROW_LANES) {
            const long long i = (long long)row * C + c;
            const float d = dy[i];
            acc_w += d * (x[i] - mean[row]) * rstd[row];
            acc_b += d;
        }
    }
    sw[ty][tx] = acc_w;
    sb[ty][tx] = acc_b;
    __syncthreads();
    if (ty == 0 && c < C) {
        float tw = 0.0f, tb = 0.0f;
        for (int k = 0; k < LN_ROW_LANES; k++) {  /* fixed order: reproducible */
            tw += sw[k][tx];
            tb += sb[k][tx];
        }
        dw_part[(long long)chunk * C + c] = tw;
        db_part[(long long)chunk * C + c] = tb;
    }
}

/* dw, db: (C,) = the column sums of dw_part, db_part (n_chunks, C), in chunk order. */
extern "C" __global__ void layernorm_backward_dwdb_reduce(const float* __restrict__ dw_part,
                                                         const float* __restrict__ db_part,
                                                         float* __restrict__ dw,
                                                         float* __restrict__ db,
                                                         int n_chunks, int C)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float tw = 0.0f, tb = 0.0f;
    for (int k = 0; k < n_chunks; k++) {
        tw += dw_part[(long long)k * C + c];
        tb += db_part[(long long)k * C + c];
    }
    dw[c] = tw;
    db[c] = tb;
}
