/*
 * gelu.cu: tanh-GELU fused with the bias add that precedes it, y = gelu(x + b), float32.
 * xp twin (the oracle): tinygrad_char/ops/activations.py gelu_forward / gelu_backward applied
 * to x + b (the bias add of linear_forward). Wrapper: tinygrad_char/fused/cuda.py.
 *
 * Math (constants as activations.py: GELU_SCALE = sqrt(2/pi), GELU_CUBIC = 0.044715):
 *     u  = x + b[col]                   b broadcast over rows; has_bias = 0 gives u = x
 *     y  = 0.5 u (1 + tanh(k)),         k = GELU_SCALE (u + GELU_CUBIC u^3)
 *     dy/du = 0.5 (1 + tanh k) + 0.5 u (1 - tanh^2 k) GELU_SCALE (1 + 3 GELU_CUBIC u^2)
 *     dx = dy * dy/du,   db = sum over rows of dx (a CuPy column sum in the wrapper:
 *                            fixed order, so reproducible)
 * The forward saves nothing of its own: the backward recomputes u and tanh(k) from x and
 * b (one tanhf per element) instead of storing tanh(k) as the twin does.
 *
 * How it parallelises: elementwise, one thread per element in a grid-stride loop;
 * the bias column is i % C.
 * Launch configuration: block 256, grid min(ceil(n / 256), 65535).
 *
 * benchmark figure: not yet measured on a GPU (benchmarks/kernel_lab/bench_kernels.py).
 *
 * Written for both nvcc -c and NVRTC (cupy.RawModule): no #include, extern "C" entry
 * points, CUDA builtins only.
 */

#define GELU_SCALE 0.7978845608028654f  /* sqrt(2 / pi) */
#define GELU_CUBIC 0.044715f

/* u = x[i] (+ b[i % C]) and tanh(k), k = GELU_SCALE (u + GELU_CUBIC u^3): what the forward
 * and the backward both start from. */
static __device__ __forceinline__ float gelu_input(const float* x, const float* b,
                                                   int has_bias, long long i, int C,
                                                   float* th)
{
    const float u = has_bias ? x[i] + b[i % C] : x[i];
    *th = tanhf(GELU_SCALE * (u + GELU_CUBIC * u * u * u));
    return u;
}

/* x, y: n elements, rows of C; b: (C,), read only when has_bias != 0. */
extern "C" __global__ void gelu_bias_forward(const float* __restrict__ x,
                                             const float* __restrict__ b, int has_bias,
                                             float* __restrict__ y, long long n, int C)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float th;
        const float u = gelu_input(x, b, has_bias, i, C, &th);
        y[i] = 0.5f * u * (1.0f + th);
    }
}

/* dy, x, dx: n elements, rows of C; b: (C,), read only when has_bias != 0. */
extern "C" __global__ void gelu_bias_backward(const float* __restrict__ dy,
                                              const float* __restrict__ x,
                                              const float* __restrict__ b, int has_bias,
                                              float* __restrict__ dx, long long n, int C)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float th;
        const float u = gelu_input(x, b, has_bias, i, C, &th);
        const float sech2 = 1.0f - th * th;
        const float local = 0.5f * (1.0f + th)
                            + 0.5f * u * sech2 * GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * u * u);
        dx[i] = dy[i] * local;
    }
}
