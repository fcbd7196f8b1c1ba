/*
 * adamw.cu: one AdamW step over every parameter tensor in a single launch (multi-tensor
 * apply), float32, updating params and both moments in place.
 * xp twin (the oracle): tinygrad_char/optim.py AdamW.step. Wrapper: fused/cuda.py FusedAdamW.
 *
 * Math, per element, exactly the twin's order of operations (t = this update's number,
 * counted from 1; s = the gradient clip's factor):
 *     g = grad * s
 *     m = beta1 m + (1 - beta1) g
 *     v = beta2 v + (1 - beta2) g^2
 *     p = p * (1 - lr wd)                    only tensors whose decay flag is set (ndim >= 2)
 *     p = p - step_size * m / (sqrt(v / bias2) + eps)
 * with bias1 = 1 - beta1^t, bias2 = 1 - beta2^t, step_size = lr / bias1, computed in double
 * and rounded to float once, as NumPy does when it multiplies a float32 array by a Python
 * float.
 *
 * What the kernel reads from device memory rather than from its arguments, so that a step
 * never waits for the host to read a value back:
 *     grad_scale  the clip's factor min(1, max_norm / norm), computed on the GPU from the
 *                 gradients' norm (1 when not clipping)
 *     skip        nonzero: the float16 gradients overflowed (precision.LossScaler); every
 *                 thread returns at once and params, moments and the step count stay as
 *                 they are
 *     step        t, kept on the device by the wrapper (advanced by 1 - skip before the
 *                 launch), since the host does not know which steps were skipped
 *
 * How it parallelises: the wrapper cuts every tensor into chunks of ADAMW_CHUNK elements
 * and gives each chunk one block; a block table (block_tensor, block_start) tells block k
 * which tensor and which offset it owns, and pointer tables (params, grads, exp_avg,
 * exp_avg_sq: one device address per tensor) say where the tensors live. Threads stride
 * over the chunk. Elementwise, so bit-reproducible.
 * Launch configuration: block 256, grid = number of chunks (sum of ceil(size / 4096)).
 * The pointer and block tables are built once per set of parameters; only the gradient
 * pointers are uploaded each step (the gradients are fresh arrays every step).
 *
 * benchmark figure: not yet measured on a GPU (benchmarks/kernel_lab/bench_kernels.py).
 *
 * Written for both nvcc -c and NVRTC (cupy.RawModule): no #include, extern "C" entry
 * points, CUDA builtins only.
 */

#define ADAMW_CHUNK 4096  /* elements per block (fused/cuda.py agrees) */

/* params, grads, exp_avg, exp_avg_sq: (n_tensors,) device addresses of float32 arrays;
   sizes: (n_tensors,) element counts; decay: (n_tensors,) 0 or 1;
   block_tensor, block_start: (gridDim.x,) which tensor and offset each block updates;
   beta1, beta2, lr: the hyperparameters in double (the bias corrections are computed here);
   eps, decay_factor (1 - lr wd): rounded to float by the host;
   grad_scale: (1,) float; skip: (1,) int; step: (1,) int, this update's t. */
extern "C" __global__ void adamw_multi_tensor(const unsigned long long* __restrict__ params,
                                              const unsigned long long* __restrict__ grads,
                                              const unsigned long long* __restrict__ exp_avg,
                                              const unsigned long long* __restrict__ exp_avg_sq,
                                              const long long* __restrict__ sizes,
                                              const int* __restrict__ decay,
                                              const int* __restrict__ block_tensor,
                                              const long long* __restrict__ block_start,
                                              double beta1, double beta2, float eps, double lr,
                                              float decay_factor,
                                              const float* __restrict__ grad_scale,
                                              const int* __restrict__ skip,
                                              const int* __restrict__ step)
{
    if (skip[0] != 0) return;  /* the same for every thread: nothing is written */
    const double t = (double)step[0];
    const float one_minus_beta1 = (float)(1.0 - beta1);
    const float one_minus_beta2 = (float)(1.0 - beta2);
    const float bias2 = (float)(1.0 - pow(beta2, t));
    const float step_size = (float)(lr / (1.0 - pow(beta1, t)));
    const float beta1_f = (float)beta1;
    const float beta2_f = (float)beta2;
    const float scale = grad_scale[0];

    const int k = block_tensor[blockIdx.x];
    const long long start = block_start[blockIdx.x];
    const long long end = min(start + (long long)ADAMW_CHUNK, sizes[k]);
    float* p = (float*)params[k];
    const float* g = (const float*)grads[k];
    float* m = (float*)exp_avg[k];
    float* v = (float*)exp_avg_sq[k];
    const bool decays = decay[k] != 0;

    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        const float gi = g[i] * scale;
        const float mi = beta1_f * m[i] + one_minus_beta1 * gi;
        const float vi = beta2_f * v[i] + one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        float pi = p[i];
        if (decays) pi *= decay_factor;
        pi -= step_size * (mi / (sqrtf(vi / bias2) + eps));
        p[i] = pi;
    }
}
