/*
 * attention.cu: causal multi-head self-attention, forward and backward, float32, that
 * never writes the (B, NH, T, T) score matrix to memory ("flash" attention: online
 * softmax in the forward, recomputed scores in the backward). Head size hs <= 128.
 * xp twin (the oracle): tinygrad_char/ops/attention.py (no dropout). Wrapper: tinygrad_char/fused/cuda.py.
 *
 * Layout: qkv (B, T, 3C) as produced by c_attn, q, k, v stacked along the last axis;
 * head h of q uses columns h*hs .. h*hs+hs-1, of k C + h*hs .., of v 2C + h*hs ..
 * Output y (B, T, C), head h in columns h*hs ..; dqkv (B, T, 3C) in qkv's layout.
 *
 * Math, per (b, h), with s = 1/sqrt(hs), query row t and keys j <= t (causal):
 *     S_tj = s * q_t . k_j,    P_tj = exp(S_tj - L_t),    L_t = log sum_{j<=t} exp(S_tj)
 *     y_t  = sum_j P_tj v_j
 * Forward, online softmax over key tiles of 32 (Milakov & Gimelshein; FlashAttention):
 *     keep a running max m, a running sum l and an unnormalised o; per tile
 *         m' = max(m, max_j S_tj),  alpha = exp(m - m'),  p_j = exp(S_tj - m')
 *         l  = alpha l + sum_j p_j,  o = alpha o + sum_j p_j v_j,  m = m'
 *     and at the end y_t = o / l and L_t = m + log l, the one thing saved: lse (B, NH, T).
 * Backward (FlashAttention-2), with dO = dy, O = y:
 *     D_t   = sum_d dO_td O_td                  (= rowsum(dP * P), attention_backward_preprocess)
 *     P_tj  = exp(S_tj - L_t)                    recomputed from q, k and lse
 *     dP_tj = dO_t . v_j
 *     dS_tj = P_tj (dP_tj - D_t)
 *     dq_t = s sum_j dS_tj k_j,   dk_j = s sum_t dS_tj q_t,   dv_j = sum_t P_tj dO_t
 *
 * How it parallelises (all kernels: 128 threads = 4 warps; a warp owns whole rows):
 *   attention_forward: one block per (query tile of 16 rows, h, b), grid
 *     (ceil(T/16), NH, B). The block stages its q rows, then walks the key tiles 0 ..
 *     (last query row)/32, loading 32 k and v rows into shared memory. Each warp owns 4
 *     query rows; for one row, lane j scores key j of the tile (a dot product over hs
 *     from shared memory), the tile max and sum are warp shuffles, and lane l updates
 *     output dims l, l+32, l+64, l+96 (so hs <= 128; registers: 4 rows x 4 dims).
 *   attention_backward_preprocess: one warp per (b, t, h) row computes D_t.
 *   attention_backward_dq: like the forward, one block per (query tile of 8 rows, h, b),
 *     4 warps x 2 rows; walks key tiles, recomputes P and dS, accumulates dq.
 *   attention_backward_dkdv: one block per (key tile of 8 rows, h, b); each warp owns 2
 *     key rows and walks the query tiles of 32 that can see them (t >= j), lane i taking
 *     query i of the tile; accumulates dk and dv.
 *   dq and dk/dv are separate kernels that both recompute S, so no atomics: every
 *   output element is written once by one thread and every sum has a fixed order, so
 *   the results are bit-reproducible run to run.
 *   Shared-memory rows that lanes read across (lane j reads row j) are padded to
 *   HS_MAX + 1 floats so the 32 lanes hit 32 different banks.
 *
 * Launch configuration (static shared memory, all under the 48 KiB static limit):
 *   attention_forward:             block 128, grid (ceil(T/16), NH, B), ~41 KiB smem
 *   attention_backward_preprocess: block 128, grid ceil(B*T*NH / 4)
 *   attention_backward_dq:         block 128, grid (ceil(T/8), NH, B),  ~41 KiB smem
 *   attention_backward_dkdv:       block 128, grid (ceil(T/8), NH, B),  ~42 KiB smem
 * Simplicity over peak speed: float32 throughout, no tensor cores, no cp.async, and
 * shared memory sized for hs = 128 whatever hs is. A half/bf16 version would template
 * the load/store type and keep float accumulators.
 *
 * benchmark figure: not yet measured on a GPU (benchmarks/kernel_lab/bench_kernels.py).
 *
 * Written for both nvcc -c and NVRTC (cupy.RawModule): no #include, extern "C" entry
 * points, CUDA builtins only.
 */

#define ATT_WARP 32
#define HS_MAX 128                  /* largest head size; the dispatch runs xp above it (fused/dispatch.py) */
#define DIMS_PER_LANE (HS_MAX / ATT_WARP)  /* output dims owned by one lane: 4 */
#define TILE 32                     /* keys (forward, dq) or queries (dkdv) per tile = lanes */
#define ATT_WARPS 4                 /* blockDim.x = 128 for every kernel here */

#define FWD_ROWS_PER_WARP 4
#define FWD_ROWS (ATT_WARPS * FWD_ROWS_PER_WARP)   /* 16 query rows per forward block */
#define BWD_ROWS_PER_WARP 2
#define BWD_ROWS (ATT_WARPS * BWD_ROWS_PER_WARP)   /* 8 query (dq) or key (dkdv) rows per block */

static __device__ __forceinline__ float att_warp_sum(float v)
{
    for (int offset = ATT_WARP / 2; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

static __device__ __forceinline__ float att_warp_max(float v)
{
    for (int offset = ATT_WARP / 2; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

static __device__ __forceinline__ float att_neg_inf() { return __int_as_float(0xff800000); }

/* qkv: (B, T, 3C); y: (B, T, C); lse: (B, NH, T). grid (ceil(T/FWD_ROWS), NH, B), block 128. */
extern "C" __global__ void attention_forward(const float* __restrict__ qkv,
                                             float* __restrict__ y,
                                             float* __restrict__ lse,
                                             int T, int NH, int hs, float scale)
{
    __shared__ float q_s[FWD_ROWS][HS_MAX];
    __shared__ float k_s[TILE][HS_MAX + 1];  /* lane j reads row j: padded against conflicts */
    __shared__ float v_s[TILE][HS_MAX];      /* lane l reads column l: no padding needed */
    __shared__ float p_s[ATT_WARPS][TILE];   /* one row's probabilities, per warp */

    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = blockIdx.x * FWD_ROWS;
    const int C = NH * hs;
    const long long ld = 3LL * C;  /* distance between consecutive t in qkv */
    const float* qkv_b = qkv + (long long)b * T * ld;
    const int warp = threadIdx.x / ATT_WARP, lane = threadIdx.x % ATT_WARP;

    for (int e = threadIdx.x; e < FWD_ROWS * hs; e += blockDim.x) {
        const int r = e / hs, d = e % hs, t = q0 + r;
        q_s[r][d] = t < T ? qkv_b[t * ld + h * hs + d] : 0.0f;
    }

    float m[FWD_ROWS_PER_WARP], l[FWD_ROWS_PER_WARP], o[FWD_ROWS_PER_WARP][DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < FWD_ROWS_PER_WARP; i++) {
        m[i] = att_neg_inf();
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < DIMS_PER_LANE; c++) o[i][c] = 0.0f;
    }

    const int last_t = min(q0 + FWD_ROWS, T) - 1;  /* the block's last query sees keys 0..last_t */
    for (int k0 = 0; k0 <= last_t; k0 += TILE) {
        __syncthreads();  /* q_s is written (first tile); k_s, v_s are free again (later tiles) */
        for (int e = threadIdx.x; e < TILE * hs; e += blockDim.x) {
            const int j = e / hs, d = e % hs, s = k0 + j;
            k_s[j][d] = s < T ? qkv_b[s * ld + C + h * hs + d] : 0.0f;
            v_s[j][d] = s < T ? qkv_b[s * ld + 2 * C + h * hs + d] : 0.0f;
        }
        __syncthreads();

#pragma unroll
        for (int i = 0; i < FWD_ROWS_PER_WARP; i++) {
            const int r = warp * FWD_ROWS_PER_WARP + i, t = q0 + r;
            /* warp-uniform skip: a row past the end, or a tile wholly in this row's future.
               Otherwise key k0 <= t is valid, so the tile max below is finite. */
            if (t >= T || k0 > t) continue;
            const int key = k0 + lane;
            const bool valid = key <= t;  /* causal; key <= t < T */
            float score = att_neg_inf();
            if (valid) {
                float dot = 0.0f;
                for (int d = 0; d < hs; d++) dot += q_s[r][d] * k_s[lane][d];
                score = dot * scale;
            }
            const float m_new = fmaxf(m[i], att_warp_max(score));
            const float p = valid ? expf(score - m_new) : 0.0f;
            const float alpha = expf(m[i] - m_new);  /* exp(-inf) = 0 on the first tile */
            l[i] = l[i] * alpha + att_warp_sum(p);
            m[i] = m_new;
            p_s[warp][lane] = p;
            __syncwarp();
#pragma unroll
            for (int c = 0; c < DIMS_PER_LANE; c++) {
                const int d = lane + c * ATT_WARP;
                float acc = 0.0f;
                if (d < hs)
                    for (int j = 0; j < TILE; j++) acc += p_s[warp][j] * v_s[j][d];
                o[i][c] = o[i][c] * alpha + acc;
            }
            __syncwarp();  /* p_s is rewritten for the next row */
        }
    }

#pragma unroll
    for (int i = 0; i < FWD_ROWS_PER_WARP; i++) {
        const int t = q0 + warp * FWD_ROWS_PER_WARP + i;
        if (t >= T) continue;
        const float inv_l = 1.0f / l[i];
        float* y_t = y + ((long long)b * T + t) * C + h * hs;
#pragma unroll
        for (int c = 0; c < DIMS_PER_LANE; c++) {
            const int d = lane + c * ATT_WARP;
            if (d < hs) y_t[d] = o[i][c] * inv_l;
        }
        if (lane == 0) lse[((long long)b * NH + h) * T + t] = m[i] + logf(l[i]);
    }
}

/* D[b, h, t] = sum_d dy[b, t, h*hs + d] * y[b, t, h*hs + d]. dy, y: (B, T, C); D: (B, NH, T).
   One warp per (b, t, h); grid ceil(B*T*NH / warps per block). */
extern "C" __global__ void attention_backward_preprocess(const float* __restrict__ dy,
                                                        const float* __restrict__ y,
                                                        float* __restrict__ D,
                                                        int B, int T, int NH, int hs)
{
    const int lane = threadIdx.x % ATT_WARP;
    const long long row = (long long)blockIdx.x * (blockDim.x / ATT_WARP) + threadIdx.x / ATT_WARP;
    if (row >= (long long)B * T * NH) return;  /* warp-uniform */
    const int h = (int)(row % NH);
    const long long bt = row / NH;  /* b * T + t */
    const int t = (int)(bt % T), b = (int)(bt / T);
    const long long off = bt * NH * hs + h * hs;
    float acc = 0.0f;
    for (int d = lane; d < hs; d += ATT_WARP) acc += dy[off + d] * y[off + d];
    acc = att_warp_sum(acc);
    if (lane == 0) D[((long long)b * NH + h) * T + t] = acc;
}

/* dq into columns h*hs.. of dqkv (B, T, 3C). grid (ceil(T/BWD_ROWS), NH, B), block 128. */
extern "C" __global__ void attention_backward_dq(const float* __restrict__ qkv,
                                                const float* __restrict__ dy,
                                                const float* __restrict__ lse,
                                                const float* __restrict__ D,
                                                float* __restrict__ dqkv,
                                                int T, int NH, int hs, float scale)
{
    __shared__ float q_s[BWD_ROWS][HS_MAX];
    __shared__ float do_s[BWD_ROWS][HS_MAX];
    __shared__ float k_s[TILE][HS_MAX + 1];  /* read by lane j as row j, and by column */
    __shared__ float v_s[TILE][HS_MAX + 1];  /* read by lane j as row j */
    __shared__ float ds_s[ATT_WARPS][TILE];

    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = blockIdx.x * BWD_ROWS;
    const int C = NH * hs;
    const long long ld = 3LL * C;
    const float* qkv_b = qkv + (long long)b * T * ld;
    const float* dy_b = dy + (long long)b * T * C;
    const float* lse_bh = lse + ((long long)b * NH + h) * T;
    const float* D_bh = D + ((long long)b * NH + h) * T;
    const int warp = threadIdx.x / ATT_WARP, lane = threadIdx.x % ATT_WARP;

    for (int e = threadIdx.x; e < BWD_ROWS * hs; e += blockDim.x) {
        const int r = e / hs, d = e % hs, t = q0 + r;
        q_s[r][d] = t < T ? qkv_b[t * ld + h * hs + d] : 0.0f;
        do_s[r][d] = t < T ? dy_b[(long long)t * C + h * hs + d] : 0.0f;
    }

    float lse_t[BWD_ROWS_PER_WARP], D_t[BWD_ROWS_PER_WARP];
    float dq[BWD_ROWS_PER_WARP][DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < BWD_ROWS_PER_WARP; i++) {
        const int t = q0 + warp * BWD_ROWS_PER_WARP + i;
        lse_t[i] = t < T ? lse_bh[t] : 0.0f;
        D_t[i] = t < T ? D_bh[t] : 0.0f;
#pragma unroll
        for (int c = 0; c < DIMS_PER_LANE; c++) dq[i][c] = 0.0f;
    }

    const int last_t = min(q0 + BWD_ROWS, T) - 1;
    for (int k0 = 0; k0 <= last_t; k0 += TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < TILE * hs; e += blockDim.x) {
            const int j = e / hs, d = e % hs, s = k0 + j;
            k_s[j][d] = s < T ? qkv_b[s * ld + C + h * hs + d] : 0.0f;
            v_s[j][d] = s < T ? qkv_b[s * ld + 2 * C + h * hs + d] : 0.0f;
        }
        __syncthreads();

#pragma unroll
        for (int i = 0; i < BWD_ROWS_PER_WARP; i++) {
            const int r = warp * BWD_ROWS_PER_WARP + i, t = q0 + r;
            if (t >= T || k0 > t) continue;  /* warp-uniform */
            const int key = k0 + lane;
            float ds = 0.0f;
            if (key <= t) {
                float qk = 0.0f, dov = 0.0f;
                for (int d = 0; d < hs; d++) {
                    qk += q_s[r][d] * k_s[lane][d];
                    dov += do_s[r][d] * v_s[lane][d];
                }
                const float p = expf(qk * scale - lse_t[i]);
                ds = p * (dov - D_t[i]);
            }
            ds_s[warp][lane] = ds;
            __syncwarp();
#pragma unroll
            for (int c = 0; c < DIMS_PER_LANE; c++) {
                const int d = lane + c * ATT_WARP;
                if (d < hs) {
                    float acc = 0.0f;
                    for (int j = 0; j < TILE; j++) acc += ds_s[warp][j] * k_s[j][d];
                    dq[i][c] += acc;
                }
            }
            __syncwarp();
        }
    }

#pragma unroll
    for (int i = 0; i < BWD_ROWS_PER_WARP; i++) {
        const int t = q0 + warp * BWD_ROWS_PER_WARP + i;
        if (t >= T) continue;
        float* dq_t = dqkv + ((long long)b * T + t) * ld + h * hs;
#pragma unroll
        for (int c = 0; c < DIMS_PER_LANE; c++) {
            const int d = lane + c * ATT_WARP;
            if (d < hs) dq_t[d] = dq[i][c] * scale;
        }
    }
}

/* dk, dv into columns C + h*hs.. and 2C + h*hs.. of dqkv (B, T, 3C).
   grid (ceil(T/BWD_ROWS), NH, B), block 128. */
extern "C" __global__ void attention_backward_dkdv(const float* __restrict__ qkv,
                                                  const float* __restrict__ dy,
                                                  const float* __restrict__ lse,
                                                  const float* __restrict__ D,
                                                  float* __restrict__ dqkv,
                                                  int T, int NH, int hs, float scale)
{
    __shared__ float k_s[BWD_ROWS][HS_MAX];
    __shared__ float v_s[BWD_ROWS][HS_MAX];
    __shared__ float q_s[TILE][HS_MAX + 1];   /* lane i reads row i, and by column */
    __shared__ float do_s[TILE][HS_MAX + 1];  /* lane i reads row i, and by column */
    __shared__ float lse_s[TILE], D_s[TILE];
    __shared__ float p_s[ATT_WARPS][TILE], ds_s[ATT_WARPS][TILE];

    const int b = blockIdx.z, h = blockIdx.y;
    const int j0 = blockIdx.x * BWD_ROWS;  /* first key row of this block */
    const int C = NH * hs;
    const long long ld = 3LL * C;
    const float* qkv_b = qkv + (long long)b * T * ld;
    const float* dy_b = dy + (long long)b * T * C;
    const float* lse_bh = lse + ((long long)b * NH + h) * T;
    const float* D_bh = D + ((long long)b * NH + h) * T;
    const int warp = threadIdx.x / ATT_WARP, lane = threadIdx.x % ATT_WARP;

    for (int e = threadIdx.x; e < BWD_ROWS * hs; e += blockDim.x) {
        const int r = e / hs, d = e % hs, s = j0 + r;
        k_s[r][d] = s < T ? qkv_b[s * ld + C + h * hs + d] : 0.0f;
        v_s[r][d] = s < T ? qkv_b[s * ld + 2 * C + h * hs + d] : 0.0f;
    }

    float dk[BWD_ROWS_PER_WARP][DIMS_PER_LANE], dv[BWD_ROWS_PER_WARP][DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < BWD_ROWS_PER_WARP; i++)
#pragma unroll
        for (int c = 0; c < DIMS_PER_LANE; c++) dk[i][c] = dv[i][c] = 0.0f;

    /* queries t >= j0 see this block's keys: start at the tile holding j0 */
    for (int t0 = (j0 / TILE) * TILE; t0 < T; t0 += TILE) {
        __syncthreads();  /* k_s, v_s written (first tile); q_s, do_s free again (later) */
        for (int e = threadIdx.x; e < TILE * hs; e += blockDim.x) {
            const int i = e / hs, d = e % hs, t = t0 + i;
            q_s[i][d] = t < T ? qkv_b[t * ld + h * hs + d] : 0.0f;
            do_s[i][d] = t < T ? dy_b[(long long)t * C + h * hs + d] : 0.0f;
        }
        if (threadIdx.x < TILE) {
            const int t = t0 + threadIdx.x;
            lse_s[threadIdx.x] = t < T ? lse_bh[t] : 0.0f;
            D_s[threadIdx.x] = t < T ? D_bh[t] : 0.0f;
        }
        __syncthreads();

#pragma unroll
        for (int i = 0; i < BWD_ROWS_PER_WARP; i++) {
            const int r = warp * BWD_ROWS_PER_WARP + i, j = j0 + r;
            /* warp-uniform skip: a key past the end, or a query tile wholly before key j */
            if (j >= T || t0 + TILE - 1 < j) continue;
            const int t = t0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t >= j && t < T) {  /* query t sees key j */
                float qk = 0.0f, dov = 0.0f;
                for (int d = 0; d < hs; d++) {
                    qk += q_s[lane][d] * k_s[r][d];
                    dov += do_s[lane][d] * v_s[r][d];
                }
                p = expf(qk * scale - lse_s[lane]);
                ds = p * (dov - D_s[lane]);
            }
            p_s[warp][lane] = p;
            ds_s[warp][lane] = ds;
            __syncwarp();
#pragma unroll
            for (int c = 0; c < DIMS_PER_LANE; c++) {
                const int d = lane + c * ATT_WARP;
                if (d < hs) {
                    float acc_v = 0.0f, acc_k = 0.0f;
                    for (int q = 0; q < TILE; q++) {
                        acc_v += p_s[warp][q] * do_s[q][d];
                        acc_k += ds_s[warp][q] * q_s[q][d];
                    }
                    dv[i][c] += acc_v;
                    dk[i][c] += acc_k;
                }
            }
            __syncwarp();
        }
    }

#pragma unroll
    for (int i = 0; i < BWD_ROWS_PER_WARP; i++) {
        const int j = j0 + warp * BWD_ROWS_PER_WARP + i;
        if (j >= T) continue;
        float* d_j = dqkv + ((long long)b * T + j) * ld + h * hs;
#pragma unroll
        for (int c = 0; c < DIMS_PER_LANE; c++) {
            const int d = lane + c * ATT_WARP;
            if (d < hs) {
                d_j[C + d] = dk[i][c] * scale;
                d_j[2 * C + d] = dv[i][c];
            }
        }
    }
}
